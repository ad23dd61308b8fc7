"""The adaptive micro-batcher (serving/batching.py) with a real thread executor, and the
runtime's chunking of large requests through it (serving/runtime.py)."""

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


def test_cheap_batches_run_on_the_loop_and_expensive_ones_in_the_thread():
    """The first batch goes to the thread (its cost is unknown); once the moving average of
    batch times is under ``inline_below_s`` batches run on the event loop's own thread, and
    a model that becomes slow moves back to the executor."""

    async def main(model, inline_below_s):
        loop_thread = threading.current_thread().name
        with ThreadPoolExecutor(1, thread_name_prefix="infer") as pool:
            batcher = MicroBatcher(model, pool, max_rows=100, inline_below_s=inline_below_s)
            names = []
            for i in range(6):
                model.thread_names.clear()
                assert await batcher.submit([i]) == [i * 10]
                names.append(model.thread_names.pop())
            await batcher.close()
            return loop_thread, names, batcher.batch_seconds

    cheap = Recorder(seconds=0.0)
    loop_thread, names, average = run(main(cheap, inline_below_s=0.05))
    assert names[0] == "infer_0" and set(names[1:]) == {loop_thread}
    assert average < 0.05

    slow = Recorder(seconds=0.02)
    _, names, average = run(main(slow, inline_below_s=0.005))
    assert set(names) == {"infer_0"} and average >= 0.005

    never = Recorder(seconds=0.0)
    _, names, _ = run(main(never, inline_below_s=0.0))
    assert set(names) == {"infer_0"}

    class Slowing(Recorder):  # cheap for three calls, then 50 ms a call
        def __call__(self, items):
            self.seconds = 0.0 if len(self.calls) < 3 else 0.05
            return super().__call__(items)

    loop_thread, names, _ = run(main(Slowing(), inline_below_s=0.005))
    # thread (unknown cost), loop, loop, loop (the first slow call), then the thread again
    assert names == ["infer_0", loop_thread, loop_thread, loop_thread, "infer_0", "infer_0"]


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


class Gated(Recorder):
    """A Recorder whose first call waits until the test opens ``gate``, so the test knows
    what is queued while it runs."""

    def __init__(self) -> None:
        super().__init__(seconds=0.0)
        self.gate = threading.Event()

    def __call__(self, items):
        out = super().__call__(items)
        if len(self.calls) == 1:
            assert self.gate.wait(10), "the test never opened the gate"
        return out


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def test_a_small_request_goes_between_the_chunks_of_a_large_one():
    model = Gated()
    done: list[str] = []

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(model, pool, max_rows=2)
            large = asyncio.ensure_future(batcher.submit_each([[1, 2], [3, 4], [5, 6]]))
            large.add_done_callback(lambda _: done.append("large"))
            await until(lambda: model.calls)  # the first chunk is in the model
            small = asyncio.ensure_future(batcher.submit([9]))
            small.add_done_callback(lambda _: done.append("small"))
            await asyncio.sleep(0.01)  # queued behind the running chunk
            model.gate.set()
            results = await large, await small
            await batcher.close()
            return results

    large, small = run(main())
    assert large == [[10, 20], [30, 40], [50, 60]] and small == [90]
    assert model.calls == [[[1, 2]], [[9]], [[3, 4]], [[5, 6]]]
    assert done == ["small", "large"]


def test_runtime_cuts_a_large_request_into_chunks_that_let_a_small_one_through(bc_model):
    from prometheus_client import CollectorRegistry

    from serving.metrics import ServingMetrics
    from serving.runtime import ModelRuntime
    from serving.settings import Settings

    runtime = ModelRuntime(Settings(model=bc_model.tag, max_batch_rows=10),
                           ServingMetrics(CollectorRegistry()))
    runtime.load()
    assert runtime.ready, runtime.error
    loaded = runtime.model
    predict, sizes = loaded.predict, []
    gate = threading.Event()

    def gated_predict(rows):  # the real model, held on its first call until the test says
        sizes.append(len(rows))
        if len(sizes) == 1:
            assert gate.wait(10), "the test never opened the gate"
        return predict(rows)

    loaded.predict = gated_predict
    rows = bc_model.instances(35)
    large_rows = runtime.schema.from_json({"instances": rows})
    small_rows = runtime.schema.from_json({"instances": rows[:1]})

    async def main():
        large = asyncio.ensure_future(runtime.predict(large_rows))
        await until(lambda: sizes)
        small = asyncio.ensure_future(runtime.predict(small_rows))
        await asyncio.sleep(0.01)
        gate.set()
        small_answer = await small
        assert not large.done()  # the small request did not wait for the whole large one
        answers = await large, small_answer
        await runtime.close()
        return answers

    large, small = run(main())
    assert sizes == [10, 1, 10, 10, 5]
    assert loaded.labels(large.outputs) == bc_model.expected_labels[:35]
    assert loaded.labels(small.outputs) == bc_model.expected_labels[:1]
