"""bf16 nn.Linear layers with their weights pre-packed for oneDNN, for CPU inference (LLM decoding above all).

`F.linear` in bf16 on CPU hands oneDNN a plain (out, in) weight, which it re-lays out into its VNNI-blocked format
on every call: for a one-row decode step that doubles the memory traffic of the weights, so decoding streams
~9 GB/s where this machine reads ~20 GB/s (docs/performance.md). `pack_linear_weights` does that re-layout once
with `torch.ops.mkldnn._reorder_linear_weight` and calls `torch.ops.mkldnn._linear_pointwise`, the pair torch's
own inductor uses for frozen bf16 linears on CPU; results are bit-identical to F.linear (tested).

Inference only: a PackedLinear has no autograd and its weight is an opaque oneDNN tensor (no state_dict).
"""

from __future__ import annotations

import functools

import torch
from torch import nn


class PackedLinear(nn.Module):
    """`linear` with its weight packed for oneDNN; `activation="gelu"` fuses an exact (erf) GELU after it, which
    saves a read and a write of the output (DaViT's MLPs, florence2/fast_davit.py)."""

    def __init__(self, linear: nn.Linear, activation: str = "none"):
        super().__init__()
        if activation not in ("none", "gelu"):
            raise ValueError(f"activation={activation!r}: expected 'none' or 'gelu'")
        self.activation = activation
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        if not can_pack(weight.dtype):
            raise RuntimeError(f"oneDNN cannot pack {weight.dtype} Linear weights on this CPU (bf16 packing needs "
                               "AVX512-BW/VL/DQ or AVX-NE-CONVERT); use the plain nn.Linear")
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.dtype = weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("PackedLinear is for inference; it has no gradients")
        shape = x.shape
        algorithm = "none" if self.activation == "gelu" else ""          # "none": the erf GELU, not tanh
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), self.packed, self.bias, self.activation,
                                                 [], algorithm)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        fused = f", then {self.activation}" if self.activation != "none" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"packed{fused}")


@functools.lru_cache(maxsize=None)
def can_pack(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether oneDNN can pack `dtype` Linear weights here. Having the op is not enough: on AVX2-only CPUs torch's
    bf16 reorder raises ("bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq"), so
    pack one tiny layer and see."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        weight = torch.ones(8, 8, dtype=dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 8, dtype=dtype), packed, None, "none", [], "")
        return bool(torch.equal(out, torch.full((1, 8), 8.0, dtype=dtype)))
    except RuntimeError:
        return False


def packing_pays() -> bool:
    """Whether pre-packing speeds up bf16 decoding on this CPU. Measured (docs/performance.md, Phi-3.5-mini
    geometry, 8 layers): on an AVX512-BF16 CPU without AMX plain F.linear streamed the weights at 48% of the
    bandwidth bound and packed ones at 87%; on the same Xeon with AMX-BF16 exposed, plain F.linear reaches 63% and
    the packed layout only 43%, so there it does not pay."""
    from .florence2.speed import cpu_has_amx_bf16

    return can_pack(torch.bfloat16) and not cpu_has_amx_bf16()


def pack_linear_weights(module: nn.Module, dtype: torch.dtype = torch.bfloat16, *, tied: bool = False) -> int:
    """Replace, in place, every CPU nn.Linear of `dtype` under `module` by a PackedLinear; returns how many.
    Layers whose weight is shared with another module (tied embeddings) stay as they are unless `tied`: then the
    layer gets a packed copy (the embedding keeps the plain weight; one more copy of the matrix in memory, and
    the tie is gone for training, so for inference-only copies of a model). Packs nothing (returns 0) where oneDNN
    cannot pack `dtype` on this CPU (`can_pack`): the model then keeps plain F.linear, with the same results."""
    if not can_pack(dtype):
        return 0
    counts: dict[int, int] = {}
    for _, p in module.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    targets = [(name, child) for name, child in module.named_modules()
               if type(child) is nn.Linear and child.weight.dtype == dtype and child.weight.device.type == "cpu"
               and (tied or counts.get(id(child.weight), 0) == 1)]
    for name, child in targets:
        parent_name, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, leaf, PackedLinear(child))
    return len(targets)
