"""The shipped Florence-VL-nano loads from "nano" and answers a fixed test slice in the world's answer vocabulary.

A nano model is a nano model: Florence-VL-nano barely uses the image yet (docs/florence-vl.md gives its test
numbers and why: Florence-2-nano's features are nearly colour-blind). What this test guards is the shipped
checkpoint, the bf16-storage loader, the phi3 template and the answer format: a broken one answers garbage.
"""

import pytest
import torch

from florence_vl import FlorenceVL
from florence_vl.data.vocabulary import COLORS, SHAPES
from florence_vl.data.world import iter_scenes
from florence_vl.eval.vl_eval import instruction

VOCABULARY = {"color": set(COLORS), "shape": set(SHAPES), "exist": {"yes", "no"}, "spatial": {"yes", "no"}}


@pytest.fixture(scope="module")
def vl():
    return FlorenceVL.from_pretrained("nano")


def test_nano_florence_vl_loads_in_fp32_from_bf16_storage(vl):
    assert {p.dtype for p in vl.model.parameters()} == {torch.float32}
    assert vl.model.config.template == "phi3" and vl.model.config.fusion == "channel"


def test_nano_florence_vl_answers_in_the_worlds_vocabulary(vl):
    rows = [(scene.image, qa) for scene in iter_scenes("test", n=10) for qa in scene.record["qa"]
            if qa["type"] in (*VOCABULARY, "count")]
    answers = vl.answer([image for image, _ in rows], [instruction(qa["question"], qa["type"]) for _, qa in rows],
                        max_new_tokens=8)
    valid = [a in VOCABULARY[qa["type"]] if qa["type"] in VOCABULARY else a.isdigit()
             for a, (_, qa) in zip(answers, rows)]
    assert len(rows) >= 60 and sum(valid) / len(valid) >= 0.9
    assert len(set(answers)) >= 4                       # not one fixed string for every question
