"""Evaluate a Florence-2 model on a nano-world split written by `data.formats.write_split`.

One call, `evaluate_florence2(florence, data_dir)`, runs every request the evaluation needs in one batched
pass and scores it against the split's own ground truth files:

* OD           <OD> on every image -> COCO results -> bbox mAP@[.5:.95], mAP50, mAP75 (detection_coco.json);
* REC          <REFERRING_EXPRESSION_SEGMENTATION> with each object's referring expression (at most
               `max_expressions_per_image` per image, the first objects of the record): the box enclosing
               the predicted polygons against the object's box, Acc@0.5;
* RES          the same predictions as masks against the object's segmentation: mIoU and oIoU;
* OCR          <OCR> on images with text against the texts joined in reading order (the world's <OCR>
               target): exact match, word exact match, CER; <OCR_WITH_REGION> word recall (optional);
* captions     <CAPTION> / <DETAILED_CAPTION> against captions_coco.json / captions_detailed_coco.json:
               CIDEr and BLEU, next to the trivial baseline that predicts the most common caption of
               `baseline_train_scenes` train scenes for every image.

`predict` replaces the model by any callable (list[TaskRequest]) -> list[TaskResult]; `oracle_predictor`
is one that answers with the ground-truth targets (a check of the evaluation itself: every metric is then
near perfect, up to the 1-bin quantisation of coordinates).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InputError
from ..florence2.export import _write_atomic, coco_results
from ..florence2.postprocess import DEFAULT_BOX_SCORE, parse_output
from ..florence2.results import TaskResult
from ..florence2.runner import Florence2, TaskRequest
from .metrics import (caption_scores, character_error_rate, detection_map, format_table,
                      most_common_caption_baseline, ocr_exact_match, referring_accuracy, res_miou,
                      word_exact_match)

__all__ = ["evaluate_florence2", "oracle_predictor", "write_report", "report_table", "METRIC_NAMES",
           "CAPTION_TASKS"]

Predictor = Callable[[Sequence[TaskRequest]], Sequence[TaskResult]]

OD, RES_TASK, OCR, OCR_REGION = "<OD>", "<REFERRING_EXPRESSION_SEGMENTATION>", "<OCR>", "<OCR_WITH_REGION>"
# caption task -> (record caption level, COCO captions file of write_split)
CAPTION_TASKS = {"<CAPTION>": ("brief", "captions_coco.json"),
                 "<DETAILED_CAPTION>": ("detailed", "captions_detailed_coco.json")}

# (section, key in the section, label in the table), in table order; caption rows are added per level.
_ROWS = [
    ("od", "mAP", "OD mAP@[.5:.95]"),
    ("od", "mAP50", "OD mAP50"),
    ("od", "mAP75", "OD mAP75"),
    ("rec", "acc@0.5", "REC acc@0.5"),
    ("res", "mIoU", "RES mIoU"),
    ("res", "oIoU", "RES oIoU"),
    ("ocr", "exact_match", "OCR exact match"),
    ("ocr", "word_exact_match", "OCR word exact match"),
    ("ocr", "cer", "OCR CER"),
    ("ocr", "region_word_recall", "OCR_WITH_REGION word recall"),
]
_CAPTION_ROWS = [("model", "CIDEr", "CIDEr (model)"), ("most_common_caption", "CIDEr", "CIDEr (most common caption)"),
                 ("model", "BLEU-4", "BLEU-4 (model)"),
                 ("most_common_caption", "BLEU-4", "BLEU-4 (most common caption)")]
METRIC_NAMES = [label for _, _, label in _ROWS] + [
    f"{level} {label}" for level, _ in CAPTION_TASKS.values() for _, _, label in _CAPTION_ROWS]


# ----------------------------------------------------------------------------------------- ground truth


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


_RECORD_FIELDS = {"image": str, "image_id": int, "size": list, "objects": list, "texts": list, "captions": dict}


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    for key, kind in _RECORD_FIELDS.items():
        if not isinstance(record.get(key), kind):
            return f"no {key!r} ({kind.__name__})"
    return None


def _load_split(data_dir: Path, limit: int | None, skipped: list[dict]) -> list[dict]:
    """The split's records, in order. A line that is not a record, or whose image cannot be read, is
    skipped and reported in `skipped` ({"line", "image", "reason"}), not fatal: one bad sample should not
    throw away an evaluation. `limit` counts usable records."""
    import json

    from ..images import load_image

    path = data_dir / "records.jsonl"
    if not path.is_file():
        raise InputError(f"{data_dir} is not a nano-world split folder (no records.jsonl); "
                         "write one with write_split")
    if limit is not None and limit < 1:
        raise InputError("limit must be at least 1")
    records, seen_ids = [], set()
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if limit is not None and len(records) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                skipped.append({"line": number, "image": None, "reason": f"bad JSON ({error})"})
                continue
            problem = _record_problem(record)
            if problem is None and record["image_id"] in seen_ids:
                problem = f"image_id {record['image_id']} repeats an earlier record"
            if problem is None:
                try:
                    load_image(data_dir / record["image"])
                except InputError as error:
                    problem = str(error)
            if problem is not None:
                image = record.get("image") if isinstance(record, dict) else None
                skipped.append({"line": number, "image": image, "reason": problem})
                continue
            seen_ids.add(record["image_id"])
            records.append(record)
    if not records:
        detail = f" ({len(skipped)} unusable lines, first: {skipped[0]['reason']})" if skipped else ""
        raise InputError(f"{data_dir} holds no usable images{detail}")
    return records


def _reading_order_text(record: dict) -> str:
    """The <OCR> target of the world: every text of the image, in reading order, joined by spaces."""
    from ..data.spatial import reading_order_key

    return " ".join(t["text"] for t in sorted(record["texts"], key=lambda t: reading_order_key(t["bbox"])))


def _detection_gt(data_dir: Path, records: list[dict]) -> dict:
    path = data_dir / "detection_coco.json"
    if path.is_file():
        gt = _read_json(path)
    else:  # an older folder: rebuild it from the records
        from ..data.formats import coco_detection

        gt = coco_detection(records)
    keep = {r["image_id"] for r in records}
    return {"images": [im for im in gt["images"] if im["id"] in keep],
            "annotations": [a for a in gt["annotations"] if a["image_id"] in keep],
            "categories": gt["categories"]}


def _caption_refs(data_dir: Path, records: list[dict], level: str, filename: str) -> dict[int, list[str]]:
    refs: dict[int, list[str]] = {r["image_id"]: [] for r in records}
    path = data_dir / filename
    if path.is_file():
        for ann in _read_json(path)["annotations"]:
            if ann["image_id"] in refs:
                refs[ann["image_id"]].append(ann["caption"])
    for r in records:  # images the file does not cover fall back to the record
        if not refs[r["image_id"]]:
            refs[r["image_id"]].append(r["captions"][level])
    return refs


def _train_captions(n_scenes: int) -> dict[str, list[str]]:
    from ..data.world import iter_scenes

    out: dict[str, list[str]] = {level: [] for level, _ in CAPTION_TASKS.values()}
    for scene in iter_scenes("train", n=n_scenes):
        for level in out:
            out[level].append(scene.record["captions"][level])
    return out


# ----------------------------------------------------------------------------------------- predictions


def enclosing_box(output: Any) -> list[float] | None:
    """The box around a referring-segmentation output's polygons (what REC scores), None without any."""
    polygons = output.get("polygons") if isinstance(output, dict) else None
    xs, ys = [], []
    for instance in polygons or []:
        for poly in instance if instance and isinstance(instance[0], (list, tuple)) else [instance]:
            xs.extend(float(v) for v in poly[0::2])
            ys.extend(float(v) for v in poly[1::2])
    if not xs or not ys:
        return None
    return [min(xs), min(ys), max(xs), max(ys)]


def _text(output: Any) -> str:
    return output if isinstance(output, str) else ""


def _ratio_or_none(value: float, n: int) -> float | None:
    return float(value) if n else None


def evaluate_florence2(florence: Florence2 | None, data_dir, *, limit: int | None = None, batch_size: int = 8,
                       num_beams: int = 3, max_new_tokens: int = 256, predict: Predictor | None = None,
                       progress: bool = True, max_expressions_per_image: int = 2,
                       baseline_train_scenes: int = 500, ocr_with_region: bool = True,
                       caption_tasks: Sequence[str] = tuple(CAPTION_TASKS), stop_loops: bool = True,
                       box_score: str = DEFAULT_BOX_SCORE) -> dict:
    """Score `florence` (or `predict`) on the split folder `data_dir` (see the module docstring).

    `limit` keeps the first `limit` images. Ratios over an empty set (no image with text, say) are None;
    an mAP with no ground-truth box at all is NaN (written as null by `write_report`).
    """
    if predict is None and florence is None:
        raise InputError("evaluate_florence2 needs a model or a predict function")
    unknown = [t for t in caption_tasks if t not in CAPTION_TASKS]
    if unknown:
        raise InputError(f"caption tasks are among {', '.join(CAPTION_TASKS)}; got {', '.join(unknown)}")
    if max_expressions_per_image < 1:
        raise InputError("max_expressions_per_image must be at least 1")
    started = time.perf_counter()
    data_dir = Path(data_dir)
    skipped: list[dict] = []
    records = _load_split(data_dir, limit, skipped)

    # -- every request of the evaluation, with what each one is scored against
    requests: list[TaskRequest] = []
    od_idx: list[tuple[int, dict]] = []          # (request index, record)
    rec_idx: list[tuple[int, dict, dict]] = []   # (request index, record, object)
    ocr_idx: list[tuple[int, dict, str]] = []    # (request index, record, reference text)
    ocr_region_idx: list[tuple[int, str]] = []
    cap_idx: dict[str, list[tuple[int, dict]]] = {t: [] for t in caption_tasks}
    n_expressions_total = 0

    def add(request: TaskRequest) -> int:
        requests.append(request)
        return len(requests) - 1

    for r in records:
        image = str(data_dir / r["image"])
        od_idx.append((add(TaskRequest(image, OD)), r))
        objects = [o for o in r["objects"] if o.get("referring")]
        n_expressions_total += len(objects)
        for o in objects[:max_expressions_per_image]:
            rec_idx.append((add(TaskRequest(image, RES_TASK, text=o["referring"])), r, o))
        if r["texts"]:
            reference = _reading_order_text(r)
            ocr_idx.append((add(TaskRequest(image, OCR)), r, reference))
            if ocr_with_region:
                ocr_region_idx.append((add(TaskRequest(image, OCR_REGION)), reference))
        for task in caption_tasks:
            cap_idx[task].append((add(TaskRequest(image, task)), r))

    if predict is not None:
        results = list(predict(requests))
        source = getattr(predict, "__name__", type(predict).__name__)
    else:
        results = florence.run_requests(requests, batch_size=batch_size, num_beams=num_beams,
                                        max_new_tokens=max_new_tokens, progress=progress, stop_loops=stop_loops,
                                        box_score=box_score)
        source = florence.source
    if len(results) != len(requests):
        raise InputError(f"the predictor answered {len(results)} of {len(requests)} requests")
    inference_s = time.perf_counter() - started

    # -- OD: COCO bbox mAP against the split's own COCO file (image ids and categories from it)
    gt = _detection_gt(data_dir, records)
    named = [dataclasses.replace(results[i], image=r["image"]) for i, r in od_idx]
    predictions = coco_results(named, image_ids={r["image"]: r["image_id"] for _, r in od_idx},
                               categories=gt["categories"])
    od = detection_map(gt, predictions.annotations, "bbox")
    od.update(n_gt=len(gt["annotations"]), skipped_labels=sum(predictions.skipped.values()))

    # -- REC / RES: one referring-segmentation prediction scored as a box and as a mask
    pred_boxes = [enclosing_box(results[i].output) for i, _, _ in rec_idx]
    gt_boxes = [o["bbox"] for _, _, o in rec_idx]
    n_rec = len(rec_idx)
    rec = {"acc@0.5": _ratio_or_none(referring_accuracy(pred_boxes, gt_boxes), n_rec), "n": n_rec,
           "n_expressions_total": n_expressions_total, "max_expressions_per_image": max_expressions_per_image,
           "no_prediction": sum(b is None for b in pred_boxes)}
    pred_masks = [results[i].output if isinstance(results[i].output, dict) else None for i, _, _ in rec_idx]
    res_scores = res_miou(pred_masks, [o["segmentation"] for _, _, o in rec_idx],
                          [tuple(r["size"]) for _, r, _ in rec_idx])
    res = {"mIoU": _ratio_or_none(res_scores["mIoU"], n_rec), "oIoU": _ratio_or_none(res_scores["oIoU"], n_rec),
           "n": n_rec, "max_expressions_per_image": max_expressions_per_image}

    # -- OCR: whole string in reading order, its words, its characters
    ocr_preds = [_text(results[i].output) for i, _, _ in ocr_idx]
    ocr_refs = [ref for _, _, ref in ocr_idx]
    n_ocr = len(ocr_idx)
    ocr = {"exact_match": _ratio_or_none(ocr_exact_match(ocr_preds, ocr_refs), n_ocr),
           "word_exact_match": _ratio_or_none(word_exact_match(ocr_preds, ocr_refs), n_ocr),
           "cer": _ratio_or_none(character_error_rate(ocr_preds, ocr_refs), n_ocr),
           "region_word_recall": None, "n": n_ocr}
    if ocr_with_region:
        region_preds = [" ".join(str(x) for x in (results[i].output or {}).get("labels", []))
                        if isinstance(results[i].output, dict) else "" for i, _ in ocr_region_idx]
        ocr["region_word_recall"] = _ratio_or_none(
            word_exact_match(region_preds, [ref for _, ref in ocr_region_idx]), len(ocr_region_idx))

    # -- captions: the model against the most common training caption
    caption: dict[str, Any] = {"baseline_train_scenes": baseline_train_scenes, "n": len(records)}
    if caption_tasks:
        train = _train_captions(baseline_train_scenes) if baseline_train_scenes > 0 else None
        for task in caption_tasks:
            level, filename = CAPTION_TASKS[task]
            refs = _caption_refs(data_dir, records, level, filename)
            preds = {r["image_id"]: _text(results[i].output) for i, r in cap_idx[task]}
            entry: dict[str, Any] = {"task": task, "model": caption_scores(preds, refs)}
            entry["most_common_caption"] = (most_common_caption_baseline(train[level], refs)
                                            if train is not None else None)
            entry["examples"] = [{"image": r["image"], "prediction": preds[r["image_id"]],
                                  "reference": refs[r["image_id"]][0]} for _, r in cap_idx[task][:3]]
            caption[level] = entry

    splits = sorted({r.get("split", "") for r in records})
    return {
        "split": splits[0] if len(splits) == 1 else ",".join(splits),
        "data_dir": str(data_dir),
        "model": source,
        "n_images": len(records),
        "n_requests": len(requests),
        "skipped": {"n": len(skipped), "samples": skipped[:20]},
        "settings": {"limit": limit, "batch_size": batch_size, "num_beams": num_beams,
                     "max_new_tokens": max_new_tokens, "max_expressions_per_image": max_expressions_per_image,
                     "baseline_train_scenes": baseline_train_scenes, "ocr_with_region": ocr_with_region,
                     "caption_tasks": list(caption_tasks), "stop_loops": stop_loops, "box_score": box_score},
        "od": od,
        "rec": rec,
        "res": res,
        "ocr": ocr,
        "caption": caption,
        "inference_s": round(inference_s, 3),
        "elapsed_s": round(time.perf_counter() - started, 3),
    }


# ----------------------------------------------------------------------------------------- oracle


def oracle_predictor(data_dir) -> Predictor:
    """A predictor that answers each request with `parse_output` of the split's ground-truth Florence-2
    target (from `florence2_examples`), keyed by image file name, task and text. A request it has no
    target for gets an empty answer. Evaluating it shows what a perfect model scores."""
    from ..data.florence2_targets import florence2_examples

    data_dir = Path(data_dir)
    targets: dict[tuple, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for r in _load_split(data_dir, None, []):
        name = Path(r["image"]).name
        sizes[name] = tuple(r["size"])
        for ex in florence2_examples(r):
            targets.setdefault((name, ex["task"], ex.get("text")), ex["target"])

    def oracle(requests: Sequence[TaskRequest]) -> list[TaskResult]:
        out = []
        for req in requests:
            name = Path(str(req.image)).name
            size = sizes[name]
            target = targets.get((name, req.task, req.text), "")
            out.append(TaskResult(task=req.task, output=parse_output(req.task, target, size), text=target,
                                  image_size=size, image=str(req.image)))
        return out

    oracle.__name__ = "oracle"
    return oracle


# ----------------------------------------------------------------------------------------- reporting


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(result: dict, out_json) -> Path:
    """The result as strict JSON (NaN -> null) at `out_json`, written atomically."""
    return _write_atomic(_json_safe(result), out_json)


def report_rows(result: dict) -> list[dict]:
    """One row {"task", "metric", "value", "n"} per metric of `result`."""
    rows = []
    for section, key, label in _ROWS:
        part = result.get(section) or {}
        n = part.get("n", part.get("n_images"))
        rows.append({"metric": label, "value": part.get(key), "n": n})
    for level, _ in CAPTION_TASKS.values():
        entry = (result.get("caption") or {}).get(level)
        for which, key, label in _CAPTION_ROWS:
            scores = (entry or {}).get(which) or {}
            rows.append({"metric": f"{level} {label}", "value": scores.get(key),
                         "n": (result.get("caption") or {}).get("n") if entry else None})
    return rows


def report_table(result: dict) -> str:
    """A plain text table, one row per metric (blank where the metric was not computed)."""
    skipped = (result.get("skipped") or {}).get("n", 0)
    head = (f"Florence-2 on {result.get('split', '?')} ({result.get('n_images', 0)} images"
            f"{f', {skipped} unusable samples skipped' if skipped else ''}, model "
            f"{result.get('model', '?')}; REC/RES: at most "
            f"{(result.get('rec') or {}).get('max_expressions_per_image', '?')} expressions per image)")
    rows = [{**row, "value": float(row["value"]) if isinstance(row["value"], (int, float)) else row["value"]}
            for row in report_rows(result)]
    return head + "\n" + format_table(rows, columns=[("metric", "metric"), ("value", "value"), ("n", "n")])
