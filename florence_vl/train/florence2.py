"""Florence-2-nano: multi-task training on the nano world, every task a prompt and every target text.

Each step draws `images_per_step` fresh scenes from the seeded train stream (scene seed = step * images + i,
so the data order is a pure function of the step and resuming is exact) and `tasks_per_image` task examples
per scene. DaViT runs once per image and its features are reused by all of that image's tasks, as the
image does not depend on the prompt.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Florence2ForConditionalGeneration
from transformers.models.bart.modeling_bart import shift_tokens_right

from ..data.world import florence2_examples, generate_scene, iter_scenes
from ..florence2.checkpoint import Florence2Bundle, save_florence2
from ..florence2.geometry import feature_map_side, florence2_config, image_processor, num_image_tokens
from ..florence2.runner import encoder_rows
from ..florence2.special_tokens import train_bart_tokenizer
from .loop import LoopConfig, train
from .ordinal_locations import (location_soft_targets, location_token_ids, seq2seq_loss_with_soft_locations,
                                sinusoid_table, smooth_location_embeddings)

# How often each task is drawn (relative; a task left out is never drawn); detection-style tasks carry the
# targets we measure.
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
    # The square side images are resized to; None: the geometry's (256 for nano). A larger side gives the last
    # DaViT stage a finer grid (384 px: 12x12 instead of 8x8), which reading text needs (docs/nano.md).
    image_size: int | None = None
    tokenizer_vocab: int = 1500
    tokenizer_scenes: int = 2000
    images_per_step: int = 8
    tasks_per_image: int = 3
    max_target_tokens: int = 200
    task_weights: dict = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    # [{"until": step, "task_weights": {...}}, ...]: other task mixes for the first steps (see task_weights_at)
    curriculum: list = field(default_factory=list)
    davit_init: str | None = None    # UniCL-nano checkpoint whose image tower initialises DaViT
    # A Florence-2 checkpoint (its weights and tokenizer) to continue from, e.g. "nano" for a later stage of
    # the shipped model; the *_init options above then do nothing.
    init_from: str | None = None
    first_scene: int = 0             # seed of step 0's first scene: a later stage starts past the scenes seen
    image_position_init: float = 0.0  # >0: DaViT-side 2D position embeddings start as sinusoids of this RMS
    smooth_location_init: bool = False  # <loc_k> embeddings start as smooth functions of k (ordinal_locations.py)
    location_label_sigma: float = 0.0   # >0: <loc_k> labels become a Gaussian of this many bins
    probe_scenes: int = 0               # >0: log the image reliance on this many held-out scenes at each save
    # Non-empty: every step also trains the tower on labelled objects (object_crops.py), this dict's fields of an
    # ObjectCropRecipe (source, scenes_per_step, crops_per_step, ...) plus "weight" on that loss, through a label
    # head that is not saved; so that a tower taught shapes keeps them while the decoder learns to name them.
    tower_labels: dict = field(default_factory=dict)
    # Non-empty: every step also trains the tower to keep the glyphs of text lines (text_glyphs.py: per-character
    # CTC from the last-stage tokens), with "weight" (default 1), "scenes_per_step" (8) and "first_scene" (this
    # recipe's + 700,000), through a glyph head that is not saved; so that the tokens the decoder reads carry text.
    tower_glyphs: dict = field(default_factory=dict)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=2000))

    def task_weights_at(self, step: int) -> dict:
        """The task mix of `step`: the first curriculum phase whose `until` is past it, else task_weights.

        Why a curriculum: with all 15 tasks from step 0, the fastest loss win is telling the tasks apart, and
        the encoder learns it by washing the prompt into every image token, which erases the image (measured:
        image-token variation across images fell from 47% to 6% of its spread in 100 steps, and the model
        never looked at the image again). Starting with OD alone leaves nothing to tell apart but the image.
        """
        for phase in self.curriculum:
            if step < phase["until"]:
                return phase["task_weights"]
        return self.task_weights

    @classmethod
    def from_dict(cls, data: dict) -> "Florence2Recipe":
        data = dict(data)
        loop = LoopConfig(**data.pop("loop", {}))
        unknown = sorted(set(data.get("tower_glyphs") or {}) - {"weight", "scenes_per_step", "first_scene"})
        if unknown:
            raise ValueError(f"tower_glyphs: unknown field(s) {unknown}; known: weight, scenes_per_step, first_scene")
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
    if recipe.image_position_init > 0:
        # The published init (std 0.02) leaves the position of an image token at ~3% of its content, and a
        # small model trained briefly never learns where things are; start the positions as loud as the content.
        embed = model.model.multi_modal_projector.image_position_embed
        with torch.no_grad():
            for table, seed in ((embed.row_embeddings, 1), (embed.column_embeddings, 2)):
                rows, dim = table.weight.shape
                table.weight.copy_(recipe.image_position_init * sinusoid_table(rows, dim, math.pi / rows, math.pi, seed))
    if recipe.smooth_location_init:
        smooth_location_embeddings(model.get_input_embeddings(), location_token_ids(tokenizer))
    return model


class WorldBatches:
    """batches(step): the step's scenes, task examples, and their tensors (deterministic per step)."""

    def __init__(self, recipe: Florence2Recipe, tokenizer, image_size: int, vision_config, split: str = "train"):
        self.recipe = recipe
        self.split = split
        self.tokenizer = tokenizer
        self.processor = image_processor(image_size)
        self.n_image = num_image_tokens(vision_config, image_size)
        self.image_token_id = tokenizer.image_token_id

    def examples(self, step: int) -> list[tuple]:
        r = self.recipe
        picked = []
        task_weights = r.task_weights_at(step)
        for i in range(r.images_per_step):
            seed = r.first_scene + step * r.images_per_step + i
            for attempt in range(50):  # a scene with none of the weighted tasks (OD on a chart): the next one
                scene = generate_scene(seed + attempt * 1_000_000_007, self.split)
                by_task: dict[str, list[dict]] = {}
                for example in florence2_examples(scene):
                    if task_weights.get(example["task"], 0.0) > 0:
                        by_task.setdefault(example["task"], []).append(example)
                if by_task:
                    break
            else:
                raise ValueError(f"no scene has any of the tasks {sorted(task_weights)}")
            rng = random.Random(f"{r.loop.seed}-{seed}")
            tasks = sorted(by_task)
            weights = [task_weights[t] for t in tasks]
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


class Florence2Loss:
    """Cross-entropy of the targets; one DaViT pass per image, shared by that image's task rows.

    With `location_label_sigma` > 0, <loc_k> labels are Gaussians over neighbouring bins (ordinal_locations.py).
    """

    def __init__(self, loc_ids: torch.Tensor | None = None, location_label_sigma: float = 0.0):
        self.loc_ids = loc_ids
        self.soft_targets = location_soft_targets(location_label_sigma) if location_label_sigma > 0 else None

    def __call__(self, model: Florence2ForConditionalGeneration, batch: dict) -> torch.Tensor:
        features = model.model.get_image_features(batch["pixel_values"]).pooler_output
        features = features.repeat_interleave(batch["tasks_per_image"], dim=0)
        input_ids = batch["input_ids"]
        embeds = model.get_input_embeddings()(input_ids)
        placeholders = (input_ids == model.config.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(placeholders, features.to(embeds.dtype))
        if self.soft_targets is None:
            return model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        text = model.config.text_config
        decoder_input_ids = shift_tokens_right(batch["labels"], text.pad_token_id, text.decoder_start_token_id)
        logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                       decoder_input_ids=decoder_input_ids).logits
        return seq2seq_loss_with_soft_locations(logits, batch["labels"], self.loc_ids, self.soft_targets)


florence2_loss = Florence2Loss()

# The throw-away heads' attributes on the model while they train (not part of Florence-2, not saved)
TOWER_LABEL_HEAD = "tower_label_head"
TOWER_GLYPH_HEAD = "tower_glyph_head"


class WithTowerLosses:
    """batches(step) and loss: a Florence-2 step plus the tower's own losses through the same DaViT: labelled
    objects (recipe.tower_labels, object_crops.py) and text lines' glyphs (recipe.tower_glyphs, text_glyphs.py)."""

    def __init__(self, recipe: "Florence2Recipe", batches, loss_fn, vision_config, image_size: int):
        from .object_crops import CropBatches, ObjectCropRecipe
        from .text_glyphs import GlyphBatches

        self.batches, self.loss_fn = batches, loss_fn
        self.labels = self.glyphs = None
        if recipe.tower_labels:
            options = dict(recipe.tower_labels)
            self.label_weight = float(options.pop("weight", 1.0))
            options.setdefault("scene_size", image_size)
            options.setdefault("first_scene", recipe.first_scene + 500_000)
            crops = ObjectCropRecipe.from_dict({"out_dir": recipe.out_dir, **options})
            self.colour_weight = crops.colour_weight
            self.labels = CropBatches(crops, feature_side=feature_map_side(vision_config, crops.scene_size))
        if recipe.tower_glyphs:
            options = recipe.tower_glyphs
            self.glyph_weight = float(options.get("weight", 1.0))
            self.glyphs = GlyphBatches(int(options.get("first_scene", recipe.first_scene + 700_000)),
                                       int(options.get("scenes_per_step", 8)), image_size)

    def add_heads(self, model, seed: int) -> None:
        from .object_crops import label_head
        from .text_glyphs import glyph_head

        width = model.config.vision_config.embed_dim[-1]
        torch.manual_seed(seed)
        if self.labels is not None:
            setattr(model, TOWER_LABEL_HEAD, label_head(width))
        if self.glyphs is not None:
            setattr(model, TOWER_GLYPH_HEAD, glyph_head(width))

    @staticmethod
    def remove_heads(model) -> None:
        for name in (TOWER_LABEL_HEAD, TOWER_GLYPH_HEAD):
            if hasattr(model, name):
                delattr(model, name)

    def __call__(self, step: int) -> dict:
        batch = dict(self.batches(step))
        if self.labels is not None:
            batch["tower_labels"] = self.labels(step)
        if self.glyphs is not None:
            batch["tower_glyphs"] = self.glyphs(step)
        return batch

    def loss(self, model, batch: dict) -> torch.Tensor:
        from .object_crops import label_logits, label_loss
        from .text_glyphs import glyph_logits, glyph_loss

        loss = self.loss_fn(model, batch)
        tower = model.model.vision_tower
        if self.labels is not None:
            labels = batch["tower_labels"]
            logits = label_logits(tower, getattr(model, TOWER_LABEL_HEAD), labels["pixel_values"], labels.get("pool"))
            loss = loss + self.label_weight * label_loss(*logits, labels, self.colour_weight)
        if self.glyphs is not None:
            glyphs = batch["tower_glyphs"]
            loss = loss + self.glyph_weight * glyph_loss(glyph_logits(tower, getattr(model, TOWER_GLYPH_HEAD), glyphs),
                                                         glyphs)
        return loss


def image_reliance(model, batch: dict, loss_fn=florence2_loss) -> dict:
    """How much the model looks at the image: the loss of `batch` with each row's image swapped for the
    next image's, minus the loss with the right images (0 means the image is ignored)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        right = loss_fn(model, batch).item()
        swapped = loss_fn(model, dict(batch, pixel_values=batch["pixel_values"].roll(1, dims=0))).item()
    model.train(was_training)
    return {"probe_loss": right, "probe_loss_swapped_images": swapped, "image_reliance": swapped - right}


def make_loss(recipe: Florence2Recipe, tokenizer) -> Florence2Loss:
    if recipe.location_label_sigma > 0:
        return Florence2Loss(location_token_ids(tokenizer), recipe.location_label_sigma)
    return florence2_loss


def run(recipe: Florence2Recipe, *, progress: bool = True) -> Path:
    """Train Florence-2-nano and write it in the native layout to out_dir/model; returns that path."""
    out = Path(recipe.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = out / "tokenizer"
    initial = None
    if recipe.init_from:
        from ..florence2.checkpoint import load_florence2
        from ..models import resolve_model

        initial = load_florence2(resolve_model(recipe.init_from, "florence2"), dtype=torch.float32)
        if not (tokenizer_dir / "tokenizer.json").exists():
            initial.tokenizer.save_pretrained(tokenizer_dir)
    if (tokenizer_dir / "tokenizer.json").exists():  # resume: the same tokenizer, not a retrained one
        from transformers import AutoTokenizer

        from ..florence2.special_tokens import ensure_florence2_tokens

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        ensure_florence2_tokens(tokenizer)
    else:
        tokenizer = build_tokenizer(recipe)
        tokenizer.save_pretrained(tokenizer_dir)
    torch.manual_seed(recipe.loop.seed)
    model = initial.model.train() if initial is not None else build_model(recipe, tokenizer)
    from ..florence2.geometry import preset

    image_size = recipe.image_size or preset(recipe.geometry)["image_size"]
    batches = WorldBatches(recipe, tokenizer, image_size, model.config.vision_config)
    loss_fn = make_loss(recipe, tokenizer)
    on_checkpoint = None
    if recipe.probe_scenes:
        probe_recipe = dataclasses.replace(recipe, images_per_step=recipe.probe_scenes)
        probe_batch = WorldBatches(probe_recipe, tokenizer, image_size, model.config.vision_config, split="val")(0)

        def on_checkpoint(step: int, trained) -> None:
            record = {"step": step, **image_reliance(trained, probe_batch, loss_fn)}
            with (out / "log.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            tqdm.write(f"step {step}: held-out loss {record['probe_loss']:.3f}, with swapped images "
                       f"{record['probe_loss_swapped_images']:.3f} (image reliance {record['image_reliance']:+.3f})")
    train_batches, train_loss = batches, loss_fn
    if recipe.tower_labels or recipe.tower_glyphs:
        with_tower = WithTowerLosses(recipe, batches, loss_fn, model.config.vision_config, image_size)
        with_tower.add_heads(model, recipe.loop.seed)
        train_batches, train_loss = with_tower, with_tower.loss
    train(model, train_batches, train_loss, recipe.loop, out, progress=progress, on_checkpoint=on_checkpoint)
    WithTowerLosses.remove_heads(model)  # training aids, not part of Florence-2
    model.eval()
    bundle = Florence2Bundle(model=model, tokenizer=tokenizer, image_processor=image_processor(image_size),
                             layout="native", source=str(out))
    return save_florence2(bundle, out / "model", layout="native")
