"""dtype "auto" on a checkpoint stored in bf16: ours (`Florence2.from_pretrained(dir)`, which computes in this CPU's
fast dtype, florence_vl/compute_dtype.py) vs the checkpoint's own dtype (`from_pretrained(dir, dtype=None)`, what
"auto" meant before). Same requests, both through our runner, greedy, a fixed number of new tokens.

Florence-2-base geometry with random weights at 384 px, 2 images (--quick: nano geometry at 256 px, 4 images).
On a CPU with AMX-BF16 both load in bf16 and the ratio is ~1; without it ours widens to fp32 (no precision is
lost: the fp32 weights are the bf16 ones) and the ratio is what bf16 matmuls cost there.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from florence2_batching import VOCAB_SIZE, make_requests, suppressed_ids
from florence_vl.florence2.runner import Florence2

NEW_TOKENS = 16


def write_bf16_checkpoint(directory: Path, preset: str, image_size: int) -> None:
    from transformers import Florence2ForConditionalGeneration

    from florence2_batching import build
    from florence_vl.florence2.checkpoint import Florence2Bundle, save_florence2
    from florence_vl.florence2.geometry import florence2_config, image_processor

    florence, _ = build(image_size)
    config = florence2_config(preset, vocab_size=VOCAB_SIZE, image_token_id=florence.tokenizer.image_token_id)
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config).eval().to(torch.bfloat16)
    save_florence2(Florence2Bundle(model, florence.tokenizer, image_processor(image_size), "native", "bench"),
                   directory)


def time_runs(florence: Florence2, requests) -> tuple[float, list[str]]:
    options = dict(num_beams=1, max_new_tokens=NEW_TOKENS, with_scores=False,
                   suppress_tokens=suppressed_ids(florence))
    florence.run_requests(requests[:1], **options)                          # warm-up
    start = time.perf_counter()
    results = florence.run_requests(requests, batch_size=len(requests), **options)
    return time.perf_counter() - start, [r.text for r in results]


def run(quick: bool = False, verbose: bool = True) -> list[dict]:
    say = print if verbose else (lambda *a, **k: None)
    preset, size, n = ("nano", 256, 4) if quick else ("base", 384, 2)
    requests = [r.__class__(r.image, "<CAPTION>") for r in make_requests(n)]
    with tempfile.TemporaryDirectory() as tmp:
        write_bf16_checkpoint(Path(tmp), preset, size)
        ours = Florence2.from_pretrained(tmp)
        reference = Florence2.from_pretrained(tmp, dtype=None)
        ours_s, ours_texts = time_runs(ours, requests)
        ref_s, ref_texts = time_runs(reference, requests)
    same = sum(a == b for a, b in zip(ours_texts, ref_texts))
    say(f"  Florence-2-{preset} stored bf16, {n} x <CAPTION> at {size} px, {NEW_TOKENS} tokens each: auto computes in "
        f"{str(ours.dtype).replace('torch.', '')} {ours_s:.2f} s, the checkpoint's "
        f"{str(reference.dtype).replace('torch.', '')} {ref_s:.2f} s; {same}/{n} texts equal")
    return [{"name": f"auto_dtype_{preset}_bf16_checkpoint", "ours": ours_s, "reference": ref_s, "unit": "s",
             "ratio": ref_s / ours_s, "ours_dtype": str(ours.dtype), "reference_dtype": str(reference.dtype),
             "texts_equal": same, "images": n,
             "ours_is": "Florence2.from_pretrained(dir) (dtype auto)",
             "reference_is": "Florence2.from_pretrained(dir, dtype=None): the stored bf16"}]


if __name__ == "__main__":
    import sys

    from common import result_line, setup

    setup()
    for row in run(quick="--quick" in sys.argv):
        print(result_line(row))
