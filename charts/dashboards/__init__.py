"""Slipway's Grafana dashboards as code (grafana-foundation-sdk, pinned in pyproject.toml).

Each dashboard is a list of :class:`PanelSpec` (title, kind, PromQL targets, unit, lines)
turned into a Grafana dashboard model by the SDK. ``make dashboards`` (``python -m
charts.dashboards``) writes them to ``charts/slipway-monitoring/dashboards/<uid>.json``, which
the monitoring chart ships as ConfigMaps for the Grafana sidecar; the files are committed and
``tests/deploy/test_dashboards.py`` fails when they differ from this source.

No panel names a datasource: every one uses the ``$datasource`` variable. Inference panels
select ``namespace="$namespace", service="$service"`` (the target labels the serving chart's
ServiceMonitor gives) and, where the series carry it, ``model_version=~"$model_version"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "slipway-monitoring" / "dashboards"
DS = "${datasource}"
SEL = 'namespace="$namespace", service="$service"'
MV = 'model_version=~"$model_version"'
RI = "$__rate_interval"
POD = 'namespace="$namespace", pod=~"$service-.*"'
TRAIN = 'pipeline=~"$pipeline", model_name=~"$model_name"'


@dataclass(frozen=True)
class PanelSpec:
    """One panel: ``targets`` are (PromQL, legend) pairs.

    ``kind``: timeseries | stat | bargauge | statetimeline | table. ``lines``: horizontal
    threshold lines drawn on a time series (value, colour). ``needs``: what must run in the
    cluster for the panel to have data when that is not Slipway itself (the dashboard tests
    list it instead of querying it).
    """

    title: str
    kind: str
    targets: list[tuple[str, str]]
    unit: str = "short"
    w: int = 12
    h: int = 8
    description: str = ""
    lines: list[tuple[float, str]] = field(default_factory=list)
    mappings: dict[str, str] = field(default_factory=dict)
    needs: str = ""


def q(p: float, metric: str, sel: str = SEL, by: str = "le") -> str:
    return f"histogram_quantile({p}, sum by ({by}) (rate({metric}_bucket{{{sel}}}[{RI}])))"


INFERENCE = [
    PanelSpec("Ready replicas", "stat", [
        ('sum(kube_deployment_status_replicas_available{namespace="$namespace", '
         'deployment="$service"})', "available")],
        w=4, h=5, description="Available replicas of the Deployment (kube-state-metrics)."),
    PanelSpec("Pods with a verified model", "stat", [
        (f"sum(slipway_model_ready{{{SEL}}})", "ready")], w=4, h=5,
        description="Pods whose model is loaded and its hashes verified."),
    PanelSpec("Served model versions", "table", [
        (f"count by (model_name, model_version, dataset, framework, estimator) "
         f"(slipway_model_info{{{SEL}, {MV}}})", "{{model_name}}:{{model_version}}")],
        w=16, h=5, description="Model versions being served, with the pods serving each."),
    PanelSpec("Request rate by status", "timeseries", [
        (f"sum by (http_response_code) (rate(bentoml_service_request_total{{{SEL}}}[{RI}]))",
         "{{http_response_code}}")], unit="reqps"),
    PanelSpec("Latency, end to end", "timeseries", [
        (q(p, "bentoml_service_request_duration_seconds"), f"p{int(p * 100)}")
        for p in (0.5, 0.95, 0.99)], unit="s"),
    PanelSpec("Latency of the model call", "timeseries", [
        (q(p, "slipway_inference_duration_seconds"), f"p{int(p * 100)}")
        for p in (0.5, 0.95, 0.99)], unit="s",
        description="One model call: preprocessing and prediction of an adaptive batch."),
    PanelSpec("Invalid requests (4xx) by reason", "timeseries", [
        (f"sum by (reason) (rate(slipway_invalid_requests_total{{{SEL}}}[{RI}]))",
         "{{reason}}")], unit="reqps"),
    PanelSpec("Refused with 503", "timeseries", [
        (f"sum by (reason) (rate(slipway_rejected_requests_total{{{SEL}}}[{RI}]))",
         "{{reason}}")], unit="reqps",
        description="overloaded: the concurrency limit; not_ready: no verified model."),
    PanelSpec("Requests in flight", "timeseries", [
        (f"sum(bentoml_service_request_in_progress{{{SEL}}})", "in flight")]),
    PanelSpec("Batch size (rows per model call)", "timeseries", [
        (q(0.5, "slipway_batch_rows"), "p50"), (q(0.95, "slipway_batch_rows"), "p95"),
        (f"sum(rate(slipway_batch_rows_sum{{{SEL}}}[{RI}])) / "
         f"sum(rate(slipway_batch_rows_count{{{SEL}}}[{RI}]))", "mean")]),
    PanelSpec("Predictions per class", "timeseries", [
        (f'sum by (class) (rate(slipway_predictions_total{{{SEL}, {MV}}}[{RI}]))',
         "{{class}}")], unit="short", description="Predicted rows per second, by class."),
    PanelSpec("Prediction confidence", "timeseries", [
        (q(0.1, "slipway_prediction_confidence", f"{SEL}, {MV}"), "p10"),
        (q(0.5, "slipway_prediction_confidence", f"{SEL}, {MV}"), "p50"),
        (f'sum(rate(slipway_prediction_confidence_bucket{{{SEL}, {MV}, le="0.6"}}[{RI}])) / '
         f"sum(rate(slipway_prediction_confidence_count{{{SEL}, {MV}}}[{RI}]))",
         "share below 0.6")], unit="percentunit",
        description="Probability given to the predicted class."),
    PanelSpec("Input drift (PSI per feature)", "timeseries", [
        (f"max by (feature) (slipway_input_drift_psi{{{SEL}, {MV}}})", "{{feature}}")],
        w=16, lines=[(0.1, "orange"), (0.25, "red")],
        description="Population stability index over the recent window against training. "
                    "Below 0.1 no shift, 0.1-0.25 moderate, above 0.25 (the alert) a shift."),
    PanelSpec("Rows in the drift window", "stat", [
        (f"max(slipway_input_drift_window_rows{{{SEL}, {MV}}})", "rows")], w=8),
    PanelSpec("CPU", "timeseries", [
        (f'sum by (pod) (rate(container_cpu_usage_seconds_total{{{POD}, container="serving"}}'
         f"[{RI}]))", "{{pod}}")], unit="short", description="Cores used (cAdvisor)."),
    PanelSpec("Memory", "timeseries", [
        (f'sum by (pod) (container_memory_working_set_bytes{{{POD}, container="serving"}})',
         "{{pod}}")], unit="bytes", description="Working set (cAdvisor)."),
    PanelSpec("GPU utilisation", "timeseries", [
        (f"avg by (pod, gpu) (DCGM_FI_DEV_GPU_UTIL{{{POD}}})", "{{pod}} gpu {{gpu}}")],
        unit="percent", w=24, needs="NVIDIA DCGM exporter (GPU node pools only)",
        description="Empty without a DCGM exporter (GPU node pools only)."),
]

TRAINING = [
    PanelSpec("Time since the last successful run", "stat", [
        (f"time() - max by (pipeline, model_name) "
         f"(slipway_pipeline_last_success_timestamp_seconds{{{TRAIN}}})",
         "{{pipeline}} {{model_name}}")], unit="s", w=8, h=5,
        description="Since the last run that packaged a model (its package task pushed the "
                    "time). A failed run or a gate rejection leaves it in place."),
    PanelSpec("Last run", "stat", [
        (f"max by (pipeline, model_name) (slipway_pipeline_last_run_success{{{TRAIN}}})",
         "{{pipeline}} {{model_name}}")], w=8, h=5,
        mappings={"1": "succeeded", "0": "failed"},
        description="The last run's final state, pushed by its exit task. A run whose gate "
                    "rejected the model succeeded: see Gate decisions."),
    PanelSpec("Last packaged model", "table", [
        (f"max by (pipeline, model_name, model_version, dataset, framework, estimator) "
         f"(slipway_pipeline_model_info{{{TRAIN}}})", "{{model_version}}")], w=8, h=5),
    PanelSpec("Run duration", "timeseries", [
        (f"slipway_pipeline_run_duration_seconds{{{TRAIN}}}", "{{pipeline}} {{model_name}}")],
        unit="s"),
    PanelSpec("Stage durations (last run)", "bargauge", [
        (f"max by (stage) (slipway_pipeline_stage_duration_seconds{{{TRAIN}}})", "{{stage}}")],
        unit="s",
        description="Each stage's body, as its task pushed it the last time it ran: a task "
                    "reused from the cache pushes nothing. A trial shows the one that ended "
                    "last."),
    PanelSpec("Test metrics against the gate", "timeseries", [
        (f"slipway_pipeline_test_metric{{{TRAIN}}}", "{{metric}}"),
        (f"slipway_pipeline_gate_threshold{{{TRAIN}}}", "gate threshold ({{metric}})")],
        description="The last evaluated model's test metrics; the gate's threshold on its "
                    "metric."),
    PanelSpec("Gate decisions", "statetimeline", [
        (f"slipway_pipeline_gate_passed{{{TRAIN}}}", "{{pipeline}} {{model_name}}")],
        mappings={"1": "passed", "0": "rejected"}),
]

DASHBOARDS = {
    "slipway-inference": ("Slipway / Inference", INFERENCE),
    "slipway-training": ("Slipway / Training", TRAINING),
}


def _variables(uid: str) -> list:
    from grafana_foundation_sdk.builders import dashboard
    from grafana_foundation_sdk.models import dashboard as dm
    from grafana_foundation_sdk.models.common import DataSourceRef

    ds = DataSourceRef(type_val="prometheus", uid=DS)
    on_change = dm.VariableRefresh.ON_TIME_RANGE_CHANGED

    def var(name: str, label: str, query: str, all_: bool = False):
        v = (dashboard.QueryVariable(name).label(label).datasource(ds).query(query)
             .refresh(on_change).sort(dm.VariableSort.ALPHABETICAL_ASC))
        if all_:
            v = v.include_all(True).all_value(".*").multi(True)
        return v

    out = [dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")]
    if uid == "slipway-inference":
        out += [
            var("namespace", "Namespace", "label_values(slipway_model_info, namespace)"),
            var("service", "Service",
                'label_values(slipway_model_info{namespace="$namespace"}, service)'),
            var("model_version", "Model version",
                f"label_values(slipway_model_info{{{SEL}}}, model_version)", all_=True),
        ]
    else:
        out += [
            var("pipeline", "Pipeline",
                "label_values(slipway_pipeline_last_run_timestamp_seconds, pipeline)", all_=True),
            var("model_name", "Model", "label_values(slipway_pipeline_last_run_timestamp_"
                'seconds{pipeline=~"$pipeline"}, model_name)', all_=True),
        ]
    return out


def _panel(spec: PanelSpec, panel_id: int, x: int, y: int):
    from grafana_foundation_sdk.builders import (
        bargauge,
        common,
        dashboard,
        prometheus,
        stat,
        statetimeline,
        table,
        timeseries,
    )
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm
    from grafana_foundation_sdk.models import prometheus as pm
    from grafana_foundation_sdk.models.common import DataSourceRef

    kinds = {"timeseries": timeseries.Panel, "stat": stat.Panel, "bargauge": bargauge.Panel,
             "statetimeline": statetimeline.Panel, "table": table.Panel}
    p = (kinds[spec.kind]().id(panel_id).title(spec.title)
         .datasource(DataSourceRef(type_val="prometheus", uid=DS)).unit(spec.unit)
         .grid_pos(dm.GridPos(h=spec.h, w=spec.w, x=x, y=y)))
    if spec.description:
        p = p.description(spec.description)
    for i, (expr, legend) in enumerate(spec.targets):
        t = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(65 + i))
        if spec.kind == "table":
            t = t.instant().format(pm.PromQueryFormat.TABLE)
        p = p.with_target(t)
    if spec.lines:
        steps = [dm.Threshold(value=None, color="green")]
        steps += [dm.Threshold(value=v, color=c) for v, c in spec.lines]
        p = (p.thresholds(dashboard.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
                          .steps(steps))
             .thresholds_style(common.GraphThresholdsStyleConfig()
                               .mode(cm.GraphThresholdsStyleMode.LINE)))
    if spec.mappings:
        p = p.mappings([dm.ValueMap(options={
            k: dm.ValueMappingResult(text=v, index=i)
            for i, (k, v) in enumerate(spec.mappings.items())})])
    return p


def build(uid: str) -> dict:
    """The dashboard ``uid`` as Grafana's JSON model (a dict)."""
    from grafana_foundation_sdk.builders import dashboard
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    title, specs = DASHBOARDS[uid]
    d = (dashboard.Dashboard(title).uid(uid).tags(["slipway"]).refresh("30s")
         .time("now-1h", "now").timezone("browser"))
    for v in _variables(uid):
        d = d.with_variable(v)
    x = y = row_h = 0
    for i, spec in enumerate(specs, start=1):
        if x + spec.w > 24:
            x, y, row_h = 0, y + row_h, 0
        d = d.with_panel(_panel(spec, i, x, y))
        x, row_h = x + spec.w, max(row_h, spec.h)
    return json.loads(json.dumps(d.build(), cls=JSONEncoder))


def render(uid: str) -> str:
    """The committed text of a dashboard: sorted keys, two-space indent, final newline."""
    return json.dumps(build(uid), indent=2, sort_keys=True) + "\n"


def write_all(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for uid in DASHBOARDS:
        path = out_dir / f"{uid}.json"
        path.write_text(render(uid))
        paths.append(path)
    return paths
