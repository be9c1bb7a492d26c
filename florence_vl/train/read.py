"""The read stage: the LLM learns to answer questions about a scene's objects from its image tokens, first from the
word grid (each token over an object is the LLM's own embedding of the object's name, " red triangle", the align
stage's targets; background and the pooled token zero), then from blends of the word grid with the real projected
tokens, a share of the rows on the real tokens alone. Florence-2 and the projector are frozen.

Why (docs/florence-vl.md, 2026-12-07, fourth session): with the projector aligned to the words (colour read 0.81),
the LLM of stage 2 answered a colour question at 0.17 from the real tokens and at 0.18 from the word grid itself:
it did not read the token form at all. Trained on the word grid it reads it, and the blends carry that over to the
real tokens: the shipped model's colour 0.155 -> 0.229 and shape 0.168 -> 0.226 in generation on the test split
(majority answer 0.127 / 0.153). Like the align stage it needs per-object annotations, which the nano world has;
it is not in the published recipe.

Each row's blend weight: 1 (word grid alone) for the first `word_steps` steps; after that 0 (real tokens alone)
for a `real_share` of the rows and uniform in [0, 1] for the rest. Yes/no questions are drawn half "yes", half
"no" (the world asks "no" 72% of the time; POPE asks each half the time), the question type uniformly first.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image

from ..errors import InputError
from ..vl.model import IGNORE_INDEX, pad_rows
from .align import cell_objects, grid_side, name_token_ids, object_name, scenes_with_objects
from .vl import exact_answers

READ_TYPES = ("color", "shape", "count", "exist", "spatial", "multiple_choice")
CONJUNCTION = "conjunction"   # a generated type (not one of the world's): see conjunction_questions()


def conjunction_questions(record: dict) -> dict[str, list[str]]:
    """Existence questions that matching one word cannot answer: "yes" for each colour-shape pair present on one
    object, "no" for each pair whose colour is on one object and whose shape is on another but which no object
    has (a scene with a red circle and a blue triangle: "Is there a red triangle in the image?" -> "no"). The
    world's own "no" questions mostly name a colour or shape that is not there at all, which one word settles."""
    from ..data.grammar import exist_question

    present = {(o["color"], o["class"]) for o in record.get("objects", [])}
    colours, shapes = sorted({c for c, _ in present}), sorted({s for _, s in present})
    absent = [(c, s) for c in colours for s in shapes if (c, s) not in present]
    return {"yes": [exist_question(*p) for p in sorted(present)], "no": [exist_question(*p) for p in absent]}


class ReadBatches:
    """batches(step): `batch_size` single-turn questions on a world folder's scenes with objects, with what the
    loss needs to build each row's image tokens: the name token ids under every grid cell and the blend weight."""

    def __init__(self, folder: str | Path, processor, tokenizer, num_image_tokens: int, batch_size: int,
                 seed: int = 0, word_steps: int = 0, real_share: float = 0.3, types=READ_TYPES,
                 min_cover: float = 0.1, type_weights: dict[str, float] | None = None, turns_per_row: int = 1):
        from ..data.formats import question_instruction

        self.folder = Path(folder)
        self.processor, self.batch_size, self.seed = processor, batch_size, seed
        self.word_steps, self.real_share = word_steps, real_share
        if turns_per_row < 1:
            raise InputError(f"turns_per_row must be at least 1, got {turns_per_row}")
        self.turns_per_row = turns_per_row
        self.side = grid_side(num_image_tokens)
        self.min_cover = min_cover
        # per type, per answer: (record index, user turn, answer)
        self.records = scenes_with_objects(self.folder, "read")
        self.questions: dict[str, dict[str, list[tuple[int, str, str]]]] = {}
        for index, record in enumerate(self.records):
            for qa in record.get("qa", []):
                if qa["type"] in types:
                    by_answer = self.questions.setdefault(qa["type"], {})
                    by_answer.setdefault(qa["answer"], []).append((index, question_instruction(qa), qa["answer"]))
            if CONJUNCTION in types:
                for answer, asked in conjunction_questions(record).items():
                    for question in asked:
                        user = question_instruction({"question": question, "type": "exist"})
                        self.questions.setdefault(CONJUNCTION, {}).setdefault(answer, []).append(
                            (index, user, answer))
        if not self.questions:
            raise InputError(f"{self.folder} has no questions of types {list(types)} on scenes with objects")
        self.types = sorted(self.questions)
        weights = type_weights or {}
        unknown = sorted(set(weights) - set(self.types))
        if unknown:
            raise InputError(f"type_weights names {unknown}, not among the read types {self.types}")
        self.weights = [float(weights.get(kind, 1.0)) for kind in self.types] if weights else None
        self.every = {kind: [q for answer in sorted(by_answer) for q in by_answer[answer]]
                      for kind, by_answer in self.questions.items()}
        # per record, per type, per answer: the user turns (for rows of several turns about one image)
        self.of_record: dict[int, dict[str, dict[str, list[str]]]] = {}
        for kind, by_answer in self.questions.items():
            for answer, asked in by_answer.items():
                for index, user, _ in asked:
                    self.of_record.setdefault(index, {}).setdefault(kind, {}).setdefault(answer, []).append(user)
        self.names = {}
        self.tokenizer = tokenizer
        self._owners: dict[int, list[int]] = {}

    def _name_ids(self, name: str) -> list[int]:
        if name not in self.names:
            self.names[name] = name_token_ids(self.tokenizer, name)
        return self.names[name]

    def is_yes_no(self, kind: str) -> bool:
        """Whether `kind`'s questions are answered "yes" or "no" (both occur)."""
        return set(self.questions[kind]) == {"yes", "no"}

    def owners(self, index: int) -> list[int]:
        if index not in self._owners:
            self._owners[index] = cell_objects(self.records[index], self.side, self.min_cover)
        return self._owners[index]

    def _draw(self, rng: random.Random) -> tuple[int, str, str]:
        kind = rng.choices(self.types, weights=self.weights)[0] if self.weights else rng.choice(self.types)
        by_answer = self.questions[kind]
        if set(by_answer) <= {"yes", "no"}:      # balanced: half yes, half no
            return rng.choice(by_answer[rng.choice(sorted(by_answer))])
        return rng.choice(self.every[kind])

    def _more_turns(self, first: tuple[int, str, str], rng: random.Random) -> list[tuple[str, str]]:
        """Up to turns_per_row - 1 more questions about the first one's image: each of a type the image has, its
        answer drawn evenly among that type's answers there (half "yes" where both occur); a repeat of the first
        question is dropped."""
        index, user, _ = first
        mine, turns = self.of_record[index], []
        kinds = [kind for kind in self.types if kind in mine]
        for _ in range(self.turns_per_row - 1):
            kind = rng.choice(kinds)
            by_answer = mine[kind]
            answer = rng.choice(sorted(by_answer))
            asked = rng.choice(by_answer[answer])
            if asked != user:
                turns.append((asked, answer))
        return turns

    def _alpha(self, step: int, rng: random.Random) -> float:
        if step < self.word_steps:
            return 1.0
        return 0.0 if rng.random() < self.real_share else rng.random()

    def __call__(self, step: int) -> dict:
        rng = random.Random(f"{self.seed}-read-{step}")
        drawn, alphas = [], []
        for _ in range(self.batch_size):
            drawn.append(self._draw(rng))
            alphas.append(self._alpha(step, rng))
        more = None
        if self.turns_per_row > 1:      # drawn apart, so a row's first turn is the single-turn row's
            turns = random.Random(f"{self.seed}-turns-{step}")
            more = [self._more_turns(first, turns) for first in drawn]
        return self.batch(drawn, alphas, more)

    def batch(self, drawn: list[tuple[int, str, str]], alphas: list[float],
              more: list[list[tuple[str, str]]] | None = None) -> dict:
        """The rows of `drawn` questions ((record index, user turn, answer)) with these blend weights, each
        followed by its `more` turns ((user turn, answer)) about the same image."""
        rows, labels, names, indices = [], [], [], []
        for row, (index, user, answer) in enumerate(drawn):
            turns = [("<image>\n" + user, answer)] + (list(more[row]) if more else [])
            ids, target = self.processor.encode(turns)
            rows.append(ids)
            labels.append(target)
            objects = self.records[index]["objects"]
            names.append([self._name_ids(object_name(objects[k])) if k >= 0 else [] for k in self.owners(index)])
            indices.append(index)
        batch = pad_rows(rows, self.processor.tokenizer.pad_token_id, labels=labels)
        longest = max(len(ids) for cells in names for ids in cells) or 1
        name_ids = torch.zeros(len(names), self.side * self.side, longest, dtype=torch.long)
        name_mask = torch.zeros(name_ids.shape, dtype=torch.bool)
        for row, cells in enumerate(names):
            for cell, ids in enumerate(cells):
                name_ids[row, cell, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                name_mask[row, cell, :len(ids)] = True
        batch.update(name_ids=name_ids, name_mask=name_mask, alpha=torch.tensor(alphas))
        if min(alphas) < 1.0:   # the real tokens are needed: the images
            images = [Image.open(self.folder / self.records[i]["image"]).convert("RGB") for i in indices]
            batch["pixel_values"] = self.processor.pixel_values(images)
        return batch


def word_grid(llm, name_ids: torch.Tensor, name_mask: torch.Tensor) -> torch.Tensor:
    """(rows, 1 + cells, width): the pooled token zero, each cell the sum of its name's input embeddings (the
    LLM's current ones, without gradient: the grid is an input, like an image)."""
    with torch.no_grad():
        embeds = llm.get_input_embeddings()(name_ids).float() * name_mask.unsqueeze(-1)
        cells = embeds.sum(dim=2)
    return torch.cat([cells.new_zeros(cells.shape[0], 1, cells.shape[2]), cells], dim=1)


def read_tokens(model, batch: dict, real: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's image tokens: alpha * word grid + (1 - alpha) * the real projected tokens (`real`, or computed
    from the batch's pixel values)."""
    words = word_grid(model.llm, batch["name_ids"], batch["name_mask"])
    if real is None:
        if "pixel_values" not in batch:
            return words
        with torch.no_grad():
            real = model.image_features(batch["pixel_values"]).float()
    alpha = batch["alpha"].to(real.device).view(-1, 1, 1)
    return alpha * words.to(real.device) + (1 - alpha) * real


def _read_output(model, batch: dict, real: torch.Tensor | None = None) -> tuple:
    tokens = read_tokens(model, batch, real).to(model.dtype)
    inputs = model.splice(batch["input_ids"], batch["attention_mask"], batch["labels"], image_embeds=tokens)
    return model.llm(**{k: v for k, v in inputs.items() if v is not None}), inputs["labels"]


def read_loss(model, batch: dict) -> torch.Tensor:
    return _read_output(model, batch)[0].loss


READ_VARIANTS = ("real tokens", "word grid", "other images")


def _answered_three_ways(model, batches: ReadBatches, drawn: list, batch_size: int):
    """For each chunk of `drawn` questions and each of READ_VARIANTS: (rows, variant, LLM output, spliced labels).
    Florence-2 runs once per chunk: the other images' tokens are the chunk's own, rolled by one."""
    for start in range(0, len(drawn), batch_size):
        chunk = drawn[start:start + batch_size]
        batch = batches.batch(chunk, [0.0] * len(chunk))
        real = model.image_features(batch["pixel_values"]).float()
        shown = {"real tokens": (batch, real), "word grid": ({**batch, "alpha": torch.ones(len(chunk))}, real),
                 "other images": (batch, real.roll(1, dims=0))}
        for variant in READ_VARIANTS:
            yield (len(chunk), variant, *_read_output(model, *shown[variant]))


@torch.no_grad()
def read_accuracy(model, batches: ReadBatches, per_type: int = 100, batch_size: int = 50,
                  seed: int = 0) -> dict[str, dict[str, float]]:
    """Per question type, exact match of the answer tokens, teacher-forced (every answer token the argmax), on
    `per_type` questions drawn as they come (not balanced) and answered three ways: from the real image tokens,
    from the word grid, and from the real tokens of the next question's image (what the question alone gives,
    near enough). A model that reads the image scores the first well above the third."""
    rng = random.Random(seed)
    scores: dict[str, dict[str, float]] = {}
    was_training = model.training
    model.eval()
    for kind in batches.types:
        pool = batches.every[kind]
        drawn = rng.sample(pool, min(per_type, len(pool)))
        hits = dict.fromkeys(READ_VARIANTS, 0)
        for _, variant, output, labels in _answered_three_ways(model, batches, drawn, batch_size):
            hits[variant] += int(exact_answers(output.logits, labels).sum())
        scores[kind] = {variant: hits[variant] / len(drawn) for variant in READ_VARIANTS}
    model.train(was_training)
    return scores


def _auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """The probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    above = (pos.unsqueeze(1) > neg.unsqueeze(0)).float() + 0.5 * (pos.unsqueeze(1) == neg.unsqueeze(0)).float()
    return float(above.mean())


@torch.no_grad()
def yes_no_auc(model, batches: ReadBatches, kind: str, count: int = 200, batch_size: int = 50,
               seed: int = 0) -> dict[str, float]:
    """How well a yes/no type's answers are read, whatever the model's prior: the AUC of logit("yes") -
    logit("no") at the answer's first token over `count` questions (half "yes"), per READ_VARIANTS. 0.5 is no
    reading at all; exact match alone hides a reading under a prior that says "no" (or "yes") to everything."""
    by_answer = batches.questions[kind]
    if not batches.is_yes_no(kind):
        raise InputError(f"{kind} is not a yes/no type (answers {sorted(by_answer)[:5]})")
    rng = random.Random(seed)
    drawn = [q for answer in ("yes", "no") for q in rng.sample(by_answer[answer], min(count // 2,
                                                                                   len(by_answer[answer])))]
    rng.shuffle(drawn)
    probe = batches.batch([by_answer["yes"][0], by_answer["no"][0]], [1.0, 1.0])["labels"]
    yes, no = (int(row[row != IGNORE_INDEX][0]) for row in probe)      # each answer's first token
    was_training = model.training
    model.eval()
    margins = {variant: [] for variant in READ_VARIANTS}
    for rows, variant, output, labels in _answered_three_ways(model, batches, drawn, batch_size):
        where = (labels[:, 1:] != IGNORE_INDEX).int().argmax(dim=1)   # the position predicting the answer
        logits = output.logits[:, :-1][torch.arange(rows), where].float()
        margins[variant].append(logits[:, yes] - logits[:, no])
    model.train(was_training)
    positive = torch.tensor([answer == "yes" for _, _, answer in drawn])
    return {variant: _auc(torch.cat(margins[variant]), positive) for variant in READ_VARIANTS}
