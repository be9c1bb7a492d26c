"""Florence-VL checkpoints: the project's own format (round-trips) and the published LLaVA layout.

Own format (written by `save_florence_vl`):
    florence_vl.json        {"format": "florence-vl", "vl": VLConfig, "load_dtype"?: the dtype to compute in
                            when the weights are stored in a smaller one (the shipped nano model: bf16 on disk)}
    llm/                    the causal LM and its tokenizer (save_pretrained)
    vision_tower/           Florence-2, native layout (florence2/checkpoint.py)
    mm_projector.safetensors

Published layout (jiuhai/florence-vl-{3b,8b}-{pretrain,sft}, the LLaVA code base):
    config.json             the LLM's config with model_type llava_phi / llava_llama and mm_* fields
                            (mm_hidden_size, mm_projector_type "mlp3x_gelu", mm_vision_tower, image_aspect_ratio)
    model*.safetensors      LLM weights (model.*, lm_head.*) + model.mm_projector.encoder_mlp.{0,1.1,2.1}.*
    vision_tower/           Florence-2 in the original (microsoft remote-code) layout
    tokenizer files
The release fuses all four sources by channel concatenation ([depth, caption, ocr, grounding] -> 4 x
mm_hidden_size), which is what loading it sets up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..errors import CheckpointError
from ..florence2.checkpoint import (Florence2Bundle, _read_json, _read_weights, _resolve, _weights_file, load_florence2,
                                    save_florence2, store_as)
from .model import FlorenceVLForCausalLM, VLConfig

FORMAT = "florence-vl"
PROJECTOR_PREFIX = "model.mm_projector."
VISION_PREFIX = "model.vision_tower."
# LLaVA model types -> the transformers LLM under them, and the release's chat template for it.
LLAVA_TYPES = {"llava_phi": ("phi3", "phi3"), "llava_phi3": ("phi3", "phi3"), "llava_llama": ("llama", "llama3"),
               "llava_qwen": ("qwen2", "tokenizer"), "llava_mistral": ("mistral", "tokenizer")}
_LLAVA_FIELDS = ("mm_", "tune_mm", "freeze_mm", "unfreeze_mm", "image_aspect_ratio", "image_grid_pinpoints",
                 "tokenizer_model_max_length", "tokenizer_padding_side", "use_mm_proj", "mm_use_im")


@dataclass
class FlorenceVLBundle:
    model: FlorenceVLForCausalLM
    tokenizer: object               # the LLM's tokenizer
    image_processor: object         # Florence-2's
    layout: str                     # "florence-vl" or "llava"
    source: str


def detect_vl_layout(directory: Path) -> str:
    if (directory / "florence_vl.json").is_file():
        return FORMAT
    if (directory / "config.json").is_file():
        config = _read_json(directory / "config.json")
        if str(config.get("model_type", "")).startswith("llava") or "mm_projector_type" in config:
            return "llava"
        raise CheckpointError(f"{directory} holds a {config.get('model_type')!r} model, not Florence-VL "
                              "(no florence_vl.json, no LLaVA mm_* fields in config.json)")
    raise CheckpointError(f"{directory} is not a Florence-VL checkpoint: no florence_vl.json nor config.json")


# ---------------------------------------------------------------------------------------------------- own format


def save_florence_vl(bundle: FlorenceVLBundle, out_dir: str | Path, florence2_tokenizer=None,
                     storage_dtype: torch.dtype | str | None = None) -> Path:
    """Write our format. `storage_dtype` (e.g. bfloat16) stores every floating weight in that dtype to halve the
    bytes; loading then computes in the model's dtype at save time (recorded as "load_dtype") unless asked."""
    from ..florence2.checkpoint import _parse_dtype

    storage_dtype = _parse_dtype(storage_dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = bundle.model
    features = model.vision_tower
    tok = florence2_tokenizer or features.tokenizer
    save_florence2(Florence2Bundle(model=model.florence2, tokenizer=tok, image_processor=bundle.image_processor,
                                   layout="native", source=bundle.source), out / "vision_tower")
    model.llm.save_pretrained(str(out / "llm"))
    bundle.tokenizer.save_pretrained(str(out / "llm"))
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.mm_projector.state_dict().items()},
              str(out / "mm_projector.safetensors"), metadata={"format": "pt"})
    vl = model.config.to_dict()
    vl["freeze_vision"] = False
    meta = {"format": FORMAT, "version": 1, "vl": vl, "num_image_tokens": features.num_image_tokens}
    compute_dtype = next(model.llm.parameters()).dtype
    if storage_dtype is not None and storage_dtype != compute_dtype:
        for weights in sorted(out.rglob("*.safetensors")):
            store_as(weights, storage_dtype)
        meta["load_dtype"] = str(compute_dtype).replace("torch.", "")
    (out / "florence_vl.json").write_text(json.dumps(meta, indent=2))
    return out


def _load_own(directory: Path, dtype) -> FlorenceVLBundle:
    meta = _read_json(directory / "florence_vl.json")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{directory / 'florence_vl.json'} is not a Florence-VL checkpoint description")
    if dtype is None and meta.get("load_dtype"):
        from ..florence2.checkpoint import _parse_dtype

        dtype = _parse_dtype(meta["load_dtype"])
    for part in ("vision_tower", "llm", "mm_projector.safetensors"):
        if not (directory / part).exists():
            raise CheckpointError(f"{directory} has no {part}; a Florence-VL checkpoint holds vision_tower/, llm/ "
                                  "and mm_projector.safetensors")
    vision = load_florence2(directory / "vision_tower", dtype=dtype)
    llm, tokenizer = _load_llm_dir(directory / "llm", dtype)
    config = VLConfig.from_dict(meta.get("vl", {}))
    model = _assemble(vision, llm, config)
    projector = _read_weights(directory / "mm_projector.safetensors")
    _load_projector(model, projector, directory / "mm_projector.safetensors", dtype)
    return FlorenceVLBundle(model.eval(), tokenizer, vision.image_processor, FORMAT, str(directory))


def _load_llm_dir(directory: Path, dtype):
    try:
        llm = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype if dtype is not None else "auto")
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as error:
        raise CheckpointError(f"could not load the LLM in {directory}: {str(error).splitlines()[0]}") from None
    return llm, tokenizer


def _assemble(vision: Florence2Bundle, llm, config: VLConfig) -> FlorenceVLForCausalLM:
    return FlorenceVLForCausalLM(vision.model, vision.tokenizer, vision.num_image_tokens, llm, config)


def _check_weights(sd: dict, module: torch.nn.Module, where, what: str, source: str,
                   may_miss: frozenset = frozenset()) -> None:
    """CheckpointError unless `sd` has exactly `module`'s weights (`may_miss` may be absent), each of its shape;
    `source` names what the expected shapes come from."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    unknown = sorted(set(sd) - set(expected))
    missing = sorted(set(expected) - set(sd) - may_miss)
    if unknown or missing:
        raise CheckpointError(f"{where}: {what} weights do not match {source} ({len(missing)} missing, e.g. "
                              f"{missing[:3]}; {len(unknown)} unexpected, e.g. {unknown[:3]})")
    for key, tensor in sd.items():
        if tuple(tensor.shape) != expected[key]:
            raise CheckpointError(f"{where}: {what} weight {key} has shape {list(tensor.shape)}, expected "
                                  f"{list(expected[key])} from {source}")


def _load_projector(model: FlorenceVLForCausalLM, sd: dict, where: Path, dtype: torch.dtype | None = None) -> None:
    _check_weights(sd, model.mm_projector, where, "projector",
                   f"mm_projector_type {model.config.projector_type!r} (mm_hidden_size x sources -> LLM hidden_size)")
    model.mm_projector.to(dtype or next(iter(sd.values())).dtype)  # the asked dtype, else the file's
    model.mm_projector.load_state_dict(sd)


# ---------------------------------------------------------------------------------------------------- LLaVA layout


def _llava_llm_config(config: dict, where: Path):
    model_type = str(config.get("model_type", ""))
    if model_type not in LLAVA_TYPES:
        raise CheckpointError(f"{where}: unknown LLaVA model_type {model_type!r}; known: {', '.join(LLAVA_TYPES)}")
    llm_type, template = LLAVA_TYPES[model_type]
    fields = {k: v for k, v in config.items()
              if not k.startswith(_LLAVA_FIELDS) and k not in ("model_type", "architectures", "auto_map",
                                                                "transformers_version", "_name_or_path")}
    try:
        llm_config = AutoConfig.for_model(llm_type, **fields)
    except Exception as error:
        raise CheckpointError(f"{where}: not a valid {llm_type} config: {str(error).splitlines()[0]}") from None
    return llm_config, template


def _load_llava(directory: Path, dtype, allow_pickle: bool) -> FlorenceVLBundle:
    config_path = directory / "config.json"
    config = _read_json(config_path)
    projector_type = config.get("mm_projector_type", "mlp3x_gelu")
    llm_config, template = _llava_llm_config(config, config_path)
    vision_dir = directory / "vision_tower"
    if vision_dir.is_dir():
        vision = load_florence2(vision_dir, dtype=dtype, allow_pickle=allow_pickle)
    elif config.get("mm_vision_tower"):
        try:
            vision = load_florence2(config["mm_vision_tower"], dtype=dtype, allow_pickle=allow_pickle)
        except CheckpointError as error:
            raise CheckpointError(f"{directory} has no vision_tower/ folder and its mm_vision_tower "
                                  f"{config['mm_vision_tower']!r} could not be loaded: {error}") from None
    else:
        raise CheckpointError(f"{directory} has no vision_tower/ folder and config.json names no mm_vision_tower")
    mm_hidden = int(config.get("mm_hidden_size", vision.model.config.vision_config.projection_dim))
    if mm_hidden != vision.model.config.vision_config.projection_dim:
        raise CheckpointError(f"{config_path}: mm_hidden_size {mm_hidden} does not match the vision tower's "
                              f"projection_dim {vision.model.config.vision_config.projection_dim}")
    sd = _read_weights(_weights_file(directory, allow_pickle), dtype)  # cast per tensor as it is read
    projector = {k[len(PROJECTOR_PREFIX):]: v for k, v in sd.items() if k.startswith(PROJECTOR_PREFIX)}
    if not projector:
        raise CheckpointError(f"{directory}: no {PROJECTOR_PREFIX}* weights; this is an LLM without the "
                              "Florence-VL projector")
    vision_keys = [k for k in sd if k.startswith(VISION_PREFIX)]
    if vision_keys:
        raise CheckpointError(f"{directory}: vision tower weights inside the LLM weights ({vision_keys[0]}) are not "
                              "supported; the published layout keeps them in vision_tower/")
    llm_sd = {k: v for k, v in sd.items() if not k.startswith(PROJECTOR_PREFIX)}
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(llm_config)
    tied = bool(getattr(llm_config, "tie_word_embeddings", False))
    _check_weights(llm_sd, llm, directory, "LLM", "config.json",
                   may_miss=frozenset({"lm_head.weight"}) if tied else frozenset())
    if dtype is not None:
        llm_sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in llm_sd.items()}
    llm.load_state_dict(llm_sd, strict=False, assign=True)
    if tied:
        llm.tie_weights()
    _materialize_buffers(llm, directory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as error:
        raise CheckpointError(f"could not load the tokenizer in {directory}: {str(error).splitlines()[0]}") from None
    vl = VLConfig(projector_type=projector_type, template=template,
                  image_aspect_ratio="pad" if config.get("image_aspect_ratio", "pad") == "pad" else "resize")
    model = _assemble(vision, llm.eval(), vl)
    _load_projector(model, projector, directory, dtype)
    return FlorenceVLBundle(model.eval(), tokenizer, vision.image_processor, "llava", str(directory))


def _materialize_buffers(llm, where: Path) -> None:
    """Computed buffers (rotary inverse frequencies) are not stored: rebuild their modules on the CPU."""
    for name, module in list(llm.named_modules()):
        own = list(module.named_buffers(recurse=False))
        if not any(b.is_meta for _, b in own) or any(p.is_meta for p in module.parameters(recurse=False)):
            continue
        try:
            fresh = type(module)(config=llm.config)
        except Exception:
            raise CheckpointError(f"{where}: buffer {name} was not loaded and cannot be computed") from None
        parent_name, _, child = name.rpartition(".")
        setattr(llm.get_submodule(parent_name) if parent_name else llm, child, fresh)
    left = [n for n, t in list(llm.named_parameters()) + list(llm.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{where}: weights were not loaded for {left[:3]}")


def load_florence_vl(source: str | Path, *, dtype: torch.dtype | str | None = None,
                     allow_pickle: bool = False) -> FlorenceVLBundle:
    """Load our own format or the published LLaVA layout (local directory or hub id)."""
    from ..florence2.checkpoint import _parse_dtype

    dtype = _parse_dtype(dtype)
    directory = _resolve(source, None, allow_pickle)
    layout = detect_vl_layout(directory)
    return _load_own(directory, dtype) if layout == FORMAT else _load_llava(directory, dtype, allow_pickle)
