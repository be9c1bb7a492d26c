"""`florence-vl predict --input questions.jsonl`: Florence-VL answers as a batch job, resumable, bad input counted."""

import json
from pathlib import Path

import pytest
from PIL import Image

from florence_vl import cli
from vl_tiny import tiny_vl

FAST = ["--max-new-tokens", "8", "--batch-size", "2"]


class Counting:
    """The tiny Florence-VL, counting the questions it is asked; can be told to die after N batches."""

    def __init__(self, vl):
        self.vl, self.asked, self.batches, self.die_after = vl, [], 0, None

    def answer(self, images, questions, **options):
        if self.die_after is not None and self.batches >= self.die_after:
            raise KeyboardInterrupt  # the job is killed mid-run
        self.batches += 1
        self.asked += list(questions)
        return self.vl.answer(images, questions, **options)


@pytest.fixture(scope="module")
def vl(tiny_florence2):
    return tiny_vl(tiny_florence2)


@pytest.fixture
def model(vl, monkeypatch):
    counting = Counting(vl)
    monkeypatch.setattr(cli, "_load_florence_vl", lambda args, source: counting)
    return counting


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40 + 8 * i, 36), (60 * i, 120, 200)).save(root / f"img{i}.png")
    Image.new("RGB", (30, 50), (200, 20, 20)).save(root / "sub" / "deep.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines = [{"id": "q1", "image": "img0.png", "question": "How many shapes are there?"},
             {"id": 2, "image": "img1.png", "question": "What color is the star?"},
             {"id": "q3", "image": "broken.png", "question": "Is there a cross?"},          # a bad image
             {"id": "q4", "image": "sub/deep.png", "question": "Describe the image in detail."},
             {"id": "q1", "image": "img2.png", "question": "A repeated id."},               # a repeated id
             {"id": "q5", "image": str(root / "img2.png"), "question": "Is there a red circle?"},  # absolute path
             {"id": "q6", "image": "missing.png", "question": "Where is it?"}]               # a missing image
    text = "\n".join(json.dumps(line) for line in lines)
    text += '\n{"id": "q7", "image": \n[1, 2]\n{"id": "q8", "question": "no image"}\n\n'  # 3 bad lines, a blank one
    questions = tmp_path / "questions.jsonl"
    questions.write_text(text)
    return questions, root


def predict(questions, root, out, *extra):
    return cli.main(["predict", "--input", str(questions), "--image-root", str(root), "--out", str(out),
                     *FAST, *extra])


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_answers_equal_florence_vl_and_bad_input_is_counted(model, data, vl, tmp_path, capsys):
    questions, root = data
    out = tmp_path / "answers.jsonl"
    assert predict(questions, root, out) == 0
    err = capsys.readouterr().err
    records = lines(out)
    assert [r["id"] for r in records] == ["q1", 2, "q4", "q5"]
    pairs = [(root / "img0.png", "How many shapes are there?"), (root / "img1.png", "What color is the star?"),
             (root / "sub" / "deep.png", "Describe the image in detail."), (root / "img2.png", "Is there a red circle?")]
    want = [vl.answer([image], [question], max_new_tokens=8)[0] for image, question in pairs]
    assert [r["answer"] for r in records] == want  # batched (2 at a time) = one at a time
    assert model.batches == 2 and "Is there a cross?" not in model.asked
    assert "broken.png" in err and "missing.png" in err and "id 'q1' was already given" in err
    assert "line 8: skipped" in err and "line 9: skipped" in err and "line 10: skipped" in err
    assert "wrote " + str(out) + ": 4 answers (0 from before); skipped 2 question(s) with an unusable image; " \
        "3 bad line(s); 1 repeated id(s)" in err


def test_rerun_skips_answered_ids_and_a_torn_line_is_redone(model, data, tmp_path, capsys):
    questions, root = data
    out = tmp_path / "answers.jsonl"
    assert predict(questions, root, out) == 0
    whole = out.read_text()
    model.asked.clear()
    assert predict(questions, root, out) == 0
    assert out.read_text() == whole and model.asked == []  # nothing ran again
    kept = whole.splitlines(keepends=True)
    out.write_text("".join(kept[:2]) + kept[2][: len(kept[2]) // 2])  # killed while writing the third answer
    capsys.readouterr()
    assert predict(questions, root, out) == 0
    assert out.read_text() == whole and model.asked == ["Describe the image in detail.", "Is there a red circle?"]
    assert "resuming: 2 of 6 questions already answered" in capsys.readouterr().err


def test_an_interrupted_job_resumes_to_the_same_answers(model, data, tmp_path):
    questions, root = data
    whole = tmp_path / "whole.jsonl"
    assert predict(questions, root, whole) == 0
    out = tmp_path / "resumed.jsonl"
    model.asked.clear()
    model.die_after = model.batches + 1  # killed during its second batch
    assert predict(questions, root, out) == 130
    assert len(lines(out)) == 2
    model.die_after = None
    assert predict(questions, root, out) == 0
    assert out.read_text() == whole.read_text()
    assert model.asked == ["How many shapes are there?", "What color is the star?", "Describe the image in detail.",
                           "Is there a red circle?"]  # each question once


@pytest.mark.parametrize("extra,words", [
    (["--task", "OD"], "--task goes with Florence-2 tasks"),
    (["--format", "coco"], "written as jsonl"),
    (["--batch-size", "0"], "at least 1"),
])
def test_mistakes_are_one_line_and_exit_2(model, data, tmp_path, capsys, extra, words):
    questions, root = data
    assert predict(questions, root, tmp_path / "a.jsonl", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("florence-vl predict: error:") and words in err[-1] and model.batches == 0


def test_unusable_inputs_and_outputs_are_refused(model, data, tmp_path, capsys):
    questions, root = data

    def last_error(*argv):
        assert cli.main(["predict", *argv]) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "is not a file" in last_error("--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "a"))
    assert "is not a directory" in last_error("--input", str(questions), "--image-root", str(tmp_path / "no"),
                                              "--out", str(tmp_path / "a"))
    junk = tmp_path / "junk.jsonl"
    junk.write_text("hello\n[]\n")
    assert "no usable question (2 bad line(s))" in last_error("--input", str(junk), "--out", str(tmp_path / "a"))
    bad_only = tmp_path / "bad_only.jsonl"
    bad_only.write_text(json.dumps({"id": 1, "image": "broken.png", "question": "?"}) + "\n")
    assert "has a usable image" in last_error("--input", str(bad_only), "--image-root", str(root),
                                              "--out", str(tmp_path / "a"))
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my notes\nmore notes\n")
    assert "not a results journal" in last_error("--input", str(questions), "--image-root", str(root),
                                                 "--out", str(notes))
    assert "needs --task and --images" in last_error("--out", str(tmp_path / "a"))
    assert model.batches == 0 and notes.read_text() == "my notes\nmore notes\n"


def test_image_root_defaults_to_the_input_folder(model, data, tmp_path):
    questions, root = data
    local = root / "questions.jsonl"
    local.write_text(json.dumps({"id": "a", "image": "img0.png", "question": "How many shapes are there?"}) + "\n")
    out = tmp_path / "local.jsonl"
    assert cli.main(["predict", "--input", str(local), "--out", str(out), *FAST]) == 0
    assert [r["id"] for r in lines(out)] == ["a"]
