"""Writing task results out: plain JSON (the published {task: output} form) and COCO *results* files.

COCO results are the list that `COCO.loadRes` / `COCOeval` read: one entry per detected box or segmented
instance, {"image_id", "category_id", "bbox": [x, y, w, h], "score"} plus, for polygon outputs,
"segmentation": [[x0, y0, x1, y1, ...], ...] and "area". Coordinates stay in pixels of the original image,
which is the frame COCO ground truth uses.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import InputError
from .results import TaskResult
from .tasks import TASKS

log = logging.getLogger(__name__)

_TEXT_KINDS = ("pure_text", "ocr")


# --------------------------------------------------------------------------------------------- JSON


def _plain(value: Any) -> Any:
    """JSON-safe plain Python: tuples -> lists, numpy/torch scalars and arrays -> numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return _plain(value.tolist())
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def results_to_json(results: Iterable[TaskResult]) -> list[dict]:
    """Each result's `to_dict()` as plain JSON values."""
    return [_plain(r.to_dict()) for r in results]


def results_from_json(items: Sequence[dict]) -> list[TaskResult]:
    """The inverse of `results_to_json` (the `extra` field is not written, so it comes back empty)."""
    out = []
    for item in items:
        result = item["result"]
        task = item.get("task") or next(iter(result))
        out.append(TaskResult(task=task, output=result[task], text=item.get("text", ""),
                              image_size=tuple(int(v) for v in item["image_size"]), image=item.get("image"),
                              prompt=item.get("prompt", "")))
    return out


def _write_atomic(data: Any, path: str | os.PathLike) -> Path:
    """JSON to `path` via a temporary file in the same folder and os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_json(results: Iterable[TaskResult], path: str | os.PathLike) -> Path:
    """Write `results_to_json(results)` to `path` (indent=2), atomically."""
    return _write_atomic(results_to_json(results), path)


def read_json(path: str | os.PathLike) -> list[TaskResult]:
    with open(path, encoding="utf-8") as f:
        return results_from_json(json.load(f))


# --------------------------------------------------------------------------------------------- COCO


class CocoResults(tuple):
    """(annotations, categories_used), unpackable as a pair; `.skipped` counts the labels left out
    because they were not among the given categories ({label: number of boxes/instances})."""

    def __new__(cls, annotations: list[dict], categories: list[dict], skipped: dict[str, int]):
        self = super().__new__(cls, (annotations, categories))
        self.skipped = skipped
        return self

    @property
    def annotations(self) -> list[dict]:
        return self[0]

    @property
    def categories(self) -> list[dict]:
        return self[1]


def _parse_kind(result: TaskResult) -> str:
    task = TASKS.get(result.task)
    if task is not None:
        return task.parse
    out = result.output  # an unknown task token: go by the output's shape
    if isinstance(out, str):
        return "pure_text"
    if isinstance(out, dict):
        if "quad_boxes" in out:
            return "ocr"
        if "bboxes_labels" in out or "polygons_labels" in out:
            return "description_with_bboxes_or_polygons"
        if "polygons" in out:
            return "polygons"
        if "bboxes" in out:
            return "description_with_bboxes"
    raise InputError(f"cannot tell what kind of output task {result.task!r} has")


def _finite(values: Sequence[Any]) -> list[float] | None:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _xywh(box: Sequence[Any]) -> list[float] | None:
    values = _finite(box)
    if values is None or len(values) != 4:
        return None
    x0, y0, x1, y1 = values
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    return [x0, y0, x1 - x0, y1 - y0]


def _instance_polygons(instance: Any) -> list[list[float]]:
    """An instance's polygons as flat coordinate lists of at least 3 points (what pycocotools can rasterise)."""
    if not isinstance(instance, (list, tuple)) or not instance:
        return []
    if not isinstance(instance[0], (list, tuple)):  # one flat polygon instead of a list of them
        instance = [instance]
    polygons = []
    for poly in instance:
        values = _finite(poly) if isinstance(poly, (list, tuple)) else None
        if values is None:
            continue
        values = values[: len(values) // 2 * 2]
        if len(values) >= 6:
            polygons.append(values)
    return polygons


def _shoelace(poly: list[float]) -> float:
    xs, ys = poly[0::2], poly[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2.0


def _at(values: Any, i: int, default: Any) -> Any:
    if isinstance(values, (list, tuple)) and i < len(values):
        return values[i]
    return default


def _image_key(result: TaskResult, index: int) -> Any:
    # Results without an image path are each their own image.
    return result.image if result.image is not None else ("#unnamed", index)


def _lookup_image_id(result: TaskResult, image_ids: dict[str, int]) -> int:
    if result.image is not None:
        if result.image in image_ids:
            return int(image_ids[result.image])
        base = os.path.basename(result.image)  # COCO "file_name" is usually the bare name
        if base in image_ids:
            return int(image_ids[base])
    raise InputError(f"image {result.image!r} is not in the given image ids")


def coco_results(
    results: Iterable[TaskResult],
    image_ids: dict[str, int] | None = None,
    categories: list[dict] | None = None,
) -> CocoResults:
    """Detection / segmentation results -> (COCO results annotations, categories used).

    image_id: `image_ids[result.image]` (or of its file name) when given, otherwise 1, 2, ... by order of
    first appearance of each distinct image. category_id: when `categories` (COCO {"id", "name"} dicts) is
    given, labels are matched to names case-insensitively and those not found are skipped and counted
    (`.skipped` on the answer); otherwise ids 1, 2, ... by order of first appearance of each label
    (case-insensitive; an empty label, as <REGION_PROPOSAL> gives, becomes "object").
    score: the output's "scores" when present, else 1.0.
    """
    results = list(results)
    for r in results:
        kind = _parse_kind(r)
        if kind in _TEXT_KINDS:
            raise InputError(f"COCO results need a detection or segmentation task; {r.task} gives text "
                             f"({kind}), write it as JSON instead")

    known: dict[str, dict] | None = None
    if categories is not None:
        known = {}
        for c in categories:
            known.setdefault(str(c["name"]).strip().lower(), c)
    auto: dict[str, dict] = {}
    used: dict[int, dict] = {}
    skipped: Counter[str] = Counter()

    def category_id(label: Any) -> int | None:
        name = str(label if label is not None else "").strip()
        key = name.lower()
        if known is not None:
            cat = known.get(key)
            if cat is None:
                skipped[name] += 1
                return None
            used.setdefault(int(cat["id"]), dict(cat))
            return int(cat["id"])
        if not key:
            name = key = "object"
        if key not in auto:
            auto[key] = {"id": len(auto) + 1, "name": name}
        return auto[key]["id"]

    auto_images: dict[Any, int] = {}
    annotations: list[dict] = []

    for index, r in enumerate(results):
        if image_ids is not None:
            image_id = _lookup_image_id(r, image_ids)
        else:
            image_id = auto_images.setdefault(_image_key(r, index), len(auto_images) + 1)
        out = r.output if isinstance(r.output, dict) else {}
        kind = _parse_kind(r)

        if kind == "description_with_bboxes_or_polygons":
            box_labels, poly_labels = out.get("bboxes_labels", []), out.get("polygons_labels", [])
        else:
            box_labels = poly_labels = out.get("labels", [])
        scores = out.get("scores")

        if kind != "polygons":
            for i, box in enumerate(out.get("bboxes", []) or []):
                xywh = _xywh(box) if isinstance(box, (list, tuple)) else None
                if xywh is None:
                    continue
                cid = category_id(_at(box_labels, i, ""))
                if cid is None:
                    continue
                score = _finite([_at(scores, i, 1.0)])
                annotations.append({"image_id": image_id, "category_id": cid, "bbox": xywh,
                                    "score": score[0] if score else 1.0, "area": xywh[2] * xywh[3]})

        if kind in ("polygons", "description_with_bboxes_or_polygons"):
            poly_scores = out.get("polygons_scores") if kind != "polygons" else scores
            for i, instance in enumerate(out.get("polygons", []) or []):
                polygons = _instance_polygons(instance)
                if not polygons:
                    continue
                cid = category_id(_at(poly_labels, i, ""))
                if cid is None:
                    continue
                xs = [v for p in polygons for v in p[0::2]]
                ys = [v for p in polygons for v in p[1::2]]
                x0, y0 = min(xs), min(ys)
                score = _finite([_at(poly_scores, i, 1.0)])
                annotations.append({"image_id": image_id, "category_id": cid,
                                    "bbox": [x0, y0, max(xs) - x0, max(ys) - y0],
                                    "score": score[0] if score else 1.0,
                                    "segmentation": polygons,
                                    "area": sum(_shoelace(p) for p in polygons)})

    if skipped:
        log.warning("COCO export: skipped %d box(es)/instance(s) whose labels are not among the categories: %s",
                    sum(skipped.values()), ", ".join(f"{k!r} x{v}" for k, v in skipped.most_common(10)))
    if known is not None:
        cats = [used[i] for i in sorted(used)]
    else:
        cats = list(auto.values())
    return CocoResults(annotations, cats, dict(skipped))


def write_coco_results(
    results: Iterable[TaskResult],
    path: str | os.PathLike,
    image_ids: dict[str, int] | None = None,
    categories: list[dict] | None = None,
) -> CocoResults:
    """Write the COCO results list (the file `COCO.loadRes` reads) to `path`, atomically."""
    answer = coco_results(results, image_ids=image_ids, categories=categories)
    _write_atomic(answer.annotations, path)
    return answer
