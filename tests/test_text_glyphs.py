"""The glyph stage (florence_vl/train/text_glyphs.py): lines are sampled where their text is, the CTC targets are
the strings, greedy decoding merges repeats and drops blanks, training lowers the loss, and run() writes a
Florence-2 checkpoint in which only the vision tower changed."""

import torch

from florence_vl.train.loop import LoopConfig
from florence_vl.train.text_glyphs import (GLYPHS, GlyphBatches, GlyphRecipe, TowerWithGlyphHead, glyph_batch_loss,
                                           glyph_ids, line_points, read_lines, text_scenes)


def test_glyph_ids_are_the_characters_and_drop_the_unknown():
    assert [GLYPHS[i - 1] for i in glyph_ids("Ice 42")] == list("ice 42")
    assert glyph_ids("a-b") == glyph_ids("ab") and 0 not in glyph_ids("zebra 9")


def test_line_points_run_along_the_centre_line_in_grid_sample_coordinates():
    # a 40x10 quad from (20, 30) in a 100x50 image: the centre line is y = 35, x from 20 to 60
    points = line_points([20, 30, 60, 30, 60, 40, 20, 40], (100, 50), 4)
    pixels = (points + 1) / 2 * torch.tensor([100, 50])
    assert torch.allclose(pixels, torch.tensor([[25.0, 35.0], [35.0, 35.0], [45.0, 35.0], [55.0, 35.0]]), atol=1e-4)
    # rotated: every point stays inside the quad's bounding box, in order along the text
    rotated = line_points([10, 20, 50, 10, 53, 22, 13, 32], (64, 64), 6)
    xs = (rotated[:, 0] + 1) / 2 * 64
    assert (xs.diff() > 0).all() and 10 < xs.min() and xs.max() < 53


def test_batches_are_deterministic_and_give_ctc_room_for_every_string():
    batches = GlyphBatches(first_scene=0, scenes_per_step=3, image_size=64)
    a, b, c = batches(1), batches(1), batches(2)
    assert a["pixel_values"].shape == (3, 3, 64, 64)
    assert torch.equal(a["points"], b["points"]) and torch.equal(a["targets"], b["targets"])
    assert not torch.equal(a["pixel_values"], c["pixel_values"])
    strings = len(a["texts"])
    assert strings >= 3 and a["points"].shape[:2] == (strings, int(a["point_counts"].max()))
    assert (a["point_counts"] >= 2 * a["target_lengths"] + 2).all()
    assert int(a["target_lengths"].sum()) == len(a["targets"])
    assert torch.equal(a["targets"], torch.tensor([i for text in a["texts"] for i in glyph_ids(text)]))
    # step 0's strings are those of the first three scenes with text, every one of them, in order
    scenes = text_scenes(0, "train", 3)
    assert batches(0)["texts"] == [t["text"].lower() for scene in scenes for t in scene.record["texts"]]


def test_greedy_reading_merges_repeats_and_drops_blanks():
    def one_hot(classes):
        return torch.nn.functional.one_hot(torch.tensor(classes), len(GLYPHS) + 1).float()

    s, e, blank = GLYPHS.index("s") + 1, GLYPHS.index("e") + 1, 0
    logits = torch.stack([one_hot([s, s, e, blank, e, blank]), one_hot([e, blank, blank, blank, s, s])])
    assert read_lines(logits, torch.tensor([6, 4])) == ["see", "e"]


def test_a_few_steps_lower_the_loss_and_run_changes_only_the_tower(tmp_path):
    from safetensors.torch import load_file

    from florence_vl.florence2.checkpoint import load_florence2, make_tiny_checkpoint
    from florence_vl.train.loop import train
    from florence_vl.train.text_glyphs import run

    start = make_tiny_checkpoint(tmp_path / "start", seed=3)
    model = load_florence2(start, dtype=torch.float32).model
    probe = TowerWithGlyphHead(model.model.vision_tower, model.config.vision_config.embed_dim[-1])
    fixed = GlyphBatches(first_scene=0, scenes_per_step=4, image_size=64)(0)
    before = glyph_batch_loss(probe, fixed).item()
    train(probe, lambda step: fixed, glyph_batch_loss, LoopConfig(steps=25, lr=3e-3, warmup_steps=2, precision="no",
                                                                  save_every=1000), tmp_path / "fit", progress=False)
    assert glyph_batch_loss(probe, fixed).item() < 0.7 * before

    recipe = GlyphRecipe(out_dir=str(tmp_path / "glyphs"), init_from=str(start), scenes_per_step=2, image_size=64,
                         held_out_scenes=4, loop=LoopConfig(steps=2, lr=1e-3, warmup_steps=1, save_every=2,
                                                            precision="no"))
    path = run(recipe, progress=False)
    old, new = load_file(str(start / "model.safetensors")), load_file(str(path / "model.safetensors"))
    assert old.keys() == new.keys()     # no glyph head in the checkpoint
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all("vision_tower" in k for k in changed)
    assert (tmp_path / "glyphs" / "log.jsonl").read_text().count("line_exact") == 1
