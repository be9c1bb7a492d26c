"""Projector alignment onto the LLM's own words: each image token over an object is trained to equal the LLM's
input embedding of that object's name (" red triangle"), each token over background to zero, with the LLM and
Florence-2 frozen.

Why (docs/florence-vl.md, 2026-12-03 and 2026-12-07): handed image tokens made of its own word embeddings (an
oracle), the nano LLM copies from them within a few hundred steps, and it learns to look a colour or shape up in
a description written as text; through the caption-trained projector it reads neither. This stage makes the
real tokens look like the words, so the lookup the LLM has for text has something to find. It is not part of
the published recipe: a nano-world stage that needs per-object annotations, which the nano world has.

The grid: Florence-2's image tokens are a pooled token, then an n x n grid row-major (n = 8 for the nano model);
the pooled token is left out. A cell belongs to the topmost object covering at least `min_cover` of it, on the
same centred pad-to-square the processor applies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.llava import StepBatches
from ..errors import InputError
from ..vl.processor import expand_to_square


def grid_side(num_image_tokens: int) -> int:
    side = int(round((num_image_tokens - 1) ** 0.5))
    if side * side != num_image_tokens - 1:
        raise ValueError(f"{num_image_tokens} image tokens are not a pooled token + a square grid")
    return side


def cell_objects(record: dict, side: int, min_cover: float = 0.1) -> list[int]:
    """Per grid cell (row-major), the index in record['objects'] of the topmost object covering at least
    `min_cover` of the cell, or -1. Later objects are drawn over earlier ones, as the generator draws them."""
    width, height = record["size"]
    labels = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(labels)
    for k, obj in enumerate(record.get("objects", [])):
        polygon = obj.get("polygon") or []
        if len(polygon) >= 6:
            draw.polygon([tuple(polygon[i:i + 2]) for i in range(0, len(polygon), 2)], fill=k + 1)
    square = np.asarray(expand_to_square(labels, 0), dtype=np.int64)
    edges = np.linspace(0, square.shape[0], side + 1).round().astype(int)
    owners = []
    for r in range(side):
        for c in range(side):
            cell = square[edges[r]:edges[r + 1], edges[c]:edges[c + 1]].ravel()
            counts = np.bincount(cell, minlength=len(record.get("objects", [])) + 1)
            counts[0] = 0
            best = int(counts.argmax())
            owners.append(best - 1 if best and counts[best] >= min_cover * max(cell.size, 1) else -1)
    return owners


def scenes_with_objects(folder: Path, stage: str) -> list[dict]:
    """The records of a world folder's scenes that have objects (per-object annotations are what the align and
    read stages train on); a clear error when `folder` is not a world folder."""
    from ..data.formats import read_records

    if not (folder / "records.jsonl").exists():
        raise InputError(f"the {stage} stage reads a world folder's records.jsonl; {folder} has none "
                         "(florence-vl world generate --split train --out DIR writes one)")
    return [r for r in read_records(folder) if r.get("objects")]


def object_name(obj: dict) -> str:
    return f"{obj['color']} {obj['class']}"


def name_token_ids(tokenizer, text: str) -> list[int]:
    """`text`'s token ids with a leading space, as inside a sentence."""
    return tokenizer(" " + text, add_special_tokens=False)["input_ids"]


def word_vector(llm, tokenizer, text: str) -> torch.Tensor:
    """The sum of the LLM's input embeddings of `text`'s tokens (with a leading space, as inside a sentence)."""
    ids = name_token_ids(tokenizer, text)
    with torch.no_grad():
        return llm.get_input_embeddings().weight[ids].float().sum(dim=0)


class AlignBatches:
    """batches(step): `batch_size` images of a world folder (records.jsonl) with their per-cell targets."""

    def __init__(self, folder: str | Path, processor, llm, tokenizer, num_image_tokens: int, batch_size: int,
                 seed: int = 0, min_cover: float = 0.1):
        self.folder = Path(folder)
        self.records = scenes_with_objects(self.folder, "align")
        self.processor = processor
        self.side, self.min_cover = grid_side(num_image_tokens), min_cover
        objects = [o for r in self.records for o in r["objects"]]
        self.vectors = {name: word_vector(llm, tokenizer, name) for name in sorted({object_name(o) for o in objects})}
        self.width = next(iter(self.vectors.values())).numel()
        # what readout_accuracy tells apart: the split's colours and classes as the LLM embeds them
        self.words = {part: sorted({o[part] for o in objects}) for part in ("color", "class")}
        self.word_vectors = {part: torch.stack([word_vector(llm, tokenizer, w) for w in words])
                             for part, words in self.words.items()}
        # the step's scenes: the LLaVA stages' seeded per-epoch order (exact resume, a rank's share under torchrun)
        self.steps = StepBatches(self, batch_size, seed=seed, group_by_length=False, collate=self.batch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.records[index]

    def item(self, record: dict) -> tuple[Image.Image, torch.Tensor, list[int]]:
        owners = cell_objects(record, self.side, self.min_cover)
        targets = torch.zeros(len(owners), self.width)
        for cell, k in enumerate(owners):
            if k >= 0:
                targets[cell] = self.vectors[object_name(record["objects"][k])]
        image = Image.open(self.folder / record["image"]).convert("RGB")
        return image, targets, owners

    def batch(self, records: list[dict]) -> dict:
        """`owners`: each scene's cell_objects, so readers of the batch need not rasterise its polygons again."""
        images, targets, owners = zip(*(self.item(r) for r in records))
        return {"pixel_values": self.processor.pixel_values(list(images)), "targets": torch.stack(targets),
                "object_cells": torch.tensor(owners) >= 0, "records": list(records), "owners": list(owners)}

    def __call__(self, step: int) -> dict:
        return self.steps(step)


def grid_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The projected image tokens without the pooled one: (images, cells, llm_width)."""
    return model.image_features(pixel_values)[:, 1:].float()


def align_loss(model, batch: dict) -> torch.Tensor:
    """Squared error per cell relative to the mean squared size of the object targets; the object cells' mean and
    the background cells' mean count equally (background is most of the grid)."""
    tokens = grid_tokens(model, batch["pixel_values"])
    targets, objects = batch["targets"].to(tokens.device), batch["object_cells"].to(tokens.device)
    scale = targets[objects].pow(2).sum(-1).mean().clamp_min(1e-8)
    error = (tokens - targets).pow(2).sum(-1) / scale
    parts = [error[mask].mean() for mask in (objects, ~objects) if mask.any()]
    return sum(parts) / len(parts)


@torch.no_grad()
def readout_accuracy(model, batches: AlignBatches, limit: int | None = None, batch_size: int = 16) -> dict:
    """On the object cells of the first `limit` scenes of `batches`: how often the token is nearer (cosine) to the
    LLM's embedding of the object's colour than to the other colours' (and likewise its class), and the loss."""
    records = batches.records[:limit]
    words = {part: torch.nn.functional.normalize(vectors, dim=-1) for part, vectors in batches.word_vectors.items()}
    hits = {part: 0 for part in words}
    cells, losses = 0, []
    for start in range(0, len(records), batch_size):
        batch = batches.batch(records[start:start + batch_size])
        losses.append(float(align_loss(model, batch)))
        tokens = torch.nn.functional.normalize(grid_tokens(model, batch["pixel_values"]), dim=-1)
        for row, (record, owners) in enumerate(zip(batch["records"], batch["owners"])):
            for cell, k in enumerate(owners):
                if k < 0:
                    continue
                for part, vectors in words.items():
                    nearest = batches.words[part][int((vectors @ tokens[row, cell]).argmax())]
                    hits[part] += int(nearest == record["objects"][k][part])
                cells += 1
    return {**{part: hits[part] / max(cells, 1) for part in hits}, "cells": cells,
            "loss": sum(losses) / max(len(losses), 1)}
