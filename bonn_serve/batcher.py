"""Adaptive micro-batching in front of one model: concurrent requests are grouped into one engine call.

Requests wait in a bounded queue. A single runner task takes everything queued (up to `max_batch` images),
optionally waiting up to `max_wait_ms` for the batch to fill, and runs the engine on a dedicated thread so the
event loop keeps accepting requests meanwhile; whatever arrives during an engine call forms the next batch.
When the queue holds `max_queue` images, new requests are refused with `Overloaded` (HTTP 503).

A batch whose expected engine time (running per-image estimate x images) is at most `inline_ms` runs on the
event-loop thread instead: handing work to a thread and the result back costs two wake-ups, measured at
~3 ms on a busy 2-core machine against 0.25 ms for the BONN forward pass itself (docs/serving.md). Blocking
the loop that briefly only delays parsing of the next requests, which then form the next batch anyway.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger("bonn_serve")


class Overloaded(RuntimeError):
    """The queue is full; `retry_after` is a suggested wait in whole seconds."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.detail, self.retry_after = detail, retry_after


@dataclass
class BatchResult:
    logits: np.ndarray  # [n, classes] for this request's images
    inference_s: float  # engine time of the batch(es) that carried them
    queue_s: float  # time from submit to the start of that engine call
    batch_images: int  # size of the engine batch


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    enqueued: float


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
        max_queue: int = 256,
        inline_ms: float = 0.0,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "model",
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0 or inline_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_ms and inline_ms >= 0")
        self.inline_s = inline_ms / 1000.0
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000.0
        self.max_queue, self.on_batch, self.name = max_queue, on_batch, name
        self._pending: deque[_Item] = deque()
        self._pending_images = 0
        self._inflight: list[_Item] = []  # the batch the runner is working on
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._runner: asyncio.Task | None = None
        self._recent: deque[float] = deque([0.001], maxlen=32)  # engine seconds per image, latest batches

    @property
    def queued_images(self) -> int:
        return self._pending_images

    def expected_s(self, images: int) -> float:
        """Engine time for `images`, from the median per-image time of recent batches (robust to the
        occasional preempted call on a busy machine)."""
        return statistics.median(self._recent) * images

    def _timed(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        logits = self.run_batch(x)
        return logits, time.perf_counter() - t0

    async def submit(self, x: np.ndarray) -> BatchResult:
        """Queue a [n, C, H, W] float32 batch and wait for its logits."""
        n = int(x.shape[0])
        if self._pending_images + n > self.max_queue:
            wait = self.expected_s(self._pending_images)
            raise Overloaded(
                f"model {self.name!r} has {self._pending_images} images queued "
                f"(limit {self.max_queue}); retry later",
                max(1, math.ceil(wait)),
            )
        self._ensure_runner()
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(x, fut, time.perf_counter()))
        self._pending_images += n
        self._wakeup.set()
        if self._pending_images >= self.max_batch:
            self._full.set()
        return await fut

    def _ensure_runner(self) -> None:
        if self._runner is None or self._runner.done():
            self._wakeup, self._full = asyncio.Event(), asyncio.Event()
            self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    def _take(self) -> list[_Item]:
        items, count = [], 0
        while self._pending:
            n = int(self._pending[0].x.shape[0])
            if items and count + n > self.max_batch:
                break
            item = self._pending.popleft()
            self._pending_images -= n
            if item.future.cancelled():  # client went away while queued
                continue
            items.append(item)
            count += n
        if self._pending_images < self.max_batch:
            self._full.clear()
        if not self._pending:
            self._wakeup.clear()
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if self.max_wait > 0 and self._pending_images < self.max_batch:
                try:
                    await asyncio.wait_for(self._full.wait(), self.max_wait)
                except asyncio.TimeoutError:
                    pass
            items = self._take()
            if not items:
                continue
            self._inflight = items
            try:
                results = await self._run_batch(loop, items)
            except Exception as e:  # any failure fails this batch's requests, never leaves them waiting
                results = [e] * len(items)
            finally:
                self._inflight = []
            for item, r in zip(items, results, strict=True):
                if item.future.done():  # cancelled: the client went away
                    continue
                if isinstance(r, Exception):
                    item.future.set_exception(r)
                else:
                    item.future.set_result(r)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, items: list[_Item]) -> list[BatchResult]:
        x = items[0].x if len(items) == 1 else np.concatenate([i.x for i in items])
        n = int(x.shape[0])
        start = time.perf_counter()
        if self.expected_s(n) <= self.inline_s:
            logits, engine_s = self._timed(x)  # cheap: skip the thread hand-offs (module docstring)
        else:
            logits, engine_s = await loop.run_in_executor(self._executor, self._timed, x)
        if getattr(logits, "ndim", 0) != 2 or logits.shape[0] != n:
            raise RuntimeError(f"model {self.name!r} returned {getattr(logits, 'shape', '?')} for a batch of {n}")
        self._recent.append(engine_s / n)
        if self.on_batch is not None:
            try:
                self.on_batch(n, engine_s)
            except Exception:  # metrics must never fail the requests they describe
                logger.exception("batch metrics of model %r failed", self.name)
        results, offset = [], 0
        for item in items:
            k = int(item.x.shape[0])
            results.append(BatchResult(logits[offset : offset + k], engine_s, start - item.enqueued, n))
            offset += k
        return results

    def close(self) -> None:
        """Stop the runner; every request still queued or in the running batch fails instead of waiting."""
        if self._runner is not None:
            self._runner.cancel()
        for item in [*self._pending, *self._inflight]:
            if not item.future.done():
                item.future.set_exception(RuntimeError(f"model {self.name!r} is shutting down"))
        self._pending.clear()
        self._pending_images = 0
        self._executor.shutdown(wait=False, cancel_futures=True)
