"""DaViT forward (vision tower + projector = Florence2Model.get_image_features) at Florence-2-base geometry.

Reference: transformers' module as it comes (eager, fp32, SDPA attention). Ours: the vision path of
`florence_vl.florence2.speed.fast_florence2` (dtype, channels-last convs, optionally torch.compile). Every variant
below is timed in this one process, best of `repeats`, one image (768 px, --quick 384 px), and its GFLOP/s is
given against both matmul peaks measured here (fp32 and bf16, nn.Linear layout 2048^3).

Variants (details lines): eager bf16 / fp16, channels-last convs (fp32, bf16), `fast_davit`'s copy-free forms
without packing (fp32: what AVX2 CPUs run; bf16), compiled bf16 (first call = compile
time, with whatever inductor cache the machine has; TORCHINDUCTOR_CACHE_DIR=/fresh/dir for a cold one).
The row's ratio is ours (the fast dtype: bf16 on AMX CPUs) against the reference in fp32; the details give the
same-dtype ratio (ours against eager bf16: what the conversion adds beyond the dtype).
"""

from __future__ import annotations

import copy
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import best_of, matmul_peak, others_note
from florence2_batching import build

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def variant(model, dtype: torch.dtype, *, channels_last: bool = False, compile: bool = False, fast: bool = False):
    """(callable pixels -> features, seconds to prepare) on a converted copy of `model`."""
    from florence_vl.florence2 import speed
    from florence_vl.florence2.fast_davit import use_fast_davit

    start = time.perf_counter()
    m = copy.deepcopy(model).to(dtype)
    if fast:                                   # the copy-free forms alone (no packing): the fp32 path of AVX2 CPUs
        use_fast_davit(m)
    if channels_last:
        speed.channels_last(m)
    if compile:
        speed.compile_vision(m)
    get = m.model.get_image_features
    return (lambda px: get(px.to(dtype)).pooler_output), time.perf_counter() - start


def paired_peak_fractions(fn, pixels, flops: float, pairs: int) -> dict:
    """The forward's GFLOP/s over the bf16 matmul peak measured just before it, `pairs` times.

    Why pairs: on this VM the 2048^3 bf16 product swings 600-2000 GFLOP/s between calls a minute apart (the host's
    AMX share moves), so a peak measured once and a forward timed later can be 3x apart for no reason of ours.
    A peak and a forward measured back to back see the same machine; the median of their ratios is the figure.
    """
    fractions, peaks = [], []
    for _ in range(pairs):
        peak = matmul_peak(torch.bfloat16, reps=2)
        with torch.inference_mode():
            start = time.perf_counter()
            fn(pixels)
            seconds = time.perf_counter() - start
        peaks.append(peak)
        fractions.append(flops / seconds / 1e9 / peak)
    ordered = sorted(fractions)
    return {"median": ordered[len(ordered) // 2], "fractions": fractions, "peaks": peaks}


def run(quick: bool = False, repeats: int = 3, variants: str | None = None, verbose: bool = True) -> list[dict]:
    from florence_vl.florence2.speed import fast_florence2

    say = print if verbose else (lambda *a, **k: None)
    size = 384 if quick else 768
    florence, _ = build(size)
    model = florence.model
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        want = model.model.get_image_features(pixels).pooler_output
    flops = counter.get_total_flops()
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    say(f"  {size} px, 1 image: {flops / 1e9:.1f} GFLOP; matmul peaks measured now: fp32 {peaks['fp32']:.0f}, "
        f"bf16 {peaks['bf16']:.0f} GFLOP/s")
    fast, how = fast_florence2(florence)
    chosen = [("ours: " + how, lambda px: fast.image_features(px.to(fast.dtype)), 0.0)]
    table = variants.split(",") if variants else (["eager_bf16", "cl_bf16"] if quick else
                                                  ["eager_bf16", "eager_fp16", "cl_fp32", "cl_bf16", "fast_fp32",
                                                   "fast_bf16", "compile_bf16"])
    results = {}
    with torch.inference_mode():
        candidates = [("reference: eager fp32", lambda px: model.model.get_image_features(px).pooler_output, 0.0)]
        candidates += chosen
        for name in table:
            kind, dt = name.split("_")
            fn, prep = variant(model, DTYPES[dt], channels_last=kind in ("cl", "compile"), compile=kind == "compile",
                               fast=kind == "fast")
            candidates.append((name, fn, prep))
        for name, fn, prep in candidates:
            start = time.perf_counter()
            got = fn(pixels)  # first call: warm-up, or the compilation
            first = time.perf_counter() - start
            timing, got = best_of(lambda: fn(pixels), repeats)
            err = ((got.float() - want).abs().max() / want.abs().max()).item()
            gflops = flops / timing.seconds / 1e9
            results[name] = (timing, err, first + prep)
            say(f"  {name:42s} {timing.seconds:7.3f} s  {gflops:6.1f} GFLOP/s = {gflops / peaks['fp32']:4.0%} of fp32 / "
                f"{gflops / peaks['bf16']:4.0%} of bf16 peak; first call {first + prep:6.1f} s; max rel diff "
                f"{err:.1e}; {others_note(timing)}")
    ref, ours = results["reference: eager fp32"][0], results[chosen[0][0]][0]
    gflops = flops / ours.seconds / 1e9
    paired = paired_peak_fractions(chosen[0][1], pixels, flops, pairs=3 if quick else 7)
    say(f"  paired with the bf16 peak (each forward right after a 2048^3 product): fraction of peak median "
        f"{paired['median']:.0%} (range {min(paired['fractions']):.0%}-{max(paired['fractions']):.0%}; peaks "
        f"{min(paired['peaks']):.0f}-{max(paired['peaks']):.0f} GFLOP/s)")
    same = {torch.bfloat16: "eager_bf16", torch.float32: "reference: eager fp32", torch.float16: "eager_fp16"}.get(
        fast.dtype)
    same_dtype_ratio = results[same][0].seconds / ours.seconds if same in results else float("nan")
    say(f"  ours {ours.seconds:.3f} s vs eager fp32 {ref.seconds:.3f} s ({ref.seconds / ours.seconds:.2f}x); same dtype "
        f"({same}): {same_dtype_ratio:.2f}x")
    return [{"name": "davit" + ("_384" if quick else ""), "ours": 1 / ours.seconds, "reference": 1 / ref.seconds,
             "unit": "img/s", "ratio": ref.seconds / ours.seconds, "flops": flops, "gflops_per_s": gflops,
             "peak_fraction": gflops / peaks["bf16"], "peak_name": "bf16 matmul", "peak_gflops_per_s": peaks["bf16"],
             "paired_peak_fraction": paired["median"], "paired": paired,
             "fp32_peak_fraction": gflops / peaks["fp32"], "fp32_peak_gflops_per_s": peaks["fp32"],
             "ours_is": how, "reference_is": "transformers eager fp32", "image_size": size,
             "same_dtype_variant": same, "same_dtype_ratio": same_dtype_ratio,
             "variants": {k: {"seconds": t.seconds, "max_rel_diff": e, "first_call_s": f, "others": t.others}
                          for k, (t, e, f) in results.items()},
             "peak_rss_mb": max(t.peak_rss_mb for t, _, _ in results.values()),
             "others": max(ref.others, ours.others)}]
