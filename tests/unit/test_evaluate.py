"""Evaluate: metrics against hand-computed values, and the offline report files."""

from __future__ import annotations

import base64
import json
import math
import re

import numpy as np
import pytest

from components.evaluate import (
    classification_metrics,
    evaluate,
    regression_metrics,
    write_outputs,
)
from components.io import read_json

PNG = b"\x89PNG\r\n\x1a\n"

# Truth 0 0 0 1 1, predicted 0 1 1 1 1: confusion [[1, 2], [0, 2]].
Y = np.array([0, 0, 0, 1, 1])
PRED = np.array([0, 1, 1, 1, 1])


def test_classification_metrics_by_hand():
    out = classification_metrics(Y, PRED, None, ["neg", "pos"])

    assert out["confusion_matrix"] == [[1, 2], [0, 2]]
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["precision_macro"] == pytest.approx((1 / 1 + 2 / 4) / 2)
    assert out["recall_macro"] == pytest.approx((1 / 3 + 2 / 2) / 2)
    assert out["f1_macro"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert out["per_class_accuracy"] == pytest.approx({"neg": 1 / 3, "pos": 1.0})
    assert out["classes"] == ["neg", "pos"]
    assert "roc" not in out and "roc_auc" not in out


def test_binary_roc_from_probabilities():
    positive = np.array([0.1, 0.4, 0.85, 0.8, 0.9])
    proba = np.column_stack([1 - positive, positive])

    out = classification_metrics(Y, PRED, proba, ["neg", "pos"])

    # Of the 2 x 3 positive-negative pairs, only (0.8, 0.85) is ranked the wrong way round.
    assert out["roc_auc"] == pytest.approx(5 / 6)
    roc = out["roc"]
    assert roc["fpr"][0] == 0.0 and roc["fpr"][-1] == 1.0
    assert roc["tpr"][0] == 0.0 and roc["tpr"][-1] == 1.0
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert all(math.isfinite(t) for t in roc["thresholds"])
    json.dumps(out, allow_nan=False)


def test_multiclass_has_no_roc_and_unseen_class_has_no_accuracy():
    y = np.array([0, 1, 1, 0])
    pred = np.array([0, 1, 0, 2])
    proba = np.full((4, 3), 1 / 3)

    out = classification_metrics(y, pred, proba, ["a", "b", "c"])

    assert "roc" not in out
    assert out["per_class_accuracy"] == {"a": 0.5, "b": 0.5, "c": None}
    assert out["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]
    assert out["accuracy"] == 0.5


def test_regression_metrics_by_hand():
    out = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.5]))

    assert out["mae"] == pytest.approx(1 / 3)
    assert out["rmse"] == pytest.approx(math.sqrt(0.5 / 3))
    assert out["r2"] == pytest.approx(1 - 0.5 / 2)


def test_evaluate_classification_model(built_classification):
    result = evaluate(built_classification.model, built_classification.processed[2])

    assert result["task"] == "classification"
    assert result["rows"] == 8
    assert set(result["metrics"]) == {"accuracy", "precision_macro", "recall_macro", "f1_macro",
                                      "roc_auc"}
    assert result["metrics"]["accuracy"] >= 0.75
    assert result["detail"]["classes"] == ["a", "b"]
    assert np.sum(result["detail"]["confusion_matrix"]) == 8
    assert result["training"]["estimator"] == "logistic_regression"
    assert result["dataset"]["name"] == "tiny-classification"


def test_evaluate_regression_model(built_regression):
    result = built_regression.evaluation

    assert set(result["metrics"]) == {"mae", "rmse", "r2"}
    assert result["metrics"]["r2"] > 0.9
    predictions = result["predictions"]
    assert len(predictions["actual"]) == len(predictions["predicted"]) == result["rows"] == 8
    expected = regression_metrics(np.array(predictions["actual"]),
                                  np.array(predictions["predicted"]))
    assert result["metrics"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("fixture", "plots"),
    [
        ("built_classification", {"confusion_matrix", "per_class_accuracy", "roc"}),
        ("built_regression", {"predicted_vs_actual", "residuals"}),
    ],
)
def test_write_outputs_writes_every_file(request, tmp_path, fixture, plots):
    result = request.getfixturevalue(fixture).evaluation

    paths = write_outputs(result, tmp_path / "reports")

    out = tmp_path / "reports"
    assert sorted(p.name for p in out.iterdir()) == [
        "evaluation.json", "metrics.json", "plots", "report.html", "summary.md",
    ]
    assert {p.stem for p in (out / "plots").iterdir()} == plots
    assert all(p.read_bytes().startswith(PNG) for p in (out / "plots").iterdir())
    assert read_json(paths["metrics"]) == pytest.approx(result["metrics"])
    assert read_json(paths["evaluation"])["metrics"] == pytest.approx(result["metrics"])
    summary = paths["summary"].read_text()
    assert summary.startswith(f"# Evaluation: {result['dataset']['name']}")
    for name, value in result["metrics"].items():
        assert f"| {name} | {value:.4f} |" in summary


def test_html_report_is_self_contained(tmp_path, built_classification):
    paths = write_outputs(built_classification.evaluation, tmp_path)

    page = paths["report"].read_text()
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page
    tags = re.findall(r"<img [^>]*>", page)
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(tags) == len(images) == 3
    embedded = {base64.b64decode(i) for i in images}
    assert embedded == {p.read_bytes() for p in (tmp_path / "plots").iterdir()}
    accuracy = built_classification.evaluation["metrics"]["accuracy"]
    assert f"<tr><th>accuracy</th><td>{accuracy:.4f}</td></tr>" in page
