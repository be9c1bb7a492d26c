"""Inference speed-ups for transformers' Florence-2 on CPU; each one measured in docs/performance.md.

`fast_florence2(florence)` returns a Florence2 runner set up for speed:
* dtype: the compute dtype that is fastest on this CPU (see `fast_dtype`): matmul throughput decides, because
  DaViT and the text encoder are compute-bound. bf16 where the CPU has AMX-BF16 (measured ~3x the fp32 rate on
  this project's Xeon), fp32 elsewhere (without AMX bf16 matmuls ran at half the fp32 rate);
* DaViT's convolutions and channel attentions in their copy-free forms (`fast_davit.use_fast_davit`: NHWC kept
  through every block, also for a single image; channel attention on qkv^T without strided copies);
* in bf16, the text encoder's, decoder's and LM head's Linear weights pre-packed for oneDNN (`pack_weights`), and
  DaViT's window-attention and MLP weights, with the GELU fused into fc1 (`fast_davit.pack_vision_weights`);
* channels-last convolution weights only on request (`channels_last_convs`): measured to change nothing at 768 px
  in fp32 or bf16 (DaViT's blocks already hold NHWC activations, the NCHW views of its (B, HW, C) tensors);
* optionally `torch.compile` of the vision tower + projector (inductor, static shapes, weights frozen into the
  graph): of transformers' modules, bf16 DaViT 0.98 s after 83 s of compilation per input shape, slower than the
  eager copy-free path (0.57 s), so it is off by default.
Outputs stay those of the eager model within float tolerance (tests/test_speed.py).
"""

from __future__ import annotations

import copy as _copy
import os

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling


_NAMES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def cpu_has_amx_bf16() -> bool:
    """True when this CPU has AMX tiles with bf16 (Sapphire Rapids and later Xeons) and the OS lets torch use
    them: then oneDNN's bf16 matmuls run at ~4x the fp32 rate (docs/performance.md). False where torch cannot
    tell (older torch, other architectures)."""
    try:
        caps = torch.cpu.get_capabilities()
        return bool(caps.get("amx_bf16")) and bool(caps.get("amx_tile")) and bool(torch.cpu._init_amx())
    except (AttributeError, RuntimeError):
        return False


def fast_dtype() -> torch.dtype:
    """The compute dtype that is fastest on this CPU for compute-bound work (DaViT, the text encoder, prefill).

    FLORENCE_VL_DTYPE (fp32, bf16, fp16) overrides it; "auto" or unset decides by the CPU: bf16 where it has
    AMX-BF16 (oneDNN's AMX kernels: 2048^3 matmul 858 bf16 vs 219 fp32 GFLOP/s measured on this project's Xeon),
    fp32 elsewhere (with AVX512-BF16 alone bf16 matmuls reach only about half the fp32 rate; on AVX2 far less;
    fp16 eager takes slow paths without AMX-FP16)."""
    name = os.environ.get("FLORENCE_VL_DTYPE", "auto").strip().lower()
    if name in ("", "auto"):
        return torch.bfloat16 if cpu_has_amx_bf16() and torch.backends.mkldnn.is_available() else torch.float32
    try:
        return _NAMES[name]
    except KeyError:
        raise ValueError(f"FLORENCE_VL_DTYPE={name!r}: expected auto, {', '.join(_NAMES)}") from None


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


def pack_weights(model, dtype: torch.dtype = torch.bfloat16) -> int:
    """Pre-pack the text encoder's, decoder's and LM head's `dtype` Linear weights for oneDNN
    (florence_vl/packed_linear.py): F.linear re-lays out a bf16 weight on every call, which costs the decoder, whose
    steps read all its weights for a few rows, about half its time. The LM head, tied to the embedding, gets its own
    packed copy (the embedding keeps the plain one). Inference only:
    packed layers have no gradients and no state_dict entries. Returns how many layers were packed."""
    from ..packed_linear import PackedLinear, can_pack, pack_linear_weights

    inner = model.model
    count = pack_linear_weights(inner.language_model, dtype, tied=True)
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear and head.weight.dtype == dtype and can_pack(dtype):
        model.lm_head = PackedLinear(head)
        count += 1
    return count


def fast_florence2(florence, *, copy: bool = True, dtype: torch.dtype | None = None, compile: bool = False,
                   vision_batch_size: int | None = None, pack: bool | None = None, channels_last_convs: bool = False):
    """(runner, description): `florence` (or a deep copy of it) converted for fast inference.

    `pack` (default: when the dtype is bf16 and oneDNN can): pre-pack the text model's Linear weights
    (`pack_weights`) and DaViT's (`fast_davit.pack_vision_weights`); the result is then for inference only (see
    there), which is why `copy` is the default."""
    from ..packed_linear import can_pack
    from .fast_davit import pack_vision_weights, use_fast_davit
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
    use_fast_davit(model.model.vision_tower)
    if channels_last_convs:
        channels_last(model)
    if pack is None:
        pack = dtype == torch.bfloat16 and can_pack(dtype)
    packed = pack_weights(model, dtype) if pack else 0
    vision_packed = pack_vision_weights(model.model.vision_tower, dtype) if pack else 0
    if compile:
        compile_vision(model)
    if vision_batch_size:
        runner.vision_batch_size = vision_batch_size
    how = (f"{str(dtype).replace('torch.', '')}{', channels-last convs' if channels_last_convs else ''}, "
           f"{'compiled' if compile else 'eager'} "
           f"copy-free DaViT, {runner.vision_batch_size} image(s) per call"
           + (f", {packed} text and {vision_packed} vision Linear weights pre-packed" if packed else ""))
    return runner, how
