"""A Florence-VL-nano stage-2 training step: the loss projected only at the target positions vs the LLM's own loss.

Stage 2 trains the projector and the LLM on conversations whose answers are a word or two: here 5.7% of the
positions are targets. The LLM's own loss (the reference) projects every position onto the vocabulary; `forward(loss_only=True)`
(florence_vl/vl/model.py) projects only the hidden states that predict a target, for the same loss and gradients
(tests/test_vl_model.py). Both time one whole step (forward, backward, AdamW) of the shipped Florence-VL-nano
(Llama d=192, 3 layers, vocabulary 2,048) on 16 eight-turn conversations in the world's question style, Florence-2
frozen with its features cached (as `cache_features` does in the recipe), fp32 as the recipe trains.
"""

from __future__ import annotations

import random

import torch
from PIL import Image

from common import others_note, timed


def conversation(rng: random.Random, turns: int = 8) -> list[tuple[str, str]]:
    """Questions and one-word answers in the style of the world's llava_instruct.json (the answers need not be true)."""
    from florence_vl.data.formats import SHORT_ANSWER
    from florence_vl.data.vocabulary import COLORS, SHAPES

    colors = sorted(COLORS)
    asks = [lambda: (f"What color is the {rng.choice(SHAPES)}?", rng.choice(colors)),
            lambda: (f"Is there a {rng.choice(colors)} {rng.choice(SHAPES)} in the image?", rng.choice(["yes", "no"])),
            lambda: (f"How many {rng.choice(SHAPES)}s are there?", str(rng.randint(0, 5))),
            lambda: (f"What shape is the {rng.choice(colors)} shape?", rng.choice(SHAPES))]
    out = []
    for k in range(turns):
        question, answer = rng.choice(asks)()
        out.append((("<image>\n" if k == 0 else "") + question + "\n" + SHORT_ANSWER, answer))
    return out


def run(quick: bool = False, repeats: int = 5, verbose: bool = True) -> list[dict]:
    from florence_vl.data.llava import Collator
    from florence_vl.models import resolve_model
    from florence_vl.vl.checkpoint import load_florence_vl
    from florence_vl.vl.processor import VLProcessor

    say = print if verbose else (lambda *a, **k: None)
    bundle = load_florence_vl(resolve_model("nano", "florence_vl"))
    model = bundle.model
    model.freeze_vision()
    model.cache_frozen_features(64)
    model.train()
    processor = VLProcessor(bundle.tokenizer, bundle.image_processor, model.config.template,
                            model.config.image_aspect_ratio, max_length=384)
    rng = random.Random(0)
    n = 8 if quick else 16
    items = []
    for i in range(n):
        ids, labels = processor.encode(conversation(rng))
        items.append({"input_ids": ids, "labels": labels,
                      "image": Image.new("RGB", (224, 288), tuple(rng.randrange(256) for _ in range(3)))})
    batch = Collator(processor)(items)
    pixels = batch["pixel_values"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step(loss_only: bool):
        def go():
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"], pixel_values=pixels, loss_only=loss_only).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss.item()
        return go

    step(True)(), step(False)()                                  # warm-up; fills the feature cache
    times, losses = {False: [], True: []}, {}
    for _ in range(repeats):                                     # interleaved, so a slow spell hits both sides
        for loss_only in (False, True):
            with timed() as t:
                losses[loss_only] = step(loss_only)()
            times[loss_only].append(t)
    t_ref, t_ours = (min(times[k], key=lambda t: t.seconds) for k in (False, True))
    loss_ref, loss_ours = losses[False], losses[True]
    targets = int((batch["labels"][:, 1:] != -100).sum())
    positions = int(batch["attention_mask"].sum()) + n * (model.vision_tower.num_image_tokens - 1)
    say(f"  {n} conversations, {positions} positions (images included), {targets} targets "
        f"({targets / positions:.1%}); step {t_ours.seconds:.3f} s vs {t_ref.seconds:.3f} s; losses "
        f"{loss_ours:.4f} / {loss_ref:.4f} (AdamW steps apart); {others_note(t_ours, t_ref)}")
    return [{"name": "vl_train_step" + ("_quick" if quick else ""), "ours": t_ours.seconds,
             "reference": t_ref.seconds, "unit": "s", "ratio": t_ref.seconds / t_ours.seconds,
             "targets": targets, "positions": positions, "ours_is": "forward(loss_only=True)",
             "reference_is": "the LLM's own loss over every position",
             "peak_rss_mb": max(t_ours.peak_rss_mb, t_ref.peak_rss_mb), "others": max(t_ours.others, t_ref.others)}]


if __name__ == "__main__":
    from common import result_line, setup

    setup()
    for row in run():
        print(result_line(row))
