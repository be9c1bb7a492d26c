"""Parsing every task's output. Inputs are written by hand in the published format; expected values are
computed by hand with pixel = (bin + 0.5) * side / 1000 on a 1000x500 image (x: +0.5, y: bin/2 + 0.25)."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from florence_vl.errors import InputError
from florence_vl.florence2.postprocess import Decoded, decode_with_spans, parse_output, parse_polygons
from florence_vl.florence2.tasks import TASKS

S = (1000, 500)


def test_od_boxes_labels_and_repeated_phrase():
    text = "</s><s>circle<loc_100><loc_200><loc_299><loc_399>square<loc_0><loc_0><loc_999><loc_999>" \
           "<loc_5><loc_5><loc_6><loc_6></s>"
    assert parse_output("<OD>", text, S) == {
        "bboxes": [[100.5, 100.25, 299.5, 199.75], [0.5, 0.25, 999.5, 499.75], [5.5, 2.75, 6.5, 3.25]],
        "labels": ["circle", "square", "square"],
    }


def test_dense_region_caption_keeps_the_description():
    text = "a large red circle<loc_10><loc_20><loc_30><loc_40>"
    assert parse_output("<DENSE_REGION_CAPTION>", text, S) == {
        "bboxes": [[10.5, 10.25, 30.5, 20.25]], "labels": ["a large red circle"]}


def test_region_proposal_has_empty_labels():
    assert parse_output("<REGION_PROPOSAL>", "<loc_1><loc_2><loc_3><loc_4><loc_9><loc_8><loc_7><loc_6>", S) == {
        "bboxes": [[1.5, 1.25, 3.5, 2.25], [9.5, 4.25, 7.5, 3.25]], "labels": ["", ""]}


def test_phrase_grounding_drops_banned_phrases():
    text = "A red circle<loc_1><loc_2><loc_3><loc_4>it<loc_5><loc_6><loc_7><loc_8>" \
           "the blue square<loc_11><loc_12><loc_13><loc_14><loc_21><loc_22><loc_23><loc_24>"
    assert parse_output("<CAPTION_TO_PHRASE_GROUNDING>", text, S) == {
        "bboxes": [[1.5, 1.25, 3.5, 2.25], [11.5, 6.25, 13.5, 7.25], [21.5, 11.25, 23.5, 12.25]],
        "labels": ["A red circle", "the blue square", "the blue square"]}


def test_polygons_with_sep_and_odd_count():
    text = "<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><sep><loc_7><loc_8><loc_9><loc_10><loc_11><loc_12><loc_13>"
    out = parse_output("<REFERRING_EXPRESSION_SEGMENTATION>", text, S)
    assert out == {"polygons": [[[1.5, 1.25, 3.5, 2.25, 5.5, 3.25], [7.5, 4.25, 9.5, 5.25, 11.5, 6.25]]],
                   "labels": [""]}


def test_polygons_in_poly_wrappers_drop_degenerate_ones():
    text = "<poly><loc_1><loc_2><loc_3><loc_4><loc_5><loc_6></poly><poly><loc_1><loc_2></poly>"
    assert parse_output("<REGION_TO_SEGMENTATION>", text, S) == {
        "polygons": [[[1.5, 1.25, 3.5, 2.25, 5.5, 3.25]]], "labels": [""]}


def test_ocr_with_region_quads():
    text = "</s>HELLO<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><loc_7><loc_8>big cat" \
           "<loc_11><loc_12><loc_13><loc_14><loc_15><loc_16><loc_17><loc_18><loc_9>"
    assert parse_output("<OCR_WITH_REGION>", text, S) == {
        "quad_boxes": [[1.5, 1.25, 3.5, 2.25, 5.5, 3.25, 7.5, 4.25],
                       [11.5, 6.25, 13.5, 7.25, 15.5, 8.25, 17.5, 9.25]],
        "labels": ["HELLO", "big cat"]}


def test_open_vocabulary_boxes_or_polygons():
    assert parse_output("<OPEN_VOCABULARY_DETECTION>", "red star<loc_1><loc_2><loc_3><loc_4>", S) == {
        "bboxes": [[1.5, 1.25, 3.5, 2.25]], "bboxes_labels": ["red star"], "polygons": [], "polygons_labels": []}
    polys = parse_output("<OPEN_VOCABULARY_DETECTION>",
                         "red star<poly><loc_1><loc_2><loc_3><loc_4><loc_5><loc_6></poly>", S)
    assert polys == {"bboxes": [], "bboxes_labels": [], "polygons": [[[1.5, 1.25, 3.5, 2.25, 5.5, 3.25]]],
                     "polygons_labels": ["red star"]}


@pytest.mark.parametrize("task", ["<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OCR>",
                                  "<REGION_TO_CATEGORY>", "<REGION_TO_DESCRIPTION>", "<REGION_TO_OCR>"])
def test_text_tasks_return_clean_strings(task):
    assert parse_output(task, "</s><s>a red circle<loc_1><loc_2><loc_3><loc_4></s><pad><pad>", S) == "a red circle"


@pytest.mark.parametrize("task", list(TASKS))
def test_empty_output_gives_empty_structure(task):
    out = parse_output(task, "</s><s></s>", S)
    if isinstance(out, str):
        assert out == ""
    else:
        assert all(value == [] for value in out.values())


@pytest.mark.parametrize("text", [
    "circle<loc_1><loc_2><loc_3>",           # unbalanced: 3 locs
    "<loc_<<<>>loc_5>circle<loc_1><loc_2>",  # broken tokens
    "<poly><loc_1></poly><sep><sep>",        # polygon markup without points
])
def test_malformed_outputs_give_nothing(text):
    for task in ("<OD>", "<REFERRING_EXPRESSION_SEGMENTATION>", "<OCR_WITH_REGION>"):
        out = parse_output(task, text, S)
        assert all(value == [] for value in out.values()), (task, out)


def test_quad_with_seven_locs_is_dropped():
    assert parse_output("<OCR_WITH_REGION>", "HELLO<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><loc_7>", S) == {
        "quad_boxes": [], "labels": []}


def test_extra_locs_after_a_full_box_are_dropped():
    assert parse_output("<OD>", "circle<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6>", S)["bboxes"] == [
        [1.5, 1.25, 3.5, 2.25]]


PIECES = list("ab <>/_sep0123456789loc") + ["<loc_5>", "<loc_999>", "<sep>", "<poly>", "</poly>", "</s>"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=60).map("".join))
def test_no_text_makes_the_parser_raise(text):
    for task in TASKS:
        parse_output(task, text, S)


def _decoded(pieces_and_probs):
    """A Decoded whose tokens are the given pieces with the given probabilities."""
    spans, pos = [], 0
    for piece, _ in pieces_and_probs:
        spans.append((pos, pos + len(piece)))
        pos += len(piece)
    return Decoded("".join(p for p, _ in pieces_and_probs), spans, [math.log(q) for _, q in pieces_and_probs])


# "circle" (p .5) with two boxes in one run, then "star" (p .25) with one box
TWO_RUNS = _decoded([("circle", 0.5), ("<loc_1>", 0.9), ("<loc_2>", 0.8), ("<loc_3>", 0.7), ("<loc_4>", 0.6),
                     ("<loc_5>", 0.4), ("<loc_6>", 0.4), ("<loc_7>", 0.4), ("<loc_8>", 0.4),
                     ("star", 0.25), ("<loc_1>", 1.0), ("<loc_2>", 1.0), ("<loc_3>", 1.0), ("<loc_4>", 1.0)])
LOC_GM = [(0.9 * 0.8 * 0.7 * 0.6) ** 0.25, 0.4, 1.0]  # geometric mean of each box's four loc probabilities


def test_box_scores_are_label_times_loc_probability_by_default():
    out = parse_output("<OD>", TWO_RUNS, S)
    assert out["labels"] == ["circle", "circle", "star"]
    # both circle boxes share their run's label probability
    assert out["scores"] == pytest.approx([0.5 * LOC_GM[0], 0.5 * LOC_GM[1], 0.25 * LOC_GM[2]])
    assert parse_output("<OD>", TWO_RUNS, S, box_score="label_x_loc") == out


def test_box_scores_published_modes():
    assert parse_output("<OD>", TWO_RUNS, S, box_score="loc")["scores"] == pytest.approx(LOC_GM)
    assert parse_output("<OD>", TWO_RUNS, S, box_score="label")["scores"] == pytest.approx([0.5, 0.5, 0.25])
    grounded = parse_output("<CAPTION_TO_PHRASE_GROUNDING>", TWO_RUNS, S)
    assert grounded["scores"] == pytest.approx([0.5 * LOC_GM[0], 0.5 * LOC_GM[1], 0.25 * LOC_GM[2]])


def test_a_box_without_a_phrase_is_scored_by_its_locations():
    boxes = _decoded([("<loc_1>", 0.9), ("<loc_2>", 0.8), ("<loc_3>", 0.7), ("<loc_4>", 0.6)])
    for mode in ("label_x_loc", "loc", "label"):
        assert parse_output("<REGION_PROPOSAL>", boxes, S, box_score=mode)["scores"] == pytest.approx([LOC_GM[0]])


def test_polygon_scores_follow_the_box_score():
    polygon = _decoded([("star", 0.5), ("<poly>", 1.0)] + [(f"<loc_{k}>", 0.8) for k in range(1, 7)]
                       + [("</poly>", 1.0)])
    assert parse_polygons(polygon, S, allow_empty_phrase=False)["labels"] == ["star"]
    assert parse_polygons(polygon, S, allow_empty_phrase=False)["scores"] == pytest.approx([0.5 * 0.8])
    assert parse_polygons(polygon, S, allow_empty_phrase=False, box_score="loc")["scores"] == pytest.approx([0.8])
    assert parse_polygons(polygon, S, allow_empty_phrase=False, box_score="label")["scores"] == pytest.approx([0.5])


def test_unknown_box_score_is_a_user_error():
    with pytest.raises(InputError, match="box score"):
        parse_output("<OD>", TWO_RUNS, S, box_score="mean")


def test_decode_with_spans_keeps_loc_tokens_and_drops_wrappers(tiny_tokenizer):
    ids = tiny_tokenizer("a red circle<loc_5><loc_6><loc_7><loc_8>")["input_ids"]
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[-1] == tiny_tokenizer.eos_token_id
    decoded = decode_with_spans(tiny_tokenizer, ids, [-0.5] * len(ids))
    assert decoded.text == "a red circle<loc_5><loc_6><loc_7><loc_8>"
    for (start, end), token in zip(decoded.spans, tiny_tokenizer.convert_ids_to_tokens(ids)):
        if token.startswith("<loc_"):
            assert decoded.text[start:end] == token
    out = parse_output("<OD>", decoded, S)
    assert out["labels"] == ["a red circle"]
    assert out["scores"] == pytest.approx([math.exp(-0.5) * math.exp(-0.5)])  # label x loc, each exp(-0.5)
