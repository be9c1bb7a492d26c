"""evaluate_florence2 on a small written split: an oracle scores ~perfectly, a wrong predictor badly, and a
tiny random model runs end to end."""

import dataclasses
import json
import math

import pytest

from florence_vl.data.formats import read_records, write_split
from florence_vl.errors import InputError
from florence_vl.eval.florence2_eval import (METRIC_NAMES, evaluate_florence2, oracle_predictor, report_table,
                                             write_report)

N_IMAGES = 12
BASELINE_SCENES = 60  # fewer train scenes than the default 500, to keep the tests fast


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("florence2_eval") / "test"
    write_split("test", N_IMAGES, out, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def oracle_result(split_dir):
    return evaluate_florence2(None, split_dir, predict=oracle_predictor(split_dir),
                              baseline_train_scenes=BASELINE_SCENES, progress=False)


def _shift(value, dx):
    """Shift every x coordinate (even positions) of nested box / polygon / quad lists by dx."""
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return [v + dx if i % 2 == 0 else v for i, v in enumerate(value)]
    if isinstance(value, list):
        return [_shift(v, dx) for v in value]
    return value


def _wrong(split_dir):
    """The oracle with every box and polygon moved right by half the image width."""
    oracle = oracle_predictor(split_dir)

    def wrong(requests):
        out = []
        for r in oracle(requests):
            output = r.output
            if isinstance(output, dict):
                dx = r.image_size[0] / 2
                output = {k: _shift(v, dx) if k in ("bboxes", "polygons", "quad_boxes") else v
                          for k, v in output.items()}
            out.append(dataclasses.replace(r, output=output))
        return out

    return wrong


def _numbers(result):
    """The metric values of a result: (name, value) for every non-None score."""
    out = [("od." + k, result["od"][k]) for k in ("mAP", "mAP50", "mAP75")]
    out += [("rec.acc@0.5", result["rec"]["acc@0.5"]), ("res.mIoU", result["res"]["mIoU"]),
            ("res.oIoU", result["res"]["oIoU"])]
    out += [("ocr." + k, result["ocr"][k]) for k in ("exact_match", "word_exact_match", "region_word_recall")]
    for level in ("brief", "detailed"):
        for which in ("model", "most_common_caption"):
            out += [(f"{level}.{which}.BLEU-{n}", result["caption"][level][which][f"BLEU-{n}"]) for n in range(1, 5)]
    return [(k, v) for k, v in out if v is not None and not (isinstance(v, float) and math.isnan(v))]


def test_oracle_scores_near_perfect(oracle_result, split_dir):
    r = oracle_result
    assert r["split"] == "test" and r["n_images"] == N_IMAGES and r["model"] == "oracle"
    assert set(r) >= {"od", "rec", "res", "ocr", "caption", "n_images", "split"}
    # OD: coordinates are quantised to 1 of 1000 bins, so the strict IoUs may lose a little
    assert r["od"]["mAP50"] >= 0.99
    assert 0.8 <= r["od"]["mAP"] <= 1.0
    assert r["od"]["n_predictions"] == r["od"]["n_gt"] > 0 and r["od"]["skipped_labels"] == 0
    # REC / RES: at most 2 expressions per image, said in the result
    records = read_records(split_dir)
    with_objects = [rec for rec in records if rec["objects"]]
    assert r["rec"]["max_expressions_per_image"] == 2
    assert r["rec"]["n"] == sum(min(2, len(rec["objects"])) for rec in with_objects)
    assert r["rec"]["n_expressions_total"] == sum(len(rec["objects"]) for rec in records) >= r["rec"]["n"]
    assert r["rec"]["acc@0.5"] == 1.0 and r["rec"]["no_prediction"] == 0
    assert r["res"]["mIoU"] > 0.9 and r["res"]["oIoU"] > 0.9
    # OCR on every image with text
    assert r["ocr"]["n"] == sum(1 for rec in records if rec["texts"]) > 0
    assert r["ocr"]["exact_match"] == 1.0 and r["ocr"]["word_exact_match"] == 1.0
    assert r["ocr"]["cer"] == 0.0 and r["ocr"]["region_word_recall"] == 1.0
    # captions: the references themselves beat the most common training caption by far
    for level in ("brief", "detailed"):
        entry = r["caption"][level]
        assert entry["model"]["BLEU-4"] == pytest.approx(1.0)
        assert entry["model"]["CIDEr"] > 5.0
        assert entry["model"]["CIDEr"] > entry["most_common_caption"]["CIDEr"]
        assert entry["most_common_caption"]["caption"] and entry["most_common_caption"]["count"] >= 1
    assert r["caption"]["baseline_train_scenes"] == BASELINE_SCENES


def test_wrong_boxes_score_low(split_dir):
    r = evaluate_florence2(None, split_dir, predict=_wrong(split_dir), baseline_train_scenes=0, progress=False,
                           caption_tasks=())
    assert r["od"]["mAP50"] < 0.2 and r["od"]["mAP"] < 0.2
    assert r["rec"]["acc@0.5"] < 0.5
    assert r["res"]["mIoU"] < 0.5
    assert r["ocr"]["exact_match"] == 1.0  # text answers untouched
    assert "brief" not in r["caption"]


def test_ocr_reading_order_matters_for_exact_match_only(split_dir):
    oracle = oracle_predictor(split_dir)

    def reversed_ocr(requests):
        return [dataclasses.replace(r, output=" ".join(reversed(r.output.split()))) if r.task == "<OCR>" else r
                for r in oracle(requests)]

    records = read_records(split_dir)
    multi_word = sum(1 for rec in records if len(" ".join(t["text"] for t in rec["texts"]).split()) > 1)
    assert multi_word > 0
    r = evaluate_florence2(None, split_dir, predict=reversed_ocr, baseline_train_scenes=0, caption_tasks=(),
                           progress=False)
    assert r["ocr"]["exact_match"] < 1.0
    assert r["ocr"]["word_exact_match"] == 1.0


def test_limit_and_expression_cap(split_dir):
    r = evaluate_florence2(None, split_dir, predict=oracle_predictor(split_dir), limit=4,
                           max_expressions_per_image=1, baseline_train_scenes=0, caption_tasks=("<CAPTION>",),
                           progress=False)
    records = read_records(split_dir)[:4]
    assert r["n_images"] == 4 and r["od"]["n_images"] == 4
    assert r["od"]["n_gt"] == sum(len(rec["objects"]) for rec in records)
    assert r["rec"]["n"] == sum(1 for rec in records if rec["objects"])
    assert r["caption"]["brief"]["most_common_caption"] is None and "detailed" not in r["caption"]


def test_bad_inputs(split_dir, tmp_path):
    with pytest.raises(InputError):
        evaluate_florence2(None, split_dir)
    with pytest.raises(InputError):
        evaluate_florence2(None, tmp_path, predict=lambda requests: [])
    with pytest.raises(InputError):
        evaluate_florence2(None, split_dir, predict=lambda requests: [], limit=2, baseline_train_scenes=0)
    with pytest.raises(InputError):
        evaluate_florence2(None, split_dir, predict=oracle_predictor(split_dir), caption_tasks=("<OCR>",))


def test_report_json_and_table(oracle_result, tmp_path):
    path = write_report(oracle_result, tmp_path / "out" / "report.json")
    back = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert back["od"]["mAP50"] == oracle_result["od"]["mAP50"]
    assert not list(path.parent.glob(".*.tmp"))
    table = report_table(oracle_result)
    for name in METRIC_NAMES:
        assert name in table
    assert "at most 2 expressions per image" in table
    # NaN (no ground truth at all) is written as null
    nan_path = write_report({**oracle_result, "od": {**oracle_result["od"], "mAP": math.nan}}, tmp_path / "nan.json")
    assert json.loads(nan_path.read_text())["od"]["mAP"] is None


def test_tiny_random_model_end_to_end(split_dir, tmp_path):
    from florence_vl.florence2.checkpoint import make_tiny_checkpoint
    from florence_vl.florence2.runner import Florence2

    make_tiny_checkpoint(tmp_path / "tiny")
    florence = Florence2.from_pretrained(tmp_path / "tiny")
    r = evaluate_florence2(florence, split_dir, limit=3, max_new_tokens=8, num_beams=1, batch_size=8,
                           baseline_train_scenes=BASELINE_SCENES, progress=False)
    assert r["n_images"] == 3 and r["model"] == str(tmp_path / "tiny")
    for name, value in _numbers(r):
        assert 0.0 <= value <= 1.0, name
    if r["ocr"]["cer"] is not None:
        assert r["ocr"]["cer"] >= 0.0
    for level in ("brief", "detailed"):
        assert r["caption"][level]["model"]["CIDEr"] >= 0.0
        assert all(isinstance(e["prediction"], str) for e in r["caption"][level]["examples"])
    table = report_table(r)
    assert all(name in table for name in METRIC_NAMES)
    write_report(r, tmp_path / "tiny.json")
