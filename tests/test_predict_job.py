"""`florence-vl predict` as a batch job: batched, resumable, bad images skipped and counted, not fatal."""

import json
from pathlib import Path

import pytest
from PIL import Image

from florence_vl import cli

FAST = ["--beams", "1", "--max-new-tokens", "10", "--batch-size", "2"]


class Counting:
    """The tiny model, counting the images it is asked to run; can be told to die after N batches."""

    def __init__(self, florence):
        self.florence, self.images, self.batches, self.die_after = florence, [], 0, None

    def run_requests(self, requests, **options):
        if self.die_after is not None and self.batches >= self.die_after:
            raise KeyboardInterrupt  # the job is killed mid-run
        self.batches += 1
        self.images += [Path(r.image).name for r in requests]
        return self.florence.run_requests(requests, **options)


@pytest.fixture
def model(tiny_florence2, monkeypatch):
    counting = Counting(tiny_florence2)
    monkeypatch.setattr(cli, "_load_florence2", lambda args: counting)
    return counting


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(5):
        Image.new("RGB", (40 + 8 * i, 36), (40 * i, 120, 200)).save(root / f"img{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # one bad image among them
    return root


def predict(folder, out, *extra):
    return cli.main(["predict", "--task", "OD", "--images", str(folder), "--out", str(out), *FAST, *extra])


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_jsonl_job_skips_the_bad_image_and_says_so(model, folder, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    assert predict(folder, out, "--format", "jsonl") == 0
    err = capsys.readouterr().err
    records = lines(out)
    assert [Path(r["image"]).name for r in records] == [f"img{i}.png" for i in range(5)]
    assert all(r["task"] == "<OD>" and "<OD>" in r["result"] for r in records)
    assert "skipped " in err and "broken.png" in err and "skipped 1 unusable image" in err
    assert model.batches == 3 and "broken.png" not in model.images  # batches of 2: the bad one never ran


def test_rerun_skips_finished_images_and_runs_only_new_ones(model, folder, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    assert predict(folder, out, "--format", "jsonl") == 0
    first = out.read_text()
    model.images.clear()
    assert predict(folder, out, "--format", "jsonl") == 0
    assert out.read_text() == first and model.images == []  # nothing ran again
    Image.new("RGB", (30, 30)).save(folder / "img9.png")
    assert predict(folder, out, "--format", "jsonl") == 0
    assert model.images == ["img9.png"] and len(lines(out)) == 6
    assert "resuming: 5 of 7 images" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["json", "coco"])
def test_an_interrupted_job_resumes_to_the_same_output(model, folder, tmp_path, fmt):
    whole = tmp_path / f"whole.{fmt}.json"
    assert predict(folder, whole, "--format", fmt) == 0
    model.images.clear()
    out = tmp_path / f"resumed.{fmt}.json"
    model.die_after = model.batches + 1  # killed during its second batch
    assert predict(folder, out, "--format", fmt) == 130
    journal = Path(str(out) + ".results.jsonl")
    assert not out.exists() and len(lines(journal)) == 2
    with open(journal, "a") as f:
        f.write('{"image": "half a li')  # the kill tore the last line
    model.die_after = None
    assert predict(folder, out, "--format", fmt) == 0
    assert model.images == ["img0.png", "img1.png", "img2.png", "img3.png", "img4.png"]  # 0-1 once only
    assert json.loads(out.read_text()) == json.loads(whole.read_text())
    assert len(lines(journal)) == 5


def test_every_image_bad_is_one_line_and_exit_2(model, tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.png").write_text("no")
    (root / "b.jpg").write_bytes(b"")
    assert predict(root, tmp_path / "p.jsonl", "--format", "jsonl") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("florence-vl predict: error: none of the 2 images") and model.batches == 0


def test_an_output_of_another_task_is_not_mixed_in(model, folder, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert predict(folder, out, "--format", "jsonl") == 0
    code = cli.main(["predict", "--task", "CAPTION", "--images", str(folder), "--out", str(out), "--format",
                     "jsonl", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "holds results of <OD>, not <CAPTION>" in err[-1]
    (tmp_path / "notes.jsonl").write_text("hello\nworld\n")
    assert predict(folder, tmp_path / "notes.jsonl", "--format", "jsonl") == 2
    assert "not a results journal" in capsys.readouterr().err
