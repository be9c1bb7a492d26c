"""Shared fixtures: a tiny Florence-2 (same shape relations as the published ones, toy sizes), built once."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

WORDS = ["a red circle", "the blue square", "green triangle left of the star", "HELLO world 42",
         "yellow pentagon above a purple hexagon", "white cross", "black diamond", "orange"]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from florence_vl.florence2.special_tokens import train_bart_tokenizer
    from florence_vl.florence2.tasks import TASKS

    return train_bart_tokenizer([t.prompt for t in TASKS.values()] + WORDS, vocab_size=400)


def spread_weights(model, seed: int = 0, std: float = 0.5):
    """Random weights spread widely enough that outputs depend on the image and the prompt."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


@pytest.fixture(scope="session")
def tiny_florence2(tiny_tokenizer):
    from transformers import Florence2ForConditionalGeneration

    from florence_vl.florence2.geometry import florence2_config, image_processor
    from florence_vl.florence2.runner import Florence2

    torch.manual_seed(0)
    config = florence2_config("tiny", len(tiny_tokenizer), tiny_tokenizer.image_token_id)
    model = spread_weights(Florence2ForConditionalGeneration(config))
    return Florence2(model, tiny_tokenizer, image_processor(64), source="tiny")


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A 6-scene generated train split (three of them with shapes): the Florence-VL training tests' data."""
    from florence_vl.data.formats import write_split

    out = tmp_path_factory.mktemp("world")
    write_split("train", 6, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_florence2_dir(tmp_path_factory):
    """The tiny Florence-2 saved as a checkpoint folder, for code that loads one by path."""
    from florence_vl.florence2.checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("f2") / "tiny", seed=3)
