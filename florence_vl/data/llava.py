"""LLaVA conversation data for Florence-VL training: lazy dataset, modality-length grouping, collator.

The JSON list is read once (ids, image paths, conversations); images are opened and text tokenized only
when an item is asked for. `lengths` are LLaVA's modality lengths: the number of words of an item,
negative for text-only items, so `grouped_order` can batch images with images and similar lengths together.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from ..errors import InputError
from ..vl.model import pad_rows


def turns_of(conversations: list[dict]) -> list[tuple[str, str]]:
    """LLaVA's [{"from": "human"|"gpt", "value"}...] -> [(user, answer), ...]."""
    turns, user = [], None
    for message in conversations:
        role = message.get("from")
        if role in ("human", "user"):
            user = message["value"]
        elif role in ("gpt", "assistant") and user is not None:
            turns.append((user, message["value"]))
            user = None
    return turns


class LazyLLaVADataset:
    def __init__(self, json_path: str | Path, processor, image_folder: str | Path | None = None,
                 max_turns: int | None = None):
        path = Path(json_path)
        try:
            self.items = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"LLaVA data file not found: {path}") from None
        except ValueError as error:
            raise InputError(f"{path} is not valid JSON ({error})") from None
        if not isinstance(self.items, list):
            raise InputError(f"{path} must hold a list of conversations")
        self.folder = Path(image_folder) if image_folder else path.parent
        self.processor = processor
        self.max_turns = max_turns

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int]:
        out = []
        for item in self.items:
            words = sum(len(m["value"].split()) for m in item["conversations"])
            out.append(words if item.get("image") else -words)
        return out

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        turns = turns_of(item["conversations"])
        if self.max_turns:
            turns = turns[: self.max_turns]
        if self.processor.template is not None and self.processor.template.plain:
            turns = turns[:1]
        image = None
        if item.get("image"):
            image = Image.open(self.folder / item["image"]).convert("RGB")
            if "<image>" not in turns[0][0]:
                turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
        ids, labels = self.processor.encode(turns)
        return {"input_ids": ids, "labels": labels, "image": image}


def grouped_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group: int = 8) -> list[int]:
    """A seeded permutation where each run of `batch_size` items shares a modality and has similar lengths:
    shuffle, cut into mega-batches of batch_size * group, sort each by length, then shuffle the batches."""
    rng = random.Random(f"{seed}-{epoch}")
    order: list[int] = []
    for positive in (True, False):
        idx = [i for i, n in enumerate(lengths) if (n >= 0) == positive]
        rng.shuffle(idx)
        mega = batch_size * group
        for start in range(0, len(idx), mega):
            chunk = sorted(idx[start:start + mega], key=lambda i: -abs(lengths[i]))
            order += chunk
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return [i for b in batches for i in b]


class Collator:
    """Items -> right-padded input_ids / attention_mask / labels and the images' pixel values."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, items: list[dict]) -> dict:
        batch = pad_rows([it["input_ids"] for it in items], self.processor.pad_id, side="right",
                         labels=[it["labels"] for it in items])
        images = [it["image"] for it in items if it["image"] is not None]
        batch["pixel_values"] = self.processor.pixel_values(images) if images else None
        return batch


class StepBatches:
    """batches(step) for train/loop.py: a pure function of the step (exact resume), grouped by modality length
    (or a seeded shuffle per epoch). `collate` turns the step's items into a batch (default: the LLaVA Collator).

    Under several processes (torchrun), each rank takes its share of the step's items.
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0, group_by_length: bool = True, rank: int = 0,
                 world_size: int = 1, collate=None):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.group = group_by_length
        self.collate = collate or Collator(dataset.processor)
        self.lengths = dataset.lengths if group_by_length else None
        self.rank, self.world_size = rank, world_size
        self._orders: dict[int, list[int]] = {}
        if len(dataset) < batch_size:
            raise InputError(f"{len(dataset)} training items are fewer than one batch of {batch_size}")

    def order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            if self.group:
                self._orders = {epoch: grouped_order(self.lengths, self.batch_size, self.seed, epoch)}
            else:
                idx = list(range(len(self.dataset)))
                random.Random(f"{self.seed}-{epoch}").shuffle(idx)
                self._orders = {epoch: idx}
        return self._orders[epoch]

    def indices(self, step: int) -> list[int]:
        per_epoch = len(self.dataset) // self.batch_size
        epoch, k = divmod(step, per_epoch)
        chosen = self.order(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        return chosen[self.rank::self.world_size]

    def __call__(self, step: int) -> dict:
        return self.collate([self.dataset[i] for i in self.indices(step)])
