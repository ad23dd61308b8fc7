"""The adaptive micro-batcher (serving/batching.py) with a real thread executor."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.batching import MicroBatcher


class Recorder:
    """A 'model' that records the batches it is called with and takes a while."""

    def __init__(self, seconds: float = 0.02, fail_on: int | None = None) -> None:
        self.calls: list[list[list[int]]] = []
        self.seconds = seconds
        self.fail_on = fail_on
        self.thread_names: set[str] = set()

    def __call__(self, items: list[list[int]]) -> list[list[int]]:
        self.thread_names.add(threading.current_thread().name)
        self.calls.append(items)
        time.sleep(self.seconds)
        if self.fail_on is not None and any(self.fail_on in item for item in items):
            raise RuntimeError("model failed")
        return [[v * 10 for v in item] for item in items]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_calls_and_get_their_own_results():
    model = Recorder()

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="infer") as pool:
            batcher = MicroBatcher(model, pool, max_rows=100)
            results = await asyncio.gather(*(batcher.submit([i, i + 1]) for i in range(20)))
            await batcher.close()
            return results

    results = run(main())
    assert results == [[i * 10, (i + 1) * 10] for i in range(20)]
    # The first call takes the first request; the rest queue meanwhile and go together.
    assert len(model.calls) < 20
    assert sum(len(c) for c in model.calls) == 20
    assert model.thread_names == {"infer_0"}


def test_a_quiet_service_adds_no_wait():
    model = Recorder(seconds=0.0)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(model, pool, max_rows=100)
            started = time.perf_counter()
            for i in range(5):
                assert await batcher.submit([i]) == [i * 10]
            await batcher.close()
            return time.perf_counter() - started

    assert run(main()) < 1.0
    assert [len(c) for c in model.calls] == [1, 1, 1, 1, 1]


def test_batches_respect_max_rows_but_take_an_oversized_item_alone():
    model = Recorder()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(model, pool, max_rows=5)
            await asyncio.gather(batcher.submit([0]), *(batcher.submit([1, 2]) for _ in range(6)),
                                 batcher.submit(list(range(9))))
            await batcher.close()

    run(main())
    for call in model.calls:
        rows = sum(len(item) for item in call)
        assert rows <= 5 or len(call) == 1


def test_a_failing_batch_fails_its_requests_only():
    model = Recorder(fail_on=13)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(model, pool, max_rows=1)
            out = await asyncio.gather(batcher.submit([1]), batcher.submit([13]),
                                       batcher.submit([2]), return_exceptions=True)
            await batcher.close()
            return out

    ok1, failed, ok2 = run(main())
    assert ok1 == [10] and ok2 == [20]
    assert isinstance(failed, RuntimeError)


def test_a_cancelled_request_is_dropped_from_the_queue():
    model = Recorder(seconds=0.05)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(model, pool, max_rows=100)
            first = asyncio.ensure_future(batcher.submit([1]))
            await asyncio.sleep(0.01)  # the first call is running
            gone = asyncio.ensure_future(batcher.submit([2]))
            await asyncio.sleep(0)
            gone.cancel()
            kept = await batcher.submit([3])
            assert await first == [10]
            await batcher.close()
            return kept, gone

    kept, gone = run(main())
    assert kept == [30] and gone.cancelled()
    assert [2] not in [item for call in model.calls for item in call]


@pytest.mark.parametrize("n", [1, 7])
def test_close_cancels_waiting_requests(n):
    model = Recorder(seconds=0.1)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(model, pool, max_rows=1)
            tasks = [asyncio.ensure_future(batcher.submit([i])) for i in range(n + 1)]
            await asyncio.sleep(0.02)
            await batcher.close()
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(main())
    assert any(isinstance(r, asyncio.CancelledError) for r in results[1:])
