"""Associative recall: a synthetic warm-up that teaches a small LLM, trained from scratch, to look things up in
its context before it has to do so for an image (docs/florence-vl.md, 2026-12-07).

Each row is `<s> k1 v1 k2 v2 ... kn vn kq` with random token ids, and the only target is `vq`, the value that
followed the queried key earlier in the row. Nothing but a lookup by content predicts it: the skill a question
like "What color is the triangle?" needs, with no world text to learn an answer prior from instead. Measured on
the nano LLM, questions answered from a scene description written in its prompt, after 500 steps at lr 1e-3:
colour / shape / count 0.30 / 0.34 / 0.54 without this warm-up, 0.39 / 0.54 / 0.74 after 2,000 steps of it.
"""

from __future__ import annotations

import random

from ..vl.model import IGNORE_INDEX, pad_rows
from ..vl.nano_llm import CHAT_TOKENS, SPECIALS

FIRST_ORDINARY_ID = len(SPECIALS) + len(CHAT_TOKENS)  # the recipe's tokenizers put their special tokens first


class RecallBatches:
    """`batch_size` recall rows per step, a pure function of (seed, step). Keys are distinct ids from
    [first_id, vocab_size) (first_id skips the special tokens); values may repeat."""

    def __init__(self, vocab_size: int, bos_id: int, pad_id: int, batch_size: int = 64,
                 pairs: tuple[int, int] = (3, 10), seed: int | str = 0, first_id: int = FIRST_ORDINARY_ID):
        if vocab_size - first_id < pairs[1]:
            raise ValueError(f"a vocabulary of {vocab_size} has too few ids for {pairs[1]} distinct keys")
        self.vocab_size, self.bos_id, self.pad_id = vocab_size, bos_id, pad_id
        self.batch_size, self.pairs, self.seed, self.first_id = batch_size, pairs, seed, first_id

    def __call__(self, step: int) -> dict:
        rng = random.Random(f"{self.seed}-recall-{step}")
        rows, labels = [], []
        for _ in range(self.batch_size):
            n = rng.randint(*self.pairs)
            keys = rng.sample(range(self.first_id, self.vocab_size), n)
            values = [rng.randrange(self.first_id, self.vocab_size) for _ in keys]
            query = rng.randrange(n)
            row = [self.bos_id] + [t for pair in zip(keys, values) for t in pair] + [keys[query], values[query]]
            rows.append(row)
            labels.append([IGNORE_INDEX] * (len(row) - 1) + [values[query]])
        return pad_rows(rows, self.pad_id, labels=labels)

