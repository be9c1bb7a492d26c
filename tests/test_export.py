import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from florence_vl.errors import InputError
from florence_vl.florence2.export import (coco_results, read_json, results_from_json, results_to_json,
                                          write_coco_results, write_json)
from florence_vl.florence2.results import TaskResult


def od(image, boxes, labels, scores=None, size=(200, 100)):
    output = {"bboxes": boxes, "labels": labels}
    if scores is not None:
        output["scores"] = scores
    return TaskResult(task="<OD>", output=output, text="car<loc_1>", image_size=size, image=image,
                      prompt="Locate the objects with category name in the image.")


def seg(image, polygons, labels, size=(200, 100)):
    return TaskResult(task="<REFERRING_EXPRESSION_SEGMENTATION>", output={"polygons": polygons, "labels": labels},
                      text="", image_size=size, image=image)


# ---------------------------------------------------------------------------------- JSON


def test_json_round_trip(tmp_path):
    results = [
        od("a.jpg", [[1.5, 2, 30, 40]], ["car"], [0.9]),
        TaskResult("<CAPTION>", "a cat on a mat", "a cat on a mat", (640, 480), "b.png", "What does the image describe?"),
        TaskResult("<OCR_WITH_REGION>", {"quad_boxes": [[1, 2, 3, 2, 3, 4, 1, 4]], "labels": ["</s>HI"]}, "",
                   (10, 10)),
    ]
    data = results_to_json(results)
    assert data[0] == {"image": "a.jpg", "image_size": [200, 100], "task": "<OD>",
                       "prompt": "Locate the objects with category name in the image.", "text": "car<loc_1>",
                       "result": {"<OD>": {"bboxes": [[1.5, 2, 30, 40]], "labels": ["car"], "scores": [0.9]}}}
    path = tmp_path / "out" / "results.json"
    assert write_json(results, path) == path
    text = path.read_text(encoding="utf-8")
    assert text.startswith("[\n  {\n    \"image\"")          # indent=2
    assert json.loads(text) == data
    back = read_json(path)
    assert [(r.task, r.output, r.text, r.image_size, r.image, r.prompt) for r in back] == \
           [(r.task, r.output, r.text, tuple(r.image_size), r.image, r.prompt) for r in results]
    assert results_from_json(data)[1].output == "a cat on a mat"


def test_json_accepts_numpy_values(tmp_path):
    r = od("a.jpg", np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32), ["x"], [np.float32(0.5)])
    write_json([r], tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data[0]["result"]["<OD>"] == {"bboxes": [[1.0, 2.0, 3.0, 4.0]], "labels": ["x"], "scores": [0.5]}


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "results.json"
    write_json([od("a.jpg", [[0, 0, 1, 1]], ["a"])], path)
    before = path.read_text()
    bad = od("a.jpg", [[0, 0, 1, 1]], [object()])
    with pytest.raises(TypeError):
        write_json([bad], path)
    assert path.read_text() == before                       # the old file survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # and no temporary is left
    write_json([], path)
    assert json.loads(path.read_text()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


# ---------------------------------------------------------------------------------- COCO results


def test_boxes_become_xywh_with_ids_by_first_appearance():
    results = [
        od("b.jpg", [[10, 20, 50, 60], [70, 80, 60, 70]], ["Car", "person"], [0.9, 0.4]),
        od("a.jpg", [[0, 0, 5, 5]], ["car"]),
        od("b.jpg", [[1, 1, 2, 2]], ["dog"]),
    ]
    anns, cats = coco_results(results)
    assert cats == [{"id": 1, "name": "Car"}, {"id": 2, "name": "person"}, {"id": 3, "name": "dog"}]
    assert [(a["image_id"], a["category_id"], a["bbox"], a["score"]) for a in anns] == [
        (1, 1, [10, 20, 40, 40], 0.9),
        (1, 2, [60, 70, 10, 10], 0.4),                       # x1 < x0 is normalised
        (2, 1, [0, 0, 5, 5], 1.0),                           # no scores -> 1.0; "car" is "Car"
        (1, 3, [1, 1, 1, 1], 1.0),
    ]
    assert all("segmentation" not in a for a in anns)
    json.dumps(anns)


def test_given_categories_and_image_ids():
    categories = [{"id": 3, "name": "car", "supercategory": "vehicle"}, {"id": 1, "name": "person"},
                  {"id": 18, "name": "dog"}]
    results = [od("/data/coco/val/000123.jpg", [[0, 0, 10, 10], [5, 5, 9, 9], [1, 1, 4, 4]],
                  ["CAR", "unicorn", "person"]),
               od("x.jpg", [[0, 0, 3, 3], [0, 0, 2, 2]], ["car", "unicorn"])]
    answer = coco_results(results, image_ids={"000123.jpg": 123, "x.jpg": 7}, categories=categories)
    anns, cats = answer
    assert [(a["image_id"], a["category_id"]) for a in anns] == [(123, 3), (123, 1), (7, 3)]
    assert cats == [{"id": 1, "name": "person"}, {"id": 3, "name": "car", "supercategory": "vehicle"}]
    assert answer.skipped == {"unicorn": 2}
    with pytest.raises(InputError, match="nope.jpg"):
        coco_results([od("nope.jpg", [[0, 0, 1, 1]], ["car"])], image_ids={"x.jpg": 1})


def test_region_proposals_and_unnamed_images():
    rp = [TaskResult("<REGION_PROPOSAL>", {"bboxes": [[0, 0, 4, 4], [1, 1, 3, 3]], "labels": ["", ""]}, "", (8, 8)),
          TaskResult("<REGION_PROPOSAL>", {"bboxes": [[0, 0, 2, 2]], "labels": [""]}, "", (8, 8))]
    anns, cats = coco_results(rp)
    assert cats == [{"id": 1, "name": "object"}]
    assert [a["image_id"] for a in anns] == [1, 1, 2]         # each result without a path is its own image


def test_polygons_and_open_vocabulary():
    r = seg("a.jpg", [[[0, 0, 10, 0, 10, 10, 0, 10], [20, 20, 30, 20, 25, 30]], [[1, 1, 2, 2]], [[5, 5, 6, 6, 7]]],
            ["cat", "flat", "short"])
    anns, cats = coco_results([r])
    assert len(anns) == 1                                    # degenerate instances are left out
    a = anns[0]
    assert a["segmentation"] == [[0, 0, 10, 0, 10, 10, 0, 10], [20, 20, 30, 20, 25, 30]]
    assert a["bbox"] == [0, 0, 30, 30] and a["area"] == pytest.approx(100 + 50) and a["score"] == 1.0
    ovd = TaskResult("<OPEN_VOCABULARY_DETECTION>", {
        "bboxes": [[1, 2, 3, 4]], "bboxes_labels": ["cup"],
        "polygons": [[[0, 0, 4, 0, 4, 4]]], "polygons_labels": ["mug"]}, "", (10, 10), "c.jpg")
    anns, cats = coco_results([ovd])
    assert [c["name"] for c in cats] == ["cup", "mug"]
    assert anns[0]["bbox"] == [1, 2, 2, 2] and "segmentation" not in anns[0]
    assert anns[1]["segmentation"] == [[0, 0, 4, 0, 4, 4]] and anns[1]["category_id"] == 2


@pytest.mark.parametrize("task,output", [
    ("<CAPTION>", "a cat"),
    ("<REGION_TO_CATEGORY>", "cat"),
    ("<OCR_WITH_REGION>", {"quad_boxes": [[0, 0, 1, 0, 1, 1, 0, 1]], "labels": ["A"]}),
])
def test_text_tasks_are_refused(task, output, tmp_path):
    r = TaskResult(task, output, "", (10, 10), "a.jpg")
    with pytest.raises(InputError, match="detection or segmentation"):
        coco_results([od("a.jpg", [[0, 0, 1, 1]], ["x"]), r])
    with pytest.raises(InputError):
        write_coco_results([r], tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()


# ---------------------------------------------------------------------------------- through pycocotools


def _shoelace(p):
    xs, ys = p[0::2], p[1::2]
    return abs(sum(xs[i] * ys[(i + 1) % len(xs)] - xs[(i + 1) % len(xs)] * ys[i] for i in range(len(xs)))) / 2


GT_OBJECTS = {  # file -> [(category name, polygon)]
    "img1.jpg": [("cat", [10, 10, 60, 10, 60, 50, 10, 50]), ("dog", [100, 20, 180, 30, 150, 90])],
    "img2.jpg": [("cat", [20, 30, 90, 35, 70, 95, 25, 80]), ("cat", [120, 10, 190, 10, 190, 60])],
}
CATEGORIES = [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}, {"id": 5, "name": "airplane"}]


def _gt():
    images, anns = [], []
    ids = {"cat": 17, "dog": 18}
    for i, (name, objects) in enumerate(GT_OBJECTS.items()):
        images.append({"id": 42 + i, "file_name": name, "width": 200, "height": 100})
        for label, poly in objects:
            xs, ys = poly[0::2], poly[1::2]
            anns.append({"id": len(anns) + 1, "image_id": 42 + i, "category_id": ids[label], "iscrowd": 0,
                         "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                         "segmentation": [poly], "area": _shoelace(poly)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": CATEGORIES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _evaluate(gt, res_path, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(str(res_path))
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_pycocotools_bbox_ap_is_one_for_boxes_equal_to_gt(tmp_path):
    gt = _gt()
    results = []
    for name, objects in GT_OBJECTS.items():
        boxes = []
        for _, poly in objects:
            xs, ys = poly[0::2], poly[1::2]
            boxes.append([max(xs), min(ys), min(xs), max(ys)])  # corners swapped on purpose: normalised
        results.append(od(f"/images/{name}", boxes, [lbl.upper() for lbl, _ in objects], [0.8] * len(boxes)))
    results.append(od("/images/img2.jpg", [[0, 0, 5, 5]], ["zebra"], [0.99]))  # not a category: skipped
    image_ids = {img["file_name"]: img["id"] for img in gt.dataset["images"]}
    answer = write_coco_results(results, tmp_path / "bbox.json", image_ids=image_ids, categories=CATEGORIES)
    assert answer.skipped == {"zebra": 1}
    assert len(json.loads((tmp_path / "bbox.json").read_text())) == 4
    stats = _evaluate(gt, tmp_path / "bbox.json", "bbox")
    assert stats[1] == pytest.approx(1.0)   # AP@0.5
    assert stats[0] == pytest.approx(1.0)   # AP@[.5:.95]: the boxes are exact


def test_pycocotools_segm_ap_is_one_for_polygons_equal_to_gt(tmp_path):
    gt = _gt()
    results = [seg(name, [[poly] for _, poly in objects], [lbl for lbl, _ in objects])
               for name, objects in GT_OBJECTS.items()]
    image_ids = {img["file_name"]: img["id"] for img in gt.dataset["images"]}
    anns, cats = write_coco_results(results, tmp_path / "segm.json", image_ids=image_ids, categories=CATEGORIES)
    assert [c["name"] for c in cats] == ["cat", "dog"]
    assert all(len(a["segmentation"]) == 1 for a in anns)
    segm = _evaluate(gt, tmp_path / "segm.json", "segm")
    assert segm[1] == pytest.approx(1.0)
    assert segm[0] == pytest.approx(1.0)
    bbox = _evaluate(gt, tmp_path / "segm.json", "bbox")   # the enclosing boxes match the GT boxes too
    assert bbox[1] == pytest.approx(1.0)


def test_loadres_accepts_in_memory_results_with_auto_ids():
    gt = _gt()
    results = [od(name, [[10, 10, 20, 20]], ["cat"]) for name in GT_OBJECTS]
    anns, _ = coco_results(results)
    gt_ids = sorted(img["id"] for img in gt.dataset["images"])
    assert sorted({a["image_id"] for a in anns}) == [1, 2]
    for a in anns:  # remap the automatic ids to the GT's, as a caller without image_ids would
        a["image_id"] = gt_ids[a["image_id"] - 1]
        a["category_id"] = 17
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(anns))
    assert len(dt.getAnnIds()) == 2
