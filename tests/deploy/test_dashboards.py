"""The Grafana dashboards: generated from their source, and every panel's query answered.

No Grafana server can run here, so Grafana loading the JSON is not tested; what it would
show is: the slow test runs the whole chain for real (a real pipeline run pushing to a real
Pushgateway, a real ``bentoml serve`` of the model it packaged under load, a real Prometheus
scraping it relabelled as the serving chart's ServiceMonitor would, so BentoML's
``endpoint`` label arrives as ``exported_endpoint``) and asks Prometheus every target of
every panel of the committed JSON, with the variables substituted. cAdvisor and
kube-state-metrics cannot run without a cluster: ``harness.ClusterStandIn`` serves their
series (names and labels as published) from the real server's /proc and /readyz. Panels that
need a part Slipway does not run (a DCGM exporter on GPU nodes) are listed, not queried.

    make dashboards && .venv/bin/python -m pytest tests/deploy/test_dashboards.py
"""

from __future__ import annotations

import json
import time

import pytest

from charts import dashboards
from charts.dashboards import harness

COMMITTED = sorted(dashboards.OUT_DIR.glob("*.json"))


def load(uid: str) -> dict:
    return json.loads((dashboards.OUT_DIR / f"{uid}.json").read_text())


def test_committed_json_matches_its_source():
    """Fails when charts/dashboards changed and `make dashboards` was not run (or the JSON
    was edited by hand)."""
    assert [p.stem for p in COMMITTED] == sorted(dashboards.DASHBOARDS)
    for uid in dashboards.DASHBOARDS:
        assert (dashboards.OUT_DIR / f"{uid}.json").read_text() == dashboards.render(uid), (
            f"{uid}.json differs from its source: run `make dashboards` and commit the result")


def test_uids_are_stable_and_unique_and_panel_ids_unique():
    uids = [load(uid)["uid"] for uid in dashboards.DASHBOARDS]
    assert uids == list(dashboards.DASHBOARDS) and len(set(uids)) == len(uids)
    for uid in dashboards.DASHBOARDS:
        ids = [p["id"] for p in load(uid)["panels"]]
        assert len(ids) == len(set(ids))


def datasources(node, path="") -> list[tuple[str, object]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                out.append((f"{path}.{k}", v))
            out += datasources(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += datasources(v, f"{path}[{i}]")
    return out


def test_no_datasource_is_hard_coded():
    for uid in dashboards.DASHBOARDS:
        d = load(uid)
        found = datasources(d)
        assert found
        for where, ds in found:
            assert ds == {"type": "prometheus", "uid": "${datasource}"}, (uid, where, ds)
        first = d["templating"]["list"][0]
        assert (first["name"], first["type"], first["query"]) == (
            "datasource", "datasource", "prometheus")


def test_variables():
    names = {uid: [v["name"] for v in load(uid)["templating"]["list"]]
             for uid in dashboards.DASHBOARDS}
    assert names["slipway-inference"] == ["datasource", "namespace", "service", "model_version"]
    assert names["slipway-training"] == ["datasource", "pipeline", "model_name"]


def test_the_issue_panels_are_there():
    titles = {uid: [p["title"] for p in load(uid)["panels"]] for uid in dashboards.DASHBOARDS}
    for t in ("Ready replicas", "Served model versions", "Request rate by status",
              "Latency, end to end", "Latency of the model call",
              "Invalid requests (4xx) by reason", "Refused with 503", "Requests in flight",
              "Batch size (rows per model call)", "Predictions per class",
              "Prediction confidence", "Input drift (PSI per feature)", "CPU", "Memory",
              "GPU utilisation"):
        assert t in titles["slipway-inference"]
    drift = next(p for p in load("slipway-inference")["panels"] if p["title"].startswith("Input"))
    assert [s["value"] for s in drift["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [
        None, 0.1, 0.25]
    for t in ("Time since the last successful run", "Run duration", "Stage durations (last run)",
              "Test metrics against the gate", "Gate decisions"):
        assert t in titles["slipway-training"]


def targets(uid: str):
    specs = {s.title: s for s in dashboards.DASHBOARDS[uid][1]}
    for panel in load(uid)["panels"]:
        for t in panel["targets"]:
            yield panel["title"], t["expr"], specs[panel["title"]].needs


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if missing := harness.missing_tools():
        pytest.skip(f"needs {', '.join(missing)}: run `make deploy-tools`")
    with harness.Stack(tmp_path_factory.mktemp("stack")) as s:
        s.start_load()
        s.prometheus.wait_for(
            f'sum(rate(bentoml_service_request_total{{service="{harness.SERVICE}"}}[30s])) > 0',
            timeout=120)
        time.sleep(35)  # a full rate window of load
        yield s


@pytest.mark.slow
@pytest.mark.parametrize("uid", list(dashboards.DASHBOARDS))
def test_every_panel_query_returns_data(stack, uid):
    values = {"namespace": harness.NAMESPACE, "service": harness.SERVICE,
              "model_version": ".*", "pipeline": "training", "model_name": ".*"}
    empty, skipped = [], []
    for title, expr, needs in targets(uid):
        if needs:
            skipped.append(title)
            continue
        if not stack.prometheus.query(harness.substitute(expr, values)):
            empty.append((title, expr))
    assert not empty, f"panels without data (load: {stack.counts}): {empty}"
    assert skipped == (["GPU utilisation"] if uid == "slipway-inference" else [])


@pytest.mark.slow
def test_the_served_version_and_the_endpoint_relabelling(stack):
    version = stack.model_tag.split(":")[1]
    info = stack.prometheus.query(
        f'slipway_model_info{{namespace="ml", service="{harness.SERVICE}"}}')
    assert {i["metric"]["model_version"] for i in info} == {version}
    # the ServiceMonitor's endpoint label (the port name) wins; BentoML's is renamed
    req = stack.prometheus.query(f'bentoml_service_request_total{{service="{harness.SERVICE}"}}')
    assert {r["metric"]["endpoint"] for r in req} == {"http"}
    assert "/predict" in {r["metric"].get("exported_endpoint") for r in req}
    # the pipeline run's push is what the training dashboard reads
    pushed = stack.prometheus.query('slipway_pipeline_model_info{pipeline="training"}')
    assert pushed[0]["metric"]["model_version"] == version
    # the shifted rows drift: some feature's PSI passes the alert's 0.25
    assert stack.prometheus.query(f'max(slipway_input_drift_psi{{service="{harness.SERVICE}"}})'
                                  " > 0.25")
