"""Recipe files: a YAML mapping of recipe fields, where `base: OTHER.yaml` (a path relative to the file) starts
from another recipe. A later stage that repeats a recipe on new scenes names only what changes (out_dir, init_from,
first_scene, steps, seed); `loop` is merged key by key, every other field replaces the base's whole.
"""
from pathlib import Path

import yaml

from ..errors import InputError


def read_recipe(path: str | Path) -> dict:
    """The recipe fields of `path`, its `base` chain resolved; every file mistake is an InputError."""
    return _read(Path(path), seen=())


def _read(path: Path, seen: tuple[Path, ...]) -> dict:
    if path.resolve() in seen:
        raise InputError(f"{path}: the recipes' base chain comes back to this file")
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"recipe not found: {path}") from None
    except yaml.YAMLError as error:
        raise InputError(f"{path} is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a mapping of recipe fields")
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str):
        raise InputError(f"{path}: base must be the file name of another recipe")
    merged = _read(path.parent / base, seen + (path.resolve(),))
    loops = [merged.get("loop", {}), data.pop("loop", {})]
    if not all(isinstance(loop, dict) for loop in loops):
        raise InputError(f"{path}: loop must be a mapping, here and in its base")
    merged.update(data)
    if any(loops):
        merged["loop"] = {**loops[0], **loops[1]}
    return merged
