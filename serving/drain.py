"""Shutdown without losing a request: drain keep-alive connections before uvicorn stops.

Under ``bentoml serve`` a worker runs uvicorn, which on SIGTERM closes every keep-alive
connection that is idle at that instant. A client that had just written its next request
on such a connection (in flight, or in the socket buffer) gets no answer: 16 of them in a
run with 8 keep-alive connections under load. And the listening socket is shared with
BentoML's arbiter process, which keeps it open after the worker closes its copy, so
connections opened meanwhile are accepted by the kernel and never served.

:func:`install` wraps uvicorn's SIGTERM handler in the worker. On SIGTERM:

1. the runtime turns ``draining`` (``/readyz`` and ``/v2/health/ready`` answer 503, and the
   guard adds ``Connection: close`` to every answer);
2. the listening socket is shut down (for the arbiter's copy too: it is one socket), so new
   connections are refused: they never reached the server and the client can retry
   elsewhere;
3. every request on an open connection is answered, with ``Connection: close``; once no
   connection is left (or after ``SLIPWAY_DRAIN_TIMEOUT_S``, for clients that keep an idle
   connection open without sending), uvicorn's own shutdown runs: in-flight requests
   finish, then the lifespan shutdown stops the batcher.

``tests/serving/test_server.py::test_sigterm_under_load_loses_no_request`` counts the
answers. Without a uvicorn server in the signal handler (another server, a test client),
nothing is installed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

logger = logging.getLogger("slipway.serving")

POLL_S = 0.02


def _uvicorn_server(handler: Any) -> Any:
    server = getattr(handler, "__self__", None)
    # (``servers`` is set only after the lifespan startup, during which this runs.)
    if server is None or not hasattr(server, "server_state"):
        return None
    return server


def _stop_listening(server: Any) -> None:
    """Stop accepting, and shut the listening socket down so that the kernel refuses new
    connections instead of queueing them for nobody."""
    fds = []
    for srv in getattr(server, "servers", None) or ():
        for sock in srv.sockets or ():
            try:
                fds.append(os.dup(sock.fileno()))
            except OSError:
                pass
        srv.close()
    for fd in fds:
        sock = socket.socket(fileno=fd)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()


async def _drain(server: Any, runtime: Any, original: Any, sig: int, frame: Any,
                 timeout: float) -> None:
    started = time.monotonic()
    _stop_listening(server)
    connections = server.server_state.connections
    logger.info("slipway: SIGTERM: draining %d connection(s) (Connection: close), new "
                "connections refused", len(connections))
    while connections and time.monotonic() - started < timeout:
        await asyncio.sleep(POLL_S)
    if connections:
        logger.info("slipway: %d idle connection(s) left after %.1f s; shutting down",
                    len(connections), timeout)
    original(sig, frame)


def install(runtime: Any, timeout: float) -> bool:
    """Wrap uvicorn's SIGTERM handler (see the module docstring).

    Args:
        runtime: the serving runtime (its ``draining`` flag is set on SIGTERM).
        timeout: the longest wait for clients to close their connections, in seconds.

    Returns:
        Whether the handler was installed (only in the main thread of a uvicorn worker).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    original = signal.getsignal(signal.SIGTERM)
    server = _uvicorn_server(original)
    if server is None:
        logger.info("slipway: no uvicorn SIGTERM handler (%r): shutdown without the drain",
                    original)
        return False
    loop = asyncio.get_running_loop()

    def on_sigterm(sig: int, frame: Any) -> None:
        if runtime.draining:  # a second SIGTERM: stop now, as uvicorn would
            original(sig, frame)
            return
        runtime.draining = True
        loop.call_soon_threadsafe(
            lambda: loop.create_task(_drain(server, runtime, original, sig, frame, timeout)))

    signal.signal(signal.SIGTERM, on_sigterm)
    return True
