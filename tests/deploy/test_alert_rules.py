"""The alert rules as the charts render them, checked and unit-tested by a real promtool.

``promtool check rules`` and ``promtool test rules`` run on the ``spec.groups`` of the
PrometheusRule objects that helm renders (serving chart with ci/monitoring-values.yaml,
release r1 in namespace ml; monitoring chart with its defaults). The promtool tests are in
charts/rule-tests/: every alert fires in one case and stays silent in another. Toggles,
thresholds, ``for`` and severities are checked to reach the rendered rules.

    make deploy-tools && .venv/bin/python -m pytest tests/deploy/test_alert_rules.py
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import CHARTS, MONITORING, SERVING, render, tool

SERVING_VALUES = SERVING / "ci" / "monitoring-values.yaml"
SERVING_ALERTS = {
    "serviceDown": "SlipwayServiceDown", "modelNotReady": "SlipwayModelNotReady",
    "noReadyReplica": "SlipwayNoReadyReplica",
    "errorBudgetBurnFast": "SlipwayErrorBudgetBurnFast",
    "errorBudgetBurnSlow": "SlipwayErrorBudgetBurnSlow",
    "latencyP99": "SlipwayHighLatencyP99", "overloadRatio": "SlipwayOverloaded",
    "invalidRequestRatio": "SlipwayInvalidRequests", "inputDrift": "SlipwayInputDrift",
    "multipleModelVersions": "SlipwayMultipleModelVersions",
}
TRAINING_ALERTS = {"trainingStale": "SlipwayTrainingStale", "gateRejected": "SlipwayGateRejected"}


def rules_of(chart: Path, values=(), sets=()) -> dict:
    objs = render(chart, values, sets, show_only="templates/prometheusrule.yaml")
    assert [o["kind"] for o in objs] == ["PrometheusRule"]
    return {"groups": objs[0]["spec"]["groups"]}


def alerts_of(rules: dict) -> dict[str, dict]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"]}


def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The rendered rule files next to copies of the promtool test files."""
    out = tmp_path_factory.mktemp("rules")
    for name, rules in (("serving-rules.yaml", rules_of(SERVING, [SERVING_VALUES])),
                        ("training-rules.yaml", rules_of(MONITORING))):
        (out / name).write_text(yaml.safe_dump(rules, sort_keys=False))
    for f in (CHARTS / "rule-tests").glob("*.yaml"):
        shutil.copy(f, out / f.name)
    return out


def test_promtool_checks_the_rendered_rules(rendered):
    proc = subprocess.run([promtool(), "check", "rules", str(rendered / "serving-rules.yaml"),
                           str(rendered / "training-rules.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(SERVING_ALERTS)} rules found" in proc.stdout
    assert f"{len(TRAINING_ALERTS)} rules found" in proc.stdout


@pytest.mark.parametrize("test_file", ["serving.yaml", "training.yaml"])
def test_promtool_unit_tests_pass(rendered, test_file):
    proc = subprocess.run([promtool(), "test", "rules", str(rendered / test_file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("test_file,alerts", [("serving.yaml", SERVING_ALERTS),
                                              ("training.yaml", TRAINING_ALERTS)])
def test_every_alert_is_tested_firing_and_silent(test_file, alerts):
    """Each alert has at least one expected firing and one expected empty evaluation."""
    spec = yaml.safe_load((CHARTS / "rule-tests" / test_file).read_text())
    fired, silent = set(), set()
    for t in spec["tests"]:
        for case in t.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    assert fired >= set(alerts.values()), set(alerts.values()) - fired
    assert silent >= set(alerts.values()), set(alerts.values()) - silent


def test_a_broken_rule_fails_the_unit_tests(rendered, tmp_path):
    """The promtool tests can fail: a drift rule without its row condition is caught."""
    rules = yaml.safe_load((rendered / "serving-rules.yaml").read_text())
    for r in rules["groups"][0]["rules"]:
        if r.get("alert") == "SlipwayInputDrift":
            r["expr"] = r["expr"].split("and on")[0]
    (tmp_path / "serving-rules.yaml").write_text(yaml.safe_dump(rules))
    shutil.copy(rendered / "serving.yaml", tmp_path / "serving.yaml")
    proc = subprocess.run([promtool(), "test", "rules", str(tmp_path / "serving.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "SlipwayInputDrift" in proc.stdout + proc.stderr


@pytest.mark.parametrize("key,alert", sorted(SERVING_ALERTS.items()))
def test_each_serving_alert_can_be_turned_off(key, alert):
    alerts = alerts_of(rules_of(SERVING, [SERVING_VALUES],
                                [f"prometheusRule.alerts.{key}.enabled=false"]))
    assert alert not in alerts
    assert set(alerts) == set(SERVING_ALERTS.values()) - {alert}


@pytest.mark.parametrize("key,alert", sorted(TRAINING_ALERTS.items()))
def test_each_training_alert_can_be_turned_off(key, alert):
    alerts = alerts_of(rules_of(MONITORING, sets=[f"prometheusRule.alerts.{key}.enabled=false"]))
    assert set(alerts) == set(TRAINING_ALERTS.values()) - {alert}


@pytest.mark.parametrize("key,alert", sorted(SERVING_ALERTS.items()))
def test_for_and_severity_reach_each_serving_rule(key, alert):
    rule = alerts_of(rules_of(SERVING, [SERVING_VALUES], [
        f"prometheusRule.alerts.{key}.for=17m",
        f"prometheusRule.alerts.{key}.severity=info"]))[alert]
    assert rule["for"] == "17m" and rule["labels"]["severity"] == "info"


@pytest.mark.parametrize("key,value,expect", [
    ("latencyP99", "0.75", "> 0.75"),
    ("overloadRatio", "0.2", "> 0.2"),
    ("invalidRequestRatio", "0.3", "> 0.3"),
    ("inputDrift", "0.4", "> 0.4"),
    ("errorBudgetBurnFast", "10", "> 0.05"),  # 10 x (1 - 0.995)
    ("errorBudgetBurnSlow", "2", "> 0.01"),
])
def test_thresholds_reach_the_rules(key, value, expect):
    rule = alerts_of(rules_of(SERVING, [SERVING_VALUES],
                              [f"json:prometheusRule.alerts.{key}.threshold={value}"]))[SERVING_ALERTS[key]]
    assert expect in rule["expr"]


def test_drift_min_rows_and_training_days_reach_the_rules():
    drift = alerts_of(rules_of(SERVING, [SERVING_VALUES],
                               ["prometheusRule.alerts.inputDrift.minRows=2000"]))
    assert ">= 2000" in drift["SlipwayInputDrift"]["expr"]
    stale = alerts_of(rules_of(MONITORING, sets=["prometheusRule.alerts.trainingStale.days=3"]))
    assert f"> {3 * 86400}" in stale["SlipwayTrainingStale"]["expr"]


def test_the_drift_alert_keeps_the_retraining_contract():
    """Issue 11's receiver routes on these: name, severity, retrain, and the series' labels."""
    rule = alerts_of(rules_of(SERVING, [SERVING_VALUES]))["SlipwayInputDrift"]
    assert rule["labels"] == {"severity": "warning", "retrain": "true"}
    assert "by (namespace, service, model_name, model_version, feature)" in rule["expr"]
    assert "{{ $labels.feature }}" in rule["annotations"]["feature"]
    assert "{{ $value }}" in rule["annotations"]["psi"]


def test_rules_are_scoped_to_the_release():
    text = yaml.safe_dump(rules_of(SERVING, [SERVING_VALUES]))
    assert 'namespace="ml", service="r1-slipway-serving"' in text
