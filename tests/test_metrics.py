import copy

import numpy as np
import pytest

from florence_vl.errors import InputError
from florence_vl.eval.metrics import (box_iou, caption_scores, caption_tokenize, character_error_rate,
                                      detection_map, format_table, levenshtein, mask_iou,
                                      most_common_caption_baseline, ocr_exact_match, pope_metrics,
                                      referring_accuracy, relaxed_accuracy, res_miou, vqa_accuracy,
                                      vqa_normalize, word_exact_match)
from florence_vl.florence2.export import coco_results
from florence_vl.florence2.results import TaskResult


# ---------------------------------------------------------------------------------- detection mAP


def square(x, y, s):
    return [x, y, x + s, y, x + s, y + s, x, y + s]


GT = {
    "images": [{"id": 1, "width": 100, "height": 80, "file_name": "a.jpg"},
               {"id": 2, "width": 100, "height": 80, "file_name": "b.jpg"}],
    "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "dog"}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "segmentation": [square(10, 10, 20)]},
        {"id": 11, "image_id": 1, "category_id": 2, "bbox": [50, 40, 30, 30], "segmentation": [square(50, 40, 30)]},
        {"id": 12, "image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40], "segmentation": [square(0, 0, 40)]},
    ],
}


def perfect_predictions():
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
             "segmentation": copy.deepcopy(a["segmentation"]), "score": 0.9} for a in GT["annotations"]]


def test_detection_map_perfect_shifted_and_empty():
    before = copy.deepcopy(GT)
    perfect = detection_map(GT, perfect_predictions())
    assert perfect["mAP"] == pytest.approx(1.0)
    assert perfect["mAP50"] == pytest.approx(1.0)
    assert perfect["mAP75"] == pytest.approx(1.0)
    assert perfect["n_images"] == 2 and perfect["n_predictions"] == 3

    # Shifted by 5 px: IoU 15*20/(2*400-300) = 0.6 for the 20px box, higher for the larger ones.
    shifted = perfect_predictions()
    for p in shifted:
        p["bbox"][0] += 5
    result = detection_map(GT, shifted)
    assert 0.0 < result["mAP"] < 1.0
    assert result["mAP50"] == pytest.approx(1.0)

    empty = detection_map(GT, [])
    assert empty["mAP"] == 0.0 and empty["mAP50"] == 0.0 and empty["mAP75"] == 0.0
    assert empty["n_predictions"] == 0
    assert GT == before  # inputs are not modified


def test_detection_map_ids_start_at_zero_and_wrong_category():
    gt = copy.deepcopy(GT)
    for a in gt["annotations"]:
        a["id"] -= 10  # one gt annotation with id 0: COCOeval would treat its match as "no match"
        del a["segmentation"]
    assert detection_map(gt, perfect_predictions())["mAP"] == pytest.approx(1.0)
    wrong = perfect_predictions()
    for p in wrong:
        p["category_id"] = 3 - p["category_id"]
    assert detection_map(gt, wrong)["mAP"] == pytest.approx(0.0)


def test_detection_map_segm_from_exported_results():
    results = [
        TaskResult("<REFERRING_EXPRESSION_SEGMENTATION>", {"polygons": [[square(10, 10, 20)]], "labels": ["car"]},
                   "", (100, 80), "a.jpg"),
        TaskResult("<REFERRING_EXPRESSION_SEGMENTATION>", {"polygons": [[square(50, 40, 30)]], "labels": ["dog"]},
                   "", (100, 80), "a.jpg"),
        TaskResult("<REFERRING_EXPRESSION_SEGMENTATION>", {"polygons": [[square(0, 0, 40)]], "labels": ["car"]},
                   "", (100, 80), "b.jpg"),
    ]
    annotations, _ = coco_results(results, image_ids={"a.jpg": 1, "b.jpg": 2}, categories=GT["categories"])
    assert detection_map(GT, annotations, iou_type="segm")["mAP"] == pytest.approx(1.0)
    # Half of each mask: IoU 0.5 -> counted at the 0.5 threshold only.
    halves = copy.deepcopy(annotations)
    for a in halves:
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w / 2, y, x + w / 2, y + h, x, y + h]]
    result = detection_map(GT, halves, iou_type="segm")
    assert result["mAP50"] == pytest.approx(1.0)
    assert result["mAP75"] == pytest.approx(0.0)
    assert result["mAP"] == pytest.approx(0.1)


def test_detection_map_rejects_unknown_images_and_iou_types():
    with pytest.raises(InputError):
        detection_map(GT, [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(InputError):
        detection_map(GT, perfect_predictions(), iou_type="keypoints")


# ---------------------------------------------------------------------------------- referring boxes / masks


def test_box_iou():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert box_iou([10, 10, 0, 0], [0, 0, 10, 10]) == pytest.approx(1.0)  # corners in either order
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


def test_referring_accuracy():
    gt = [[0, 0, 10, 10]] * 4
    preds = [[0, 0, 10, 10], [5, 0, 15, 10], None, [0, 0, 10, 5]]  # IoU 1, 1/3, missing, 0.5
    assert referring_accuracy(preds, gt) == pytest.approx(2 / 4)
    assert referring_accuracy(preds, gt, threshold=0.3) == pytest.approx(3 / 4)
    with pytest.raises(InputError):
        referring_accuracy(preds[:2], gt)


def test_mask_iou_and_res_miou():
    size = (40, 30)
    a, b = square(0, 0, 10), square(5, 0, 10)
    assert mask_iou([a], [b], size) == pytest.approx(1 / 3)
    assert mask_iou(a, a, size) == pytest.approx(1.0)
    assert mask_iou({"polygons": [[a]], "labels": [""]}, [a], size) == pytest.approx(1.0)  # Florence-2 output
    assert mask_iou(None, [a], size) == 0.0
    mask = np.zeros((30, 40), dtype=bool)
    mask[0:10, 5:15] = True
    assert mask_iou(mask, [a], size) == pytest.approx(1 / 3)

    result = res_miou([[a], [a], None], [[b], [a], [square(0, 0, 20)]], [size, size, size])
    assert result["mIoU"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert result["oIoU"] == pytest.approx((50 + 100 + 0) / (150 + 100 + 400))
    assert result["n"] == 3


# ---------------------------------------------------------------------------------- OCR


def test_levenshtein_and_cer():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0
    assert character_error_rate(["kitten"], ["sitting"]) == pytest.approx(3 / 7)
    # Corpus-level: (3 + 0) / (7 + 5)
    assert character_error_rate(["kitten", "hello"], ["sitting", "hello"]) == pytest.approx(3 / 12)
    assert character_error_rate(["  hello   world "], ["hello world"]) == 0.0
    assert character_error_rate([None], ["abcd"]) == pytest.approx(1.0)


def test_ocr_exact_and_word_match():
    assert ocr_exact_match(["Hello  world\n", "foo"], ["Hello world", "bar"]) == pytest.approx(0.5)
    assert ocr_exact_match(["hello world"], ["Hello World"]) == 0.0
    assert ocr_exact_match(["hello world"], ["Hello World"], ignore_case=True) == 1.0

    # Reference words: "the cat the hat" (4) + "a b" (2) = 6. Multiset: "the" x1 of 2, "cat", "hat" -> 3; "b" -> 1.
    preds, gts = ["hat the cat dog", "b"], ["the cat the hat", "a b"]
    assert word_exact_match(preds, gts) == pytest.approx(4 / 6)
    # Ordered (longest common subsequence): "the cat" -> 2; "b" -> 1.
    assert word_exact_match(preds, gts, ordered=True) == pytest.approx(3 / 6)
    assert word_exact_match(["x"], [""]) == 0.0


# ---------------------------------------------------------------------------------- captions


REFS = {
    1: ["A man riding a horse on a beach.", "a person rides a horse along the shore"],
    2: ["Two dogs playing with a red ball in the grass.", "dogs play with a ball on a lawn"],
    3: ["A plate of pasta with tomato sauce on a table.", "a bowl of spaghetti on a wooden table"],
}


def test_caption_tokenize():
    assert caption_tokenize("A dog's ball, on the GRASS!") == "a dogs ball on the grass"


def test_caption_scores():
    identical = caption_scores({i: refs[0] for i, refs in REFS.items()}, REFS)
    unrelated = caption_scores({1: "a red car parked near a building", 2: "an airplane flying in the sky",
                                3: "a cat sleeping on a sofa"}, REFS)
    assert identical["CIDEr"] > unrelated["CIDEr"]
    assert identical["CIDEr"] > 1.0
    assert identical["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert identical["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert unrelated["BLEU-4"] < 0.01
    assert set(identical) == {"CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}
    missing = caption_scores({}, REFS)  # no predictions: empty captions
    assert missing["CIDEr"] == 0.0


def test_most_common_caption_baseline():
    train = ["a man riding a horse", "A man riding a horse.", "two dogs playing", "a plate of food"]
    result = most_common_caption_baseline(train, REFS)
    assert result["caption"] == "a man riding a horse"
    assert result["count"] == 2
    expected = caption_scores({i: "a man riding a horse" for i in REFS}, REFS)
    for key in ("CIDEr", "BLEU-1", "BLEU-4"):
        assert result[key] == pytest.approx(expected[key])
    assert 0.0 < result["BLEU-1"] < 1.0
    with pytest.raises(InputError):
        most_common_caption_baseline([], REFS)


# ---------------------------------------------------------------------------------- VQA / POPE / ChartQA


@pytest.mark.parametrize("answer, expected", [
    ("Two", "2"),
    ("a dog.", "dog"),
    ("isnt", "isn't"),
    ("The Three dogs!", "3 dogs"),
    ("yes, it is", "yes it is"),
    ("black-white", "black white"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("whats that", "what's that"),
    ("its", "its"),
    ("  None\n", "0"),
    ("I dont know", "i don't know"),
])
def test_vqa_normalize(answer, expected):
    assert vqa_normalize(answer) == expected


def _official_vqa_accuracy(pred, answers):
    """The official loop, written out: for each human answer, the others that equal the prediction."""
    accs = []
    for i in range(len(answers)):
        others = answers[:i] + answers[i + 1:]
        accs.append(min(1.0, sum(a == pred for a in others) / 3))
    return sum(accs) / len(accs)


def test_vqa_accuracy():
    answers = ["2"] * 2 + ["3"] * 8
    assert vqa_accuracy("two", answers) == pytest.approx(0.6)
    assert vqa_accuracy("2", answers) == pytest.approx(_official_vqa_accuracy("2", answers))
    three = ["dog"] * 3 + ["cat"] * 7
    assert vqa_accuracy("A dog.", three) == pytest.approx(0.9)
    assert vqa_accuracy("cat", three) == pytest.approx(1.0)
    assert vqa_accuracy("horse", three) == 0.0
    one = ["red"] + ["blue"] * 9
    assert vqa_accuracy("red", one) == pytest.approx(0.3)
    # Fewer than 10 answers: exact match with any of them.
    assert vqa_accuracy("the Dog", ["dog"]) == 1.0
    assert vqa_accuracy("cat", ["dog", "puppy"]) == 0.0
    with pytest.raises(InputError):
        vqa_accuracy("x", [])


def test_pope_metrics():
    preds = ["Yes", "yes, there is a dog.", "No", "no", "Yes", "There is not a cat.", True, False]
    labels = ["yes", "yes", "yes", "no", "no", "no", "yes", "no"]
    # tp: 0, 1, 6 = 3; fp: 4 = 1; fn: 2 = 1; tn: 3, 5, 7 = 3
    m = pope_metrics(preds, labels)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    assert m["yes_ratio"] == pytest.approx(4 / 8)
    assert m["n"] == 8
    none_yes = pope_metrics(["no", "no"], ["yes", "no"])
    assert none_yes["precision"] == 0.0 and none_yes["recall"] == 0.0 and none_yes["f1"] == 0.0


def test_relaxed_accuracy():
    assert relaxed_accuracy("104", "100") == 1.0
    assert relaxed_accuracy("106", "100") == 0.0
    assert relaxed_accuracy("95", 100) == 1.0
    assert relaxed_accuracy("12%", "0.12") == 1.0
    assert relaxed_accuracy("1,000", "1000") == 1.0
    assert relaxed_accuracy("Yes", "yes") == 1.0
    assert relaxed_accuracy("blue", "red") == 0.0
    assert relaxed_accuracy("0", "0") == 1.0
    assert relaxed_accuracy("0.01", "0") == 0.0
    assert relaxed_accuracy(None, "5") == 0.0


# ---------------------------------------------------------------------------------- table


def test_format_table():
    rows = [{"task": "OD", "mAP": 0.5, "n": 10}, {"task": "caption", "mAP": None, "n": 1234}]
    text = format_table(rows, ["task", ("mAP", "mAP@.5:.95"), "n"])
    lines = text.split("\n")
    assert lines[0] == "task     mAP@.5:.95     n"
    assert lines[1] == "-------  ----------  ----"
    assert lines[2] == "OD           0.5000    10"
    assert lines[3] == "caption" + " " * 14 + "1234"
    assert format_table(rows).split("\n")[0].split() == ["task", "mAP", "n"]
