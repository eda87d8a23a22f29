"""bonn_serve.batcher.MicroBatcher: grouping, limits, result routing, overload and failure handling."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from bonn_serve.batcher import MicroBatcher, Overloaded


class FakeEngine:
    """Records batch sizes; logits = per-image sum, so each caller can check it got its own rows.
    `gate` holds every call until released (to build up a queue deterministically)."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self.started = threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.started.set()
        self.gate.wait(10)
        self.batches.append(x.shape[0])
        return x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True)


def images(n: int, value: float) -> np.ndarray:
    return np.full((n, 1, 2, 2), value, np.float32)


async def wait_started(engine: FakeEngine) -> None:
    while not engine.started.is_set():
        await asyncio.sleep(0.005)


async def submit_behind_held_call(b: MicroBatcher, engine: FakeEngine, first: np.ndarray, rest: list) -> list:
    """Submit `first`, wait until the held engine is running it, queue `rest` behind it, then release."""
    head = asyncio.create_task(b.submit(first))
    await wait_started(engine)
    tail = [asyncio.create_task(b.submit(x)) for x in rest]
    await asyncio.sleep(0.05)
    engine.gate.set()
    return await asyncio.gather(head, *tail)


def test_requests_queued_during_an_engine_call_form_one_batch():
    engine = FakeEngine(hold=True)
    b = MicroBatcher(engine, max_batch=32)

    rest = [images(1, v) for v in (2, 3, 4, 5)]
    results = asyncio.run(submit_behind_held_call(b, engine, images(1, 1), rest))
    b.close()
    assert engine.batches == [1, 4]
    assert [float(r.logits[0, 0]) for r in results] == [4.0, 8.0, 12.0, 16.0, 20.0]
    assert [r.batch_images for r in results] == [1, 4, 4, 4, 4]


def test_max_batch_is_respected_and_rows_routed():
    engine = FakeEngine(hold=True)
    b = MicroBatcher(engine, max_batch=4)

    rest = [images(n, v) for n, v in ((2, 1), (2, 2), (3, 3), (1, 4))]
    results = asyncio.run(submit_behind_held_call(b, engine, images(1, 0), rest))
    b.close()
    assert engine.batches == [1, 4, 4]  # (2+2), then (3+1): a request's images are never split
    assert all(max(engine.batches) <= 4 for _ in engine.batches)
    for r, (n, v) in zip(results[1:], ((2, 1), (2, 2), (3, 3), (1, 4)), strict=True):
        assert r.logits.shape == (n, 1) and np.all(r.logits == 4 * v)


def test_oversized_request_runs_alone():
    engine = FakeEngine()
    b = MicroBatcher(engine, max_batch=2)
    r = asyncio.run(b.submit(images(5, 1)))
    b.close()
    assert engine.batches == [5] and r.logits.shape == (5, 1)


def test_max_wait_lets_a_batch_fill():
    engine = FakeEngine()
    b = MicroBatcher(engine, max_batch=2, max_wait_ms=1000)

    async def run():
        a = asyncio.create_task(b.submit(images(1, 1)))
        await asyncio.sleep(0.02)  # the runner is now waiting for the batch to fill
        return await asyncio.gather(a, b.submit(images(1, 2)))

    asyncio.run(run())
    b.close()
    assert engine.batches == [2]  # filled, so dispatched without waiting out max_wait


def test_zero_wait_does_not_hold_a_lone_request():
    engine = FakeEngine()
    b = MicroBatcher(engine, max_batch=8, max_wait_ms=0)

    async def run():
        a = await b.submit(images(1, 1))
        c = await b.submit(images(1, 2))
        return a, c

    asyncio.run(run())
    b.close()
    assert engine.batches == [1, 1]


def test_bounded_queue_refuses_with_retry_after():
    engine = FakeEngine(hold=True)
    b = MicroBatcher(engine, max_batch=1, max_queue=2)

    async def run():
        first = asyncio.create_task(b.submit(images(1, 1)))
        await wait_started(engine)
        queued = [asyncio.create_task(b.submit(images(1, 1))) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as ei:
            await b.submit(images(1, 1))
        engine.gate.set()
        await asyncio.gather(first, *queued)
        return ei.value

    err = asyncio.run(run())
    b.close()
    assert err.retry_after >= 1 and "queued" in err.detail


def test_engine_failure_fails_the_batch_not_the_runner():
    calls = []

    def flaky(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        if len(calls) == 1:
            raise RuntimeError("engine exploded")
        return np.zeros((x.shape[0], 1), np.float32)

    b = MicroBatcher(flaky, max_batch=4)

    async def run():
        with pytest.raises(RuntimeError, match="exploded"):
            await b.submit(images(1, 1))
        return await b.submit(images(2, 1))

    assert asyncio.run(run()).logits.shape == (2, 1)
    b.close()


def test_cancelled_request_is_skipped():
    engine = FakeEngine(hold=True)
    b = MicroBatcher(engine, max_batch=8)

    async def run():
        first = asyncio.create_task(b.submit(images(1, 1)))
        await wait_started(engine)
        gone = asyncio.create_task(b.submit(images(3, 1)))
        kept = asyncio.create_task(b.submit(images(1, 7)))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        engine.gate.set()
        return await first, await kept

    _, kept = asyncio.run(run())
    b.close()
    assert engine.batches == [1, 1] and float(kept.logits[0, 0]) == 28.0


def test_invalid_configuration():
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, max_wait_ms=-1)


def test_cheap_batches_run_inline_and_expensive_ones_on_the_engine_thread():
    threads = []

    def engine(x: np.ndarray) -> np.ndarray:
        threads.append(threading.get_ident())
        return np.zeros((x.shape[0], 1), np.float32)

    inline = MicroBatcher(engine, max_batch=8, inline_ms=1000.0)
    offloaded = MicroBatcher(engine, max_batch=8, inline_ms=0.0)

    async def run():
        loop_thread = threading.get_ident()
        await inline.submit(images(2, 1))
        await offloaded.submit(images(2, 1))
        return loop_thread

    loop_thread = asyncio.run(run())
    inline.close()
    offloaded.close()
    assert threads[0] == loop_thread and threads[1] != loop_thread
    assert inline.expected_s(4) > 0


def test_a_failure_outside_the_engine_call_fails_the_batch_instead_of_hanging_it():
    """A model returning the wrong number of rows, or a metrics hook that raises: the requests get an error or
    their result, never a future left waiting until the HTTP timeout."""
    short = MicroBatcher(lambda x: np.zeros((x.shape[0] - 1, 1), np.float32), max_batch=8)

    async def run(b: MicroBatcher, x: np.ndarray):
        return await asyncio.wait_for(b.submit(x), 5)

    with pytest.raises(RuntimeError, match="returned .* for a batch of 2"):
        asyncio.run(run(short, images(2, 1)))
    short.close()

    def broken_hook(n: int, seconds: float) -> None:
        raise KeyError("metrics backend gone")

    hooked = MicroBatcher(FakeEngine(), max_batch=8, on_batch=broken_hook)
    result = asyncio.run(run(hooked, images(1, 3)))
    hooked.close()
    assert float(result.logits[0, 0]) == 12.0


def test_close_fails_queued_and_running_requests():
    engine = FakeEngine(hold=True)
    b = MicroBatcher(engine, max_batch=1)

    async def main():
        running = asyncio.create_task(b.submit(images(1, 1)))
        await wait_started(engine)
        queued = asyncio.create_task(b.submit(images(1, 2)))
        await asyncio.sleep(0.02)
        b.close()
        engine.gate.set()
        return await asyncio.gather(running, queued, return_exceptions=True)

    outcomes = asyncio.run(asyncio.wait_for(main(), 5))
    assert all(isinstance(o, RuntimeError) and "shutting down" in str(o) for o in outcomes), outcomes
    assert b.queued_images == 0
