"""How much does a Florence-VL model use the image? Its held-out answer loss with the right images against the same
conversations with each image swapped for another conversation's (the batch's images rolled by one). A model that
answers from the question alone scores the same on both; the gap is what the image is worth to it.

    python scripts/vl_image_reliance.py --model runs/florence-vl-nano/stage2/model --data data/val --batches 20

--data is a generated split (`florence-vl world generate --split val --n 200 --out data/val`); its
llava_instruct.json (or llava_pretrain.json with --stage 1) is read.
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Florence-VL folder (our format or the LLaVA layout)")
    parser.add_argument("--data", required=True, help="a generated split folder")
    parser.add_argument("--stage", type=int, default=2, choices=(1, 2),
                        help="2: the questions with the model's template; 1: detailed captions, plain template")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from florence_vl.data.llava import LazyLLaVADataset, StepBatches
    from florence_vl.vl.checkpoint import load_florence_vl
    from florence_vl.vl.processor import VLProcessor

    bundle = load_florence_vl(args.model)
    model = bundle.model.eval()
    template = "plain" if args.stage == 1 else model.config.template
    processor = VLProcessor(bundle.tokenizer, bundle.image_processor, template, model.config.image_aspect_ratio,
                            max_length=384)
    name = "llava_pretrain.json" if args.stage == 1 else "llava_instruct.json"
    batches = StepBatches(LazyLLaVADataset(f"{args.data}/{name}", processor), args.batch_size, seed=1234)
    sums = {"right": 0.0, "swapped": 0.0}
    tokens = 0
    with torch.no_grad():
        for step in range(args.batches):
            batch = batches(step)
            targets = int((batch["labels"][:, 1:] != -100).sum())
            for kind in sums:
                pixels = batch["pixel_values"] if kind == "right" else batch["pixel_values"].roll(1, dims=0)
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            labels=batch["labels"], pixel_values=pixels)
                sums[kind] += float(out.loss) * targets
            tokens += targets
    result = {k: v / tokens for k, v in sums.items()}
    result["gap"] = result["swapped"] - result["right"]
    result.update(target_tokens=tokens, conversations=args.batches * args.batch_size, stage=args.stage)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
