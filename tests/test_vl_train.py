"""Florence-VL training: LLaVA data (lazy), grouping, collator; LM pretraining, stage 1 reaches Florence-2,
stage 2 leaves it frozen; the recipe runs end to end on a tiny world split."""

import json

import pytest
import torch

from florence_vl.data.llava import LazyLLaVADataset, StepBatches, grouped_order, turns_of
from florence_vl.vl.model import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def test_turns_and_grouping():
    assert turns_of([{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
                     {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]) == [("q1", "a1"), ("q2", "a2")]
    lengths = [5, 30, -4, 7, 29, -8, 6, 31]
    order = grouped_order(lengths, batch_size=2, seed=0, epoch=0, group=4)
    assert sorted(order) == list(range(8))
    batches = [order[i:i + 2] for i in range(0, 8, 2)]
    for batch in batches:  # one modality per batch
        assert len({lengths[i] >= 0 for i in batch}) == 1
    assert order == grouped_order(lengths, 2, 0, 0, 4) and order != grouped_order(lengths, 2, 0, 1, 4)


def test_lazy_dataset_and_collator(world, tiny_florence2):
    from florence_vl.vl.processor import VLProcessor
    from vl_tiny import llm_tokenizer

    tok = llm_tokenizer()
    proc = VLProcessor(tok, tiny_florence2.image_processor, "phi3")
    data = LazyLLaVADataset(world / "llava_instruct.json", proc)
    assert len(data) >= 6 and all(n > 0 for n in data.lengths)
    batches = StepBatches(data, batch_size=3, seed=0)
    batch = batches(0)
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    assert (batch["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 3
    assert ((batch["labels"] != IGNORE_INDEX) & (batch["attention_mask"] == 0)).sum() == 0
    assert batches(0)["input_ids"].equal(batch["input_ids"])  # a pure function of the step
    halves = [StepBatches(data, 4, seed=0, rank=r, world_size=2).indices(1) for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(StepBatches(data, 4, seed=0).indices(1))


def _recipe(tmp_path, world, florence2_dir, **stages):
    from florence_vl.train.vl import VLRecipe

    quick = {"batch_size": 2, "max_length": 160, "loop": {"steps": 2, "warmup_steps": 1, "log_every": 1,
                                                          "save_every": 100, "lr": 1e-2}}
    data = {"out_dir": str(tmp_path / "run"), "florence2": str(florence2_dir), "llm_size": "tiny",
            "tokenizer_vocab": 400, "lm": quick,
            "stage1": dict(quick, data=str(world / "llava_pretrain.json")),
            "stage2": dict(quick, data=str(world / "llava_instruct.json"))}
    data.update(stages)
    return VLRecipe.from_dict(data)


def test_stage1_reaches_florence2_and_stage2_freezes_it(tmp_path, world, tiny_florence2_dir):
    from florence_vl.florence2.checkpoint import load_florence2
    from florence_vl.train.vl import build_vl, run_stage1, run_stage2, world_texts, build_tokenizer
    from florence_vl.vl.nano_llm import build_llm
    from florence_vl.vl.processor import VLProcessor

    recipe = _recipe(tmp_path, world, tiny_florence2_dir)
    tok = build_tokenizer(recipe, world_texts(world))
    vision = load_florence2(tiny_florence2_dir)
    model = build_vl(recipe, build_llm(tok, "tiny"), vision, "plain")
    davit = model.florence2.model.vision_tower.convs[0].conv.weight
    encoder = model.florence2.model.language_model.encoder.layers[0].fc1.weight
    before = [davit.detach().clone(), encoder.detach().clone(), model.mm_projector.encoder_mlp[0].weight.detach().clone()]
    processor = VLProcessor(tok, vision.image_processor, "plain")
    records = run_stage1(model, processor, recipe.stage1, tmp_path / "s1", progress=False)
    assert len(records) == 2 and all(r["loss"] == r["loss"] for r in records)
    assert not torch.equal(davit, before[0]), "stage 1 must train DaViT"
    assert not torch.equal(encoder, before[1]), "stage 1 must train the Florence-2 encoder"
    frozen = [p.detach().clone() for p in model.florence2.parameters()]
    projector = model.mm_projector.encoder_mlp[0].weight.detach().clone()
    run_stage2(model, VLProcessor(tok, vision.image_processor, "phi3"), recipe.stage2, tmp_path / "s2", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.florence2.parameters()))
    assert not torch.equal(projector, model.mm_projector.encoder_mlp[0].weight)
    assert not model.florence2.training


def test_recipe_end_to_end(tmp_path, world, tiny_florence2_dir):
    from florence_vl.train.vl import run
    from florence_vl.vl.chat import FlorenceVL

    final = run(_recipe(tmp_path, world, tiny_florence2_dir), progress=False)
    assert (final / "florence_vl.json").exists()
    assert json.loads((final / "florence_vl.json").read_text())["vl"]["template"] == "phi3"
    vl = FlorenceVL.from_pretrained(final)
    assert isinstance(vl.chat(world / "images" / "000000.png", "How many shapes are there?", max_new_tokens=3), str)
    logs = [json.loads(line) for line in (tmp_path / "run" / "lm" / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 2


def test_stage2_feature_cache_runs_each_image_once_and_changes_nothing(tmp_path, world, tiny_florence2_dir):
    """With Florence-2 frozen, `cache_features` keeps each image's features: the logged losses equal those of the
    uncached run, DaViT sees each distinct image once, and the cache is dropped when the stage ends."""
    from florence_vl.florence2.checkpoint import load_florence2
    from florence_vl.train.vl import StageConfig, build_tokenizer, build_vl, run_stage2, world_texts
    from florence_vl.vl.nano_llm import build_llm
    from florence_vl.vl.processor import VLProcessor

    recipe = _recipe(tmp_path, world, tiny_florence2_dir)
    tok = build_tokenizer(recipe, world_texts(world))
    runs = {}
    for cached in (0, 100):
        torch.manual_seed(0)
        vision = load_florence2(tiny_florence2_dir)
        model = build_vl(recipe, build_llm(tok, "tiny"), vision, "phi3")
        images_seen = []
        model.florence2.model.vision_tower.register_forward_hook(lambda m, args, out: images_seen.append(args[0].shape[0]))
        stage = StageConfig.from_dict({"data": str(world / "llava_instruct.json"), "batch_size": 4,
                                       "max_length": 160, "cache_features": cached,
                                       "loop": {"steps": 6, "warmup_steps": 1, "log_every": 1, "save_every": 100,
                                                "lr": 1e-2}})
        records = run_stage2(model, VLProcessor(tok, vision.image_processor, "phi3"), stage, tmp_path / f"s2-{cached}",
                             progress=False)
        runs[cached] = ([r["loss"] for r in records], sum(images_seen))
        assert model.frozen_feature_cache is None
    (plain_losses, plain_images), (cached_losses, cached_images) = runs[0], runs[100]
    assert cached_losses == pytest.approx(plain_losses, rel=1e-5)
    assert plain_images == 6 * 4
    assert cached_images <= 6, "each of the 6 images at most once"
    assert cached_images < plain_images


def test_with_lookup_loss_adds_the_llm_only_parts_to_the_image_loss():
    from florence_vl.train.vl import with_lookup_loss

    class Echo(torch.nn.Module):  # its loss is the batch's first token id, so each part is recognisable
        def forward(self, input_ids, attention_mask, labels, **image):
            return type("Out", (), {"loss": input_ids[0, 0].float()})()

    class VL(Echo):
        llm = Echo()

    part = lambda value: {"input_ids": torch.tensor([[value]]), "attention_mask": torch.ones(1, 1),  # noqa: E731
                          "labels": torch.tensor([[value]])}
    loss = with_lookup_loss(0.5)
    assert loss(VL(), {"vl": dict(part(1), pixel_values=None)}).item() == 1.0
    both = {"vl": dict(part(1), pixel_values=None), "grounded": part(2), "recall": part(10)}
    assert loss(VL(), both).item() == pytest.approx(8.0)


def test_image_stages_keep_the_lookup_when_asked(tmp_path, world, tiny_florence2_dir, monkeypatch):
    from florence_vl.errors import InputError
    from florence_vl.train.vl import build_tokenizer, run, stage_lookup, world_texts

    quick = {"batch_size": 2, "max_length": 160, "grounded_qa": 2, "recall_rows": 3,
             "loop": {"steps": 2, "warmup_steps": 1, "log_every": 1, "save_every": 100, "lr": 1e-2}}
    recipe = _recipe(tmp_path, world, tiny_florence2_dir, grounded_types=["count"],
                     stage1=dict(quick, data=str(world / "llava_pretrain.json")),
                     stage2=dict(quick, data=str(world / "llava_instruct.json")))
    tok = build_tokenizer(recipe, world_texts(world))
    grounded, recall, weight = stage_lookup(recipe, "stage2", tok, world)
    assert grounded(0)["input_ids"].shape[0] == 2 and recall(0)["input_ids"].shape[0] == 3
    assert weight == recipe.recall.weight
    assert stage_lookup(_recipe(tmp_path, world, tiny_florence2_dir), "stage1", tok, world) is None
    final = run(recipe, progress=False)
    assert (final / "florence_vl.json").exists()

    def log(root, stage):
        return [json.loads(line) for line in (root / "run" / stage / "log.jsonl").read_text().splitlines()]

    assert [r["step"] for r in log(tmp_path, "stage1")] == [1, 2] == [r["step"] for r in log(tmp_path, "stage2")]
    run(_recipe(tmp_path / "plain", world, tiny_florence2_dir), progress=False)   # the same recipe, no lookup parts
    assert log(tmp_path, "stage1")[0]["loss"] > log(tmp_path / "plain", "stage1")[0]["loss"]  # the parts add to it
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="one process"):
        stage_lookup(recipe, "stage1", tok, world)
