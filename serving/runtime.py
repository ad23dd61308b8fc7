"""The serving state of one worker: settings, the verified model, batching, metrics, drift.

:class:`ModelRuntime` is created by the BentoML service's ``__init__`` and loads the model
version in a background thread, so the worker answers ``/livez`` at once and ``/readyz``
only once the files are verified and loaded. A failure (no such model, a missing or
tampered file, invalid settings) leaves it in the ``failed`` state: not ready, every
prediction refused with 503, and one log line that says what is wrong and how to fix it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from components.errors import SlipwayError
from serving.auth import BearerAuth
from serving.batching import MicroBatcher
from serving.drift import DriftMonitor
from serving.metrics import ServingMetrics, default_metrics
from serving.model import LoadedModel, Prediction
from serving.schema import InputSchema, RawRows
from serving.settings import Settings

logger = logging.getLogger("slipway.serving")

LOADING, READY, FAILED = "loading", "ready", "failed"
DRIFT_PUBLISH_INTERVAL_S = 1.0  # drift gauges change slowly; no need to rewrite them per batch


class ModelRuntime:
    """Load one model version and serve predictions from it.

    Args:
        settings: validated settings, or ``None`` when they were invalid (``error`` says why).
        metrics: where to record (the process default when omitted).
        error: why the settings could not be read.
    """

    def __init__(self, settings: Settings | None, metrics: ServingMetrics | None = None,
                 error: str | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or default_metrics()
        self.state = FAILED if settings is None else LOADING
        self.error = error
        self.model: LoadedModel | None = None
        self.schema: InputSchema | None = None
        self.drift: DriftMonitor | None = None
        self.auth = BearerAuth(settings.api_token, settings.api_token_file) \
            if settings is not None and settings.auth_enabled else None
        self._executor: ThreadPoolExecutor | None = None
        self._batcher: MicroBatcher[RawRows, Prediction] | None = None
        self._loader: threading.Thread | None = None
        self._drift_published = 0.0
        self.draining = False  # set on SIGTERM (serving/drain.py): answers close connections

    @classmethod
    def from_env(cls, metrics: ServingMetrics | None = None) -> ModelRuntime:
        try:
            return cls(Settings.from_env(), metrics)
        except SlipwayError as err:
            logger.error("slipway: not serving: %s", err)
            return cls(None, metrics, error=str(err))

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state == READY and (self.auth is None or self.auth.usable())

    def start(self) -> None:
        """Load the model in a background thread (no-op when the settings were invalid)."""
        if self.settings is None or self._loader is not None:
            return
        self._loader = threading.Thread(target=self.load, name="slipway-model-load",
                                        daemon=True)
        self._loader.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.state != LOADING

    def load(self) -> None:
        """Resolve, verify and load the model version; never raises (see ``state``)."""
        assert self.settings is not None
        settings = self.settings
        started = time.perf_counter()
        try:
            model = LoadedModel.from_store(settings.model)
            schema = model.input_schema(settings.max_instances, settings.range_margin)
            drift = DriftMonitor(model.schema["features"], settings.drift_window)
        except SlipwayError as err:
            self._fail(str(err))
            return
        except Exception as err:  # noqa: BLE001 - e.g. an unreadable skops file: stay up, not ready
            logger.exception("slipway: loading the model failed")
            self._fail(f"{type(err).__name__}: {err}")
            return
        self.model, self.schema, self.drift = model, schema, drift
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slipway-infer")
        self._batcher = MicroBatcher(self._run_batch, self._executor, settings.max_batch_rows,
                                     inline_below_s=settings.inline_below_ms / 1000)
        self.metrics.model_loaded(model.name, model.lineage)
        # Everything loaded so far (BentoML, pandas, scikit-learn, the model: ~350k objects)
        # lives as long as the worker. A full collection walks all of it, about 140 ms on
        # these machines, and under load that pause landed in p99 latency; frozen objects are
        # skipped by the collector.
        gc.collect()
        gc.freeze()
        self.state = READY
        logger.info("slipway: serving %s (%s/%s, dataset %s md5 %s), files verified, loaded "
                    "in %.1f s", model.tag, model.lineage.get("framework"),
                    model.lineage.get("estimator"), model.lineage["dataset"].get("name"),
                    model.lineage["dataset"].get("md5"), time.perf_counter() - started)

    def _fail(self, reason: str) -> None:
        self.error = reason
        self.state = FAILED
        self.metrics.model_failed()
        logger.error("slipway: not ready, serving nothing: %s", reason)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # ---- predictions ---------------------------------------------------------------------

    async def predict(self, rows: RawRows) -> Prediction:
        """Predict through the adaptive batcher; large requests go as ``max_batch_rows``
        chunks, one after another, so small requests queued meanwhile go between them
        instead of waiting for the whole large request."""
        assert self._batcher is not None and self.settings is not None
        step = self.settings.max_batch_rows
        if len(rows) <= step:
            return await self._batcher.submit(rows)
        parts = await self._batcher.submit_each(rows.slice(i, i + step)
                                                for i in range(0, len(rows), step))
        return Prediction.concat(parts)

    def _run_batch(self, parts: list[RawRows]) -> list[Prediction]:
        """One model call for several requests (in the inference thread, or inline when
        calls are cheap: ``SLIPWAY_INLINE_BELOW_MS``)."""
        assert self.model is not None and self.drift is not None
        model = self.model
        rows = RawRows.concat(parts)
        started = time.perf_counter()
        prediction = model.predict(rows)
        elapsed = time.perf_counter() - started
        self.metrics.record_batch(model.name, model.version, model.classes,
                                  prediction.outputs, prediction.proba, elapsed)
        self.drift.add(self.drift.bins_of(rows.numeric, rows.categorical))
        now = time.monotonic()
        if now - self._drift_published >= DRIFT_PUBLISH_INTERVAL_S:
            self._drift_published = now
            self.metrics.record_drift(model.name, model.version, self.drift.psi(),
                                      self.drift.rows)
        out, start = [], 0
        for part in parts:
            out.append(prediction.slice(start, start + len(part)))
            start += len(part)
        return out

    def metadata(self) -> dict[str, Any]:
        """``GET /metadata``: the model, its input contract, classes, metrics and lineage."""
        assert self.model is not None and self.schema is not None and self.settings is not None
        s = self.settings
        return {
            **self.model.describe(),
            "input_schema": self.schema.describe(),
            "request_formats": {
                "json_rows": '{"instances": [{"<feature>": <value>, ...}, ...]} or '
                             '{"instances": [[<value>, ...], ...]} (schema order)',
                "json_columns": '{"inputs": {"<feature>": [<value>, ...], ...}}',
                "binary": ["application/x-npy (numeric features only, schema order)",
                           "application/vnd.apache.arrow.stream",
                           "application/vnd.apache.arrow.file"],
                "arrow_answer": "send Accept: application/vnd.apache.arrow.stream",
                "v2": f"POST /v2/models/{self.model.name}/infer (Open Inference Protocol v2: "
                      "one tensor per feature, or one [N, F] tensor for numeric-only "
                      f"models; see GET /v2/models/{self.model.name})",
            },
            "limits": {
                "max_instances": s.max_instances, "max_body_bytes": s.max_body_bytes,
                "max_binary_rows": s.max_binary_rows,
                "max_binary_body_bytes": s.max_binary_body_bytes,
                "max_concurrency": s.max_concurrency, "max_drain_bytes": s.max_drain_bytes,
            },
        }
