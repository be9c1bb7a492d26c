"""Evaluation metrics for the Florence-2 tasks: detection / segmentation mAP, referring accuracy, RES IoU,
OCR, captioning, VQA-style answers, POPE, ChartQA, and a plain text table for printing.

Conventions shared by every function here:

* Boxes are [x0, y0, x1, y1] and polygons flat [x0, y0, x1, y1, ...] lists, in pixels of the original
  image (the frame `TaskResult.output` uses); image sizes are (width, height) like `TaskResult.image_size`.
* A corpus-level ratio whose denominator is empty (no samples, no reference words, ...) is 0.0.
* Detection mAP goes through pycocotools' COCOeval; captions through pycocoevalcap's pure-Python BLEU and
  CIDEr scorers (its Java parts, PTBTokenizer / METEOR / SPICE, are not used: see `caption_tokenize`).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections import Counter
from itertools import combinations
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import InputError

__all__ = [
    "detection_map", "box_iou", "referring_accuracy", "mask_iou", "res_miou",
    "ocr_exact_match", "word_exact_match", "levenshtein", "character_error_rate",
    "caption_tokenize", "caption_scores", "most_common_caption_baseline",
    "vqa_normalize", "vqa_accuracy", "pope_metrics", "relaxed_accuracy", "format_table",
]


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


# ============================================================================ detection / segmentation mAP


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress ("creating index...", the summary table) to stdout; swallow it."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _flat_polygons(obj: Any) -> list[list[float]]:
    """Any nesting of polygons (one flat polygon, an instance's list of them, a list of instances, a
    Florence-2 output dict with "polygons") -> flat coordinate lists of at least 3 points."""
    if obj is None:
        return []
    if isinstance(obj, Mapping):
        return _flat_polygons(obj.get("polygons"))
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if not isinstance(obj, (list, tuple)) or not obj:
        return []
    if isinstance(obj[0], (int, float, np.integer, np.floating)):
        values = [float(v) for v in obj]
        values = values[: len(values) // 2 * 2]
        if len(values) >= 6 and all(math.isfinite(v) for v in values):
            return [values]
        return []
    out: list[list[float]] = []
    for item in obj:
        out.extend(_flat_polygons(item))
    return out


def _empty_rle(height: int, width: int) -> dict:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))


def _to_rle(segmentation: Any, height: int, width: int) -> dict:
    """A COCO segmentation (polygons, RLE, uncompressed RLE), a binary mask array or Florence-2 polygons
    -> one compressed RLE of the given image size (several polygons are merged into one mask)."""
    from pycocotools import mask as mask_utils

    height, width = int(height), int(width)
    if isinstance(segmentation, np.ndarray) and segmentation.ndim == 2:
        if segmentation.shape != (height, width):
            raise InputError(f"mask of shape {segmentation.shape} for an image of {width}x{height}")
        return mask_utils.encode(np.asfortranarray(segmentation.astype(np.uint8)))
    if isinstance(segmentation, Mapping) and "counts" in segmentation:
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            return mask_utils.frPyObjects(dict(segmentation), height, width)
        return dict(segmentation)
    polygons = _flat_polygons(segmentation)
    if not polygons:
        return _empty_rle(height, width)
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))


def _xywh_from_xyxy(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    return [x0, y0, x1 - x0, y1 - y0]


def _prepare_annotations(anns: Iterable[Mapping], images: Mapping[Any, Mapping], iou_type: str,
                         what: str, is_gt: bool) -> list[dict]:
    """Copies of `anns` with what COCOeval reads filled in: ids 1..N (COCOeval treats id 0 as "no match"),
    iscrowd, area, bbox, and for segm an RLE segmentation."""
    from pycocotools import mask as mask_utils

    out = []
    for i, ann in enumerate(anns):
        ann = dict(ann)
        if "image_id" not in ann or "category_id" not in ann:
            raise InputError(f"{what} annotation {i} needs 'image_id' and 'category_id'")
        image = images.get(ann["image_id"])
        if image is None:
            raise InputError(f"{what} annotation {i} refers to image_id {ann['image_id']!r}, "
                             "which is not among the ground truth's images")
        ann["id"] = i + 1
        ann["iscrowd"] = int(ann.get("iscrowd", 0)) if is_gt else 0
        if not is_gt:
            ann["score"] = float(ann.get("score", 1.0))
        has_seg = ann.get("segmentation") not in (None, [], {})
        if iou_type == "segm" or (has_seg and "bbox" not in ann):
            if not has_seg:
                raise InputError(f"{what} annotation {i} has no 'segmentation' ({iou_type} evaluation)")
            if "height" not in image or "width" not in image:
                raise InputError(f"image {image['id']!r} needs 'height' and 'width' to rasterise segmentations")
            rle = _to_rle(ann["segmentation"], image["height"], image["width"])
            if iou_type == "segm":
                ann["segmentation"] = rle
                if "area" not in ann or not is_gt:
                    ann["area"] = float(mask_utils.area(rle))
            if "bbox" not in ann:
                ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
        bbox = ann.get("bbox")
        if bbox is None or len(bbox) != 4:
            raise InputError(f"{what} annotation {i} has no [x, y, w, h] 'bbox'")
        ann["bbox"] = [float(v) for v in bbox]
        if "area" not in ann or (iou_type == "bbox" and not is_gt):
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        out.append(ann)
    return out


def detection_map(gt_coco: Mapping, predictions: Sequence[Mapping], iou_type: str = "bbox") -> dict:
    """COCO mAP of `predictions` (a COCO *results* list, e.g. `export.coco_results(...)[0]`) against the
    ground truth `gt_coco` (an in-memory COCO dataset dict: "images", "annotations", "categories").

    iou_type "bbox" compares [x, y, w, h] boxes; "segm" compares masks (polygons or RLE; images then need
    "height" and "width"). Missing ids / iscrowd / area / bbox are filled in on copies; the inputs are not
    changed. Returns {"mAP": AP@[.5:.95], "mAP50", "mAP75", "n_images", "n_predictions"}; an empty
    prediction list scores 0.0, and a value COCOeval leaves undefined (no ground-truth instance at all)
    is NaN. A prediction for an image not in the ground truth is an InputError.
    """
    if iou_type not in ("bbox", "segm"):
        raise InputError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
    images = list(gt_coco.get("images", []))
    categories = list(gt_coco.get("categories", []))
    by_id = {img["id"]: img for img in images}
    predictions = list(predictions)
    answer = {"mAP": 0.0, "mAP50": 0.0, "mAP75": 0.0, "n_images": len(images), "n_predictions": len(predictions)}
    gt_anns = _prepare_annotations(gt_coco.get("annotations", []), by_id, iou_type, "ground-truth", True)
    dt_anns = _prepare_annotations(predictions, by_id, iou_type, "prediction", False)
    if not dt_anns:
        return answer

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "categories": categories, "annotations": gt_anns}
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {"images": images, "categories": categories, "annotations": dt_anns}
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) if s >= 0 else math.nan for s in evaluator.stats[:3]]
    answer.update(mAP=stats[0], mAP50=stats[1], mAP75=stats[2])
    return answer


# ============================================================================ referring boxes and masks


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two [x0, y0, x1, y1] boxes (corners in either order); 0.0 when the union is empty."""
    ax0, ax1 = sorted((float(a[0]), float(a[2])))
    ay0, ay1 = sorted((float(a[1]), float(a[3])))
    bx0, bx1 = sorted((float(b[0]), float(b[2])))
    by0, by1 = sorted((float(b[1]), float(b[3])))
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def referring_accuracy(pred_boxes: Sequence[Sequence[float] | None], gt_boxes: Sequence[Sequence[float]],
                       threshold: float = 0.5) -> float:
    """Fraction of samples whose predicted box has IoU >= `threshold` with the ground-truth box (the
    RefCOCO "Acc@0.5" metric). A missing prediction (None or an empty box) counts as wrong."""
    if len(pred_boxes) != len(gt_boxes):
        raise InputError(f"{len(pred_boxes)} predicted boxes for {len(gt_boxes)} ground-truth boxes")
    hits = sum(1 for p, g in zip(pred_boxes, gt_boxes)
               if p is not None and len(p) == 4 and box_iou(p, g) >= threshold)
    return _ratio(hits, len(gt_boxes))


def _intersection_union(pred: Any, gt: Any, image_size: Sequence[int]) -> tuple[float, float]:
    from pycocotools import mask as mask_utils

    width, height = int(image_size[0]), int(image_size[1])
    gt_rle = _to_rle(gt, height, width)
    gt_area = float(mask_utils.area(gt_rle))
    if pred is None:
        return 0.0, gt_area
    pred_rle = _to_rle(pred, height, width)
    inter = float(mask_utils.area(mask_utils.merge([pred_rle, gt_rle], intersect=True)))
    return inter, float(mask_utils.area(pred_rle)) + gt_area - inter


def mask_iou(pred: Any, gt: Any, image_size: Sequence[int]) -> float:
    """IoU of two masks given as polygons (one flat polygon, a list of them, a list of instances, or a
    Florence-2 output dict with "polygons"; all merged into one mask), COCO RLE or a binary array, in an
    image of `image_size` = (width, height). Rasterised with pycocotools. A missing prediction (None or no
    valid polygon) has IoU 0; two empty masks agree perfectly (1.0)."""
    inter, union = _intersection_union(pred, gt, image_size)
    return inter / union if union > 0 else 1.0


def res_miou(pred_polygons: Sequence[Any], gt_polygons: Sequence[Any],
             image_sizes: Sequence[Sequence[int]]) -> dict:
    """Referring-segmentation IoU over a corpus: {"mIoU": mean of per-sample IoUs, "oIoU": overall
    (cumulative) IoU = total intersection / total union, "n"}. Inputs as in `mask_iou`, one per sample;
    a missing prediction is IoU 0 (its whole ground-truth area counts towards the union)."""
    if not len(pred_polygons) == len(gt_polygons) == len(image_sizes):
        raise InputError(f"{len(pred_polygons)} predictions, {len(gt_polygons)} ground truths and "
                         f"{len(image_sizes)} image sizes: need one of each per sample")
    ious, total_inter, total_union = [], 0.0, 0.0
    for pred, gt, size in zip(pred_polygons, gt_polygons, image_sizes):
        inter, union = _intersection_union(pred, gt, size)
        ious.append(inter / union if union > 0 else 1.0)
        total_inter += inter
        total_union += union
    return {"mIoU": _ratio(sum(ious), len(ious)), "oIoU": _ratio(total_inter, total_union), "n": len(ious)}


# ============================================================================ OCR


def _ws(text: str | None) -> str:
    return " ".join((text or "").split())


def _check_pairs(preds: Sequence, gts: Sequence) -> None:
    if len(preds) != len(gts):
        raise InputError(f"{len(preds)} predictions for {len(gts)} references")


def ocr_exact_match(preds: Sequence[str | None], gts: Sequence[str], ignore_case: bool = False) -> float:
    """Fraction of samples whose whole prediction equals the reference after whitespace normalisation
    (runs of whitespace -> one space, ends stripped); case-sensitive unless `ignore_case`. None = ""."""
    _check_pairs(preds, gts)
    fold = (lambda s: s.lower()) if ignore_case else (lambda s: s)
    return _ratio(sum(fold(_ws(p)) == fold(_ws(g)) for p, g in zip(preds, gts)), len(gts))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def word_exact_match(preds: Sequence[str | None], gts: Sequence[str], ordered: bool = False,
                     ignore_case: bool = False) -> float:
    """Word-level recall of the references, micro-averaged over the corpus:
    sum over samples of matched reference words / total number of reference words.

    Words are whitespace-separated tokens compared exactly (case-sensitive unless `ignore_case`). By default
    (`ordered=False`) matching is by multiset: each reference word is matched at most once by an equal
    predicted word, so a word the reference repeats must be predicted as many times, but word order is
    ignored (matched = size of the multiset intersection). With `ordered=True` matches must also keep the
    reference order (matched = length of the longest common word subsequence). None = "".
    """
    _check_pairs(preds, gts)
    matched = total = 0
    for p, g in zip(preds, gts):
        p_words, g_words = _ws(p).split(), _ws(g).split()
        if ignore_case:
            p_words, g_words = [w.lower() for w in p_words], [w.lower() for w in g_words]
        total += len(g_words)
        if ordered:
            matched += _lcs_length(g_words, p_words)
        else:
            matched += sum((Counter(g_words) & Counter(p_words)).values())
    return _ratio(matched, total)


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def character_error_rate(preds: Sequence[str | None], gts: Sequence[str], normalize_whitespace: bool = True) -> float:
    """Corpus CER: sum of character edit distances / sum of reference lengths (0.0 if all references are
    empty). Whitespace is normalised first unless `normalize_whitespace=False`. None = ""."""
    _check_pairs(preds, gts)
    norm = _ws if normalize_whitespace else (lambda s: s or "")
    distance = length = 0
    for p, g in zip(preds, gts):
        p, g = norm(p), norm(g)
        distance += levenshtein(p, g)
        length += len(g)
    return _ratio(distance, length)


# ============================================================================ captions

_CAPTION_PUNCT = re.compile(r"[^\w\s]|_")


def caption_tokenize(text: str | None) -> str:
    """The tokenisation the caption metrics use: lower-case, drop apostrophes ("dog's" -> "dogs"), every
    other punctuation character becomes a space, then whitespace-split and re-joined with single spaces.

    It stands in for coco-caption's PTBTokenizer (a Java program, not used here), so scores can differ
    slightly from the official coco-caption numbers (mostly around clitics such as "'s" and hyphens).
    """
    text = (text or "").lower().replace("'", "").replace("\u2019", "")
    return " ".join(_CAPTION_PUNCT.sub(" ", text).split())


def caption_scores(preds: Mapping[Any, str], refs: Mapping[Any, Sequence[str]]) -> dict:
    """{"CIDEr", "BLEU-1".."BLEU-4"} of one predicted caption per image against its reference captions,
    with pycocoevalcap's Bleu (corpus BLEU, "closest" reference length) and Cider scorers (which compute
    CIDEr-D: IDF from this set's references, length penalty, clipping, x10) on `caption_tokenize`d text.

    The evaluated images are the keys of `refs`; an image without a prediction is scored with an empty
    caption; predictions for images not in `refs` are ignored. CIDEr's IDF comes from the evaluated set,
    so it needs several images to mean anything (with one image every n-gram has IDF 0).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    ids = list(refs)
    scores = {"CIDEr": 0.0, "BLEU-1": 0.0, "BLEU-2": 0.0, "BLEU-3": 0.0, "BLEU-4": 0.0}
    if not ids:
        return scores
    gts, res = {}, {}
    for i in ids:
        references = [caption_tokenize(r) for r in refs[i]]
        if not references:
            raise InputError(f"image {i!r} has no reference captions")
        gts[i] = references
        res[i] = [caption_tokenize(preds.get(i))]
    with _quiet():
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    scores["CIDEr"] = float(cider)
    for n in range(4):
        scores[f"BLEU-{n + 1}"] = float(bleu[n])
    return scores


def most_common_caption_baseline(train_captions: Iterable[str], refs: Mapping[Any, Sequence[str]]) -> dict:
    """The trivial baseline: the most frequent training caption (counted after `caption_tokenize`; ties go
    to the one seen first) predicted for every image of `refs`. Returns its `caption_scores` plus
    "caption" (the first training spelling of that caption) and "count" (its number of occurrences)."""
    counts: Counter[str] = Counter()
    spelling: dict[str, str] = {}
    for caption in train_captions:
        key = caption_tokenize(caption)
        if key:
            counts[key] += 1
            spelling.setdefault(key, caption)
    if not counts:
        raise InputError("no (non-empty) training captions to pick the most common one from")
    key, count = counts.most_common(1)[0]
    caption = spelling[key]
    scores = caption_scores({i: caption for i in refs}, refs)
    return {"caption": caption, "count": count, **scores}


# ============================================================================ VQA, POPE, ChartQA

# The VQAv2 answer normalisation (the rules of the official evaluation script, VQA/PythonEvaluationTools):
# punctuation handling, number words -> digits, articles dropped, apostrophe-less contractions restored.
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_VQA_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_VQA_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("3.5" keeps its point)
_VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he'll he's how'd how'll how's i'd i'd've i'll i'm i've isn't it'd it'd've it'll let's ma'am
mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't she'd she'd've she'll
she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll that's there'd there'd've
there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll
what're what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're
why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()
# Spellings with apostrophes left out that are ordinary words themselves, so they stay as they are.
_NOT_CONTRACTIONS = {"hell", "ill", "shell", "shed", "wed", "well", "were", "its", "id", "lets", "whore"}


def _contraction_table() -> dict[str, str]:
    """Every spelling of each contraction with some or all of its apostrophes left out -> the canonical
    spelling ("isnt" -> "isn't", "couldntve" and "couldnt've" -> "couldn't've")."""
    table = {}
    for canonical in _CONTRACTIONS:
        spots = [i for i, ch in enumerate(canonical) if ch == "'"]
        for k in range(1, len(spots) + 1):
            for drop in combinations(spots, k):
                variant = "".join(ch for i, ch in enumerate(canonical) if i not in drop)
                if variant not in _NOT_CONTRACTIONS:
                    table.setdefault(variant, canonical)
    return table


_VQA_CONTRACTIONS = _contraction_table()


def vqa_normalize(answer: str | None) -> str:
    """Normalise an answer the way the official VQAv2 evaluation does before comparing:

    1. newlines / tabs -> spaces, strip, lower-case;
    2. punctuation (; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !): if any punctuation mark touches a space
       or the text has a digit,digit comma, each mark is deleted ("1,000" -> "1000", "yes, it is" ->
       "yes it is"), otherwise replaced by a space ("black-white" -> "black white");
    3. periods not followed by a digit are deleted ("dog." -> "dog", "3.5" stays);
    4. per word: number words zero..ten (and "none") -> digits, articles a/an/the dropped, contractions
       written without apostrophes restored ("isnt" -> "isn't", "whats" -> "what's").

    "Two" -> "2", "a dog." -> "dog". The contraction table is generated from a list of canonical
    contractions (every apostrophe-less variant) rather than copied from the official script, and leaves
    alone spellings that are words themselves ("its", "well", "were", "ill", ...).
    """
    text = (answer or "").replace("\n", " ").replace("\t", " ").strip().lower()
    delete = _VQA_DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _VQA_PUNCT:
        if delete or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _VQA_PERIOD.sub("", out)
    words = []
    for word in out.split():
        word = _VQA_NUMBERS.get(word, word)
        if word in _VQA_ARTICLES:
            continue
        words.append(_VQA_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(pred: str | None, gt_answers: Sequence[str]) -> float:
    """VQA accuracy of one predicted answer, both sides `vqa_normalize`d.

    With 10 or more human answers (VQAv2, TextVQA, VizWiz, OK-VQA): the official metric, min(#humans
    agreeing / 3, 1) averaged over the leave-one-out subsets (each of the 10 choose 9 sets of the other
    answers), e.g. 2 of 10 agreeing -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6, 3 of 10 -> 0.9, 4 or more -> 1.0.
    With fewer answers: 1.0 if the prediction equals any of them (exact match), else 0.0.

    One difference from the official script: it normalises (steps 2-4 of `vqa_normalize`) only when the
    human answers are not all identical; here both sides are always normalised, so a prediction "two"
    for ten answers "2" scores 1.0 rather than 0.0.
    """
    answers = [vqa_normalize(a) for a in gt_answers]
    if not answers:
        raise InputError("vqa_accuracy needs at least one ground-truth answer")
    p = vqa_normalize(pred)
    if len(answers) < 10:
        return 1.0 if p in answers else 0.0
    matches = [a == p for a in answers]
    agreeing = sum(matches)
    # Leaving out answer i leaves `agreeing - matches[i]` agreeing answers among the others.
    return sum(min(1.0, (agreeing - m) / 3.0) for m in matches) / len(answers)


def _yes_no(value: Any) -> bool:
    """A POPE answer as yes (True) / no (False): bools as they are; text is "no" when its first sentence
    has the word "no" or "not" (the rule of the POPE evaluation script), otherwise "yes"."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value or "").strip().lower()
    first = text.split(".")[0].replace(",", " ")
    words = re.findall(r"[a-z']+", first)
    return not ("no" in words or "not" in words)


def pope_metrics(preds: Sequence[Any], labels: Sequence[Any]) -> dict:
    """POPE yes/no hallucination metrics with "yes" as the positive class: {"accuracy", "precision",
    "recall", "f1", "yes_ratio" (share of predictions that are yes), "n"}. Predictions and labels are bools
    or free text (read by `_yes_no`: "no"/"not" in the first sentence means no, anything else yes)."""
    _check_pairs(preds, labels)
    tp = fp = tn = fn = 0
    for p, y in zip(preds, labels):
        p, y = _yes_no(p), _yes_no(y)
        if p and y:
            tp += 1
        elif p:
            fp += 1
        elif y:
            fn += 1
        else:
            tn += 1
    n = tp + fp + tn + fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"accuracy": _ratio(tp + tn, n), "precision": precision, "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall), "yes_ratio": _ratio(tp + fp, n), "n": n}


def _to_number(text: str) -> float | None:
    text = text.strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # thousands separators: "1,234" -> "1234"
    try:
        if text.endswith("%"):
            return float(text[:-1].strip()) / 100.0
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def relaxed_accuracy(pred: str | float | None, gt: str | float, tolerance: float = 0.05) -> float:
    """ChartQA relaxed accuracy of one answer: 1.0 if both parse as numbers (a trailing "%" divides by 100,
    thousands commas are dropped) and |pred - gt| / |gt| <= tolerance; otherwise (either side not a
    number, or gt == 0) 1.0 on a case-insensitive exact match of the stripped strings; else 0.0."""
    p, g = str("" if pred is None else pred).strip(), str(gt).strip()
    p_num, g_num = _to_number(p), _to_number(g)
    if p_num is not None and g_num:
        return 1.0 if abs(p_num - g_num) / abs(g_num) <= tolerance else 0.0
    return 1.0 if p.lower() == g.lower() else 0.0


# ============================================================================ printing


def _cell(value: Any, float_format: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return float_format.format(float(value))
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str | tuple[str, str]] | None = None,
                 float_format: str = "{:.4f}") -> str:
    """A plain aligned text table: a header line, a line of dashes, one line per row.

    `columns` are row keys, or (key, header) pairs; by default every key in order of first appearance.
    Floats are written with `float_format`, missing values as blanks; numeric columns are right-aligned,
    others left-aligned; columns are separated by two spaces and lines carry no trailing spaces.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    keys = [c[0] if isinstance(c, tuple) else c for c in columns]
    headers = [str(c[1]) if isinstance(c, tuple) else str(c) for c in columns]
    cells = [[_cell(row.get(k), float_format) for k in keys] for row in rows]
    numeric = [all(isinstance(row.get(k), (int, float, np.number)) and not isinstance(row.get(k), bool)
                   for row in rows if row.get(k) is not None) and any(row.get(k) is not None for row in rows)
               for k in keys]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in cells])
