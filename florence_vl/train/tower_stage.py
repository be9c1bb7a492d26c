"""A tower stage: a Florence-2 checkpoint's DaViT trained alone with a throw-away head (object labels in
object_crops.py, text glyphs in text_glyphs.py), scored on held-out data at each save, then the whole checkpoint
written back with the new tower for the next Florence-2 stage to adapt its encoder and decoder to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..florence2.checkpoint import load_florence2, save_florence2
from .loop import LoopConfig, train


def tower_loop(**overrides) -> LoopConfig:
    """A tower stage's default loop: fp32 (bf16 autocast sends DaViT's depthwise-conv backward to a slow path)."""
    return LoopConfig(**{"steps": 1000, "lr": 5e-4, "warmup_steps": 30, "precision": "no", "save_every": 250,
                         **overrides})


def with_loop(data: dict) -> dict:
    """A recipe file's fields with its "loop" mapping made a LoopConfig."""
    data = dict(data)
    if "loop" in data:
        data["loop"] = LoopConfig(**data["loop"])
    return data


def run_tower_stage(recipe, prepare: Callable[[Any], tuple], loss_fn, score: Callable[[Any, Any], dict],
                    describe: Callable[[dict], str], *, progress: bool = True) -> Path:
    """Load recipe.init_from, `prepare(bundle)` -> (model wrapping its tower, batches, held-out batch), train it
    for recipe.loop logging `score(model, held_out)` at each save, and write the checkpoint to out_dir/model."""
    from tqdm.auto import tqdm

    from ..models import resolve_model

    out = Path(recipe.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_florence2(resolve_model(recipe.init_from, "florence2"), dtype=torch.float32)
    torch.manual_seed(recipe.loop.seed)
    model, batches, held_out = prepare(bundle)
    model.train()

    def on_checkpoint(step: int, trained) -> None:
        record = {"step": step, **score(trained, held_out)}
        with (out / "log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        tqdm.write(f"step {step}: {describe(record)}")

    train(model, batches, loss_fn, recipe.loop, out, progress=progress, on_checkpoint=on_checkpoint)
    bundle.model.eval()
    return save_florence2(bundle, out / "model", layout="native")
