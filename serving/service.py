"""The BentoML inference service for Slipway's packaged model versions.

    bentoml serve serving.service:Slipway --host 127.0.0.1 --port 3000   # or: make serve

Serves one model version from the BentoML model store (``SLIPWAY_MODEL``; the newest
Slipway model when unset; see ``serving/model.py``) with its packaged preprocessing:

* ``POST /predict``  - KServe v1 JSON (``{"instances": [...]}`` or columnar ``{"inputs":
  {...}}``) or a binary ``.npy`` / Arrow body; answers ``{"predictions", "probabilities",
  "model_version"}`` (or Arrow). Requests are validated against the model's input schema,
  then adaptively batched (``serving/batching.py``).
* ``GET /metadata``  - version, framework, input schema, classes, test metrics, lineage.
* ``/livez``, ``/readyz``, ``/metrics`` - BentoML's probes and Prometheus endpoint;
  ready only once the model's files have matched their packaging hashes and loaded.

The routes are a Starlette app mounted with ``@bentoml.asgi_app`` (they parse their own
bodies: size caps, content types, field-level errors); authentication and the concurrency
limit are ASGI middleware (``serving/guard.py``). Settings: ``serving/settings.py``.

Importing this module reads the environment but touches no file: the model is resolved
and loaded when BentoML creates the service instance, in a background thread.
"""

from __future__ import annotations

import logging

import bentoml

from serving import drain
from serving.api import build_app
from serving.guard import Guard
from serving.model import pinned_model
from serving.runtime import ModelRuntime
from serving.timeout_fix import install as install_timeout_fix


@bentoml.service(
    name="slipway",
    workers=1,
    # 60 s covers the largest binary batch the default limits allow on one CPU.
    traffic={"timeout": 60},
    # A log line per request cost 8-25% of single-row throughput here (measured on a bare
    # route), and the same facts are in the request metrics. Turn it back on with
    # BENTOML_CONFIG_OPTIONS='services.slipway.logging.access.enabled=true'.
    logging={"access": {"enabled": False}},
)
@bentoml.asgi_app(build_app(), path="/")
class Slipway:
    """Serve one verified model version (see the module docstring)."""

    model_ref = pinned_model()

    def __init__(self) -> None:
        slipway_logger = logging.getLogger("slipway")
        if slipway_logger.level == logging.NOTSET:
            # BentoML's server logging keeps the root at WARNING; the load / not-ready lines
            # below are INFO and ERROR and must reach the worker's log.
            slipway_logger.setLevel(logging.INFO)
        # BentoML's per-request timeout timers kept every finished request alive for the
        # whole timeout, and the garbage collector's pauses grew with them: the stall after
        # bursts (serving/timeout_fix.py).
        install_timeout_fix()
        self.runtime = ModelRuntime.from_env()
        self.runtime.start()
        if self.runtime.settings is not None:
            # SIGTERM: answer every request on open connections (Connection: close), refuse
            # new ones, then let uvicorn stop (serving/drain.py).
            drain.install(self.runtime, self.runtime.settings.drain_timeout_s)

    async def __is_ready__(self) -> bool:
        return self.runtime.ready and not self.runtime.draining

    @bentoml.on_shutdown
    async def _shutdown(self) -> None:
        # Runs after the drain (serving/drain.py) and uvicorn's own wait for in-flight
        # requests, so nothing is cut off.
        await self.runtime.close()


Slipway.add_asgi_middleware(Guard)
