"""Image-label data for Florence-2's DaViT: nano-world objects labelled by shape and colour, as crops or in scenes.

Why a stage of its own (docs/nano.md): after two Florence-2 stages the DaViT tokens encode where objects are and
their colour but hardly their shape (a linear probe of the token at an object's centre: shape 0.23, majority 0.18),
so `<OD>` finds objects and names them wrongly. A direct shape signal on whole scenes did not help in 300-400 steps
(a label at each object-centre token, or at every token an object covers: shape stayed at chance for DaViT and for
a plain CNN alike), while object crops taught the same DaViT shape in a few hundred steps. This is the
image-label half of Florence's UniCL data (an image and its class name), with the text tower replaced by a
learned table of the 16 label words: the same cross-entropy UniCL reduces to when every class has one prompt.

Two sources (`source`): "crops" (each object cut out, resized, its tokens mean-pooled) and "scenes" (whole scenes
at the model's input size, each object's label read from the mean of the last-stage tokens its box covers, weighted
by the overlap). Crops teach shape fastest, but the tokens a scene shows the encoder are not the ones crops train;
"scenes" trains exactly those, in the form a decoder's cross-attention can read them (a pooled box).

The stage trains only the vision tower (and the throw-away label head) of a Florence-2 checkpoint and writes the
whole checkpoint back with the new tower, for the next Florence-2 stage to adapt its encoder and decoder to.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.vocabulary import COLORS, SHAPES
from ..data.world import generate_scene
from ..florence2.geometry import feature_map_side, image_processor
from .loop import LoopConfig
from .tower_stage import run_tower_stage, tower_loop, with_loop

COLOR_NAMES = list(COLORS)


@dataclass
class ObjectCropRecipe:
    out_dir: str
    init_from: str = "nano"          # the Florence-2 checkpoint whose DaViT this stage trains
    crop_size: int = 64              # pixels the crops are resized to (medium objects keep about their scale)
    crops_per_step: int = 64
    margin: tuple = (1.2, 3.0)       # crop side / object's longer side, drawn uniformly: objects span 21-53 px
    jitter: float = 0.1              # crop centre offset, as a fraction of the crop side
    colour_weight: float = 0.3       # colour is easy (the tower has it already); shape is what this stage is for
    source: str = "crops"            # "crops" or "scenes" (see the module docstring)
    scenes_per_step: int = 16        # with source "scenes": whole scenes per step (~3 objects each)
    scene_size: int = 256            # with source "scenes": the input size scenes are resized to
    first_scene: int = 0
    loop: LoopConfig = field(default_factory=tower_loop)

    @classmethod
    def from_dict(cls, data: dict) -> "ObjectCropRecipe":
        data = with_loop(data)
        if "margin" in data:
            data["margin"] = tuple(data["margin"])
        recipe = cls(**data)
        if recipe.source not in ("crops", "scenes"):
            raise ValueError(f"source must be 'crops' or 'scenes', got {recipe.source!r}")
        return recipe


def object_crops(first_scene: int, split: str, n: int, recipe: ObjectCropRecipe) -> tuple[list, list[int], list[int]]:
    """n crops (PIL images) from consecutive scenes starting at `first_scene`, with shape and colour indices."""
    rng = random.Random(f"crops-{split}-{first_scene}")
    images, shapes, colours = [], [], []
    seed = first_scene
    while len(images) < n:
        scene = generate_scene(seed, split)
        seed += 1
        for obj in scene.record.get("objects") or []:
            x0, y0, x1, y1 = obj["bbox"]
            side = max(x1 - x0, y1 - y0) * rng.uniform(*recipe.margin)
            cx = (x0 + x1) / 2 + rng.uniform(-recipe.jitter, recipe.jitter) * side
            cy = (y0 + y1) / 2 + rng.uniform(-recipe.jitter, recipe.jitter) * side
            box = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
            images.append(scene.image.crop(box))  # outside the image PIL pads with black, like a border
            shapes.append(SHAPES.index(obj["class"]))
            colours.append(COLOR_NAMES.index(obj["color"]))
    return images[:n], shapes[:n], colours[:n]


def box_pool_weights(boxes: list[list[tuple]], sizes: list[tuple[int, int]], side: int) -> torch.Tensor:
    """(objects, images * side * side): each object's weights over the token grid of its image, the fraction of
    each token's cell its box covers, normalised to sum to 1. boxes[i] are image i's boxes in its own pixels."""
    rows = []
    cells = torch.arange(side, dtype=torch.float64)
    for index, (image_boxes, (width, height)) in enumerate(zip(boxes, sizes)):
        for x0, y0, x1, y1 in image_boxes:
            def overlap(a, b):  # length of [a, b] (in cells) inside each cell [j, j + 1]
                return (torch.minimum(cells + 1, torch.tensor(b)) - torch.maximum(cells, torch.tensor(a))).clamp(min=0)
            grid = overlap(y0 / height * side, y1 / height * side)[:, None] * overlap(x0 / width * side,
                                                                                    x1 / width * side)[None, :]
            row = torch.zeros(len(boxes), side * side, dtype=torch.float64)
            row[index] = grid.flatten() / grid.sum().clamp(min=1e-12)
            rows.append(row.flatten())
    return torch.stack(rows).float()


def object_scenes(first_scene: int, split: str, n: int) -> tuple[list, list, list[int], list[int]]:
    """n consecutive scenes with objects from `first_scene`: images, their boxes, and every object's labels."""
    images, boxes, shapes, colours = [], [], [], []
    seed = first_scene
    while len(images) < n:
        scene = generate_scene(seed, split)
        seed += 1
        objects = scene.record.get("objects") or []
        if not objects:
            continue
        images.append(scene.image)
        boxes.append([tuple(obj["bbox"]) for obj in objects])
        shapes += [SHAPES.index(obj["class"]) for obj in objects]
        colours += [COLOR_NAMES.index(obj["color"]) for obj in objects]
    return images, boxes, shapes, colours


class TowerWithLabelHead(torch.nn.Module):
    """DaViT, its last-stage tokens pooled (mean, or per object with `pool` weights), and a linear head over
    the shape and colour words."""

    def __init__(self, vision_tower: torch.nn.Module, width: int):
        super().__init__()
        self.vision_tower = vision_tower
        self.head = label_head(width)

    def forward(self, pixel_values: torch.Tensor, pool: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return label_logits(self.vision_tower, self.head, pixel_values, pool)


def label_head(width: int) -> torch.nn.Linear:
    return torch.nn.Linear(width, len(SHAPES) + len(COLOR_NAMES))


def label_logits(vision_tower, head, pixel_values: torch.Tensor, pool: torch.Tensor | None = None):
    """(shape logits, colour logits) per crop (pool None: all its tokens) or per object (`pool` weights)."""
    tokens = vision_tower(pixel_values).last_hidden_state  # (B, C, H, W)
    if pool is None:
        pooled = tokens.mean((2, 3))
    else:
        pooled = pool.to(tokens.dtype) @ tokens.permute(0, 2, 3, 1).reshape(-1, tokens.shape[1])
    logits = head(pooled)
    return logits[:, :len(SHAPES)], logits[:, len(SHAPES):]


def label_loss(shape_logits: torch.Tensor, colour_logits: torch.Tensor, batch: dict, colour_weight: float):
    return (F.cross_entropy(shape_logits, batch["shapes"])
            + colour_weight * F.cross_entropy(colour_logits, batch["colours"]))


class CropBatches:
    """batches(step) of either source; "scenes" needs the side of the tower's last feature map."""

    def __init__(self, recipe: ObjectCropRecipe, split: str = "train", feature_side: int | None = None):
        self.recipe, self.split, self.feature_side = recipe, split, feature_side
        self.processor = image_processor(recipe.scene_size if recipe.source == "scenes" else recipe.crop_size)
        if recipe.source == "scenes" and feature_side is None:
            raise ValueError("source 'scenes' needs feature_side (the tower's last feature-map side)")

    def __call__(self, step: int) -> dict:
        r = self.recipe
        if r.source == "scenes":
            # text and chart scenes have no objects and are skipped: 4x the seeds per step keep steps apart
            images, boxes, shapes, colours = object_scenes(r.first_scene + step * r.scenes_per_step * 4, self.split,
                                                           r.scenes_per_step)
            return {"pixel_values": self.processor(images, return_tensors="pt")["pixel_values"],
                    "pool": box_pool_weights(boxes, [image.size for image in images], self.feature_side),
                    "shapes": torch.tensor(shapes), "colours": torch.tensor(colours)}
        # ~3 objects per scene: 1,000 scene seeds per step leave the streams of different steps apart
        images, shapes, colours = object_crops(r.first_scene + step * 1000, self.split, r.crops_per_step, r)
        return {"pixel_values": self.processor(images, return_tensors="pt")["pixel_values"],
                "shapes": torch.tensor(shapes), "colours": torch.tensor(colours)}


class CropLoss:
    def __init__(self, colour_weight: float):
        self.colour_weight = colour_weight

    def __call__(self, model: TowerWithLabelHead, batch: dict) -> torch.Tensor:
        return label_loss(*model(batch["pixel_values"], batch.get("pool")), batch, self.colour_weight)


@torch.no_grad()
def crop_accuracy(model: TowerWithLabelHead, batch: dict) -> dict:
    was_training = model.training
    model.eval()
    shape_logits, colour_logits = model(batch["pixel_values"], batch.get("pool"))
    model.train(was_training)
    return {"shape_accuracy": (shape_logits.argmax(1) == batch["shapes"]).float().mean().item(),
            "colour_accuracy": (colour_logits.argmax(1) == batch["colours"]).float().mean().item()}


def run(recipe: ObjectCropRecipe, *, progress: bool = True) -> Path:
    """Train the DaViT of `init_from` on object crops; writes the whole Florence-2 checkpoint to out_dir/model."""
    def prepare(bundle):
        model = TowerWithLabelHead(bundle.model.model.vision_tower, bundle.model.config.vision_config.embed_dim[-1])
        side = feature_map_side(bundle.model.config.vision_config, recipe.scene_size)
        held_out = CropBatches(replace(recipe, crops_per_step=600, scenes_per_step=200), "val", side)(0)
        return model, CropBatches(recipe, feature_side=side), held_out

    return run_tower_stage(recipe, prepare, CropLoss(recipe.colour_weight), crop_accuracy,
                           lambda r: f"held-out {recipe.source} shape accuracy {r['shape_accuracy']:.3f}, "
                                     f"colour {r['colour_accuracy']:.3f}", progress=progress)
