"""Inference speed-ups for transformers' Florence-2 on CPU; each one measured in docs/performance.md.

`fast_florence2(florence)` returns a Florence2 runner set up for speed:
* dtype: the compute dtype that is fastest on this CPU (see `fast_dtype`): matmul throughput decides, because
  DaViT and the text encoder are compute-bound;
* channels-last convolution weights: DaViT's blocks already hold their activations channels-last (the NCHW
  views of its (B, HW, C) tensors), so the patch-embedding convs then write NHWC directly and the LayerNorms
  around them read contiguous rows instead of copying;
* optionally `torch.compile` of the vision tower + projector (inductor, static shapes, weights frozen into the
  graph): it fuses the memory-bound work between the matmuls (adds, LayerNorm, GELU, window partitions).
Outputs stay those of the eager model within float tolerance (tests/test_speed.py).
"""

from __future__ import annotations

import copy as _copy
import os

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling


def fast_dtype() -> torch.dtype:
    """fp32 unless FLORENCE_VL_DTYPE says otherwise. Measured on the AVX512-BF16 Xeon (no AMX) this project runs
    on, bf16 matmuls reach about half the fp32 rate and fp16 eager takes slow paths (docs/performance.md)."""
    name = os.environ.get("FLORENCE_VL_DTYPE", "fp32").lower()
    return {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
            "fp16": torch.float16, "float16": torch.float16}[name]


def channels_last(model) -> None:
    """Convolution weights in NHWC memory order (same values)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)


def compile_vision(model, *, freezing: bool = True, dynamic: bool = False) -> None:
    """Replace model.model.get_image_features by a torch.compile'd DaViT + projector (inference only: with
    `freezing` the weights are constants of the compiled graph, so later weight changes are not seen)."""
    inner = model.model
    tower, projector = inner.vision_tower, inner.multi_modal_projector

    def features(pixel_values):
        return projector(tower(pixel_values).last_hidden_state)

    compiled = torch.compile(features, dynamic=dynamic, options={"freezing": freezing})

    def get_image_features(pixel_values, **_):
        if torch.is_grad_enabled():  # training or gradients wanted: the eager modules
            return BaseModelOutputWithPooling(pooler_output=features(pixel_values))
        return BaseModelOutputWithPooling(pooler_output=compiled(pixel_values))

    inner.get_image_features = get_image_features


def fast_florence2(florence, *, copy: bool = True, dtype: torch.dtype | None = None, compile: bool = False,
                   vision_batch_size: int | None = None):
    """(runner, description): `florence` (or a deep copy of it) converted for fast inference."""
    from .runner import Florence2

    if copy:
        model = _copy.deepcopy(florence.model)
        runner = Florence2(model, florence.tokenizer, florence.image_processor, source=florence.source)
        runner.checkpoint_generation_config = florence.checkpoint_generation_config
        runner.vision_batch_size = florence.vision_batch_size
    else:
        runner, model = florence, florence.model
    dtype = dtype or fast_dtype()
    model.to(dtype)
    channels_last(model)
    if compile:
        compile_vision(model)
    if vision_batch_size:
        runner.vision_batch_size = vision_batch_size
    how = (f"{str(dtype).replace('torch.', '')}, channels-last convs, {'compiled' if compile else 'eager'} "
           f"vision, DaViT {runner.vision_batch_size} image(s) per call")
    return runner, how
