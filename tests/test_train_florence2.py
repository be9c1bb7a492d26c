"""Florence-2 training on the nano world: the loss falls, and a resumed run repeats the same loss sequence."""

import json

import pytest
import torch

from florence_vl.train.florence2 import Florence2Recipe, WorldBatches, build_model, florence2_loss
from florence_vl.train.loop import LoopConfig, train
from reliability_train_child import fresh  # the seeded tiny model a new training process starts from


@pytest.fixture(scope="module")
def setup(tiny_tokenizer):
    recipe = Florence2Recipe(out_dir="unused", geometry="tiny", images_per_step=2, tasks_per_image=2,
                             max_target_tokens=48, loop=LoopConfig(steps=1))
    model = build_model(recipe, tiny_tokenizer)
    return recipe, model, WorldBatches(recipe, tiny_tokenizer, 64, model.config.vision_config)


def test_batches_are_deterministic_and_well_formed(setup, tiny_tokenizer):
    recipe, model, batches = setup
    a, b = batches(3), batches(3)
    assert all((a[k] == b[k]).all() for k in ("pixel_values", "input_ids", "labels"))
    rows = recipe.images_per_step * recipe.tasks_per_image
    assert a["pixel_values"].shape == (2, 3, 64, 64) and a["input_ids"].shape[0] == rows
    assert (a["input_ids"][:, :5] == tiny_tokenizer.image_token_id).all()  # 5 image tokens at 64 px
    assert (a["labels"][:, 0] == tiny_tokenizer.bos_token_id).all()
    assert not (batches(4)["input_ids"].shape == a["input_ids"].shape and (batches(4)["input_ids"] == a["input_ids"]).all())


def test_a_few_steps_lower_the_loss(setup, tmp_path):
    recipe, model, batches = setup
    fixed = batches(0)
    before = florence2_loss(model, fixed).item()
    config = LoopConfig(steps=30, lr=3e-3, warmup_steps=3, precision="no", log_every=5, save_every=1000)
    train(model, lambda step: fixed, florence2_loss, config, tmp_path, progress=False)
    assert florence2_loss(model, fixed).item() < 0.7 * before


def test_resume_repeats_the_loss_sequence(tiny_tokenizer, tmp_path):
    config = LoopConfig(steps=8, lr=1e-3, warmup_steps=2, precision="no", log_every=1, save_every=4)
    model, batches = fresh(tiny_tokenizer)
    straight = train(model, batches, florence2_loss, config, tmp_path / "a", progress=False)

    class Crash(Exception):
        pass

    def crashing(step):  # the process dies while preparing step 6, after the step-4 checkpoint
        if step == 5:
            raise Crash
        return batches(step)

    model, batches = fresh(tiny_tokenizer)
    with pytest.raises(Crash):
        train(model, crashing, florence2_loss, config, tmp_path / "b", progress=False)
    model, batches = fresh(tiny_tokenizer)  # a new process starts from scratch like this, then finds the checkpoint
    resumed = train(model, batches, florence2_loss, config, tmp_path / "b", progress=False)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-5)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))


def test_batches_built_by_worker_processes_train_the_same_steps(tiny_tokenizer, tmp_path):
    runs = {}
    for workers in (0, 2):
        config = LoopConfig(steps=6, lr=1e-3, warmup_steps=2, precision="no", log_every=1, save_every=3,
                            workers=workers)
        model, batches = fresh(tiny_tokenizer)
        runs[workers] = train(model, batches, florence2_loss, config, tmp_path / str(workers), progress=False)
    assert [r["step"] for r in runs[2]] == list(range(1, 7))
    assert [r["loss"] for r in runs[2]] == pytest.approx([r["loss"] for r in runs[0]], rel=1e-5)
    assert len({round(r["loss"], 6) for r in runs[2]}) > 1  # a different batch each step, not one repeated


def test_image_reliance_is_zero_for_a_model_blind_to_the_image(setup):
    import torch

    from florence_vl.train.florence2 import image_reliance

    from conftest import spread_weights

    recipe, _, batches = setup
    batch = batches(0)
    seeing = spread_weights(build_model(recipe, batches.tokenizer))
    assert abs(image_reliance(seeing, batch)["image_reliance"]) > 1e-3
    blind = spread_weights(build_model(recipe, batches.tokenizer))
    with torch.no_grad():  # every image token becomes the projector's LayerNorm bias: the image is gone
        blind.model.multi_modal_projector.image_projection.weight.zero_()
    assert image_reliance(blind, batch)["image_reliance"] == 0.0


def test_run_with_location_aids_logs_image_reliance_and_saves_a_loadable_model(tmp_path):
    import math

    from florence_vl.florence2.runner import Florence2
    from florence_vl.train.florence2 import run

    recipe = Florence2Recipe(out_dir=str(tmp_path), geometry="tiny", tokenizer_vocab=400, tokenizer_scenes=20,
                             images_per_step=2, tasks_per_image=2, max_target_tokens=48, image_position_init=1.0,
                             smooth_location_init=True, location_label_sigma=10.0, probe_scenes=2,
                             loop=LoopConfig(steps=4, save_every=2, log_every=1, warmup_steps=1, precision="no"))
    path = run(recipe, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    probes = [r for r in log if "image_reliance" in r]
    assert [r["step"] for r in probes] == [2, 4]
    for r in probes:
        assert math.isfinite(r["probe_loss"]) and r["image_reliance"] == pytest.approx(
            r["probe_loss_swapped_images"] - r["probe_loss"], abs=1e-3)
    florence = Florence2.from_pretrained(path)
    [result] = florence.run([batches_image()], "<OD>", max_new_tokens=8)
    assert result.task == "<OD>"


def batches_image():
    from florence_vl.data.world import generate_scene

    return generate_scene(0, "val").image


def test_lr_scale_gives_a_prefix_its_own_learning_rate(setup):
    from florence_vl.train.loop import parameter_groups

    _, model, _ = setup
    config = LoopConfig(steps=1, lr=1e-3, weight_decay=0.05,
                        lr_scale={"model.vision_tower.": 0.1, "model.vision_tower.convs.0.": 0.0})
    groups = parameter_groups(model, config)
    owner = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(named)
    for name, param in named.items():
        group = owner[id(param)]
        expected = 0.0 if name.startswith("model.vision_tower.convs.0.") else (
            1e-4 if name.startswith("model.vision_tower.") else 1e-3)
        assert group["lr"] == pytest.approx(expected), name
        assert group["weight_decay"] == (0.05 if param.dim() >= 2 else 0.0), name


def test_curriculum_phases_choose_the_tasks_of_the_first_steps(tiny_tokenizer):
    recipe = Florence2Recipe(out_dir="unused", geometry="tiny", images_per_step=4, tasks_per_image=2,
                             task_weights={"<CAPTION>": 1.0, "<OCR>": 1.0},
                             curriculum=[{"until": 3, "task_weights": {"<OD>": 1.0}}], loop=LoopConfig(steps=1))
    batches = WorldBatches(recipe, tiny_tokenizer, 64, build_model(recipe, tiny_tokenizer).config.vision_config)
    early = {e["task"] for step in range(3) for _, examples in batches.examples(step) for e in examples}
    late = {e["task"] for step in range(3, 8) for _, examples in batches.examples(step) for e in examples}
    assert early == {"<OD>"}          # charts and text-only scenes have no OD: other scenes were drawn instead
    assert late == {"<CAPTION>", "<OCR>"}


def test_first_scene_moves_the_stream_on(tiny_tokenizer):
    base = Florence2Recipe(out_dir="unused", geometry="tiny", images_per_step=2, tasks_per_image=2,
                           max_target_tokens=48, loop=LoopConfig(steps=1))
    later = Florence2Recipe(**{**base.__dict__, "first_scene": 2 * 5})  # 5 steps of 2 images further on
    from florence_vl.florence2.geometry import florence2_config

    vision = florence2_config("tiny", 512, tiny_tokenizer.image_token_id).vision_config
    a = WorldBatches(base, tiny_tokenizer, 64, vision)(5)
    b = WorldBatches(later, tiny_tokenizer, 64, vision)(0)
    assert all((a[k] == b[k]).all() for k in ("pixel_values", "input_ids", "labels"))


def test_init_from_continues_a_checkpoint_with_its_tokenizer(tmp_path):
    """A later stage (configs/florence2-nano-loc.yaml) starts from a trained model's weights and tokenizer."""
    from safetensors.torch import load_file

    from florence_vl.florence2.checkpoint import make_tiny_checkpoint
    from florence_vl.train.florence2 import run

    start = make_tiny_checkpoint(tmp_path / "start", seed=3)
    recipe = Florence2Recipe(out_dir=str(tmp_path / "stage2"), geometry="tiny", init_from=str(start),
                             images_per_step=1, tasks_per_image=1, max_target_tokens=32,
                             loop=LoopConfig(steps=2, lr=1e-3, warmup_steps=1, save_every=2, precision="no"))
    path = run(recipe, progress=False)
    assert (path / "tokenizer.json").read_text() == (start / "tokenizer.json").read_text()
    before, after = load_file(str(start / "model.safetensors")), load_file(str(path / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = [k for k in before if not (before[k] == after[k]).all()]
    # trained from the checkpoint (small steps away from it), not from a fresh initialisation
    assert changed and all((before[k] - after[k]).abs().max() < 0.05 for k in before)


def test_image_size_overrides_the_geometry_side_and_the_saved_model_reads_at_it(tmp_path):
    """image_size (the 384 px experiment of docs/nano.md): a stage trains and saves at another side than its
    geometry's; the saved processor resizes to it and the model's image tokens follow (tiny: 64 px -> 2x2 + 1,
    128 px -> 4x4 + 1), and the saved model runs a task at that side."""
    from PIL import Image

    from florence_vl.florence2.checkpoint import load_florence2, make_tiny_checkpoint
    from florence_vl.florence2.runner import Florence2
    from florence_vl.train.florence2 import run

    start = make_tiny_checkpoint(tmp_path / "start", seed=3)
    recipe = Florence2Recipe(out_dir=str(tmp_path / "wide"), geometry="tiny", init_from=str(start), image_size=128,
                             images_per_step=1, tasks_per_image=1, max_target_tokens=32,
                             loop=LoopConfig(steps=2, lr=1e-3, warmup_steps=1, save_every=2, precision="no"))
    bundle = load_florence2(run(recipe, progress=False), dtype=torch.float32)
    assert bundle.image_size == 128 and bundle.num_image_tokens == 17
    assert load_florence2(start, dtype=torch.float32).num_image_tokens == 5
    florence = Florence2(bundle.model, bundle.tokenizer, bundle.image_processor)
    [result] = florence.run([Image.new("RGB", (90, 70), "white")], "<OD>", max_new_tokens=8, num_beams=1)
    assert florence.num_image_tokens == 17 and isinstance(result.output["bboxes"], list)


def test_tower_labels_train_the_tower_beside_the_tasks_and_leave_no_head_in_the_checkpoint(tmp_path):
    """tower_labels (configs/florence2-nano-names.yaml): each step adds the labelled-object loss of
    object_crops.py through the same DaViT; the label head trains with it and is not saved."""
    from safetensors.torch import load_file

    from florence_vl.florence2.checkpoint import load_florence2, make_tiny_checkpoint
    from florence_vl.florence2.geometry import preset
    from florence_vl.train.florence2 import TOWER_LABEL_HEAD, WithTowerLosses, make_loss, run

    start = make_tiny_checkpoint(tmp_path / "start", seed=3)
    labels = {"weight": 0.5, "source": "scenes", "scenes_per_step": 2}
    recipe = Florence2Recipe(out_dir=str(tmp_path / "names"), geometry="tiny", init_from=str(start),
                             images_per_step=1, tasks_per_image=1, max_target_tokens=32, tower_labels=labels,
                             loop=LoopConfig(steps=2, lr=1e-3, warmup_steps=1, save_every=2, precision="no"))
    bundle = load_florence2(start, dtype=torch.float32)
    model, size = bundle.model, preset("tiny")["image_size"]
    plain = make_loss(recipe, bundle.tokenizer)
    batches = WorldBatches(recipe, bundle.tokenizer, size, model.config.vision_config)
    both = WithTowerLosses(recipe, batches, plain, model.config.vision_config, size)
    batch = both(0)
    assert batch["tower_labels"]["pixel_values"].shape[0] == 2 and len(batch["tower_labels"]["shapes"]) >= 2
    setattr(model, TOWER_LABEL_HEAD, torch.nn.Linear(model.config.vision_config.embed_dim[-1], 16))
    with torch.no_grad():
        assert both.loss(model, batch).item() > plain(model, batch).item() + 0.1  # 0.5 x (~ln 8 + 0.3 ln 8)

    path = run(recipe, progress=False)
    before, after = load_file(str(start / "model.safetensors")), load_file(str(path / "model.safetensors"))
    assert before.keys() == after.keys()  # no label head in the checkpoint
    assert any(not torch.equal(before[k], after[k]) for k in before if "vision_tower" in k)


def test_tower_glyphs_add_the_ctc_loss_of_text_lines_and_leave_no_head_in_the_checkpoint(tmp_path):
    """tower_glyphs: each step adds text_glyphs.py's per-character CTC loss through the same DaViT, from its own
    text scenes; the glyph head trains with it and is not saved. A mistyped field is an error, not ignored."""
    from safetensors.torch import load_file

    from florence_vl.florence2.checkpoint import load_florence2, make_tiny_checkpoint
    from florence_vl.florence2.geometry import preset
    from florence_vl.train.florence2 import TOWER_GLYPH_HEAD, WithTowerLosses, make_loss, run
    from florence_vl.train.text_glyphs import glyph_head

    start = make_tiny_checkpoint(tmp_path / "start", seed=3)
    recipe = Florence2Recipe(out_dir=str(tmp_path / "glyphs"), geometry="tiny", init_from=str(start),
                             images_per_step=1, tasks_per_image=1, max_target_tokens=32,
                             tower_glyphs={"weight": 0.5, "scenes_per_step": 2},
                             loop=LoopConfig(steps=2, lr=1e-3, warmup_steps=1, save_every=2, precision="no"))
    bundle = load_florence2(start, dtype=torch.float32)
    model, size = bundle.model, preset("tiny")["image_size"]
    plain = make_loss(recipe, bundle.tokenizer)
    both = WithTowerLosses(recipe, WorldBatches(recipe, bundle.tokenizer, size, model.config.vision_config), plain,
                           model.config.vision_config, size)
    batch = both(0)
    assert "tower_labels" not in batch and batch["tower_glyphs"]["pixel_values"].shape[0] == 2
    assert both.glyphs.first_scene == recipe.first_scene + 700_000  # scenes of their own
    setattr(model, TOWER_GLYPH_HEAD, glyph_head(model.config.vision_config.embed_dim[-1]))
    with torch.no_grad():
        assert both.loss(model, batch).item() > plain(model, batch).item() + 1.0  # 0.5 x CTC of a fresh head

    path = run(recipe, progress=False)
    before, after = load_file(str(start / "model.safetensors")), load_file(str(path / "model.safetensors"))
    assert before.keys() == after.keys()  # no glyph head in the checkpoint
    assert any(not torch.equal(before[k], after[k]) for k in before if "vision_tower" in k)
    with pytest.raises(ValueError, match="scenes_per_step"):
        Florence2Recipe.from_dict({"out_dir": "x", "loop": {"steps": 1}, "tower_glyphs": {"scenes_per_stp": 4}})
