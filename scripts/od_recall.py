"""Does `<OD>` find the objects, and does it name them? (docs/nano.md): for each ground-truth object of the
first N test scenes, the predicted box of highest IoU, with and without the right label; and, to tell naming from
finding, `<REGION_TO_CATEGORY>` asked about each object's true box.

    python scripts/od_recall.py models/nano/florence2 [N=40] [split=test]

Prints class-agnostic recall@0.5, recall@0.5 with the right label, mean best IoU and the predicted label counts
(what COCO mAP hides when a model localises but names wrongly), then the fraction of true boxes whose
`<REGION_TO_CATEGORY>` answer is the right shape, with the shapes it said. Greedy decoding, as in the docs' tables.
"""
import collections
import sys

import torch

from florence_vl import Florence2
from florence_vl.data.world import generate_scene
from florence_vl.eval.metrics import box_iou
from florence_vl.florence2.runner import TaskRequest

torch.set_num_threads(2)


def main(path: str, n: int = 40, split: str = "test") -> None:
    model = Florence2.from_pretrained(path, dtype=torch.float32)
    scenes = []
    seed = 0
    while len(scenes) < n:  # the first n scenes of the split that have objects
        scene = generate_scene(seed, split)
        seed += 1
        if scene.record.get("objects"):
            scenes.append(scene)
    results = model.run([s.image for s in scenes], "<OD>", num_beams=1, max_new_tokens=256, with_scores=False)
    found = named = 0
    best_ious, labels = [], collections.Counter()
    for scene, result in zip(scenes, results):
        predicted = list(zip(result.output["bboxes"], result.output["labels"]))
        labels.update(label for _, label in predicted)
        for obj in scene.record["objects"]:
            scored = [(box_iou(obj["bbox"], box), label) for box, label in predicted] or [(0.0, None)]
            best = max(s for s, _ in scored)
            best_ious.append(best)
            found += best >= 0.5
            named += any(s >= 0.5 and label == obj["class"] for s, label in scored)
    total = len(best_ious)
    print(f"{path}: {n} {split} scenes, {total} objects: class-agnostic recall@0.5 {found / total:.3f}, "
          f"with the right label {named / total:.3f}, mean best IoU {sum(best_ious) / total:.3f}; "
          f"labels {dict(labels.most_common())}")
    objects = [(scene, obj) for scene in scenes for obj in scene.record["objects"]]
    answers = model.run_requests([TaskRequest(scene.image, "<REGION_TO_CATEGORY>", None, list(obj["bbox"]))
                                  for scene, obj in objects], num_beams=1, max_new_tokens=16, with_scores=False)
    names = [answer.text.split("<")[0].strip() for answer in answers]  # "circle<loc_..>..." -> "circle"
    said = collections.Counter(names)
    right = sum(name == obj["class"] for name, (_, obj) in zip(names, objects))
    print(f"  <REGION_TO_CATEGORY> on the {total} true boxes: the right shape {right / total:.3f}; "
          f"said {dict(said.most_common())}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) if a.isdigit() else a for a in sys.argv[2:]))
