"""Issue 7, bad samples in a data set: the evaluation reads a split with broken lines and images, skips and
counts them, and scores the rest exactly as if the broken ones had never been there."""

from __future__ import annotations

import json
import shutil

import pytest

from florence_vl.errors import InputError
from florence_vl.eval.florence2_eval import evaluate_florence2, oracle_predictor, report_table

N = 6


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """A clean split, and a copy with 2 bad images and 4 bad lines (the clean one minus images 1 and 4)."""
    from florence_vl.data.formats import write_split

    root = tmp_path_factory.mktemp("reliability_data")
    clean = root / "clean"
    write_split("test", N, clean, seed=3, progress=False)
    damaged = root / "damaged"
    shutil.copytree(clean, damaged)
    png = damaged / "images" / "000001.png"
    png.write_bytes(png.read_bytes()[:200])                   # truncated
    (damaged / "images" / "000004.png").unlink()              # missing
    lines = (damaged / "records.jsonl").read_text().splitlines()
    lines.insert(2, '{"image": "images/000002.png", "image_id": ')                  # torn line
    lines.insert(4, "[1, 2, 3]")                                                      # not a record
    lines.insert(5, json.dumps({"image": "images/000003.png", "image_id": "three"}))  # wrong fields
    lines.append(lines[0])                                                            # a repeated image id
    (damaged / "records.jsonl").write_text("\n".join(lines) + "\n")
    # the reference: the same split without images 1 and 4
    reference = root / "reference"
    shutil.copytree(clean, reference)
    kept = [line for line in (clean / "records.jsonl").read_text().splitlines()
            if json.loads(line)["image_id"] not in (1, 4)]
    (reference / "records.jsonl").write_text("\n".join(kept) + "\n")
    return clean, damaged, reference


def _evaluate(folder):
    return evaluate_florence2(None, folder, predict=oracle_predictor(folder), baseline_train_scenes=0,
                              progress=False, caption_tasks=())


def _metrics(result):
    return {k: result[k] for k in ("od", "rec", "res", "ocr")}


def test_bad_samples_are_skipped_counted_and_named(splits):
    clean, damaged, reference = splits
    result = _evaluate(damaged)
    assert result["n_images"] == N - 2
    skipped = result["skipped"]
    assert skipped["n"] == 6
    reasons = " | ".join(s["reason"] for s in skipped["samples"])
    assert "bad JSON" in reasons and "not a JSON object" in reasons and "'image_id'" in reasons
    assert "repeats an earlier record" in reasons and "image not found" in reasons and "cannot read image" in reasons
    assert {s["image"] for s in skipped["samples"]} >= {"images/000001.png", "images/000004.png"}
    assert _metrics(result) == _metrics(_evaluate(reference))  # as if the bad samples had never been there
    assert "6 unusable samples skipped" in report_table(result)
    assert _evaluate(clean)["skipped"] == {"n": 0, "samples": []}


def test_limit_counts_usable_records(splits):
    _, damaged, _ = splits
    result = evaluate_florence2(None, damaged, predict=oracle_predictor(damaged), baseline_train_scenes=0,
                                progress=False, caption_tasks=(), limit=2)
    assert result["n_images"] == 2


def test_nothing_usable_is_one_clear_error(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "records.jsonl").write_text("not json\n{}\n")
    with pytest.raises(InputError, match="no usable images .2 unusable lines, first: bad JSON"):
        evaluate_florence2(None, broken, predict=lambda requests: [], progress=False)
