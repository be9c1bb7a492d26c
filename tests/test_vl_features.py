"""Florence-VL features (one DaViT pass, batched prompts) and DBFusion variants."""

import pytest
import torch

from florence_vl.vl.features import BREADTH_PROMPTS, FlorenceFeatures, per_prompt_features
from florence_vl.vl.fusion import DBFusion, projector


@pytest.fixture(scope="module")
def features(tiny_florence2):
    return FlorenceFeatures(tiny_florence2.model, tiny_florence2.tokenizer, tiny_florence2.num_image_tokens)


def test_prompts_are_the_published_ones():
    assert list(BREADTH_PROMPTS.values()) == [
        "Describe in detail what is shown in the image.", "What is the text in the image?",
        "Locate the objects in the image, with their descriptions."]


def test_one_pass_equals_per_prompt_path(features):
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 64, 64)
    lengths = {len(p) for p in features.prompts_token_ids}
    assert len(lengths) > 1  # the batch really pads
    with torch.no_grad():
        fast = features(pixels)
    slow = per_prompt_features(features, pixels)
    assert list(fast) == ["depth", "caption", "ocr", "grounding"]
    for name in fast:
        assert fast[name].shape == (3, features.num_image_tokens, features.dim)
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-4)
    # breadth differs per prompt and from depth; images differ
    assert not torch.allclose(fast["caption"], fast["ocr"])
    assert not torch.allclose(fast["depth"][0], fast["depth"][1])


def test_one_davit_pass(features, monkeypatch):
    calls = []
    tower = features.florence2.model.vision_tower
    original = tower.forward
    monkeypatch.setattr(tower, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        features(torch.randn(2, 3, 64, 64))
    assert len(calls) == 1


def test_subset_of_sources(tiny_florence2):
    only = FlorenceFeatures(tiny_florence2.model, tiny_florence2.tokenizer, tiny_florence2.num_image_tokens,
                            sources=("ocr", "depth"))
    with torch.no_grad():
        out = only(torch.randn(1, 3, 64, 64))
    assert list(out) == ["depth", "ocr"]
    with pytest.raises(ValueError):
        FlorenceFeatures(tiny_florence2.model, tiny_florence2.tokenizer, 5, sources=("depth", "colour"))


@pytest.mark.parametrize("fusion,sources,tokens", [
    ("channel", ("depth", "caption", "ocr", "grounding"), 5), ("token", ("depth", "caption", "ocr", "grounding"), 20),
    ("average", ("depth", "caption", "ocr", "grounding"), 5), ("channel", ("depth",), 5), ("token", ("caption", "ocr"), 10)])
def test_fusion_variants(fusion, sources, tokens):
    feats = {s: torch.randn(2, 5, 8) for s in ("depth", "caption", "ocr", "grounding")}
    fuse = DBFusion(8, 12, sources, fusion)
    out = fuse(feats)
    assert out.shape == (2, tokens, 12) and fuse.num_tokens(5) == tokens
    if fusion == "channel" and len(sources) == 4:  # order [depth, caption, ocr, grounding]
        expected = torch.cat([feats[s] for s in sources], -1)
        torch.testing.assert_close(fuse.fuse(feats), expected)


def test_projector_layout_is_the_release_one():
    mlp = projector("mlp3x_gelu", 32, 16)
    assert sorted(k for k in mlp.state_dict()) == ["0.bias", "0.weight", "1.1.bias", "1.1.weight",
                                                  "2.1.bias", "2.1.weight"]
    assert isinstance(mlp[1][0], torch.nn.GELU)
    with pytest.raises(ValueError):
        projector("conv", 1, 1)
