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
        # fp32, but oneDNN picks its kernels by batch size: on AVX2-only CPUs 2 images and 8 differ by ~2e-5
        torch.testing.assert_close(tiny_florence2.image_features(pixels, 2),
                                   tiny_florence2.model.model.get_image_features(pixels).pooler_output,
                                   atol=1e-4, rtol=1e-4)


def test_channels_last_changes_nothing(tiny_florence2):
    fast, how = fast_florence2(tiny_florence2, dtype=torch.float32, channels_last_convs=True)
    assert "channels-last" in how and fast.model is not tiny_florence2.model
    conv = fast.model.model.vision_tower.convs[0].conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    # against the same conversion without channels-last weights, so that only the weight layout differs (the
    # copy-free DaViT forms both have are compared with transformers' in test_fast_davit.py)
    plain, _ = fast_florence2(tiny_florence2, dtype=torch.float32)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fast.image_features(pixels), plain.image_features(pixels), atol=1e-5, rtol=1e-4)
    options = dict(num_beams=1, max_new_tokens=12, batch_size=len(REQUESTS))
    assert [r.text for r in fast.run_requests(REQUESTS, **options)] == \
        [r.text for r in plain.run_requests(REQUESTS, **options)]


def test_fast_path_keeps_the_original_and_gives_its_features(tiny_florence2):
    """The runner's bf16 conversion keeps the original untouched and gives transformers' image features: in fp32
    within 1e-4 (the forms of fast_davit only reorder the arithmetic); in bf16 their rounding differs from transformers'
    kernels (tests/test_fast_davit.py compares both with fp32 on trained weights)."""
    fast, how = fast_florence2(tiny_florence2, dtype=torch.bfloat16)
    assert fast.dtype == torch.bfloat16 and tiny_florence2.dtype == torch.float32  # the original is untouched
    assert "copy-free DaViT" in how
    fast32, _ = fast_florence2(tiny_florence2, dtype=torch.float32)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        want = tiny_florence2.model.model.get_image_features(pixels).pooler_output
        torch.testing.assert_close(fast32.image_features(pixels), want, rtol=1e-4, atol=1e-4)
        got = fast.image_features(pixels.bfloat16())
    assert got.dtype == torch.bfloat16 and got.shape == want.shape


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


# -- the fast dtype: bf16 where the CPU has AMX-BF16, fp32 elsewhere, FLORENCE_VL_DTYPE overrides ------------------


@pytest.mark.parametrize("amx, env, want", [
    (True, None, torch.bfloat16), (False, None, torch.float32), (True, "auto", torch.bfloat16),
    (True, "fp32", torch.float32), (False, "bf16", torch.bfloat16), (False, "bfloat16", torch.bfloat16),
    (True, "float16", torch.float16), (False, " FP32 ", torch.float32)])
def test_fast_dtype_follows_the_cpu_unless_overridden(monkeypatch, amx, env, want):
    from florence_vl.florence2 import speed

    monkeypatch.setattr(speed, "cpu_has_amx_bf16", lambda: amx)
    if env is None:
        monkeypatch.delenv("FLORENCE_VL_DTYPE", raising=False)
    else:
        monkeypatch.setenv("FLORENCE_VL_DTYPE", env)
    assert speed.fast_dtype() == want


def test_fast_dtype_rejects_unknown_names(monkeypatch):
    from florence_vl.florence2 import speed

    monkeypatch.setenv("FLORENCE_VL_DTYPE", "int4")
    with pytest.raises(ValueError, match="FLORENCE_VL_DTYPE"):
        speed.fast_dtype()


@pytest.mark.parametrize("caps, want", [
    ({"amx_bf16": True, "amx_tile": True}, True), ({"amx_bf16": False, "amx_tile": True}, False),
    ({"avx512_bf16": True}, False), (AttributeError, False)])
def test_amx_detection_reads_torch_cpu_capabilities(monkeypatch, caps, want):
    from florence_vl.florence2 import speed

    def capabilities():
        if caps is AttributeError:
            raise AttributeError("old torch")
        return caps

    monkeypatch.setattr(torch.cpu, "get_capabilities", capabilities)
    monkeypatch.setattr(torch.cpu, "_init_amx", lambda: True, raising=False)
    assert speed.cpu_has_amx_bf16() is want


def test_amx_detection_needs_the_os_to_allow_the_tiles(monkeypatch):
    from florence_vl.florence2 import speed

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True, "amx_tile": True})
    monkeypatch.setattr(torch.cpu, "_init_amx", lambda: False, raising=False)
    assert speed.cpu_has_amx_bf16() is False


# -- the bf16 fast path: packed text weights and the suppress mask change nothing -------------------------------------


def test_suppress_mask_equals_transformers_processor():
    from transformers.generation.logits_process import SuppressTokensLogitsProcessor

    from florence_vl.florence2.runner import SuppressMask

    scores = torch.randn(6, 50)
    ids = [0, 3, 7, 49, 12, 3, 60]                       # a duplicate and one past the vocabulary
    want = SuppressTokensLogitsProcessor(ids)(None, scores.clone())
    got = SuppressMask(ids, 50)(None, scores.clone())
    assert torch.equal(got, want)


def test_bf16_fast_runner_packs_the_text_model_and_keeps_its_outputs(tiny_florence2):
    from florence_vl.florence2.fast_davit import pack_vision_weights
    from florence_vl.packed_linear import PackedLinear, can_pack

    packed, how = fast_florence2(tiny_florence2, dtype=torch.bfloat16)
    plain, _ = fast_florence2(tiny_florence2, dtype=torch.bfloat16, pack=False)
    # AVX2-only CPUs cannot pack bf16 (tests/test_packed_linear.py): there the fast runner stays plain
    assert ("pre-packed" in how) == isinstance(packed.model.lm_head, PackedLinear) == can_pack(torch.bfloat16)
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    assert not any(isinstance(m, PackedLinear) for m in tiny_florence2.model.modules())  # the original untouched
    # packed vision rounds differently (fused GELU; tests/test_fast_davit.py): give the plain runner the same
    # vision, so that what is compared is the text model, which packing must leave bit for bit
    pack_vision_weights(plain.model.model.vision_tower, torch.bfloat16)
    options = dict(num_beams=3, max_new_tokens=12, batch_size=len(REQUESTS))
    got, want = packed.run_requests(REQUESTS, **options), plain.run_requests(REQUESTS, **options)
    assert [r.text for r in got] == [r.text for r in want]


def od_agreement(got, want) -> float:
    """Mean over the reference's boxes of the best IoU with a box of the same label in `got`."""
    from florence_vl.eval.metrics import box_iou

    ious = []
    for g, w in zip(got, want):
        for box, label in zip(w.output["bboxes"], w.output["labels"]):
            ious.append(max([box_iou(box, b) for b, lab in zip(g.output["bboxes"], g.output["labels"])
                             if lab == label], default=0.0))
    return sum(ious) / max(1, len(ious))


def test_nano_model_in_bf16_answers_like_fp32():
    """The shipped nano Florence-2 on the fast bf16 path (packed weights) against fp32: the same captions for most
    test images, and boxes that overlap fp32's (bf16 keeps 8 bits of mantissa: a location bin often moves, the
    nano model's location distributions being flat; measured 8/8 captions equal, docs/performance.md)."""
    from florence_vl.data.world import iter_scenes
    from florence_vl.florence2.runner import Florence2

    nano = Florence2.from_pretrained("nano", dtype=torch.float32)
    fast, _ = fast_florence2(nano, dtype=torch.bfloat16)
    scenes = [s.image for s in iter_scenes("test", n=8)]
    options = dict(num_beams=3, max_new_tokens=40)
    want, got = nano.run(scenes, "<CAPTION>", **options), fast.run(scenes, "<CAPTION>", **options)
    assert sum(a.text == b.text for a, b in zip(got, want)) >= 6
    want, got = nano.run(scenes, "<OD>", **options), fast.run(scenes, "<OD>", **options)
    assert od_agreement(got, want) > 0.6
