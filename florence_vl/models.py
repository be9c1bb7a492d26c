"""Names of the shipped models. `nano` means the project's own checkpoints under models/nano/."""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError

NANO_ROOT = Path(__file__).resolve().parent.parent / "models" / "nano"
NANO_DIRS = {"florence2": "florence2", "unicl": "unicl", "florence_vl": "florence-vl"}


def resolve_model(name: str | Path, kind: str) -> str:
    """"nano" -> the shipped nano checkpoint of `kind`; anything else (a path or hub id) passes through."""
    if str(name) != "nano":
        return str(name)
    path = NANO_ROOT / NANO_DIRS[kind]
    if not ((path / "config.json").exists() or (path / "florence_vl.json").exists()):
        raise CheckpointError(f"the nano {kind} model is not in this checkout ({path}); "
                              "pass --model with a checkpoint directory or hub id")
    return str(path)
