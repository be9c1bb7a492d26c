"""Do a Florence-VL model's image tokens read as the LLM's own words for what is under them? On the object cells of a
generated split (train/align.py's grid and targets): how often a token is nearest (cosine) to the LLM's embedding of
the object's colour among the split's colours, and of its class among the classes, and the align loss. Chance is
1/8 for each in the nano world; an aligned projector should be well above it.

    python scripts/vl_align_score.py runs/florence-vl-nano-align/align/model --data data/test --scenes 200

docs/florence-vl.md (2026-12-07) has what the numbers meant for the nano recipe.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a Florence-VL model folder (florence_vl.json)")
    parser.add_argument("--data", required=True, help="a generated split folder (records.jsonl + images)")
    parser.add_argument("--scenes", type=int, default=200, help="scenes with objects to score (default 200)")
    args = parser.parse_args()

    from florence_vl.train.align import AlignBatches, readout_accuracy
    from florence_vl.vl.checkpoint import load_florence_vl
    from florence_vl.vl.processor import VLProcessor

    bundle = load_florence_vl(args.model)
    model = bundle.model.eval()
    processor = VLProcessor(bundle.tokenizer, bundle.image_processor, model.config.template,
                            model.config.image_aspect_ratio)
    batches = AlignBatches(args.data, processor, model.llm, bundle.tokenizer, model.vision_tower.num_image_tokens,
                           batch_size=1)
    scores = readout_accuracy(model, batches, limit=args.scenes)
    print(f"object cells {scores['cells']}: colour {scores['color']:.3f}  class {scores['class']:.3f}  "
          f"align loss {scores['loss']:.3f}")
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
