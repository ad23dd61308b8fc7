"""Pipeline run metrics: the pipeline's own tasks push them to a real Pushgateway.

Fast tests: the pushed values and their groups (:mod:`components.pushgateway`), the
creation time the exit task starts the run's duration from, a Pushgateway that does not
answer (a warning, never a failed task), and the compiled IR with and without a
Pushgateway (``monitoring.pushgateway``): every task carries its address and group, the
body runs inside an exit handler whose task takes the run's final status; without one the
IR is the plain pipeline's.

Slow tests (a real ``prometheus-pushgateway`` from Debian, ``make deploy-tools``):

* ``python -m pipelines run training`` under the real kfp.local runner, three times into one
  Pushgateway - a run that packages a model, a run whose gate rejects the model (the data
  stages reused from the cache push nothing), a run whose validate task fails - and what
  the Pushgateway holds after each, group by group (its ``/api/v1/metrics``); and
  ``python -m pipelines run tuning`` (two trials in a ParallelFor);
* the exit task of the compiled IR run as a KFP backend runs it. No KFP backend runs here
  (it needs a Kubernetes cluster): the test takes the task's container command, arguments
  and environment from the compiled YAML - the object a cluster runs - and gives it the
  executor input a backend's driver writes (the ``PipelineTaskFinalStatus`` message of
  kfp's pipeline_spec.proto, JSON-mapped, and the creation time the driver resolves).

The Pushgateway's scrape by Prometheus (``honor_labels``, as the monitoring chart's
ServiceMonitor has it) and every training panel's query are in tests/deploy/test_dashboards.py.

    .venv/bin/python -m pytest tests/deploy/test_run_metrics.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from charts.dashboards import harness
from components import pushgateway
from components.config import MonitoringParams, load_params
from components.errors import SlipwayError
from components.kfp_support import reporting_errors
from components.stages import PIPELINE_STAGES, STAGES
from pipelines import run_metrics
from pipelines.cli import compile_all

REPO = Path(__file__).resolve().parents[2]
GROUP_ENV = {pushgateway.PIPELINE_ENV: "training", pushgateway.MODEL_ENV: "iris-classification"}
FAST = ["train.estimator=logistic_regression", "train.cv_folds=2"]


# ---- what is pushed ---------------------------------------------------------------------


def test_a_task_pushes_only_with_all_three_variables():
    url = {pushgateway.URL_ENV: "http://127.0.0.1:9091"}
    assert pushgateway.target({**url, **GROUP_ENV}) == pushgateway.Target(
        "http://127.0.0.1:9091", "training", "iris-classification")
    assert pushgateway.target(GROUP_ENV) is None  # a user's own SLIPWAY_PUSHGATEWAY alone...
    assert pushgateway.target(url) is None  # ...or the group alone pushes nothing
    assert pushgateway.target({**url, **GROUP_ENV, pushgateway.MODEL_ENV: ""}) is None


def test_groups_bound_the_series():
    """The facts' group is pipeline and model; a stage's time adds only its stage key."""
    to = pushgateway.Target("http://x", "training", "m")
    assert to.group() == {"pipeline": "training", "model_name": "m"}
    assert to.group("train") == {"pipeline": "training", "model_name": "m", "stage": "train"}
    allowed = {"metric", "model_version", "dataset", "dataset_md5", "framework", "estimator"}
    for _, (_, labels, _) in pushgateway.METRICS.items():
        assert set(labels) <= allowed  # no run id, time or path


def _samples(values) -> dict[tuple, float]:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(pushgateway.registry(values)).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_the_stages_facts():
    got = _samples({**pushgateway.evaluated({"accuracy": 0.93, "task": "x", "ok": True}),
                    **pushgateway.gated({"passed": False, "metric": "accuracy",
                                         "threshold": 0.95, "reason": "low"}),
                    **pushgateway.packaged("v1", "iris", "abc", "sklearn", "svm", now=7.0)})
    assert got == {
        ("slipway_pipeline_test_metric", (("metric", "accuracy"),)): 0.93,
        ("slipway_pipeline_gate_passed", ()): 0.0,
        ("slipway_pipeline_gate_threshold", (("metric", "accuracy"),)): 0.95,
        ("slipway_pipeline_last_success_timestamp_seconds", ()): 7.0,
        ("slipway_pipeline_model_info", (("dataset", "iris"), ("dataset_md5", "abc"),
                                         ("estimator", "svm"), ("framework", "sklearn"),
                                         ("model_version", "v1"))): 1.0,
    }


@pytest.mark.parametrize("created,expected", [
    ("2026-12-02T10:00:00Z", 1796205600.0),
    ("2026-12-02T10:00:00.500000Z", 1796205600.5),
    ("2026-12-02T11:00:00+01:00", 1796205600.0),
    ("2026-12-02T10:00:00", 1796205600.0),  # no zone: UTC, as the placeholder says
    ("{{$.pipeline_job_create_time_utc}}", None),  # a backend that does not resolve it
    ("", None),
])
def test_the_runs_creation_time(created, expected):
    assert pushgateway.run_started(created) == expected


def test_the_exit_task_without_a_pushgateway_says_so():
    assert pushgateway.push_run("SUCCEEDED", "", environ={}).startswith("not pushed")


def test_an_unreachable_pushgateway_warns_and_fails_nothing(monkeypatch, capsys):
    url = f"http://127.0.0.1:{harness.free_port()}"
    monkeypatch.setenv(pushgateway.URL_ENV, url)
    for name, value in GROUP_ENV.items():
        monkeypatch.setenv(name, value)
    with reporting_errors("gate") as report:
        report.add(pushgateway.gated, {"passed": True})
        report.add(pushgateway.evaluated, None)  # a builder that fails: a warning too
    err = capsys.readouterr().err
    assert err.count(f"warning: run metrics not pushed to {url}") == 2  # time, facts
    assert "warning: gate: run metrics not recorded" in err
    said = pushgateway.push_run("FAILED", "2026-12-02T10:00:00Z")
    assert said == f"NOT pushed to {url} (see the warning above)"
    # a stage's own error still ends the task as before
    with pytest.raises(SystemExit) as exited, reporting_errors("validate"):
        raise SlipwayError("too few rows", "add rows")
    assert exited.value.code == 1
    assert "error: validate: too few rows" in capsys.readouterr().err


def test_without_a_pushgateway_a_stage_records_nothing(monkeypatch):
    monkeypatch.delenv(pushgateway.URL_ENV, raising=False)
    with reporting_errors("evaluate") as report:
        report.add(pushgateway.evaluated, {"accuracy": 1.0})
    assert not report.enabled and report.facts == {}


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


def test_no_side_effect_on_import():
    code = "import pipelines.run_metrics, components.pushgateway, components.kfp_support"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr


# ---- the compiled pipelines -------------------------------------------------------------


def _compile(tmp_path: Path, monkeypatch, url: str | None, *sets: str) -> dict[str, dict]:
    monkeypatch.delenv(pushgateway.URL_ENV, raising=False)
    params = load_params(REPO / "params.yaml",
                         [*sets, *([f"monitoring.pushgateway={url}"] if url else [])])
    out = {}
    for path in compile_all(params, tmp_path / (url and "monitored" or "plain")):
        out[path.stem] = yaml.safe_load(path.read_text())
    return out


def _env(executor: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in executor["container"].get("env", [])}


@pytest.mark.parametrize("pipeline", sorted(PIPELINE_STAGES))
def test_a_pushgateway_is_compiled_into_every_task_and_an_exit_handler(tmp_path, monkeypatch,
                                                                       pipeline):
    url = "http://prometheus-pushgateway.monitoring:9091"
    plain = _compile(tmp_path, monkeypatch, None)[pipeline]
    ir = _compile(tmp_path, monkeypatch, url)[pipeline]
    model = load_params(REPO / "params.yaml").model_name()
    want = {pushgateway.URL_ENV: url, pushgateway.PIPELINE_ENV: pipeline,
            pushgateway.MODEL_ENV: model}
    executors = ir["deploymentSpec"]["executors"]
    tasks = {STAGES[k].task for k in PIPELINE_STAGES[pipeline]} | {run_metrics.REPORT_TASK}
    assert set(executors) == {f"exec-{t}" for t in tasks}
    for name, executor in executors.items():
        assert _env(executor).items() >= want.items(), name
        # the rest of each task is the plain pipeline's: its image, command, code version
        bare = {**executor["container"],
                "env": [e for e in executor["container"]["env"] if e["name"] not in want]}
        if name != f"exec-{run_metrics.REPORT_TASK}":
            assert bare == {**plain["deploymentSpec"]["executors"][name]["container"],
                            "env": bare["env"]}
            assert bare["env"] == plain["deploymentSpec"]["executors"][name]["container"]["env"]

    root = ir["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", run_metrics.REPORT_TASK}
    report = root[run_metrics.REPORT_TASK]
    assert report["dependentTasks"] == ["exit-handler-1"]
    assert report["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    assert report["inputs"]["parameters"]["status"] == {
        "taskFinalStatus": {"producerTask": "exit-handler-1"}}
    assert report["inputs"]["parameters"]["created"]["runtimeValue"]["constant"] == \
        "{{$.pipeline_job_create_time_utc}}"
    assert report["cachingOptions"] == {}  # never reused
    body = ir["components"][root["exit-handler-1"]["componentRef"]["name"]]["dag"]["tasks"]
    # the whole plain body inside (kfp numbers its control-flow groups in order)
    assert _groups_unnumbered(body) == _groups_unnumbered(plain["root"]["dag"]["tasks"])


def _groups_unnumbered(tasks: dict) -> set[str]:
    return {re.sub(r"^(condition|for-loop)-\d+$", r"\1", name) for name in tasks}


def test_without_a_pushgateway_the_ir_has_no_trace_of_it(tmp_path, monkeypatch):
    """What test_compile.py checks of the plain IR still holds; here: nothing of run
    metrics is in it, and SLIPWAY_PUSHGATEWAY="" turns off params.yaml's Pushgateway."""
    for name, ir in _compile(tmp_path, monkeypatch, None).items():
        text = yaml.safe_dump(ir)
        for needle in ("report-op", "exit-handler", "pipeline_job_create_time_utc",
                       pushgateway.URL_ENV, pushgateway.PIPELINE_ENV):
            assert needle not in text, (name, needle)
    monkeypatch.setenv(pushgateway.URL_ENV, "")
    params = load_params(REPO / "params.yaml", ["monitoring.pushgateway=http://pg:9091"])
    compile_all(params, tmp_path / "off", ["training"])
    assert (tmp_path / "off" / "training.yaml").read_text() == \
        (tmp_path / "plain" / "training.yaml").read_text()


def test_a_bad_address_in_the_environment_stops_the_build(tmp_path, monkeypatch):
    monkeypatch.setenv(pushgateway.URL_ENV, "pushgateway:9091")
    with pytest.raises(SlipwayError, match="SLIPWAY_PUSHGATEWAY='pushgateway:9091' is not an "
                                           "http") as err:
        compile_all(load_params(REPO / "params.yaml"), tmp_path, ["training"])
    assert "unset SLIPWAY_PUSHGATEWAY" in err.value.fix


def test_the_local_runner_resolves_the_creation_time_for_the_run_only(tmp_path, monkeypatch):
    from pipelines.training import build

    monkeypatch.setenv(pushgateway.URL_ENV, "http://pg:9091")
    spec = build(load_params(REPO / "params.yaml")).pipeline_spec
    when = datetime(2026, 12, 2, 10, 0, 0, 250000, tzinfo=UTC)

    def created() -> str:
        return spec.root.dag.tasks[run_metrics.REPORT_TASK].inputs.parameters[
            "created"].runtime_value.constant.string_value

    with run_metrics.created_now(spec, when) as resolved:
        assert resolved == 1 and created() == "2026-12-02T10:00:00.250000Z"
        assert pushgateway.run_started(created()) == when.timestamp()
    assert created() == "{{$.pipeline_job_create_time_utc}}"


# ---- real runs into a real Pushgateway ----------------------------------------------------


def _groups(gw) -> dict[tuple, dict[str, list[tuple[dict, float]]]]:
    """The Pushgateway's groups: (pipeline, model, stage or None) -> metric -> samples."""
    out = {}
    for group in harness.http_json(gw.url + "/api/v1/metrics")["data"]:
        labels = group["labels"]
        key = (labels.get("pipeline"), labels.get("model_name"), labels.get("stage"))
        out[key] = {name: [(m["labels"], float(m["value"])) for m in fam["metrics"]]
                    for name, fam in group.items() if isinstance(fam, dict) and "metrics" in fam}
    return out


def _value(metrics: dict, name: str, **labels: str) -> float:
    hits = [v for ls, v in metrics[name] if ls.items() >= labels.items()]
    assert len(hits) == 1, (name, labels, metrics.get(name))
    return hits[0]


@pytest.fixture
def gateway(tmp_path):
    if missing := harness.missing_tools():
        pytest.skip(f"needs {', '.join(missing)}: run `make deploy-tools`")
    gw = harness.Pushgateway(tmp_path)
    yield gw
    gw.stop()


def _run(workdir: Path, gw, *sets: str, expect: int, pipeline: str = "training") -> str:
    args = [a for s in [*FAST, *sets] for a in ("--set", s)]
    env = {**os.environ, pushgateway.URL_ENV: gw.url, "PYTHONPATH": str(REPO),
           "BENTOML_HOME": str(workdir / "bentoml")}
    proc = subprocess.run([sys.executable, "-m", "pipelines", "run", pipeline, *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == expect, out[-4000:]
    return proc.stdout


@pytest.mark.slow
def test_local_runs_push_from_their_tasks_success_rejection_failure(tmp_path, gateway):
    """Three real runs of the training pipeline into one Pushgateway."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "params.yaml").write_text((REPO / "params.yaml").read_text())
    model = load_params(REPO / "params.yaml").model_name()
    facts_key = ("training", model, None)
    stages = PIPELINE_STAGES["training"]

    # 1. a run that packages a model: every stage's time, every fact
    before = time.time()
    out = _run(workdir, gateway, expect=0)
    after = time.time()
    assert f"run metrics    pushed to {gateway.url} (job slipway_pipeline, pipeline " \
           f"training, model_name {model}): last run succeeded" in out
    groups = _groups(gateway)
    assert set(groups) == {facts_key} | {("training", model, s) for s in stages}
    for stage in stages:
        took = _value(groups[("training", model, stage)],
                      "slipway_pipeline_stage_duration_seconds", stage=stage)
        assert 0 < took < after - before
    facts = groups[facts_key]
    assert _value(facts, "slipway_pipeline_last_run_success") == 1
    ended = _value(facts, "slipway_pipeline_last_run_timestamp_seconds")
    assert before < ended <= after
    took = _value(facts, "slipway_pipeline_run_duration_seconds")
    assert sum(_value(groups[("training", model, s)], "slipway_pipeline_stage_duration_seconds")
               for s in stages) < took < after - before
    success = _value(facts, "slipway_pipeline_last_success_timestamp_seconds")
    assert before < success <= ended  # when package ended, before the exit task
    assert _value(facts, "slipway_pipeline_gate_passed") == 1
    assert _value(facts, "slipway_pipeline_gate_threshold", metric="accuracy") == 0.85
    accuracy = _value(facts, "slipway_pipeline_test_metric", metric="accuracy")
    assert f"accuracy {accuracy:.4f}" in out
    version = out.split("model version  ")[1].split()[0]
    info = facts["slipway_pipeline_model_info"]
    assert [ls["model_version"] for ls, _ in info] == [version]
    assert info[0][0]["estimator"] == "logistic_regression"
    pushed = {k: _value(g, "push_time_seconds") for k, g in groups.items()}

    # 2. the gate rejects: the data stages come from the cache and push nothing; the run
    # succeeded, no model was packaged, so the last success and the model stay
    out = _run(workdir, gateway, "gate.classification.threshold=0.999", expect=3)
    assert "gate           REJECTED" in out and "last run succeeded" in out
    groups = _groups(gateway)
    facts = groups[facts_key]
    assert _value(facts, "slipway_pipeline_gate_passed") == 0
    assert _value(facts, "slipway_pipeline_gate_threshold", metric="accuracy") == 0.999
    assert _value(facts, "slipway_pipeline_last_run_success") == 1
    assert _value(facts, "slipway_pipeline_last_success_timestamp_seconds") == success
    assert [ls["model_version"] for ls, _ in facts["slipway_pipeline_model_info"]] == [version]
    for stage in ("ingest", "validate", "split", "preprocess", "train", "evaluate"):
        key = ("training", model, stage)
        assert _value(groups[key], "push_time_seconds") == pushed[key], stage  # reused
    gate = ("training", model, "gate")
    assert _value(groups[gate], "push_time_seconds") > pushed[gate]
    package = ("training", model, "package")
    assert _value(groups[package], "push_time_seconds") == pushed[package]  # skipped

    # 3. a task fails: the exit task still runs and says the run failed
    out = _run(workdir, gateway, "validate.min_rows=100000", expect=1)
    assert "last run failed" in out and "failed task    validate-op" in out
    groups = _groups(gateway)
    facts = groups[facts_key]
    assert _value(facts, "slipway_pipeline_last_run_success") == 0
    assert _value(facts, "slipway_pipeline_last_run_timestamp_seconds") > ended
    assert _value(facts, "slipway_pipeline_last_success_timestamp_seconds") == success
    validate = ("training", model, "validate")
    assert _value(groups[validate], "push_time_seconds") > pushed[validate]  # failed, timed
    assert len(groups) == 1 + len(stages)  # bounded: three runs, the same groups


@pytest.mark.slow
def test_a_local_tuning_run_pushes_from_its_parallel_trials(tmp_path, gateway):
    """The tuning pipeline: a ParallelFor and dsl.Collected inside the exit handler, under
    kfp.local; two trials push into the one ``trial`` group (the last to end stays)."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    space = "[{estimator: logistic_regression, hyperparameters: {C: [0.1, 10.0]}}]"
    out = _run(tmp_path, gateway, "dataset=iris", "tune.method=grid",
               f"tune.search_space={space}", expect=0, pipeline="tuning")
    assert "trials: 2 to run" in out and "last run succeeded" in out
    model = load_params(REPO / "params.yaml", ["dataset=iris"]).model_name()
    groups = _groups(gateway)
    stages = PIPELINE_STAGES["tuning"]
    assert set(groups) == {("tuning", model, None)} | {("tuning", model, s) for s in stages}
    assert _value(groups[("tuning", model, "trial")],
                  "slipway_pipeline_stage_duration_seconds", stage="trial") > 0
    facts = groups[("tuning", model, None)]
    assert _value(facts, "slipway_pipeline_last_run_success") == 1
    assert _value(facts, "slipway_pipeline_test_metric", metric="accuracy") > 0.5
    assert len(facts["slipway_pipeline_model_info"]) == 1


@pytest.mark.slow
def test_the_compiled_exit_task_pushes_as_on_a_cluster(tmp_path, monkeypatch, gateway):
    """No KFP backend runs here: the exit task's container, as the compiled IR declares it,
    run with the executor input a backend's driver writes for it."""
    ir = _compile(tmp_path, monkeypatch, gateway.url)["training"]
    container = ir["deploymentSpec"]["executors"][f"exec-{run_metrics.REPORT_TASK}"]["container"]
    task = ir["root"]["dag"]["tasks"][run_metrics.REPORT_TASK]
    assert task["inputs"]["parameters"]["created"]["runtimeValue"]["constant"] == \
        "{{$.pipeline_job_create_time_utc}}"
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "HOME": str(tmp_path), **_env({"container": container})}

    def run_exit_task(state: str, created: str, error: dict) -> str:
        out_dir = tmp_path / f"out-{state}"
        out_dir.mkdir()
        executor_input = {
            "inputs": {"parameterValues": {
                "status": {"state": state, "pipelineJobResourceName": "training-x7k2p",
                           "pipelineTaskName": "exit-handler-1", "error": error},
                "created": created}},
            "outputs": {"parameters": {"Output": {"outputFile": str(out_dir / "Output")}},
                        "outputFile": str(out_dir / "executor_output.json")}}
        args = [json.dumps(executor_input) if a == "{{$}}" else a for a in container["args"]]
        proc = subprocess.run([*container["command"], *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads((out_dir / "executor_output.json").read_text())[
            "parameterValues"]["Output"]

    created = datetime.fromtimestamp(time.time() - 600, UTC)
    said = run_exit_task("FAILED", created.isoformat().replace("+00:00", "Z"),
                         {"code": 9, "message": "task validate-op failed"})
    assert said.startswith(f"pushed to {gateway.url}") and "last run failed" in said
    model = load_params(REPO / "params.yaml").model_name()
    facts = _groups(gateway)[("training", model, None)]
    assert _value(facts, "slipway_pipeline_last_run_success") == 0
    took = _value(facts, "slipway_pipeline_run_duration_seconds")
    assert 600 <= took < 700
    # a backend that leaves the creation time unresolved: no duration, and it says so
    said = run_exit_task("SUCCEEDED", "{{$.pipeline_job_create_time_utc}}", {})
    assert "last run succeeded, run duration unknown" in said
    facts = _groups(gateway)[("training", model, None)]
    assert _value(facts, "slipway_pipeline_last_run_success") == 1
    assert _value(facts, "slipway_pipeline_run_duration_seconds") == took  # the earlier one
