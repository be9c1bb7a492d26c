"""Drawing a task result over its image, with PIL only.

Every coordinate of a TaskResult is in pixels of the original image, so the drawing is made on the
original image (same size as `result.image_size`) and keeps that size: boxes as rectangles, quads and
polygons as outlines (polygons with a translucent fill), each labelled; text results as a caption band
along the bottom.
"""

from __future__ import annotations

import math
import os
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from .florence2.results import TaskResult

# Distinct, saturated colours that read on both light and dark images.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 225, 25), (128, 0, 0), (170, 255, 195),
    (128, 128, 0), (255, 215, 180), (0, 0, 128), (255, 99, 71), (46, 139, 87),
)
FILL_ALPHA = 80          # polygon fill opacity out of 255
CAPTION_ALPHA = 180      # caption band opacity out of 255

Point = tuple[float, float]


def label_color(label: str) -> tuple[int, int, int]:
    """A colour for a label, the same in every run and process (crc32, not Python's salted hash)."""
    return PALETTE[zlib.crc32(str(label).encode("utf-8")) % len(PALETTE)]


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _default_font_size(width: int, height: int) -> int:
    return int(min(40, max(8, round(max(width, height) * 0.022))))


def _line_width(width: int, height: int) -> int:
    return max(1, round(min(width, height) / 250))


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = bg
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _numbers(values: Any) -> list[float] | None:
    if not isinstance(values, (list, tuple)):
        return None
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _at(values: Any, i: int, default: Any) -> Any:
    if isinstance(values, (list, tuple)) and i < len(values):
        return values[i]
    return default


def _clip_polygon(points: list[Point], w: float, h: float) -> list[Point]:
    """Sutherland-Hodgman clip of a polygon to the pixel rectangle [0, w-1] x [0, h-1]."""
    edges = (
        (lambda p: p[0] >= 0, lambda a, b: _cross_x(a, b, 0.0)),
        (lambda p: p[0] <= w - 1, lambda a, b: _cross_x(a, b, w - 1)),
        (lambda p: p[1] >= 0, lambda a, b: _cross_y(a, b, 0.0)),
        (lambda p: p[1] <= h - 1, lambda a, b: _cross_y(a, b, h - 1)),
    )
    out = points
    for inside, cross in edges:
        if not out:
            break
        pts, out = out, []
        prev = pts[-1]
        for cur in pts:
            if inside(cur):
                if not inside(prev):
                    out.append(cross(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cross(prev, cur))
            prev = cur
    return out


def _cross_x(a: Point, b: Point, x: float) -> Point:
    t = (x - a[0]) / (b[0] - a[0])
    return x, a[1] + t * (b[1] - a[1])


def _cross_y(a: Point, b: Point, y: float) -> Point:
    t = (y - a[1]) / (b[1] - a[1])
    return a[0] + t * (b[0] - a[0]), y


def _pixel_box(box: Sequence[float], w: int, h: int) -> tuple[int, int, int, int] | None:
    """[x0, y0, x1, y1] (continuous, any order) -> inclusive pixel corners inside the image, or None."""
    x0, y0, x1, y1 = box
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    if x1 < 0 or y1 < 0 or x0 >= w or y0 >= h:
        return None
    px0 = min(max(math.floor(x0), 0), w - 1)
    py0 = min(max(math.floor(y0), 0), h - 1)
    px1 = min(max(math.ceil(x1) - 1, px0), w - 1)
    py1 = min(max(math.ceil(y1) - 1, py0), h - 1)
    return px0, py0, px1, py1


class _Canvas:
    def __init__(self, image: Image.Image, font_size: int | None):
        self.image = image
        self.w, self.h = image.size
        self.font = _font(font_size or _default_font_size(self.w, self.h))
        self.line = _line_width(self.w, self.h)
        self.overlay: Image.Image | None = None  # translucent fills, composited before outlines
        self.outlines: list[tuple[str, Any, tuple[int, int, int]]] = []
        self.labels: list[tuple[str, tuple[float, float, float, float], tuple[int, int, int]]] = []

    # -- shapes
    def box(self, box: Any, text: str, color: tuple[int, int, int]) -> None:
        values = _numbers(box)
        if values is None or len(values) != 4:
            return
        px = _pixel_box(values, self.w, self.h)
        if px is None:
            return
        self.outlines.append(("rect", px, color))
        self._label(text, px, color)

    def polygon(self, coords: Any, color: tuple[int, int, int], fill: bool) -> tuple[float, ...] | None:
        """Queue one polygon (clipped to the image); its drawn extent (x0, y0, x1, y1), or None if nothing shows."""
        values = _numbers(coords)
        if values is None or len(values) < 2:
            return None
        points = list(zip(values[0::2], values[1::2]))
        points = _clip_polygon(points, self.w, self.h)
        if not points:
            return None
        # Drop repeated vertices; what is left may be a point or a segment (zero-area polygon).
        dedup: list[Point] = []
        for p in points:
            if not dedup or (abs(p[0] - dedup[-1][0]) > 1e-6 or abs(p[1] - dedup[-1][1]) > 1e-6):
                dedup.append(p)
        if len(dedup) > 1 and abs(dedup[0][0] - dedup[-1][0]) < 1e-6 and abs(dedup[0][1] - dedup[-1][1]) < 1e-6:
            dedup.pop()
        if fill and len(dedup) >= 3:
            if self.overlay is None:
                self.overlay = Image.new("RGBA", self.image.size, (0, 0, 0, 0))
            ImageDraw.Draw(self.overlay).polygon(dedup, fill=color + (FILL_ALPHA,))
        self.outlines.append(("poly", dedup, color))
        xs, ys = [p[0] for p in dedup], [p[1] for p in dedup]
        return min(xs), min(ys), max(xs), max(ys)

    def shapes(self, polygons: list[Any], text: str, color: tuple[int, int, int], fill: bool) -> None:
        """Several polygons of one instance, labelled once at the top-left of what is visible of them."""
        extents = [e for e in (self.polygon(p, color, fill) for p in polygons) if e is not None]
        if extents:
            self._label(text, (min(e[0] for e in extents), min(e[1] for e in extents),
                               max(e[2] for e in extents), max(e[3] for e in extents)), color)

    def _label(self, text: str, anchor: tuple[float, float, float, float], color) -> None:
        if text:
            self.labels.append((text, anchor, color))

    # -- rendering
    def render(self) -> Image.Image:
        if self.overlay is not None:
            base = self.image.convert("RGBA")
            base.alpha_composite(self.overlay)
            self.image = base.convert("RGB")
        draw = ImageDraw.Draw(self.image)
        for kind, shape, color in self.outlines:
            if kind == "rect":
                draw.rectangle(shape, outline=color, width=self.line)
            elif len(shape) == 1:
                draw.point(shape, fill=color)
            elif len(shape) == 2:
                draw.line(shape, fill=color, width=self.line)
            else:
                draw.line(shape + [shape[0]], fill=color, width=self.line, joint="curve")
        for text, anchor, color in self.labels:
            self._draw_label(draw, text, anchor, color)
        return self.image

    def _draw_label(self, draw: ImageDraw.ImageDraw, text: str, anchor, color) -> None:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=self.font)
        pad = 1 if self.h < 64 else 2
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        x0, y0 = anchor[0], anchor[1]
        # Above the shape when it fits, otherwise just inside its top edge; always inside the image.
        y = y0 - th if y0 - th >= 0 else y0
        y = max(0, min(y, self.h - th))
        x = max(0, min(x0, self.w - tw))
        x, y = int(round(x)), int(round(y))
        draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=color)
        draw.text((x + pad - left, y + pad - top), text, fill=_text_color(color), font=self.font)

    def caption(self, text: str) -> None:
        text = " ".join(str(text).split())
        if not text:
            return
        draw = ImageDraw.Draw(self.image)
        pad = max(1, self.h // 100, 2 if self.h >= 64 else 1)
        lines = _wrap(draw, text, self.font, max(1, self.w - 2 * pad))
        asc_top = draw.textbbox((0, 0), "Ag", font=self.font)
        line_h = asc_top[3] - asc_top[1] + max(1, pad // 2)
        max_lines = max(1, (self.h - 2 * pad) // max(1, line_h))
        if len(lines) > max_lines:
            lines = lines[:max_lines]
            lines[-1] = _fit(draw, lines[-1].rstrip() + "...", self.font, self.w - 2 * pad)
        band_h = min(self.h, len(lines) * line_h + 2 * pad)
        top = self.h - band_h
        base = self.image.convert("RGBA")
        band = Image.new("RGBA", self.image.size, (0, 0, 0, 0))
        ImageDraw.Draw(band).rectangle([0, top, self.w - 1, self.h - 1], fill=(0, 0, 0, CAPTION_ALPHA))
        base.alpha_composite(band)
        self.image = base.convert("RGB")
        draw = ImageDraw.Draw(self.image)
        for i, line in enumerate(lines):
            draw.text((pad - asc_top[0], top + pad + i * line_h - asc_top[1]), line, fill=(255, 255, 255),
                      font=self.font)


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> float:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _fit(draw, text: str, font, width: float) -> str:
    """`text` cut from the right (keeping a trailing "...") until it fits `width`."""
    while len(text) > 1 and _text_width(draw, text, font) > width:
        text = text[:-4] + "..." if text.endswith("...") and len(text) > 4 else text[:-1]
    return text


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> list[str]:
    """Greedy word wrap to `width` pixels; words longer than a line are broken between characters."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        trial = f"{current} {word}" if current else word
        if _text_width(draw, trial, font) <= width:
            current = trial
            continue
        if current:
            lines.append(current)
        current = ""
        while word and _text_width(draw, word, font) > width:
            cut = 1
            while cut < len(word) and _text_width(draw, word[: cut + 1], font) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def _label_text(label: Any, score: Any) -> str:
    text = str(label if label is not None else "").strip()
    try:
        s = float(score) if score is not None else None
    except (TypeError, ValueError):
        s = None
    if s is not None and math.isfinite(s):
        text = f"{text} {s:.2f}".strip()
    return text


def _color_key(label: Any, index: int) -> str:
    label = str(label if label is not None else "").strip()
    return label if label else f"#{index}"  # unlabelled shapes (region proposals) get one colour each


def _instances(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def draw_result(image: Image.Image, result: TaskResult, *, font_size: int | None = None) -> Image.Image:
    """A new RGB image: `image` with `result` drawn over it, in the frame of `result.image_size`."""
    expected = tuple(int(v) for v in result.image_size)
    if tuple(image.size) != expected:
        raise ValueError(f"the image is {image.size[0]}x{image.size[1]} but the result's coordinates are for "
                         f"{expected[0]}x{expected[1]}: draw on the original image")
    canvas = _Canvas(image.convert("RGB"), font_size)
    out = result.output

    if isinstance(out, str):
        canvas.caption(out)
        return canvas.render()
    if not isinstance(out, dict):
        return canvas.render()

    scores = out.get("scores")
    if "bboxes_labels" in out or "polygons_labels" in out:
        box_labels, poly_labels = out.get("bboxes_labels", []), out.get("polygons_labels", [])
    else:
        box_labels = poly_labels = out.get("labels", [])

    for i, box in enumerate(_instances(out.get("bboxes"))):
        label = _at(box_labels, i, "")
        canvas.box(box, _label_text(label, _at(scores, i, None)), label_color(_color_key(label, i)))

    for i, quad in enumerate(_instances(out.get("quad_boxes"))):
        label = _at(out.get("labels", []), i, "")
        canvas.shapes([quad], _label_text(label, None), label_color(_color_key(label, i)), fill=False)

    poly_scores = scores if "bboxes" not in out else out.get("polygons_scores")
    for i, instance in enumerate(_instances(out.get("polygons"))):
        label = _at(poly_labels, i, "")
        text, color = _label_text(label, _at(poly_scores, i, None)), label_color(_color_key(label, i))
        parts = _instances(instance)
        if parts and not isinstance(parts[0], (list, tuple)):
            parts = [parts]  # one flat polygon instead of a list of them
        canvas.shapes(parts, text, color, fill=True)

    return canvas.render()


def save_drawing(image: Image.Image, result: TaskResult, path: str | os.PathLike, *,
                 font_size: int | None = None) -> Path:
    """`draw_result` written as PNG to `path` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_result(image, result, font_size=font_size).save(path, format="PNG")
    return path
