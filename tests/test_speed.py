"""The speed-ups change nothing but speed: fast_florence2 (dtype, channels-last convs) and DaViT in chunks give
the outputs of the plain eager model."""

import pytest
import torch
from PIL import Image

from florence_vl.florence2.runner import TaskRequest
from florence_vl.florence2.speed import channels_last, fast_florence2


def _image(i: int) -> Image.Image:
    image = Image.new("RGB", (60 + 17 * i, 50 + 9 * i), (40 * i % 256, 120, 200 - 20 * i))
    image.paste((255, 255 - 30 * i, 0), (5 + i, 5, 25 + 2 * i, 30))
    return image


REQUESTS = [TaskRequest(_image(i), task) for i, task in enumerate(["<OD>", "<CAPTION>", "<OCR>", "<OD>", "<CAPTION>"])]


def test_vision_in_chunks_equals_one_call(tiny_florence2):
    options = dict(num_beams=1, max_new_tokens=12, batch_size=len(REQUESTS))
    whole = tiny_florence2.run_requests(REQUESTS, vision_batch_size=len(REQUESTS), **options)
    chunked = tiny_florence2.run_requests(REQUESTS, vision_batch_size=1, **options)
    assert [r.text for r in whole] == [r.text for r in chunked]
    pixels = tiny_florence2.encode([tiny_florence2._prepare(i, r) for i, r in enumerate(REQUESTS)])["pixel_values"]
    with torch.inference_mode():
        torch.testing.assert_close(tiny_florence2.image_features(pixels, 2),
                                   tiny_florence2.model.model.get_image_features(pixels).pooler_output)


def test_channels_last_changes_nothing(tiny_florence2):
    fast, how = fast_florence2(tiny_florence2, dtype=torch.float32)
    assert "channels-last" in how and fast.model is not tiny_florence2.model
    conv = fast.model.model.vision_tower.convs[0].conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fast.image_features(pixels),
                                   tiny_florence2.model.model.get_image_features(pixels).pooler_output,
                                   atol=1e-5, rtol=1e-4)
    options = dict(num_beams=1, max_new_tokens=12, batch_size=len(REQUESTS))
    assert [r.text for r in fast.run_requests(REQUESTS, **options)] == \
        [r.text for r in tiny_florence2.run_requests(REQUESTS, **options)]


def test_bf16_fast_path_matches_plain_bf16(tiny_florence2):
    import copy

    fast, _ = fast_florence2(tiny_florence2, dtype=torch.bfloat16)
    assert fast.dtype == torch.bfloat16 and tiny_florence2.dtype == torch.float32  # the original is untouched
    plain = copy.deepcopy(tiny_florence2.model).to(torch.bfloat16)
    pixels = torch.randn(1, 3, 64, 64).to(torch.bfloat16)
    with torch.inference_mode():
        want = plain.model.get_image_features(pixels).pooler_output.float()
        got = fast.image_features(pixels).float()
    assert ((got - want).abs().max() / want.abs().max()).item() < 0.02  # bf16 rounding of other kernels only


def test_channels_last_is_idempotent():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    before = conv[0].weight.detach().clone()
    channels_last(conv)
    channels_last(conv)
    assert torch.equal(conv[0].weight, before)


def test_beam_search_without_cross_cache_copies_equals_plain_generate(tiny_florence2):
    """The runner's beam-search cache (no cross-attention re-ordering) gives transformers' own sequences and scores."""
    from transformers import DynamicCache

    from florence_vl.florence2.runner import BeamSharedCrossCache

    prepared = [tiny_florence2._prepare(i, r) for i, r in enumerate(REQUESTS[:3])]
    inputs = tiny_florence2.encode(prepared)
    config = tiny_florence2.generation_config(3, 12, output_scores=True, return_dict_in_generate=True)
    with torch.inference_mode():
        plain = tiny_florence2.model.generate(**inputs, generation_config=config)
        ours = tiny_florence2.model.generate(**inputs, generation_config=config,
                                             past_key_values=BeamSharedCrossCache(DynamicCache(), DynamicCache()))
    assert torch.equal(plain.sequences, ours.sequences)
    torch.testing.assert_close(plain.sequences_scores, ours.sequences_scores)
    assert len({tuple(r) for r in plain.sequences.tolist()}) > 1
