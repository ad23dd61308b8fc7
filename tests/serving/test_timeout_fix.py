"""The stall after bursts (serving/timeout_fix.py): BentoML's real ``TimeoutMiddleware``
must not leave a live timer (holding the request's context) behind each answered request,
and must still answer 504 when the app does not answer in time."""

from __future__ import annotations

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from serving.timeout_fix import install


async def _answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _hang(scope, receive, send):
    await asyncio.sleep(10)


def _live_timers(loop) -> int:
    return sum(1 for h in loop._scheduled if not h.cancelled()
               and getattr(h._callback, "__name__", "") == "_set_timer_out")


async def _drive(app, requests: int, timeout: float = 60.0) -> tuple[int, list]:
    middleware = TimeoutMiddleware(app, timeout=timeout)
    sent: list = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    for _ in range(requests):
        await middleware({"type": "http", "path": "/predict"}, receive, send)
    return _live_timers(asyncio.get_running_loop()), sent


def test_answered_requests_leave_no_live_timer():
    assert install() and install()  # idempotent
    live, sent = asyncio.run(_drive(_answer, 500))
    assert live == 0  # before the fix: 500, each holding its request's context for 60 s
    assert sum(m["type"] == "http.response.start" for m in sent) == 500


def test_the_timeout_still_answers_504():
    install()
    _, sent = asyncio.run(_drive(_hang, 1, timeout=0.05))
    assert sent[0]["status"] == 504
