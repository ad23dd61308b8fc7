"""Adaptive micro-batching: concurrent requests share one model call.

Requests are validated on the event loop and queued here; one inference thread takes
everything queued (up to ``max_rows`` rows) as one batch whenever it is free. The batch
size therefore follows the load: one request at a time when the service is quiet (no
added wait), and as many as arrived during the previous model call when it is busy. For
models whose call cost is mostly fixed (a 200-tree random forest costs about the same for
1 row as for 1000), this multiplies throughput under load while adding no latency when idle.

Why not ``@bentoml.api(batchable=True)``: BentoML batches along a single array argument and
splits a single array result, while ``/predict`` validates each request against the model's
schema before batching (so one bad request cannot fail its neighbours) and answers in the
KServe v1 format. BentoML's dispatcher also waits for a batch to fill at low load (one
connection of 64-row requests: 35.6 ms p50 against 13.0 ms, docs/benchmarks.md), and it drops
requests it expects to miss ``max_latency_ms`` (none were dropped in those runs).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable, Sized
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

In = TypeVar("In", bound=Sized)  # an item of rows; len() is its row count
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    """Queue work items and run them in batches in an executor.

    Args:
        run_batch: called with a list of items; returns one result per item (same order).
            An exception fails every item of that batch.
        executor: where ``run_batch`` runs (one thread: the model is called serially).
        max_rows: stop adding items to a batch once it holds this many rows.
        inline_below_s: run a batch on the event loop itself, not in ``executor``, while
            batches take less than this (a moving average of their wall time). Handing a
            cheap call to a thread and back costs two thread wake-ups, more than a linear
            model's whole call; an expensive call (a forest) stays off the loop, which then
            keeps reading and validating the next requests. 0: always the executor.
    """

    # Weight of the newest batch in the moving average of batch times.
    _ALPHA = 0.2

    def __init__(self, run_batch: Callable[[list[In]], list[Out]], executor: Executor,
                 max_rows: int, inline_below_s: float = 0.0) -> None:
        self._run_batch = run_batch
        self._executor = executor
        self._max_rows = max_rows
        self._inline_below_s = inline_below_s
        self.batch_seconds: float | None = None  # moving average; None before the first
        self._queue: collections.deque[tuple[In, asyncio.Future[Out]]] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._running: list[tuple[In, asyncio.Future[Out]]] = []

    async def submit(self, item: In) -> Out:
        """Queue ``item`` and wait for its result."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._work(), name="slipway-batcher")
        future: asyncio.Future[Out] = loop.create_future()
        self._queue.append((item, future))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    async def submit_each(self, items: Iterable[In]) -> list[Out]:
        """Submit ``items`` one after another, each once the previous one is done, so work
        queued meanwhile goes into the next batch instead of waiting behind all of them."""
        return [await self.submit(item) for item in items]

    def _take(self) -> list[tuple[In, asyncio.Future[Out]]]:
        batch: list[tuple[In, asyncio.Future[Out]]] = []
        rows = 0
        while self._queue:
            item, future = self._queue[0]
            if future.done():  # its caller went away (client disconnected)
                self._queue.popleft()
                continue
            n = len(item)
            if batch and rows + n > self._max_rows:
                break
            batch.append(self._queue.popleft())
            rows += n
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                items = [item for item, _ in batch]
                self._running = batch
                try:
                    results: list[Any] = await self._call(loop, items)
                except Exception as err:  # noqa: BLE001 - handed to every waiting request
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                finally:
                    self._running = []
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)

    async def _call(self, loop: asyncio.AbstractEventLoop, items: list[In]) -> list[Out]:
        """Run one batch inline or in the executor (see ``inline_below_s``); time it."""
        inline = self.batch_seconds is not None and self.batch_seconds < self._inline_below_s
        started = time.perf_counter()
        if inline:
            results = self._run_batch(items)
        else:
            results = await loop.run_in_executor(self._executor, self._run_batch, items)
        took = time.perf_counter() - started
        self.batch_seconds = took if self.batch_seconds is None else (
            self._ALPHA * took + (1 - self._ALPHA) * self.batch_seconds)
        return results

    async def close(self) -> None:
        """Stop the worker; queued and running items get ``CancelledError``.

        The service calls this after the server has drained its requests, so normally
        nothing is waiting any more.
        """
        for _, future in self._running:
            future.cancel()
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        while self._queue:
            _, future = self._queue.popleft()
            future.cancel()
