"""Can an LLM of a given size learn to answer yes/no questions from the word grid at all? A fresh LLM (nano or
small, florence_vl/vl/nano_llm.py) is trained on read-stage rows shown as the word grid alone (each token over an
object = the LLM's own embedding of the object's name; no Florence-2, no projector), and at every checkpoint the
AUC of logit(yes) - logit(no) is printed for each yes/no type, from the grid and from zero image tokens (what the
question alone gives). If the first does not rise above the second, no recipe around that LLM will read existence
from real image tokens either (docs/florence-vl.md, 2026-12-07).

    python scripts/vl_grid_llm.py --size small --steps 3000 --out runs/grid-llm-small
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", help="the LLM size: nano, small or tiny (default small)")
    parser.add_argument("--model", default="models/nano/florence-vl",
                        help="the Florence-VL model whose tokenizer and grid geometry are used (default: the "
                        "shipped nano)")
    parser.add_argument("--train", default="data/vl-train", help="generated split to train on")
    parser.add_argument("--test", default="data/test", help="generated split to score on")
    parser.add_argument("--types", nargs="+", default=["conjunction", "exist"], help="read types to train on")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--every", type=int, default=250, help="score (and checkpoint) every this many steps")
    parser.add_argument("--count", type=int, default=300, help="questions per yes/no type when scoring")
    parser.add_argument("--turns", type=int, default=1,
                        help="questions per row, all about its image (more answers per grid; default 1)")
    parser.add_argument("--out", required=True, help="run folder (resumes from its checkpoints)")
    args = parser.parse_args()

    import torch

    from florence_vl.train.loop import LoopConfig, train
    from florence_vl.train.read import ReadBatches, read_loss, yes_no_auc
    from florence_vl.vl.checkpoint import load_florence_vl
    from florence_vl.vl.nano_llm import build_llm
    from florence_vl.vl.processor import VLProcessor

    bundle = load_florence_vl(args.model)
    model = bundle.model
    tokenizer = bundle.tokenizer
    model.llm = build_llm(tokenizer, args.size)
    width = model.llm.config.hidden_size
    tokens = model.vision_tower.num_image_tokens
    for param in list(model.vision_tower.parameters()) + list(model.mm_projector.parameters()):
        param.requires_grad_(False)
    # No real image tokens anywhere: the "real" variant of the scores is zero tokens, the question alone.
    model.image_features = lambda pixel_values: torch.zeros(len(pixel_values), tokens, width)
    processor = VLProcessor(tokenizer, bundle.image_processor, model.config.template, model.config.image_aspect_ratio,
                            max_length=384)
    types = tuple(args.types)
    batches = ReadBatches(args.train, processor, tokenizer, tokens, args.batch_size, word_steps=10 ** 9, types=types,
                           turns_per_row=args.turns)
    scored = ReadBatches(args.test, processor, tokenizer, tokens, 1, types=types)
    yes_no = [kind for kind in scored.types if scored.is_yes_no(kind)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def report(step: int, trained) -> None:
        row = {"step": step}
        for kind in yes_no:
            auc = yes_no_auc(trained, scored, kind, count=args.count)
            row[kind] = {"grid": round(auc["word grid"], 3), "question alone": round(auc["real tokens"], 3)}
        print(json.dumps(row), flush=True)
        with (out / "auc.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")

    config = LoopConfig(steps=args.steps, lr=args.lr, warmup_steps=100, grad_clip=1.0, save_every=args.every,
                        log_every=10)
    train(model, batches, read_loss, config, out, on_checkpoint=report)


if __name__ == "__main__":
    main()
