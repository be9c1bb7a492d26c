"""The align stage (florence_vl/train/align.py): which object owns each grid cell, the targets are the LLM's own
word embeddings, a few steps lower the loss and move only the projector, and the recipe runs it between the
stages with stage 2 starting from its model."""

import json

import pytest
import torch

from florence_vl.train.align import cell_objects, grid_side


def _square(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def test_cells_follow_the_polygons_and_the_topmost_object_wins():
    record = {"size": [80, 80], "objects": [
        {"polygon": _square(0, 0, 40, 40), "color": "red", "class": "square"},
        {"polygon": _square(20, 20, 40, 40), "color": "blue", "class": "square"},   # drawn over the first
    ]}
    owners = cell_objects(record, side=4)          # 20 px cells
    assert owners[0] == 0 and owners[1] == 0 and owners[4] == 0
    assert owners[5] == 1                           # cell (1, 1): both cover it, the later one is on top
    assert owners[2] == owners[3] == -1 and owners[15] == -1


def test_cells_use_the_processors_centred_padding():
    # 40 wide, 80 high: padded to 80 x 80 with 20 px on the left and right, so the object's x shifts by 20.
    record = {"size": [40, 80], "objects": [{"polygon": _square(0, 0, 20, 20), "color": "red", "class": "star"}]}
    owners = cell_objects(record, side=4)
    assert owners.index(0) == 1 and owners.count(0) == 1


def test_small_objects_below_the_cover_threshold_own_nothing():
    record = {"size": [80, 80], "objects": [{"polygon": _square(0, 0, 4, 4), "color": "red", "class": "star"}]}
    assert cell_objects(record, side=4, min_cover=0.1) == [-1] * 16
    assert cell_objects(record, side=4, min_cover=0.01)[0] == 0


def test_grid_side_rejects_token_counts_without_a_square_grid():
    assert grid_side(65) == 8
    with pytest.raises(ValueError):
        grid_side(64)


def _tiny_model(world, florence2_dir):
    from vl_tiny import recipe_model

    return recipe_model(world, florence2_dir, "plain")


def test_targets_are_the_llms_word_embeddings(world, tiny_florence2_dir):
    from florence_vl.train.align import AlignBatches, object_name
    from florence_vl.vl.processor import VLProcessor

    model, tok, vision = _tiny_model(world, tiny_florence2_dir)
    batches = AlignBatches(world, VLProcessor(tok, vision.image_processor, "plain"), model.llm, tok,
                           model.vision_tower.num_image_tokens, batch_size=2)
    batch = batches(0)
    side = batches.side
    assert batch["targets"].shape == (2, side * side, model.llm.config.hidden_size)
    assert batch["object_cells"].any()
    record = batch["records"][0]
    owners = cell_objects(record, side)
    cell = next(c for c, k in enumerate(owners) if k >= 0)
    ids = tok(" " + object_name(record["objects"][owners[cell]]), add_special_tokens=False)["input_ids"]
    expected = model.llm.get_input_embeddings().weight[ids].sum(0)
    assert torch.allclose(batch["targets"][0, cell], expected.detach())
    assert batch["targets"][0][~batch["object_cells"][0]].abs().sum() == 0


def test_align_steps_lower_the_loss_and_train_only_the_projector(tmp_path, world, tiny_florence2_dir):
    from florence_vl.train.align import AlignBatches, align_loss
    from florence_vl.train.vl import StageConfig, run_align
    from florence_vl.vl.processor import VLProcessor

    model, tok, vision = _tiny_model(world, tiny_florence2_dir)
    processor = VLProcessor(tok, vision.image_processor, "plain")
    batches = AlignBatches(world, processor, model.llm, tok, model.vision_tower.num_image_tokens, batch_size=3)
    held = batches(0)
    model.eval()
    with torch.no_grad():
        before_loss = float(align_loss(model, held))
    frozen = [p.detach().clone() for p in list(model.florence2.parameters()) + list(model.llm.parameters())]
    projector = model.mm_projector.encoder_mlp[0].weight.detach().clone()
    stage = StageConfig.from_dict({"data": str(world), "batch_size": 3, "cache_features": 100,
                                   "loop": {"steps": 30, "lr": 1e-2, "warmup_steps": 1, "log_every": 10,
                                            "save_every": 100}})
    records = run_align(model, processor, tok, stage, tmp_path / "align", progress=False)
    assert len(records) == 3
    model.eval()
    with torch.no_grad():
        after_loss = float(align_loss(model, held))
    assert after_loss < 0.5 * before_loss, (before_loss, after_loss)
    assert not torch.equal(projector, model.mm_projector.encoder_mlp[0].weight)
    after = list(model.florence2.parameters()) + list(model.llm.parameters())
    assert all(torch.equal(a, b) for a, b in zip(frozen, after))
    assert all(p.requires_grad for p in model.llm.parameters()), "the LLM is trainable again for stage 2"


def test_recipe_runs_align_between_the_stages(tmp_path, world, tiny_florence2_dir, monkeypatch):
    from vl_tiny import QUICK_STAGE, quick_recipe, record_loads

    from florence_vl.errors import InputError
    from florence_vl.train.vl import VLRecipe, run

    loaded = record_loads(monkeypatch)
    quick = QUICK_STAGE
    data = quick_recipe(tmp_path / "run", world, tiny_florence2_dir, align={"data": str(world)})
    final = run(VLRecipe.from_dict(data), progress=False)
    out = tmp_path / "run"
    assert (out / "align" / "model" / "florence_vl.json").exists()
    assert len((out / "align" / "log.jsonl").read_text().splitlines()) == 2
    assert json.loads((final / "florence_vl.json").read_text())["vl"]["template"] == "phi3"
    assert loaded == [out / "stage1" / "model", out / "align" / "model"]   # align from stage 1, stage 2 from align
    from safetensors.torch import load_file

    aligned = load_file(out / "align" / "model" / "mm_projector.safetensors")
    stage1 = load_file(out / "stage1" / "model" / "mm_projector.safetensors")
    assert any(not torch.equal(aligned[k], stage1[k]) for k in aligned)

    # without stage 2 the recipe's model is the aligned one
    import shutil

    shutil.copytree(out, tmp_path / "no-stage2", ignore=shutil.ignore_patterns("stage2"))
    no_stage2 = dict(data, out_dir=str(tmp_path / "no-stage2"), stage2=dict(quick, loop=dict(quick["loop"], steps=0)))
    assert run(VLRecipe.from_dict(no_stage2), progress=False) == tmp_path / "no-stage2" / "align" / "model"

    bad = dict(data, out_dir=str(tmp_path / "bad"), align=dict(quick, data=str(tmp_path)))
    with pytest.raises(InputError, match="records.jsonl"):
        run(VLRecipe.from_dict(bad), progress=False)


def test_readout_names_the_colour_and_class_of_tokens_that_are_those_words(world, tiny_florence2_dir, monkeypatch):
    import florence_vl.train.align as align
    from florence_vl.vl.processor import VLProcessor

    model, tok, vision = _tiny_model(world, tiny_florence2_dir)
    batches = align.AlignBatches(world, VLProcessor(tok, vision.image_processor, "plain"), model.llm, tok,
                                 model.vision_tower.num_image_tokens, batch_size=2)
    colour_of = dict(zip(batches.words["color"], batches.word_vectors["color"]))
    class_of = dict(zip(batches.words["class"], batches.word_vectors["class"]))

    def oracle(which):
        def tokens(model, pixel_values):   # every object cell holds exactly its object's colour (or class) word
            out = torch.zeros(len(current), batches.side ** 2, batches.width)
            for row, record in enumerate(current):
                for cell, k in enumerate(cell_objects(record, batches.side)):
                    if k >= 0:
                        obj = record["objects"][k]
                        out[row, cell] = colour_of[obj["color"]] if which == "color" else class_of[obj["class"]]
            return out
        return tokens

    current = []
    real_batch = batches.batch
    monkeypatch.setattr(batches, "batch", lambda records: current.clear() or current.extend(records) or
                        real_batch(records))
    monkeypatch.setattr(align, "grid_tokens", oracle("color"))
    scores = align.readout_accuracy(model, batches)
    expected_cells = sum(k >= 0 for r in batches.records for k in cell_objects(r, batches.side))
    assert scores["cells"] == expected_cells > 0
    assert scores["color"] == 1.0 and scores["class"] < 1.0
    monkeypatch.setattr(align, "grid_tokens", oracle("class"))
    assert align.readout_accuracy(model, batches)["class"] == 1.0
