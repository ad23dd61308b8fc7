"""Pipeline run metrics: the pipeline itself pushes them to a Prometheus Pushgateway.

When a Pushgateway is configured at compile time (``monitoring.pushgateway`` in
params.yaml, or the environment variable ``SLIPWAY_PUSHGATEWAY``, which wins; empty: none),
the ``training`` and ``tuning`` pipelines are built with :func:`reported`: every task gets
the Pushgateway's URL and the group (pipeline name, model name) as environment variables,
and the whole body runs inside ``dsl.ExitHandler`` of an exit task (``report_op``). So the
same compiled pipeline pushes from its own tasks wherever it runs: kfp.local
(``python -m pipelines run``) or a Kubeflow cluster (``python -m pipelines compile``,
``upload``, ``submit``, ``schedule``). Without a Pushgateway the pipelines compile exactly
as before: no exit task, no extra environment.

What is pushed, by whom (:data:`components.pushgateway.METRICS`), under the group
``job="slipway_pipeline", pipeline=<name>, model_name=<model>``:

* each stage, from its body (``components.kfp_support.reporting_errors``), when it ends,
  succeeded or not: ``slipway_pipeline_stage_duration_seconds`` - the wall time of its
  body (not the process start or kfp's executor around it), in a group of its own that
  adds ``stage=<stage key>`` (a POST replaces every series of a metric name within its
  group: one shared group would keep only the last stage's time). A ParallelFor stage
  (``trial``) pushes once per iteration into the same group: it holds the iteration that
  ended last. A task served from the cache does not run, so it pushes nothing and the
  series keeps the time of the run that last ran it;
* evaluate: ``slipway_pipeline_test_metric{metric}`` - the evaluated model's test metrics;
* gate: ``slipway_pipeline_gate_passed`` (1/0) and ``slipway_pipeline_gate_threshold{metric}``;
* package (only when the gate passed and packaging succeeded):
  ``slipway_pipeline_last_success_timestamp_seconds`` - when the last successful run packaged
  its model (a failed or rejected run leaves it in place, which is what the "training
  stale" alert reads) and ``slipway_pipeline_model_info{model_version, dataset,
  dataset_md5, framework, estimator}`` - 1, for that model version;
* the exit task, after every other task, whatever their outcome:
  ``slipway_pipeline_last_run_timestamp_seconds`` (when the run ended),
  ``slipway_pipeline_last_run_success`` (1 if the run's final state is SUCCEEDED, else 0;
  a gate rejection is a successful run, ``slipway_pipeline_gate_passed`` 0 says it) and
  ``slipway_pipeline_run_duration_seconds`` (from the pipeline job's creation,
  ``dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER``, which a KFP backend resolves when it
  creates the run; kfp.local 2.17 fails on it, so ``pipelines/local.py`` resolves it the
  same way before it starts the run, :func:`created_now`; a backend that leaves it
  unresolved gets no duration, and the exit task says so).

Every push is a POST (``pushadd``): metrics a run does not reach (the gate, when the run
failed before it) keep the value of an earlier run. No label carries a run id, so the number
of series stays bounded: one group per pipeline and model, plus one per stage. The group's
``model_name`` is the compile-time value (``params.model_name()``) carried in the tasks'
environment: a run that overrides the ``model_name`` pipeline parameter still pushes under
the compiled one. A push that fails prints a warning on stderr and never fails the task or
the run. The local CLI prints the exit task's answer as its summary's ``run metrics`` line.

    SLIPWAY_PUSHGATEWAY=http://127.0.0.1:9091 python -m pipelines run training
    python -m pipelines compile --set monitoring.pushgateway=http://prometheus-pushgateway.monitoring:9091
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from datetime import UTC
from typing import Any

from components import pushgateway

ENV_VAR = pushgateway.URL_ENV
JOB = pushgateway.JOB
REPORT_TASK = "report-op"  # kfp's name for the exit task (its folder in a local run)
REPORT_TITLE = "Push run metrics"  # its display name


def pushgateway_url(configured: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The Pushgateway to push to: ``SLIPWAY_PUSHGATEWAY`` if set (empty: none), else the
    params.yaml value."""
    environ = os.environ if environ is None else environ
    if ENV_VAR in environ:
        value = environ[ENV_VAR].strip()
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"{ENV_VAR}={value!r} is not an http(s) URL: write it as "
                             "http://<host>:9091, or leave it empty for no push")
        return value or None
    return configured or None


def task_env(url: str, pipeline: str, model_name: str) -> dict[str, str]:
    """The environment every task of a monitored pipeline gets."""
    return {pushgateway.URL_ENV: url, pushgateway.PIPELINE_ENV: pipeline,
            pushgateway.MODEL_ENV: model_name}


@contextlib.contextmanager
def reported(params: Any, pipeline: str, wiring: Any) -> Iterator[None]:
    """Inside a ``@dsl.pipeline`` function: the tasks added within are monitored when a
    Pushgateway is configured (module docstring); otherwise nothing changes.

    Args:
        params: the settings (``monitoring.pushgateway``, the model name, the images).
        pipeline: the pipeline's name (the ``pipeline`` label).
        wiring: the pipeline's ``pipelines.training.Wiring``: its tasks get the
            environment when the block ends.
    """
    try:
        url = pushgateway_url(params.monitoring.pushgateway)
    except ValueError as err:
        from components.errors import SlipwayError

        raise SlipwayError(str(err), f"or unset {ENV_VAR} to use monitoring.pushgateway "
                                     "from params.yaml") from None
    if url is None:
        yield
        return
    from kfp import dsl

    from components.kfp_components import report_op
    from pipelines import profiles
    from pipelines.training import image_for

    env = task_env(url, pipeline, params.model_name())
    report = report_op(created=dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER)
    report.set_display_name(REPORT_TITLE)
    report.set_container_image(image_for("stages", params))
    report.set_caching_options(False)
    profiles.apply(report, params.kfp.profile_for("report")[1])
    with dsl.ExitHandler(report, name="monitored-run"):
        yield
    for task in {id(t): t for t in [report, *wiring.tasks.values()]}.values():
        for name, value in env.items():
            task.set_env_variable(name, value)


@contextlib.contextmanager
def created_now(pipeline_spec: Any, now: Any = None) -> Iterator[int]:
    """Resolve ``dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER`` in a pipeline spec to the
    time the run is created (now, RFC 3339 UTC), as a KFP backend does, for the length of
    the block; then put the placeholder back. For kfp.local, which does not resolve it
    (2.17 fails on it). Yields how many task inputs were resolved."""
    from datetime import datetime

    from kfp import dsl

    placeholder = dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER
    now = now or datetime.now(UTC)
    stamp = now.isoformat(timespec="microseconds").replace("+00:00", "Z")
    dags = [pipeline_spec.root.dag, *(c.dag for c in pipeline_spec.components.values()
                                      if c.HasField("dag"))]
    found = [spec.runtime_value.constant for dag in dags for task in dag.tasks.values()
             for spec in task.inputs.parameters.values()
             if spec.HasField("runtime_value")
             and spec.runtime_value.constant.string_value == placeholder]
    for value in found:
        value.string_value = stamp
    try:
        yield len(found)
    finally:
        for value in found:
            value.string_value = placeholder
