"""Dynamic batching: requests from many clients wait a short window, then run together as one batch.

A `DynamicBatcher` owns a bounded queue and one worker. The worker takes the oldest waiting item, waits
until that item has waited `window_s` (or until `max_batch_size` items with the same key are waiting),
then runs every waiting item with that key, up to `max_batch_size`, in one call of `run_batch` on its own
thread, so the event loop keeps accepting requests meanwhile. Items with another key (other generation
options) wait for a later batch. While a batch runs, new items gather; they have already waited longer
than the window when it ends, so the next batch starts at once.

Overload never hangs a caller: `submit` raises `QueueFull` (with a suggested retry delay) when
`max_queue` items are waiting. A caller that goes away (its task is cancelled, e.g. the HTTP client
disconnected) takes its item out of the queue; if its batch already started, the result is dropped.
`max_batch_size=1` is the one-at-a-time server, the baseline the benchmark compares against.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


class QueueFull(Exception):
    """The queue is full; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"server busy: the request queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class BatcherClosed(Exception):
    """The batcher stopped (server shutting down) before this item ran."""


@dataclass
class _Item:
    key: Hashable
    payload: Any
    future: asyncio.Future
    enqueued: float


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    dropped: int = 0            # items whose caller left before their batch started
    rejected: int = 0           # QueueFull answers
    seconds_per_batch: float = 0.0  # moving average, for Retry-After

    def to_dict(self) -> dict:
        return {"batches": self.batches, "items": self.items, "largest_batch": self.largest_batch,
                "dropped": self.dropped, "rejected": self.rejected,
                "seconds_per_batch": round(self.seconds_per_batch, 4)}


@dataclass
class DynamicBatcher:
    """`run_batch(key, payloads)` returns one result per payload, in order; a result that is an exception
    instance is raised to that payload's caller alone. An exception raised by `run_batch` itself goes to
    every caller of the batch."""

    run_batch: RunBatch
    max_batch_size: int = 8
    window_s: float = 0.01
    max_queue: int = 64
    stats: BatchStats = field(default_factory=BatchStats)

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if self.window_s < 0:
            raise ValueError("window_s must not be negative")
        self._queue: list[_Item] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batch: list[_Item] = []  # the batch now running

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is None:
            self._wake = asyncio.Event()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
            self._worker = asyncio.create_task(self._work(), name="dynamic-batcher")

    async def stop(self) -> None:
        """Stop the worker; callers still waiting get `BatcherClosed`."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(BatcherClosed("server is shutting down"))
        self._queue.clear()
        self._batch = []
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)  # a running batch ends on its own
            self._executor = None

    # -- submitting -------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Items in the queue (not counting the batch now running)."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Items in the batch now running."""
        return len(self._batch)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead, in batches, times a batch's duration."""
        batches_ahead = math.ceil((len(self._queue) + 1) / self.max_batch_size)
        return max(1, math.ceil(batches_ahead * self.stats.seconds_per_batch))

    def refuse_if_full(self) -> None:
        """Raise QueueFull (counted as a refusal) if `submit` would refuse now. Callers ask before their costly
        preparation (decoding an image, tokenizing), so a full server sheds load at almost no cost."""
        if len(self._queue) >= self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(self.retry_after())

    async def submit(self, payload: Any, key: Hashable = None) -> Any:
        """Queue one item and wait for its result. Raises QueueFull at once when the queue is full."""
        if self._worker is None:
            raise BatcherClosed("the batcher is not running")
        if len(self._queue) >= self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(self.retry_after())
        item = _Item(key, payload, asyncio.get_running_loop().create_future(), time.monotonic())
        self._queue.append(item)
        self._wake.set()
        try:
            return await item.future
        finally:
            if item in self._queue:  # cancelled while waiting: free the slot
                self._queue.remove(item)
                self.stats.dropped += 1
            if not item.future.done():
                item.future.cancel()

    # -- the worker -------------------------------------------------------------------------------

    def _same_key(self, key: Hashable) -> list[_Item]:
        return [item for item in self._queue if item.key == key][: self.max_batch_size]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self._queue[0]
            # Gather: until the oldest item has waited the window, or a full batch of its key is waiting.
            while first in self._queue and len(self._same_key(first.key)) < self.max_batch_size:
                remaining = first.enqueued + self.window_s - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            if first not in self._queue:  # its caller left during the window
                continue
            batch = self._same_key(first.key)
            for item in batch:
                self._queue.remove(item)
            await self._run(loop, first.key, batch)

    async def _run(self, loop, key: Hashable, batch: list[_Item]) -> None:
        self._batch = batch
        started = time.monotonic()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, key,
                                                  [item.payload for item in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:  # stop() during a batch
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(BatcherClosed("server is shutting down"))
            raise
        except Exception as error:  # noqa: BLE001 - handed to every caller of this batch
            results = [error] * len(batch)
        finally:
            self._batch = []
        elapsed = time.monotonic() - started
        s = self.stats
        s.seconds_per_batch = elapsed if s.batches == 0 else 0.8 * s.seconds_per_batch + 0.2 * elapsed
        s.batches += 1
        s.items += len(batch)
        s.largest_batch = max(s.largest_batch, len(batch))
        for item, result in zip(batch, results):
            if item.future.done():  # the caller left while the batch ran
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
