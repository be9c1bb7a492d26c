"""The tower stage (florence_vl/train/object_crops.py): crops show their object, training lowers the loss, and
run() writes a Florence-2 checkpoint in which only the vision tower changed."""

import numpy as np
import torch

from florence_vl.data.vocabulary import COLORS, SHAPES
from florence_vl.train.loop import LoopConfig
from florence_vl.train.object_crops import (COLOR_NAMES, CropBatches, CropLoss, ObjectCropRecipe, TowerWithLabelHead,
                                            object_crops)


def test_crops_are_centred_on_their_labelled_object():
    recipe = ObjectCropRecipe(out_dir="unused", jitter=0.0, margin=(1.3, 1.3))
    images, shapes, colours = object_crops(0, "train", 40, recipe)
    assert len(images) == len(shapes) == len(colours) == 40
    assert set(shapes) <= set(range(len(SHAPES))) and len(set(shapes)) >= 4
    hits = 0
    for image, colour in zip(images, colours):
        centre = np.asarray(image, dtype=float)[image.height // 2 - 1: image.height // 2 + 2,
                                                image.width // 2 - 1: image.width // 2 + 2].reshape(-1, 3).mean(0)
        nearest = min(COLORS, key=lambda c: np.abs(np.array(COLORS[c], dtype=float) - centre).sum())
        hits += nearest == COLOR_NAMES[colour]
    # the centre pixel is the object's colour unless an overlapping object or a concave shape (star, cross,
    # a triangle's centroid is inside, a bbox centre may not be) puts something else there
    assert hits >= 28, hits


def test_batches_are_deterministic_and_sized():
    recipe = ObjectCropRecipe(out_dir="unused", crop_size=32, crops_per_step=8)
    a, b, c = CropBatches(recipe)(2), CropBatches(recipe)(2), CropBatches(recipe)(3)
    assert a["pixel_values"].shape == (8, 3, 32, 32)
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["shapes"], b["shapes"])
    assert not torch.equal(a["pixel_values"], c["pixel_values"])


def test_a_few_steps_lower_the_loss_and_run_changes_only_the_tower(tmp_path):
    from safetensors.torch import load_file

    from florence_vl.florence2.checkpoint import load_florence2, make_tiny_checkpoint
    from florence_vl.train.loop import train
    from florence_vl.train.object_crops import run

    start = make_tiny_checkpoint(tmp_path / "start", seed=3)
    recipe = ObjectCropRecipe(out_dir=str(tmp_path / "crops"), init_from=str(start), crop_size=32, crops_per_step=16,
                              loop=LoopConfig(steps=2, lr=1e-3, warmup_steps=1, save_every=2, precision="no"))
    model = load_florence2(start, dtype=torch.float32).model
    probe = TowerWithLabelHead(model.model.vision_tower, model.config.vision_config.embed_dim[-1])
    fixed = CropBatches(recipe)(0)
    loss = CropLoss(recipe.colour_weight)
    before = loss(probe, fixed).item()
    train(probe, lambda step: fixed, loss, LoopConfig(steps=25, lr=3e-3, warmup_steps=2, precision="no",
                                                      save_every=1000), tmp_path / "fit", progress=False)
    assert loss(probe, fixed).item() < 0.7 * before

    path = run(recipe, progress=False)
    old, new = load_file(str(start / "model.safetensors")), load_file(str(path / "model.safetensors"))
    assert old.keys() == new.keys()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all("vision_tower" in k for k in changed)
    assert (tmp_path / "crops" / "log.jsonl").read_text().count("shape_accuracy") == 1
    assert load_florence2(path, dtype=torch.float32).model is not None


def test_box_pool_weights_cover_each_box_and_sum_to_one():
    from florence_vl.train.object_crops import box_pool_weights

    # image 0 (64x64, 4x4 cells of 16 px): a box exactly on cell (row 1, col 2); a box over half of cells
    # (0, 0) and (0, 1); image 1 (32x64, wide): its left half
    pool = box_pool_weights([[(32, 16, 48, 32), (8, 0, 24, 16)], [(0, 0, 32, 32)]], [(64, 64), (64, 32)], 4)
    assert pool.shape == (3, 2 * 16)
    assert torch.allclose(pool.sum(1), torch.ones(3))
    assert pool[0, 1 * 4 + 2] == 1.0
    assert torch.allclose(pool[1, :2], torch.tensor([0.5, 0.5])) and pool[1, 2:].sum() == 0
    left_half = torch.zeros(4, 4)
    left_half[:, :2] = 1 / 8
    assert torch.allclose(pool[2, 16:].view(4, 4), left_half) and pool[2, :16].sum() == 0


def test_scene_batches_pool_each_object_from_its_own_tokens(tmp_path):
    from florence_vl.florence2.checkpoint import load_florence2, make_tiny_checkpoint
    from florence_vl.florence2.geometry import feature_map_side
    from florence_vl.train.loop import train

    start = make_tiny_checkpoint(tmp_path / "start", seed=3)
    model = load_florence2(start, dtype=torch.float32).model
    recipe = ObjectCropRecipe(out_dir="unused", source="scenes", scenes_per_step=4, scene_size=64)
    side = feature_map_side(model.config.vision_config, 64)
    batch = CropBatches(recipe, feature_side=side)(1)
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    assert batch["pool"].shape == (len(batch["shapes"]), 4 * side * side) == (len(batch["colours"]), 4 * side * side)
    assert len(batch["shapes"]) >= 4 and torch.allclose(batch["pool"].sum(1), torch.ones(len(batch["shapes"])))
    assert torch.equal(batch["pool"], CropBatches(recipe, feature_side=side)(1)["pool"])
    probe = TowerWithLabelHead(model.model.vision_tower, model.config.vision_config.embed_dim[-1])
    loss = CropLoss(recipe.colour_weight)
    before = loss(probe, batch).item()
    train(probe, lambda step: batch, loss, LoopConfig(steps=25, lr=3e-3, warmup_steps=2, precision="no",
                                                      save_every=1000), tmp_path / "fit", progress=False)
    assert loss(probe, batch).item() < 0.7 * before
    try:
        ObjectCropRecipe.from_dict({"out_dir": "x", "source": "scene"})
    except ValueError as error:
        assert "crops" in str(error)
    else:
        raise AssertionError("a bad source was accepted")
