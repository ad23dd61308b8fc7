"""A small closed-loop HTTP/1.1 load generator for the serving benchmark.

Each of ``concurrency`` connections sends one request, waits for the whole answer, and
sends the next (keep-alive), until ``max_requests`` answers or ``max_seconds`` pass. It
speaks raw HTTP over asyncio streams instead of using an HTTP client library: on a 2-core
machine the load generator shares the CPU with the server, and httpx or aiohttp would
spend more time per request than the servers being measured (a few tens of microseconds
here). Only 127.0.0.1 targets are accepted: this is a benchmark tool, not a load tester.

    from benchmarks.serving_load import run_load
    result = run_load("127.0.0.1", 3000, "/predict", body, concurrency=8)
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass
class LoadResult:
    """What one load run measured."""

    concurrency: int
    rows_per_request: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    statuses: Counter = field(default_factory=Counter)
    errors: int = 0  # connection-level failures

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def req_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.req_per_s * self.rows_per_request

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0] * 1e3
        return statistics.quantiles(self.latencies, n=1000, method="inclusive")[
            min(998, max(0, round(q * 1000) - 1))
        ] * 1e3

    @property
    def rejected(self) -> int:
        return sum(n for code, n in self.statuses.items() if code != 200)


def build_request(host: str, port: int, path: str, body: bytes,
                  content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; returns its status and whether the server keeps the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    chunked = False
    keep = True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            keep = False
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        keep = False
    return status, keep


async def _worker(host: str, port: int, request: bytes, result: LoadResult,
                  deadline: float, budget: list[int]) -> None:
    reader = writer = None
    while budget[0] > 0 and time.perf_counter() < deadline:
        budget[0] -= 1
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            started = time.perf_counter()
            writer.write(request)
            status, keep = await _read_response(reader)
            elapsed = time.perf_counter() - started
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        result.statuses[status] += 1
        if status == 200:
            result.latencies.append(elapsed)
        if not keep:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def run_load_async(host: str, port: int, path: str, body: bytes, *, concurrency: int,
                         rows_per_request: int = 1, max_requests: int = 5000,
                         max_seconds: float = 5.0, warmup_requests: int = 50,
                         content_type: str = "application/json",
                         headers: dict[str, str] | None = None) -> LoadResult:
    """Drive ``path`` with ``concurrency`` keep-alive connections; see :func:`run_load`."""
    if host not in LOCAL_HOSTS:
        raise ValueError(f"refusing to load-test {host}: only 127.0.0.1 is allowed")
    request = build_request(host, port, path, body, content_type, headers)
    if warmup_requests:
        warm = LoadResult(concurrency, rows_per_request)
        budget = [warmup_requests]
        deadline = time.perf_counter() + max_seconds
        await asyncio.gather(*(_worker(host, port, request, warm, deadline, budget)
                               for _ in range(min(concurrency, warmup_requests))))
    result = LoadResult(concurrency, rows_per_request)
    budget = [max_requests]
    started = time.perf_counter()
    deadline = started + max_seconds
    await asyncio.gather(*(_worker(host, port, request, result, deadline, budget)
                           for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def run_load(host: str, port: int, path: str, body: bytes, *, concurrency: int,
             rows_per_request: int = 1, max_requests: int = 5000, max_seconds: float = 5.0,
             warmup_requests: int = 50, content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> LoadResult:
    """Closed-loop load: bounded by ``max_requests`` and by ``max_seconds``.

    Args:
        host, port, path: the target (127.0.0.1 only).
        body: the request body sent every time.
        concurrency: connections, each with one request in flight.
        rows_per_request: rows in ``body`` (for rows/s).
        max_requests: stop after this many requests in all.
        max_seconds: stop after this long.
        warmup_requests: sent (and not counted) first.
    """
    return asyncio.run(run_load_async(
        host, port, path, body, concurrency=concurrency, rows_per_request=rows_per_request,
        max_requests=max_requests, max_seconds=max_seconds, warmup_requests=warmup_requests,
        content_type=content_type, headers=headers,
    ))
