"""Linear probes: which shape and colour an object is, read from a Florence-2 model's DaViT tokens (docs/nano.md).

    python scripts/probe_object_tokens.py models/nano/florence2

3,000 objects of val scenes; for each of three readings of the tokens (the last-stage token at the object's centre,
the box-weighted mean of the last-stage tokens its box covers, the same over the third stage's twice finer grid), a
logistic regression (LBFGS) fit on 2,400 objects and scored on 600. Prints the accuracies and the majority-class
baselines. A cheap check of a vision tower before a long Florence-2 / Florence-VL run.
"""
import sys

import torch

from florence_vl.data.world import generate_scene
from florence_vl.eval.linear_probe import linear_probe
from florence_vl.florence2.checkpoint import load_florence2
from florence_vl.train.object_crops import COLOR_NAMES, SHAPES, box_pool_weights

torch.manual_seed(0)
torch.set_num_threads(2)
bundle = load_florence2(sys.argv[1], dtype=torch.float32)
tower = bundle.model.eval().model.vision_tower
stage3 = {}  # blocks[2] is a ModuleList of layers: its last layer's output is the third stage's
tower.blocks[2][-1].register_forward_hook(lambda module, args, output: stage3.update(tokens=output))

features = {"stage-4 centre token": [], "stage-4 box mean": [], "stage-3 box mean": []}
shapes, colours = [], []
seed = 0
while len(shapes) < 3000:
    scene = generate_scene(seed, "val")
    seed += 1
    objects = scene.record.get("objects") or []
    if not objects:
        continue
    pixels = bundle.image_processor([scene.image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        last = tower(pixels).last_hidden_state[0]  # (C, side, side)
    boxes = [[tuple(obj["bbox"]) for obj in objects]]
    for name, grid in (("stage-4 box mean", last), ("stage-3 box mean", stage3["tokens"][0])):
        side = grid.shape[-1]
        features[name] += list(box_pool_weights(boxes, [scene.image.size], side) @ grid.flatten(1).T)
    width, height = scene.image.size
    side = last.shape[-1]
    for obj in objects:
        x0, y0, x1, y1 = obj["bbox"]
        column = min(side - 1, int((x0 + x1) / 2 / width * side))
        row = min(side - 1, int((y0 + y1) / 2 / height * side))
        features["stage-4 centre token"].append(last[:, row, column])
        shapes.append(SHAPES.index(obj["class"]))
        colours.append(COLOR_NAMES.index(obj["color"]))


def probe(X: torch.Tensor, labels: list[int]) -> tuple[float, float]:
    return linear_probe(X, torch.tensor(labels), 8)   # fit on 2,400 objects, scored on 600


print(sys.argv[1])
for name, rows in features.items():
    X = torch.stack(rows[:3000])
    print(f"  {name} ({X.shape[1]} channels): shape %.3f (majority %.3f), colour %.3f (majority %.3f)"
          % (probe(X, shapes[:3000]) + probe(X, colours[:3000])))
