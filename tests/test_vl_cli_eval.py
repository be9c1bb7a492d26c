"""florence-vl chat / eval vl on a tiny Florence-VL checkpoint and a tiny generated split; mistakes are one line."""

import io
import json

import pytest

from florence_vl.cli import main
from vl_tiny import tiny_vl


@pytest.fixture(scope="module")
def checkpoint(tiny_florence2, tmp_path_factory):
    out = tmp_path_factory.mktemp("vl") / "ckpt"
    tiny_vl(tiny_florence2).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from florence_vl.data.formats import write_split

    out = tmp_path_factory.mktemp("test-split")
    write_split("test", 2, out, progress=False)
    return out


def test_eval_vl_metrics_and_table(checkpoint, split, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["eval", "vl", "--data", str(split), "--model", str(checkpoint), "--out", str(out),
                 "--max-new-tokens", "3"]) == 0
    table = capsys.readouterr().out
    assert "VQA accuracy (all)" in table and "POPE random f1" in table
    result = json.loads(out.read_text())
    assert result["images"] == 2 and result["questions"] > 0
    assert 0.0 <= result["vqa_accuracy"] <= 1.0
    assert set(result["pope"]) <= {"random", "popular", "adversarial"}
    assert all(0 <= m["yes_ratio"] <= 1 for m in result["pope"].values())


def test_eval_metrics_on_known_answers(split):
    from florence_vl.data.formats import read_records
    from florence_vl.eval.vl_eval import evaluate_vl

    truth = {}
    for record in read_records(split):
        for qa in record["qa"]:
            truth[(record["image"], qa["question"])] = qa["answer"]

    class Oracle:  # answers every question right
        def ask_many(self, image, prompts, **_):
            name = "images/" + image.name
            return [truth[(name, p.split("\n" + p.split("\n")[-1])[0])] for p in prompts]

    result = evaluate_vl(Oracle(), split, progress=False)
    assert result["vqa_accuracy"] == 1.0
    assert all(m["f1"] == 1.0 or m["n"] == 0 for m in result["pope"].values())
    for key in ("text_reading_exact_match", "chart_relaxed_accuracy", "multiple_choice_accuracy"):
        assert result[key]["value"] in (1.0, None)


def test_a_model_that_gives_the_majority_answer_scores_the_majority_baseline(split):
    from florence_vl.data.formats import read_records
    from florence_vl.eval.vl_eval import evaluate_vl, majority_answers, report_table

    majority = majority_answers(60)
    assert majority["exist"] in ("yes", "no") and majority["count"].isdigit()
    types = {}
    for record in read_records(split):
        for qa in record["qa"]:
            types[(record["image"], qa["question"])] = qa["type"]

    class Prior:  # answers from the question's type alone
        def ask_many(self, image, prompts, **_):
            name = "images/" + image.name
            return [majority.get(types[(name, p.split("\n" + p.split("\n")[-1])[0])], "") for p in prompts]

    result = evaluate_vl(Prior(), split, progress=False, baseline_train_scenes=60)
    baseline = result["majority_baseline"]
    assert baseline["answers"] == majority and 0 < baseline["vqa_accuracy"] < 1
    assert result["vqa_accuracy"] == baseline["vqa_accuracy"]
    assert {t: v["accuracy"] for t, v in result["vqa_by_type"].items()} == baseline["by_type"]
    assert "majority answer per type" in report_table(result)
    assert "majority_baseline" not in evaluate_vl(Prior(), split, progress=False, baseline_train_scenes=0)


def test_chat_cli(checkpoint, split, capsys, monkeypatch):
    image = str(split / "images" / "000000.png")
    assert main(["chat", image, "How many shapes are there?", "--model", str(checkpoint),
                 "--max-new-tokens", "4"]) == 0
    answer = capsys.readouterr().out.strip()
    assert main(["chat", image, "How many shapes are there?", "--model", str(checkpoint), "--max-new-tokens", "4",
                 "--stream"]) == 0
    assert capsys.readouterr().out.strip() == answer
    monkeypatch.setattr("sys.stdin", io.StringIO("How many shapes are there?\nWhat color is it?\n\n"))
    assert main(["chat", image, "--model", str(checkpoint), "--max-new-tokens", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0] == answer


def test_chat_cli_says_when_the_answer_is_empty(checkpoint, split, capsys, monkeypatch):
    from florence_vl.vl.chat import FlorenceVL
    from florence_vl.vl.commands import EMPTY_ANSWER_NOTE

    image = str(split / "images" / "000000.png")
    monkeypatch.setattr(FlorenceVL, "chat", lambda self, *a, stream=False, **k: iter([""]) if stream else "")
    for extra in ([], ["--stream"]):
        assert main(["chat", image, "How many?", "--model", str(checkpoint)] + extra) == 0
        captured = capsys.readouterr()
        assert captured.out == "\n" and EMPTY_ANSWER_NOTE in captured.err
    monkeypatch.setattr(FlorenceVL, "chat", lambda self, *a, stream=False, **k: iter(["3"]) if stream else "3")
    assert main(["chat", image, "How many?", "--model", str(checkpoint)]) == 0
    assert EMPTY_ANSWER_NOTE not in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["chat", "missing.png", "hi"], "missing.png"),
    (["chat", "IMAGE", "hi", "--model", "/nowhere/ckpt"], "does not exist"),
    (["chat", "IMAGE", "   ", "--model", "CKPT"], "empty"),
    (["eval", "vl", "--model", "CKPT"], "--data"),
    (["eval", "vl", "--data", "/nowhere", "--model", "CKPT"], "not a generated split"),
])
def test_mistakes_are_one_line(argv, message, checkpoint, split, capsys):
    image = str(split / "images" / "000000.png")
    argv = [image if a == "IMAGE" else str(checkpoint) if a == "CKPT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
