"""Florence-VL feature extraction: one DaViT pass per image (ours) vs the per-prompt re-run, at
Florence-2-base geometry with random weights.

Ours (florence_vl/vl/features.py): DaViT once -> depth; the three prompts of every image as one masked encoder
batch reusing the depth features; on the fast vision path (`florence_vl.florence2.speed.fast_florence2`).
Reference (`per_prompt_features`): depth once, then Florence-2's own forward once per prompt (DaViT again each
time), as the release did (without its padding mistake), on transformers' model as it comes (eager fp32).
A details line also gives the one-pass path on the reference's own kernels, which separates the algorithmic
gain (FLOPs not spent) from the kernel gain.

    python bench/vl_features.py            # 768 px, 1 image
    python bench/vl_features.py --quick    # 384 px
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Florence2ForConditionalGeneration

from common import best_of, matmul_peak, others_note, setup
from florence_vl.florence2.geometry import feature_map_side, florence2_config
from florence_vl.florence2.special_tokens import train_bart_tokenizer
from florence_vl.vl.features import BREADTH_PROMPTS, FlorenceFeatures, per_prompt_features


def flops_of(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def run(quick: bool = False, images: int = 1, repeats: int = 2, verbose: bool = True) -> list[dict]:
    from florence_vl.florence2.runner import Florence2
    from florence_vl.florence2.geometry import image_processor
    from florence_vl.florence2.speed import fast_florence2

    say = print if verbose else (lambda *a, **k: None)
    size = 384 if quick else 768
    tokenizer = train_bart_tokenizer(list(BREADTH_PROMPTS.values()) * 4, vocab_size=400)
    torch.manual_seed(0)
    config = florence2_config("base", 51328, tokenizer.image_token_id)  # the published embedding size
    model = Florence2ForConditionalGeneration(config).eval()
    n_tokens = feature_map_side(config.vision_config, size) ** 2 + 1
    reference = FlorenceFeatures(model, tokenizer, n_tokens)
    fast, how = fast_florence2(Florence2(model, tokenizer, image_processor(size)))
    ours = FlorenceFeatures(fast.model, tokenizer, n_tokens)
    pixels = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(0))

    def run_ours():
        with torch.inference_mode():
            return ours(pixels.to(fast.dtype))

    def run_one_pass_reference_kernels():
        with torch.inference_mode():
            return reference(pixels)

    def run_reference():
        return per_prompt_features(reference, pixels)

    def run_reference_same_dtype():                            # the per-prompt path on our model and dtype
        return per_prompt_features(ours, pixels.to(fast.dtype))

    slow = run_reference()                                     # warm-up, and what ours must equal
    fast_out = run_ours()
    worst = max(((fast_out[k].float() - slow[k]).abs().max() / slow[k].abs().max()).item() for k in slow)
    flops_ours, flops_ref = flops_of(run_one_pass_reference_kernels), flops_of(run_reference)
    t_ref, _ = best_of(run_reference, repeats)
    t_ours, _ = best_of(run_ours, repeats)
    t_same, _ = best_of(run_one_pass_reference_kernels, repeats)
    run_reference_same_dtype()
    t_ref_dtype, _ = best_of(run_reference_same_dtype, repeats)
    peak = matmul_peak(torch.float32 if fast.dtype == torch.float32 else torch.bfloat16)
    peak_bf16 = matmul_peak(torch.bfloat16) if fast.dtype == torch.float32 else peak
    gflops = flops_ours / t_ours.seconds / 1e9
    say(f"  {size} px ({n_tokens} image tokens), {images} image(s); ours: {how}")
    say(f"  ours {t_ours.seconds:.2f} s ({flops_ours / 1e9:.0f} GFLOP), per-prompt reference {t_ref.seconds:.2f} s "
        f"({flops_ref / 1e9:.0f} GFLOP, {flops_ref / flops_ours:.2f}x the FLOPs); one pass on the reference's kernels "
        f"{t_same.seconds:.2f} s ({t_ref.seconds / t_same.seconds:.2f}x); per-prompt path in our dtype and kernels "
        f"{t_ref_dtype.seconds:.2f} s (same-dtype ratio {t_ref_dtype.seconds / t_ours.seconds:.2f}x); max relative "
        f"difference {worst:.1e}; {others_note(t_ours, t_ref, t_same, t_ref_dtype)}")
    return [{"name": "vl_features" + ("_384" if quick else ""), "ours": t_ours.seconds, "reference": t_ref.seconds,
             "unit": "s", "ratio": t_ref.seconds / t_ours.seconds, "flops": flops_ours, "reference_flops": flops_ref,
             "gflops_per_s": gflops, "peak_fraction": gflops / peak,
             "peak_name": "fp32 matmul" if fast.dtype == torch.float32 else "bf16 matmul", "peak_gflops_per_s": peak,
             "bf16_peak_gflops_per_s": peak_bf16, "one_pass_reference_kernels_s": t_same.seconds,
             "algorithmic_ratio": t_ref.seconds / t_same.seconds,
             "same_dtype_reference_s": t_ref_dtype.seconds, "same_dtype_ratio": t_ref_dtype.seconds / t_ours.seconds,
             "max_rel_diff": worst, "image_size": size,
             "images": images, "ours_is": how, "reference_is": "per-prompt re-run, transformers eager fp32",
             "peak_rss_mb": max(t.peak_rss_mb for t in (t_ours, t_ref, t_same, t_ref_dtype)),
             "others": max(t.others for t in (t_ours, t_ref, t_same, t_ref_dtype))}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="384 px inputs instead of 768")
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    setup()
    from common import result_line

    for row in run(args.quick, args.images, args.repeats):
        print(result_line(row))


if __name__ == "__main__":
    main()
