"""The shipped nano models load and reach a sanity floor on a small fixed slice of the test split.

The floors sit well below what the shipped checkpoints measure (docs/nano.md), and well above what a model
that ignores the image can reach, so they catch a broken checkpoint, loader or pre-processing.
"""

import pytest

from florence_vl.data.world import iter_scenes
from florence_vl.eval.metrics import caption_scores, most_common_caption_baseline
from florence_vl.florence2.runner import Florence2


@pytest.fixture(scope="module")
def nano():
    return Florence2.from_pretrained("nano")


@pytest.fixture(scope="module")
def slice_():
    return list(iter_scenes("test", n=24))


def test_nano_florence2_captions_beat_the_most_common_caption(nano, slice_):
    results = nano.run([s.image for s in slice_], "<CAPTION>", num_beams=1, max_new_tokens=40)
    preds = {i: r.output for i, r in enumerate(results)}
    refs = {i: [s.record["captions"]["brief"]] for i, s in enumerate(slice_)}
    train = [s.record["captions"]["brief"] for s in iter_scenes("train", n=300)]
    model, baseline = caption_scores(preds, refs), most_common_caption_baseline(train, refs)
    assert len(set(preds.values())) >= 6                 # it looks at the images: the answers differ
    assert model["CIDEr"] > 1.5 * baseline["CIDEr"]      # measured on this slice: see docs/nano.md
