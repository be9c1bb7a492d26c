"""A bounded LRU of fused image features, keyed by the image's content, so that a second question about the
same image skips Florence-2 (DaViT + three encoder prompts + projector), which is most of the time to first
token. Keys hash the decoded pixels (mode, size, bytes) with BLAKE2b: the same picture read from another file
or path hits, a changed pixel misses. Values are the (tokens, width) features exactly as the model computed
them, so cached answers equal uncached ones (tested). The same LRU holds FlorenceVL's prefix caches (the LLM's
KV cache of the prompt up to the image). The caches know nothing about the weights: whoever changes them
(training, loading others) must clear them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from PIL import Image


def image_key(image: Image.Image, salt: str = "") -> str:
    """Content hash of a decoded image (plus `salt`: anything else the features depend on)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{salt}|{image.mode}|{image.size[0]}x{image.size[1]}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def tensor_key(tensor: torch.Tensor, salt: str = "") -> str:
    """Content hash of a tensor (dtype, shape and bytes): the key of one image's pixel values."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{salt}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """At most `max_items` values; the least recently used goes first. max_items=0 disables it. Tensors are stored
    as compact detached copies (a row of a batch would otherwise keep the whole batch alive)."""

    def __init__(self, max_items: int = 32):
        if max_items < 0:
            raise ValueError("max_items must be >= 0")
        self.max_items = int(max_items)
        self._items: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    def get(self, key):
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key, value) -> None:
        if not self.max_items:
            return
        self._items[key] = value.detach().clone() if isinstance(value, torch.Tensor) else value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._items.values() if isinstance(t, torch.Tensor))
