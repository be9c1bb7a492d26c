"""DaViT's copy-free forms (florence_vl/florence2/fast_davit.py) compute what transformers' modules compute: the
same features and gradients in fp32, the same state_dict, bf16 errors no larger than plain bf16's; and the
single-image convolutions really stay channels-last (the point of the change)."""

import copy

import pytest
import torch

from florence_vl.florence2.fast_davit import (ChannelsLastConv2d, TransposedChannelAttention, pack_vision_weights,
                                              use_fast_davit)
from florence_vl.packed_linear import PackedLinear, can_pack


def features(model, pixels):
    return model.model.get_image_features(pixels).pooler_output


@pytest.mark.parametrize("batch", [1, 3])
def test_fast_davit_gives_the_same_features_and_gradients(tiny_florence2, batch):
    plain = copy.deepcopy(tiny_florence2.model).train(False)
    fast = copy.deepcopy(plain)
    changed = use_fast_davit(fast)
    assert changed == sum(isinstance(m, (ChannelsLastConv2d, TransposedChannelAttention)) for m in fast.modules()) > 0
    assert list(fast.state_dict()) == list(plain.state_dict())
    pixels = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    want, got = features(plain, pixels), features(fast, pixels)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    want.square().mean().backward()
    got.square().mean().backward()
    for (name, p), q in zip(plain.model.vision_tower.named_parameters(), fast.model.vision_tower.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_single_image_convolutions_stay_channels_last(tiny_florence2):
    fast = copy.deepcopy(tiny_florence2.model)
    use_fast_davit(fast)
    layouts = []

    def record(module, inputs, output):
        layouts.append(output.is_contiguous(memory_format=torch.channels_last))

    for module in fast.model.vision_tower.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(record)
    with torch.inference_mode():
        features(fast, torch.randn(1, 3, 64, 64))
    assert layouts and all(layouts)


def test_packed_gelu_linear_is_the_linear_then_gelu():
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)
    x = torch.randn(5, 24)
    if not can_pack(torch.float32):           # then PackedLinear refuses clearly instead of packing
        with pytest.raises(RuntimeError, match="cannot pack"):
            PackedLinear(linear, activation="gelu")
        return
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear, activation="gelu")(x), torch.nn.functional.gelu(linear(x)))
    with pytest.raises(ValueError):
        PackedLinear(linear, activation="relu6")


def test_fast_bf16_vision_is_as_close_to_fp32_as_plain_bf16():
    """On the shipped nano Florence-2 (trained weights; random spread weights make bf16 chaotic): the fast bf16
    vision path, packed where oneDNN can, is as close to fp32 as transformers' modules in bf16 (measured: max
    relative error 0.0066 for both on 4 test images; 2 here)."""
    from florence_vl.data.world import iter_scenes
    from florence_vl.florence2.runner import Florence2, TaskRequest

    nano = Florence2.from_pretrained("nano", dtype=torch.float32)
    requests = [TaskRequest(s.image, "<OD>") for s in iter_scenes("test", n=2)]
    pixels = nano.encode([nano._prepare(i, r) for i, r in enumerate(requests)])["pixel_values"]
    plain, fast = copy.deepcopy(nano.model).to(torch.bfloat16), copy.deepcopy(nano.model).to(torch.bfloat16)
    use_fast_davit(fast)
    packed = pack_vision_weights(fast, torch.bfloat16)
    assert (packed > 0) == can_pack(torch.bfloat16)
    with torch.inference_mode():
        want = features(nano.model, pixels)
        error = {name: ((features(m, pixels.bfloat16()).float() - want).abs().max() / want.abs().max()).item()
                 for name, m in (("plain", plain), ("fast", fast))}
    assert error["fast"] < 1.5 * error["plain"] + 1e-3, error
