"""The nano world (../shared/WORLD.md): seeded scenes of shapes, signs and bar charts, fully annotated.

One call, `generate_scene(seed, split)`, draws an image and writes its record: objects (class, color,
size, bbox and polygon of the *visible* pixels), texts (exact string, quad, bbox), chart bars, and the
text a grammar derives from them (three caption levels, region descriptions, unique referring
expressions, grounding phrases, typed questions with answers). `florence2_examples` turns a record into
Florence-2 examples for every task that applies, with every coordinate written by coordinates.py.

The parts: vocabulary.py (the words), drawing.py (pixels), masks.py (boxes and polygons of visible
masks), spatial.py (positions and relations), grammar.py (captions, expressions, questions),
florence2_targets.py (task examples). This module holds scenes and splits, and re-exports the public
names of the parts, so `from florence_vl.data.world import ...` keeps working.

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

import random
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image

from .drawing import draw_background, draw_chart, draw_shapes, place_text, sign_text
from .florence2_targets import florence2_examples
from .grammar import QA_TYPES, describe, plural, referring_expression, resolve_expression
from .masks import mask_box, mask_polygons
from .spatial import box_center, position_of, reading_order_key, relation
from .vocabulary import (BACKGROUNDS, BG_STYLES, CATEGORY_IDS, COLOR_WEIGHTS, COLORS, NOVEL_PAIRS, POSITIONS,
                         RELATIONS, SHAPE_WEIGHTS, SHAPES, SIZES, lexicon, random_word)

__all__ = [
    # scenes and splits (this module)
    "SCENE_KINDS", "SPLITS", "SPLIT_SIZES", "DEFAULT_SIZE", "EVAL_SIZES", "Scene", "generate_scene", "iter_scenes",
    # vocabulary.py
    "SHAPES", "CATEGORY_IDS", "COLORS", "SIZES", "POSITIONS", "RELATIONS", "NOVEL_PAIRS", "SHAPE_WEIGHTS",
    "COLOR_WEIGHTS", "BACKGROUNDS", "BG_STYLES", "lexicon", "random_word",
    # spatial.py
    "box_center", "reading_order_key", "position_of", "relation",
    # grammar.py
    "QA_TYPES", "plural", "referring_expression", "resolve_expression",
    # florence2_targets.py
    "florence2_examples",
]

SCENE_KINDS = ("shapes", "text", "chart", "mixed")
SPLITS = ("train", "val", "test", "test-novel")
SPLIT_SIZES = {"val": 500, "test": 500, "test-novel": 500}
DEFAULT_SIZE = (256, 256)
EVAL_SIZES = ((256, 256), (256, 256), (224, 288), (288, 224), (320, 256), (256, 320), (240, 320),
              (320, 240), (288, 256), (256, 288))  # (width, height), aspect 3:4 .. 4:3


@dataclass
class Scene:
    """One image and its record; `masks` (visible) and `full_masks` are per object, in draw order."""

    image: Image.Image
    record: dict
    masks: list[np.ndarray] = field(default_factory=list, repr=False)
    full_masks: list[np.ndarray] = field(default_factory=list, repr=False)


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
        image, bg, bars, texts, chart = draw_chart(rng, size)
    else:
        family = rng.choice(tuple(COLORS))
        canvas, bg = draw_background(rng, nrng, family, size)
        occupied: list = []
        signs = []
        if kind in ("text", "mixed"):
            n_text = rng.randint(1, 3) if kind == "text" else rng.randint(1, 2)
            sign_layer = Image.new("RGBA", size, (0, 0, 0, 0))
            for _ in range(n_text):
                text, font_size = sign_text(rng, width)
                plate = rng.choice([c for c in COLORS if c != family])
                sign = place_text(rng, sign_layer, text, plate, occupied, font_size)
                if sign:
                    signs.append(sign)
            if not signs:
                return None
        if kind in ("shapes", "mixed"):
            n_obj = rng.randint(1, 6) if kind == "shapes" else rng.randint(1, 4)
            objects, full, visible = draw_shapes(rng, canvas, bg, n_obj, split, occupied,
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
        o.update(id=i, category_id=CATEGORY_IDS[o["class"]], bbox=mask_box(v), area=vis,
                 visible=round(vis / int(f.sum()), 4),
                 covered_by=[j for j in range(i + 1, len(full)) if (f & full[j]).any()])
        if vis == int(f.sum()):
            o["segmentation"] = [[round(float(c), 2) for c in o["_outline"].ravel()]]
        else:
            o["segmentation"] = mask_polygons(v)
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
    describe(record, rng)
    return Scene(image, record, visible, full)


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
