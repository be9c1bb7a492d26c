"""UniCL-nano: train Florence's two-tower model on the nano world, save it, evaluate it zero-shot.

    python -m florence_vl.florence.train configs/unicl-nano.yaml [--out-dir DIR] [--steps N]

Steps: train (or reload, on resume) a small BPE tokenizer on world text; build UniCL-nano; train it with the
project loop (florence_vl/train/loop.py) on UniCLBatches with the UniCL loss; write out_dir/model (save_unicl)
and out_dir/eval.json (zero-shot on test and test-novel). out_dir/model is what Florence-2-nano's
`davit_init` points at.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..train.loop import LoopConfig, train
from .checkpoint import save_unicl
from .data import CAPTION_LEVELS, UniCLBatches, build_tokenizer
from .loss import unicl_loss
from .model import UniCL, UniCLConfig


@dataclass
class UniCLRecipe:
    out_dir: str = "runs/unicl-nano"
    model: dict = field(default_factory=dict)        # UniCLConfig fields (vocab_size, pad id: from the tokenizer)
    tokenizer_vocab: int = 1000
    tokenizer_scenes: int = 1000
    batch_size: int = 64
    label_fraction: float = 0.5                      # share of image-label pairs; the rest are image-description pairs
    crops_per_scene: int = 2
    caption_levels: list = field(default_factory=lambda: list(CAPTION_LEVELS))
    eval_scenes: int = 200                           # per split (test, test-novel); 0 skips evaluation
    threads: int | None = None                       # torch intra-op threads while training; None keeps torch's
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=300, lr=1e-3, warmup_steps=30,
                                                                precision="no", log_every=10, save_every=100))

    @classmethod
    def from_dict(cls, data: dict) -> "UniCLRecipe":
        data = dict(data)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown UniCL recipe field(s): {', '.join(unknown)}")
        loop = LoopConfig(**data.pop("loop", {"steps": 300, "precision": "no"}))
        return cls(loop=loop, **data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "UniCLRecipe":
        import yaml

        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(recipe: UniCLRecipe, tokenizer) -> UniCL:
    fields = dict(recipe.model)
    fields["vocab_size"] = -(-len(tokenizer) // 64) * 64
    fields["pad_token_id"] = tokenizer.pad_token_id
    return UniCL(UniCLConfig.from_dict(fields))


def build_batches(recipe: UniCLRecipe, tokenizer, config: UniCLConfig) -> UniCLBatches:
    return UniCLBatches(tokenizer, config.image_size, config.max_len, batch_size=recipe.batch_size,
                        label_fraction=recipe.label_fraction, crops_per_scene=recipe.crops_per_scene,
                        caption_levels=recipe.caption_levels, seed=recipe.loop.seed)


def unicl_step_loss(model: UniCL, batch: dict) -> torch.Tensor:
    device = next(model.parameters()).device
    logits = model(batch["pixel_values"].to(device), batch["input_ids"].to(device), batch["attention_mask"].to(device))
    return unicl_loss(logits, batch["labels"].to(device))


def _tokenizer(recipe: UniCLRecipe, out: Path):
    directory = out / "tokenizer"
    if (directory / "tokenizer_config.json").exists():   # resume: the same tokenizer, not a retrained one
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory))
    tokenizer = build_tokenizer(recipe.tokenizer_vocab, recipe.tokenizer_scenes)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def run(recipe: UniCLRecipe, *, progress: bool = True) -> Path:
    """Train UniCL-nano, write it to out_dir/model (and out_dir/eval.json); returns out_dir/model."""
    out = Path(recipe.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2) + "\n")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    tokenizer = _tokenizer(recipe, out)
    torch.manual_seed(recipe.loop.seed)
    model = build_model(recipe, tokenizer)
    batches = build_batches(recipe, tokenizer, model.config)
    train(model, batches, unicl_step_loss, recipe.loop, out, progress=progress)
    model.eval()
    path = save_unicl(model, tokenizer, out / "model")
    if recipe.eval_scenes:
        from .zeroshot import evaluate_zero_shot

        results = {split: evaluate_zero_shot(model, tokenizer, split, n=recipe.eval_scenes)
                   for split in ("test", "test-novel")}
        (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train UniCL-nano on the nano world.")
    parser.add_argument("recipe", help="YAML recipe, e.g. configs/unicl-nano.yaml")
    parser.add_argument("--out-dir", help="override the recipe's out_dir")
    parser.add_argument("--steps", type=int, help="override loop.steps")
    args = parser.parse_args(argv)
    recipe = UniCLRecipe.from_yaml(args.recipe)
    if args.out_dir:
        recipe.out_dir = args.out_dir
    if args.steps:
        recipe.loop.steps = args.steps
    path = run(recipe)
    print(path)
    evaluation = Path(recipe.out_dir) / "eval.json"
    if evaluation.exists():
        print(evaluation.read_text())


if __name__ == "__main__":
    main()
