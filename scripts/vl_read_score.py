"""Does a Florence-VL model read its image tokens? Questions about the objects of a generated split, scored by
teacher-forced exact match per type three ways: from the real image tokens, from the word grid (each token over an
object = the LLM's embedding of the object's name, train/read.py), and from another question's image. A model
that reads the image scores the first well above the third; one that reads the token form scores the second high.

    python scripts/vl_read_score.py runs/florence-vl-nano-read/read/model --data data/test --per-type 100

docs/florence-vl.md (2026-12-07, fourth session) has what the numbers meant for the nano recipe.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a Florence-VL model folder (florence_vl.json)")
    parser.add_argument("--data", required=True, help="a generated split folder (records.jsonl + images)")
    parser.add_argument("--per-type", type=int, default=100, help="questions per type (default 100)")
    parser.add_argument("--types", nargs="*", default=["color", "shape", "count", "exist"],
                        help="question types (default: color shape count exist)")
    parser.add_argument("--auc", action="store_true",
                        help="also, for the yes/no types, the AUC of logit(yes) - logit(no): reading under any prior")
    args = parser.parse_args()

    from florence_vl.train.read import READ_VARIANTS, ReadBatches, read_accuracy, yes_no_auc
    from florence_vl.vl.checkpoint import load_florence_vl
    from florence_vl.vl.processor import VLProcessor

    bundle = load_florence_vl(args.model)
    model = bundle.model.eval()
    processor = VLProcessor(bundle.tokenizer, bundle.image_processor, model.config.template,
                            model.config.image_aspect_ratio, max_length=384)
    batches = ReadBatches(args.data, processor, bundle.tokenizer, model.vision_tower.num_image_tokens,
                          batch_size=1, types=tuple(args.types))
    scores = read_accuracy(model, batches, per_type=args.per_type)
    print(f"{'type':<18}" + "".join(f"{v:>14}" for v in READ_VARIANTS))
    for kind, by_variant in scores.items():
        print(f"{kind:<18}" + "".join(f"{by_variant[v]:>14.2f}" for v in READ_VARIANTS))
    if args.auc:
        for kind in batches.types:
            if batches.is_yes_no(kind):
                auc = yes_no_auc(model, batches, kind, count=2 * args.per_type)
                scores[f"{kind} AUC"] = auc
                print(f"{kind + ' AUC':<18}" + "".join(f"{auc[v]:>14.2f}" for v in READ_VARIANTS))
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
