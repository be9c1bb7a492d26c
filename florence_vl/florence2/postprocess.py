"""Generated text -> the published output structure of each task, never raising on malformed text.

The rules follow the published Florence-2 processor: a phrase is the text before a run of <loc_k>
tokens; a box is 4 consecutive locs, a quad 8, a polygon an even run (several joined by <sep>, optionally
wrapped in <poly>..</poly>); coordinates are dequantized to pixels of the original image. Where the
published parser would return garbage for malformed text (odd counts, too few locs) we drop the broken
piece instead. Two deliberate differences, both documented in docs/florence2.md: text answers have their
<loc_k> tokens removed, and polygons with fewer than 3 points are dropped (COCO cannot use them).

Scores: when the per-token log-probabilities of the generated sequence are given, every box and polygon gets a
score (`box_score`): "label_x_loc" (default) = P(label) x P(locations), each the geometric mean of its tokens'
probabilities, where the label is the phrase before the run (shared by every box of the run); "loc" = P(locations)
alone, the published processor's 'avg_loc_scores'; "label" = P(label) alone, its 'avg_cat_name_scores'. A box with
no phrase (<REGION_PROPOSAL>) is scored by its locations in every mode. Ranking detections by label x loc is what
COCO mAP rewards: on the nano test split it raised OD mAP50 0.277 -> 0.327 over "loc" (docs/florence2.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import InputError
from .coordinates import LOC_RE, dequantize_points, parse_loc_bins
from .special_tokens import strip_special_tokens
from .tasks import Task, get_task

BOX_SCORES = ("label_x_loc", "loc", "label")  # see the module docstring
DEFAULT_BOX_SCORE = BOX_SCORES[0]

# Words a grounding phrase must not be on its own: the published processor drops these pronouns and
# fillers, which the model sometimes grounds to the whole image.
BANNED_GROUNDING_PHRASES = frozenset(
    "it i me mine you your yours he him his she her hers they them their theirs one oneself we us our ours "
    "its myself yourself himself herself itself ourselves yourselves themselves this that these those who "
    "whom whose which what all another any anybody anyone anything each everybody everyone everything few "
    "many nobody none several some somebody someone something image images the a an lots".split()
) | {"each other", "one another", "the image", "a group", "other objects", "a set"}

_WRAPPERS = ("<s>", "</s>", "<pad>")
# Runs of location tokens, found on their own: a pattern that also matched the text before each run
# (phrase + run in one regex) retried from every character and took quadratic time on long text without
# locs (4,000 characters: about a second per task). Each parser below works in one linear pass.
_LOC_RUN_RE = re.compile(r"(?:<loc_\d+>)+")
_POLY_RUN_RE = re.compile(r"(?:<loc_\d+>|<sep>|<poly>|</poly>)+")
_POLY_RE = re.compile(r"<poly>(.*?)</poly>")
_LOC8 = 8


@dataclass
class Decoded:
    """Generated text and, per generated token, its character span in `text` and its log-probability."""

    text: str
    spans: list[tuple[int, int]] | None = None
    logprobs: list[float] | None = None

    def score(self, start: int, end: int) -> float | None:
        """exp(mean log-prob) of the tokens overlapping text[start:end]; None without scores."""
        if self.spans is None or self.logprobs is None:
            return None
        picked = [lp for (s, e), lp in zip(self.spans, self.logprobs) if s < end and e > start and e > s]
        if not picked:
            return None
        return float(math.exp(sum(picked) / len(picked)))


def decode_with_spans(tokenizer, token_ids: Sequence[int], logprobs: Sequence[float] | None = None) -> Decoded:
    """Token ids -> text with each token's span, dropping <s>, </s> and <pad> (they get empty spans)."""
    tokens = tokenizer.convert_ids_to_tokens(list(token_ids))
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    pieces, spans, pos = [], [], 0
    for token in tokens:
        if token is None or token in _WRAPPERS:
            piece = ""
        elif token in special:
            piece = token
        else:
            piece = tokenizer.convert_tokens_to_string([token])
        pieces.append(piece)
        spans.append((pos, pos + len(piece)))
        pos += len(piece)
    return Decoded("".join(pieces), spans, None if logprobs is None else [float(x) for x in logprobs])


def _clean(text: str) -> str:
    for wrapper in _WRAPPERS:
        text = text.replace(wrapper, "")
    return text


def _phrase(raw: str) -> str:
    text = raw.replace("<ground>", "").replace("<obj>", "").strip()
    return text.encode("ascii", "ignore").decode("ascii").strip()


def _boxes_in_run(decoded: Decoded, locs: str, offset: int, size) -> list[tuple[list[float], float | None]]:
    """Consecutive groups of 4 locs in a run -> (box, score); a trailing partial group is dropped."""
    matches = list(LOC_RE.finditer(locs))
    out = []
    for i in range(0, len(matches) - 3, 4):
        group = matches[i:i + 4]
        bins = [int(m.group(1)) for m in group]
        score = decoded.score(offset + group[0].start(), offset + group[-1].end())
        out.append((dequantize_points(bins, size), score))
    return out


def _runs_with_phrases(text: str, run_re: re.Pattern):
    """(phrase text, run match) for each run: the phrase is the text between the previous run and this
    one, after its last "<" (as the published pattern `([^<]*)(run)` reads it)."""
    previous_end = 0
    for m in run_re.finditer(text):
        before = text[previous_end:m.start()]
        yield before[before.rfind("<") + 1:], m
        previous_end = m.end()


def check_box_score(box_score: str) -> None:
    if box_score not in BOX_SCORES:
        raise InputError(f"unknown box score {box_score!r}; choose one of {', '.join(BOX_SCORES)}")


def _instance_score(box_score: str, label_score: float | None, loc_score: float | None) -> float | None:
    """One instance's score under `box_score` (None without token scores); no label tokens -> the locations'."""
    if loc_score is None or label_score is None or box_score == "loc":
        return loc_score
    return label_score if box_score == "label" else label_score * loc_score


def parse_boxes(decoded: Decoded, size, *, allow_empty_phrase: bool, banned: frozenset = frozenset(),
                box_score: str = DEFAULT_BOX_SCORE) -> dict:
    bboxes, labels, scores = [], [], []
    for phrase, m in _runs_with_phrases(decoded.text, _LOC_RUN_RE):
        label = _phrase(phrase)
        if not label and not allow_empty_phrase:
            continue
        if label.lower() in banned:
            continue
        label_score = decoded.score(m.start() - len(phrase), m.start())
        for box, score in _boxes_in_run(decoded, m.group(0), m.start(), size):
            bboxes.append(box)
            labels.append(label)
            scores.append(_instance_score(box_score, label_score, score))
    out: dict[str, Any] = {"bboxes": bboxes, "labels": labels}
    if bboxes and all(s is not None for s in scores):
        out["scores"] = scores
    return out


def parse_polygons(decoded: Decoded, size, *, allow_empty_phrase: bool, box_score: str = DEFAULT_BOX_SCORE) -> dict:
    polygons, labels, scores = [], [], []
    for phrase, m in _runs_with_phrases(decoded.text, _POLY_RUN_RE):
        label = _phrase(phrase)
        if not label and not allow_empty_phrase:
            continue
        label_score = decoded.score(m.start() - len(phrase), m.start())
        run, offset = m.group(0), m.start()
        if "<poly>" in run and "</poly>" in run:
            instances = [(p.group(1), offset + p.start(1)) for p in _POLY_RE.finditer(run)]
        else:
            instances = [(run.replace("<poly>", " " * 6).replace("</poly>", " " * 7), offset)]
        for body, body_offset in instances:
            instance, instance_scores, cursor = [], [], 0
            for part in body.split("<sep>"):
                bins = parse_loc_bins(part)
                if len(bins) % 2:
                    bins = bins[:-1]
                if len(bins) >= 6:
                    instance.append(dequantize_points(bins, size))
                    instance_scores.append(decoded.score(body_offset + cursor, body_offset + cursor + len(part)))
                cursor += len(part) + len("<sep>")
            if instance:
                polygons.append(instance)
                labels.append(label)
                valid = [s for s in instance_scores if s is not None]
                scores.append(_instance_score(box_score, label_score, sum(valid) / len(valid) if valid else None))
    out: dict[str, Any] = {"polygons": polygons, "labels": labels}
    if polygons and all(s is not None for s in scores):
        out["scores"] = scores
    return out


def parse_ocr(decoded: Decoded, size) -> dict:
    """Text then 8 locs is one line; the rest of a longer run has no text of its own and is dropped, as is
    a run of fewer than 8 locs (its text is not carried over to the next run)."""
    quads, labels = [], []
    previous_end = 0
    for m in _LOC_RUN_RE.finditer(decoded.text):
        label = decoded.text[previous_end:m.start()].strip()
        previous_end = m.end()
        bins = parse_loc_bins(m.group(0))
        if not label or len(bins) < _LOC8:
            continue
        quads.append(dequantize_points(bins[:_LOC8], size))
        labels.append(label)
    return {"quad_boxes": quads, "labels": labels}


def parse_output(task: Task | str, generated: str | Decoded, image_size: tuple[int, int], *,
                 box_score: str = DEFAULT_BOX_SCORE) -> Any:
    """The structured output of `task` from its generated text (or a Decoded with token scores, which
    `box_score` turns into each box's and polygon's score: see the module docstring)."""
    check_box_score(box_score)
    task = get_task(task) if isinstance(task, str) else task
    decoded = generated if isinstance(generated, Decoded) else Decoded(_clean(generated))
    kind = task.parse
    if kind == "pure_text":
        return strip_special_tokens(decoded.text)
    if kind == "description_with_bboxes":
        return parse_boxes(decoded, image_size, allow_empty_phrase=False, box_score=box_score)
    if kind == "bboxes":
        return parse_boxes(decoded, image_size, allow_empty_phrase=True, box_score=box_score)
    if kind == "phrase_grounding":
        return parse_boxes(decoded, image_size, allow_empty_phrase=False, banned=BANNED_GROUNDING_PHRASES,
                           box_score=box_score)
    if kind == "polygons":
        return parse_polygons(decoded, image_size, allow_empty_phrase=True, box_score=box_score)
    if kind == "ocr":
        return parse_ocr(decoded, image_size)
    if kind == "description_with_bboxes_or_polygons":
        if "<poly>" in decoded.text:
            polys = parse_polygons(decoded, image_size, allow_empty_phrase=False, box_score=box_score)
            return {"bboxes": [], "bboxes_labels": [], "polygons": polys["polygons"],
                    "polygons_labels": polys["labels"]}
        boxes = parse_boxes(decoded, image_size, allow_empty_phrase=False, box_score=box_score)
        out = {"bboxes": boxes["bboxes"], "bboxes_labels": boxes["labels"], "polygons": [], "polygons_labels": []}
        if "scores" in boxes:
            out["scores"] = boxes["scores"]
        return out
    raise ValueError(f"unknown parse kind {kind!r}")
