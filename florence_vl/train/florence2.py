"""Florence-2-nano: multi-task training on the nano world, every task a prompt and every target text.

Each step draws `images_per_step` fresh scenes from the seeded train stream (scene seed = step * images + i,
so the data order is a pure function of the step and resuming is exact) and `tasks_per_image` task examples
per scene. DaViT runs once per image and its features are reused by all of that image's tasks, as the
image does not depend on the prompt.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import Florence2ForConditionalGeneration

from ..data.world import florence2_examples, generate_scene, iter_scenes
from ..florence2.checkpoint import Florence2Bundle, save_florence2
from ..florence2.geometry import florence2_config, image_processor, num_image_tokens
from ..florence2.runner import encoder_rows
from ..florence2.special_tokens import train_bart_tokenizer
from .loop import LoopConfig, train

# How often each task is drawn (relative); detection-style tasks carry the targets we measure.
DEFAULT_TASK_WEIGHTS = {
    "<OD>": 3.0, "<DENSE_REGION_CAPTION>": 1.0, "<REGION_PROPOSAL>": 1.0, "<CAPTION_TO_PHRASE_GROUNDING>": 1.0,
    "<REFERRING_EXPRESSION_SEGMENTATION>": 2.0, "<REGION_TO_SEGMENTATION>": 1.0, "<OPEN_VOCABULARY_DETECTION>": 2.0,
    "<REGION_TO_CATEGORY>": 0.5, "<REGION_TO_DESCRIPTION>": 0.5, "<REGION_TO_OCR>": 1.0, "<OCR>": 1.5,
    "<OCR_WITH_REGION>": 1.5, "<CAPTION>": 0.5, "<DETAILED_CAPTION>": 1.0, "<MORE_DETAILED_CAPTION>": 0.5,
}


@dataclass
class Florence2Recipe:
    out_dir: str
    geometry: str = "nano"
    tokenizer_vocab: int = 1500
    tokenizer_scenes: int = 2000
    images_per_step: int = 8
    tasks_per_image: int = 3
    max_target_tokens: int = 200
    task_weights: dict = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    davit_init: str | None = None    # UniCL-nano checkpoint whose image tower initialises DaViT
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=2000))

    @classmethod
    def from_dict(cls, data: dict) -> "Florence2Recipe":
        data = dict(data)
        loop = LoopConfig(**data.pop("loop", {}))
        return cls(loop=loop, **data)

    def to_dict(self) -> dict:
        return asdict(self)


def world_corpus(n_scenes: int) -> list[str]:
    """Text of the nano world for the tokenizer: prompts, targets without <loc_k>, captions, QA, lexicon."""
    import re

    from ..data.vocabulary import lexicon

    texts = list(lexicon()) + [str(i) for i in range(1000)]
    for scene in iter_scenes("train", 10_000_000, n=n_scenes):
        for example in florence2_examples(scene):
            texts.append(example["prompt"])
            texts.append(re.sub(r"<[^<>]+>", " ", example["target"]))
        for qa in scene.record.get("qa", []):
            texts.append(f"{qa.get('question', '')} {qa.get('answer', '')}")
    return texts


def build_tokenizer(recipe: Florence2Recipe):
    return train_bart_tokenizer(world_corpus(recipe.tokenizer_scenes), vocab_size=recipe.tokenizer_vocab)


def build_model(recipe: Florence2Recipe, tokenizer) -> Florence2ForConditionalGeneration:
    vocab = -(-len(tokenizer) // 64) * 64
    model = Florence2ForConditionalGeneration(florence2_config(recipe.geometry, vocab, tokenizer.image_token_id))
    if recipe.davit_init:
        from ..florence.checkpoint import load_image_tower_into

        load_image_tower_into(model.model.vision_tower, recipe.davit_init)
    return model


class WorldBatches:
    """batches(step): the step's scenes, task examples, and their tensors (deterministic per step)."""

    def __init__(self, recipe: Florence2Recipe, tokenizer, image_size: int, vision_config):
        self.recipe = recipe
        self.tokenizer = tokenizer
        self.processor = image_processor(image_size)
        self.n_image = num_image_tokens(vision_config, image_size)
        self.image_token_id = tokenizer.image_token_id

    def examples(self, step: int) -> list[tuple]:
        r = self.recipe
        picked = []
        for i in range(r.images_per_step):
            seed = step * r.images_per_step + i
            scene = generate_scene(seed, "train")
            by_task: dict[str, list[dict]] = {}
            for example in florence2_examples(scene):
                by_task.setdefault(example["task"], []).append(example)
            rng = random.Random(f"{r.loop.seed}-{seed}")
            tasks = sorted(by_task)
            weights = [r.task_weights.get(t, 1.0) for t in tasks]
            chosen = rng.choices(tasks, weights=weights, k=r.tasks_per_image)
            picked.append((scene.image, [rng.choice(by_task[t]) for t in chosen]))
        return picked

    def __call__(self, step: int) -> dict:
        picked = self.examples(step)
        pixel_values = self.processor([image for image, _ in picked], return_tensors="pt")["pixel_values"]
        prompts, targets = [], []
        for _, examples in picked:
            for example in examples:
                prompts.append(self.tokenizer(example["prompt"])["input_ids"])
                targets.append(self.tokenizer(example["target"])["input_ids"][: self.recipe.max_target_tokens])
        input_ids, attention_mask = encoder_rows(self.image_token_id, self.n_image, prompts,
                                                 self.tokenizer.pad_token_id)
        target_width = max(map(len, targets))
        return {
            "pixel_values": pixel_values,
            "tasks_per_image": self.recipe.tasks_per_image,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.tensor([t + [-100] * (target_width - len(t)) for t in targets]),
        }


def florence2_loss(model: Florence2ForConditionalGeneration, batch: dict) -> torch.Tensor:
    """Cross-entropy of the targets; one DaViT pass per image, shared by that image's task rows."""
    features = model.model.get_image_features(batch["pixel_values"]).pooler_output
    features = features.repeat_interleave(batch["tasks_per_image"], dim=0)
    input_ids = batch["input_ids"]
    embeds = model.get_input_embeddings()(input_ids)
    placeholders = (input_ids == model.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(placeholders, features.to(embeds.dtype))
    return model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def run(recipe: Florence2Recipe, *, progress: bool = True) -> Path:
    """Train Florence-2-nano and write it in the native layout to out_dir/model; returns that path."""
    out = Path(recipe.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = out / "tokenizer"
    if (tokenizer_dir / "tokenizer.json").exists():  # resume: the same tokenizer, not a retrained one
        from transformers import AutoTokenizer

        from ..florence2.special_tokens import ensure_florence2_tokens

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        ensure_florence2_tokens(tokenizer)
    else:
        tokenizer = build_tokenizer(recipe)
        tokenizer.save_pretrained(tokenizer_dir)
    torch.manual_seed(recipe.loop.seed)
    model = build_model(recipe, tokenizer)
    from ..florence2.geometry import preset

    image_size = preset(recipe.geometry)["image_size"]
    batches = WorldBatches(recipe, tokenizer, image_size, model.config.vision_config)
    train(model, batches, florence2_loss, recipe.loop, out, progress=progress)
    model.eval()
    bundle = Florence2Bundle(model=model, tokenizer=tokenizer, image_processor=image_processor(image_size),
                             layout="native", source=str(out))
    return save_florence2(bundle, out / "model", layout="native")
