"""Pipeline run metrics pushed to a real Pushgateway and scraped by a real Prometheus.

The unit tests build the pushed registry from run summaries; the slow tests push to a real
``prometheus-pushgateway`` (Debian) scraped with ``honor_labels`` by a real ``prometheus``,
as the monitoring chart's ServiceMonitor has it. The real pipeline run that feeds the
Pushgateway is in tests/deploy/test_dashboards.py (its panels need it too).

    .venv/bin/python -m pytest tests/deploy/test_run_metrics.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from charts.dashboards import harness
from components.config import MonitoringParams
from pipelines import run_metrics

SUMMARY = {
    "dataset": {"name": "iris", "source": "sklearn:iris", "md5": "abc", "rows": 150},
    "model": {"framework": "sklearn", "estimator": "svm", "device": "cpu"},
    "metrics": {"accuracy": 0.93, "f1_macro": 0.92},
    "gate": {"passed": True, "reason": "ok", "metric": "accuracy", "value": 0.93,
             "threshold": 0.85},
    "model_version": {"version": "v123", "path": "/x"},
}


def samples(registry) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_successful_run_pushes_everything():
    got = samples(run_metrics.build_registry("training", "iris-classification", SUMMARY, True,
                                             42.0, {"train-op": 3.5}, now=1000.0))
    assert got[("slipway_pipeline_last_success_timestamp_seconds", ())] == 1000.0
    assert got[("slipway_pipeline_last_run_success", ())] == 1
    assert got[("slipway_pipeline_run_duration_seconds", ())] == 42.0
    assert got[("slipway_pipeline_stage_duration_seconds", (("stage", "train-op"),))] == 3.5
    assert got[("slipway_pipeline_test_metric", (("metric", "accuracy"),))] == 0.93
    assert got[("slipway_pipeline_gate_passed", ())] == 1
    assert got[("slipway_pipeline_gate_threshold", (("metric", "accuracy"),))] == 0.85
    info = [k for k in got if k[0] == "slipway_pipeline_model_info"]
    assert dict(info[0][1])["model_version"] == "v123"


def test_no_label_grows_with_runs():
    """Bounded series: no label carries a run id, a time or a path."""
    reg = run_metrics.build_registry("training", "m", SUMMARY, True, 1.0, {"a": 1.0}, now=5.0)
    allowed = {"stage", "metric", "model_version", "dataset", "dataset_md5", "framework",
               "estimator"}
    for _, labels in samples(reg):
        assert {k for k, _ in labels} <= allowed


@pytest.mark.parametrize("ok,gate_passed", [(False, None), (True, False)])
def test_a_failed_or_rejected_run_keeps_the_last_success(ok, gate_passed):
    summary = dict(SUMMARY, gate={**SUMMARY["gate"], "passed": gate_passed}) \
        if gate_passed is not None else {"dataset": SUMMARY["dataset"]}
    got = samples(run_metrics.build_registry("training", "m", summary, ok, 9.0, {}, now=7.0))
    assert got[("slipway_pipeline_last_run_success", ())] == 0
    assert not any(k[0] == "slipway_pipeline_last_success_timestamp_seconds" for k in got)
    assert not any(k[0] == "slipway_pipeline_model_info" for k in got)
    if gate_passed is False:
        assert got[("slipway_pipeline_gate_passed", ())] == 0


def test_stage_durations_from_a_kfp_local_log(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(
        "23:59:58.000 - INFO - Executing task \x1b[96m'ingest-op'\x1b[0m\n"
        "stage output\n"
        "00:00:01.500 - INFO - Task \x1b[96m'ingest-op'\x1b[0m finished with status "
        "\x1b[92mSUCCESS\x1b[0m\n"
        "00:00:02.000 - INFO - Executing task 'trial-op'\n"
        "00:00:02.100 - INFO - Executing task 'trial-op'\n"
        "00:00:04.000 - INFO - Task 'trial-op' finished with status SUCCESS\n"
        "00:00:06.000 - INFO - Task 'trial-op' finished with status SUCCESS\n")
    assert run_metrics.stage_seconds_from_log(log) == {"ingest-op": 3.5, "trial-op": 4.0}
    assert run_metrics.stage_seconds_from_log(tmp_path / "missing.log") == {}


def test_the_environment_overrides_params():
    assert run_metrics.pushgateway_url("http://a:9091", {}) == "http://a:9091"
    assert run_metrics.pushgateway_url("http://a:9091",
                                       {"SLIPWAY_PUSHGATEWAY": "http://b:9091"}) == "http://b:9091"
    assert run_metrics.pushgateway_url("http://a:9091", {"SLIPWAY_PUSHGATEWAY": ""}) is None
    assert run_metrics.pushgateway_url(None, {}) is None
    with pytest.raises(ValueError, match="SLIPWAY_PUSHGATEWAY='b:9091' is not an http"):
        run_metrics.pushgateway_url(None, {"SLIPWAY_PUSHGATEWAY": "b:9091"})
    with pytest.raises(ValueError, match="is not an http"):
        MonitoringParams(pushgateway="pushgateway:9091")


class _Result:
    pipeline, seconds, ok, failed_tasks = "training", 12.0, True, []

    def __init__(self, log: Path, summary: dict) -> None:
        self.log, self.summary = log, summary


class _Params:
    def __init__(self, url):
        self.monitoring = MonitoringParams(pushgateway=url)

    def model_name(self):
        return "iris-classification"


def test_an_unreachable_pushgateway_warns_and_does_not_raise(tmp_path, capsys):
    url = f"http://127.0.0.1:{harness.free_port()}"
    assert run_metrics.push_after_run(_Result(tmp_path / "x.log", SUMMARY), _Params(url), {}) \
        is False
    assert f"run metrics not pushed to {url}" in capsys.readouterr().err


@pytest.mark.slow
def test_pushes_reach_prometheus_and_the_last_success_survives_a_failure(tmp_path):
    if missing := harness.missing_tools():
        pytest.skip(f"needs {', '.join(missing)}: run `make deploy-tools`")
    gw = harness.Pushgateway(tmp_path)
    prom = None
    try:
        params = _Params(gw.url)
        log = tmp_path / "run.log"
        log.write_text("10:00:00.000 - INFO - Executing task 'train-op'\n"
                       "10:00:02.250 - INFO - Task 'train-op' finished with status SUCCESS\n")
        assert run_metrics.push_after_run(_Result(log, SUMMARY), params, {}, now=1000.0)
        failed = _Result(log, {"dataset": SUMMARY["dataset"]})
        failed.ok, failed.failed_tasks = False, ["train-op"]
        for now in (2000.0, 3000.0):  # two failed runs later
            assert run_metrics.push_after_run(failed, params, {}, now=now)
        prom = harness.Prometheus(tmp_path, [harness.pushgateway_scrape_config(gw.url)])
        group = 'job="slipway_pipeline", pipeline="training", model_name="iris-classification"'
        last = prom.wait_for(f"slipway_pipeline_last_success_timestamp_seconds{{{group}}}")
        assert float(last[0]["value"][1]) == 1000.0
        assert float(prom.query(f"slipway_pipeline_last_run_timestamp_seconds{{{group}}}")
                     [0]["value"][1]) == 3000.0
        assert prom.query(f"slipway_pipeline_last_run_success{{{group}}}")[0]["value"][1] == "0"
        stage = prom.query(f'slipway_pipeline_stage_duration_seconds{{{group}, stage="train-op"}}')
        assert float(stage[0]["value"][1]) == 2.25
        # bounded: three pushes, one series per metric and label value
        assert len(prom.query(f"slipway_pipeline_test_metric{{{group}}}")) == 2
        many = prom.query('count by (__name__) ({job="slipway_pipeline"}) > 1')
        assert [m["metric"]["__name__"] for m in many] == ["slipway_pipeline_test_metric"]
    finally:
        if prom:
            prom.stop()
        gw.stop()


def test_the_cli_hook_is_wired():
    """`python -m pipelines run` calls push_after_run after printing its summary."""
    src = Path(sys.modules["pipelines.run_metrics"].__file__).with_name("cli.py").read_text()
    assert "push_after_run(result, params)" in src
    proc = subprocess.run([sys.executable, "-c", "import pipelines.run_metrics"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == ""  # no side effect on import
