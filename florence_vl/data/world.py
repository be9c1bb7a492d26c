"""The nano world (../shared/WORLD.md): seeded scenes of shapes, signs and bar charts, fully annotated.

One call, `generate_scene(seed, split)`, draws an image and writes its record: objects (class, color,
size, bbox and polygon of the *visible* pixels), texts (exact string, quad, bbox), chart bars, and the
text a grammar derives from them (three caption levels, region descriptions, unique referring
expressions, grounding phrases, typed questions with answers). `florence2_examples` turns a record into
Florence-2 examples for every task that applies, with every coordinate written by coordinates.py.

Conventions (all in pixels of the image, x right, y down, pixel (i, j) covering [j, j+1] x [i, i+1]):
- an object's mask is the set of pixels its anti-aliased coverage reaches 0.5 in, minus the pixels of
  objects drawn after it (later objects lie on top); bbox = [x0, y0, x1, y1] is the exact extent of that
  visible mask (x1, y1 exclusive); polygon = the analytic outline when nothing hides the object, else
  the outer boundary of its visible mask (pixel corners, simplified by ~1.2 px; holes are not kept);
- a text's quad is its line box (ink width x font ascent+descent, 1 px margin) rotated with its plate,
  clockwise from top-left; its bbox is the quad's extent;
- reading order: by the box's top edge, then its left edge.
Determinism: everything is drawn from random.Random(f"{split}/{seed}/{attempt}") and the font bundled
with Pillow, so a (seed, split) pair gives the same bytes on every machine with the same Pillow.
"""

from __future__ import annotations

import functools
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..florence2.coordinates import encode_box, encode_polygons, encode_quad
from ..florence2.tasks import build_prompt

# ----------------------------------------------------------------------------------------- vocabulary
SHAPES = ("circle", "square", "triangle", "pentagon", "hexagon", "star", "diamond", "cross")
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(SHAPES)}
COLORS = {  # canonical sRGB; objects are drawn with +-12 jitter per channel
    "red": (215, 40, 40), "orange": (240, 135, 30), "yellow": (245, 215, 40), "green": (40, 150, 60),
    "blue": (40, 80, 215), "purple": (135, 55, 175), "black": (25, 25, 25), "white": (248, 248, 248),
}
SIZES = {"small": (0.08, 0.15), "medium": (0.15, 0.30), "large": (0.30, 0.50)}  # longer side / shorter image side
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("left of", "right of", "above", "below")
SCENE_KINDS = ("shapes", "text", "chart", "mixed")
SPLITS = ("train", "val", "test", "test-novel")
SPLIT_SIZES = {"val": 500, "test": 500, "test-novel": 500}
# Color-shape pairs that never appear (as objects, questions or choices) outside test-novel.
NOVEL_PAIRS = frozenset({("purple", "star"), ("green", "triangle"), ("orange", "cross"),
                         ("yellow", "hexagon"), ("blue", "diamond"), ("red", "pentagon")})
DEFAULT_SIZE = (256, 256)
EVAL_SIZES = ((256, 256), (256, 256), (224, 288), (288, 224), (320, 256), (256, 320), (240, 320),
              (320, 240), (288, 256), (256, 288))  # (width, height), aspect 3:4 .. 4:3
QA_TYPES = ("count", "color", "shape", "exist", "spatial", "read", "chart_value", "chart_max", "chart_min",
            "chart_compare", "multiple_choice")
# Prior frequencies (the train stream samples by them; POPE "popular" negatives follow them).
SHAPE_WEIGHTS = dict(zip(SHAPES, (16, 15, 14, 11, 11, 12, 11, 10)))
COLOR_WEIGHTS = dict(zip(COLORS, (15, 12, 12, 14, 15, 11, 10, 11)))
# Backgrounds are tints of a color family, named so that no caption calls them by an object color.
BACKGROUNDS = {"red": ((235, 170, 170), "pink"), "orange": ((240, 195, 150), "peach"),
               "yellow": ((235, 225, 160), "cream"), "green": ((170, 215, 180), "mint"),
               "blue": ((165, 195, 235), "light blue"), "purple": ((200, 180, 225), "lavender"),
               "white": ((200, 200, 200), "light gray"), "black": ((70, 70, 75), "dark gray")}
BG_STYLES = {"plain": "plain", "gradient": "gradient", "texture": "textured"}
_POS_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
               "center": "in the center"}
_NUMBERS = "zero one two three four five six seven eight nine ten".split()
_SS = 4  # supersampling factor for shape edges


@functools.lru_cache(maxsize=1)
def lexicon() -> tuple[str, ...]:
    """The fixed word list (florence_vl/data/lexicon.txt); integers 0-999 are words too (see `random_word`)."""
    text = (Path(__file__).with_name("lexicon.txt")).read_text(encoding="utf-8")
    return tuple(w.strip() for w in text.splitlines() if w.strip())


def random_word(rng: random.Random, p_number: float = 0.2) -> str:
    return str(rng.randrange(1000)) if rng.random() < p_number else rng.choice(lexicon())


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same on every machine


@functools.lru_cache(maxsize=None)
def _text_width(text: str, size: int) -> int:
    left, _, right, _ = _font(size).getbbox(text)
    return right - left


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def _count_word(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# ----------------------------------------------------------------------------------------- geometry
def _ngon(n: int, start: float = -90.0, radii=(1.0,)) -> np.ndarray:
    angles = np.radians(start + 360.0 * np.arange(n) / n)
    r = np.array([radii[i % len(radii)] for i in range(n)])
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


@functools.lru_cache(maxsize=None)
def _unit_outline(shape: str) -> np.ndarray:
    """Each shape's outline around (0, 0), clockwise on screen (y down)."""
    t = 0.34
    table = {
        "circle": _ngon(24),
        "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float),
        "triangle": _ngon(3),
        "pentagon": _ngon(5),
        "hexagon": _ngon(6, start=0.0),
        "star": _ngon(10, radii=(1.0, 0.45)),
        "diamond": np.array([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], float),
        "cross": np.array([(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t),
                           (-1, t), (-1, -t), (-t, -t)], float),
    }
    return table[shape]


_MAX_ROTATION = {"circle": 0, "square": 10, "diamond": 6, "triangle": 15, "pentagon": 15, "hexagon": 15,
                 "star": 15, "cross": 15}


def _shape_outline(shape: str, cx: float, cy: float, longer: float, angle: float) -> np.ndarray:
    """The outline in pixels of a shape whose rotated bounding box has longer side `longer`."""
    pts = _unit_outline(shape)
    a = math.radians(angle)
    rot = pts @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    extent = (rot.max(0) - rot.min(0)).max()
    rot = rot * (longer / extent)
    mid = (rot.max(0) + rot.min(0)) / 2
    return rot - mid + (cx, cy)


def _coverage(shape: str, outline: np.ndarray, size: tuple[int, int]):
    """Anti-aliased coverage (uint8 patch) of a shape and the patch's top-left corner."""
    width, height = size
    x0 = max(int(math.floor(outline[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(outline[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(outline[:, 0].max())) + 1, width)
    y1 = min(int(math.ceil(outline[:, 1].max())) + 1, height)
    canvas = Image.new("L", ((x1 - x0) * _SS, (y1 - y0) * _SS), 0)
    draw = ImageDraw.Draw(canvas)
    local = (outline - (x0, y0)) * _SS - 0.5  # PIL draws with pixel centres at integers
    if shape == "circle":
        lo, hi = local.min(0), local.max(0)
        draw.ellipse([lo[0], lo[1], hi[0], hi[1]], fill=255)
    else:
        draw.polygon([tuple(p) for p in local], fill=255)
    return np.asarray(canvas.reduce(_SS)), x0, y0


def _mask_box(mask: np.ndarray) -> list[int] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def _trace(mask: np.ndarray) -> list[tuple[int, int]]:
    """Outer boundary (pixel corners, clockwise) of the 4-connected component of the first pixel in raster order."""
    grid = np.pad(mask, 1).tolist()  # a zero border: every lookup stays in range
    flat = np.flatnonzero(np.asarray(grid, bool))
    width = len(grid[0])
    y0, x0 = divmod(int(flat[0]), width)
    dxs, dys = (1, 0, -1, 0), (0, 1, 0, -1)  # E S W N
    pts, x, y, d = [(x0, y0)], x0 + 1, y0, 0
    while (x, y) != (x0, y0):
        if d == 0:
            left, right = grid[y - 1][x], grid[y][x]
        elif d == 1:
            left, right = grid[y][x], grid[y][x - 1]
        elif d == 2:
            left, right = grid[y][x - 1], grid[y - 1][x - 1]
        else:
            left, right = grid[y - 1][x - 1], grid[y - 1][x]
        nd = (d + 1) % 4 if not right else (d + 3) % 4 if left else d
        if nd != d:
            pts.append((x, y))
        d = nd
        x, y = x + dxs[d], y + dys[d]
    return [(px - 1, py - 1) for px, py in pts]


def _simplify(points: np.ndarray, eps: float) -> np.ndarray:
    """Douglas-Peucker on an open polyline (first and last points kept)."""
    if len(points) < 3:
        return points
    a, b = points[0], points[-1]
    ab = b - a
    norm = math.hypot(*ab)
    rel = points - a
    dist = np.abs(ab[0] * rel[:, 1] - ab[1] * rel[:, 0]) / norm if norm else np.hypot(rel[:, 0], rel[:, 1])
    i = int(dist.argmax())
    if dist[i] <= eps:
        return points[[0, -1]]
    return np.concatenate([_simplify(points[:i + 1], eps)[:-1], _simplify(points[i:], eps)])


def _mask_polygons(mask: np.ndarray, min_pixels: int = 6, eps: float = 1.2) -> list[list[float]]:
    """Outer outlines of the visible parts of a mask, largest first (at most 4 parts, <= 40 points each)."""
    box = _mask_box(mask)
    crop = mask[box[1]:box[3], box[0]:box[2]].copy()
    parts = []
    while crop.sum() >= min_pixels and len(parts) < 4:
        outline = np.array(_trace(crop), float)
        filled = Image.new("1", (crop.shape[1], crop.shape[0]), 0)
        ImageDraw.Draw(filled).polygon([tuple(p) for p in outline - 0.5], fill=1)
        part = crop & np.asarray(filled, bool)
        if not part.any():  # cannot happen for a traced outline; guard against an endless loop
            break
        crop &= ~part
        if part.sum() < min_pixels:
            continue
        closed = np.concatenate([outline, outline[:1]])
        far = int(np.hypot(*(closed - closed[0]).T).argmax())
        simple = np.concatenate([_simplify(closed[:far + 1], eps)[:-1], _simplify(closed[far:], eps)[:-1]])
        e = eps
        while len(simple) > 40:
            e *= 1.5
            simple = np.concatenate([_simplify(closed[:far + 1], e)[:-1], _simplify(closed[far:], e)[:-1]])
        if len(simple) >= 3:
            parts.append((int(part.sum()), (simple + (box[0], box[1])).ravel().tolist()))
    parts.sort(key=lambda p: -p[0])
    return [[round(float(v), 2) for v in poly] for _, poly in parts]


def box_center(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def reading_order_key(box) -> tuple:
    return (box[1], box[0], box[3], box[2])


def position_of(box, size) -> str:
    """Which of POSITIONS the box centre is in: center within 1/6 of the middle, else the dominant side."""
    cx, cy = box_center(box)
    dx, dy = cx / size[0] - 0.5, cy / size[1] - 0.5
    if max(abs(dx), abs(dy)) < 1 / 6:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def _position_is_clear(box, size) -> bool:
    cx, cy = box_center(box)
    dx, dy = abs(cx / size[0] - 0.5), abs(cy / size[1] - 0.5)
    return abs(max(dx, dy) - 1 / 6) > 0.04 and (max(dx, dy) < 1 / 6 or abs(dx - dy) > 0.06)


def relation(a_box, b_box, min_gap: float = 0.0, clear: bool = False) -> str | None:
    """The relation of box a to box b by the dominant axis between centres ("left of" = a is left of b).

    With clear=True the dominant offset must be at least 1.5 x the other one and at least `min_gap`.
    """
    (ax, ay), (bx, by) = box_center(a_box), box_center(b_box)
    dx, dy = bx - ax, by - ay
    major, minor = (abs(dx), abs(dy)) if abs(dx) >= abs(dy) else (abs(dy), abs(dx))
    if major == 0 or (clear and (major < 1.5 * minor or major < min_gap)):
        return None
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


# ------------------------------------------------------------------------------ referring expressions
_BASE = rf"the (?:({'|'.join(SIZES)}) )?(?:({'|'.join(COLORS)}) )?({'|'.join(SHAPES)}|shape)"
_EXPR_RE = re.compile(rf"^{_BASE}(?: (on the left|on the right|at the top|at the bottom)"
                      rf"| ({'|'.join(RELATIONS)}) ({_BASE}))?$")


def _extremal(cands: list[dict], where: str, size) -> list[dict]:
    axis = 0 if where in ("left", "right") else 1
    sign = 1 if where in ("left", "top") else -1
    values = [sign * box_center(c["bbox"])[axis] for c in cands]
    margin = 0.08 * size[axis]
    return [c for c, v in zip(cands, values) if v <= min(values) + margin]


def resolve_expression(expression: str, record: dict) -> list[int]:
    """The ids of the record's objects a referring expression fits (the grammar of `referring_expression`)."""
    m = _EXPR_RE.match(expression)
    if not m:
        return []
    size, color, noun, where, rel = m.group(1), m.group(2), m.group(3), m.group(4), m.group(5)
    objects = record["objects"]
    cands = [o for o in objects if (size is None or o["size"] == size) and (color is None or o["color"] == color)
             and (noun == "shape" or o["class"] == noun)]
    if where:
        cands = _extremal(cands, where.split()[-1], record["size"]) if cands else []
    elif rel:
        landmark = resolve_expression(m.group(6), record)
        if len(landmark) != 1:
            return []
        ref = objects[landmark[0]]
        cands = [o for o in cands if o is not ref and relation(o["bbox"], ref["bbox"]) == rel]
    return [o["id"] for o in cands]


def referring_expression(obj: dict, record: dict, color: bool = True, shape: bool = True,
                         relations: bool = True) -> str | None:
    """The simplest expression of the grammar that fits `obj` and no other object, or None."""
    combos = [("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape")] if shape else \
        [(), ("color",), ("size",), ("size", "color")]
    combos = [c for c in combos if color or "color" not in c]

    def base(c):
        words = [obj["size"]] if "size" in c else []
        words += [obj["color"]] if "color" in c else []
        return "the " + " ".join(words + [obj["class"] if "shape" in c else "shape"])

    def fits(expr):
        return resolve_expression(expr, record) == [obj["id"]]

    for c in combos:
        if fits(base(c)):
            return base(c)
    for c in combos:
        for where in ("left", "right", "top", "bottom"):
            if fits(f"{base(c)} {_POS_PHRASE[where]}"):
                return f"{base(c)} {_POS_PHRASE[where]}"
    if relations:
        gap = 0.05 * min(record["size"])
        for c in combos:
            for other in record["objects"]:
                rel = relation(obj["bbox"], other["bbox"], gap, clear=True) if other is not obj else None
                landmark = referring_expression(other, record, relations=False) if rel else None
                if landmark and " on the " not in landmark and " at the " not in landmark:
                    expr = f"{base(c)} {rel} {landmark}"
                    if fits(expr):
                        return expr
    return None


# ------------------------------------------------------------------------------------------- scenes
@dataclass
class Scene:
    """One image and its record; `masks` (visible) and `full_masks` are per object, in draw order."""

    image: Image.Image
    record: dict
    masks: list[np.ndarray] = field(default_factory=list, repr=False)
    full_masks: list[np.ndarray] = field(default_factory=list, repr=False)


def _jitter(rng: random.Random, rgb, amount: int = 12) -> tuple[int, int, int]:
    return tuple(min(max(c + rng.randint(-amount, amount), 0), 255) for c in rgb)


def _distance(a, b) -> float:
    return math.dist(a, b)


def _background(rng: random.Random, nrng: np.random.Generator, family: str, size) -> tuple[np.ndarray, dict]:
    width, height = size
    base = np.array(_jitter(rng, BACKGROUNDS[family][0], 6), np.float32)
    style = rng.choice(tuple(BG_STYLES))
    canvas = np.empty((3, height, width), np.float32)  # channels first: numpy is slow on a last axis of 3
    canvas[:] = base[:, None, None]
    if style == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = (np.arange(height, dtype=np.float32) * math.sin(a))[:, None] + \
            (np.arange(width, dtype=np.float32) * math.cos(a))[None, :]
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        canvas += (t * rng.choice((-1, 1)) * rng.uniform(18, 30))[None]
    elif style == "texture":
        noise = nrng.normal(0.0, 5.0, ((height + 1) // 2, (width + 1) // 2)).astype(np.float32)
        canvas += np.repeat(np.repeat(noise, 2, 0), 2, 1)[None, :height, :width]
    return canvas, {"style": style, "color": family, "name": BACKGROUNDS[family][1]}


def _plate_colors(family: str) -> tuple[tuple[int, int, int], str]:
    """Text color on a plate: black on light plates, white on dark ones."""
    return ((20, 20, 20), "black") if family in ("yellow", "white", "orange") else ((250, 250, 250), "white")


def _place_text(rng, image: Image.Image, text: str, plate_family: str, occupied: list, font_size: int):
    """Draw one rotated sign; returns its annotation, or None if it does not fit anywhere free."""
    width, height = image.size
    font = _font(font_size)
    ascent, descent = font.getmetrics()
    left, _, right, _ = font.getbbox(text)
    tw, th = right - left, ascent + descent
    padx, pady = max(3, round(font_size * 0.45)), max(2, round(font_size * 0.3))
    pw, ph = tw + 2 * padx, th + 2 * pady
    angle = rng.uniform(-15, 15) if rng.random() < 0.75 else 0.0
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))

    def corners(x0, y0, x1, y1, cx, cy):  # local plate rect -> canvas points, clockwise from top-left
        out = []
        for lx, ly in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)):
            x, y = lx - pw / 2, ly - ph / 2
            out += [cx + x * ca + y * sa, cy - x * sa + y * ca]
        return out

    probe = np.array(corners(0, 0, pw, ph, 0, 0)).reshape(4, 2)
    half = [float(v) for v in (probe.max(0) - probe.min(0)) / 2]
    if half[0] * 2 + 6 > width or half[1] * 2 + 6 > height:
        return None
    for _ in range(30):
        cx, cy = rng.uniform(half[0] + 3, width - half[0] - 3), rng.uniform(half[1] + 3, height - half[1] - 3)
        rect = (cx - half[0] - 3, cy - half[1] - 3, cx + half[0] + 3, cy + half[1] + 3)
        if not any(rect[0] < o[2] and o[0] < rect[2] and rect[1] < o[3] and o[1] < rect[3] for o in occupied):
            break
    else:
        return None
    plate_rgb = _jitter(rng, COLORS[plate_family], 8)
    text_rgb, text_color = _plate_colors(plate_family)
    plate = Image.new("RGBA", (pw, ph), plate_rgb + (0,))
    draw = ImageDraw.Draw(plate)
    draw.rounded_rectangle([0, 0, pw - 1, ph - 1], radius=max(2, font_size // 4), fill=plate_rgb + (255,))
    draw.text((padx - left, pady), text, font=font, fill=text_rgb + (255,))
    px0, py0 = int(math.floor(cx - half[0])) - 1, int(math.floor(cy - half[1])) - 1
    px1, py1 = int(math.ceil(cx + half[0])) + 1, int(math.ceil(cy + half[1])) + 1
    # output (u, v) in the patch -> plate coordinates: the inverse rotation about the plate centre
    ox, oy = px0 - cx, py0 - cy
    coeffs = (ca, -sa, ca * ox - sa * oy + pw / 2, sa, ca, sa * ox + ca * oy + ph / 2)
    patch = plate.transform((px1 - px0, py1 - py0), Image.Transform.AFFINE, coeffs,
                            resample=Image.Resampling.BICUBIC, fillcolor=plate_rgb + (0,))
    image.paste(patch, (px0, py0), patch)
    occupied.append(rect)
    quad = [round(v, 2) for v in corners(padx - 1, pady, padx + tw + 1, pady + th, cx, cy)]
    plate_quad = [round(v, 2) for v in corners(0, 0, pw, ph, cx, cy)]
    return {"text": text, "quad": quad, "bbox": _quad_box(quad, image.size), "role": "sign", "color": text_color,
            "angle": round(angle, 2),
            "plate": {"color": plate_family, "quad": plate_quad, "bbox": _quad_box(plate_quad, image.size)}}


def _quad_box(quad, size) -> list[float]:
    xs, ys = quad[0::2], quad[1::2]
    return [round(max(min(xs), 0), 2), round(max(min(ys), 0), 2), round(min(max(xs), size[0]), 2),
            round(min(max(ys), size[1]), 2)]


def _sign_text(rng, width: int) -> tuple[str, int]:
    n = rng.choice((1, 1, 2, 2, 3))
    words = [random_word(rng) for _ in range(n)]
    font_size = rng.randint(14, 24)
    while True:
        text = " ".join(words)
        tw = _font(font_size).getbbox(text)[2] + font_size
        if tw <= width - 12:
            return text, font_size
        if font_size > 13:
            font_size -= 2
        elif len(words) > 1:
            words.pop()
        else:
            return text, font_size


def _sample_pair(rng, split: str, exclude: set) -> tuple[str, str]:
    while True:
        shape = rng.choices(SHAPES, weights=SHAPE_WEIGHTS.values())[0]
        color = rng.choices(tuple(COLORS), weights=COLOR_WEIGHTS.values())[0]
        if color not in exclude and (split == "test-novel" or (color, shape) not in NOVEL_PAIRS):
            return color, shape


def _draw_shapes(rng, canvas: np.ndarray, bg: dict, n: int, split: str, occupied: list,
                 novel_first: bool) -> tuple[list[dict], list[np.ndarray], list[np.ndarray]]:
    height, width = canvas.shape[1:]
    short = min(width, height)
    bg_rgb = BACKGROUNDS[bg["color"]][0]
    objects, full, visible, counts, full_counts = [], [], [], [], []
    for index in range(n):
        for _attempt in range(40):
            if novel_first and index == 0:
                color, shape = rng.choice(sorted(p for p in NOVEL_PAIRS if p[0] != bg["color"]))
            else:
                color, shape = _sample_pair(rng, split, {bg["color"]})
            size = rng.choice(tuple(SIZES))
            if n >= 5 and size == "large" and rng.random() < 0.6:
                size = "medium"
            longer = rng.uniform(*SIZES[size]) * short
            rgb = _jitter(rng, COLORS[color])
            if _distance(rgb, bg_rgb) < 70:
                continue
            angle = rng.uniform(-1, 1) * _MAX_ROTATION[shape]
            cx, cy = rng.uniform(longer / 2 + 2, width - longer / 2 - 2), rng.uniform(longer / 2 + 2,
                                                                                    height - longer / 2 - 2)
            outline = _shape_outline(shape, cx, cy, longer, angle)
            lo, hi = outline.min(0), outline.max(0)
            if lo.min() < 1 or hi[0] > width - 1 or hi[1] > height - 1:
                continue
            rect = (lo[0] - 3, lo[1] - 3, hi[0] + 3, hi[1] + 3)
            if any(rect[0] < o[2] and o[0] < rect[2] and rect[1] < o[3] and o[1] < rect[3] for o in occupied):
                continue
            # same-colored objects may not touch (their boundary would be invisible)
            if any(o["color"] == color and rect[0] < o["_hi"][0] + 3 and o["_lo"][0] - 3 < rect[2]
                   and rect[1] < o["_hi"][1] + 3 and o["_lo"][1] - 3 < rect[3] for o in objects):
                continue
            cov, x0, y0 = _coverage(shape, outline, (width, height))
            window = (slice(y0, y0 + cov.shape[0]), slice(x0, x0 + cov.shape[1]))
            inside = cov >= 128
            hidden = [int(np.count_nonzero(v[window] & inside)) for v in visible]
            if any(c - h < 0.7 * f for c, h, f in zip(counts, hidden, full_counts)):
                continue
            break
        else:
            continue
        patch = canvas[:, y0:y0 + cov.shape[0], x0:x0 + cov.shape[1]]
        alpha = (cov.astype(np.float32) / 255.0)[None]
        patch += (np.array(rgb, np.float32)[:, None, None] - patch) * alpha
        mask = np.zeros((height, width), bool)
        mask[window] = inside
        for v in visible:
            v[window] &= ~inside
        counts = [c - h for c, h in zip(counts, hidden)] + [int(np.count_nonzero(inside))]
        full_counts.append(counts[-1])
        visible.append(mask.copy())
        full.append(mask)
        objects.append({"class": shape, "color": color, "size": size, "angle": round(angle, 2),
                        "_outline": outline, "_lo": lo, "_hi": hi})
    return objects, full, visible


def _draw_chart(rng, size) -> tuple[Image.Image, dict, list[dict], list[dict], dict]:
    width, height = size
    family = rng.choice(("white", "white", "yellow", "blue", "green", "purple"))
    bg_rgb = (248, 248, 248) if family == "white" else tuple(int(c * 0.35 + 255 * 0.65)
                                                              for c in BACKGROUNDS[family][0])
    image = Image.new("RGB", size, _jitter(rng, bg_rgb, 4))
    draw = ImageDraw.Draw(image)
    fs = max(9, round(min(size) * 0.045))
    font = _font(fs)
    ascent, descent = font.getmetrics()
    th = ascent + descent
    n = rng.randint(3, 6)
    values = [rng.randint(0, 100) for _ in range(n)]
    show_values = rng.random() < 0.5
    left = font.getbbox("100")[2] + 10
    top, right, bottom = (th + 6 if show_values else 10), 8, th + 8
    base = height - bottom
    plot_h, plot_w = base - top, width - right - left
    slot = plot_w / n
    bar_w = max(4, round(slot * 0.6))
    words = [w for w in lexicon() if _text_width(w, fs) <= slot - 3]
    labels = rng.sample(words, n)
    palette = [c for c in COLORS if c not in (family, "white")]
    one_color = rng.random() < 0.6
    colors = [rng.choice(palette)] * n if one_color else [rng.choice(palette) for _ in range(n)]
    axis_rgb = (60, 60, 60)
    step = rng.choice((20, 25))
    texts = []

    def text_at(s, x, y, role):  # draw with its line box's top-left at (x, y)
        l, _, r, _ = font.getbbox(s)
        draw.text((x - l, y), s, font=font, fill=(20, 20, 20))
        quad = [x, y, x + r - l, y, x + r - l, y + th, x, y + th]
        box = [float(v) for v in (x, y, x + r - l, y + th)]
        texts.append({"text": s, "quad": [float(v) for v in quad], "bbox": box,
                      "role": role, "color": "black"})

    for tick in range(0, 101, step):
        ty = base - round(tick / 100 * plot_h)
        draw.line([(left - 4, ty), (left - 1, ty)], fill=axis_rgb)
        if tick:
            draw.line([(left, ty), (width - right, ty)], fill=(215, 215, 215))
        s = str(tick)
        text_at(s, left - 6 - (font.getbbox(s)[2] - font.getbbox(s)[0]), ty - th // 2, "tick")
    bars = []
    for i, (label, value, color) in enumerate(zip(labels, values, colors)):
        x0 = left + round(i * slot + (slot - bar_w) / 2) + 1
        h = max(1, round(value / 100 * plot_h))
        draw.rectangle([x0, base - h, x0 + bar_w - 1, base - 1], fill=_jitter(rng, COLORS[color], 8))
        bars.append({"id": i, "label": label, "value": value, "color": color, "bbox": [x0, base - h, x0 + bar_w, base]})
        lw = font.getbbox(label)[2] - font.getbbox(label)[0]
        text_at(label, x0 + bar_w // 2 - lw // 2, base + 4, "label")
        if show_values:
            vs = str(value)
            vw = font.getbbox(vs)[2] - font.getbbox(vs)[0]
            text_at(vs, x0 + bar_w // 2 - vw // 2, base - h - th - 1, "value")
    draw.line([(left, top - 4), (left, base)], fill=axis_rgb)
    draw.line([(left, base), (width - right, base)], fill=axis_rgb)
    chart = {"ticks": list(range(0, 101, step)), "plot_bbox": [left, top, width - right, base],
             "value_labels": show_values, "bar_colors": "single" if one_color else "mixed"}
    return image, {"style": "plain", "color": family, "name": "white" if family == "white" else
                   BACKGROUNDS[family][1]}, bars, texts, chart


def _scene_size(rng, split: str, size) -> tuple[int, int]:
    if size is not None:
        return int(size[0]), int(size[1])
    return DEFAULT_SIZE if split == "train" else rng.choice(EVAL_SIZES)


def generate_scene(seed: int, split: str = "train", kind: str | None = None,
                   size: tuple[int, int] | None = None) -> Scene:
    """The scene of (seed, split): same arguments, same image bytes and record."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if kind is not None and kind not in SCENE_KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; known: {', '.join(SCENE_KINDS)}")
    if split == "test-novel" and kind in ("text", "chart"):
        raise ValueError("test-novel scenes hold objects: kind must be shapes or mixed")
    for attempt in range(20):
        scene = _try_scene(seed, split, kind, size, attempt)
        if scene is not None:
            return scene
    raise RuntimeError(f"could not generate scene {split}/{seed}")  # pragma: no cover


def _try_scene(seed: int, split: str, kind, size, attempt: int) -> Scene | None:
    rng = random.Random(f"{split}/{seed}/{attempt}")
    nrng = np.random.default_rng(rng.getrandbits(64))
    if kind is None:
        kinds, weights = (("shapes", "mixed"), (6, 4)) if split == "test-novel" else (SCENE_KINDS, (45, 20, 15, 20))
        kind = rng.choices(kinds, weights=weights)[0]
    size = _scene_size(rng, split, size)
    width, height = size
    objects, texts, bars, full, visible, chart = [], [], [], [], [], None
    if kind == "chart":
        image, bg, bars, texts, chart = _draw_chart(rng, size)
    else:
        family = rng.choice(tuple(COLORS))
        canvas, bg = _background(rng, nrng, family, size)
        occupied: list = []
        signs = []
        if kind in ("text", "mixed"):
            n_text = rng.randint(1, 3) if kind == "text" else rng.randint(1, 2)
            sign_layer = Image.new("RGBA", size, (0, 0, 0, 0))
            for _ in range(n_text):
                text, font_size = _sign_text(rng, width)
                plate = rng.choice([c for c in COLORS if c != family])
                sign = _place_text(rng, sign_layer, text, plate, occupied, font_size)
                if sign:
                    signs.append(sign)
            if not signs:
                return None
        if kind in ("shapes", "mixed"):
            n_obj = rng.randint(1, 6) if kind == "shapes" else rng.randint(1, 4)
            objects, full, visible = _draw_shapes(rng, canvas, bg, n_obj, split, occupied,
                                                  novel_first=split == "test-novel")
            if not objects:
                return None
        canvas += 0.5
        np.clip(canvas, 0, 255, out=canvas)
        image = Image.merge("RGB", [Image.fromarray(c) for c in canvas.astype(np.uint8)])
        if signs:
            image.paste(sign_layer, (0, 0), sign_layer)
        texts = signs
    for i, (o, f, v) in enumerate(zip(objects, full, visible)):
        vis = int(v.sum())
        o.update(id=i, category_id=CATEGORY_IDS[o["class"]], bbox=_mask_box(v), area=vis,
                 visible=round(vis / int(f.sum()), 4),
                 covered_by=[j for j in range(i + 1, len(full)) if (f & full[j]).any()])
        if vis == int(f.sum()):
            o["segmentation"] = [[round(float(c), 2) for c in o["_outline"].ravel()]]
        else:
            o["segmentation"] = _mask_polygons(v)
        o["polygon"] = o["segmentation"][0]
        o["position"] = position_of(o["bbox"], size)
        o["description"] = f"{o['size']} {o['color']} {o['class']}"
        for key in ("_outline", "_lo", "_hi"):
            del o[key]
    texts.sort(key=lambda t: reading_order_key(t["bbox"]))
    for i, t in enumerate(texts):
        t["id"] = i
    record = {"split": split, "seed": seed, "kind": kind, "size": [width, height], "background": bg,
              "objects": objects, "texts": texts, "bars": bars}
    if chart:
        record["chart"] = chart
    for o in objects:
        o["referring"] = referring_expression(o, record)
        if o["referring"] is None:
            return None
    if split == "test-novel" and not any((o["color"], o["class"]) in NOVEL_PAIRS for o in objects):
        return None
    record["regions"] = [{"object": o["id"], "bbox": o["bbox"], "description": o["description"],
                          "referring": o["referring"]} for o in objects]
    _describe(record, rng)
    return Scene(image, record, visible, full)


# ------------------------------------------------------------------------------------------ grammar
class _Text:
    """A sentence built piece by piece, remembering where each grounded phrase sits."""

    def __init__(self):
        self.text, self.phrases = "", []

    def add(self, piece: str, boxes: list | None = None) -> "_Text":
        if boxes is not None:
            self.phrases.append({"phrase": piece, "span": [len(self.text), len(self.text) + len(piece)],
                                 "boxes": boxes})
        self.text += piece
        return self

    def add_list(self, items: list[tuple[str, str, list | None]]) -> "_Text":
        """items: (grounded head, rest, boxes); joined as "a, b and c"."""
        for i, (head, rest, boxes) in enumerate(items):
            if i:
                self.add(" and " if i == len(items) - 1 else ", ")
            self.add(head, boxes).add(rest)
        return self


def _groups(objects: list[dict]) -> list[tuple[tuple, list[dict]]]:
    groups: dict[tuple, list[dict]] = {}
    for o in sorted(objects, key=lambda o: reading_order_key(o["bbox"])):
        groups.setdefault((o["size"], o["color"], o["class"]), []).append(o)
    return list(groups.items())


def _group_phrase(key: tuple, members: list[dict]) -> str:
    size, color, shape = key
    if len(members) == 1:
        return _article(f"{size} {color} {shape}")
    return f"{_count_word(len(members))} {size} {color} {plural(shape)}"


def _is_simple(expression: str) -> bool:
    return not any(w in expression for w in (" on the ", " at the ", " of the ", " above ", " below "))


def _sign_ref(sign: dict, signs: list[dict], size) -> str | None:
    if len(signs) == 1:
        return "the sign"
    if sum(t["plate"]["color"] == sign["plate"]["color"] for t in signs) == 1:
        return f"the {sign['plate']['color']} sign"
    for where in ("left", "right", "top", "bottom"):
        if _extremal(signs, where, size) == [sign]:
            return f"the sign {_POS_PHRASE[where]}"
    return None


def _captions(record: dict) -> tuple[dict, dict]:
    objects, bars, size = record["objects"], record["bars"], record["size"]
    signs = [t for t in record["texts"] if t["role"] == "sign"]
    bg = record["background"]
    where = f"on a {BG_STYLES[bg['style']]} {bg['name']} background"
    n = len(objects)
    if record["kind"] == "chart":
        labels = [b["label"] for b in bars]
        colors = {b["color"] for b in bars}
        colored = f"{bars[0]['color']} bars" if len(colors) == 1 else "bars in different colors"
        brief = f"A bar chart with {_count_word(len(bars))} bars."
        detailed = f"The image shows a bar chart with {_count_word(len(bars))} {colored} labelled {_join(labels)}."
        values = sorted(b["value"] for b in bars)
        pairs = [f"{b['label']} {b['value']}" for b in bars]
        more = (f"The image shows a bar chart with {_count_word(len(bars))} {colored} {where}. The bars are "
                f"labelled {_join(labels)}. Their values are {_join(pairs)}.")
        top = [b for b in bars if b["value"] == values[-1]]
        low = [b for b in bars if b["value"] == values[0]]
        if len(top) == 1:
            more += f" The highest bar is {top[0]['label']}."
        if len(low) == 1:
            more += f" The lowest bar is {low[0]['label']}."
        more += f" The value axis goes from 0 to 100 in steps of {record['chart']['ticks'][1]}."
        return {"brief": brief, "detailed": detailed, "more_detailed": more}, {"caption": detailed, "phrases": []}

    items = [(_group_phrase(k, m), "", [o["bbox"] for o in m]) for k, m in _groups(objects)]
    items += [(_article(f"{t['plate']['color']} sign"), f' that says "{t["text"]}"', [t["plate"]["bbox"]])
              for t in signs]
    sentence = _Text().add("The image shows ").add_list(items).add(f" {where}.")
    shapes_short = (_join([_article(f"{o['color']} {o['class']}") for o in
                           sorted(objects, key=lambda o: reading_order_key(o["bbox"]))])
                    if 0 < n <= 2 else f"{_count_word(n)} shapes")
    signs_short = "" if not signs else (
        f'a {signs[0]["plate"]["color"]} sign that says "{signs[0]["text"]}"' if len(signs) == 1
        else f"{_count_word(len(signs))} signs that say {_join([_quoted(t) for t in signs])}")
    if not signs:
        brief = f"{_cap(shapes_short)} on a {bg['name']} background."
    elif not objects:
        brief = _cap(signs_short) + "."
    else:
        brief = f"{_cap(shapes_short)} and {signs_short}."
    more = [sentence.text]
    if objects:
        more.append(f"There {'is' if n == 1 else 'are'} {_count_word(n)} shape{'s' if n != 1 else ''} in total.")
    for o in sorted(objects, key=lambda o: reading_order_key(o["bbox"])):
        ref = o["referring"]
        text = f"{_cap(ref)} is {_POS_PHRASE[o['position']]}." if _is_simple(ref) else ""
        if o["covered_by"]:
            cover = objects[o["covered_by"][0]]
            text += (" It" if text else _cap(ref)) + f" is partly covered by {cover['referring']}."
        if text:
            more.append(text.strip())
    for t in signs:
        tilt = "level" if abs(t["angle"]) < 3 else "tilted"
        pos = _POS_PHRASE[position_of(t["bbox"], size)]
        more.append(f'The {t["plate"]["color"]} sign that says "{t["text"]}" is {pos} and is {tilt}.')
    captions = {"brief": brief, "detailed": sentence.text, "more_detailed": " ".join(more)}
    return captions, {"caption": sentence.text, "phrases": sentence.phrases}


def _quoted(t: dict) -> str:
    return f'"{t["text"]}"'


def _qa(q: str, a: str, kind: str, **extra) -> dict:
    return {"question": q, "answer": a, "type": kind, **extra}


def _multiple_choice(rng, question: str, answer: str, pool: list[str], subtype: str) -> dict:
    distractors = rng.sample([p for p in dict.fromkeys(pool) if p != answer], 3)
    choices = distractors + [answer]
    rng.shuffle(choices)
    letter = "ABCD"[choices.index(answer)]
    text = question + "".join(f"\n{letter_}. {c}" for letter_, c in zip("ABCD", choices))
    return _qa(text, letter, "multiple_choice", choices=choices, answer_text=answer, subtype=subtype)


def _pair_universe(split: str) -> list[tuple[str, str]]:
    return [(c, s) for c in COLORS for s in SHAPES if split == "test-novel" or (c, s) not in NOVEL_PAIRS]


def _object_questions(rng, record: dict) -> list[dict]:
    objects, size, split = record["objects"], record["size"], record["split"]
    qa = [_qa("How many shapes are there?", str(len(objects)), "count")]
    present_classes = sorted({o["class"] for o in objects}, key=SHAPES.index)
    cls = rng.choice(present_classes)
    qa.append(_qa(f"How many {plural(cls)} are there?", str(sum(o["class"] == cls for o in objects)), "count"))
    color = rng.choice(sorted({o["color"] for o in objects}, key=list(COLORS).index))
    qa.append(_qa(f"How many {color} shapes are there?", str(sum(o["color"] == color for o in objects)), "count"))
    absent = [s for s in SHAPES if s not in present_classes]
    if absent and rng.random() < 0.5:
        qa.append(_qa(f"How many {plural(rng.choice(absent))} are there?", "0", "count"))
    for o in rng.sample(objects, min(2, len(objects))):
        ref = referring_expression(o, record, color=False)
        if ref:
            qa.append(_qa(f"What color is {ref}?", o["color"], "color"))
    for o in rng.sample(objects, min(2, len(objects))):
        ref = referring_expression(o, record, shape=False)
        if ref:
            qa.append(_qa(f"What shape is {ref}?", o["class"], "shape"))
    # POPE-style existence: k positives shared by the three settings, k negatives per setting
    present = {(o["color"], o["class"]) for o in objects}
    universe = _pair_universe(split)
    positives = rng.sample(sorted(present), min(3, len(present)))
    absent_pairs = [p for p in universe if p not in present]
    k = len(positives)
    by_question: dict[str, dict] = {}

    def exist(pair, answer, setting):
        q = f"Is there {_article(f'{pair[0]} {pair[1]}')} in the image?"
        item = by_question.setdefault(q, _qa(q, answer, "exist", pope=[]))
        if setting not in item["pope"]:
            item["pope"].append(setting)

    for pair in positives:
        for setting in ("random", "popular", "adversarial"):
            exist(pair, "yes", setting)
    for pair in rng.sample(absent_pairs, k):
        exist(pair, "no", "random")
    popular = sorted(absent_pairs, key=lambda p: -COLOR_WEIGHTS[p[0]] * SHAPE_WEIGHTS[p[1]])
    for pair in popular[:k]:
        exist(pair, "no", "popular")
    shared = [p for p in absent_pairs if any(p[0] == c or p[1] == s for c, s in present)]
    rng.shuffle(shared)
    shared.sort(key=lambda p: -sum(p[0] == o["color"] or p[1] == o["class"] for o in objects))
    others = [p for p in rng.sample(absent_pairs, len(absent_pairs)) if p not in shared]
    adversarial = (shared + others)[:k]
    for pair in adversarial:
        exist(pair, "no", "adversarial")
    qa.extend(by_question.values())
    # spatial relations between objects that have simple names
    simple = [o for o in objects if _is_simple(o["referring"])]
    gap = 0.05 * min(size)
    pairs = [(a, b, relation(a["bbox"], b["bbox"], gap, clear=True)) for a in simple for b in simple if a is not b]
    pairs = [p for p in pairs if p[2]]
    for a, b, rel in rng.sample(pairs, min(2, len(pairs))):
        if rng.random() < 0.5:
            qa.append(_qa(f"Is {a['referring']} {rel} {b['referring']}?", "yes", "spatial"))
        else:
            qa.append(_qa(f"Is {a['referring']} {_OPPOSITE[rel]} {b['referring']}?", "no", "spatial"))
    clear = [o for o in simple if _position_is_clear(o["bbox"], size)]
    if clear:
        o = rng.choice(clear)
        qa.append(_qa(f"Where in the image is {o['referring']}?", o["position"], "spatial"))
    # multiple choice
    o = rng.choice(objects)
    if rng.random() < 0.5 and (ref := referring_expression(o, record, color=False)):
        qa.append(_multiple_choice(rng, f"What color is {ref}?", o["color"], list(COLORS), "color"))
    elif ref := referring_expression(o, record, shape=False):
        qa.append(_multiple_choice(rng, f"What shape is {ref}?", o["class"], list(SHAPES), "shape"))
    return qa


def _text_questions(rng, record: dict) -> list[dict]:
    signs = [t for t in record["texts"] if t["role"] == "sign"]
    size = record["size"]
    qa = [_qa("How many signs are there?", str(len(signs)), "count")]
    if len(signs) == 1:
        qa.append(_qa("What is written in the image?", signs[0]["text"], "read"))
    refs = [(t, _sign_ref(t, signs, size)) for t in signs]
    for t, ref in refs:
        if ref:
            qa.append(_qa(f"What does {ref} say?", t["text"], "read"))
    t = rng.choice(signs)
    if sum(s["text"] == t["text"] for s in signs) == 1:
        qa.append(_qa(f'What color is the sign that says "{t["text"]}"?', t["plate"]["color"], "color"))
    words = {w for s in signs for w in s["text"].split()}
    qa.append(_qa(f'Is the word "{rng.choice(sorted(words))}" written in the image?', "yes", "exist"))
    absent = rng.choice([w for w in lexicon() if w not in words])
    qa.append(_qa(f'Is the word "{absent}" written in the image?', "no", "exist"))
    named = [(t, ref) for t, ref in refs if ref]
    if named:
        t, ref = rng.choice(named)
        pool = [s["text"] for s in signs] + [" ".join(random_word(rng) for _ in t["text"].split()) for _ in range(4)]
        qa.append(_multiple_choice(rng, f"What does {ref} say?", t["text"], pool, "read"))
    if not record["objects"]:
        pair = rng.choice(_pair_universe(record["split"]))
        qa.append(_qa(f"Is there {_article(f'{pair[0]} {pair[1]}')} in the image?", "no", "exist", pope=[]))
    return qa


def _chart_questions(rng, record: dict) -> list[dict]:
    bars = record["bars"]
    values = [b["value"] for b in bars]
    qa = [_qa("How many bars are there?", str(len(bars)), "count")]
    for b in rng.sample(bars, min(3, len(bars))):
        qa.append(_qa(f"What is the value of the {b['label']} bar?", str(b["value"]), "chart_value"))
    hi, lo = max(values), min(values)
    labels = [b["label"] for b in bars]
    pool = labels + rng.sample([w for w in lexicon() if w not in labels], 3)
    if values.count(hi) == 1:
        top = bars[values.index(hi)]["label"]
        qa.append(_qa("Which bar has the highest value?", top, "chart_max"))
        qa.append(_multiple_choice(rng, "Which bar has the highest value?", top, pool, "chart_max"))
    if values.count(lo) == 1:
        qa.append(_qa("Which bar has the lowest value?", bars[values.index(lo)]["label"], "chart_min"))
    pairs = [(a, b) for a in bars for b in bars if a["value"] != b["value"] and a is not b]
    if pairs:
        a, b = rng.choice(pairs)
        qa.append(_qa(f"Is the {a['label']} bar higher than the {b['label']} bar?",
                      "yes" if a["value"] > b["value"] else "no", "chart_compare"))
        a, b = rng.choice(pairs)
        qa.append(_qa(f"Which bar is higher, {a['label']} or {b['label']}?",
                      a["label"] if a["value"] > b["value"] else b["label"], "chart_compare"))
    b = rng.choice(bars)
    qa.append(_qa(f"What color is the {b['label']} bar?", b["color"], "color"))
    pair = rng.choice(_pair_universe(record["split"]))
    qa.append(_qa(f"Is there {_article(f'{pair[0]} {pair[1]}')} in the image?", "no", "exist", pope=[]))
    return qa


def _describe(record: dict, rng: random.Random) -> None:
    record["captions"], record["grounding"] = _captions(record)
    qa: list[dict] = []
    if record["objects"]:
        qa += _object_questions(rng, record)
    if any(t["role"] == "sign" for t in record["texts"]):
        qa += _text_questions(rng, record)
    if record["bars"]:
        qa += _chart_questions(rng, record)
    for i, item in enumerate(qa):
        item["id"] = i
    record["qa"] = qa


# ----------------------------------------------------------------------------------------- splits
def iter_scenes(split: str = "train", start_seed: int = 0, n: int | None = None, **kwargs) -> Iterator[Scene]:
    """train: an endless seeded stream from start_seed (or n scenes); other splits: their fixed seeds."""
    if split == "train":
        stop = None if n is None else start_seed + n
    else:
        stop = SPLIT_SIZES[split] if n is None else min(start_seed + n, SPLIT_SIZES[split])
    seed = start_seed
    while stop is None or seed < stop:
        yield generate_scene(seed, split, **kwargs)
        seed += 1


# ------------------------------------------------------------------------------ Florence-2 examples
def florence2_examples(scene: Scene | dict) -> list[dict]:
    """Examples {"task", "prompt", "target"[, "text" | "region"]} for every task that applies to the scene.

    Targets are in the published output form: phrases followed by their <loc_k> boxes in reading order;
    REGION_TO_CATEGORY / REGION_TO_DESCRIPTION repeat the region's box after the text as the published
    model does; REGION_TO_OCR and OCR are plain text; OCR joins the texts in reading order with spaces.
    """
    record = scene.record if isinstance(scene, Scene) else scene
    size = tuple(record["size"])
    objects = sorted(record["objects"], key=lambda o: reading_order_key(o["bbox"]))
    texts = sorted(record["texts"], key=lambda t: reading_order_key(t["bbox"]))
    out: list[dict] = []

    def add(task, target, text=None, region=None):
        example = {"task": task, "prompt": build_prompt(task, text=text, region=region, image_size=size),
                   "target": target}
        if text is not None:
            example["text"] = text
        if region is not None:
            example["region"] = list(region)
        out.append(example)

    def box(b):
        return encode_box(b, size)

    captions = record["captions"]
    add("<CAPTION>", captions["brief"])
    add("<DETAILED_CAPTION>", captions["detailed"])
    add("<MORE_DETAILED_CAPTION>", captions["more_detailed"])
    regions = [(o["description"], o["bbox"]) for o in objects]
    regions += [(f"{t['plate']['color']} sign", t["plate"]["bbox"]) for t in texts if t["role"] == "sign"]
    regions += [(f"{b['color']} bar", b["bbox"]) for b in record["bars"]]
    regions.sort(key=lambda r: reading_order_key(r[1]))
    if objects:
        add("<OD>", "".join(o["class"] + box(o["bbox"]) for o in objects))
    if regions:
        add("<DENSE_REGION_CAPTION>", "".join(d + box(b) for d, b in regions))
        add("<REGION_PROPOSAL>", "".join(box(b) for _, b in regions))
    if record["grounding"]["phrases"]:
        add("<CAPTION_TO_PHRASE_GROUNDING>",
            "".join(p["phrase"] + "".join(box(b) for b in p["boxes"]) for p in record["grounding"]["phrases"]),
            text=record["grounding"]["caption"])
    for o in objects:
        polygons = encode_polygons(o["segmentation"], size)
        add("<REFERRING_EXPRESSION_SEGMENTATION>", polygons, text=o["referring"])
        add("<REGION_TO_SEGMENTATION>", polygons, region=o["bbox"])
        add("<REGION_TO_CATEGORY>", o["class"] + box(o["bbox"]), region=o["bbox"])
        add("<REGION_TO_DESCRIPTION>", o["description"] + box(o["bbox"]), region=o["bbox"])
    queries: dict[str, list] = {}
    for o in objects:
        queries.setdefault(o["class"], []).append(o["bbox"])
    for o in objects:
        queries.setdefault(f"{o['color']} {o['class']}", []).append(o["bbox"])
    for query, boxes in queries.items():
        add("<OPEN_VOCABULARY_DETECTION>", query + "".join(box(b) for b in boxes), text=query)
    if texts:
        add("<OCR>", " ".join(t["text"] for t in texts))
        add("<OCR_WITH_REGION>", "".join(t["text"] + encode_quad(t["quad"], size) for t in texts))
        for t in texts:
            add("<REGION_TO_OCR>", t["text"], region=t["bbox"])
    return out
