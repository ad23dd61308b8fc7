"""ASGI middleware in front of every route: authentication and bounded concurrency.

Added to the BentoML service with ``add_asgi_middleware``, so it runs inside BentoML's own
middlewares (its request metrics count the 401s and 503s it sends) and before any route,
including BentoML's. Probes (``/livez``, ``/healthz``, ``/readyz``, ``/v2/health/live``,
``/v2/health/ready``) and ``/metrics`` are always open, so Kubernetes and Prometheus need no token.

* Authentication (when a token is configured): any other path needs
  ``Authorization: Bearer <token>``, else 401 with ``WWW-Authenticate``.
* Concurrency: at most ``SLIPWAY_MAX_CONCURRENCY`` prediction requests are in flight per
  worker, counted from the moment their headers arrive; the next one gets 503 with
  ``Retry-After`` straight away, without its body being read. A queue that is not allowed to
  grow keeps latency bounded, and the client (or a load balancer) retries elsewhere or later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics", "/v2/health/live",
                        "/v2/health/ready"})
LIMITED_PATHS = frozenset({"/predict"})


def _limited(path: str) -> bool:
    """Prediction routes: ``/predict`` and the v2 ``.../infer`` routes."""
    return path in LIMITED_PATHS or (path.startswith("/v2/models/") and path.endswith("/infer"))


def current_runtime() -> Any:
    """The serving runtime of the running BentoML service instance, or None before it exists."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        service = bentoml.get_current_service()
    except BentoMLException:
        return None
    return getattr(service, "runtime", None)


async def send_json(send: Any, status: int, body: dict[str, Any],
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = orjson.dumps(body)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": payload})


def _closing(send: Any) -> Any:
    """``send`` with ``Connection: close`` added to the response head (uvicorn then closes
    the connection after the answer, and the client opens a new one elsewhere)."""

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers") or () if h[0].lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return wrapped


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value
    return None


class Guard:
    """Authentication and the concurrency limit (see the module docstring)."""

    def __init__(self, app: Any, runtime: Callable[[], Any] = current_runtime) -> None:
        self.app = app
        self.runtime = runtime  # where the settings, auth and metrics live
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        runtime = self.runtime()
        if runtime is not None and getattr(runtime, "draining", False):
            send = _closing(send)  # shutting down: every answer closes its connection
        if scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if runtime is None or runtime.settings is None:
            # No instance yet, or settings that could not be read: auth cannot be known, so
            # nothing is served (fail closed).
            await send_json(send, 503, {"error": "the service is not configured: "
                                        + (getattr(runtime, "error", None) or "starting"),
                                        "reason": "not_ready"},
                            [(b"retry-after", b"5")])
            return
        if runtime.auth is not None and not runtime.auth.check(_header(scope, b"authorization")):
            runtime.metrics.record_invalid("unauthorized")
            await send_json(
                send, 401,
                {"error": "missing or invalid bearer token: send the header "
                          "'Authorization: Bearer <token>'", "reason": "unauthorized"},
                [(b"www-authenticate", b'Bearer realm="slipway"')],
            )
            return
        if not _limited(scope["path"]):
            await self.app(scope, receive, send)
            return
        limit = runtime.settings.max_concurrency
        if self.in_flight >= limit:
            runtime.metrics.record_rejected("overloaded")
            await send_json(
                send, 503,
                {"error": f"overloaded: {limit} requests already in flight on this worker; "
                          "retry after the time in Retry-After", "reason": "overloaded"},
                [(b"retry-after", str(runtime.settings.retry_after_s).encode())],
            )
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
