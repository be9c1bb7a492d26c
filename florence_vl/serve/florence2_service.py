"""Florence-2 tasks behind the dynamic batcher: one queue, one model, batches of mixed tasks.

Requests with the same generation options (beam width, token limit) share a batch; `Florence2.run_requests`
pads and masks them so each result equals the one-at-a-time result. A request that the model refuses
(InputError) fails alone: the batch is re-run one request at a time so the others still get their answer.
A chat model (Florence-VL) will be a second service beside this one, with its own batcher.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError
from ..florence2.results import TaskResult
from ..florence2.runner import Florence2, TaskRequest
from .batcher import DynamicBatcher


@dataclass(frozen=True)
class GenerationOptions:
    """What must be equal for two requests to share a batch."""

    num_beams: int
    max_new_tokens: int


class Florence2Service:
    kind = "florence2"

    def __init__(self, florence: Florence2, *, name: str = "florence-2", max_batch_size: int = 8,
                 window_s: float = 0.01, max_queue: int = 64):
        self.florence = florence
        self.name = name
        self.created = int(time.time())
        self.batcher = DynamicBatcher(self._run_batch, max_batch_size=max_batch_size, window_s=window_s,
                                      max_queue=max_queue)

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    def check(self, request: TaskRequest) -> str:
        """The prompt, or the InputError the model would raise; run before queueing (cheap, no generation)."""
        return self.florence.check_request(request)

    async def run(self, request: TaskRequest, options: GenerationOptions) -> TaskResult:
        return await self.batcher.submit(request, key=options)

    def _run_batch(self, options: GenerationOptions, requests: Sequence[TaskRequest]) -> list:
        run = lambda reqs: self.florence.run_requests(  # noqa: E731
            list(reqs), batch_size=len(reqs), num_beams=options.num_beams, max_new_tokens=options.max_new_tokens)
        try:
            return run(requests)
        except InputError as error:
            if len(requests) == 1:
                return [error]
        results: list = []
        for request in requests:  # find the one the model refused; the others still run
            try:
                results.extend(run([request]))
            except InputError as error:
                results.append(error)
        return results

    def model_card(self) -> dict:
        """The /v1/models entry."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "florence-vl",
                "kind": self.kind, "source": self.florence.source}
