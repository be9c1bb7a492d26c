"""UniCL checkpoints (model.safetensors + config.json + tokenizer), and DaViT hand-over to Florence-2.

Florence-2 starts its DaViT from Florence's UniCL image encoder. Here the UniCL image tower *is* transformers'
`Florence2VisionBackbone`, so its weights are the "vision_tower.*" entries of a UniCL state dict, key for key
the state dict of Florence-2's `model.vision_tower`; `load_image_tower_into` copies them after checking that
the two towers have the same architecture and every tensor the same shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .model import ARCHITECTURE_KEYS, UniCL, UniCLConfig

MODEL_TYPE = "unicl"
WEIGHTS = "model.safetensors"
VISION_PREFIX = "vision_tower."


def save_unicl(model: UniCL, tokenizer, out_dir: str | Path) -> Path:
    """Write weights (safetensors), config.json and the tokenizer to out_dir; returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt", "model_type": MODEL_TYPE})
    config = {"model_type": MODEL_TYPE, **model.config.to_dict()}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def _read_config(directory: Path) -> UniCLConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a UniCL checkpoint: config.json is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not readable JSON: {error}") from None
    if data.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{directory} holds a {data.get('model_type')!r} checkpoint, not a UniCL one")
    return UniCLConfig.from_dict(data)


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS}")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for truncated or corrupt files
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {message}") from None


def _misfit(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps `state` from loading strictly into `module` (missing, unexpected, mis-shaped), or None."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {list(state[k].shape)} (expected {list(expected[k].shape)})"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    for what, names, sep in (("missing", missing, ", "), ("unexpected", unexpected, ", "),
                             ("of the wrong shape", wrong, "; ")):
        if names:
            problems.append(f"{len(names)} {what} ({sep.join(names[:3])}{sep + '...' if len(names) > 3 else ''})")
    return ", ".join(problems) if problems else None


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    problem = _misfit(module, state)
    if problem:
        raise CheckpointError(f"{where}: weights do not fit: {problem}")
    expected = module.state_dict()
    with torch.no_grad():
        module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def load_unicl(path: str | Path, tokenizer: bool = True) -> tuple[UniCL, object]:
    """(model in eval mode, tokenizer or None) from a directory written by save_unicl."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"UniCL checkpoint directory {directory} does not exist")
    model = UniCL(_read_config(directory))
    _load_strict(model, _read_weights(directory), str(directory))
    model.eval()
    return model, (_load_tokenizer(directory) if tokenizer else None)


def _load_tokenizer(directory: Path):
    """The tokenizer's own class (named in tokenizer_config.json); AutoTokenizer would read our config.json as a
    transformers model config and warn about the unknown model type."""
    import transformers

    try:
        name = json.loads((directory / "tokenizer_config.json").read_text()).get("tokenizer_class")
        cls = getattr(transformers, name, None) if name else None
        return (cls or transformers.AutoTokenizer).from_pretrained(str(directory))
    except Exception as error:
        raise CheckpointError(f"could not load the tokenizer in {directory}: {error}") from None


def load_image_tower_into(vision_tower: torch.nn.Module, unicl: str | Path | UniCL) -> torch.nn.Module:
    """Copy UniCL's DaViT weights into a Florence2VisionBackbone (e.g. Florence-2's `model.vision_tower`).

    `unicl` is a UniCL checkpoint directory or a UniCL model. Raises CheckpointError when the towers differ in
    architecture (stages, widths, heads, groups, window, patch embedding) or in any tensor's shape.
    """
    if isinstance(unicl, UniCL):
        config, where = unicl.config, "UniCL model"
        state = {k: v.detach() for k, v in unicl.state_dict().items()}
    else:
        directory = Path(unicl)
        config, where = _read_config(directory), str(directory)
        state = _read_weights(directory)
    source = config.vision_config()
    target = vision_tower.config
    differs = [f"{k}: {getattr(source, k, None)} vs {getattr(target, k, None)}" for k in ARCHITECTURE_KEYS
               if _norm(getattr(source, k, None)) != _norm(getattr(target, k, None))]
    tower = {k[len(VISION_PREFIX):]: v for k, v in state.items() if k.startswith(VISION_PREFIX)}
    if not tower:
        raise CheckpointError(f"{where} holds no '{VISION_PREFIX}*' weights")
    problem = _misfit(vision_tower, tower)
    if problem or differs:   # checked before anything is copied: a refused tower is left as it was
        detail = [f"weights do not fit: {problem}"] if problem else []
        detail += [f"the DaViT configs differ ({'; '.join(differs)})"] if differs else []
        raise CheckpointError(f"{where} -> vision tower: " + "; ".join(detail))
    _load_strict(vision_tower, tower, f"{where} -> vision tower")
    return vision_tower


def _norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value
