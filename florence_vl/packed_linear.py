"""bf16 nn.Linear layers with their weights pre-packed for oneDNN, for CPU inference (LLM decoding above all).

`F.linear` in bf16 on CPU hands oneDNN a plain (out, in) weight, which it re-lays out into its VNNI-blocked format
on every call: for a one-row decode step that doubles the memory traffic of the weights, so decoding streams
~9 GB/s where this machine reads ~20 GB/s (docs/performance.md). `pack_linear_weights` does that re-layout once
with `torch.ops.mkldnn._reorder_linear_weight` and calls `torch.ops.mkldnn._linear_pointwise`, the pair torch's
own inductor uses for frozen bf16 linears on CPU; results are bit-identical to F.linear (tested).

Inference only: a PackedLinear has no autograd and its weight is an opaque oneDNN tensor (no state_dict).
"""

from __future__ import annotations

import torch
from torch import nn


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.dtype = weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("PackedLinear is for inference; it has no gradients")
        shape = x.shape
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), self.packed, self.bias, "none", [], "")
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"


def can_pack() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def packing_pays() -> bool:
    """Whether pre-packing speeds up bf16 decoding on this CPU. Measured (docs/performance.md, Phi-3.5-mini
    geometry, 8 layers): on an AVX512-BF16 CPU without AMX plain F.linear streamed the weights at 48% of the
    bandwidth bound and packed ones at 87%; on the same Xeon with AMX-BF16 exposed, plain F.linear reaches 63% and
    the packed layout only 43%, so there it does not pay."""
    from .florence2.speed import cpu_has_amx_bf16

    return can_pack() and not cpu_has_amx_bf16()


def pack_linear_weights(module: nn.Module, dtype: torch.dtype = torch.bfloat16, *, tied: bool = False) -> int:
    """Replace, in place, every CPU nn.Linear of `dtype` under `module` by a PackedLinear; returns how many.
    Layers whose weight is shared with another module (tied embeddings) stay as they are unless `tied`: then the
    layer gets a packed copy (the embedding keeps the plain weight; one more copy of the matrix in memory, and
    the tie is gone for training, so for inference-only copies of a model)."""
    if not can_pack():
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
