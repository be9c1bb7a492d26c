"""Stop a runaway loop: a small model that ends a text with the same few tokens over and over (an OCR of a chart
reads the ticks "100 80 60 40 20 0" and then writes " 0" until the token limit) is stopped once the loop is
unmistakable, and the output keeps one copy of the repeated unit.

A loop is the end of a sequence made of `min_copies(L)` back-to-back copies of one unit of L tokens, L <= 8, with
min_copies(L) = max(3, ceil(12 / L)): 12 copies of one token, 6 of two, 4 of three, 3 of four to eight. Text the
nano world or a real image asks for does not do that (a caption's repeated "is on the" has other words between),
and neither does detection: a loop of L = 5 is the same label with the same box, a duplicate. Unlike transformers'
no_repeat_ngram_size, which bans every repeated 3-gram from the first token on (legitimate repeated <loc_k> runs
and words included), this changes nothing before a loop is there.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from transformers import StoppingCriteria

MAX_UNIT = 8


def min_copies(unit: int) -> int:
    return max(3, math.ceil(12 / unit))


def loop_at_end(ids: Sequence[int]) -> tuple[int, int] | None:
    """(unit length, copies) of the loop `ids` ends with, the shortest unit first; None when it ends in none."""
    for unit in range(1, MAX_UNIT + 1):
        need = min_copies(unit)
        if len(ids) < unit * need:
            continue
        tail = list(ids[-unit:])
        copies = 1
        while (copies + 1) * unit <= len(ids) and list(ids[len(ids) - (copies + 1) * unit:
                                                          len(ids) - copies * unit]) == tail:
            copies += 1
        if copies >= need:
            return unit, copies
    return None


def drop_loop(ids: list[int]) -> tuple[list[int], int]:
    """`ids` with a loop at its end cut back to one copy of its unit, and the number of tokens dropped."""
    found = loop_at_end(ids)
    if found is None:
        return ids, 0
    unit, copies = found
    dropped = unit * (copies - 1)
    return ids[:len(ids) - dropped], dropped


class RunawayLoopStop(StoppingCriteria):
    """transformers stopping criterion: a row is done once its generated tokens end in a loop (see module doc)."""

    def __init__(self, prompt_length: int = 1):
        self.prompt_length = prompt_length  # decoder tokens before the first generated one (the start token)

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        rows = input_ids[:, self.prompt_length:]
        window = rows[:, -MAX_UNIT * min_copies(1):].tolist()
        return torch.tensor([loop_at_end(row) is not None for row in window], dtype=torch.bool,
                            device=input_ids.device)
