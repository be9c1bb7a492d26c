"""The words of the nano world: shape classes, colors, sizes, positions, relations, backgrounds, the lexicon.

Data only: drawing.py, grammar.py and world.py draw, describe and sample from these tables.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

SHAPES = ("circle", "square", "triangle", "pentagon", "hexagon", "star", "diamond", "cross")
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(SHAPES)}
COLORS = {  # canonical sRGB; objects are drawn with +-12 jitter per channel
    "red": (215, 40, 40), "orange": (240, 135, 30), "yellow": (245, 215, 40), "green": (40, 150, 60),
    "blue": (40, 80, 215), "purple": (135, 55, 175), "black": (25, 25, 25), "white": (248, 248, 248),
}
SIZES = {"small": (0.08, 0.15), "medium": (0.15, 0.30), "large": (0.30, 0.50)}  # longer side / shorter image side
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("left of", "right of", "above", "below")
# Color-shape pairs that never appear (as objects, questions or choices) outside test-novel.
NOVEL_PAIRS = frozenset({("purple", "star"), ("green", "triangle"), ("orange", "cross"),
                         ("yellow", "hexagon"), ("blue", "diamond"), ("red", "pentagon")})
# Prior frequencies (the train stream samples by them; POPE "popular" negatives follow them).
SHAPE_WEIGHTS = dict(zip(SHAPES, (16, 15, 14, 11, 11, 12, 11, 10)))
COLOR_WEIGHTS = dict(zip(COLORS, (15, 12, 12, 14, 15, 11, 10, 11)))
# Backgrounds are tints of a color family, named so that no caption calls them by an object color.
BACKGROUNDS = {"red": ((235, 170, 170), "pink"), "orange": ((240, 195, 150), "peach"),
               "yellow": ((235, 225, 160), "cream"), "green": ((170, 215, 180), "mint"),
               "blue": ((165, 195, 235), "light blue"), "purple": ((200, 180, 225), "lavender"),
               "white": ((200, 200, 200), "light gray"), "black": ((70, 70, 75), "dark gray")}
BG_STYLES = {"plain": "plain", "gradient": "gradient", "texture": "textured"}


@functools.lru_cache(maxsize=1)
def lexicon() -> tuple[str, ...]:
    """The fixed word list (florence_vl/data/lexicon.txt); integers 0-999 are words too (see `random_word`)."""
    text = (Path(__file__).with_name("lexicon.txt")).read_text(encoding="utf-8")
    return tuple(w.strip() for w in text.splitlines() if w.strip())


def random_word(rng: random.Random, p_number: float = 0.2) -> str:
    return str(rng.randrange(1000)) if rng.random() < p_number else rng.choice(lexicon())

