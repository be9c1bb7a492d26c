"""Florence-VL feature extraction: one DaViT pass per image (ours) vs the per-prompt re-run, at
Florence-2-base geometry with random weights. Features must be identical; prints the speed ratio.

Ours (florence_vl/vl/features.py): DaViT once -> depth; the three prompts of every image as one masked
encoder batch reusing the depth features. Reference (`per_prompt_features`): depth once, then Florence-2's
own forward once per prompt (DaViT again each time), as the release did (without its padding mistake).

    .venv/bin/python bench/vl_features.py            # 768 px, 2 images
    .venv/bin/python bench/vl_features.py --quick    # 384 px, 2 images
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import Florence2ForConditionalGeneration

from florence_vl.florence2.geometry import feature_map_side, florence2_config
from florence_vl.florence2.special_tokens import train_bart_tokenizer
from florence_vl.vl.features import BREADTH_PROMPTS, FlorenceFeatures, per_prompt_features


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="384 px inputs instead of 768")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    size = 384 if args.quick else 768
    tokenizer = train_bart_tokenizer(list(BREADTH_PROMPTS.values()) * 4, vocab_size=400)
    torch.manual_seed(0)
    config = florence2_config("base", -(-len(tokenizer) // 64) * 64, tokenizer.image_token_id)
    model = Florence2ForConditionalGeneration(config).eval().to(args.device)
    n_tokens = feature_map_side(config.vision_config, size) ** 2 + 1
    features = FlorenceFeatures(model, tokenizer, n_tokens).to(args.device)
    pixels = torch.randn(args.images, 3, size, size, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def ours():
        with torch.inference_mode():
            out = features(pixels)
        sync()
        return out

    def reference():
        out = per_prompt_features(features, pixels)
        sync()
        return out

    fast, slow = ours(), reference()  # warm-up, and the equality check
    worst = max((fast[k] - slow[k]).abs().max().item() for k in fast)
    t_ours, t_ref = best_of(ours, args.repeats), best_of(reference, args.repeats)
    print(f"vl_features ({args.device}, {size} px, {n_tokens} image tokens, {args.images} images): "
          f"ours {t_ours:.3f} s, per-prompt {t_ref:.3f} s, ratio {t_ref / t_ours:.2f}x; "
          f"max |difference| {worst:.2e}")


if __name__ == "__main__":
    main()
