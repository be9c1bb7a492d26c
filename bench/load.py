"""Loading a Florence-2 checkpoint stored in fp32 as bf16: memory and time, ours vs transformers.

Ours: `florence_vl.florence2.checkpoint.load_florence2(dir, dtype=bfloat16)` (reads tensor by tensor, casting
in 16 MiB chunks). Reference: `Florence2ForConditionalGeneration.from_pretrained(dir, dtype=torch.bfloat16)`.
Each load runs in a fresh process; peak RSS growth = VmHWM after the load - VmRSS before it (imports done).
The checkpoint is Florence-2-base with random weights in the native layout (--quick: nano geometry with the
published vocabulary), written once to a temporary folder. The line compares the peak RSS growth (MiB, lower is better: ratio = reference / ours); times are printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(2)
from transformers import Florence2ForConditionalGeneration
from florence_vl.florence2.checkpoint import load_florence2

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

which, directory = sys.argv[1], sys.argv[2]
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
start = time.perf_counter()
if which == "ours":
    model = load_florence2(directory, dtype=torch.bfloat16).model
else:
    model = Florence2ForConditionalGeneration.from_pretrained(directory, dtype=torch.bfloat16)
seconds = time.perf_counter() - start
params = list(model.parameters())
print(json.dumps({"seconds": seconds, "growth_mb": status("VmHWM") - base, "after_mb": status("VmRSS") - base,
                  "dtypes": sorted({str(p.dtype) for p in params}),
                  "model_mb": sum(p.numel() * p.element_size() for p in params) / 2**20}))
"""


def write_checkpoint(directory: Path, preset: str) -> float:
    import torch
    from transformers import Florence2ForConditionalGeneration

    from florence_vl.florence2.checkpoint import Florence2Bundle, save_florence2
    from florence_vl.florence2.geometry import florence2_config, image_processor
    from florence2_batching import build

    florence, _ = build(768)
    config = florence2_config(preset, vocab_size=51328, image_token_id=florence.tokenizer.image_token_id)
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config).eval()
    save_florence2(Florence2Bundle(model, florence.tokenizer, image_processor(768 if preset == "base" else 256),
                                   "native", "bench"), directory)
    return sum(p.numel() * 4 for p in model.parameters()) / 2**20


def measure(which: str, directory: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, which, str(directory)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, verbose: bool = True) -> list[dict]:
    say = print if verbose else (lambda *a, **k: None)
    preset = "nano" if quick else "base"
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "ckpt"
        fp32_mb = write_checkpoint(directory, preset)
        ours, ref = measure("ours", directory), measure("reference", directory)
        ours2, ref2 = measure("ours", directory), measure("reference", directory)
    ours = min(ours, ours2, key=lambda r: r["seconds"]) | {"growth_mb": max(ours["growth_mb"], ours2["growth_mb"])}
    ref = min(ref, ref2, key=lambda r: r["seconds"]) | {"growth_mb": max(ref["growth_mb"], ref2["growth_mb"])}
    say(f"  Florence-2-{preset} stored fp32 ({fp32_mb:.0f} MiB), loaded as bf16 ({ours['model_mb']:.0f} MiB): ours "
        f"{ours['seconds']:.2f} s, peak RSS +{ours['growth_mb']:.0f} MiB, dtypes {ours['dtypes']}; transformers "
        f"{ref['seconds']:.2f} s, peak RSS +{ref['growth_mb']:.0f} MiB, dtypes {ref['dtypes']}")
    return [{"name": f"load_{preset}_bf16", "ours": ours["growth_mb"], "reference": ref["growth_mb"], "unit": "MiB",
             "ratio": ref["growth_mb"] / ours["growth_mb"], "peak_rss_mb": ours["growth_mb"],
             "ours_s": ours["seconds"], "reference_s": ref["seconds"],
             "fp32_checkpoint_mb": fp32_mb, "bf16_model_mb": ours["model_mb"],
             "ours_is": "load_florence2(dtype=bf16), tokenizer and image processor included",
             "reference_is": "Florence2ForConditionalGeneration.from_pretrained(dtype=bf16), model only"}]
