"""Why does a referring expression miss? (docs/nano.md): for the expressions the eval asks (the first two objects with
one in each of the first N images of a split), the box enclosing the `<REFERRING_EXPRESSION_SEGMENTATION>` polygon is
sorted into: a hit (IoU >= 0.5 with the object meant); the right object, badly outlined (the object meant is the
scene's object it overlaps most, IoU < 0.5); another object (it overlaps some other object more); no object at all;
no polygon. The first kind of miss is a drawing problem, the second a reading-the-expression problem.

    python scripts/rec_errors.py models/nano/florence2 [N=200] [split=test] [beams=3]
"""
import collections
import json
import sys
from pathlib import Path

import torch

from florence_vl import Florence2
from florence_vl.eval.florence2_eval import enclosing_box  # the eval's own REC box
from florence_vl.eval.metrics import box_iou
from florence_vl.florence2.runner import TaskRequest

torch.set_num_threads(2)


def main(path: str, n: int = 200, split: str = "test", beams: int = 3) -> None:
    folder = Path("data") / split
    records = [json.loads(line) for line in (folder / "records.jsonl").open()][:n]
    asked = [(record, obj) for record in records
             for obj in [o for o in record.get("objects", []) if o.get("referring")][:2]]
    model = Florence2.from_pretrained(path, dtype=torch.float32)
    results = model.run_requests([TaskRequest(str(folder / record["image"]), "<REFERRING_EXPRESSION_SEGMENTATION>",
                                              obj["referring"]) for record, obj in asked],
                                 num_beams=beams, max_new_tokens=256, with_scores=False)
    kinds, missed = collections.Counter(), collections.Counter()
    for (record, obj), result in zip(asked, results):
        box = enclosing_box(result.output)
        if box is None:
            kinds["no polygon"] += 1
            continue
        overlaps = [(box_iou(box, other["bbox"]), other is obj) for other in record["objects"]]
        best, is_meant = max(overlaps, key=lambda pair: pair[0])
        if next(iou for iou, meant in overlaps if meant) >= 0.5:
            kinds["hit"] += 1
        elif best == 0.0:
            kinds["no object"] += 1
        elif is_meant:
            kinds["right object, IoU < 0.5"] += 1
        else:
            kinds["another object"] += 1
            missed[len(obj["referring"].split())] += 1
    total = sum(kinds.values())
    print(f"{path}: {total} expressions in {len(records)} {split} images, {beams} beam(s): "
          + ", ".join(f"{kind} {count / total:.3f}" for kind, count in kinds.most_common()))
    print(f"  'another object' misses by expression length (words): {dict(sorted(missed.items()))}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) if a.isdigit() else a for a in sys.argv[2:]))
