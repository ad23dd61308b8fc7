"""A fix for the stall after bursts: BentoML's request-timeout timers outlived their requests.

BentoML 1.4's ``TimeoutMiddleware`` (``bentoml._internal.server.http.traffic``; on for every
service, ``traffic.timeout`` cannot be switched off) schedules
``loop.call_later(timeout, ...)`` for every request and never cancels it. Each timer handle
keeps the request's ``contextvars`` context alive, and with it the request's finished
OpenTelemetry span (about 20 objects), for the whole timeout: 60 s here. A burst of 20 s at
~900 req/s therefore left ~1M extra objects for the garbage collector to walk; every full
collection then paused the event loop for 100-230 ms (measured with ``gc.callbacks`` in the
worker: tracked objects grew 16k -> 200k in a short run, none collectable), which showed up
as a p99 of 200-600 ms on every route, 4xx answers included, for a minute after the burst.

:func:`install` replaces the middleware's ``__call__`` with the same logic plus a
``cancel()`` of the timer once the request is answered (asyncio drops cancelled handles
from its heap in bulk, so they no longer pile up). It is called by the service's
``__init__`` (not on import) and is idempotent; the timeout's behaviour (504 after
``traffic.timeout`` seconds without a response) is unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

_MARK = "_slipway_cancels_timer"


async def _call(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``TimeoutMiddleware.__call__`` (BentoML 1.4.39) with the timer cancelled when done."""
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    from starlette.responses import JSONResponse

    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)
            timer.cancel()
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            resp = JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"},
                status_code=504,
            )
            await resp(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


def install() -> bool:
    """Patch BentoML's ``TimeoutMiddleware`` (see the module docstring).

    Returns:
        True when the class is patched (now or before), False when BentoML has no such
        class (a version that moved it: nothing to fix, or a fix to redo).
    """
    try:
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
    except ImportError:
        return False
    if not getattr(TimeoutMiddleware, _MARK, False):
        TimeoutMiddleware.__call__ = _call
        setattr(TimeoutMiddleware, _MARK, True)
    return True
