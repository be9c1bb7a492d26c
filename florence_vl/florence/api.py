"""UniCL (Florence's two-tower model) for users: zero-shot classification and image-text retrieval.

    from florence_vl import UniCLModel
    unicl = UniCLModel.from_pretrained("nano")              # or a directory written by save_unicl
    unicl.classify(["shape.png"], ["red circle", "blue square", "green star"])
    # [{"label": "red circle", "score": 0.91, "scores": {...}}]
    unicl.rank_images("a large red circle", ["a.png", "b.png"])   # [(index, similarity), ...] best first

Classification uses the prompt ensemble the model was trained and evaluated with (TEMPLATES: "a photo of a
{}.", ...); scores are a softmax over the labels at the model's learned temperature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..errors import InputError
from ..images import load_image
from .checkpoint import load_unicl
from .data import TEMPLATES
from .zeroshot import class_embeddings, encode_images, encode_texts


class UniCLModel:
    def __init__(self, model, tokenizer, source: str = ""):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.source = source

    @classmethod
    def from_pretrained(cls, name: str | Path = "nano") -> "UniCLModel":
        from ..models import resolve_model

        path = resolve_model(name, "unicl")
        model, tokenizer = load_unicl(path)
        return cls(model, tokenizer, source=str(path))

    def embed_images(self, images: Sequence) -> torch.Tensor:
        """(n, d) L2-normalised embeddings of image paths or PIL images."""
        return encode_images(self.model, [load_image(i) for i in images])

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return encode_texts(self.model, self.tokenizer, list(texts))

    def classify(self, images: Sequence, labels: Sequence[str],
                 templates: Sequence[str] = TEMPLATES) -> list[dict]:
        """Each image's best label among `labels`, its probability, and every label's probability."""
        labels = [str(label).strip() for label in labels]
        if len(labels) < 2 or any(not label for label in labels):
            raise InputError("give at least two non-empty labels")
        if len(set(labels)) != len(labels):
            raise InputError("labels must be distinct")
        if not images:
            raise InputError("give at least one image")
        similarity = self.embed_images(images) @ class_embeddings(self.model, self.tokenizer, labels, templates).t()
        probs = (similarity * self.model.scale().item()).softmax(dim=-1)
        out = []
        for row in probs.tolist():
            best = max(range(len(labels)), key=row.__getitem__)
            out.append({"label": labels[best], "score": row[best], "scores": dict(zip(labels, row))})
        return out

    def rank_images(self, text: str, images: Sequence) -> list[tuple[int, float]]:
        """(index into images, cosine similarity) for every image, most similar to `text` first."""
        if not str(text).strip():
            raise InputError("the query text is empty")
        if not images:
            raise InputError("give at least one image")
        similarity = (self.embed_images(images) @ self.embed_texts([text]).t()).squeeze(1)
        order = similarity.argsort(descending=True).tolist()
        return [(i, similarity[i].item()) for i in order]

    def rank_texts(self, image, texts: Sequence[str]) -> list[tuple[int, float]]:
        """(index into texts, cosine similarity) for every text, most similar to `image` first."""
        if not texts:
            raise InputError("give at least one text")
        similarity = (self.embed_images([image]) @ self.embed_texts(texts).t()).squeeze(0)
        order = similarity.argsort(descending=True).tolist()
        return [(i, similarity[i].item()) for i in order]
