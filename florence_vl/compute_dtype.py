"""The dtype a loaded checkpoint computes in when the user asks for "auto".

Half-precision weights say how a checkpoint was stored, not how this CPU should compute with it: CPUs without
AMX-BF16 multiply bf16 matrices at a fraction of the fp32 rate (about half with AVX512-BF16, 0.6 vs 65 GFLOP/s
measured on an AVX2-only EPYC, docs/performance.md) and fp16 slower still. So "auto" keeps float32 checkpoints
in float32 (never less precision than stored) and computes half-precision ones in the CPU's fast dtype
(`florence2.speed.fast_dtype`: bf16 with AMX-BF16, else fp32) - upcasting loses nothing, but doubles the
weights' memory, so it only happens when the fp32 copy fits in what the machine has free.
"""

from __future__ import annotations

import torch
from torch import nn

HALF = (torch.float16, torch.bfloat16)
# Upcast only while the fp32 weights take at most this share of the memory available before the upcast: the rest is
# for activations, caches and everything else on the machine.
UPCAST_MEMORY_SHARE = 0.5


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, or None where there is none (not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def auto_compute_dtype(stored: torch.dtype, n_params: int, device: str = "cpu") -> torch.dtype:
    """The dtype "auto" computes in for weights stored as `stored`: see the module docstring."""
    from .florence2 import speed

    if stored not in HALF or device != "cpu":
        return stored
    fast = speed.fast_dtype()
    if fast == torch.float32:
        free = available_memory_bytes()
        if free is None or n_params * 4 > UPCAST_MEMORY_SHARE * (free + n_params * stored.itemsize):
            return torch.bfloat16  # too big to widen here: bf16, the half dtype CPUs compute in at all
    return fast


def settle_auto_dtype(model: nn.Module) -> nn.Module:
    """`model` converted, in place, to `auto_compute_dtype` of its floating parameters' dtype."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params:
        return model
    want = auto_compute_dtype(params[0].dtype, sum(p.numel() for p in params), params[0].device.type)
    return model if want == params[0].dtype else model.to(want)
