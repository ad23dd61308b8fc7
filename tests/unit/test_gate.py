"""Gate: threshold, comparison with the packaged model within tolerance, metric direction."""

from __future__ import annotations

import pytest

from components.config import GateParams, GateRule
from components.errors import SlipwayError
from components.gate import decide

RULES = GateParams(
    classification=GateRule(metric="accuracy", threshold=0.8),
    regression=GateRule(metric="mae", threshold=2.0),
    tolerance=0.02,
)
CLF = {"accuracy": 0.9, "f1_macro": 0.85}


def test_passes_with_no_packaged_model():
    decision = decide(CLF, "classification", RULES)

    assert decision.passed is True
    assert (decision.metric, decision.value, decision.threshold) == ("accuracy", 0.9, 0.8)
    assert decision.baseline_version is None
    assert decision.reason == "test accuracy 0.9000 meets 0.8 (no packaged model to compare with)"


def test_exactly_the_threshold_passes():
    assert decide({"accuracy": 0.8}, "classification", RULES).passed is True


def test_below_threshold_fails():
    decision = decide({"accuracy": 0.79}, "classification", RULES, ("v1", {"accuracy": 0.5}))

    assert decision.passed is False
    assert decision.reason == ("test accuracy 0.7900 misses the threshold: "
                               "it must be at least 0.8")


def test_worse_than_the_packaged_model_beyond_tolerance_fails():
    decision = decide({"accuracy": 0.85}, "classification", RULES, ("abc123", {"accuracy": 0.9}))

    assert decision.passed is False
    assert (decision.baseline_version, decision.baseline_value) == ("abc123", 0.9)
    assert "worse than the packaged model abc123 (0.9000) by more than the tolerance 0.02" \
        in decision.reason


@pytest.mark.parametrize("value", [0.885, 0.9, 0.95])
def test_within_tolerance_or_better_passes(value):
    decision = decide({"accuracy": value}, "classification", RULES, ("abc123", {"accuracy": 0.9}))

    assert decision.passed is True
    assert "within 0.02 of the packaged model abc123 (0.9000)" in decision.reason
    assert decision.as_dict()["baseline_value"] == 0.9


def test_exactly_the_tolerance_worse_passes():
    assert decide({"accuracy": 0.88}, "classification", RULES,
                  ("abc123", {"accuracy": 0.90})).passed is True


def test_baseline_without_the_metric_is_not_compared():
    decision = decide(CLF, "classification", RULES, ("old", {"r2": 0.99}))

    assert decision.passed is True
    assert decision.baseline_version is None
    assert "no packaged model to compare with" in decision.reason


@pytest.mark.parametrize(
    ("mae", "baseline", "passed", "phrase"),
    [
        (1.5, None, True, "test mae 1.5000 meets 2"),
        (2.5, None, False, "it must be at most 2"),
        (1.5, 1.0, False, "worse than the packaged model v1 (1.0000)"),
        (1.01, 1.0, True, "within 0.02 of the packaged model v1"),
        (0.5, 1.0, True, "within 0.02 of the packaged model v1"),
    ],
)
def test_lower_is_better_for_mae(mae, baseline, passed, phrase):
    base = None if baseline is None else ("v1", {"mae": baseline})

    decision = decide({"mae": mae, "rmse": 9.0, "r2": 0.1}, "regression", RULES, base)

    assert decision.passed is passed
    assert phrase in decision.reason


def test_rule_is_chosen_by_task():
    r2_rules = RULES.model_copy(update={"regression": GateRule(metric="r2", threshold=0.7)})

    assert decide({"r2": 0.75, "mae": 50.0}, "regression", r2_rules).passed is True
    assert decide({"r2": 0.65, "mae": 0.1}, "regression", r2_rules).passed is False


@pytest.mark.parametrize(
    ("metric", "metrics"),
    [("auc", {"accuracy": 0.9}), ("roc_auc", {"accuracy": 0.9, "f1_macro": 0.8})],
    ids=["not-a-metric", "not-produced"],
)
def test_unknown_metric_is_an_error(metric, metrics):
    rules = RULES.model_copy(update={"classification": GateRule(metric=metric, threshold=0.5)})

    with pytest.raises(SlipwayError) as caught:
        decide(metrics, "classification", rules)

    assert f"gate metric {metric!r} is not among this classification model's metrics" \
        in caught.value.message
    assert ", ".join(sorted(metrics)) in caught.value.message
    assert "gate.classification.metric" in caught.value.fix
