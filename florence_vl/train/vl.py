"""Florence-VL training: the nano LLM's tokenizer and language-model pretraining, then the two stages.

    stage "lm":      the LLM alone on the world's text (captions, questions with answers), so that the
                     nano LLM speaks the world's language before it sees an image; optionally after a
                     synthetic associative-recall warm-up (train/recall.py) and with questions answered from
                     the scene's description written where the image will go (`grounded_qa`), so that it
                     learns to look things up in its context before the context is an image;
    stage "stage1":  everything trains end to end (Florence-2 included, gradients really reach it: tested)
                     on detailed captions with the `plain` template;
    stage "align":   optional (0 steps by default): the projector alone, onto the LLM's word embeddings of the
                     object under each image token (train/align.py), the LLM and Florence-2 frozen;
    stage "stage2":  projector + LLM on instruction data (LLaVA conversations), Florence-2 frozen and run
                     without gradients, with the chat template;
    stage "read":    optional (0 steps by default): the LLM alone on questions about the objects, answered from
                     the word grid and from its blends with the real image tokens (train/read.py), Florence-2 and
                     the projector frozen.
    Stages 1 and 2 can mix in the LM stage's text-only grounded questions and recall rows (`grounded_qa`,
    `recall_rows` in their config) so that the lookup is kept while the LLM learns the image.

Each stage uses train/loop.py (resumable; batches a pure function of the step) and writes its model to
out_dir/<stage>/model; the next stage starts from it (stage 2 from align's when that ran, read from the last one
before it). `run(recipe)` runs the stages that are not done yet.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.llava import LazyLLaVADataset, StepBatches
from ..errors import InputError
from ..models import resolve_model
from ..vl.model import IGNORE_INDEX, FlorenceVLForCausalLM, VLConfig, pad_rows
from ..vl.processor import VLProcessor
from .loop import LoopConfig, train
from .recall import RecallBatches

STAGES = ("lm", "stage1", "align", "stage2", "read")


@dataclass
class StageConfig:
    data: str | None = None          # LLaVA JSON (stage1/2); images relative to its folder
    batch_size: int = 16
    max_length: int = 256
    cache_features: int = 0          # stage 2: keep the frozen Florence-2 features of up to this many images
    grounded_qa: int = 0             # stages 1/2: per step, questions answered from a description (LLM only) ...
    recall_rows: int = 0             # ... and recall rows at recall.weight, so the LM stage's lookup is kept
    word_steps: int = 0              # read: steps on the word grid alone before the blends with real tokens
    real_share: float = 0.3          # read: after those, the share of rows on the real tokens alone
    types: list[str] = field(default_factory=list)       # read: question types (empty: READ_TYPES; "conjunction"
    type_weights: dict = field(default_factory=dict)     # ... adds generated ones); how often each is drawn (1)
    turns_per_row: int = 1           # read: questions per row, all about its image (more answers per image)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=0, precision="no"))

    @classmethod
    def from_dict(cls, data: dict) -> "StageConfig":
        data = dict(data or {})
        loop = LoopConfig(**{"steps": 0, "precision": "no", **data.pop("loop", {})})
        return cls(loop=loop, **data)


@dataclass
class RecallConfig:
    steps: int = 0            # warm-up steps on associative recall alone, before the LM stage (0: none)
    batch_size: int = 64
    lr: float = 1e-3
    weight: float = 0.3       # then mixed into every LM step at this weight, so the lookup is kept (0: not)
    mix_batch_size: int = 32  # recall rows per LM step


@dataclass
class VLRecipe:
    out_dir: str
    florence2: str = "models/nano/florence2"     # Florence-2 checkpoint (either layout)
    llm_size: str = "nano"                      # florence_vl/vl/nano_llm.py
    tokenizer_vocab: int = 2000
    text_data: str | None = None                # records.jsonl folder for tokenizer + LM text (default: stage1's)
    vl: dict = field(default_factory=dict)      # VLConfig fields
    stage2_template: str = "phi3"
    recall: RecallConfig = field(default_factory=RecallConfig)
    grounded_qa: int = 0                        # per LM step: questions answered from the scene's description
    grounded_types: list[str] = field(default_factory=list)  # ... of these question types only (empty: all)
    lm: StageConfig = field(default_factory=StageConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    align: StageConfig = field(default_factory=StageConfig)  # optional, after stage 1: train/align.py
    stage2: StageConfig = field(default_factory=StageConfig)
    read: StageConfig = field(default_factory=StageConfig)   # optional, after stage 2: train/read.py
    read_from: str | None = None    # start the read stage from this Florence-VL model (a folder, or "nano") and
                                    # run no other stage: a read stage continued from a shipped model

    @classmethod
    def from_dict(cls, data: dict) -> "VLRecipe":
        data = dict(data)
        stages = {name: StageConfig.from_dict(data.pop(name, {})) for name in STAGES}
        recall = RecallConfig(**(data.pop("recall", None) or {}))
        return cls(**stages, recall=recall, **data)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- text


def world_texts(folder: str | Path) -> list[str]:
    """The world's text from a generated split: the three caption levels and every question with its answer."""
    from ..data.formats import MC_ANSWER, SHORT_ANSWER, read_records

    texts = [SHORT_ANSWER, MC_ANSWER, "Describe the image in detail."]
    for record in read_records(folder):
        texts += list(record["captions"].values())
        texts += [f"{qa['question']} {qa['answer']}" for qa in record.get("qa", [])]
    return texts


def build_tokenizer(recipe: VLRecipe, texts: list[str]):
    from ..vl.nano_llm import train_llm_tokenizer

    return train_llm_tokenizer(texts, vocab_size=recipe.tokenizer_vocab)


class TextBatches:
    """LM pretraining batches: `batch_size` texts per step (seeded by the step), <s> text </s>, right-padded."""

    def __init__(self, texts: list[str], tokenizer, batch_size: int, max_length: int, seed: int = 0):
        self.texts, self.tokenizer = texts, tokenizer
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed

    def __call__(self, step: int) -> dict:
        rng = random.Random(f"{self.seed}-lm-{step}")
        rows = []
        for _ in range(self.batch_size):
            ids = self.tokenizer(rng.choice(self.texts), add_special_tokens=False)["input_ids"]
            rows.append([self.tokenizer.bos_token_id] + ids[: self.max_length - 2] + [self.tokenizer.eos_token_id])
        batch = pad_rows(rows, self.tokenizer.pad_token_id, labels=rows)
        return batch


def grounded_questions(folder: str | Path, types: list[str] | tuple[str, ...] = (),
                       description: bool = True) -> dict[str, list[tuple[str, str]]]:
    """The split's questions by type as (user turn, answer), the user turn holding the scene's most detailed
    description where the image goes: the answer is in the text, to be looked up. `types` keeps only those;
    `description=False` leaves the description out (what the question alone gives)."""
    from ..data.formats import question_instruction, read_records

    by_type: dict[str, list[tuple[str, str]]] = {}
    for record in read_records(folder):
        for qa in record.get("qa", []):
            user = question_instruction(qa)
            if description:
                user = f"{record['captions']['more_detailed']}\n{user}"
            by_type.setdefault(qa["type"], []).append((user, qa["answer"]))
    unknown = sorted(set(types) - set(by_type))
    if unknown:
        raise InputError(f"grounded_types {unknown} are not question types of {folder}; it has {sorted(by_type)}")
    return {kind: by_type[kind] for kind in types} if types else by_type


def exact_answers(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, whether every target token (labels other than IGNORE_INDEX) is the argmax of the logits before it:
    teacher-forced exact match."""
    predicted, labels = logits[:, :-1].argmax(-1), labels[:, 1:]
    return ((predicted == labels) | (labels == IGNORE_INDEX)).all(dim=1)


@torch.no_grad()
def lookup_accuracy(llm, processor, by_type: dict[str, list[tuple[str, str]]], per_type: int = 60,
                    batch_size: int = 60, seed: int = 0) -> dict[str, float]:
    """Exact match of the answer tokens, teacher-forced (every answer token the argmax), on `per_type` questions
    of each type answered from the description in the prompt: whether the LLM looks the answer up in its
    context, before any image is involved (docs/florence-vl.md, 2026-12-07)."""
    rng = random.Random(seed)
    items = [(kind, item) for kind in sorted(by_type)
             for item in rng.sample(by_type[kind], min(per_type, len(by_type[kind])))]
    hits: dict[str, int] = {}
    counts: dict[str, int] = {}
    was_training = llm.training
    llm.eval()
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        encoded = [processor.encode([item]) for _, item in chunk]
        batch = pad_rows([ids for ids, _ in encoded], processor.tokenizer.pad_token_id,
                         labels=[labels for _, labels in encoded])
        logits = llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        right = exact_answers(logits, batch["labels"])
        for (kind, _), ok in zip(chunk, right.tolist()):
            hits[kind] = hits.get(kind, 0) + int(ok)
            counts[kind] = counts.get(kind, 0) + 1
    llm.train(was_training)
    return {kind: hits[kind] / counts[kind] for kind in sorted(hits)}


class GroundedBatches:
    """`batch_size` single-turn questions per step in the stage-2 template, the type first drawn uniformly (so
    the rare types count as much as existence), answer-only labels."""

    def __init__(self, by_type: dict[str, list[tuple[str, str]]], processor, batch_size: int, seed: int = 0):
        if not by_type:
            raise InputError("grounded_qa needs questions in the text data's records.jsonl")
        self.by_type, self.types = by_type, sorted(by_type)
        self.processor, self.batch_size, self.seed = processor, batch_size, seed

    def __call__(self, step: int) -> dict:
        rng = random.Random(f"{self.seed}-grounded-{step}")
        rows, labels = [], []
        for _ in range(self.batch_size):
            user, answer = rng.choice(self.by_type[rng.choice(self.types)])
            ids, target = self.processor.encode([(user, answer)])
            rows.append(ids)
            labels.append(target)
        return pad_rows(rows, self.processor.tokenizer.pad_token_id, labels=labels)


def lm_loss(model, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


class MixedBatches:
    """One step's batch from several named builders (None: left out), e.g. the LM stage's world text, grounded
    questions and recall rows, or an image stage's batch with the text-only parts that keep the lookup."""

    def __init__(self, **parts):
        self.parts = {name: make for name, make in parts.items() if make is not None}

    def __call__(self, step: int) -> dict:
        return {name: make(step) for name, make in self.parts.items()}


def _plus_lookup_parts(main: str, main_loss, recall_weight: float, llm_of=lambda model: model):
    """The step's loss: `main_loss` on batch[main], plus the LLM's loss on the grounded questions and, weighted,
    on the recall rows, where the step has them."""
    def loss_fn(model, batch: dict) -> torch.Tensor:
        loss = main_loss(model, batch[main])
        if "grounded" in batch:
            loss = loss + lm_loss(llm_of(model), batch["grounded"])
        if "recall" in batch:
            loss = loss + recall_weight * lm_loss(llm_of(model), batch["recall"])
        return loss
    return loss_fn


def mixed_lm_loss(recall_weight: float):
    """The LM stage: world text, plus grounded questions and recall rows."""
    return _plus_lookup_parts("text", lm_loss, recall_weight)


def vl_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the step's target tokens. Under several processes each rank sums its tokens
    and divides by the count over all ranks (times the world size, as DDP averages gradients), so the
    gradient and the logged loss are those of the whole step on one process."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    count = None  # one process: the loss divides by its own target count
    if world > 1:
        count = (batch["labels"][:, 1:] != -100).sum()
        torch.distributed.all_reduce(count)
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 pixel_values=batch["pixel_values"], num_items_in_batch=count, loss_only=True).loss
    return loss * world


def with_lookup_loss(recall_weight: float):
    """An image stage: the image batch's loss, plus the LLM alone on grounded questions and recall rows."""
    return _plus_lookup_parts("vl", vl_loss, recall_weight, llm_of=lambda model: model.llm)


# ---------------------------------------------------------------------------------------------------- stages


def _dist() -> tuple[int, int]:
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def stage_batches(stage: StageConfig, processor, seed: int) -> StepBatches:
    if not stage.data:
        raise InputError("this stage needs `data`: a LLaVA JSON file (e.g. DIR/llava_pretrain.json)")
    rank, world = _dist()
    dataset = LazyLLaVADataset(stage.data, processor)
    return StepBatches(dataset, stage.batch_size, seed=seed, rank=rank, world_size=world)


def build_vl(recipe: VLRecipe, llm, florence2_bundle, template: str) -> FlorenceVLForCausalLM:
    config = VLConfig.from_dict({**recipe.vl, "template": template})
    return FlorenceVLForCausalLM(florence2_bundle.model, florence2_bundle.tokenizer,
                                 florence2_bundle.num_image_tokens, llm, config)


def run_stage1(model: FlorenceVLForCausalLM, processor: VLProcessor, stage: StageConfig, out: Path,
               progress: bool = True, lookup: tuple | None = None) -> list[dict]:
    """Everything trains: Florence-2 (DaViT + encoder), the projector and the LLM. Florence-2's decoder is
    never run for features, so it is frozen (its word embedding, shared with the encoder, still trains)."""
    model.freeze_vision(False)
    model.florence2.model.language_model.decoder.requires_grad_(False)
    model.florence2.get_input_embeddings().requires_grad_(True)
    model.train()
    batches, loss_fn = _stage_step(stage_batches(stage, processor, stage.loop.seed), lookup)
    return train(model, batches, loss_fn, stage.loop, out, progress=progress)


@contextmanager
def frozen_tower(model: FlorenceVLForCausalLM, cache_features: int, frozen=()):
    """Florence-2 frozen (no gradients, eval mode) with its features cached for up to `cache_features` images (once
    per run instead of once per epoch: they cannot change while it is frozen), and the `frozen` parts too, all
    trainable again after (the cache emptied)."""
    model.freeze_vision(True)
    model.cache_frozen_features(cache_features)
    for part in frozen:
        part.requires_grad_(False)
    model.train()
    model.florence2.eval()
    try:
        yield
    finally:
        model.cache_frozen_features(0)
        for part in frozen:
            part.requires_grad_(True)


def run_stage2(model: FlorenceVLForCausalLM, processor: VLProcessor, stage: StageConfig, out: Path,
               progress: bool = True, lookup: tuple | None = None) -> list[dict]:
    """Projector + LLM; Florence-2 frozen."""
    with frozen_tower(model, stage.cache_features):
        batches, loss_fn = _stage_step(stage_batches(stage, processor, stage.loop.seed), lookup)
        return train(model, batches, loss_fn, stage.loop, out, progress=progress)


def _world_folder(stage: StageConfig, name: str) -> str:
    if not stage.data:
        raise InputError(f"the {name} stage needs `data`: a world folder with records.jsonl (e.g. data/vl-train)")
    return stage.data


def run_align(model: FlorenceVLForCausalLM, processor: VLProcessor, tokenizer, stage: StageConfig, out: Path,
              progress: bool = True) -> list[dict]:
    """The projector alone, onto the LLM's word embeddings of the objects under each image token
    (train/align.py); Florence-2 and the LLM frozen. `data` is a world folder (records.jsonl + images)."""
    from .align import AlignBatches, align_loss

    with frozen_tower(model, stage.cache_features, frozen=(model.llm,)):
        batches = AlignBatches(_world_folder(stage, "align"), processor, model.llm, tokenizer,
                               model.vision_tower.num_image_tokens, stage.batch_size, seed=stage.loop.seed)
        return train(model, batches, align_loss, stage.loop, out, progress=progress)


def run_read(model: FlorenceVLForCausalLM, processor: VLProcessor, tokenizer, stage: StageConfig, out: Path,
             progress: bool = True) -> list[dict]:
    """The LLM alone on questions answered from the word grid and its blends with the real image tokens
    (train/read.py); Florence-2 and the projector frozen. `data` is a world folder (records.jsonl + images)."""
    from .read import READ_TYPES, ReadBatches, read_loss

    with frozen_tower(model, stage.cache_features, frozen=(model.mm_projector,)):
        batches = ReadBatches(_world_folder(stage, "read"), processor, tokenizer,
                              model.vision_tower.num_image_tokens, stage.batch_size, seed=stage.loop.seed,
                              word_steps=stage.word_steps, real_share=stage.real_share,
                              types=tuple(stage.types) or READ_TYPES, type_weights=stage.type_weights,
                              turns_per_row=stage.turns_per_row)
        return train(model, batches, read_loss, stage.loop, out, progress=progress)


def _stage_step(batches, lookup: tuple | None):
    """The stage's batches and loss: images alone, or with the lookup parts (grounded, recall, recall weight)."""
    if lookup is None:
        return batches, vl_loss
    grounded, recall, weight = lookup
    return MixedBatches(vl=batches, grounded=grounded, recall=recall), with_lookup_loss(weight)


def lookup_parts(recipe: VLRecipe, tokenizer, text_folder, questions: int, recall_rows: int, seed,
                 recall_seed) -> tuple[GroundedBatches | None, RecallBatches | None]:
    """The text-only parts that teach or keep the lookup: `questions` grounded questions per step (the recipe's
    grounded_types, stage-2 template) and `recall_rows` recall rows per step; None for a part asked 0 times."""
    grounded = recall = None
    if questions > 0:
        if text_folder is None:
            raise InputError("grounded_qa needs the recipe's text_data (or stage1.data) for its questions")
        processor = VLProcessor(tokenizer, None, recipe.stage2_template, "pad", max_length=recipe.stage2.max_length)
        grounded = GroundedBatches(grounded_questions(text_folder, recipe.grounded_types), processor, questions,
                                   seed)
    if recall_rows > 0:
        recall = RecallBatches(len(tokenizer), tokenizer.bos_token_id, tokenizer.pad_token_id, recall_rows,
                               seed=recall_seed)
    return grounded, recall


def stage_lookup(recipe: VLRecipe, name: str, tokenizer, text_folder) -> tuple | None:
    """Stage 1's or 2's text-only lookup parts and the recall weight, or None when it asks for none."""
    stage = getattr(recipe, name)
    if stage.grounded_qa <= 0 and stage.recall_rows <= 0:
        return None
    if _dist()[1] > 1:
        raise InputError("grounded_qa / recall_rows in stages 1 and 2 run on one process only (the LLM-only "
                         "forward passes outside the DDP wrapper); drop them or run without torchrun")
    seed = f"{stage.loop.seed}-{name}"
    grounded, recall = lookup_parts(recipe, tokenizer, text_folder, stage.grounded_qa, stage.recall_rows, seed,
                                    recall_seed=f"{seed}-recall")
    return grounded, recall, recipe.recall.weight


def _next_stage(start: Path, done: Path, stage: StageConfig, label: str, template: str | None, run_stage) -> None:
    """A stage that continues a saved model: load `start`, train it with run_stage(model, processor, tokenizer) in
    `template` (None: the model's own), save it to `done`."""
    from ..vl.chat import FlorenceVL
    from ..vl.checkpoint import load_florence_vl

    torch.manual_seed(stage.loop.seed)
    if not (start / "florence_vl.json").exists():
        raise InputError(f"{label} starts from {start.parent.name}'s model, and {start} does not exist yet")
    bundle = load_florence_vl(start)
    model = bundle.model
    model.config.template = template or model.config.template
    processor = VLProcessor(bundle.tokenizer, bundle.image_processor, model.config.template,
                            model.config.image_aspect_ratio, max_length=stage.max_length)
    run_stage(model, processor, bundle.tokenizer)
    model.eval()
    FlorenceVL(model, bundle.tokenizer, bundle.image_processor, source=str(done)).save_pretrained(done)


def run(recipe: VLRecipe, *, progress: bool = True, stages: tuple[str, ...] = STAGES) -> Path:
    """Run the recipe's stages (each skipped when its model exists); returns the final model's folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..florence2.checkpoint import load_florence2
    from ..vl.chat import FlorenceVL
    from ..vl.nano_llm import build_llm

    out = Path(recipe.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    read_dir = out / "read" / "model"

    def read_stage(start: Path, template: str | None) -> None:
        _next_stage(start, read_dir, recipe.read, "the read stage", template,
                    lambda model, processor, tok: run_read(model, processor, tok, recipe.read, out / "read",
                                                           progress))

    if recipe.read_from:
        if recipe.read.loop.steps <= 0:
            raise InputError("read_from continues a model with the read stage, and read.loop.steps is 0")
        if not (read_dir / "florence_vl.json").exists():
            read_stage(Path(resolve_model(recipe.read_from, "florence_vl")), None)
        return read_dir
    text_folder = recipe.text_data or (Path(recipe.stage1.data).parent if recipe.stage1.data else None)
    tokenizer_dir = out / "tokenizer"
    if (tokenizer_dir / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        if text_folder is None:
            raise InputError("the recipe needs text_data (or stage1.data) to train the LLM tokenizer")
        tokenizer = build_tokenizer(recipe, world_texts(text_folder))
        tokenizer.save_pretrained(str(tokenizer_dir))

    lm_dir = out / "lm" / "model"
    if "lm" in stages and recipe.lm.loop.steps > 0 and not (lm_dir / "config.json").exists():
        torch.manual_seed(recipe.lm.loop.seed)
        llm = build_llm(tokenizer, recipe.llm_size)
        llm.train()
        seed = recipe.lm.loop.seed
        if recipe.recall.steps > 0:
            warmup = LoopConfig(steps=recipe.recall.steps, lr=recipe.recall.lr, weight_decay=0.0, warmup_steps=50,
                                min_lr_ratio=1.0, precision="no", log_every=recipe.lm.loop.log_every,
                                save_every=recipe.recall.steps, seed=seed)
            _, warmup_rows = lookup_parts(recipe, tokenizer, text_folder, questions=0,
                                          recall_rows=recipe.recall.batch_size, seed=seed, recall_seed=seed)
            train(llm, warmup_rows, lm_loss, warmup, out / "recall", progress=progress)
        mix_rows = recipe.recall.mix_batch_size if recipe.recall.steps > 0 and recipe.recall.weight > 0 else 0
        grounded, mix = lookup_parts(recipe, tokenizer, text_folder, recipe.grounded_qa, mix_rows, seed,
                                     recall_seed=f"{seed}-mix")
        text = TextBatches(world_texts(text_folder), tokenizer, recipe.lm.batch_size, recipe.lm.max_length,
                           recipe.lm.loop.seed)
        mixed = MixedBatches(text=text, grounded=grounded, recall=mix)
        train(llm, mixed, mixed_lm_loss(recipe.recall.weight), recipe.lm.loop, out / "lm", progress=progress)
        llm.save_pretrained(str(lm_dir))
        tokenizer.save_pretrained(str(lm_dir))

    final = out / "stage2" / "model"
    s1_dir = out / "stage1" / "model"
    if "stage1" in stages and recipe.stage1.loop.steps > 0 and not (s1_dir / "florence_vl.json").exists():
        torch.manual_seed(recipe.stage1.loop.seed)
        if (lm_dir / "config.json").exists():
            llm = AutoModelForCausalLM.from_pretrained(str(lm_dir))
        else:
            llm = build_llm(tokenizer, recipe.llm_size)
        vision = load_florence2(recipe.florence2)
        model = build_vl(recipe, llm, vision, "plain")
        processor = VLProcessor(tokenizer, vision.image_processor, "plain", model.config.image_aspect_ratio,
                                max_length=recipe.stage1.max_length)
        run_stage1(model, processor, recipe.stage1, out / "stage1", progress,
                   stage_lookup(recipe, "stage1", tokenizer, text_folder))
        model.eval()
        FlorenceVL(model, tokenizer, vision.image_processor, source=str(s1_dir)).save_pretrained(s1_dir)
    align_dir = out / "align" / "model"
    if "align" in stages and recipe.align.loop.steps > 0 and not (align_dir / "florence_vl.json").exists():
        _next_stage(s1_dir, align_dir, recipe.align, "the align stage", None,
                    lambda model, processor, tok: run_align(model, processor, tok, recipe.align, out / "align",
                                                            progress))
    start = align_dir if recipe.align.loop.steps > 0 else s1_dir   # stage 2's starting model
    if "stage2" in stages and recipe.stage2.loop.steps > 0 and not (final / "florence_vl.json").exists():
        _next_stage(start, final, recipe.stage2, "stage 2", recipe.stage2_template,
                    lambda model, processor, tok: run_stage2(model, processor, recipe.stage2, out / "stage2",
                                                             progress,
                                                             stage_lookup(recipe, "stage2", tok, text_folder)))
    before_read = final if recipe.stage2.loop.steps > 0 else start
    if "read" in stages and recipe.read.loop.steps > 0 and not (read_dir / "florence_vl.json").exists():
        read_stage(before_read, recipe.stage2_template)
    for done in (read_dir, final):
        if (done / "florence_vl.json").exists():
            return done
    return start
