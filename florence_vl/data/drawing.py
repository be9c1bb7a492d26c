"""Drawing the nano world: backgrounds, anti-aliased shapes, rotated text plates (signs) and bar charts.

The public functions (draw_background, sign_text, place_text, draw_shapes, draw_chart) take the scene's
random.Random and draw from it in a fixed order, so the same rng state gives the same pixels and the same
annotations; world.py calls them in that order. Text uses Pillow's bundled font.
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .vocabulary import BACKGROUNDS, BG_STYLES, COLOR_WEIGHTS, COLORS, NOVEL_PAIRS, SHAPE_WEIGHTS, SHAPES, SIZES, \
    lexicon, random_word

_SS = 4  # supersampling factor for shape edges


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same on every machine


@functools.lru_cache(maxsize=None)
def _text_width(text: str, size: int) -> int:
    left, _, right, _ = _font(size).getbbox(text)
    return right - left


# ----------------------------------------------------------------------------------- shape outlines
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



# --------------------------------------------------------------------------- colors and backgrounds
def _jitter(rng: random.Random, rgb, amount: int = 12) -> tuple[int, int, int]:
    return tuple(min(max(c + rng.randint(-amount, amount), 0), 255) for c in rgb)


def _distance(a, b) -> float:
    return math.dist(a, b)


def draw_background(rng: random.Random, nrng: np.random.Generator, family: str, size) -> tuple[np.ndarray, dict]:
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


# -------------------------------------------------------------------------------------------- signs
def _plate_colors(family: str) -> tuple[tuple[int, int, int], str]:
    """Text color on a plate: black on light plates, white on dark ones."""
    return ((20, 20, 20), "black") if family in ("yellow", "white", "orange") else ((250, 250, 250), "white")


def place_text(rng, image: Image.Image, text: str, plate_family: str, occupied: list, font_size: int):
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


def sign_text(rng, width: int) -> tuple[str, int]:
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


# ------------------------------------------------------------------------------------------ objects
def _sample_pair(rng, split: str, exclude: set) -> tuple[str, str]:
    while True:
        shape = rng.choices(SHAPES, weights=SHAPE_WEIGHTS.values())[0]
        color = rng.choices(tuple(COLORS), weights=COLOR_WEIGHTS.values())[0]
        if color not in exclude and (split == "test-novel" or (color, shape) not in NOVEL_PAIRS):
            return color, shape


def draw_shapes(rng, canvas: np.ndarray, bg: dict, n: int, split: str, occupied: list,
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


# ------------------------------------------------------------------------------------------- charts
def draw_chart(rng, size) -> tuple[Image.Image, dict, list[dict], list[dict], dict]:
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
