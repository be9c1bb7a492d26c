"""Faster forms of transformers' DaViT (Florence-2's vision tower) on CPU; measured in docs/performance.md, section 9.

1 and 2 (`use_fast_davit`) are copy-free rearrangements: same parameters, same state_dict, same results within
float rounding, gradients included (tests/test_fast_davit.py). 3 (`pack_vision_weights`) is for inference only.
`speed.fast_florence2` applies all three.

1. Convolutions on one image. DaViT keeps its activations as (B, H*W, C) and hands the convolutions the
   NCHW view `x.transpose(1, 2).view(B, C, H, W)`: NHWC memory. With B = 1 that view gets a batch stride of C
   (any stride is valid for a size-1 dim), torch then does not recognise it as channels-last, runs the NCHW
   kernel and returns NCHW, and every residual add and LayerNorm after it reads a transposed tensor. Giving the
   view its canonical channels-last strides (no copy) keeps the whole block NHWC. The patch-embedding convs get
   channels-last weights, so that they too return NHWC (the LayerNorm after them then reads it in place).
2. Channel ("group") attention. transformers permutes qkv to (3, B, G, C/G, N) and runs SDPA with the N tokens
   as the head dimension: strided copies of q, k, v and of the output, and SDPA's math path. Computed as
   qkv^T = W x^T per image, (3C, N) comes out contiguous, q k^T and attn v are plain batched matmuls over the G
   groups, and the projection reads the (C, N) result through a transposed view.
3. Inference only (`pack_vision_weights`): the window attentions' and MLPs' Linear weights packed for oneDNN
   (florence_vl/packed_linear.py) with the MLPs' GELU fused into fc1, which saves writing the fc1 output twice and
   reading it twice more (the bias copy of addmm and the separate GELU).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import GELUActivation
from transformers.models.florence2.modeling_florence2 import (Florence2VisionChannelAttention, Florence2VisionMLP,
                                                              Florence2VisionWindowAttention)


class ChannelsLastConv2d(nn.Conv2d):
    """nn.Conv2d that passes a channels-last input on with canonical channels-last strides (see 1 above)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.size(0) == 1 and x.is_contiguous(memory_format=torch.channels_last):
            _, c, h, w = x.shape
            x = x.as_strided(x.shape, (c * h * w, 1, w * c, c))
        return super().forward(x)


class TransposedChannelAttention(Florence2VisionChannelAttention):
    """Florence2VisionChannelAttention computed on qkv^T (see 2 above)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, num_tokens, channels = hidden_states.shape
        groups, scale = self.groups, num_tokens ** -0.5
        bias = self.qkv.bias
        outputs = []
        for x in hidden_states:                                             # x: (N, C)
            qkv_t = (self.qkv.weight @ x.T) if bias is None else torch.addmm(bias[:, None], self.qkv.weight, x.T)
            query, key, value = qkv_t.view(3, groups, channels // groups, num_tokens)
            # logits and softmax in fp32: each logit sums N products, too coarse in bf16 for the softmax
            logits = torch.matmul(query.float(), key.float().transpose(1, 2)) * scale      # (G, C/G, C/G)
            attention = torch.softmax(logits, dim=-1).to(value.dtype)
            mixed = (attention @ value).view(channels, num_tokens)                   # (C, N), channel = g*C/G + i
            outputs.append(F.linear(mixed.T, self.proj.weight, self.proj.bias))
        return torch.stack(outputs)


def use_fast_davit(model: nn.Module) -> int:
    """Switch, in place, every Conv2d and DaViT channel attention under `model` to the forms 1 and 2 above (a class
    change: parameters and state_dict keys stay). Returns how many modules changed."""
    changed = 0
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = ChannelsLastConv2d
            if module.groups == 1:          # the patch embeddings: NHWC out even from the NCHW pixels
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
            changed += 1
        elif type(module) is Florence2VisionChannelAttention:
            module.__class__ = TransposedChannelAttention
            changed += 1
    return changed


def pack_vision_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Pack, in place, the `dtype` Linear weights of DaViT's window attentions and MLPs under `model`, fusing the
    MLPs' exact GELU into fc1 (3 above; inference only, no state_dict entries). The channel attentions keep plain
    weights (TransposedChannelAttention multiplies by them directly). Returns how many layers were packed; 0
    where oneDNN cannot pack `dtype` on this CPU."""
    from ..packed_linear import PackedLinear, can_pack

    if not can_pack(dtype):
        return 0
    packed = 0
    for module in model.modules():
        if type(module) is Florence2VisionMLP and type(module.activation_fn) is GELUActivation \
                and module.activation_fn.act is F.gelu \
                and module.fc1.weight.dtype == dtype:
            module.fc1, module.activation_fn = PackedLinear(module.fc1, activation="gelu"), nn.Identity()
            module.fc2 = PackedLinear(module.fc2)
            packed += 2
        elif type(module) is Florence2VisionWindowAttention and module.qkv.weight.dtype == dtype:
            module.qkv, module.proj = PackedLinear(module.qkv), PackedLinear(module.proj)
            packed += 2
    return packed
