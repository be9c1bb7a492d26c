"""The FlorenceVL image-feature cache: a second question about the same picture skips vision, and every answer
equals the uncached one."""

import pytest
import torch
from PIL import Image

from florence_vl.vl.feature_cache import FeatureCache, image_key
from florence_vl.vl.model import IMAGE_TOKEN_INDEX
from vl_tiny import tiny_vl


def _picture(color=(200, 30, 30), size=(80, 50)):
    image = Image.new("RGB", size, color)
    image.paste((20, 200, 40), (10, 10, 30, 40))
    return image


@pytest.fixture()
def counted(tiny_florence2, monkeypatch):
    """(vl, calls): a tiny Florence-VL whose vision-tower runs are counted."""
    vl = tiny_vl(tiny_florence2)
    calls = []
    features = vl.model.vision_tower
    original = features.forward
    monkeypatch.setattr(features, "forward", lambda pixels: calls.append(pixels.shape[0]) or original(pixels))
    return vl, calls


def test_second_question_skips_vision_and_answers_equal_uncached(counted):
    vl, calls = counted
    image = _picture()
    questions = ["How many shapes are there?", "What color is the star?", "Describe the image in detail."]
    cached = [vl.chat(image, q, max_new_tokens=8) for q in questions]
    assert calls == [1]                                  # vision ran for the first question only
    assert vl.feature_cache.hits == 2 and len(vl.feature_cache) == 1
    streamed = "".join(vl.chat(image.copy(), questions[0], max_new_tokens=8, stream=True))
    assert calls == [1] and streamed == cached[0]        # same pixels, another object: still a hit
    vl.feature_cache = FeatureCache(0)                   # no cache: vision every time
    uncached = [vl.chat(image, q, max_new_tokens=8) for q in questions]
    assert calls == [1, 1, 1, 1] and uncached == cached and len(vl.feature_cache) == 0
    assert len(set(cached)) > 1                          # the answers depend on the question


def test_batches_compute_only_the_missing_images(counted):
    vl, calls = counted
    a, b, c = _picture(), _picture((10, 10, 240)), _picture((240, 240, 0), (64, 64))
    first = vl.answer([a, b, a], ["How many shapes are there?"] * 3, max_new_tokens=6)
    assert calls == [2] and first[0] == first[2]         # a twice in one batch: computed once
    vl.answer([b, c], ["What color is the star?"] * 2, max_new_tokens=6)
    assert calls == [2, 1]                               # only c was new
    assert vl.ask_many(a, ["How many shapes are there?"], max_new_tokens=6) == first[:1]
    assert calls == [2, 1]


def test_lru_bound_and_content_keys():
    cache = FeatureCache(2)
    keys = [image_key(_picture((i, 0, 0))) for i in range(3)]
    assert len(set(keys)) == 3 and image_key(_picture((0, 0, 0))) == keys[0]
    changed = _picture((0, 0, 0))
    changed.putpixel((79, 49), (0, 0, 1))
    assert image_key(changed) != keys[0]
    assert image_key(_picture(), "pad") != image_key(_picture(), "resize")
    for i, key in enumerate(keys[:2]):
        cache.put(key, torch.full((3, 4), float(i)))
    assert cache.get(keys[0]) is not None                # keys[0] is now the most recent
    cache.put(keys[2], torch.zeros(3, 4))
    assert keys[1] not in cache and keys[0] in cache and keys[2] in cache and len(cache) == 2
    row = torch.randn(8, 3, 4)[1]
    cache.put(keys[0], row)
    assert cache.get(keys[0]).untyped_storage().nbytes() == 3 * 4 * 4  # a compact copy, not the batch
    off = FeatureCache(0)
    off.put(keys[0], row)
    assert len(off) == 0 and off.get(keys[0]) is None


@pytest.mark.parametrize("kind", ["llama", "phi3"])
def test_prefix_cache_prefills_only_the_new_question(tiny_florence2, kind, monkeypatch):
    vl = tiny_vl(tiny_florence2, kind)
    lengths = []
    llm = vl.model.llm
    original = llm.forward

    def forward(*args, **kwargs):
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids")
        lengths.append((embeds if embeds is not None else ids).shape[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(llm, "forward", forward)
    image = _picture()
    questions = ["How many shapes are there?", "What color is the star?", "Describe the image in detail."]
    cached = [vl.chat(image, q, max_new_tokens=8) for q in questions]
    follow_up = vl.chat(image, "Is there a cross?", history=[(questions[0], cached[0])], max_new_tokens=6)
    streamed = "".join(vl.chat(image, questions[1], max_new_tokens=8, stream=True))
    image_tokens = vl.model.vision_tower.num_image_tokens
    prompts = [vl.processor.prompt(q) for q in questions] + \
        [vl.processor.prompt("Is there a cross?", [("<image>\n" + questions[0], cached[0])]),
         vl.processor.prompt(questions[1])]
    cut = prompts[0].index(IMAGE_TOKEN_INDEX) + 1
    assert all(p[:cut] == prompts[0][:cut] for p in prompts)
    # the prefix (text before the image + the image) is prefilled once; every question then only its own tokens
    assert [n for n in lengths if n > 1] == [cut - 1 + image_tokens] + [len(p) - cut for p in prompts]
    assert len(vl.prefix_cache) == 1 and vl.prefix_cache.hits == 4
    vl.feature_cache, vl.prefix_cache = FeatureCache(0), FeatureCache(0)
    assert [vl.chat(image, q, max_new_tokens=8) for q in questions] == cached
    assert vl.chat(image, "Is there a cross?", history=[(questions[0], cached[0])], max_new_tokens=6) == follow_up
    assert streamed == cached[1]
