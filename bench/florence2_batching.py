"""Batched vs one-at-a-time Florence-2 task throughput, at Florence-2-base geometry with random weights.

Ours: `Florence2.run_requests(requests, batch_size=N)`, all N requests in one padded, masked batch.
Reference: the same runner, the same model instance, `batch_size=1` (one request at a time).
Both decode greedily (num_beams=1 unless --beams) and exactly `max_new_tokens` tokens per request: the
special ids (<s>, <pad>, </s>, <unk>, <mask>) are suppressed on top of what the runner suppresses, so a
random model can never stop early and every generated token shows in the compared texts.

Per dtype it prints
    florence2_batching_<dtype>: ours X img/s, reference Y img/s, ratio Z
plus the FLOPs of one batched run (FlopCounterMode; the count does not depend on the dtype) and the
GFLOP/s and fraction of peak that the batched run reached. The peak is a large square matmul measured in
this process (and, for comparison, the figures in /work/shared/DESIGN.md: 100 fp32, 355 bf16).

    .venv/bin/python bench/florence2_batching.py            # fp32 and bf16, 8 images each, ~4 min
    .venv/bin/python bench/florence2_batching.py --quick    # 384 px inputs, fewer images/tokens, ~1 min
    .venv/bin/python bench/florence2_batching.py --dtype bf16 --images 8

It is one module of the suite (`python bench/run.py florence2_batching`); its shared helpers (matmul peak,
CPU share of other processes, peak RSS) live in bench/common.py.

bf16 used to run 2 images only (written on an AVX2-only CPU where bf16 was ~6x slower than fp32, then an
AVX512-BF16 one where it was half the fp32 rate); with AMX-BF16 it is the fast dtype, so both run 8
(docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import Florence2ForConditionalGeneration
from transformers.utils import logging as hf_logging

from common import busy_cpu_seconds, matmul_peak, reset_peak_rss, rss_mb
from florence_vl.florence2.geometry import florence2_config, image_processor
from florence_vl.florence2.runner import Florence2, TaskRequest
from florence_vl.florence2.special_tokens import train_bart_tokenizer
from florence_vl.florence2.tasks import TASKS

SEED = 0
VOCAB_SIZE = 51328  # the published Florence-2 embedding size (51289 tokens + <image>, padded)
DESIGN_PEAK = {"fp32": 100.0, "bf16": 355.0}  # GFLOP/s, /work/shared/DESIGN.md
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# (image width x height, task, text, region): different sizes, tasks and prompt lengths (6..20 tokens).
WORKLOAD = [
    ((640, 480), "<OD>", None, None),
    ((512, 512), "<CAPTION>", None, None),
    ((480, 640), "<CAPTION_TO_PHRASE_GROUNDING>", "a red car parked next to a green tree and a dog", None),
    ((800, 600), "<REGION_TO_CATEGORY>", None, "40,60,320,400"),
    ((1024, 768), "<OCR_WITH_REGION>", None, None),
    ((600, 800), "<REGION_TO_DESCRIPTION>", None, "100,120,500,700"),
    ((768, 768), "<OPEN_VOCABULARY_DETECTION>", "a blue bicycle", None),
    ((320, 240), "<DETAILED_CAPTION>", None, None),
]


def make_requests(n: int, seed: int = SEED) -> list[TaskRequest]:
    """n requests cycling through WORKLOAD, on random-noise images of the listed sizes."""
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(n):
        (w, h), task, text, region = WORKLOAD[i % len(WORKLOAD)]
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        requests.append(TaskRequest(image, task, text, region))
    return requests


def build(image_size: int = 768, seed: int = SEED) -> tuple[Florence2, dict]:
    """Florence-2-base with random weights (fp32) and a small BPE tokenizer trained on the task prompts."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    corpus = [t.prompt for t in TASKS.values()] + [w[2] for w in WORKLOAD if w[2]]
    tokenizer = train_bart_tokenizer(corpus * 4, vocab_size=600)
    tokenizer_s = time.perf_counter() - start
    start = time.perf_counter()
    config = florence2_config("base", vocab_size=VOCAB_SIZE, image_token_id=tokenizer.image_token_id)
    model = Florence2ForConditionalGeneration(config)
    model_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    return Florence2(model, tokenizer, image_processor(image_size)), {
        "tokenizer_s": tokenizer_s, "model_s": model_s, "params": params, "tokenizer_len": len(tokenizer)}


def suppressed_ids(florence: Florence2) -> list[int]:
    """The runner's suppressed ids plus the special ids, so decoding never stops early nor emits blanks."""
    tok = florence.tokenizer
    vocab = florence.model.get_output_embeddings().weight.shape[0]
    special = {tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id}
    return sorted(special | {florence.image_token_id} | set(range(len(tok), vocab)))


@contextmanager
def stage_timer(model):
    """Wall time spent in the vision tower (+ projector) and the text encoder; the rest is decoding."""
    times = {"vision": 0.0, "encoder": 0.0}
    starts: dict[str, float] = {}
    handles = []
    for name, module in [("vision", model.model.vision_tower), ("vision", model.model.multi_modal_projector),
                         ("encoder", model.model.language_model.encoder)]:
        def pre(_m, _a, name=name):
            starts[name] = time.perf_counter()

        def post(_m, _a, _o, name=name):
            times[name] += time.perf_counter() - starts[name]

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield times
    finally:
        for h in handles:
            h.remove()


def malloc_setting() -> str:
    """The glibc malloc tuning in effect (docs/performance.md: it decides whether batching pays here)."""
    tuned = [f"{k}={os.environ[k]}" for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                                              "LD_PRELOAD") if os.environ.get(k)]
    return " ".join(tuned) or "glibc defaults"


def timed_run(florence: Florence2, requests, batch_size: int, **options) -> tuple[float, list, dict]:
    """Seconds, results and a breakdown: stage seconds, and `others`, the share of this machine's CPU
    that other processes took meanwhile (timings are only trustworthy when it is near 0)."""
    reset_peak_rss()
    busy0, own0 = busy_cpu_seconds(), time.process_time()
    with stage_timer(florence.model) as stages:
        start = time.perf_counter()
        results = florence.run_requests(requests, batch_size=batch_size, **options)
        seconds = time.perf_counter() - start
    busy1, own1 = busy_cpu_seconds(), time.process_time()
    stages = dict(stages, decode=seconds - stages["vision"] - stages["encoder"], peak_rss_mb=rss_mb())
    if busy0 is not None:
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (seconds * (os.cpu_count() or 1))
        stages["others"] = min(1.0, others)
    return seconds, results, stages


def count_flops(florence: Florence2, requests, **options) -> tuple[int, dict]:
    """FLOPs of one batched run, total and per top-level part (it also serves as that dtype's warm-up)."""
    counter = FlopCounterMode(display=False)
    with counter:
        florence.run_requests(requests, batch_size=len(requests), **options)
    per_module = counter.get_flop_counts()
    parts = {}
    # The vision tower, projector and text encoder are called outside the model's forward (generate runs
    # the encoder once), so the counter files them under their class names; the decoder steps under paths.
    for key, name in [("vision", "Florence2VisionBackbone"), ("projector", "Florence2MultiModalProjector"),
                      ("encoder", "BartEncoder"), ("decoder", "language_model.decoder"), ("lm_head", "lm_head")]:
        parts[key] = sum(sum(v.values()) for k, v in per_module.items() if k == name or k.endswith("." + name))
    return counter.get_total_flops(), parts


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def run(quick: bool = False, dtypes: tuple[str, ...] = ("fp32", "bf16"), images: int | None = None,
        num_beams: int = 1, max_new_tokens: int | None = None, verbose: bool = True) -> list[dict]:
    """Run the benchmark; one dict per dtype: name, ours, reference, unit, ratio, flops, gflops_per_s,
    peak_fraction (vs the matmul peak measured here), plus details (timings per stage, build time...)."""
    torch.set_num_threads(2)
    hf_logging.set_verbosity_error()
    say = print if verbose else (lambda *a, **k: None)
    image_size = 384 if quick else 768
    new_tokens = max_new_tokens or (8 if quick else 16)
    florence, info = build(image_size)
    say(f"built Florence-2-base ({info['params'] / 1e6:.1f}M params, vocab {VOCAB_SIZE}) in {info['model_s']:.1f} s; "
        f"tokenizer ({info['tokenizer_len']} tokens) in {info['tokenizer_s']:.2f} s; "
        f"threads {torch.get_num_threads()}, input {image_size} px, {florence.num_image_tokens} image tokens, "
        f"{new_tokens} new tokens, beams {num_beams}; malloc: {malloc_setting()}")
    options = dict(num_beams=num_beams, max_new_tokens=new_tokens, with_scores=True,
                   suppress_tokens=suppressed_ids(florence))
    order = sorted(dtypes, key=lambda d: d != "fp32")
    counts = {d: images or ({"fp32": 4, "bf16": 4} if quick else {"fp32": 8, "bf16": 8})[d] for d in order}
    # FLOPs do not depend on the dtype: count them once per batch size, in fp32 (cheap on this CPU). That
    # batched run is also the process's warm-up (kernels, allocator, thread pool, lazy imports).
    start = time.perf_counter()
    flops_by_n = {n: count_flops(florence, make_requests(n), **options) for n in sorted(set(counts.values()))}
    say(f"counted FLOPs (fp32, batched, doubles as warm-up) in {time.perf_counter() - start:.1f} s")
    rows = []
    # The model is built in fp32 and converted in place, so every dtype uses the same instance.
    for dtype_name in order:
        dtype = DTYPES[dtype_name]
        n = counts[dtype_name]
        requests = make_requests(n)
        lengths = [len(florence._prepare(i, r).prompt_ids) for i, r in enumerate(requests)]
        if florence.model.dtype != dtype:
            florence.model.to(dtype)
            # Warm this dtype's kernels on a 192 px input (one request, 2 tokens): same code path, seconds
            # instead of a full-size run.
            small = Florence2(florence.model, florence.tokenizer, image_processor(192))
            small.run_requests(requests[:1], batch_size=1, **dict(options, max_new_tokens=2))
        flops, parts = flops_by_n[n]
        ours_s, ours_out, ours_stages = timed_run(florence, requests, n, **options)
        ref_s, ref_out, ref_stages = timed_run(florence, requests, 1, **options)
        identical = [a.text for a in ours_out] == [b.text for b in ref_out]
        same = sum(a.text == b.text for a, b in zip(ours_out, ref_out))
        peak = matmul_peak(dtype)
        gflops = flops / ours_s / 1e9
        row = {
            "name": f"florence2_batching_{dtype_name}", "ours": n / ours_s, "reference": n / ref_s,
            "unit": "img/s", "ratio": ref_s / ours_s, "flops": flops, "gflops_per_s": gflops,
            "peak_fraction": gflops / peak, "peak_gflops_per_s": peak,
            "design_peak_fraction": gflops / DESIGN_PEAK[dtype_name], "images": n, "image_size": image_size,
            "max_new_tokens": new_tokens, "num_beams": num_beams, "prompt_tokens": lengths,
            "outputs_identical": identical, "outputs_same": same, "ours_s": ours_s, "reference_s": ref_s,
            "ours_stages_s": ours_stages, "reference_stages_s": ref_stages, "flops_by_part": parts,
            "build_s": info["model_s"], "peak_rss_mb": max(ours_stages["peak_rss_mb"], ref_stages["peak_rss_mb"]),
            "others": max(ours_stages.get("others", 0.0), ref_stages.get("others", 0.0)),
        }
        rows.append(row)
        say(f"{row['name']}: ours {_fmt(row['ours'])} img/s, reference {_fmt(row['reference'])} img/s, "
            f"ratio {row['ratio']:.3g}")
        say(f"  flops: {flops / 1e9:.1f} GFLOP per batched run of {n} "
            f"({', '.join(f'{k} {v / 1e9:.1f}' for k, v in parts.items())}); "
            f"{gflops:.1f} GFLOP/s = {row['peak_fraction']:.0%} of the {peak:.0f} GFLOP/s matmul peak measured now "
            f"({row['design_peak_fraction']:.0%} of DESIGN.md's {DESIGN_PEAK[dtype_name]:.0f})")
        for label, secs, stages in [("ours", ours_s, ours_stages), ("reference", ref_s, ref_stages)]:
            split = ", ".join(f"{k} {stages[k]:.2f}" for k in ("vision", "encoder", "decode"))
            say(f"  {label:9s} {secs:7.2f} s ({split}); peak RSS {stages['peak_rss_mb']:.0f} MiB; other processes "
                f"took {stages.get('others', float('nan')):.0%} of the CPUs meanwhile")
        busiest = max(ours_stages.get("others", 0.0), ref_stages.get("others", 0.0))
        if busiest > 0.1:
            say(f"  WARNING: other processes took up to {busiest:.0%} of the CPUs: these timings are not clean")
        say(f"  {n} requests, prompt tokens {min(lengths)}..{max(lengths)}; "
            f"outputs identical: {identical} ({same}/{n} texts equal)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="384 px inputs, 4 fp32 / 2 bf16 images, 8 tokens")
    parser.add_argument("--dtype", choices=["bf16", "fp32", "both"], default="both")
    parser.add_argument("--images", type=int, default=None,
                        help="requests per run (= the batch size); default 8 (quick: 4)")
    parser.add_argument("--beams", type=int, default=1, help="num_beams (1 = greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 16 (quick: 8)")
    args = parser.parse_args()
    dtypes = ("fp32", "bf16") if args.dtype == "both" else (args.dtype,)
    run(args.quick, dtypes, args.images, args.beams, args.max_new_tokens)


if __name__ == "__main__":
    main()
