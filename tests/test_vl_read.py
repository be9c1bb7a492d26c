"""The read stage (florence_vl/train/read.py): its rows carry the names under each grid cell and a blend weight, the
word grid is the LLM's own embeddings of those names, a row's tokens are the blend it asks for, a few steps lower
the loss and move only the LLM, and the recipe runs it after stage 2."""

import random

import pytest
import torch

from florence_vl.train.align import cell_objects, name_token_ids, object_name


def _tiny(world, florence2_dir):
    from vl_tiny import recipe_model

    from florence_vl.vl.processor import VLProcessor

    model, tok, vision = recipe_model(world, florence2_dir, "phi3")
    return model, tok, VLProcessor(tok, vision.image_processor, "phi3", max_length=256)


def _batches(model, tok, processor, world, **kwargs):
    from florence_vl.train.read import ReadBatches

    return ReadBatches(world, processor, tok, model.vision_tower.num_image_tokens, **kwargs)


def test_rows_carry_the_names_under_each_cell_and_the_blend_weight(world, tiny_florence2_dir):
    model, tok, processor = _tiny(world, tiny_florence2_dir)
    batches = _batches(model, tok, processor, world, batch_size=24, word_steps=2, real_share=0.5)
    words_only = batches(0)
    assert torch.equal(words_only["alpha"], torch.ones(24)) and "pixel_values" not in words_only
    assert torch.equal(words_only["input_ids"], batches(0)["input_ids"])            # a pure function of the step

    blended = batches(5)
    assert blended["pixel_values"].shape[0] == 24
    alpha = blended["alpha"]
    assert ((alpha >= 0) & (alpha <= 1)).all() and (alpha == 0).any() and ((alpha > 0) & (alpha < 1)).any()

    # the first row's cells: the names of the objects cell_objects puts there, nothing over the background
    side = batches.side
    assert blended["name_ids"].shape[:2] == (24, side * side)
    drawn = random.Random(f"{batches.seed}-read-5")
    index, _, _ = batches._draw(drawn)
    record = batches.records[index]
    owners = cell_objects(record, side)
    for cell, k in enumerate(owners):
        ids = blended["name_ids"][0, cell][blended["name_mask"][0, cell]].tolist()
        assert ids == (name_token_ids(tok, object_name(record["objects"][k])) if k >= 0 else [])
    assert any(k >= 0 for k in owners)


def test_yes_no_questions_are_drawn_half_yes(world, tiny_florence2_dir):
    model, tok, processor = _tiny(world, tiny_florence2_dir)
    batches = _batches(model, tok, processor, world, batch_size=4, types=("exist",))
    answers = {a for a in batches.questions["exist"]}
    assert answers == {"yes", "no"}
    rng = random.Random(0)
    drawn = [batches._draw(rng)[2] for _ in range(600)]
    share = drawn.count("yes") / len(drawn)
    world_share = len(batches.questions["exist"]["yes"]) / len(batches.every["exist"])
    assert 0.44 < share < 0.56 and abs(world_share - 0.5) > 0.1, (share, world_share)


def test_word_grid_is_the_llms_embedding_of_the_names_and_blends_with_the_real_tokens(world, tiny_florence2_dir):
    from florence_vl.train.read import read_tokens, word_grid

    model, tok, processor = _tiny(world, tiny_florence2_dir)
    model.eval()
    batch = _batches(model, tok, processor, world, batch_size=6, real_share=0.5)(0)
    grid = word_grid(model.llm, batch["name_ids"], batch["name_mask"])
    assert grid.shape == (6, model.vision_tower.num_image_tokens, model.llm.config.hidden_size)
    assert grid[:, 0].abs().sum() == 0                                                    # the pooled token
    embed = model.llm.get_input_embeddings().weight
    row, cell = (batch["name_mask"].any(-1)).nonzero()[0].tolist()
    ids = batch["name_ids"][row, cell][batch["name_mask"][row, cell]]
    assert torch.allclose(grid[row, cell + 1], embed[ids].sum(0).detach())
    assert grid[~torch.cat([torch.ones(6, 1, dtype=torch.bool), batch["name_mask"].any(-1)], 1)].abs().sum() == 0

    batch["alpha"] = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.25])
    with torch.no_grad():
        real = model.image_features(batch["pixel_values"]).float()
    tokens = read_tokens(model, batch)
    assert torch.allclose(tokens[0], grid[0]) and torch.allclose(tokens[1], real[1], atol=1e-6)
    assert torch.allclose(tokens[2], 0.5 * grid[2] + 0.5 * real[2], atol=1e-6)
    batch["pixel_values"] = torch.randn_like(batch["pixel_values"])                       # other images
    moved = read_tokens(model, batch)
    assert torch.allclose(moved[3], tokens[3]) and not torch.allclose(moved[4], tokens[4])


def test_read_steps_lower_the_loss_and_train_only_the_llm(tmp_path, world, tiny_florence2_dir):
    from florence_vl.train.read import read_loss
    from florence_vl.train.vl import StageConfig, run_read

    model, tok, processor = _tiny(world, tiny_florence2_dir)
    held = _batches(model, tok, processor, world, batch_size=16, seed=99)(0)
    model.eval()
    with torch.no_grad():
        before = float(read_loss(model, held))
    frozen = [p.detach().clone() for p in list(model.florence2.parameters()) + list(model.mm_projector.parameters())]
    llm = model.llm.lm_head.weight.detach().clone()
    stage = StageConfig.from_dict({"data": str(world), "batch_size": 8, "cache_features": 100, "word_steps": 10,
                                   "loop": {"steps": 30, "lr": 1e-2, "warmup_steps": 1, "log_every": 10,
                                            "save_every": 100, "weight_decay": 0.0}})
    records = run_read(model, processor, tok, stage, tmp_path / "read", progress=False)
    assert len(records) == 3
    model.eval()
    with torch.no_grad():
        after = float(read_loss(model, held))
    assert after < 0.7 * before, (before, after)
    assert not torch.equal(llm, model.llm.lm_head.weight)
    now = list(model.florence2.parameters()) + list(model.mm_projector.parameters())
    assert all(torch.equal(a, b) for a, b in zip(frozen, now))
    assert all(p.requires_grad for p in model.mm_projector.parameters()), "the projector is trainable again"

    # read_accuracy's "real tokens" are the model's own teacher-forced answers through its usual image path
    from florence_vl.train.read import ReadBatches, read_accuracy
    from florence_vl.vl.model import IGNORE_INDEX

    batches = ReadBatches(world, processor, tok, model.vision_tower.num_image_tokens, batch_size=1)
    scores = read_accuracy(model, batches, per_type=6, batch_size=4)
    assert set(scores) == set(batches.types) and sum(s["real tokens"] for s in scores.values()) > 0
    rng = random.Random(0)
    for kind in batches.types:
        drawn = rng.sample(batches.every[kind], min(6, len(batches.every[kind])))
        batch = batches.batch(drawn, [0.0] * len(drawn))
        with torch.no_grad():
            spliced = model.splice(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                   pixel_values=batch["pixel_values"])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           pixel_values=batch["pixel_values"]).logits
        labels = spliced["labels"][:, 1:]
        right = ((logits[:, :-1].argmax(-1) == labels) | (labels == IGNORE_INDEX)).all(1)
        assert scores[kind]["real tokens"] == pytest.approx(float(right.float().mean())), kind


def test_recipe_runs_read_after_stage2(tmp_path, world, tiny_florence2_dir, monkeypatch):
    from vl_tiny import quick_recipe, record_loads

    from florence_vl.errors import InputError
    from florence_vl.train.vl import VLRecipe, run

    from florence_vl.train import read

    loaded = record_loads(monkeypatch)
    made = []
    monkeypatch.setattr(read.ReadBatches, "__init__",
                        lambda self, *a, _init=read.ReadBatches.__init__, **k: made.append(k) or _init(self, *a, **k))
    data = quick_recipe(tmp_path / "run", world, tiny_florence2_dir,
                        read={"data": str(world), "word_steps": 1, "turns_per_row": 2})
    final = run(VLRecipe.from_dict(data), progress=False)
    assert [k["turns_per_row"] for k in made] == [2]                                # the recipe's field reaches the rows
    out = tmp_path / "run"
    assert final == out / "read" / "model" and (final / "florence_vl.json").exists()
    assert loaded == [out / "stage1" / "model", out / "stage2" / "model"]       # read starts from stage 2
    assert len((out / "read" / "log.jsonl").read_text().splitlines()) == 2
    from florence_vl.vl.checkpoint import load_florence_vl

    assert load_florence_vl(final).model.config.template == "phi3"

    bad = quick_recipe(tmp_path / "bad", world, tiny_florence2_dir, read={"data": str(tmp_path / "nowhere")})
    with pytest.raises(InputError, match="records.jsonl"):
        run(VLRecipe.from_dict(bad), progress=False)


def test_conjunction_questions_need_both_words_on_one_object():
    from florence_vl.train.read import conjunction_questions

    record = {"objects": [{"color": "red", "class": "circle"}, {"color": "blue", "class": "triangle"},
                          {"color": "red", "class": "circle"}]}
    asked = conjunction_questions(record)
    assert asked["yes"] == ["Is there a blue triangle in the image?", "Is there a red circle in the image?"]
    assert asked["no"] == ["Is there a blue circle in the image?", "Is there a red triangle in the image?"]
    one = conjunction_questions({"objects": [{"color": "orange", "class": "star"}]})
    assert one == {"yes": ["Is there an orange star in the image?"], "no": []}


def test_conjunction_rows_and_type_weights(world, tiny_florence2_dir):
    from florence_vl.errors import InputError
    from florence_vl.train.read import CONJUNCTION, conjunction_questions

    model, tok, processor = _tiny(world, tiny_florence2_dir)
    batches = _batches(model, tok, processor, world, batch_size=4, types=("color", CONJUNCTION),
                       type_weights={CONJUNCTION: 3.0})
    assert batches.types == ["color", CONJUNCTION]
    # every generated row is one of its scene's conjunction questions, with its answer, asked as the world asks
    for index, user, answer in batches.every[CONJUNCTION]:
        question, instruction = user.split("\n")
        assert question in conjunction_questions(batches.records[index])[answer]
        assert instruction == "Answer the question using a single word or phrase."
    assert set(batches.questions[CONJUNCTION]) == {"yes", "no"}
    rng = random.Random(0)
    drawn = [batches._draw(rng) for _ in range(800)]
    conj = [d for d in drawn if d in set(batches.every[CONJUNCTION])]
    assert 0.70 < len(conj) / len(drawn) < 0.80                                          # weight 3 : 1
    assert 0.42 < sum(a == "yes" for _, _, a in conj) / len(conj) < 0.58                 # half yes
    with pytest.raises(InputError, match="type_weights"):
        _batches(model, tok, processor, world, batch_size=4, types=("color",), type_weights={"shape": 2.0})


def test_read_from_continues_a_saved_model_with_the_read_stage_alone(tmp_path, world, tiny_florence2_dir,
                                                                     monkeypatch):
    from vl_tiny import quick_recipe, record_loads

    from florence_vl.errors import InputError
    from florence_vl.train.vl import VLRecipe, run

    first = run(VLRecipe.from_dict(quick_recipe(tmp_path / "first", world, tiny_florence2_dir)), progress=False)
    loaded = record_loads(monkeypatch)
    data = quick_recipe(tmp_path / "more", world, tiny_florence2_dir,
                        read={"data": str(world), "word_steps": 1, "types": ["exist", "conjunction"]})
    data["read_from"] = str(first)
    final = run(VLRecipe.from_dict(data), progress=False)
    out = tmp_path / "more"
    assert final == out / "read" / "model" and (final / "florence_vl.json").exists()
    assert loaded == [first]                                        # nothing else loaded, no other stage run
    assert sorted(p.name for p in out.iterdir()) == ["read"]
    assert run(VLRecipe.from_dict(data), progress=False) == final   # done: not run again
    assert loaded == [first]

    data["read"] = {**data["read"], "loop": {**data["read"]["loop"], "steps": 0}}
    with pytest.raises(InputError, match="read_from"):
        run(VLRecipe.from_dict({**data, "out_dir": str(tmp_path / "none")}), progress=False)


def test_yes_no_auc_reads_the_margin_whatever_the_prior(world, tiny_florence2_dir):
    from florence_vl.errors import InputError
    from florence_vl.train.read import READ_VARIANTS, _auc, yes_no_auc

    assert _auc(torch.tensor([3.0, 2.0, 1.0, 0.0]), torch.tensor([True, True, False, False])) == 1.0
    assert _auc(torch.tensor([1.0, 2.0, 0.0, 3.0]), torch.tensor([True, True, False, False])) == 0.5
    assert _auc(torch.tensor([1.0, 1.0]), torch.tensor([True, False])) == 0.5                # a tie counts half
    # shifting every margin (a prior that says "no" more often) leaves the AUC as it is
    margins, labels = torch.randn(50), torch.rand(50) > 0.5
    assert _auc(margins - 10, labels) == _auc(margins, labels)

    model, tok, processor = _tiny(world, tiny_florence2_dir)
    batches = _batches(model, tok, processor, world, batch_size=4, types=("exist", "color"))
    auc = yes_no_auc(model, batches, "exist", count=12, batch_size=5)
    assert set(auc) == set(READ_VARIANTS) and all(0.0 <= a <= 1.0 for a in auc.values())
    assert auc == yes_no_auc(model, batches, "exist", count=12, batch_size=3)             # chunking changes nothing
    with pytest.raises(InputError, match="yes/no"):
        yes_no_auc(model, batches, "color")


def test_rows_of_several_turns_ask_about_their_own_image(world, tiny_florence2_dir):
    """turns_per_row > 1: each row goes on with more questions about its image (one grid, more answers to learn
    from), every turn's answer a target; the first turn is the single-turn row's."""
    from florence_vl.errors import InputError
    from florence_vl.vl.model import IGNORE_INDEX

    model, tok, processor = _tiny(world, tiny_florence2_dir)
    single = _batches(model, tok, processor, world, batch_size=8, types=("exist", "color"))
    several = _batches(model, tok, processor, world, batch_size=8, types=("exist", "color"), turns_per_row=4)
    one, four = single(3), several(3)
    assert torch.equal(one["name_ids"], four["name_ids"])                 # the same images, drawn the same way
    first = several._draw(random.Random(f"{several.seed}-read-3"))
    more = several._more_turns(first, random.Random(f"{several.seed}-turns-3"))
    assert 1 <= len(more) <= 3
    asked = {user: answer for kind in several.of_record[first[0]].values()
             for answer, users in kind.items() for user in users}
    assert all(asked[user] == answer for user, answer in more)           # questions about the first row's image
    text = tok.decode([i for i in four["input_ids"][0].tolist() if i >= 0])
    assert all(user.split("\n")[0] in text for user, _ in more)
    targets = [tok.decode([i for i in row.tolist() if i != IGNORE_INDEX]) for row in four["labels"]]
    singles = [tok.decode([i for i in row.tolist() if i != IGNORE_INDEX]) for row in one["labels"]]
    assert all(t.startswith(s) and len(t) > len(s) for t, s in zip(targets, singles) if t != s)
    assert sum(len(t) > len(s) for t, s in zip(targets, singles)) >= 6
    with pytest.raises(InputError, match="turns_per_row"):
        _batches(model, tok, processor, world, batch_size=8, turns_per_row=0)
