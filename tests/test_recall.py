"""The associative-recall warm-up (train/recall.py) and the LM stage's grounded questions (train/vl.py)."""

import json

import pytest
import torch

from florence_vl.train.recall import RecallBatches
from florence_vl.vl.model import IGNORE_INDEX


def test_recall_rows_ask_for_the_value_that_followed_the_key():
    batches = RecallBatches(vocab_size=50, bos_id=0, pad_id=2, batch_size=16, pairs=(3, 6), seed=1)
    batch = batches(4)
    assert batch["input_ids"].equal(batches(4)["input_ids"])            # a pure function of the step
    assert not batch["input_ids"].equal(batches(5)["input_ids"])
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        row = ids[mask.bool()].tolist()
        target = labels[labels != IGNORE_INDEX].tolist()
        assert row[0] == 0 and len(target) == 1 and target == [row[-1]]  # one target: the row's last token
        pairs = row[1:-2]
        keys, values = pairs[0::2], pairs[1::2]
        assert 3 <= len(keys) <= 6 and len(set(keys)) == len(keys) and min(pairs) >= 8
        assert values[keys.index(row[-2])] == row[-1]                   # the value stored under the queried key
    with pytest.raises(ValueError):
        RecallBatches(vocab_size=12, bos_id=0, pad_id=2, pairs=(3, 10))


def test_grounded_questions_hold_the_description_and_answer_in_the_template(tmp_path):
    from florence_vl.data.formats import write_split
    from florence_vl.train.vl import GroundedBatches, grounded_questions
    from florence_vl.vl.processor import VLProcessor
    from vl_tiny import llm_tokenizer

    write_split("train", 4, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    by_type = grounded_questions(tmp_path)
    assert sum(map(len, by_type.values())) == sum(len(r["qa"]) for r in records)
    user, answer = by_type["count"][0]
    assert user.startswith(records[0]["captions"]["more_detailed"]) and "\nHow many" in user
    tok = llm_tokenizer()
    batches = GroundedBatches(by_type, VLProcessor(tok, None, "phi3", "pad", max_length=512), batch_size=6)
    batch = batches(0)
    assert batch["input_ids"].equal(batches(0)["input_ids"])
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        text = tok.decode(ids[labels != IGNORE_INDEX])
        assert text.endswith("<|end|>")                                 # answer-only targets, ended
        assert "The image shows" in tok.decode(ids)                     # the description is in the prompt


def test_lm_stage_runs_the_warm_up_then_mixes_recall_and_grounded_questions(tmp_path):
    from florence_vl.data.formats import write_split
    from florence_vl.train.vl import VLRecipe, run

    world = tmp_path / "world"
    write_split("train", 4, world, progress=False)
    quick = {"batch_size": 2, "max_length": 96, "loop": {"steps": 2, "warmup_steps": 1, "log_every": 1,
                                                         "save_every": 100, "lr": 1e-2}}
    recipe = VLRecipe.from_dict({"out_dir": str(tmp_path / "run"), "llm_size": "tiny", "tokenizer_vocab": 400,
                                 "text_data": str(world), "lm": quick,
                                 "grounded_qa": 2, "grounded_types": ["count", "exist"],
                                 "recall": {"steps": 3, "batch_size": 4, "mix_batch_size": 2}})
    run(recipe, progress=False, stages=("lm",))
    warm = [json.loads(line) for line in (tmp_path / "run" / "recall" / "log.jsonl").read_text().splitlines()]
    lm = [json.loads(line) for line in (tmp_path / "run" / "lm" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in warm] == [1, 2, 3] and [r["step"] for r in lm] == [1, 2]
    assert (tmp_path / "run" / "lm" / "model" / "config.json").exists()


def test_mixed_lm_loss_adds_grounded_and_weighted_recall_to_the_text_loss():
    from florence_vl.train.vl import mixed_lm_loss

    class Echo(torch.nn.Module):  # its loss is the batch's first token id, so each part is recognisable
        def forward(self, input_ids, attention_mask, labels):
            return type("Out", (), {"loss": input_ids[0, 0].float()})()

    part = lambda value: {"input_ids": torch.tensor([[value]]), "attention_mask": torch.ones(1, 1),  # noqa: E731
                          "labels": torch.tensor([[value]])}
    loss = mixed_lm_loss(0.3)
    assert loss(Echo(), {"text": part(1)}).item() == 1.0
    assert loss(Echo(), {"text": part(1), "grounded": part(2), "recall": part(10)}).item() == pytest.approx(6.0)


def test_grounded_types_keep_only_those_and_name_the_ones_that_do_not_exist(tmp_path):
    from florence_vl.data.formats import write_split
    from florence_vl.errors import InputError
    from florence_vl.train.vl import grounded_questions

    write_split("train", 4, tmp_path, progress=False)
    everything = grounded_questions(tmp_path)
    kept = grounded_questions(tmp_path, ["color", "count"])
    assert sorted(kept) == ["color", "count"] and kept["count"] == everything["count"]
    bare = grounded_questions(tmp_path, ["count"], description=False)       # the question alone, same answers
    assert [(user.startswith("How many"), answer) for user, answer in bare["count"]] == \
        [(True, answer) for _, answer in everything["count"]]
    with pytest.raises(InputError, match="colour"):
        grounded_questions(tmp_path, ["colour"])


def test_lookup_accuracy_is_exact_match_of_the_answer_tokens_per_type():
    from florence_vl.train.vl import lookup_accuracy
    from florence_vl.vl.processor import VLProcessor
    from vl_tiny import llm_tokenizer

    class Predicts(torch.nn.Module):
        """Next-token logits: the true next token (a model that is always right) or a fixed wrong one."""
        def __init__(self, right: bool, vocab: int):
            super().__init__()
            self.right, self.vocab = right, vocab

        def forward(self, input_ids, attention_mask):
            nxt = input_ids.roll(-1, dims=1) if self.right else torch.full_like(input_ids, 5)
            return type("Out", (), {"logits": torch.nn.functional.one_hot(nxt, self.vocab).float()})()

    tok = llm_tokenizer()
    processor = VLProcessor(tok, None, "phi3", "pad", max_length=256)
    by_type = {"color": [("A red circle.\nWhat color is the circle?", "red")] * 5,
               "count": [("Two shapes.\nHow many shapes are there?", "2")] * 3}
    right = Predicts(True, len(tok)).train()
    assert lookup_accuracy(right, processor, by_type, per_type=4, batch_size=3) == {"color": 1.0, "count": 1.0}
    assert right.training                                               # left as it was found
    assert lookup_accuracy(Predicts(False, len(tok)), processor, by_type) == {"color": 0.0, "count": 0.0}
