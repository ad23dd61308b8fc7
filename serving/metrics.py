"""The inference service's own Prometheus metrics, all defined here.

They sit next to BentoML's built-in request metrics (``bentoml_service_request_total``,
``..._request_duration_seconds``, ``..._request_in_progress``) on the same ``/metrics``
endpoint: under ``bentoml serve`` every worker writes to the multiprocess directory BentoML
sets up (``PROMETHEUS_MULTIPROC_DIR``) and BentoML's endpoint aggregates them, which is why
the gauges below name a ``multiprocess_mode``.

* ``slipway_predictions_total{model_name, model_version, class}`` - counter of predictions;
* ``slipway_prediction_confidence{model_name, model_version}`` - histogram of the probability
  given to the predicted class, one observation per row;
* ``slipway_invalid_requests_total{reason}`` - counter of 4xx answers;
* ``slipway_rejected_requests_total{reason}`` - counter of 503s (overloaded, not_ready);
* ``slipway_model_info{model_name, model_version, dataset, dataset_md5, framework, estimator,
  commit}`` - gauge, always 1, for the version being served;
* ``slipway_model_ready`` - gauge, 1 while a verified model is loaded;
* ``slipway_input_drift_psi{model_name, model_version, feature}`` - gauge, PSI of the recent
  window against the training distribution; ``slipway_input_drift_window_rows`` - the rows
  it covers;
* ``slipway_batch_rows`` - histogram of rows per model call (adaptive batching at work);
* ``slipway_inference_duration_seconds`` - histogram of one model call.

Tests build :class:`ServingMetrics` on a fresh ``CollectorRegistry``; the service uses
:func:`default_metrics` (the process-wide registry, created once per process).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BATCH_BUCKETS = tuple(float(2**k) for k in range(14))  # 1 .. 8192 rows
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0, 30.0)
INVALID_REASONS = (
    "malformed_json", "malformed_request", "unsupported_media_type", "body_too_large",
    "too_many_instances",
    "empty", "wrong_type", "wrong_length", "wrong_shape", "missing_key", "unknown_key",
    "missing_feature", "unknown_feature", "duplicate_feature", "non_finite", "out_of_range",
    "unknown_category", "unsupported_format", "unauthorized",
    # Open Inference Protocol v2
    "wrong_datatype", "missing_input", "unknown_input", "unknown_output", "unknown_model",
    "unknown_version",
)


def observe_many(child: Any, values: np.ndarray) -> None:
    """Observe many values in a histogram child with one update per bucket.

    ``Histogram.observe`` costs a lock and a write per value (an mmap write in multiprocess
    mode); a 1000-row batch would pay that 1000 times. This adds each bucket's count at once
    through the child's bucket values, which is what ``observe`` updates one by one.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None:  # a client that changed inside
        for v in values:
            child.observe(float(v))
        return
    # observe() puts a value in the first bucket whose bound is >= it.
    counts = np.bincount(np.searchsorted(np.asarray(bounds, dtype=np.float64), values,
                                         side="left"), minlength=len(bounds))
    total.inc(float(values.sum()))
    for i in np.flatnonzero(counts[: len(bounds)]):
        buckets[i].inc(float(counts[i]))


class ServingMetrics:
    """Every metric of the service, registered in one registry.

    Args:
        registry: where to register (a fresh ``CollectorRegistry`` in tests); ``None``
            means prometheus_client's default registry.
    """

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = REGISTRY if registry is None else registry
        self.registry = registry
        model = ["model_name", "model_version"]
        self.predictions = Counter(
            "slipway_predictions_total", "Predictions served, by predicted class.",
            [*model, "class"], registry=registry)
        self.confidence = Histogram(
            "slipway_prediction_confidence",
            "Probability the model gave its predicted class (one observation per row).",
            model, buckets=CONFIDENCE_BUCKETS, registry=registry)
        self.invalid = Counter(
            "slipway_invalid_requests_total",
            "Requests refused with a 4xx answer, by reason.", ["reason"], registry=registry)
        self.rejected = Counter(
            "slipway_rejected_requests_total",
            "Requests refused with 503 (overloaded: concurrency limit; not_ready: no "
            "verified model).", ["reason"], registry=registry)
        self.model_info = Gauge(
            "slipway_model_info", "The model version being served (value always 1).",
            [*model, "dataset", "dataset_md5", "framework", "estimator", "commit"],
            multiprocess_mode="livemax", registry=registry)
        self.model_ready = Gauge(
            "slipway_model_ready",
            "1 when a model version is loaded and its file hashes verified, else 0.",
            multiprocess_mode="livemin", registry=registry)
        self.drift = Gauge(
            "slipway_input_drift_psi",
            "Population stability index of each input feature over the recent window, "
            "against the training distribution recorded at packaging.",
            [*model, "feature"], multiprocess_mode="livemostrecent", registry=registry)
        self.drift_rows = Gauge(
            "slipway_input_drift_window_rows", "Rows the drift score is computed over.",
            model, multiprocess_mode="livemostrecent", registry=registry)
        self.batch_rows = Histogram(
            "slipway_batch_rows", "Rows per model call (adaptive batching).",
            buckets=BATCH_BUCKETS, registry=registry)
        self.inference_seconds = Histogram(
            "slipway_inference_duration_seconds",
            "Time of one model call: preprocessing and prediction of a batch.",
            buckets=INFERENCE_BUCKETS, registry=registry)
        for reason in INVALID_REASONS:  # export zeros, so rate() works from the first error
            self.invalid.labels(reason=reason)
        for reason in ("overloaded", "not_ready"):
            self.rejected.labels(reason=reason)
        self.model_ready.set(0)

    def model_loaded(self, name: str, lineage: dict[str, Any]) -> None:
        dataset = lineage.get("dataset") or {}
        self.model_info.labels(
            model_name=name, model_version=lineage.get("version", ""),
            dataset=str(dataset.get("name", "")), dataset_md5=str(dataset.get("md5", "")),
            framework=str(lineage.get("framework", "")),
            estimator=str(lineage.get("estimator", "")),
            commit=str((lineage.get("code") or {}).get("commit") or "unknown"),
        ).set(1)
        self.model_ready.set(1)

    def model_failed(self) -> None:
        self.model_ready.set(0)

    def record_batch(self, name: str, version: str, classes: list[str] | None,
                     outputs: np.ndarray, proba: np.ndarray | None, seconds: float) -> None:
        """Count one model call's predictions (per class) and confidences."""
        self.batch_rows.observe(float(outputs.shape[0]))
        self.inference_seconds.observe(seconds)
        if classes is None:
            return
        counts = np.bincount(outputs, minlength=len(classes))
        for k in np.flatnonzero(counts):
            self.predictions.labels(model_name=name, model_version=version,
                                    **{"class": classes[k]}).inc(float(counts[k]))
        if proba is not None:
            observe_many(self.confidence.labels(model_name=name, model_version=version),
                         proba.max(axis=1))

    def record_invalid(self, reason: str) -> None:
        self.invalid.labels(reason=reason).inc()

    def record_rejected(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()

    def record_drift(self, name: str, version: str, scores: dict[str, float],
                     rows: int) -> None:
        for feature, psi in scores.items():
            self.drift.labels(model_name=name, model_version=version, feature=feature).set(psi)
        self.drift_rows.labels(model_name=name, model_version=version).set(rows)


_default: ServingMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> ServingMetrics:
    """The process's metrics on prometheus_client's default registry (made on first use:
    registering the same names twice in one registry is an error)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ServingMetrics()
        return _default
