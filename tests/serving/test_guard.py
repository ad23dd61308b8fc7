"""The guard middleware (auth and the concurrency limit) on a real ASGI call chain.

The inner app holds requests open until released, so "in flight" is exact; the real-server
version of the overload test is in test_server.py.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from serving.auth import BearerAuth
from serving.guard import Guard
from serving.metrics import ServingMetrics
from serving.settings import Settings


def make_runtime(**settings) -> SimpleNamespace:
    s = Settings(**settings)
    return SimpleNamespace(settings=s, auth=BearerAuth(s.api_token) if s.auth_enabled else None,
                           metrics=ServingMetrics(CollectorRegistry()), error=None)


async def call(app, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "POST",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
            json.loads(body) if body else {})


class Held:
    """An inner app that answers 200 once released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope, receive, send):
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def test_past_the_limit_requests_get_503_with_retry_after_at_once():
    runtime = make_runtime(max_concurrency=2, retry_after_s=3)

    async def main():
        inner = Held()
        guard = Guard(inner, runtime=lambda: runtime)
        held = [asyncio.create_task(call(guard, "/predict")) for _ in range(2)]
        await asyncio.sleep(0.05)
        status, headers, body = await asyncio.wait_for(call(guard, "/predict"), 1.0)
        probe = asyncio.create_task(call(guard, "/readyz"))  # probes are never limited
        await asyncio.sleep(0.05)
        assert inner.entered == 3
        inner.release.set()
        done = await asyncio.gather(*held, probe)
        after = await call(guard, "/predict")
        return status, headers, body, [d[0] for d in done], after[0], guard.in_flight

    status, headers, body, held_status, after, in_flight = asyncio.run(main())
    assert status == 503 and headers["retry-after"] == "3" and body["reason"] == "overloaded"
    assert held_status == [200, 200, 200] and after == 200 and in_flight == 0
    assert runtime.metrics.registry.get_sample_value(
        "slipway_rejected_requests_total", {"reason": "overloaded"}) == 1


def test_auth_checks_every_path_but_probes_and_metrics():
    runtime = make_runtime(api_token="tok")

    async def main():
        inner = Held()
        inner.release.set()
        guard = Guard(inner, runtime=lambda: runtime)
        results = {}
        for path in ("/predict", "/metadata", "/docs.json", "/", "/livez", "/readyz",
                     "/healthz", "/metrics"):
            results[path] = (await call(guard, path))[0]
        results["good"] = (await call(guard, "/predict", {"Authorization": "Bearer tok"}))[0]
        return results

    results = asyncio.run(main())
    assert {p: s for p, s in results.items() if s == 401} == {
        "/predict": 401, "/metadata": 401, "/docs.json": 401, "/": 401}
    assert results["good"] == 200
    assert runtime.metrics.registry.get_sample_value(
        "slipway_invalid_requests_total", {"reason": "unauthorized"}) == 4


def test_no_settings_means_nothing_is_served():
    broken = SimpleNamespace(settings=None, error="invalid service settings: X")

    async def main():
        guard = Guard(Held(), runtime=lambda: broken)
        return await call(guard, "/predict"), await call(Guard(Held(), runtime=lambda: None),
                                                          "/metadata")

    (status, _, body), (status2, _, _) = asyncio.run(main())
    assert status == 503 and "invalid service settings" in body["error"]
    assert status2 == 503
