"""The one coordinate codec: pixels <-> <loc_k> tokens for boxes, quads and polygons.

Florence-2 writes every coordinate as one of 1000 bins per axis of the *original* image:
    bin   = clamp(floor(x / (W / 1000)), 0, 999)
    pixel = (bin + 0.5) * W / 1000          (the centre of the bin)
This is the published quantize/dequantize rule. Both prompt encoding (regions given by the user) and
output parsing (boxes, quads, polygons written by the model) go through this file.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

BINS = 1000
LOC_RE = re.compile(r"<loc_(\d+)>")

Size = tuple[float, float]  # (width, height) of the original image


def _check_size(size: Size) -> None:
    width, height = size
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got {size}")


def quantize(value: float, extent: float) -> int:
    """One coordinate in pixels -> its bin along an axis of length `extent`."""
    if not math.isfinite(value):
        raise ValueError(f"coordinate {value!r} is not a finite number")
    return min(max(math.floor(value / (extent / BINS)), 0), BINS - 1)


def dequantize(bin_index: int, extent: float) -> float:
    """A bin -> the pixel coordinate of its centre. Bins outside 0..999 are clamped first."""
    bin_index = min(max(int(bin_index), 0), BINS - 1)
    return (bin_index + 0.5) * (extent / BINS)


def quantize_points(coords: Sequence[float], size: Size) -> list[int]:
    """Flat [x0, y0, x1, y1, ...] in pixels -> bins (x by width, y by height)."""
    _check_size(size)
    if len(coords) % 2:
        raise ValueError(f"coordinates come in x,y pairs; got {len(coords)} numbers")
    width, height = size
    return [quantize(v, width if i % 2 == 0 else height) for i, v in enumerate(coords)]


def dequantize_points(bins: Sequence[int], size: Size) -> list[float]:
    """Flat bins [bx0, by0, ...] -> pixel coordinates."""
    _check_size(size)
    width, height = size
    return [dequantize(b, width if i % 2 == 0 else height) for i, b in enumerate(bins)]


def loc_tokens(bins: Iterable[int]) -> str:
    return "".join(f"<loc_{b}>" for b in bins)


def encode_box(box: Sequence[float], size: Size) -> str:
    """[x0, y0, x1, y1] in pixels -> four <loc_k> tokens."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 numbers, got {len(box)}")
    return loc_tokens(quantize_points(box, size))


def encode_quad(quad: Sequence[float], size: Size) -> str:
    """Four corners [x0, y0, ..., x3, y3] in pixels -> eight <loc_k> tokens."""
    if len(quad) != 8:
        raise ValueError(f"a quad has 8 numbers, got {len(quad)}")
    return loc_tokens(quantize_points(quad, size))


def encode_polygon(polygon: Sequence[float], size: Size) -> str:
    """A flat polygon [x0, y0, x1, y1, ...] (at least 3 points) -> its <loc_k> tokens."""
    if len(polygon) < 6:
        raise ValueError(f"a polygon needs at least 3 points, got {len(polygon) // 2}")
    return loc_tokens(quantize_points(polygon, size))


def encode_polygons(polygons: Sequence[Sequence[float]], size: Size, sep: str = "<sep>") -> str:
    """Several polygons of one object, joined by <sep> as the published format writes them."""
    return sep.join(encode_polygon(p, size) for p in polygons)


def parse_loc_bins(text: str) -> list[int]:
    """Every <loc_k> in `text`, in order, clamped to 0..999."""
    return [min(int(m.group(1)), BINS - 1) for m in LOC_RE.finditer(text)]


def decode_points(text: str, size: Size) -> list[float]:
    """The <loc_k> tokens of `text` -> flat pixel coordinates (x by width, y by height)."""
    return dequantize_points(parse_loc_bins(text), size)
