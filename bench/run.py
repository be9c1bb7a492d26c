"""The benchmark suite: one command, one line per benchmark, ours against a reference measured in the same run.

    python bench/run.py                    # everything (~25-40 min on the 2-core CPU)
    python bench/run.py --quick            # small inputs, a few minutes
    python bench/run.py --quick davit llm_decode
    python bench/run.py --json out.json    # also write every row (with its details) as JSON

Each benchmark runs in its own process (so its peak RSS is its own) and prints details as it goes, then
    NAME: ours X unit, reference Y unit, ratio Z
    NAME   FLOPs, achieved GFLOP/s and fraction of the matmul peak (or of the memory bandwidth) measured in that
           process, peak RSS, and the share of the CPUs other processes took during the timed runs.
The summary at the end repeats every such line. What each benchmark compares: docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import fmt, machine_line, result_line, setup  # noqa: E402

# name -> (module in bench/, what it compares)
BENCHMARKS = {
    "davit": ("davit", "DaViT (vision tower + projector) forward, Florence-2-base: ours vs transformers eager"),
    "vl_features": ("vl_features", "Florence-VL depth + breadth features: one pass vs per-prompt re-runs"),
    "florence2_tasks": ("florence2_tasks", "<OD>/<CAPTION> over N images: our runner vs transformers "
                                           "processor + generate one image at a time, fp32"),
    "florence2_batching": ("florence2_batching", "our runner batched vs one at a time, mixed tasks"),
    "vl_cache": ("vl_cache", "Florence-VL time to first token: second question on an image vs the first"),
    "vl_train_step": ("vl_train_step", "Florence-VL-nano stage-2 training step: loss projected at the targets only "
                                       "vs the LLM's loss over every position"),
    "llm_decode": ("llm_decode", "LLM decode tok/s at Phi-3.5-mini geometry vs the memory-bandwidth bound; int8"),
    "vl_int8": ("vl_int8", "Florence-VL-nano accuracy on the nano test split: int8 LLM vs fp32"),
    "auto_dtype": ("auto_dtype", "a bf16-stored Florence-2 under dtype auto: the CPU's fast dtype vs the stored bf16"),
    "load": ("load", "loading a checkpoint in bf16: peak RSS and time, ours vs transformers from_pretrained"),
}


def detail_line(row: dict) -> str:
    parts = []
    if row.get("flops"):
        parts.append(f"{row['flops'] / 1e9:.1f} GFLOP counted")
    if row.get("gflops_per_s"):
        parts.append(f"{row['gflops_per_s']:.1f} GFLOP/s")
    if row.get("peak_fraction") is not None:
        parts.append(f"{row['peak_fraction']:.0%} of the {row.get('peak_name', 'matmul')} peak "
                     f"{fmt(row.get('peak_gflops_per_s', float('nan')))} GFLOP/s")
    if row.get("paired_peak_fraction") is not None:
        parts.append(f"{row['paired_peak_fraction']:.0%} of the peak measured just before each forward (median)")
    if row.get("bandwidth_fraction") is not None:
        parts.append(f"{row['bandwidth_fraction']:.0%} of the bandwidth bound "
                     f"({fmt(row['bound'])} {row['unit']} = {fmt(row['bandwidth_gb_s'])} GB/s / "
                     f"{row['bytes_per_unit'] / 1e6:.0f} MB)")
    if row.get("peak_rss_mb"):
        parts.append(f"peak RSS {row['peak_rss_mb']:.0f} MiB")
    if row.get("others") is not None:
        parts.append(f"others {row['others']:.0%} of the CPUs" + (" (CONTENDED)" if row["others"] > 0.1 else ""))
    return f"  {row['name']}: " + "; ".join(parts) if parts else ""


def run_child(name: str, quick: bool, out: Path) -> None:
    setup()
    module = importlib.import_module(BENCHMARKS[name][0])
    rows = module.run(quick=quick)
    out.write_text(json.dumps(rows, default=str))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small inputs: the whole suite in a few minutes")
    parser.add_argument("--json", type=Path, help="write all rows (with details) to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.quick, args.child_out)
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    setup()
    print(machine_line(), flush=True)
    rows, failed = [], []
    start = time.perf_counter()
    for name in names:
        print(f"\n== {name}: {BENCHMARKS[name][1]}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            cmd = [sys.executable, str(HERE / "run.py"), "--child", name, "--child-out", str(out)]
            t0 = time.perf_counter()
            code = subprocess.call(cmd + (["--quick"] if args.quick else []), env=dict(os.environ))
            if code != 0 or not out.exists():
                failed.append(name)
                print(f"{name}: FAILED (exit code {code})", flush=True)
                continue
            got = json.loads(out.read_text())
        for row in got:
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(result_line(row), flush=True)
            print(detail_line(row), flush=True)
    print(f"\n== summary ({'quick' if args.quick else 'full'}, {time.perf_counter() - start:.0f} s)")
    for row in rows:
        print(result_line(row))
        print(detail_line(row))
    for name in failed:
        print(f"{name}: FAILED")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
