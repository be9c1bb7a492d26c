"""The dynamic batcher alone (no HTTP, no model): gathering, keys, errors, overload, callers who leave."""

import asyncio
import threading
import time

import pytest

from florence_vl.serve.batcher import BatcherClosed, DynamicBatcher, QueueFull


class Recorder:
    """A run_batch that records its batches; optionally blocks until `gate` is set."""

    def __init__(self, gated: bool = False):
        self.batches: list[tuple] = []
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self, key, payloads):
        assert self.gate.wait(10), "test gate never opened"
        self.batches.append((key, list(payloads)))
        return [p * 10 if p >= 0 else ValueError(f"negative {p}") for p in payloads]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def started(batcher):
    await batcher.start()
    return batcher


async def until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.005)


def test_requests_in_the_window_share_one_batch_in_order():
    async def main():
        rec = Recorder()
        b = await started(DynamicBatcher(rec, max_batch_size=8, window_s=0.2))
        results = await asyncio.gather(*(b.submit(i) for i in range(5)))
        await b.stop()
        return rec, results, b.stats

    rec, results, stats = run(main())
    assert results == [0, 10, 20, 30, 40]
    assert rec.batches == [(None, [0, 1, 2, 3, 4])]
    assert (stats.batches, stats.items, stats.largest_batch) == (1, 5, 5)


def test_a_full_batch_does_not_wait_for_the_window():
    async def main():
        b = await started(DynamicBatcher(Recorder(), max_batch_size=4, window_s=30.0))
        t0 = time.monotonic()
        results = await asyncio.gather(*(b.submit(i) for i in range(4)))
        elapsed = time.monotonic() - t0
        await b.stop()
        return results, elapsed

    results, elapsed = run(main())
    assert results == [0, 10, 20, 30] and elapsed < 5


def test_batches_are_capped_and_keys_never_mix():
    async def main():
        rec = Recorder()
        b = await started(DynamicBatcher(rec, max_batch_size=3, window_s=0.1))
        jobs = [b.submit(i, key="a" if i % 2 == 0 else "b") for i in range(10)]
        results = await asyncio.gather(*jobs)
        await b.stop()
        return rec, results

    rec, results = run(main())
    assert results == [i * 10 for i in range(10)]
    assert all(len(payloads) <= 3 for _, payloads in rec.batches)
    for key, payloads in rec.batches:
        assert {p % 2 for p in payloads} == ({0} if key == "a" else {1})
    assert sorted(p for _, ps in rec.batches for p in ps) == list(range(10))


def test_one_at_a_time_mode_runs_batches_of_one():
    async def main():
        rec = Recorder()
        b = await started(DynamicBatcher(rec, max_batch_size=1, window_s=0.0))
        results = await asyncio.gather(*(b.submit(i) for i in range(4)))
        await b.stop()
        return rec, results

    rec, results = run(main())
    assert results == [0, 10, 20, 30] and [len(p) for _, p in rec.batches] == [1, 1, 1, 1]


def test_an_error_result_reaches_only_its_caller():
    async def main():
        b = await started(DynamicBatcher(Recorder(), max_batch_size=8, window_s=0.1))
        results = await asyncio.gather(b.submit(1), b.submit(-1), b.submit(2), return_exceptions=True)
        await b.stop()
        return results

    ok1, bad, ok2 = run(main())
    assert (ok1, ok2) == (10, 20)
    assert isinstance(bad, ValueError) and "negative -1" in str(bad)


def test_a_crashing_batch_fails_each_caller_and_the_worker_goes_on():
    calls = []

    def flaky(key, payloads):
        calls.append(list(payloads))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return list(payloads)

    async def main():
        b = await started(DynamicBatcher(flaky, max_batch_size=8, window_s=0.05))
        first = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        second = await b.submit(3)
        await b.stop()
        return first, second

    first, second = run(main())
    assert all(isinstance(e, RuntimeError) for e in first) and second == 3


def test_full_queue_is_refused_at_once_with_a_retry_delay():
    async def main():
        rec = Recorder(gated=True)
        b = await started(DynamicBatcher(rec, max_batch_size=1, window_s=0.0, max_queue=2))
        running = asyncio.ensure_future(b.submit(0))
        await until(lambda: b.running == 1)
        waiting = [asyncio.ensure_future(b.submit(i)) for i in (1, 2)]
        await until(lambda: b.waiting == 2)
        t0 = time.monotonic()
        with pytest.raises(QueueFull) as refused:
            await b.submit(3)
        refused_in = time.monotonic() - t0
        rec.gate.set()
        results = await asyncio.gather(running, *waiting)
        await b.stop()
        return refused.value, refused_in, results, b.stats

    error, refused_in, results, stats = run(main())
    assert refused_in < 0.5 and error.retry_after >= 1 and "queue is full" in str(error)
    assert results == [0, 10, 20] and stats.rejected == 1


def test_a_caller_that_leaves_frees_its_slot_and_is_never_run():
    async def main():
        rec = Recorder(gated=True)
        b = await started(DynamicBatcher(rec, max_batch_size=1, window_s=0.0, max_queue=1))
        running = asyncio.ensure_future(b.submit(0))
        await until(lambda: b.running == 1)
        leaver = asyncio.ensure_future(b.submit(1))
        await until(lambda: b.waiting == 1)
        leaver.cancel()
        await until(lambda: b.waiting == 0)
        stayer = asyncio.ensure_future(b.submit(2))  # the freed slot is usable
        rec.gate.set()
        results = await asyncio.gather(running, stayer)
        await b.stop()
        return rec, results, b.stats

    rec, results, stats = run(main())
    assert results == [0, 20] and stats.dropped == 1
    assert [p for _, ps in rec.batches for p in ps] == [0, 2]


def test_stop_fails_waiting_callers_instead_of_hanging():
    async def main():
        rec = Recorder(gated=True)
        b = await started(DynamicBatcher(rec, max_batch_size=1, window_s=0.0))
        running = asyncio.ensure_future(b.submit(0))
        await until(lambda: b.running == 1)
        waiting = asyncio.ensure_future(b.submit(1))
        await until(lambda: b.waiting == 1)
        stopping = asyncio.ensure_future(b.stop())
        await asyncio.sleep(0.05)
        rec.gate.set()  # let the thread finish so the executor can shut down
        await stopping
        return await asyncio.gather(running, waiting, return_exceptions=True)

    for outcome in run(main()):
        assert isinstance(outcome, BatcherClosed)
    with pytest.raises(BatcherClosed):
        run(DynamicBatcher(Recorder()).submit(1))  # never started


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_queue": 0}, {"window_s": -1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), **kwargs)
