"""What every benchmark of the suite needs: machine facts, the in-process matmul peaks and memory bandwidth,
the CPU share other processes took during a timed run, peak RSS, and the one-line result format.

    NAME: ours X unit, reference Y unit, ratio Z

The peaks are measured in the benchmark's own process (best of a few), because this machine is shared and a
peak taken in another process at another time says little about the run it is compared with.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
THREADS = 2


def setup(threads: int = THREADS) -> None:
    torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


# ------------------------------------------------------------------------------------------------- machine


def machine_facts() -> dict:
    """CPU model, the ISA flags that decide the fast dtypes, torch's kernel choice, threads, versions."""
    model, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    import transformers

    wanted = ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_int8"]
    return {"cpu": model, "cores": os.cpu_count(), "isa": [f for f in wanted if f in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def machine_line(facts: dict | None = None) -> str:
    f = facts or machine_facts()
    return (f"machine: {f['cpu']}, {f['cores']} CPUs, {' '.join(f['isa'])}; torch {f['torch']} "
            f"({f['torch_capability']}), transformers {f['transformers']}, {f['threads']} threads")


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 3) -> float:
    """GFLOP/s of an n x n x n product in nn.Linear's layout (x @ W.T), best of `reps`."""
    a, w = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.nn.functional.linear(a, w)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.nn.functional.linear(a, w)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def bandwidth(sizes_mb=(16, 64, 256, 1024), reps: int = 4) -> dict[str, dict[int, float]]:
    """Memory bandwidth in GB/s per buffer size: `read` = an fp32 sum (streams the buffer once, like decoding
    streams the weights; a bf16 sum into fp32 is compute-bound here, ~0.7 GB/s), `copy` = bytes read + written by
    a copy. Best of `reps`. Sizes far above the L3 (260 MiB here) give the DRAM figure."""
    out: dict[str, dict[int, float]] = {"read": {}, "copy": {}}
    for mb in sizes_mb:
        x = torch.ones(mb * 2**20 // 4, dtype=torch.float32)
        y = torch.empty_like(x)
        for name, fn, moved in (("read", lambda: x.sum(), x.numel() * 4), ("copy", lambda: y.copy_(x), x.numel() * 8)):
            fn()
            best = float("inf")
            for _ in range(reps):
                start = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - start)
            out[name][mb] = moved / best / 1e9
        del x, y
    return out


def dram_read_bandwidth(reps: int = 4) -> float:
    """GB/s reading a buffer far larger than any cache (1 GiB): the bound for streaming weights."""
    return bandwidth((1024,), reps)["read"][1024]


# ------------------------------------------------------------------------------------------------- runs


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes on this machine have used (Linux /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux >= 4.0: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_mb(field_name: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident set of this process, MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Timing:
    seconds: float = 0.0
    others: float = float("nan")   # share of the machine's CPUs that other processes used meanwhile
    peak_rss_mb: float = 0.0       # this process's peak RSS during the run
    extra: dict = field(default_factory=dict)


@contextmanager
def timed():
    """with timed() as t: ...  -> t.seconds, t.others, t.peak_rss_mb (peak window reset at entry)."""
    t = Timing()
    reset_peak_rss()
    busy0, own0 = busy_cpu_seconds(), time.process_time()
    start = time.perf_counter()
    try:
        yield t
    finally:
        t.seconds = time.perf_counter() - start
        busy1, own1 = busy_cpu_seconds(), time.process_time()
        t.peak_rss_mb = rss_mb("VmHWM")
        if busy0 is not None and busy1 is not None:
            others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (t.seconds * (os.cpu_count() or 1))
            t.others = min(1.0, others)


def best_of(fn, repeats: int):
    """(fastest Timing, last result) over `repeats` calls."""
    best, result = None, None
    for _ in range(repeats):
        with timed() as t:
            result = fn()
        if best is None or t.seconds < best.seconds:
            best = t
    return best, result


# ------------------------------------------------------------------------------------------------- output


def fmt(x: float) -> str:
    if x != x:  # nan
        return "nan"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def result_line(row: dict) -> str:
    return (f"{row['name']}: ours {fmt(row['ours'])} {row['unit']}, reference {fmt(row['reference'])} {row['unit']}, "
            f"ratio {row['ratio']:.3g}")


def others_note(*timings: Timing) -> str:
    shares = [t.others for t in timings]
    text = "other processes took " + " / ".join(f"{s:.0%}" for s in shares) + " of the CPUs"
    if max(shares, default=0.0) > 0.1:
        text += "  WARNING: contended, timings not clean"
    return text
