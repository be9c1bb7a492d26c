"""Where does `<OCR>`'s score come from? (docs/nano.md): the eval's word exact match, split by scene kind, over the
first N scenes of a split that hold text, with a few examples of each kind.

    python scripts/ocr_by_kind.py models/nano/florence2 [N=160] [split=test]

The same reference as `florence-vl eval florence2` (the texts in reading order) and the same metric
(`word_exact_match`); greedy decoding, as in the docs' tables.
"""
import collections
import sys

import torch

from florence_vl import Florence2
from florence_vl.data.world import generate_scene
from florence_vl.eval.florence2_eval import _reading_order_text, _text
from florence_vl.eval.metrics import word_exact_match

torch.set_num_threads(2)
EXAMPLES = 2


def main(path: str, n: int = 160, split: str = "test") -> None:
    model = Florence2.from_pretrained(path, dtype=torch.float32)
    scenes, seed = [], 0
    while len(scenes) < n:
        scene = generate_scene(seed, split)
        seed += 1
        if scene.record.get("texts"):
            scenes.append(scene)
    results = model.run([s.image for s in scenes], "<OCR>", num_beams=1, max_new_tokens=128, with_scores=False)
    by_kind = collections.defaultdict(lambda: ([], []))
    for scene, result in zip(scenes, results):
        preds, refs = by_kind[scene.record["kind"]]
        preds.append(_text(result.output))
        refs.append(_reading_order_text(scene.record))
    for kind, (preds, refs) in sorted(by_kind.items()):
        print(f"{kind}: {len(refs)} scenes, word exact match {word_exact_match(preds, refs):.3f}")
        for pred, ref in list(zip(preds, refs))[:EXAMPLES]:
            print(f"    truth {ref!r} -> read {pred!r}")
    preds = [p for ps, _ in by_kind.values() for p in ps]
    refs = [r for _, rs in by_kind.values() for r in rs]
    print(f"all: {len(refs)} scenes, word exact match {word_exact_match(preds, refs):.3f}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) if a.isdigit() else a for a in sys.argv[2:]))
