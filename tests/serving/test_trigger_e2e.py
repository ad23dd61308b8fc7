"""The closed loop on 127.0.0.1: drifted inputs to a served model start one retraining run.

Real parts: ``bentoml serve`` serving a packaged model, a real Prometheus (Debian
``prometheus``) scraping it and evaluating the ``SlipwayInputDrift`` rule as helm renders it
from ``charts/slipway-serving`` (release r1 in namespace ml; its ``for`` and ``minRows``
shortened for the test), a real Alertmanager (Debian ``prometheus-alertmanager``) with the
route the README gives for a cluster, and ``python -m pipelines trigger serve`` as a
subprocess. The receiver's target is a KFP endpoint: the local fake of the KFP v2beta1 API
(``tests/fakes/kfp_api.py``; no KFP backend can run here), reached with the real
``kfp.Client``, so "a run started" is a run created through the API.

Inputs from the training distribution fire nothing and start nothing; inputs pinned at the
top of every feature's training range fire the alert, and however often Alertmanager repeats
its notification, exactly one run starts, recording the model version, features and PSI.
Skipped where Prometheus, Alertmanager or helm (``make deploy-tools``) is missing.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from benchmarks.serve import ServerProcess, free_port
from tests.fakes.kfp_api import FakeKfp

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
TOKEN = "e2e-alert-token"
MIN_ROWS = 200


def alertmanager_config(receiver_url: str, token: str) -> dict:
    """The Alertmanager route the README documents, with test-speed timers."""
    return {
        "route": {
            "receiver": "default",
            "group_by": ["alertname", "namespace", "service", "model_name"],
            "group_wait": "1s", "group_interval": "1s", "repeat_interval": "2s",
            "routes": [{"receiver": "slipway-retrain", "matchers": ['retrain="true"'],
                        "continue": False}],
        },
        "receivers": [
            {"name": "default"},
            {"name": "slipway-retrain", "webhook_configs": [{
                "url": receiver_url, "send_resolved": False,
                "http_config": {"authorization": {"type": "Bearer", "credentials": token}}}]},
        ],
    }


def wait_until(check, timeout: float, what: str, logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.fixture
def rules(tmp_path) -> Path:
    """The serving chart's rules as helm renders them (skips without helm)."""
    from tests.deploy.conftest import SERVING, render

    objs = render(SERVING, [SERVING / "ci" / "monitoring-values.yaml"],
                  ["prometheusRule.alerts.inputDrift.for=5s",
                   f"json:prometheusRule.alerts.inputDrift.minRows={MIN_ROWS}"],
                  show_only="templates/prometheusrule.yaml")
    groups = objs[0]["spec"]["groups"]
    drift = [r for g in groups for r in g["rules"] if r.get("alert") == "SlipwayInputDrift"]
    assert drift and drift[0]["labels"]["retrain"] == "true"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


@pytest.mark.skipif(shutil.which("prometheus") is None or ALERTMANAGER is None,
                    reason="needs prometheus and prometheus-alertmanager (apt; .ci/run installs "
                           "them)")
def test_drifted_inputs_start_exactly_one_retraining_run(bc_model, rules, tmp_path):
    procs: list[ServerProcess] = []
    logs = [tmp_path / n for n in ("serve.log", "trigger.log", "prometheus.log",
                                   "alertmanager.log")]
    with FakeKfp(tokens={"kfp-token": {"team-a"}}, multi_user=True) as kfp:
        try:
            # the served model, in a BentoML home of its own (a serve empties its metrics dir)
            home = tmp_path / "bentoml-home"
            name = bc_model.tag.split(":")[0]
            shutil.copytree(Path(os.environ["BENTOML_HOME"]) / "models" / name,
                            home / "models" / name)
            serve = ServerProcess(
                lambda port: [str(Path(sys.executable).with_name("bentoml")), "serve",
                              "serving.service:Slipway", "--host", "127.0.0.1", "--port",
                              str(port)],
                {"SLIPWAY_MODEL": bc_model.tag, "BENTOML_HOME": str(home)}, logs[0])
            procs.append(serve)
            receiver = ServerProcess(
                lambda port: [sys.executable, "-m", "pipelines", "trigger", "serve", "--port",
                              str(port), "--set", "kfp.trigger.target=kfp",
                              "--set", f"kfp.trigger.state_file={tmp_path / 'state.json'}"],
                {"SLIPWAY_TRIGGER_TOKEN": TOKEN, "KFP_HOST": kfp.url, "KFP_TOKEN": "kfp-token",
                 "KFP_NAMESPACE": "team-a"}, logs[1])
            procs.append(receiver)
            am_port = free_port()
            am_config = tmp_path / "alertmanager.yml"
            am_config.write_text(yaml.safe_dump(alertmanager_config(
                f"{receiver.url}/alerts", TOKEN)))
            procs.append(ServerProcess(
                lambda port: [ALERTMANAGER, f"--config.file={am_config}",
                              f"--storage.path={tmp_path / 'am-data'}",
                              f"--web.listen-address=127.0.0.1:{am_port}",
                              "--cluster.listen-address="], {}, logs[3]))
            prom_config = tmp_path / "prometheus.yml"
            prom_config.write_text(yaml.safe_dump({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "alerting": {"alertmanagers": [{"static_configs": [
                    {"targets": [f"127.0.0.1:{am_port}"]}]}]},
                # a ServiceMonitor adds namespace and service: the rule selects on them
                "scrape_configs": [{"job_name": "slipway", "static_configs": [{
                    "targets": [f"127.0.0.1:{serve.port}"],
                    "labels": {"namespace": "ml", "service": "r1-slipway-serving"}}]}],
            }))
            prom = ServerProcess(
                lambda port: ["prometheus", f"--config.file={prom_config}",
                              f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                              f"--web.listen-address=127.0.0.1:{port}"], {}, logs[2])
            procs.append(prom)

            def query(q: str) -> list:
                answer = httpx.get(f"{prom.url}/api/v1/query", params={"query": q}, timeout=5)
                return answer.json()["data"]["result"] if answer.status_code == 200 else []

            wait_until(lambda: httpx.get(f"{serve.url}/readyz", timeout=2).status_code == 200,
                       120, "the model server", logs)
            wait_until(lambda: httpx.get(f"{receiver.url}/healthz", timeout=2)
                       .status_code == 200, 60, "the receiver", logs)
            predict = httpx.Client(base_url=serve.url, timeout=60)

            # 1. inputs like the training data: no alert, no run
            def send(rows: list[dict], times: int) -> None:
                for _ in range(times):
                    assert predict.post("/predict", json={"instances": rows}).status_code == 200
                # the service publishes its drift gauges at most once a second, on a batch
                time.sleep(1.2)
                assert predict.post("/predict", json={"instances": rows[:1]}).status_code == 200

            rows = bc_model.instances()
            send(rows, 2 * MIN_ROWS // len(rows) + 1)
            wait_until(lambda: query(f'slipway_input_drift_window_rows >= {MIN_ROWS}'), 60,
                       "Prometheus to scrape the drift window", logs)
            psi = query("max(slipway_input_drift_psi)")
            time.sleep(12)  # the rule's `for` (5s), evaluation, group_wait, twice over
            assert query('ALERTS{alertname="SlipwayInputDrift"}') == [], psi
            assert kfp.runs == {}

            # 2. every feature pinned at the top of its training range: drift
            top = {f["name"]: f["max"] for f in bc_model.schema["features"]}
            send([top] * 200, 5)
            wait_until(lambda: kfp.runs, 120, "a retraining run", logs)
            # Alertmanager repeats the notification every 2 s: still one run
            notified = wait_until(
                lambda: _notifications(am_port) >= 3, 60, "repeated notifications", logs)
            assert notified
            assert len(kfp.runs) == 1, [r["description"] for r in kfp.runs.values()]
            (run,) = kfp.runs.values()
            assert run["description"].startswith(
                f"retraining: SlipwayInputDrift {name}:{bc_model.version}; features ")
            assert "mean radius" in run["description"] or "mean_radius" in run["description"]
            assert kfp.violations == []
        finally:
            for p in reversed(procs):
                p.stop()


def _notifications(port: int) -> float:
    """Webhook notifications Alertmanager sent successfully (its own counter)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("alertmanager_notifications_total{") and 'integration="webhook"' \
                in line:
            total += float(line.rsplit(" ", 1)[1])
    failed = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("alertmanager_notifications_failed_total{")
                 and 'integration="webhook"' in line)
    return total - failed
