"""A randomly initialised Florence-VL checkpoint of a small geometry, for benchmarks and demos where no trained
Florence-VL exists. Same seed, same weights. Its answers are meaningless; its shapes and costs are real.

    make_tiny_vl_checkpoint("out/random-vl", preset="nano")   # Florence-2-nano geometry + the nano LLM
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

CORPUS = ["a red circle above the blue square", "How many shapes are there? 3 yes no 0 1 2 4 5",
          "What color is the star? green purple orange yellow", "Describe the image in detail.",
          "Answer the question using a single word or phrase.", "The image shows a small yellow star.",
          "Is there a cross? There is a white cross left of the green triangle."]


def make_tiny_vl_checkpoint(out_dir: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """`preset`: "tiny" (toy sizes) or "nano" (Florence-2-nano geometry, the nano LLM of Florence-VL-nano)."""
    from ..florence2.checkpoint import make_tiny_checkpoint
    from ..florence2.runner import Florence2
    from .chat import FlorenceVL
    from .model import FlorenceVLForCausalLM, VLConfig
    from .nano_llm import build_llm, train_llm_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        florence2 = Florence2.from_pretrained(make_tiny_checkpoint(Path(tmp) / "florence2", preset=preset, seed=seed))
    tokenizer = train_llm_tokenizer(CORPUS, 400 if preset == "tiny" else 1000)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llm = build_llm(tokenizer, "tiny" if preset == "tiny" else "nano")
    model = FlorenceVLForCausalLM(florence2.model, florence2.tokenizer, florence2.num_image_tokens, llm, VLConfig())
    vl = FlorenceVL(model, tokenizer, florence2.image_processor, source=f"random:{preset}:{seed}")
    return Path(vl.save_pretrained(out_dir))
