"""Train a Florence-VL recipe with stage 2 sized to a wall-clock budget (a GPU lease, say).

    python scripts/train_vl_budget.py configs/florence-vl-nano-gpu.yaml --minutes 7

Runs the recipe's LM and stage-1 parts as written, then times a short stage-2 probe (its first steps, when
most images still miss the feature cache, so the estimate is high) and gives stage 2 as many steps as fit in
what is left of the budget, less a reserve for saving. The recipe actually run is written to OUT/recipe.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import time
from pathlib import Path

from florence_vl.train.recipe_file import read_recipe
from florence_vl.train.vl import VLRecipe, run


def seconds_per_step(log: Path) -> float:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    (a, b) = records[0], records[-1]
    return (b["seconds"] - a["seconds"]) / max(1, b["step"] - a["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a VL recipe (YAML), e.g. configs/florence-vl-nano-gpu.yaml")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget for the whole recipe")
    parser.add_argument("--probe-steps", type=int, default=60, help="stage-2 steps timed to size stage 2")
    parser.add_argument("--reserve", type=float, default=45.0, help="seconds kept for saving the model")
    parser.add_argument("--min-steps", type=int, default=200, help="stage 2 never gets fewer steps than this")
    args = parser.parse_args()
    deadline = time.monotonic() + 60 * args.minutes
    recipe = VLRecipe.from_dict(read_recipe(args.config))
    out = Path(recipe.out_dir)

    run(recipe, stages=("lm", "stage1"))

    probe = copy.deepcopy(recipe)
    probe.out_dir = str(out / "probe")
    Path(probe.out_dir).mkdir(parents=True, exist_ok=True)
    for part in ("tokenizer", "stage1"):  # the probe starts from the real run's tokenizer and stage-1 model
        link = Path(probe.out_dir) / part
        if not link.exists():
            os.symlink(os.path.abspath(out / part), link)
    probe.stage2.loop.steps = args.probe_steps
    probe.stage2.loop.log_every = max(1, args.probe_steps // 6)
    probe.stage2.loop.save_every = 10 ** 9
    probe.stage2.loop.warmup_steps = min(probe.stage2.loop.warmup_steps, args.probe_steps)
    t0 = time.monotonic()
    run(probe, stages=("stage2",))
    per_step = seconds_per_step(Path(probe.out_dir) / "stage2" / "log.jsonl")
    fixed = time.monotonic() - t0 - per_step * args.probe_steps  # loading, first batches
    left = deadline - time.monotonic() - args.reserve - max(0.0, fixed)
    steps = max(args.min_steps, int(left / per_step))
    shutil.rmtree(probe.out_dir)
    recipe.stage2.loop.steps = steps
    recipe.stage2.loop.save_every = min(recipe.stage2.loop.save_every, steps)
    print(f"stage 2: {per_step * 1000:.1f} ms/step in the probe, {left:.0f} s left: {steps} steps", flush=True)
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    final = run(recipe, stages=("stage2",))
    print(f"model: {final}", flush=True)


if __name__ == "__main__":
    main()
