"""Florence-2 checkpoints in both published layouts, loaded into transformers' native model.

Two layouts exist:

* ``native`` (florence-community/Florence-2-*): what ``Florence2ForConditionalGeneration.save_pretrained``
  writes. The vocabulary already holds ``<image>``, the placeholder the encoder replaces with image features.
* ``original`` (microsoft/Florence-2-*): remote code. DaViT keys wrap every layer in ``fn``/``dw``/``net``
  modules, ``image_projection`` is a bare ``[embed_dim, projection_dim]`` matrix used as ``x @ W``, BART lives
  under ``language_model.model`` with a (zero) ``final_logits_bias``, and the tokenizer files are plain BART:
  the 1024 Florence-2 tokens are added at load time, ``<image>`` does not exist at all.

Loading the original layout renames (and transposes) the weights, adds ``<image>`` right after the original
vocabulary and pads the embedding to a multiple of 64, as transformers' own conversion does. The new rows are
the mean of the old ones, so logits over the original vocabulary are exactly those of the original weights.

Every check (files, keys, shapes) runs before anything is built; the model itself is built on the meta
device and receives the checkpoint's tensors directly, so even Florence-2-large loads in about a second.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BartTokenizer,
    CLIPImageProcessorPil,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    GenerationConfig,
    PreTrainedTokenizerBase,
)

from ..errors import CheckpointError, InputError
from .geometry import PRESETS, florence2_config, image_processor, num_image_tokens, processor_image_size
from .layouts import (
    FINAL_LOGITS_BIAS,
    IMAGE_PROJECTION,
    SHARED,
    VOCAB_GROUP,
    GENERATION_FIELDS,
    original_key_for,
    detect_layout,
    native_to_original_config,
    native_to_original_state_dict,
    original_to_native_config,
    original_to_native_state_dict,
)
from .tasks import TASKS
from .special_tokens import FLORENCE2_ADDED_TOKENS, IMAGE_TOKEN, ensure_florence2_tokens, train_bart_tokenizer

LAYOUTS = ("native", "original")
PUBLISHED_IMAGE_SIZE = 768
VOCAB_MULTIPLE = 64

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                 "pytorch_model.bin")

# Task prompts (the published ones) and a few captions: enough text for a toy BPE that still splits words.
_TINY_CORPUS = [task.prompt.format(input="a red circle") for task in TASKS.values()] + [
    "A red circle above a blue square on a white background.", "Two green triangles next to a yellow star.",
    "A black word written on a gray sign.",
]


@dataclass
class Florence2Bundle:
    """A loaded Florence-2: native model (eval mode), tokenizer with <image>, image pre-processing."""

    model: Florence2ForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    image_processor: CLIPImageProcessorPil
    layout: str
    source: str

    @property
    def image_size(self) -> int:
        return processor_image_size(self.image_processor)

    @property
    def num_image_tokens(self) -> int:
        return num_image_tokens(self.model.config.vision_config, self.image_size)


# ---------------------------------------------------------------------------------------------------- layouts


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.is_offline_mode() or any(str(f).upper() in {"1", "ON", "YES", "TRUE"} for f in flags if f)


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and not os.path.isabs(text)


def _resolve(source: str | Path, revision: str | None, allow_pickle: bool) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; a Florence-2 checkpoint is a directory holding config.json")
        return path
    if not isinstance(source, str) or not _looks_like_hub_id(source):
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "tokenizer*"] + (["*.bin"] if allow_pickle else [])
    offline = _hub_offline()
    try:
        folder = snapshot_download(source, revision=revision, allow_patterns=patterns, local_files_only=offline)
    except Exception as error:  # any hub failure means the same thing to the user
        reason = "offline mode, HF_HUB_OFFLINE=1" if offline else type(error).__name__
        raise CheckpointError(f"{source!r} could not be found locally nor downloaded from the Hugging Face Hub "
                              f"({reason})") from None
    return Path(folder)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not readable JSON: {error}") from None


def _weights_file(directory: Path, allow_pickle: bool) -> Path:
    present = [directory / name for name in _WEIGHT_FILES if (directory / name).is_file()]
    if not present:
        raise CheckpointError(f"{directory} has no weights: expected model.safetensors "
                              "(or model.safetensors.index.json with its shards)")
    safe = [p for p in present if "safetensors" in p.name]
    if safe:
        return safe[0]
    if not allow_pickle:
        raise CheckpointError(f"{present[0]} is a pickle checkpoint; pickle checkpoints can run code; "
                              "pass allow_pickle=True (CLI --allow-pickle) if you trust it")
    return present[0]


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


_CAST_CHUNK_BYTES = 16 * 2**20


def _read_safetensors(path: Path, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Read a safetensors file tensor by tensor with plain reads (no mmap: mapped pages of the whole file would
    count as resident). A floating tensor stored in another dtype than `dtype` is cast in 16 MiB chunks straight
    into its destination, so loading an fp32 file in bf16 peaks at the bf16 model + 16 MiB, never an fp32 copy."""
    def corrupt(reason: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {reason}")

    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise corrupt("no header")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise corrupt(f"header of {length} bytes in a file of {size}")
        try:
            header = json.loads(f.read(length))
            specs = [(k, _SAFETENSORS_DTYPES[v["dtype"]], [int(d) for d in v["shape"]],
                      [int(o) for o in v["data_offsets"]]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise corrupt(f"bad header ({type(error).__name__}: {error})") from None
        base = 8 + length
        for name, stored, shape, (begin, end) in sorted(specs, key=lambda s: s[3][0]):
            item = torch.empty((), dtype=stored).element_size()
            count = 1
            for d in shape:
                count *= d
            if end - begin != count * item or begin < 0 or base + end > size:
                raise corrupt(f"tensor {name} does not fit the file")
            cast = dtype is not None and stored.is_floating_point and stored != dtype
            target = torch.empty(shape, dtype=dtype if cast else stored)
            flat = target.view(-1)
            step = max(1, _CAST_CHUNK_BYTES // item) if cast else max(count, 1)
            f.seek(base + begin)
            for start in range(0, count, step):
                n = min(step, count - start)
                if cast:
                    chunk = bytearray(n * item)
                    got = f.readinto(chunk)
                    flat[start:start + n] = torch.frombuffer(chunk, dtype=stored)
                else:  # read straight into the destination tensor's memory
                    got = f.readinto(memoryview(flat.view(torch.uint8).numpy()))
                if got != n * item:
                    raise corrupt(f"tensor {name} is cut short")
            out[name] = target
    return out


def _read_one(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing (listed in the shard index)")
    if path.name.endswith(".safetensors"):
        return _read_safetensors(path, dtype)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable PyTorch weights file: {type(error).__name__}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    if dtype is not None:
        for key in list(sd):  # one tensor at a time
            if sd[key].is_floating_point():
                sd[key] = sd[key].to(dtype)
    return dict(sd)


def _read_weights(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a weights file or shard index; floating ones cast to `dtype` (None: as stored) per tensor."""
    if not path.name.endswith(".index.json"):
        return _read_one(path, dtype)
    weight_map = _read_json(path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path} has no weight_map")
    sd: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        sd.update(_read_one(path.parent / shard, dtype))
    return sd


def _compute_dtype_of_storage(where: Path, config: dict) -> torch.dtype | None:
    """The dtype to compute in for weights stored in a narrower one only to save bytes: a safetensors file whose
    metadata says "stored_dtype" (see store_as) is loaded in config.json's dtype. None: as stored."""
    if where.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(where), "pt") as f:
            stored = (f.metadata() or {}).get("stored_dtype")
    except Exception:  # a damaged file: reading the weights reports it as a CheckpointError
        return None
    declared = config.get("dtype") or config.get("torch_dtype")
    if not stored or not isinstance(declared, str) or declared == stored:
        return None
    try:
        return _parse_dtype(declared)
    except InputError:  # an odd dtype string in someone's config: keep the stored dtype
        return None


def store_as(path: Path, dtype: torch.dtype) -> None:
    """Rewrite a safetensors file with its floating tensors in `dtype` (other tensors and metadata kept), marked
    "stored_dtype" so that loading computes in the config's dtype again (half the bytes for bfloat16)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {"format": "pt"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, str(path),
              metadata={**metadata, "stored_dtype": str(dtype).replace("torch.", "")})


def _load_tokenizer(directory: Path, layout: str, max_length: int) -> PreTrainedTokenizerBase:
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise CheckpointError(f"{directory} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    try:
        if layout == "original":  # plain BART files; the remote processor completed them at load time
            tokenizer = BartTokenizer.from_pretrained(str(directory))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as error:
        raise CheckpointError(f"could not load the tokenizer in {directory}: {error}") from None
    ensure_florence2_tokens(tokenizer)
    if tokenizer.model_max_length > 10**6:
        tokenizer.model_max_length = max_length
    return tokenizer


def _load_image_processor(directory: Path, vision_config) -> CLIPImageProcessorPil:
    pre, proc = directory / "preprocessor_config.json", directory / "processor_config.json"
    settings = None
    if pre.is_file():
        settings = _read_json(pre)
    elif proc.is_file() and isinstance(_read_json(proc).get("image_processor"), dict):
        settings = _read_json(proc)["image_processor"]
    if settings is None:
        processor = image_processor(PUBLISHED_IMAGE_SIZE)
    else:
        settings = {k: v for k, v in settings.items() if k not in {"processor_class", "auto_map"}}
        try:
            processor = CLIPImageProcessorPil.from_dict(settings)
        except Exception as error:
            raise CheckpointError(f"could not read the image pre-processing settings in {directory}: {error}") from None
    try:
        processor.image_seq_length = num_image_tokens(vision_config, processor_image_size(processor))
    except ValueError as error:
        raise CheckpointError(f"{directory}: {error}") from None
    return processor


# ---------------------------------------------------------------------------------------------------- building


def _first(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_state_dict(sd: dict, expected: dict[str, tuple], optional: set[str], vocab_group: tuple[str, ...],
                      where: Path) -> None:
    """Unknown keys, then missing keys, then shapes; names as the file spells them."""
    unknown = sorted(k for k in sd if k not in expected)
    if unknown:
        raise CheckpointError(f"{where}: {len(unknown)} unexpected weight(s) for this Florence-2 config: "
                              f"{_first(unknown)}")
    missing = sorted(k for k in expected if k not in sd and k not in optional and k not in vocab_group)
    if not any(k in sd for k in vocab_group):
        missing.insert(0, vocab_group[0])
    if missing:
        raise CheckpointError(f"{where}: {len(missing)} weight(s) missing: {_first(missing)}")
    for key, tensor in sd.items():
        if tuple(tensor.shape) != tuple(expected[key]):
            raise CheckpointError(f"{where}: weight {key} has shape {list(tensor.shape)}, "
                                  f"expected {list(expected[key])} from config.json")


def _fold_tied(sd: dict[str, torch.Tensor], where: Path) -> None:
    """Keep one copy of the word embedding (under SHARED): the model ties the others to it."""
    present = [k for k in VOCAB_GROUP if k in sd]
    source = sd[present[0]]
    for key in present[1:]:
        if not torch.equal(sd[key], source):
            raise CheckpointError(f"{where}: {key} differs from {present[0]}; Florence-2 ties word embeddings and "
                                  "LM head, so these weights cannot be loaded without changing outputs")
    for key in present[1:]:
        del sd[key]
    sd[SHARED] = source


def _pad_vocab(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """New rows (for <image> and padding) = mean of the old ones: deterministic, never a likely prediction."""
    extra = rows - weight.shape[0]
    if extra <= 0:
        return weight
    mean = weight.mean(0, keepdim=True, dtype=torch.float32).to(weight.dtype)  # no fp32 copy of the matrix
    return torch.cat([weight, mean.expand(extra, -1)])


def _parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "half": torch.float16,
               "fp32": torch.float32, "float": torch.float32}
    name = str(dtype).replace("torch.", "").lower()
    if name in aliases:
        return aliases[name]
    if isinstance(getattr(torch, name, None), torch.dtype) and getattr(torch, name).is_floating_point:
        return getattr(torch, name)
    raise InputError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")


def _meta_model(config: Florence2Config) -> Florence2ForConditionalGeneration:
    with torch.device("meta"):
        return Florence2ForConditionalGeneration(config)


def _assemble(model, sd: dict[str, torch.Tensor], dtype: torch.dtype | None) -> Florence2ForConditionalGeneration:
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=False, assign=True)
    model.tie_weights()
    left = [n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"weights were not loaded for {_first(left)}")
    weights_dtype = sd[SHARED].dtype
    for cfg in (model.config, model.config.text_config, model.config.vision_config):
        cfg.dtype = weights_dtype
    return model.eval()


def _generation_config(text: dict) -> GenerationConfig:
    return GenerationConfig(**{name: text[name] for name in GENERATION_FIELDS if text.get(name) is not None})


def _build_original(config: dict, sd: dict, tokenizer, where: Path, dtype):
    text = config.get("text_config") or {}
    original_vocab = int(text.get("vocab_size", config.get("vocab_size", 0)))
    size = len(tokenizer)
    others = size - 1 if tokenizer.image_token_id == size - 1 else size  # all but a trailing <image>
    if others > original_vocab:
        raise CheckpointError(f"the tokenizer has {others} tokens besides <image> but the weights only "
                              f"{original_vocab}; tokenizer and config.json do not belong together")
    rows = original_vocab if size <= original_vocab else -(-size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    native_config = original_to_native_config(config, tokenizer.image_token_id, rows)
    depths = list(native_config.vision_config.depths)
    model = _meta_model(native_config)
    expected = {}
    for key, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        if key == IMAGE_PROJECTION:
            shape = shape[::-1]
        if key in VOCAB_GROUP:
            shape = (original_vocab,) + shape[1:]
        expected[original_key_for(key, depths)] = shape
    expected[FINAL_LOGITS_BIAS] = (1, original_vocab)
    group = tuple(original_key_for(k, depths) for k in VOCAB_GROUP)
    _check_state_dict(sd, expected, {FINAL_LOGITS_BIAS}, group, where)
    sd = original_to_native_state_dict(sd, depths)
    _fold_tied(sd, where)
    sd[SHARED] = _pad_vocab(sd[SHARED], rows)
    model = _assemble(model, sd, dtype)
    model.generation_config = _generation_config(text)
    return model


def _build_native(config: dict, sd: dict, tokenizer, directory: Path, where: Path, dtype):
    try:
        native_config = Florence2Config.from_dict(config)
    except Exception as error:
        raise CheckpointError(f"{directory / 'config.json'} is not a valid Florence-2 config: {error}") from None
    vocab = native_config.text_config.vocab_size
    if tokenizer.image_token_id != native_config.image_token_id or len(tokenizer) > vocab:
        raise CheckpointError(f"tokenizer and config.json do not belong together: <image> is token "
                              f"{tokenizer.image_token_id} of {len(tokenizer)} in the tokenizer, config.json says "
                              f"image_token_id {native_config.image_token_id} of vocab_size {vocab}")
    model = _meta_model(native_config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_state_dict(sd, expected, set(), VOCAB_GROUP, where)
    _fold_tied(sd, where)
    model = _assemble(model, sd, dtype)
    if (directory / "generation_config.json").is_file():
        try:
            model.generation_config = GenerationConfig.from_pretrained(str(directory))
        except Exception as error:
            raise CheckpointError(f"{directory / 'generation_config.json'} is not valid: {error}") from None
    return model


def load_florence2(source: str | Path, *, dtype: torch.dtype | str | None = None, allow_pickle: bool = False,
                   revision: str | None = None) -> Florence2Bundle:
    """Load a Florence-2 checkpoint of either layout (local directory or hub id) as a native model bundle."""
    dtype = _parse_dtype(dtype)
    directory = _resolve(source, revision, allow_pickle)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no config.json")
    config = _read_json(config_path)
    layout = detect_layout(config)
    where = _weights_file(directory, allow_pickle)
    if dtype is None:
        dtype = _compute_dtype_of_storage(where, config)
    text = config.get("text_config") or {}
    tokenizer = _load_tokenizer(directory, layout, int(text.get("max_position_embeddings", 1024)))
    sd = _read_weights(where, dtype)  # cast per tensor as read: never a full copy in the stored dtype
    if layout == "original":
        model = _build_original(config, sd, tokenizer, where, dtype)
    else:
        model = _build_native(config, sd, tokenizer, directory, where, dtype)
    model.config._name_or_path = str(source)
    processor = _load_image_processor(directory, model.config.vision_config)
    return Florence2Bundle(model=model, tokenizer=tokenizer, image_processor=processor, layout=layout,
                           source=str(source))


# ---------------------------------------------------------------------------------------------------- writing


def _plain_bart_tokenizer(tokenizer) -> BartTokenizer:
    """The tokenizer as the original repos ship it: BPE vocabulary and merges only, no Florence-2 tokens."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    ids = tokenizer.convert_tokens_to_ids(FLORENCE2_ADDED_TOKENS)
    if ids != list(range(len(vocab), len(vocab) + len(ids))) or tokenizer.image_token_id != len(vocab) + len(ids):
        raise CheckpointError("the tokenizer does not hold the Florence-2 tokens and <image> in the published order "
                              "right after its BPE vocabulary; it cannot be written in the original layout")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return BartTokenizer(vocab=vocab, merges=merges)


def _write_original(bundle: Florence2Bundle, out: Path) -> None:
    model, config = bundle.model, bundle.model.config
    vocab = int(config.image_token_id)
    plain = _plain_bart_tokenizer(bundle.tokenizer)
    sd = {k: v for k, v in model.state_dict().items() if k not in VOCAB_GROUP[1:3]}
    sd = native_to_original_state_dict(sd, list(config.vision_config.depths))
    for key in ("language_model.model.shared.weight", "language_model.lm_head.weight", FINAL_LOGITS_BIAS):
        sd[key] = sd[key][:, :vocab] if key == FINAL_LOGITS_BIAS else sd[key][:vocab]
    sd = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    from safetensors.torch import save_file

    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    original = native_to_original_config(config)
    original["text_config"].update(
        {k: v for k, v in model.generation_config.to_diff_dict().items() if k in GENERATION_FIELDS})
    (out / "config.json").write_text(json.dumps(original, indent=2))
    plain.model_max_length = bundle.tokenizer.model_max_length
    plain.save_pretrained(str(out))
    model_part = json.loads(plain.backend_tokenizer.to_str())["model"]
    (out / "vocab.json").write_text(json.dumps(model_part["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model_part["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    ip, side = bundle.image_processor, bundle.image_size
    square = {"height": side, "width": side}
    (out / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": square, "do_center_crop": False, "do_convert_rgb": None, "do_normalize": ip.do_normalize,
        "do_rescale": ip.do_rescale, "do_resize": ip.do_resize, "image_mean": list(ip.image_mean),
        "image_processor_type": "CLIPImageProcessor", "image_seq_length": bundle.num_image_tokens,
        "image_std": list(ip.image_std), "processor_class": "Florence2Processor", "resample": int(ip.resample),
        "rescale_factor": ip.rescale_factor, "size": square}, indent=2))


def _write_native(bundle: Florence2Bundle, out: Path) -> None:
    bundle.model.save_pretrained(str(out))
    bundle.image_processor.image_seq_length = bundle.num_image_tokens
    Florence2Processor(image_processor=bundle.image_processor, tokenizer=bundle.tokenizer).save_pretrained(str(out))
    bundle.image_processor.save_pretrained(str(out))
    # As transformers' conversion does: the tokenizer remembers which token is the image placeholder.
    tokenizer_config = out / "tokenizer_config.json"
    settings = _read_json(tokenizer_config)
    settings["image_token"] = IMAGE_TOKEN
    tokenizer_config.write_text(json.dumps(settings, indent=2, ensure_ascii=False))


def save_florence2(bundle: Florence2Bundle, out_dir: str | Path, layout: str = "native") -> Path:
    """Write a bundle as a checkpoint directory: `native` (transformers) or `original` (microsoft) layout."""
    if layout not in LAYOUTS:
        raise InputError(f"unknown checkpoint layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stale = [p for p in out.iterdir() if p.name in _WEIGHT_FILES or p.name.endswith((".safetensors", ".bin"))]
    for path in stale:
        path.unlink()
    (_write_native if layout == "native" else _write_original)(bundle, out)
    return out


def convert_checkpoint(source: str | Path, out_dir: str | Path, *, allow_pickle: bool = False) -> Path:
    """Load a checkpoint of any layout and write it in the native layout (safetensors)."""
    if Path(source).exists() and Path(out_dir).resolve() == Path(source).resolve():
        raise InputError("convert_checkpoint would overwrite its source; choose another output directory")
    bundle = load_florence2(source, allow_pickle=allow_pickle)
    return save_florence2(bundle, out_dir, layout="native")


def make_tiny_checkpoint(out_dir: str | Path, layout: str = "native", seed: int = 0, preset: str = "tiny") -> Path:
    """A randomly initialised Florence-2 of a preset geometry, written in `layout`; same seed, same weights.

    Norm weights are randomised too, so a mapping that swapped two LayerNorms would change the outputs.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown Florence-2 geometry {preset!r}; known: {', '.join(PRESETS)}")
    tokenizer = train_bart_tokenizer(_TINY_CORPUS, vocab_size=400)
    rows = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    config = florence2_config(preset, vocab_size=rows, image_token_id=tokenizer.image_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Florence2ForConditionalGeneration(config)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.normal_(1.0, 0.1)
                    module.bias.normal_(0.0, 0.1)
    model.generation_config = _generation_config({"num_beams": 3, "no_repeat_ngram_size": 3, "early_stopping": True,
                                                  **config.text_config.to_dict()})
    tokenizer.model_max_length = config.text_config.max_position_embeddings
    processor = image_processor(PRESETS[preset]["image_size"])
    bundle = Florence2Bundle(model=model.eval(), tokenizer=tokenizer, image_processor=processor, layout=layout,
                             source=f"random:{preset}:{seed}")
    return save_florence2(bundle, out_dir, layout=layout)


__all__ = [
    "Florence2Bundle", "detect_layout", "original_to_native_state_dict", "native_to_original_state_dict",
    "original_to_native_config", "native_to_original_config", "load_florence2", "save_florence2",
    "convert_checkpoint", "make_tiny_checkpoint",
]
