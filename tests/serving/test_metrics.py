"""serving/metrics.py on a fresh CollectorRegistry per test (no global state shared)."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from serving.metrics import CONFIDENCE_BUCKETS, ServingMetrics, observe_many

LINEAGE = {"version": "abc123", "framework": "sklearn", "estimator": "random_forest",
           "dataset": {"name": "iris", "md5": "d41d8cd9"}, "code": {"commit": "c0ffee"}}


@pytest.fixture
def metrics() -> ServingMetrics:
    return ServingMetrics(CollectorRegistry())


def value(m: ServingMetrics, name: str, **labels) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_names_follow_prometheus_conventions(metrics):
    text = generate_latest(metrics.registry).decode()
    for name in ("slipway_predictions_total", "slipway_invalid_requests_total",
                 "slipway_rejected_requests_total", "slipway_inference_duration_seconds_bucket",
                 "slipway_model_ready", "slipway_batch_rows_bucket"):
        assert name in text
    # Every invalid-request reason is exported from the start, so rate() has a baseline.
    assert value(metrics, "slipway_invalid_requests_total", reason="missing_feature") == 0.0


def test_predictions_are_counted_by_version_and_class(metrics):
    outputs = np.array([0, 2, 2, 1, 2])
    proba = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3],
                      [0.0, 0.0, 1.0]])
    metrics.record_batch("iris-classification", "abc123", ["setosa", "versicolor", "virginica"],
                         outputs, proba, 0.004)
    labels = {"model_name": "iris-classification", "model_version": "abc123"}
    assert value(metrics, "slipway_predictions_total", **labels, **{"class": "virginica"}) == 3
    assert value(metrics, "slipway_predictions_total", **labels, **{"class": "setosa"}) == 1
    assert value(metrics, "slipway_prediction_confidence_count", **labels) == 5
    assert value(metrics, "slipway_prediction_confidence_bucket", **labels, le="0.5") == 1
    assert value(metrics, "slipway_prediction_confidence_sum", **labels) == pytest.approx(
        0.9 + 0.8 + 0.6 + 0.4 + 1.0)
    assert value(metrics, "slipway_batch_rows_count") == 1
    assert value(metrics, "slipway_inference_duration_seconds_sum") == pytest.approx(0.004)


def test_observe_many_equals_observing_one_by_one():
    values = np.random.default_rng(0).uniform(0, 1.2, 500)
    values[:5] = [0.1, 0.2, 1.0, 0.95, 0.0]  # exactly on bucket bounds
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "h", buckets=CONFIDENCE_BUCKETS, registry=one)
    h2 = Histogram("h", "h", buckets=CONFIDENCE_BUCKETS, registry=many)
    for v in values:
        h1.observe(float(v))
    observe_many(h2, values)
    for bound in (*CONFIDENCE_BUCKETS, float("inf")):
        le = "+Inf" if bound == float("inf") else str(bound)
        assert one.get_sample_value("h_bucket", {"le": le}) == many.get_sample_value(
            "h_bucket", {"le": le})
    assert one.get_sample_value("h_count") == many.get_sample_value("h_count") == 500
    assert one.get_sample_value("h_sum") == pytest.approx(many.get_sample_value("h_sum"))


def test_invalid_and_rejected_requests_by_reason(metrics):
    metrics.record_invalid("unknown_feature")
    metrics.record_invalid("unknown_feature")
    metrics.record_rejected("overloaded")
    assert value(metrics, "slipway_invalid_requests_total", reason="unknown_feature") == 2
    assert value(metrics, "slipway_rejected_requests_total", reason="overloaded") == 1


def test_model_info_carries_version_and_dataset_hash(metrics):
    assert value(metrics, "slipway_model_ready") == 0
    metrics.model_loaded("iris-classification", LINEAGE)
    assert value(metrics, "slipway_model_info", model_name="iris-classification",
                 model_version="abc123", dataset="iris", dataset_md5="d41d8cd9",
                 framework="sklearn", estimator="random_forest", commit="c0ffee") == 1
    assert value(metrics, "slipway_model_ready") == 1
    metrics.model_failed()
    assert value(metrics, "slipway_model_ready") == 0


def test_drift_gauges_per_feature(metrics):
    metrics.record_drift("m", "v1", {"width": 0.02, "height": 0.4}, rows=250)
    assert value(metrics, "slipway_input_drift_psi", model_name="m", model_version="v1",
                 feature="height") == pytest.approx(0.4)
    assert value(metrics, "slipway_input_drift_window_rows", model_name="m",
                 model_version="v1") == 250


def test_regression_batches_count_rows_but_no_classes(metrics):
    metrics.record_batch("mpg", "v1", None, np.array([1.5, 2.5]), None, 0.001)
    assert value(metrics, "slipway_batch_rows_sum") == 2
    assert "class=" not in generate_latest(metrics.registry).decode().split(
        "slipway_predictions_total")[-1].split("\n# ")[0]
