import math
import zlib

import numpy as np
import pytest
from PIL import Image

from florence_vl.florence2.results import TaskResult
from florence_vl.viz import FILL_ALPHA, PALETTE, draw_result, label_color, save_drawing

WHITE = (255, 255, 255)


def white(w=100, h=80, mode="RGB"):
    return Image.new(mode, (w, h), "white")


def result(task, output, size):
    return TaskResult(task=task, output=output, text="", image_size=size)


def px(img, x, y):
    return img.getpixel((x, y))


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.any(np.asarray(a.convert("RGB")) != np.asarray(b.convert("RGB")), axis=-1)


# ---------------------------------------------------------------------------------- boxes


def test_box_edges_take_the_label_colour_and_far_pixels_stay():
    img = white(100, 80)
    out = draw_result(img, result("<OD>", {"bboxes": [[10, 10, 50, 40]], "labels": [""]}, (100, 80)))
    color = label_color("#0")  # an unlabelled shape's colour key is its index
    assert out.size == img.size and out.mode == "RGB"
    for x, y in [(10, 25), (49, 25), (30, 10), (30, 39), (10, 10), (49, 39)]:
        assert px(out, x, y) == color, (x, y)
    for x, y in [(30, 25), (80, 70), (0, 79), (99, 0), (60, 60), (51, 25), (30, 41)]:
        assert px(out, x, y) == WHITE, (x, y)
    assert px(img, 10, 25) == WHITE  # the input is not drawn on


def test_label_is_drawn_just_above_the_box():
    img = white(120, 120)
    out = draw_result(img, result("<OD>", {"bboxes": [[20, 40, 80, 90]], "labels": ["dog"], "scores": [0.5]},
                                  (120, 120)), font_size=10)
    color = label_color("dog")
    strip = np.asarray(out)[25:40, 20:70]           # the rows just above the box's top edge
    is_bg = np.all(strip == color, axis=-1)
    assert is_bg.sum() > 100                        # the filled label background
    other = ~is_bg & ~np.all(strip == WHITE, axis=-1)
    assert other.sum() > 10                         # the text itself, in a contrasting colour
    assert np.all(np.asarray(out)[:20] == 255)      # nothing far above
    assert np.all(np.asarray(out)[95:] == 255)      # nothing below the box


def test_label_without_room_above_goes_inside_and_stays_in_the_image():
    img = white(100, 100)
    out = draw_result(img, result("<OD>", {"bboxes": [[85, 0, 100, 12]], "labels": ["a rather long label"]},
                                  (100, 100)), font_size=10)
    color = label_color("a rather long label")
    arr = np.asarray(out)
    assert np.all(arr[0:5, 99] == color)            # the label's background reaches the right edge, clipped in
    assert np.any(np.all(arr[:, :40] == color, axis=-1))  # and was moved left to fit its width


def test_degenerate_box_is_normalised():
    size = (60, 60)
    a = draw_result(white(60, 60), result("<OD>", {"bboxes": [[10, 12, 40, 50]], "labels": ["x"]}, size))
    b = draw_result(white(60, 60), result("<OD>", {"bboxes": [[40, 50, 10, 12]], "labels": ["x"]}, size))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert px(b, 10, 30) == label_color("x")


def test_box_outside_the_image_is_clipped_to_its_border():
    out = draw_result(white(100, 100), result("<OD>", {"bboxes": [[-10, -10, 50, 500]], "labels": [""]},
                                              (100, 100)))
    color = label_color("#0")
    assert px(out, 0, 50) == color and px(out, 49, 50) == color and px(out, 25, 99) == color
    assert px(out, 25, 50) == WHITE and px(out, 75, 50) == WHITE


def test_scores_are_shown_and_colours_are_stable():
    assert label_color("car") == PALETTE[zlib.crc32(b"car") % len(PALETTE)]
    assert label_color("car") == label_color("car")
    assert len({label_color(s) for s in ["car", "person", "dog", "cat", "tree", "bus"]}) >= 4
    with_score = draw_result(white(100, 100), result("<OD>", {"bboxes": [[10, 40, 90, 90]], "labels": ["car"],
                                                              "scores": [0.97]}, (100, 100)), font_size=10)
    without = draw_result(white(100, 100), result("<OD>", {"bboxes": [[10, 40, 90, 90]], "labels": ["car"]},
                                                  (100, 100)), font_size=10)
    # "car 0.97" is a wider label than "car".
    width = lambda im: np.all(np.asarray(im)[25:40] == label_color("car"), axis=-1).any(axis=0).sum()
    assert width(with_score) > width(without)


# ---------------------------------------------------------------------------------- polygons and quads


def test_polygon_fill_changes_inside_only():
    img = white(100, 100)
    tri = [20, 20, 80, 20, 50, 80]
    out = draw_result(img, result("<REFERRING_EXPRESSION_SEGMENTATION>",
                                  {"polygons": [[tri]], "labels": ["cat"]}, (100, 100)))
    color = np.array(label_color("cat"), dtype=float)
    inside = np.array(px(out, 50, 40), dtype=float)
    expected = (255 * (255 - FILL_ALPHA) + color * FILL_ALPHA) / 255
    assert np.all(np.abs(inside - expected) <= 2)   # translucent: a blend, not the colour itself
    assert tuple(inside.astype(int)) != WHITE
    for x, y in [(5, 95), (95, 95), (10, 60), (90, 60), (50, 90)]:
        assert px(out, x, y) == WHITE, (x, y)
    assert px(out, 50, 20) == label_color("cat")    # the outline is opaque


def test_quad_is_an_outline_without_fill():
    out = draw_result(white(100, 100), result("<OCR_WITH_REGION>",
                                              {"quad_boxes": [[10, 50, 90, 50, 90, 80, 10, 80]],
                                               "labels": ["HELLO"]}, (100, 100)), font_size=10)
    color = label_color("HELLO")
    assert px(out, 10, 65) == color and px(out, 90, 65) == color and px(out, 50, 80) == color
    assert px(out, 50, 65) == WHITE                  # no fill
    assert np.any(np.all(np.asarray(out)[35:50, 10:60] == color, axis=-1))  # label above


def test_polygon_partly_outside_is_clipped_and_filled():
    out = draw_result(white(50, 50), result("<REGION_TO_SEGMENTATION>",
                                            {"polygons": [[[10, 10, 1e6, 25, 10, 40]]], "labels": [""]}, (50, 50)))
    assert px(out, 30, 25) != WHITE and px(out, 49, 25) != WHITE
    assert px(out, 5, 25) == WHITE


def test_open_vocabulary_output_draws_boxes_and_polygons():
    out = draw_result(white(100, 100), result("<OPEN_VOCABULARY_DETECTION>", {
        "bboxes": [[5, 30, 40, 60]], "bboxes_labels": ["cup"],
        "polygons": [[[60, 30, 95, 30, 95, 90, 60, 90]]], "polygons_labels": ["mug"]}, (100, 100)), font_size=8)
    assert px(out, 5, 45) == label_color("cup")
    assert px(out, 60, 60) == label_color("mug")
    assert px(out, 78, 60) not in (WHITE, label_color("mug"))


# ---------------------------------------------------------------------------------- text, empties, robustness


def test_caption_band_at_the_bottom():
    img = white(200, 120)
    out = draw_result(img, result("<CAPTION>", "a dog running on the beach next to the sea " * 3, (200, 120)),
                      font_size=10)
    arr = np.asarray(out)
    assert np.all(arr[:40] == 255)                   # the top is untouched
    assert np.all(arr[-1] < 255)                     # the band covers the bottom row, darkened
    band = arr[60:]
    dark = np.all(band < 128, axis=-1).sum()
    bright = np.all(band > 200, axis=-1).sum()
    assert dark > 1000 and bright > 50               # a dark band with light text on it
    rows_changed = changed(img, out).any(axis=1)
    first = int(np.argmax(rows_changed))
    assert rows_changed[first:].all()                # one band from its top to the bottom edge


@pytest.mark.parametrize("output", [
    {"bboxes": [], "labels": []},
    {"polygons": [], "labels": []},
    {"quad_boxes": [], "labels": []},
    {"bboxes": [], "bboxes_labels": [], "polygons": [], "polygons_labels": []},
    {},
    "",
    "   ",
])
def test_empty_outputs_leave_the_image_unchanged(output):
    img = Image.new("RGB", (40, 30), (12, 34, 56))
    out = draw_result(img, result("<OD>", output, (40, 30)))
    assert out is not img
    assert np.array_equal(np.asarray(out), np.asarray(img))


def test_size_mismatch_is_refused():
    with pytest.raises(ValueError, match="original image"):
        draw_result(white(100, 80), result("<OD>", {"bboxes": [[1, 1, 5, 5]], "labels": ["a"]}, (80, 100)))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_any_mode_in_rgb_out(mode):
    img = white(32, 24, mode)
    out = draw_result(img, result("<OD>", {"bboxes": [[2, 2, 20, 20]], "labels": ["a"]}, (32, 24)))
    assert out.mode == "RGB" and out.size == (32, 24)


def test_awkward_geometry_never_raises():
    w = h = 16
    nasty = {
        "bboxes": [[-100, -100, -50, -50], [200, 200, 300, 300], [5, 5, 5, 5], [12, 3, 2, 14],
                   [math.nan, 1, 2, 3], [0, 0, 16, 16], [1, 2, 3], "junk", [1e12, -1e12, -1e12, 1e12]],
        "labels": ["off", "far", "dot", "flipped", "nan", "all", "short", "junk", "huge"],
        "scores": [0.1, 0.2],
    }
    img = white(w, h)
    for output in [
        nasty,
        {"polygons": [[[1, 1, 1, 1, 1, 1]], [[2, 2, 10, 10, 6, 6]], [[3, 3]], [[]], [], [[4, 4, 8, 4, 8, 4, 4, 4]],
                      [[-50, -50, -40, -50, -45, -30]], [[1e9, 1e9, -1e9, 1e9, 0, -1e9]], [5, 5, 9, 5, 9, 9]],
         "labels": ["point", "line", "one point", "empty", "none", "flat"]},
        {"quad_boxes": [[0, 0, 0, 0, 0, 0, 0, 0], [-5, -5, 30, -5, 30, 30, -5, 30], [1, 2, 3]], "labels": []},
        "a caption far too long to fit on a sixteen pixel wide image: supercalifragilisticexpialidocious " * 5,
    ]:
        out = draw_result(img, result("<X>", output, (w, h)))
        assert out.size == (w, h)
    tiny = Image.new("RGB", (1, 1), "white")
    for output in [{"bboxes": [[0, 0, 1, 1]], "labels": ["x"]}, "caption", {"polygons": [[[0, 0, 1, 0, 1, 1]]]}]:
        assert draw_result(tiny, result("<X>", output, (1, 1))).size == (1, 1)


def test_save_drawing_writes_a_png(tmp_path):
    path = tmp_path / "a" / "b" / "drawing.png"
    r = result("<OD>", {"bboxes": [[2, 2, 20, 20]], "labels": ["a"]}, (32, 24))
    assert save_drawing(white(32, 24), r, path) == path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (32, 24)
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(draw_result(white(32, 24), r)))
