"""Florence-VL chat behind the dynamic batcher: one queue, one model, batches of conversations.

`prepare` (on a worker thread, before anything is queued) turns a parsed conversation into a `Row`: the
image decoded under the server's limits, the prompt encoded with the model's chat template, every limit
checked (prompt tokens, max_tokens, the model's context, logit bias ids). `start` queues the row and
returns a `ChatJob` at once, or raises QueueFull. Rows with the same sampling settings share a batch;
each row's own limit, stop strings and cancellation are handled inside the batch (chat_generation.py).

A job is finished as soon as its row is, not when its whole batch is: `ChatJob.result()` and the
streamed pieces of `ChatJob.deltas()` come back while longer rows of the same batch still generate.
`ChatJob.cancel()` (the client left) takes a waiting row out of the queue, or stops a running row at its
next token; a batch whose rows are all finished or cancelled ends at once.
"""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

from ..vl.model import IMAGE_TOKEN_INDEX
from .batcher import DynamicBatcher
from .chat_generation import Row, Sampling, generate_rows
from .chat_request import Conversation
from .errors import ApiError
from .image_source import decode_image_source
from .settings import ServeSettings


@dataclass
class ChatStats:
    requests: int = 0
    cancelled: int = 0           # rows stopped because their client left
    completion_tokens: int = 0

    def to_dict(self) -> dict:
        return {"requests": self.requests, "cancelled": self.cancelled, "completion_tokens": self.completion_tokens}


class ChatJob:
    """One queued conversation, seen from the event loop. The generating thread reports through
    `delta` and `finished` (the row's Listener), which hop onto the loop."""

    def __init__(self, service: "ChatService", row: Row):
        self.service = service
        self.row = row
        self.loop = asyncio.get_running_loop()
        self.pieces: asyncio.Queue = asyncio.Queue()
        self.done = self.loop.create_future()
        self.task: asyncio.Task | None = None
        row.listener = self

    # -- the generating thread's side ----------------------------------------------------------------

    def delta(self, text: str) -> None:
        self.loop.call_soon_threadsafe(self.pieces.put_nowait, text)

    def finished(self) -> None:
        self.loop.call_soon_threadsafe(self._set_done)

    def _set_done(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        self.pieces.put_nowait(None)

    # -- the event loop's side ----------------------------------------------------------------------

    async def _first(self) -> None:
        """Until the row is finished or the batch failed (then its error is raised)."""
        if not self.done.done():
            await asyncio.wait({self.done, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not self.done.done():
            self.task.result()  # raises the batch's error
            raise RuntimeError("the batch ended without finishing this row")

    async def result(self) -> dict:
        await self._first()
        return self.row.result()

    async def deltas(self) -> AsyncIterator[str]:
        """The answer's text pieces as they are generated; ends when the row is finished."""
        while True:
            if self.pieces.empty():
                getter = asyncio.ensure_future(self.pieces.get())
                try:
                    await asyncio.wait({getter, self.task}, return_when=asyncio.FIRST_COMPLETED)
                except BaseException:  # the stream was cancelled (its client left): the getter goes too, or it
                    getter.cancel()    # stays pending and is destroyed so ("Task was destroyed but it is pending")
                    raise
                if not getter.done():
                    getter.cancel()
                    while not self.pieces.empty():  # the batch failed or ended: what it said before
                        piece = self.pieces.get_nowait()
                        if piece is None:
                            return
                        yield piece
                    self.task.result()
                    return
                piece = getter.result()
            else:
                piece = self.pieces.get_nowait()
            if piece is None:
                return
            yield piece

    def cancel(self) -> None:
        if self.row.finish_reason is None and not self.row.cancelled:
            self.row.cancelled = True
            self.service.stats.cancelled += 1
        if self.task is not None and not self.task.done():
            self.task.cancel()


def _quiet(task: asyncio.Task) -> None:
    """Nobody may await a job's batch task once its row finished; retrieve its outcome so none is lost."""
    if not task.cancelled():
        task.exception()


class ChatService:
    kind = "florence-vl"

    def __init__(self, vl, *, name: str = "florence-vl", settings: ServeSettings | None = None):
        settings = settings or ServeSettings()
        self.vl = vl
        self.name = name
        self.settings = settings
        self.created = int(time.time())
        self.stats = ChatStats()
        self.processor = copy.copy(vl.processor)
        self.processor.max_length = None  # never cut a prompt silently: prepare refuses one that is too long
        model = vl.model
        self.image_tokens = model.mm_projector.num_tokens(model.vision_tower.num_image_tokens)
        self.context = int(getattr(model.llm.config, "max_position_embeddings", 0) or 0) or None
        self.vocab_size = int(model.llm.config.vocab_size)
        self.batcher = DynamicBatcher(self._run_batch, max_batch_size=settings.max_batch_size,
                                      window_s=settings.batch_window_ms / 1000, max_queue=settings.max_queue)

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    def model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "florence-vl",
                "kind": self.kind, "source": self.vl.source, "context_length": self.context,
                "image_tokens": self.image_tokens}

    def limits(self) -> dict:
        s = self.settings
        return {"max_tokens": s.max_new_tokens, "max_prompt_tokens": s.max_prompt_tokens,
                "context_length": self.context, "image_tokens": self.image_tokens, "images_per_request": 1}

    # -- before queueing ------------------------------------------------------------------------------

    def prepare(self, conversation: Conversation, *, max_tokens: int | None, stop: Sequence[str],
                logit_bias: dict[str, float] | None, sampling: Sampling) -> Row:
        """Decode, encode and check everything (ApiError on a mistake); nothing is generated here."""
        s = self.settings
        image = None
        if conversation.image is not None:
            image = decode_image_source(conversation.image, allow_dirs=s.allow_dirs, max_pixels=s.max_image_pixels)
        ids = self.processor.encode(conversation.turns_for_model())[0]
        markers = sum(1 for i in ids if i == IMAGE_TOKEN_INDEX)
        if markers != (image is not None):
            raise ApiError(400, f"the prompt holds {markers} image place(s) for {int(image is not None)} image(s)",
                           "invalid_request")
        prompt_tokens = len(ids) - markers + markers * self.image_tokens
        if prompt_tokens > s.max_prompt_tokens:
            raise ApiError(400, f"the prompt is {prompt_tokens} tokens (the image counts {self.image_tokens}); this "
                           f"server takes at most {s.max_prompt_tokens}", "prompt_too_long")
        room = (self.context - prompt_tokens) if self.context else s.max_new_tokens
        if room < 1:
            raise ApiError(400, f"the prompt is {prompt_tokens} tokens, the model's whole context is {self.context}",
                           "context_length_exceeded")
        if max_tokens is not None and max_tokens > s.max_new_tokens:
            raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {s.max_new_tokens}",
                           "max_tokens_too_large")
        if max_tokens is not None and max_tokens > room:
            raise ApiError(400, f"the prompt ({prompt_tokens} tokens) and max_tokens ({max_tokens}) do not fit the "
                           f"model's context of {self.context} tokens", "context_length_exceeded")
        return Row(ids, image, max_tokens or min(s.max_new_tokens, room), tuple(stop),
                   self._bias(logit_bias), sampling, prompt_tokens)

    def _bias(self, logit_bias: dict[str, float] | None) -> dict[int, float]:
        out = {}
        for key, value in (logit_bias or {}).items():
            token = int(key) if str(key).lstrip("-").isdigit() else -1
            if not 0 <= token < self.vocab_size:
                raise ApiError(400, f"logit_bias: {key!r} is not a token id of this model (0..{self.vocab_size - 1})",
                               "invalid_request")
            out[token] = float(value)
        return out

    # -- queueing -------------------------------------------------------------------------------------

    async def start_job(self, row: Row) -> ChatJob:
        """Queue `row`; QueueFull (BatcherClosed) at once when it cannot wait."""
        job = ChatJob(self, row)
        job.task = asyncio.ensure_future(self.batcher.submit(row, key=row.sampling))
        await asyncio.sleep(0)  # submit runs up to its wait: queued, or refused
        if job.task.done() and not job.task.cancelled() and job.task.exception() is not None:
            raise job.task.exception()
        job.task.add_done_callback(_quiet)
        self.stats.requests += 1
        return job

    def _run_batch(self, sampling: Sampling, rows: Sequence[Row]) -> list:
        generate_rows(self.vl, rows)
        self.stats.completion_tokens += sum(len(r.tokens) for r in rows)
        return [row.result() for row in rows]

