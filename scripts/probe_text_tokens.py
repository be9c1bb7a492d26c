"""Linear probes: does a Florence-2 model's DaViT encode the glyphs of the text it is asked to read (docs/nano.md)?

    python scripts/probe_text_tokens.py models/nano/florence2 [STRINGS]

For STRINGS (default 3,000) strings of generated val text scenes, the first character (a-z, 0-9: 36 classes) is
probed from its region (the string quad's first 1/len along the text), read two ways at each of the four DaViT
stages (64x64, 32x32, 16x16, 8x8 grids at 256 px): the box-weighted mean of the tokens its box covers, and the
tokens sampled bilinearly at 3 x 4 points in it, rotated with the text (which keeps where in the character each
feature is). Beside them, the processed image's pixels at the same points and at 6 x 8, and the majority class.
Each is a logistic regression fit on 80% of the strings and scored on the rest. The encoder and decoder see only
the last stage: if the first character is read well from an earlier stage and not from the last, the glyphs are
lost on the way down; if from none, the tower never learnt them.
"""
import string
import sys

import torch

from florence_vl.data.world import generate_scene
from florence_vl.eval.linear_probe import linear_probe
from florence_vl.florence2.checkpoint import load_florence2
from florence_vl.train.object_crops import box_pool_weights

CHARACTERS = string.ascii_lowercase + string.digits

torch.manual_seed(0)
bundle = load_florence2(sys.argv[1], dtype=torch.float32)
wanted = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
tower = bundle.model.eval().model.vision_tower
stages = {}
for index in range(len(tower.blocks) - 1):  # blocks[i] is a ModuleList of layers: its last layer's output
    tower.blocks[index][-1].register_forward_hook(
        lambda module, args, output, index=index: stages.update({index + 1: output}))

features = {}
labels = []


def first_character(text: dict) -> tuple[torch.Tensor, tuple[float, float, float, float]]:
    """The first character's region of a string: its quad's first 1/len along the baseline, as the quad's
    top-left corner and its two edge vectors (along the text, down the text), and that region's axis-aligned box."""
    corners = torch.tensor(text["quad"], dtype=torch.float64).view(4, 2)     # clockwise from top-left
    along = (corners[1] - corners[0]) / len(text["text"])
    down = corners[3] - corners[0]
    region = torch.stack([corners[0], corners[0] + along, corners[0] + along + down, corners[0] + down])
    return torch.stack([corners[0], along, down]), (*region.min(0).values.tolist(), *region.max(0).values.tolist())


def sampled(grid: torch.Tensor, regions: list[torch.Tensor], size: tuple[int, int], across: int = 3,
            down: int = 4) -> torch.Tensor:
    """(regions, channels * across * down): `grid` (channels, H, W) sampled bilinearly at across x down points
    in each region (corner, along, down), so the probe sees where in the character each feature is."""
    scale = torch.tensor(size, dtype=torch.float64)
    u = ((torch.arange(across) + 0.5) / across).double()
    v = ((torch.arange(down) + 0.5) / down).double()
    rows = []
    for corner, along, below in regions:
        points = corner + u[None, :, None] * along + v[:, None, None] * below     # (down, across, 2) pixels
        where = (points / scale * 2 - 1).float()[None]
        rows.append(torch.nn.functional.grid_sample(grid[None], where, align_corners=False).flatten())
    return torch.stack(rows)


seed = 0
while len(labels) < wanted:
    scene = generate_scene(seed, "val", kind="text")
    seed += 1
    texts = [t for t in scene.record.get("texts") or [] if t["text"][:1] in CHARACTERS]
    if not texts:
        continue
    pixels = bundle.image_processor([scene.image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        stages[len(tower.blocks)] = tower(pixels).last_hidden_state
    regions, boxes = zip(*map(first_character, texts))
    labels += [CHARACTERS.index(text["text"][0]) for text in texts]
    for stage, grid in stages.items():
        grid = grid[0]
        weights = box_pool_weights([boxes], [scene.image.size], grid.shape[-1])
        name = f"stage {stage} ({grid.shape[-1]}x{grid.shape[-1]} grid)"
        features.setdefault(f"{name}, box mean", []).extend(weights @ grid.flatten(1).T)
        features.setdefault(f"{name}, 3x4 points", []).extend(sampled(grid, regions, scene.image.size))
    features.setdefault("pixels, 3x4 points", []).extend(sampled(pixels[0], regions, scene.image.size))
    features.setdefault("pixels, 6x8 points", []).extend(sampled(pixels[0], regions, scene.image.size, 6, 8))


print(f"{sys.argv[1]}: first character of {len(labels)} strings ({len(CHARACTERS)} classes)")
y = torch.tensor(labels)
for name in sorted(features):
    X = torch.stack(features[name])
    print(f"  {name}, {X.shape[1]} features: %.3f (majority %.3f)" % linear_probe(X, y, len(CHARACTERS)))
