"""UniCL training batches from the nano world: image-label pairs and image-description pairs in one batch.

(a) image-label pairs: a square crop around ONE object (its visible bbox grown by CROP_MARGIN, kept inside
    the image where it fits), labelled with its color-shape class (64 classes) and paired with a prompt
    drawn from TEMPLATES ("a photo of a red circle."). Crops of one class are positives of each other's prompts.
(b) image-description pairs: a whole scene with one of its captions; every distinct caption is its own label
    (two scenes with the very same caption text share it, as the text cannot tell them apart).

The batch of a step is a pure function of (seed, step): scene seeds and every random choice derive from
them, so a resumed run sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import random
import re

import torch
from PIL import Image

from ..data.vocabulary import COLORS, SHAPES, lexicon
from ..data.world import generate_scene, iter_scenes
from ..florence2.geometry import image_processor
from .model import tokenize

CLASS_NAMES = tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)   # index = 8 * color + shape
CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}
TEMPLATES = (
    "a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.", "a drawing of a {}.",
    "a {} shape.", "a close-up of a {}.", "the {}.", "a cropped photo of a {}.", "a simple {}.",
)
CROP_MARGIN = 0.2       # the crop's side is (1 + margin) x the object's longer side
MIN_VISIBLE = 0.5       # objects hidden by more than half are not used as crops (training and evaluation)
CAPTION_LEVELS = ("brief", "detailed")


def fill(template: str, name: str) -> str:
    """template.format(name) with "a" turned into "an" before a vowel ("an orange star")."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", template.format(name))


def crop_object(image: Image.Image, bbox, margin: float = CROP_MARGIN) -> Image.Image:
    """A square crop centred on bbox [x0, y0, x1, y1], side (1 + margin) * longer side, shifted inside the image."""
    x0, y0, x1, y1 = bbox
    width, height = image.size
    side = int(round(max(x1 - x0, y1 - y0) * (1 + margin)))
    side = max(4, min(side, width, height))
    left = min(max(int(round((x0 + x1 - side) / 2)), 0), width - side)
    top = min(max(int(round((y0 + y1 - side) / 2)), 0), height - side)
    box = (left, top, left + side, top + side)
    return image.crop(box)


def usable_objects(record: dict, min_visible: float = MIN_VISIBLE) -> list[dict]:
    return [o for o in record["objects"] if o.get("visible", 1.0) >= min_visible]


def world_corpus(n_scenes: int = 1000) -> list[str]:
    """Text for the UniCL tokenizer: the lexicon, numbers, every class prompt and the captions of n train scenes."""
    texts = list(lexicon()) + [str(i) for i in range(1000)]
    texts += [fill(t, name) for name in CLASS_NAMES for t in TEMPLATES]
    for scene in iter_scenes("train", 20_000_000, n=n_scenes):
        texts += list(scene.record["captions"].values())
    return texts


def build_tokenizer(vocab_size: int = 1000, n_scenes: int = 1000):
    from ..florence2.special_tokens import train_bart_tokenizer

    return train_bart_tokenizer(world_corpus(n_scenes), vocab_size=vocab_size)


class UniCLBatches:
    """batches(step) -> {pixel_values, input_ids, attention_mask, labels}: image-label + image-description pairs."""

    def __init__(self, tokenizer, image_size: int, max_len: int, batch_size: int = 64, label_fraction: float = 0.5,
                 crops_per_scene: int = 2, caption_levels=CAPTION_LEVELS, seed: int = 0):
        if not 0.0 <= label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in [0, 1], got {label_fraction}")
        self.tokenizer = tokenizer
        self.processor = image_processor(image_size)
        self.max_len = max_len
        self.batch_size = batch_size
        self.n_label = round(batch_size * label_fraction)
        self.crops_per_scene = max(1, crops_per_scene)
        self.caption_levels = tuple(caption_levels)
        self.seed = seed

    def label_pairs(self, step: int, rng: random.Random) -> list[tuple[Image.Image, str, str]]:
        """(crop, prompt, class name) for n_label objects from shapes/mixed scenes of this step."""
        pairs, i = [], 0
        while len(pairs) < self.n_label:
            seed = (step * self.n_label + i) * 2 + self.seed * 1_000_003
            scene = generate_scene(seed, "train", kind="shapes" if i % 3 else "mixed")
            objects = usable_objects(scene.record)
            for obj in rng.sample(objects, min(len(objects), self.crops_per_scene, self.n_label - len(pairs))):
                name = f"{obj['color']} {obj['class']}"
                pairs.append((crop_object(scene.image, obj["bbox"]), fill(rng.choice(TEMPLATES), name), name))
            i += 1
        return pairs

    def description_pairs(self, step: int, rng: random.Random) -> list[tuple[Image.Image, str, str]]:
        """(scene, caption, caption) for the rest of the batch; scenes of every kind."""
        n = self.batch_size - self.n_label
        pairs = []
        for i in range(n):
            scene = generate_scene((step * n + i) * 2 + 1 + self.seed * 1_000_003, "train")
            caption = scene.record["captions"][rng.choice(self.caption_levels)]
            pairs.append((scene.image, caption, caption))
        return pairs

    def examples(self, step: int) -> list[tuple[Image.Image, str, int]]:
        """(image, text, label) of the step: labels 0..63 are classes, 64.. one per distinct caption."""
        rng = random.Random(f"unicl/{self.seed}/{step}")
        out = [(image, text, CLASS_INDEX[name]) for image, text, name in self.label_pairs(step, rng)]
        captions: dict[str, int] = {}
        for image, text, caption in self.description_pairs(step, rng):
            out.append((image, text, captions.setdefault(caption, len(CLASS_NAMES) + len(captions))))
        return out

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        examples = self.examples(step)
        batch = tokenize(self.tokenizer, [text for _, text, _ in examples], self.max_len)
        batch["pixel_values"] = self.processor([image for image, _, _ in examples], return_tensors="pt")["pixel_values"]
        batch["labels"] = torch.tensor([label for _, _, label in examples])
        return batch
