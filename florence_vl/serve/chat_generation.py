"""Batched Florence-VL chat generation where every row lives its own life.

Rows of one batch share one `generate` call (left-padded, greedy or sampled with the same settings), but
each row has its own token limit, stop strings, logit bias and listener, and can be cancelled (its client
went away) while the others go on. One `RowDriver` is both the stopping criteria and the logits processor
that transformers' generate calls at every step: it appends each row's new token, decodes the row's text,
cuts it at a stop string, hands the new text to the row's listener (streaming) and tells generate which
rows are finished. When every row is finished (or cancelled), generate ends early.

The text a row ends with equals `FlorenceVL.chat`'s answer for the same prompt and image (greedy rows do
not depend on each other); the pieces handed to the listener add up to exactly that text.

No HTTP here: `ChatService` (chat_service.py) runs `generate_rows` from its batcher.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ..vl.model import IMAGE_TOKEN_INDEX, pad_rows

GREEDY_BELOW = 1e-5
_UNSETTLED_END = re.compile(r"[\s\ufffd]+$")  # trailing whitespace, half-decoded characters


@dataclass(frozen=True)
class Sampling:
    """What rows must share to be in one batch (generate takes these for the whole batch)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0

    @classmethod
    def of(cls, temperature: float | None, top_p: float | None) -> "Sampling":
        """OpenAI's knobs -> ours: temperature 0 (or none given: the model's default) is greedy, and so is a
        temperature below GREEDY_BELOW: sampling at it is greedy in effect, and dividing the logits by it
        overflows to inf/nan (5e-324 made generate raise)."""
        if not temperature or temperature < GREEDY_BELOW:
            return cls()
        return cls(True, float(temperature), float(top_p if top_p is not None else 1.0))


class Listener(Protocol):
    """Called on the generating thread."""

    def delta(self, text: str) -> None: ...

    def finished(self) -> None: ...


@dataclass
class Row:
    ids: list[int]                      # prompt ids, IMAGE_TOKEN_INDEX where the image goes (at most one)
    image: Image.Image | None
    max_tokens: int
    stop: tuple[str, ...] = ()
    logit_bias: dict[int, float] = field(default_factory=dict)
    sampling: Sampling = Sampling()
    prompt_tokens: int = 0              # positions the LLM sees for the prompt (image features included)
    listener: Listener | None = None
    # -- filled in while generating --
    tokens: list[int] = field(default_factory=list)
    text: str = ""                      # the answer so far (final once finish_reason is set)
    emitted: str = ""                   # what the listener has been given
    finish_reason: str | None = None    # "stop", "length" or "cancelled"
    cancelled: bool = False             # set from another thread: the caller left

    @property
    def images(self) -> int:
        return sum(1 for i in self.ids if i == IMAGE_TOKEN_INDEX)

    def result(self) -> dict:
        return {"text": self.text, "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": len(self.tokens)}

    # -- text bookkeeping ---------------------------------------------------------------------------

    def _cut(self, text: str) -> tuple[str, bool]:
        """`text` up to the first stop string (not included), and whether one was found."""
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return (text[: min(found)], True) if found else (text, False)

    def _safe(self, text: str) -> str:
        """What can be streamed now: not trailing whitespace (the answer is stripped), not a half-decoded
        character, not the start of what may become a stop string."""
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        return _UNSETTLED_END.sub("", text[: len(text) - hold])

    def update(self, tokenizer) -> None:
        text = tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        text, stopped = self._cut(text)
        if stopped:
            self.finish("stop", text)
            return
        self.text = text.strip()
        self._emit(self._safe(text))

    def finish(self, reason: str, text: str | None = None) -> None:
        if self.finish_reason is not None:
            return
        self.finish_reason = reason
        if text is not None:
            self.text = text.strip()
        if reason != "cancelled":
            self._emit(self.text)
        if self.listener is not None:
            self.listener.finished()

    def _emit(self, upto: str) -> None:
        if self.listener is None or len(upto) <= len(self.emitted) or not upto.startswith(self.emitted):
            return
        piece, self.emitted = upto[len(self.emitted):], upto
        self.listener.delta(piece)


class RowBias(LogitsProcessor):
    """OpenAI's logit_bias, per row: added to the logits before the token is chosen."""

    def __init__(self, rows: Sequence[Row], vocab_size: int):
        self.bias = torch.zeros(len(rows), vocab_size)
        for i, row in enumerate(rows):
            for token, value in row.logit_bias.items():
                self.bias[i, token] = value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return scores + self.bias[:, : scores.shape[-1]].to(scores.device, scores.dtype)


class RowDriver(StoppingCriteria):
    """Per-row stopping for one batch: own token limit, stop strings, end tokens, cancellation."""

    def __init__(self, rows: Sequence[Row], tokenizer, stop_ids: Sequence[int]):
        self.rows = list(rows)
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        return self._stopped(input_ids)

    def _stopped(self, input_ids: torch.LongTensor) -> torch.BoolTensor:
        new = input_ids[:, -1].tolist() if input_ids.shape[1] else [None] * len(self.rows)
        for row, token in zip(self.rows, new):
            if row.finish_reason is not None or token is None:
                continue
            if row.cancelled:
                row.finish("cancelled")
            elif token in self.stop_ids:
                row.finish("stop")
            else:
                row.tokens.append(int(token))
                row.update(self.tokenizer)
                if row.finish_reason is None and len(row.tokens) >= row.max_tokens:
                    row.finish("length")
        return torch.tensor([r.finish_reason is not None for r in self.rows], dtype=torch.bool,
                            device=input_ids.device)


def generate_rows(vl, rows: Sequence[Row]) -> None:
    """Run `rows` (same `sampling`) as one batch with `vl` (a FlorenceVL); each row ends finished."""
    if not rows:
        return
    sampling = rows[0].sampling
    if any(r.sampling != sampling for r in rows):
        raise ValueError("rows of one batch must share their sampling settings")
    processor = vl.processor
    stop_ids = processor.stop_token_ids()
    driver = RowDriver(rows, vl.tokenizer, stop_ids)
    live = [r for r in rows if not r.cancelled]
    for row in rows:
        if row.cancelled:
            row.finish("cancelled")
    if live:
        inputs = pad_rows([r.ids for r in rows], processor.pad_id, side="left")
        images = [r.image for r in rows if r.images]
        embeds = vl.image_embeds(images) if images else None  # FlorenceVL's feature cache: a follow-up skips vision
        options = dict(max_new_tokens=max(r.max_tokens for r in live), num_beams=1, pad_token_id=processor.pad_id,
                       eos_token_id=stop_ids, stopping_criteria=StoppingCriteriaList([driver]))
        if any(r.logit_bias for r in rows):
            options["logits_processor"] = LogitsProcessorList([RowBias(rows, vl.model.llm.config.vocab_size)])
        if sampling.do_sample:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            options.update(do_sample=False)
        vl.model.generate(**inputs, image_embeds=embeds, **options)
    for row in rows:  # generate ran out of steps (a limit it has of its own)
        row.finish("length")
