"""Does the LLM look answers up in its context? Questions of a generated split answered with the scene's description
written where the image would go (the LM stage's `grounded_qa` format), scored by teacher-forced exact match per
question type, and once more with the description removed (what the question alone gives). A lookup shows as the
first score well above the second; an LLM that answers from the prior scores the same on both.

    python scripts/vl_lookup_score.py runs/florence-vl-nano-lookup/lm/model --data data/test --types color shape count

MODEL is the LM stage's folder (a causal LM and its tokenizer) or any Florence-VL model's `llm` part saved the same
way. docs/florence-vl.md (2026-12-07) has what the numbers meant for the nano recipe.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a causal LM folder with its tokenizer (e.g. RUN/lm/model)")
    parser.add_argument("--data", required=True, help="a generated split folder (its records.jsonl)")
    parser.add_argument("--types", nargs="*", default=[], help="question types to score (default: all)")
    parser.add_argument("--per-type", type=int, default=60, help="questions per type (default 60)")
    parser.add_argument("--template", default="phi3", help="the stage-2 chat template (default phi3)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from florence_vl.train.vl import grounded_questions, lookup_accuracy
    from florence_vl.vl.processor import VLProcessor

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    llm = AutoModelForCausalLM.from_pretrained(args.model)
    processor = VLProcessor(tokenizer, None, args.template, "pad", max_length=512)
    with_text = grounded_questions(args.data, args.types)
    without = grounded_questions(args.data, args.types, description=False)
    scores = {"with description": lookup_accuracy(llm, processor, with_text, args.per_type),
              "question alone": lookup_accuracy(llm, processor, without, args.per_type)}
    for name, by_type in scores.items():
        print(f"{name:>16}: " + "  ".join(f"{kind} {value:.2f}" for kind, value in by_type.items()))
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
