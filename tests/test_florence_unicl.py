"""UniCL (Florence) at toy size: the loss, the two towers, training, checkpoints, DaViT hand-over, zero-shot."""

import json

import pytest
import torch
import torch.nn.functional as F

from florence_vl.data.world import NOVEL_PAIRS, iter_scenes
from florence_vl.errors import CheckpointError
from florence_vl.florence.checkpoint import load_image_tower_into, load_unicl, save_unicl
from florence_vl.florence.data import CLASS_NAMES, TEMPLATES, UniCLBatches, crop_object, fill
from florence_vl.florence.loss import unicl_loss, unicl_targets
from florence_vl.florence.model import UniCL, UniCLConfig, tokenize
from florence_vl.florence.train import UniCLRecipe, unicl_step_loss
from florence_vl.florence.zeroshot import evaluate_zero_shot, object_crops, zero_shot_classify
from florence_vl.florence2.geometry import image_processor
from florence_vl.train.loop import LoopConfig, train

TINY_VISION = dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 32, 64], num_heads=[1, 2, 4, 8], num_groups=[1, 2, 4, 8],
                   window_size=2, drop_path_rate=0.0, projection_dim=32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The test machine's 2 cores are shared: 2 OpenMP threads wait on each other when the other core is busy.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(tokenizer, **overrides) -> UniCLConfig:
    fields = dict(vision=dict(TINY_VISION), image_size=32, vocab_size=-(-len(tokenizer) // 64) * 64, text_width=32,
                  text_layers=1, text_heads=2, max_len=16, pad_token_id=tokenizer.pad_token_id, embed_dim=32)
    fields.update(overrides)
    return UniCLConfig(**fields)


@pytest.fixture(scope="module")
def tiny_unicl(tiny_tokenizer):
    torch.manual_seed(0)
    return UniCL(tiny_config(tiny_tokenizer)).eval()


def clip_loss(logits):
    target = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


# ------------------------------------------------------------------------------------------------ loss
def test_loss_is_clip_loss_when_labels_are_distinct():
    torch.manual_seed(1)
    logits = torch.randn(7, 7) * 5
    assert torch.allclose(unicl_loss(logits, torch.arange(7)), clip_loss(logits), atol=1e-6)
    assert torch.allclose(unicl_loss(logits, torch.tensor([9, 3, 70, 1, 0, 64, 5])), clip_loss(logits), atol=1e-6)


def test_loss_rewards_matching_every_positive_of_a_shared_label():
    labels = torch.tensor([0, 0, 1, 2])        # two crops of class 0 with two prompts of class 0
    diagonal = torch.full((4, 4), -10.0).fill_diagonal_(10.0)
    shared = diagonal.clone()
    shared[0, 1] = shared[1, 0] = 10.0          # each class-0 image also matches the other class-0 prompt
    assert unicl_loss(shared, labels) < unicl_loss(diagonal, labels)
    assert clip_loss(shared) > clip_loss(diagonal)   # CLIP would call that second match a mistake
    # targets: rows normalised over positives; with all positives scored equally the loss is log(#positives)
    assert unicl_targets(labels).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    expected = (2 * torch.log(torch.tensor(2.0)) + 0 + 0) / 4
    assert torch.allclose(unicl_loss(shared * 10, labels), expected, atol=1e-4)


def test_loss_gradient_and_input_checks():
    logits = torch.randn(4, 4, requires_grad=True)
    unicl_loss(logits.to(torch.bfloat16), torch.tensor([0, 1, 0, 1])).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError):
        unicl_loss(torch.randn(3, 4), torch.arange(3))
    with pytest.raises(ValueError):
        unicl_loss(torch.randn(3, 3), torch.arange(4))


# ------------------------------------------------------------------------------------------------ model
def test_towers_give_unit_embeddings_and_scaled_cosine_logits(tiny_unicl, tiny_tokenizer):
    pixels = torch.randn(3, 3, 32, 32)
    text = tokenize(tiny_tokenizer, ["a red circle.", "the blue square left of the star.", "a"], 16)
    with torch.no_grad():
        image, txt = tiny_unicl.encode_image(pixels), tiny_unicl.encode_text(**text)
        logits = tiny_unicl(pixels, **text)
    assert image.shape == (3, 32) and txt.shape == (3, 32)
    assert torch.allclose(image.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert logits.shape == (3, 3)
    assert torch.allclose(logits, tiny_unicl.scale() * image @ txt.t(), atol=1e-5)
    assert torch.allclose(tiny_unicl.scale(), torch.tensor(1 / 0.07), rtol=1e-5)   # initial temperature 0.07
    assert tiny_unicl.image_features(pixels).shape == (3, 64, 1, 1)                  # DaViT map, stride 32


def test_text_is_read_at_its_last_real_token_whatever_the_padding(tiny_unicl, tiny_tokenizer):
    short = tokenize(tiny_tokenizer, ["a red circle."], 16)
    padded = tokenize(tiny_tokenizer, ["a red circle.", "a much longer text about a green triangle."], 16)
    assert short["input_ids"][0, short["attention_mask"][0].sum() - 1] == tiny_tokenizer.eos_token_id
    with torch.no_grad():
        one = tiny_unicl.encode_text(**short)[0]
        two = tiny_unicl.encode_text(**padded)[0]
    assert torch.allclose(one, two, atol=1e-5)
    long = tokenize(tiny_tokenizer, ["word " * 40], 16)
    assert long["input_ids"].shape[1] == 16 and long["input_ids"][0, -1] == tiny_tokenizer.eos_token_id


# ------------------------------------------------------------------------------------------------ data
def test_batches_mix_label_and_description_pairs_deterministically(tiny_tokenizer):
    batches = UniCLBatches(tiny_tokenizer, image_size=32, max_len=16, batch_size=8, label_fraction=0.5)
    a, b = batches(3), batches(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["pixel_values"].shape == (8, 3, 32, 32) and a["input_ids"].shape[0] == 8
    labels = a["labels"].tolist()
    assert all(0 <= y < 64 for y in labels[:4]) and all(y >= 64 for y in labels[4:])
    texts = [text for _, text, _ in batches.examples(3)]
    for text, label in zip(texts[:4], labels[:4]):
        assert CLASS_NAMES[label] in text
    assert not torch.equal(batches(4)["pixel_values"], a["pixel_values"])
    assert fill("a photo of a {}.", "orange star") == "a photo of an orange star."
    assert len(CLASS_NAMES) == 64


def test_object_crop_is_a_square_around_the_box_inside_the_image():
    scene = next(iter_scenes("test", n=1, kind="shapes"))
    obj = scene.record["objects"][0]
    x0, y0, x1, y1 = obj["bbox"]
    crop = crop_object(scene.image, obj["bbox"])
    assert crop.size[0] == crop.size[1] >= max(x1 - x0, y1 - y0)
    edge = crop_object(scene.image, [0, 0, 10, 30])     # at a corner: shifted inside, not padded
    assert edge.size == (36, 36)


# ------------------------------------------------------------------------------------------------ training
def test_a_few_steps_lower_the_loss(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = UniCL(tiny_config(tiny_tokenizer))
    batches = UniCLBatches(tiny_tokenizer, image_size=32, max_len=16, batch_size=8)
    fixed = batches(0)
    with torch.no_grad():
        before = unicl_step_loss(model, fixed).item()
    config = LoopConfig(steps=12, lr=3e-3, warmup_steps=1, precision="no", log_every=1, save_every=1000)
    records = train(model, lambda step: fixed, unicl_step_loss, config, tmp_path, progress=False)
    with torch.no_grad():
        after = unicl_step_loss(model, fixed).item()
    assert len(records) == 12
    assert after < 0.7 * before, (before, after)


def test_recipe_reads_the_shipped_yaml():
    recipe = UniCLRecipe.from_yaml("configs/unicl-nano.yaml")
    assert recipe.loop.precision == "no" and recipe.loop.steps > 0
    config = UniCLConfig.from_dict(recipe.model)
    assert config.vision["embed_dim"] == [32, 64, 128, 256] and config.image_size in (128, 256)
    with pytest.raises(ValueError):
        UniCLRecipe.from_dict({"bach_size": 3})


# ------------------------------------------------------------------------------------------------ checkpoints
def test_save_load_round_trip_gives_identical_embeddings(tiny_unicl, tiny_tokenizer, tmp_path):
    save_unicl(tiny_unicl, tiny_tokenizer, tmp_path / "unicl")
    assert json.loads((tmp_path / "unicl" / "config.json").read_text())["model_type"] == "unicl"
    model, tokenizer = load_unicl(tmp_path / "unicl")
    texts = ["a red circle.", "Three shapes on a mint background."]
    assert tokenizer(texts)["input_ids"] == tiny_tokenizer(texts)["input_ids"]
    pixels = torch.randn(2, 3, 32, 32)
    text = tokenize(tokenizer, texts, 16)
    with torch.no_grad():
        assert torch.equal(model.encode_image(pixels), tiny_unicl.encode_image(pixels))
        assert torch.equal(model.encode_text(**text), tiny_unicl.encode_text(**text))
        assert torch.equal(model.logit_scale, tiny_unicl.logit_scale)


def test_image_tower_loads_into_a_florence2_vision_tower(tiny_unicl, tiny_tokenizer, tmp_path):
    from transformers.models.florence2.modeling_florence2 import Florence2VisionBackbone

    save_unicl(tiny_unicl, tiny_tokenizer, tmp_path / "unicl")
    torch.manual_seed(5)
    tower = Florence2VisionBackbone(tiny_unicl.config.vision_config()).eval()
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        reference = tiny_unicl.image_features(pixels)
        assert not torch.allclose(tower(pixels).last_hidden_state, reference)
        load_image_tower_into(tower, tmp_path / "unicl")
        assert torch.equal(tower(pixels).last_hidden_state, reference)


def test_nano_unicl_tower_fits_florence2_nano():
    from transformers import Florence2ForConditionalGeneration

    from florence_vl.florence2.geometry import florence2_config

    torch.manual_seed(0)
    unicl = UniCL(UniCLConfig(vocab_size=64)).eval()
    florence2 = Florence2ForConditionalGeneration(florence2_config("nano", 128, 127)).eval()
    load_image_tower_into(florence2.model.vision_tower, unicl)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(florence2.model.vision_tower(pixels).last_hidden_state, unicl.image_features(pixels))


def test_mismatched_towers_raise_checkpoint_error_and_stay_untouched(tiny_unicl, tiny_tokenizer, tmp_path):
    from transformers.models.florence2.modeling_florence2 import Florence2VisionBackbone

    save_unicl(tiny_unicl, tiny_tokenizer, tmp_path / "unicl")
    wider = dict(TINY_VISION, embed_dim=[8, 16, 32, 96])
    tower = Florence2VisionBackbone(UniCLConfig(vision=wider).vision_config())
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_image_tower_into(tower, tmp_path / "unicl")
    assert all(torch.equal(before[k], v) for k, v in tower.state_dict().items())
    # same tensor shapes but another window size: the weights would mean something else
    other_window = Florence2VisionBackbone(UniCLConfig(vision=dict(TINY_VISION, window_size=4)).vision_config())
    with pytest.raises(CheckpointError, match="window_size"):
        load_image_tower_into(other_window, tmp_path / "unicl")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_unicl(tmp_path / "nowhere")
    (tmp_path / "unicl" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_unicl(tmp_path / "unicl")


# ------------------------------------------------------------------------------------------------ zero-shot
def test_zero_shot_evaluation_structure(tiny_unicl, tiny_tokenizer):
    result = evaluate_zero_shot(tiny_unicl, tiny_tokenizer, split="test-novel", n=4)
    for key in ("color_shape_acc", "shape_acc", "novel_color_shape_acc", "novel_shape_acc",
                "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["crops"] >= result["novel_crops"] >= 1 and result["retrieval_scenes"] == 4
    assert result["i2t_r5"] >= result["i2t_r1"]
    with pytest.raises(ValueError):
        evaluate_zero_shot(tiny_unicl, tiny_tokenizer, split="train")


def oracle(model, tokenizer, scenes, monkeypatch):
    """Patch the towers so each image maps to a one-hot of its true class (crops) or caption (scenes), and each
    text to a one-hot of the class its prompt names or of the caption it is: a perfect model."""
    crops, colors, shapes = object_crops(scenes)
    captions = [s.record["captions"]["detailed"] for s in scenes]
    keys = list(CLASS_NAMES) + sorted(set(captions))
    index = {key: i for i, key in enumerate(keys)}
    processor = image_processor(model.config.image_size)
    image_key = {}
    for pixels, key in zip(processor(crops + [s.image for s in scenes], return_tensors="pt")["pixel_values"],
                           [f"{c} {s}" for c, s in zip(colors, shapes)] + captions):
        image_key[pixels.numpy().tobytes()] = index[key]
    text_key = {}
    for text, key in [(fill(t, name), name) for name in CLASS_NAMES for t in TEMPLATES] + list(zip(captions, captions)):
        ids = tokenize(tokenizer, [text], model.config.max_len)["input_ids"][0]
        text_key[tuple(ids.tolist())] = index[key]

    def encode_image(pixel_values):
        return F.one_hot(torch.tensor([image_key[p.numpy().tobytes()] for p in pixel_values]), len(keys)).float()

    def encode_text(input_ids, attention_mask):
        rows = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(input_ids, attention_mask)]
        return F.one_hot(torch.tensor([text_key[r] for r in rows]), len(keys)).float()

    monkeypatch.setattr(model, "encode_image", encode_image)
    monkeypatch.setattr(model, "encode_text", encode_text)
    return crops, colors, shapes


def test_a_perfect_model_scores_one_everywhere(tiny_tokenizer, monkeypatch):
    torch.manual_seed(0)
    model = UniCL(tiny_config(tiny_tokenizer, max_len=64)).eval()
    scenes = list(iter_scenes("test-novel", n=5))
    crops, colors, shapes = oracle(model, tiny_tokenizer, scenes, monkeypatch)
    predictions = zero_shot_classify(model, tiny_tokenizer, crops, CLASS_NAMES, TEMPLATES)
    assert predictions == [CLASS_NAMES.index(f"{c} {s}") for c, s in zip(colors, shapes)]
    assert any((c, s) in NOVEL_PAIRS for c, s in zip(colors, shapes))
    result = evaluate_zero_shot(model, tiny_tokenizer, split="test-novel", n=5)
    for key in ("color_shape_acc", "shape_acc", "novel_color_shape_acc", "novel_shape_acc",
                "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"):
        assert result[key] == 1.0, key
