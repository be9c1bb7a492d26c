"""Glyph data for Florence-2's DaViT: the world's text lines read character by character from the last-stage tokens.

Why (docs/nano.md, 2026-12-07, sixth session): the shipped Florence-2-nano reads no sign (word exact match 0.005 on
text scenes) and its tokens do not hold the glyphs. A linear probe of a string's first character (36 classes,
majority 0.106) from the DaViT features sampled at 3x4 points over the character gives 0.29 at the first stage (as
the pixels do at those points), 0.20, 0.15 and 0.085 at the last stage's 8x8 grid: what the encoder and decoder see
carries nothing of the characters, so no amount of decoder training reads them. The tower was pre-trained on shape
and colour labels (UniCL-nano) and learns at 1/10 of the lr in Florence-2's stages.

The signal: a head on each last-stage token predicts the characters at a 4x4 grid of sub-positions of its cell (a
4x finer logit map, as a pixel shuffle), the map is sampled along each string's centre line (two points per
character) and a CTC loss (blank = 0) compares the sampled sequence with the string: a CRNN-style recogniser whose
only learned part beside the tower is one linear layer, so the glyphs must be in the tokens. Like the object-label
stage (object_crops.py) it trains only the tower and a throw-away head, either as a stage of its own (`run`) or
beside a Florence-2 stage (`tower_glyphs` in the recipe).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.world import generate_scene
from ..florence2.geometry import image_processor
from .loop import LoopConfig
from .tower_stage import run_tower_stage, tower_loop, with_loop

GLYPHS = " " + string.ascii_lowercase + string.digits   # CTC classes 1..37; 0 is the blank
UPSAMPLE = 4                                             # sub-positions per token side in the logit map
POINTS_PER_CHARACTER = 2


def glyph_ids(text: str) -> list[int]:
    """The CTC targets of a string: its characters' classes (those outside GLYPHS are dropped)."""
    return [GLYPHS.index(c) + 1 for c in text.lower() if c in GLYPHS]


def line_points(quad: list[float], size: tuple[int, int], count: int) -> torch.Tensor:
    """(count, 2) points along a text quad's centre line (left edge's middle to the right edge's), in
    grid_sample's [-1, 1] coordinates of an image of `size` (width, height)."""
    corners = torch.tensor(quad, dtype=torch.float64).view(4, 2)          # clockwise from top-left
    start, end = (corners[0] + corners[3]) / 2, (corners[1] + corners[2]) / 2
    fractions = ((torch.arange(count, dtype=torch.float64) + 0.5) / count)[:, None]
    points = start + fractions * (end - start)
    return (points / torch.tensor(size, dtype=torch.float64) * 2 - 1).float()


def text_scenes(first_scene: int, split: str, n: int) -> list:
    """n consecutive scenes with readable text from `first_scene` (shape scenes are skipped)."""
    scenes, seed = [], first_scene
    while len(scenes) < n:
        scene = generate_scene(seed, split)
        seed += 1
        if any(glyph_ids(text["text"]) for text in scene.record.get("texts") or []):
            scenes.append(scene)
    return scenes


class GlyphBatches:
    """batches(step): `scenes_per_step` scenes with text at the model's input size, and for every string the
    points of its centre line, its character classes and the lengths CTC needs."""

    def __init__(self, first_scene: int, scenes_per_step: int, image_size: int, split: str = "train"):
        self.first_scene, self.scenes_per_step, self.split = first_scene, scenes_per_step, split
        self.processor = image_processor(image_size)

    def __call__(self, step: int) -> dict:
        # ~55% of scenes have text: 4x the seeds per step keep the streams of different steps apart
        return self.batch(text_scenes(self.first_scene + step * self.scenes_per_step * 4, self.split,
                                      self.scenes_per_step))

    def batch(self, scenes: list) -> dict:
        images, points, targets, owners, texts = [], [], [], [], []
        for index, scene in enumerate(scenes):
            images.append(scene.image)
            for text in scene.record.get("texts") or []:
                ids = glyph_ids(text["text"])
                if ids:
                    points.append(line_points(text["quad"], scene.image.size, POINTS_PER_CHARACTER * len(ids) + 2))
                    targets.append(torch.tensor(ids))
                    owners.append(index)
                    texts.append(text["text"].lower())
        longest = max(len(p) for p in points)
        padded = torch.zeros(len(points), longest, 2)
        for row, line in enumerate(points):
            padded[row, :len(line)] = line
        return {"pixel_values": self.processor(images, return_tensors="pt")["pixel_values"],
                "points": padded, "point_counts": torch.tensor([len(p) for p in points]),
                "owners": torch.tensor(owners), "targets": torch.cat(targets),
                "target_lengths": torch.tensor([len(t) for t in targets]), "texts": texts}


def glyph_head(width: int) -> torch.nn.Linear:
    return torch.nn.Linear(width, (len(GLYPHS) + 1) * UPSAMPLE * UPSAMPLE)


def glyph_logits(vision_tower, head: torch.nn.Linear, batch: dict) -> torch.Tensor:
    """(strings, points, classes): the 4x finer logit map of each image sampled along each string's line."""
    tokens = vision_tower(batch["pixel_values"]).last_hidden_state            # (B, C, H, W)
    maps = F.pixel_shuffle(head(tokens.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), UPSAMPLE)   # (B, K, 4H, 4W)
    sampled = F.grid_sample(maps[batch["owners"]].float(), batch["points"][:, None].to(maps.device),
                            align_corners=False)                               # (strings, K, 1, points)
    return sampled[:, :, 0].transpose(1, 2)


def glyph_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)                # (points, strings, classes)
    return F.ctc_loss(log_probs, batch["targets"], batch["point_counts"], batch["target_lengths"], blank=0,
                      zero_infinity=True)


def read_lines(logits: torch.Tensor, point_counts: torch.Tensor) -> list[str]:
    """Greedy CTC decoding: the best class at each point, repeats merged, blanks dropped."""
    lines = []
    for row, count in zip(logits.argmax(-1), point_counts):
        best = row[:int(count)].tolist()
        lines.append("".join(GLYPHS[c - 1] for i, c in enumerate(best) if c and (i == 0 or c != best[i - 1])))
    return lines


class TowerWithGlyphHead(torch.nn.Module):
    def __init__(self, vision_tower: torch.nn.Module, width: int):
        super().__init__()
        self.vision_tower = vision_tower
        self.head = glyph_head(width)

    def forward(self, batch: dict) -> torch.Tensor:
        return glyph_logits(self.vision_tower, self.head, batch)


def glyph_batch_loss(model: TowerWithGlyphHead, batch: dict) -> torch.Tensor:
    return glyph_loss(model(batch), batch)


@torch.no_grad()
def glyph_accuracy(model: TowerWithGlyphHead, batch: dict) -> dict:
    """Greedy reading of the held-out strings by the head: exact-match share and character error rate."""
    from ..eval.metrics import character_error_rate

    was_training = model.training
    model.eval()
    read = read_lines(model(batch), batch["point_counts"])
    model.train(was_training)
    truth = batch["texts"]
    return {"line_exact": sum(a == b for a, b in zip(read, truth)) / len(truth),
            "cer": character_error_rate(read, truth)}


@dataclass
class GlyphRecipe:
    out_dir: str
    init_from: str = "nano"          # the Florence-2 checkpoint whose DaViT this stage trains
    scenes_per_step: int = 8
    image_size: int = 256
    first_scene: int = 0
    held_out_scenes: int = 100
    loop: LoopConfig = field(default_factory=tower_loop)

    @classmethod
    def from_dict(cls, data: dict) -> "GlyphRecipe":
        return cls(**with_loop(data))


def run(recipe: GlyphRecipe, *, progress: bool = True) -> Path:
    """Train the DaViT of `init_from` to keep the glyphs of text lines; writes the whole Florence-2 checkpoint
    (with the new tower) to out_dir/model."""
    def prepare(bundle):
        model = TowerWithGlyphHead(bundle.model.model.vision_tower, bundle.model.config.vision_config.embed_dim[-1])
        batches = GlyphBatches(recipe.first_scene, recipe.scenes_per_step, recipe.image_size)
        return model, batches, batches.batch(text_scenes(0, "val", recipe.held_out_scenes))

    return run_tower_stage(recipe, prepare, glyph_batch_loss, glyph_accuracy,
                           lambda r: f"held-out lines read exactly {r['line_exact']:.3f}, CER {r['cer']:.3f}",
                           progress=progress)
