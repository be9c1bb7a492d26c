"""The coordinate codec: the published quantize/dequantize rule, round trips, and every shape's encoding."""

import math

import pytest
from hypothesis import given, strategies as st

from florence_vl.florence2.coordinates import (
    decode_points, dequantize, encode_box, encode_polygon, encode_polygons, encode_quad, parse_loc_bins, quantize,
    quantize_points,
)

sizes = st.integers(min_value=1, max_value=8000)


def test_published_rule_on_hand_values():
    # W = 640: a bin is 0.64 px wide. floor(100 / 0.64) = 156; its centre is 156.5 * 0.64 = 100.16.
    assert quantize(100, 640) == 156
    assert dequantize(156, 640) == pytest.approx(100.16)
    assert quantize(0, 640) == 0 and quantize(639.99, 640) == 999
    assert quantize(640, 640) == 999 and quantize(-5, 640) == 0  # clamped
    assert encode_box([0, 0, 640, 480], (640, 480)) == "<loc_0><loc_0><loc_999><loc_999>"
    assert encode_box([64, 48, 320, 240], (640, 480)) == "<loc_100><loc_100><loc_500><loc_500>"


@given(st.integers(0, 999), sizes)
def test_bin_round_trip_is_exact(b, extent):
    assert quantize(dequantize(b, extent), extent) == b


@given(sizes, st.floats(0, 1, allow_nan=False))
def test_pixel_round_trip_within_half_a_bin(extent, fraction):
    x = fraction * extent
    assert abs(dequantize(quantize(x, extent), extent) - x) <= extent / 2000 + 1e-9


@given(st.lists(st.integers(0, 999), min_size=2, max_size=40).filter(lambda v: len(v) % 2 == 0), sizes, sizes)
def test_points_round_trip_through_tokens(bins, w, h):
    text = "".join(f"<loc_{b}>" for b in bins)
    pixels = decode_points(text, (w, h))
    assert quantize_points(pixels, (w, h)) == bins
    # x uses the width and y the height
    assert all(p <= w for p in pixels[0::2]) and all(p <= h for p in pixels[1::2])


@given(sizes, sizes, st.lists(st.floats(0, 1, allow_nan=False), min_size=8, max_size=8))
def test_quad_and_polygon_encode_then_parse(w, h, fractions):
    coords = [f * (w if i % 2 == 0 else h) for i, f in enumerate(fractions)]
    quad = encode_quad(coords, (w, h))
    assert quad.count("<loc_") == 8
    back = decode_points(quad, (w, h))
    for a, b, extent in zip(coords, back, [w, h] * 4):
        assert abs(a - b) <= extent / 2000 + 1e-9
    assert encode_polygon(coords, (w, h)) == quad


def test_polygons_joined_with_sep():
    size = (1000, 1000)
    text = encode_polygons([[0, 0, 10, 0, 10, 10], [20, 20, 30, 20, 30, 30]], size)
    assert text == "<loc_0><loc_0><loc_10><loc_0><loc_10><loc_10><sep><loc_20><loc_20><loc_30><loc_20><loc_30><loc_30>"


def test_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match="4 numbers"):
        encode_box([1, 2, 3], (10, 10))
    with pytest.raises(ValueError, match="3 points"):
        encode_polygon([1, 2, 3, 4], (10, 10))
    with pytest.raises(ValueError, match="positive"):
        encode_box([1, 2, 3, 4], (0, 10))
    with pytest.raises(ValueError, match="finite"):
        quantize(math.nan, 10)


def test_out_of_range_bins_clamp():
    assert parse_loc_bins("<loc_1500><loc_3>") == [999, 3]
