"""The Helm charts rendered by a real helm and checked as a cluster would check them.

No Kubernetes API server can run here, so nothing is installed: every object rendered from
every ``ci/*-values.yaml`` is validated against the published Kubernetes schemas of 1.29 to
1.33 (kubernetes-validate, strict: unknown fields are errors), the Prometheus Operator
objects against the operator's CRD schemas (@kubernetes-models/prometheus-operator, run by
node), every pod spec against the restricted Pod Security Standard (the rules of
https://kubernetes.io/docs/concepts/security/pod-security-standards/ coded below, the
admission controller being unavailable), and the manifests with checkov. ``helm lint
--strict`` runs on every values file, and values.schema.json must refuse bad values with a
message naming the field.

    make deploy-tools && .venv/bin/python -m pytest tests/deploy/test_charts.py
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import (
    MONITORING,
    NAMESPACE,
    RELEASE,
    SERVING,
    TOOLS,
    ci_values,
    helm_args,
    kinds,
    render,
    render_error,
    run_helm,
    tool,
)

K8S_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
CI = ci_values()
CI_IDS = [f"{c.name}/{f.name}" for c, f in CI]
# Checkov checks skipped on purpose; the chart README's table explains each. Keep in step.
CHECKOV_SKIPS: dict[str, str] = {}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {i: render(c, [f]) for i, (c, f) in zip(CI_IDS, CI, strict=True)}


def test_both_charts_render_with_no_values_at_all():
    """What the README promises from a fresh clone: `helm template charts/<chart>`."""
    for chart in (SERVING, MONITORING):
        proc = run_helm("template", str(chart))
        assert "kind:" in proc.stdout


@pytest.mark.parametrize("chart,values", CI, ids=CI_IDS)
def test_helm_lint_strict(chart, values):
    proc = run_helm("lint", "--strict", str(chart), *helm_args([values]),
                    "--namespace", NAMESPACE, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_for_kubernetes(rendered, version):
    import kubernetes_validate

    checked = 0
    for values, objs in rendered.items():
        for obj in objs:
            if obj["kind"] in OPERATOR_KINDS:
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{values}: {obj['kind']} {obj['metadata']['name']} is not valid "
                            f"for Kubernetes {version}: {err.message} at {list(err.path)}")
            checked += 1
    assert checked >= 10


def test_kubernetes_validate_catches_a_bad_object(rendered):
    """The validation above can fail: an unknown field is refused in strict mode."""
    import kubernetes_validate

    deployment = copy.deepcopy(kinds(rendered["slipway-serving/default-values.yaml"])[
        "Deployment"][0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["x"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.33.0", strict=True)


def pod_of(rendered, values: str) -> dict:
    """The pod spec of the serving Deployment rendered from ``ci/<values>``."""
    deployment = kinds(rendered[f"slipway-serving/{values}"])["Deployment"][0]
    return deployment["spec"]["template"]["spec"]


def validate_operator_objects(objs: list[dict]) -> list[str]:
    node = tool("node")
    modules = TOOLS / "node_modules"
    if not (modules / "@kubernetes-models" / "prometheus-operator").is_dir():
        pytest.skip("needs @kubernetes-models/prometheus-operator: run `make deploy-tools`")
    proc = subprocess.run([node, str(Path(__file__).with_name("validate_operator_objects.js"))],
                          input=json.dumps(objs), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NODE_PATH": str(modules)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_servicemonitor_and_prometheusrule_shapes(rendered):
    objs = [o for values in rendered.values() for o in values if o["kind"] in OPERATOR_KINDS]
    assert {o["kind"] for o in objs} == OPERATOR_KINDS
    errors = validate_operator_objects(objs)
    bad = {f"{o['kind']} {o['metadata']['name']}": e
           for o, e in zip(objs, errors, strict=True) if e}
    assert not bad, bad
    broken = copy.deepcopy(next(o for o in objs if o["kind"] == "ServiceMonitor"))
    broken["spec"]["endpoints"][0]["honorLabels"] = "yes"
    assert "honorLabels must be boolean" in validate_operator_objects([broken])[0]


def test_monitoring_objects_carry_the_release_label_kube_prometheus_stack_selects_on(rendered):
    for values in ("slipway-serving/monitoring-values.yaml",
                   "slipway-monitoring/kube-prometheus-stack-values.yaml"):
        for obj in rendered[values]:
            if obj["kind"] in OPERATOR_KINDS:
                assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", obj


def test_servicemonitors_scrape_the_right_ports(rendered):
    sm = kinds(rendered["slipway-serving/monitoring-values.yaml"])["ServiceMonitor"][0]
    service = kinds(rendered["slipway-serving/monitoring-values.yaml"])["Service"][0]
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    push = kinds(rendered["slipway-monitoring/kube-prometheus-stack-values.yaml"])[
        "ServiceMonitor"][0]
    assert push["spec"]["endpoints"][0]["honorLabels"] is True
    assert push["spec"]["namespaceSelector"]["matchNames"] == ["monitoring"]


# --- restricted Pod Security Standard --------------------------------------------------

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict) -> list[str]:
    """Where a pod spec breaks the restricted Pod Security Standard (baseline included)."""
    bad = []
    psc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            bad.append(f"{key} is true")
    for vol in pod.get("volumes") or []:
        kind = next(k for k in vol if k != "name")
        if kind not in ALLOWED_VOLUMES:
            bad.append(f"volume {vol['name']} is a {kind}")
    if (psc.get("seLinuxOptions") or {}).get("type") not in (None, "", "container_t",
                                                            "container_init_t", "container_kvm_t"):
        bad.append("pod seLinuxOptions.type")
    for c in [*(pod.get("initContainers") or []), *pod["containers"]]:
        sc = c.get("securityContext") or {}
        where = f"container {c['name']}"
        if sc.get("privileged"):
            bad.append(f"{where} is privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{where}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{where}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{where}: adds capabilities {caps['add']}")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            bad.append(f"{where}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            bad.append(f"{where}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        if sc.get("procMount") not in (None, "Default"):
            bad.append(f"{where}: procMount")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            bad.append(f"{where}: hostPort")
        if sc.get("readOnlyRootFilesystem") is not True:  # Slipway's own rule, beyond the PSS
            bad.append(f"{where}: the root filesystem must be read-only")
    for sysctl in psc.get("sysctls") or []:
        bad.append(f"sysctl {sysctl['name']}")
    return bad


def pod_specs(rendered) -> list[tuple[str, dict]]:
    return [(f"{values}: {o['kind']} {o['metadata']['name']}", o["spec"]["template"]["spec"])
            for values, objs in rendered.items() for o in objs
            if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def test_every_pod_spec_meets_the_restricted_pod_security_standard(rendered):
    pods = pod_specs(rendered)
    assert len(pods) == 3  # one Deployment per serving values file
    for where, pod in pods:
        assert restricted_violations(pod) == [], where


@pytest.mark.parametrize("mutate,problem", [
    (lambda p: p["securityContext"].pop("seccompProfile"), "seccompProfile"),
    (lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
     "allowPrivilegeEscalation"),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
     "adds capabilities"),
    (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    (lambda p: (p["securityContext"].update(runAsNonRoot=False),
                p["containers"][0]["securityContext"].pop("runAsNonRoot")), "runAsNonRoot"),
])
def test_the_pod_security_check_catches_violations(rendered, mutate, problem):
    pod = copy.deepcopy(pod_specs(rendered)[0][1])
    mutate(pod)
    assert any(problem in v for v in restricted_violations(pod))


def test_pods_write_only_to_emptydirs_and_get_no_service_account_token(rendered):
    objs = kinds(rendered["slipway-serving/monitoring-values.yaml"])
    pod = objs["Deployment"][0]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert objs["ServiceAccount"][0]["automountServiceAccountToken"] is False
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name, mount in mounts.items():
        assert "emptyDir" in volumes[name] or mount.get("readOnly") is True, name


# --- what the serving chart promises -----------------------------------------------------

def test_image_by_digest_and_tag_fallback():
    digest = "sha256:" + "a" * 64
    pod = kinds(render(SERVING, sets=[f"image.digest={digest}", "image.tag=ignored"]))[
        "Deployment"][0]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == f"localhost/slipway-serving@{digest}"
    pod = kinds(render(SERVING, sets=["image.tag=abc123"]))["Deployment"][0]["spec"][
        "template"]["spec"]
    assert pod["containers"][0]["image"] == "localhost/slipway-serving:abc123"


def test_probes_prestop_and_grace_period(rendered):
    pod = pod_of(rendered, "default-values.yaml")
    c = pod["containers"][0]
    assert c["startupProbe"]["httpGet"]["path"] == "/livez"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert sleep > 0 and pod["terminationGracePeriodSeconds"] > sleep + 20


def test_api_token_is_a_mounted_secret_file(rendered):
    pod = pod_of(rendered, "monitoring-values.yaml")
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["SLIPWAY_API_TOKEN_FILE"]["value"] == "/var/run/secrets/slipway/token"
    assert "SLIPWAY_API_TOKEN" not in env
    vol = next(v for v in pod["volumes"] if v["name"] == "api-token")
    assert vol["secret"]["secretName"] == "slipway-api-token"


def test_gpu_node_pool_only_when_asked(rendered):
    gpu = pod_of(rendered, "gpu-values.yaml")
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["runtimeClassName"] == "nvidia"
    assert gpu["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu"
    cpu = pod_of(rendered, "default-values.yaml")
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "runtimeClassName" not in cpu and "nodeSelector" not in cpu


def test_default_objects(rendered):
    objs = kinds(rendered["slipway-serving/default-values.yaml"])
    assert set(objs) == {"Deployment", "Service", "ServiceAccount", "HorizontalPodAutoscaler",
                         "PodDisruptionBudget", "NetworkPolicy"}
    assert objs["HorizontalPodAutoscaler"][0]["apiVersion"] == "autoscaling/v2"
    assert "replicas" not in objs["Deployment"][0]["spec"]  # the HPA owns it
    for o in (o for group in objs.values() for o in group):
        assert o["metadata"]["namespace"] == NAMESPACE
    policy = kinds(rendered["slipway-serving/monitoring-values.yaml"])["NetworkPolicy"][0]
    assert len(policy["spec"]["ingress"][0]["from"]) == 2


def test_dashboards_ship_as_configmaps_for_the_grafana_sidecar(rendered):
    maps = kinds(rendered["slipway-monitoring/kube-prometheus-stack-values.yaml"])["ConfigMap"]
    shipped = sorted((MONITORING / "dashboards").glob("*.json"))
    assert len(maps) == len(shipped) >= 2
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "ML / Slipway"
        (name, text), = cm["data"].items()
        assert json.loads(text) == json.loads((MONITORING / "dashboards" / name).read_text())


# --- values.schema.json and the template's own checks refuse bad values ----------------

@pytest.mark.parametrize("sets,message", [
    (["image.digest=sha256:abc"], "image.digest: Does not match pattern"),
    (["image.pullPolicy=Sometimes"], "image.pullPolicy: image.pullPolicy must be one of"),
    (["replicaCount=0"], "replicaCount: Must be greater than or equal to 1"),
    (["securityContext.allowPrivilegeEscalation=true"],
     "securityContext.allowPrivilegeEscalation"),
    (["securityContext.readOnlyRootFilesystem=false"],
     "securityContext.readOnlyRootFilesystem"),
    (["podSecurityContext.runAsNonRoot=false"], "podSecurityContext.runAsNonRoot"),
    (["podSecurityContext.runAsUser=0"],
     "podSecurityContext.runAsUser: Must be greater than or equal to 1"),
    (["containerPort=80"], "containerPort: Must be greater than or equal to 1024"),
    (["gpu.resourceName=gpu"], "gpu.resourceName: Does not match pattern"),
    (["prometheusRule.alerts.inputDrift.for=5"],
     "prometheusRule.alerts.inputDrift.for: Invalid type"),
    (["prometheusRule.alerts.latencyP99.severity=page"],
     "prometheusRule.alerts.latencyP99.severity"),
    (["json:prometheusRule.slo=1.5"], "prometheusRule.slo: Must be less than 1"),
    (["json:prometheusRule.alerts.overloadRatio.threshold=5"],
     "prometheusRule.alerts.overloadRatio.threshold: Must be less than or equal to 1"),
    (["env.OTHER_VAR=1"], 'env: Property name of "OTHER_VAR" does not match'),
    (["replicas=3"], "Additional property replicas is not allowed"),
    (["terminationGracePeriodSeconds=20"], "terminationGracePeriodSeconds (20) must be longer"),
])
def test_bad_serving_values_are_refused_with_a_message(sets, message):
    assert message in render_error(SERVING, sets)


@pytest.mark.parametrize("sets,message", [
    (["prometheusRule.alerts.trainingStale.days=0"],
     "prometheusRule.alerts.trainingStale.days: Must be greater than or equal to 1"),
    (["dashboards.sidecarLabelValue=1"], "dashboards.sidecarLabelValue: Invalid type"),
    (["pushgateway.serviceMonitor.interval=often"], "pushgateway.serviceMonitor.interval"),
    (["grafana.enabled=true"], "Additional property grafana is not allowed"),
])
def test_bad_monitoring_values_are_refused_with_a_message(sets, message):
    assert message in render_error(MONITORING, sets)


# --- checkov ----------------------------------------------------------------------------

def checkov(directory: Path) -> list[dict]:
    exe = tool("checkov", TOOLS / "checkov-venv" / "bin" / "checkov")
    args = [exe, "--framework", "kubernetes", "--skip-download", "-d", str(directory),
            "--quiet", "--compact", "-o", "json"]
    if CHECKOV_SKIPS:
        args += ["--skip-check", ",".join(CHECKOV_SKIPS)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip(), proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    return out if isinstance(out, list) else [out]


@pytest.mark.slow
def test_checkov_passes_every_rendered_manifest(tmp_path):
    """checkov (about 20 s) on every ci render; the default render by tag is caught."""
    for i, (chart, values) in enumerate(CI):
        (tmp_path / f"{i}-{chart.name}-{values.name}").write_text(
            run_helm("template", RELEASE, str(chart), "-n", NAMESPACE, "-f", str(values)).stdout)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "by-tag.yaml").write_text(run_helm("template", RELEASE, str(SERVING), "-n", NAMESPACE,
                                              "--set", "image.tag=latest").stdout)
    shutil.move(str(bad), str(tmp_path.parent / f"{tmp_path.name}-bad"))
    reports = checkov(tmp_path)
    failed = [(f["check_id"], f["resource"]) for r in reports
              for f in r["results"]["failed_checks"]]
    assert failed == [], failed
    assert sum(r["summary"]["passed"] for r in reports) > 100
    readme = (SERVING / "README.md").read_text()
    for check in CHECKOV_SKIPS:
        assert check in readme
    caught = checkov(tmp_path.parent / f"{tmp_path.name}-bad")
    ids = {f["check_id"] for r in caught for f in r["results"]["failed_checks"]}
    assert "CKV_K8S_43" in ids  # image not by digest
