"""The multi-node TrainJob (components/trainers/trainjob.py, checked by pipelines/trainjob.py):
its manifest, schema check and watcher.

No Kubernetes API server (and so no Kubeflow Trainer) can run here. The manifest is checked
against the TrainJob CRD's published OpenAPI schema (Kubeflow Trainer v2.3.0, trimmed:
pipelines/schemas/trainjob.v1alpha1.json), and the watcher is run on status objects written
in the shape that schema gives a TrainJob's status (each is checked against it too). The last
test stands a fake CustomObjectsApi in for the API server, whose "nodes" are real torchrun
processes with the PET_* variables the Trainer's torch runtime sets: two nodes rendezvous
and train through components.trainers.distributed, as on the cluster.

    .venv/bin/python -m pytest tests/unit/test_trainjob.py
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.config import DistributedParams, Profile, load_params
from components.errors import SlipwayError
from components.trainers import trainjob
from components.trainers.trainjob import NodeSpec
from pipelines import trainjob as checks

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
TWO_NODES = DistributedParams(nnodes=2, nproc_per_node=1)


def _manifest(profile: Profile, distributed: DistributedParams = TWO_NODES, **kw):
    args = {"name": "slipway-train-1a2b", "namespace": "team-a", "image": "reg/slipway:abc",
            "node": NodeSpec.from_profile(profile), "distributed": distributed,
            "job_dir": "/kfp-workspace/slipway-train-1a2b", "workspace_claim": "ws",
            "workspace_mount": "/kfp-workspace", **kw}
    return trainjob.trainjob_manifest(**args)


def _pod(manifest):
    patch = manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]
    return patch["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


# ----------------------------------------------------------------------------- manifest

@pytest.mark.parametrize("name", sorted(PARAMS.kfp.profiles))
def test_every_profile_gives_a_manifest_the_schema_accepts(name):
    profile = PARAMS.kfp.profiles[name]
    manifest = _manifest(profile)
    checks.validate_manifest(manifest)
    trainer = manifest["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 1
    assert trainer["command"][:3] == ["torchrun", "--max-restarts", "0"]
    assert trainer["command"][-1] == "/kfp-workspace/slipway-train-1a2b"
    pod = _pod(manifest)
    assert pod.get("nodeSelector", {}) == profile.node_selector
    assert len(pod.get("tolerations", [])) == len(profile.tolerations)
    limits = trainer.get("resourcesPerNode", {}).get("limits", {})
    if profile.wants_gpu:
        assert limits[profile.accelerator_type] == profile.accelerator_count
        assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    assert limits.get("cpu") == profile.cpu_limit


def test_gpu_profile_fields_land_where_the_runtime_reads_them():
    manifest = _manifest(PARAMS.kfp.profiles["gpu-h100"])
    pod = _pod(manifest)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    assert manifest["spec"]["trainer"]["resourcesPerNode"] == {
        "requests": {"cpu": "16", "memory": "128Gi"},
        "limits": {"cpu": "24", "memory": "200Gi", "nvidia.com/gpu": 1}}
    assert manifest["spec"]["runtimeRef"]["name"] == "torch-distributed"


def test_auto_processes_leave_the_count_to_the_runtime():
    manifest = _manifest(Profile(), DistributedParams(nnodes=3, nproc_per_node="auto"))
    checks.validate_manifest(manifest)
    assert "numProcPerNode" not in manifest["spec"]["trainer"]


@pytest.mark.parametrize("mutate,match", [
    (lambda m: m["spec"]["trainer"].update(numNodes="two"),
     r"spec\.trainer\.numNodes: 'two' is not of type 'integer'"),
    # Trainer v2.0's field, gone since v2.2: the schema of the version Slipway targets refuses it.
    (lambda m: m["spec"].update(podSpecOverrides=[]),
     r"spec: Additional properties are not allowed \('podSpecOverrides'"),
    (lambda m: m["spec"].pop("runtimeRef"), r"spec: 'runtimeRef' is a required property"),
    (lambda m: _pod(m)["containers"][0].update(resources={}),
     r"spec\.template\.spec\.containers\.0: Additional properties are not allowed "
     r"\('resources'"),
])
def test_the_schema_refuses_a_wrong_manifest(mutate, match):
    manifest = _manifest(PARAMS.kfp.profiles["gpu-t4"])
    mutate(manifest)
    with pytest.raises(SlipwayError, match=r"does not fit the CRD's schema: .*" + match):
        checks.validate_manifest(manifest)


@pytest.mark.parametrize("kw,match", [
    ({"name": "Slipway_Train"}, "is not a DNS label"),
    ({"name": "x" * 41}, "is not a DNS label"),
    ({"job_dir": "/elsewhere/fit"}, "is not under the workspace mount"),
])
def test_bad_names_and_paths_are_refused(kw, match):
    with pytest.raises(SlipwayError, match=match):
        _manifest(Profile(), **kw)


def test_committed_schema_is_the_trim_of_the_crd_schema():
    """The committed file is what trim_crd_schema makes with today's KEEP (trimming it again
    changes nothing), and it names its source."""
    committed = json.loads(checks.SCHEMA.read_text())
    source = committed.pop("$comment")
    assert "kubeflow/trainer tag v2.3.0" in source and "trainer.kubeflow.org_trainjobs" in source
    crd = {"spec": {"versions": [{"name": "v1alpha1",
                                  "schema": {"openAPIV3Schema": copy.deepcopy(committed)}}]}}
    assert checks.trim_crd_schema(crd) == committed


# ------------------------------------------------------------------------------ watcher

def _job(status):
    job = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
           "metadata": {"name": "slipway-train-1a2b"},
           "spec": {"runtimeRef": {"name": "torch-distributed"}}}
    return {**job, "status": status} if status else job  # no status before the controller's


def _cond(kind, reason, message, status="True"):
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-02T10:00:00Z"}


def _nodes(active=0, ready=0, succeeded=0, failed=0):
    return [{"name": "node", "active": active, "ready": ready, "succeeded": succeeded,
             "failed": failed, "suspended": 0}]


CREATED = _cond("Created", "JobSetCreated", "TrainJob is created")
RUNNING = [
    None,
    {"conditions": [CREATED]},
    {"conditions": [CREATED], "jobsStatus": _nodes(active=2)},
    {"conditions": [CREATED], "jobsStatus": _nodes(active=2, ready=2),
     "trainerStatus": {"progressPercentage": 40, "estimatedRemainingSeconds": 95,
                       "metrics": [{"name": "loss", "value": "0.31"}],
                       "lastUpdatedTime": "2026-12-02T10:01:00Z"}},
]
COMPLETE = {"conditions": [CREATED, _cond("Complete", "JobSetCompleted",
                                          "jobset completed successfully")],
            "jobsStatus": _nodes(succeeded=2)}
FAILED = {"conditions": [CREATED, _cond("Failed", "JobSetFailed",
                                        "jobset failed: node-1 exited with code 137")],
          "jobsStatus": _nodes(active=1, failed=1)}


def _reader(statuses):
    seq = iter(statuses)
    last = {}

    def read():
        nonlocal last
        last = next(seq, last)
        return _job(last)
    return read


def test_recorded_statuses_fit_the_crd_schema():
    for status in [*RUNNING[1:], COMPLETE, FAILED]:
        checks.validate_manifest(_job(status))


def test_watcher_reports_progress_and_returns_on_complete():
    lines = []
    status = trainjob.watch("j", _reader([*RUNNING, RUNNING[-1], COMPLETE]), report=lines.append,
                            sleep=lambda s: None)
    assert status == COMPLETE
    assert lines == [
        "TrainJob j: pending",
        "TrainJob j: Created",
        "TrainJob j: Created; node: 2 active",
        "TrainJob j: Created; node: 2 active, 2 ready; 40% (about 95 s left); loss 0.31",
        "TrainJob j: Created, Complete; node: 2 succeeded",
    ]  # the repeated status is not reported twice


def test_watcher_fails_the_task_when_the_job_fails():
    with pytest.raises(SlipwayError, match=r"TrainJob j failed \(JobSetFailed\): jobset failed: "
                                           "node-1 exited with code 137") as err:
        trainjob.watch("j", _reader([*RUNNING, FAILED]), report=lambda s: None,
                       sleep=lambda s: None)
    assert "resume from the last checkpoint" in err.value.fix


def test_watcher_ignores_conditions_that_are_not_true():
    not_yet = {"conditions": [CREATED, _cond("Complete", "x", "y", status="False")]}
    assert trainjob.watch("j", _reader([not_yet, COMPLETE]), report=lambda s: None,
                          sleep=lambda s: None) == COMPLETE


def test_watcher_gives_up_after_its_timeout():
    now = iter(range(0, 1000, 10))
    with pytest.raises(SlipwayError, match="did not finish within 30 s"):
        trainjob.watch("j", _reader(RUNNING), timeout_s=30, report=lambda s: None,
                       sleep=lambda s: None, clock=lambda: next(now))


# ----------------------------------------------- the whole path, nodes as local processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalNodesApi:
    """Stands in for the Kubernetes API server's CustomObjectsApi (none can run here):
    creating a TrainJob starts its nodes as local processes running the manifest's command,
    with the PET_* variables the Trainer's torch runtime gives every node; reading it
    reports their state as a TrainJob status (checked against the CRD schema)."""

    def __init__(self, fail_node: int | None = None) -> None:
        self.procs: list[subprocess.Popen] = []
        self.created: dict | None = None
        self.deleted = False
        self.fail_node = fail_node

    def create_namespaced_custom_object(self, group, version, namespace, plural, body,
                                        field_validation=None):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        assert field_validation == "Strict"
        checks.validate_manifest(body)  # as the API server checks it against the CRD
        self.created = body
        trainer = body["spec"]["trainer"]
        command = [sys.executable, "-m", "torch.distributed.run", *trainer["command"][1:]]
        port = _free_port()
        for rank in range(trainer["numNodes"]):
            env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                   "PET_NNODES": str(trainer["numNodes"]), "PET_NODE_RANK": str(rank),
                   "PET_NPROC_PER_NODE": str(trainer.get("numProcPerNode", 1)),
                   "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
            if rank == self.fail_node:  # a node whose program cannot start
                command = [*command[:-3], "-m", "no.such.module"]
            # A session of its own: deleting the job ends the node's workers with it.
            self.procs.append(subprocess.Popen(command, env=env, cwd=REPO,
                                               start_new_session=True))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        codes = [p.poll() for p in self.procs]
        nodes = {"active": sum(c is None for c in codes),
                 "succeeded": sum(c == 0 for c in codes),
                 "failed": sum(c not in (None, 0) for c in codes)}
        conditions = [CREATED]
        if nodes["failed"]:
            conditions.append(_cond("Failed", "JobSetFailed", f"{nodes['failed']} node(s) "
                                    "failed"))
        elif nodes["succeeded"] == len(codes):
            conditions.append(_cond("Complete", "JobSetCompleted", "all nodes succeeded"))
        job = {**self.created, "status": {"conditions": conditions,
                                          "jobsStatus": _nodes(ready=nodes["active"], **nodes)}}
        checks.validate_manifest(job)
        return job

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted = True
        for p in self.procs:  # torchrun ends its workers (own sessions) on SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = (data.data / 16).astype(np.float32), data.target.astype(np.int64)
    return x[:600], y[:600], x[1500:], y[1500:]


HP = {"hidden": [32], "epochs": 3, "patience": 3, "batch_size": 32, "lr": 5e-3, "dropout": 0.0}


@pytest.mark.slow
def test_two_nodes_train_the_model_of_one_process(tmp_path):
    from components.trainers.torch import TorchTrainer

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    x, y, xv, yv = _digits()
    api = LocalNodesApi()
    fit = trainjob.cluster_fit(workspace=tmp_path, workspace_claim="ws",
                               name="slipway-train-1a2b", namespace="team-a",
                               image="reg/slipway:abc", node=NodeSpec(),
                               distributed=TWO_NODES, api=api, poll_s=0.2)
    two = fit(TorchTrainer("classification", "mlp", HP, 3, checkpoint_dir="unused"),
              x, y, xv, yv)
    assert api.created["spec"]["trainer"]["numNodes"] == 2 and not api.deleted
    # In the workspace, under the local checkpoint folder's name (its data + settings key).
    assert (tmp_path / "checkpoints" / "unused" / "checkpoint.safetensors").is_file()
    one = TorchTrainer("classification", "mlp", HP, 3)
    one.fit(x, y, xv, yv)
    assert "x 2 processes (gloo)" in two.device
    np.testing.assert_allclose(two.history["val_loss"], one.history["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(two.predict_proba(xv), one.predict_proba(xv), atol=1e-4)


@pytest.mark.slow
def test_a_failed_node_fails_the_task_and_the_job_is_deleted(tmp_path):
    from components.trainers.torch import TorchTrainer

    x, y, xv, yv = _digits()
    api = LocalNodesApi(fail_node=1)
    fit = trainjob.cluster_fit(workspace=tmp_path, workspace_claim="ws",
                               name="slipway-train-1a2b", namespace="team-a",
                               image="reg/slipway:abc", node=NodeSpec(),
                               distributed=TWO_NODES, api=api, poll_s=0.2, timeout_s=300)
    with pytest.raises(SlipwayError, match="the distributed fit failed: TrainJob "
                                           r"slipway-train-1a2b failed \(JobSetFailed\)"):
        fit(TorchTrainer("classification", "mlp", HP, 3), x, y, xv, yv)
    assert api.deleted


# ------------------------------------- what kfp forwards to the task, and the task's body

# A dsl.TaskConfig as KFP's driver hands it to a task compiled by pipelines/training.py with
# nnodes > 1 (backend/src/v2/driver: initPodSpecPatch, extendPodSpecPatch, getWorkspaceMount
# marshal corev1 ResourceRequirements, Tolerations, EnvVars and the workspace Volume to
# JSON: quantities as strings). Written from the driver's code, not taken from a cluster.
RECORDED_TASK_CONFIG = {
    "resources": {"limits": {"cpu": "24", "memory": "200Gi", "nvidia.com/gpu": "1"},
                  "requests": {"cpu": "16", "memory": "128Gi"}},
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "env": [{"name": "SLIPWAY_IMAGE", "value": "reg/slipway-torch:abc"},
            {"name": "SLIPWAY_CODE_VERSION", "value": "0123456789abcdef"},
            {"name": "AWS_SECRET_ACCESS_KEY",
             "valueFrom": {"secretKeyRef": {"name": "dvc-remote",
                                            "key": "AWS_SECRET_ACCESS_KEY"}}}],
    "volumes": [{"name": "kfp-workspace",
                 "persistentVolumeClaim": {"claimName": "training-x7k2p-kfp-workspace"}}],
    "volumeMounts": [{"name": "kfp-workspace", "mountPath": "/kfp-workspace"}],
}


def _task_config(recorded=RECORDED_TASK_CONFIG, **changes):
    from kfp import dsl

    value = {**recorded, **changes}
    return dsl.TaskConfig(affinity=value.get("affinity"), tolerations=value.get("tolerations"),
                          node_selector=value.get("nodeSelector"), env=value.get("env"),
                          volumes=value.get("volumes"), volume_mounts=value.get("volumeMounts"),
                          resources=value.get("resources"))


def test_the_forwarded_profile_makes_the_manifest_of_the_profile():
    """What kfp forwards of the gpu-h100 profile gives the nodes what the profile says."""
    forwarded = NodeSpec.from_task_config(_task_config(), shm_size="32Gi")
    profile = PARAMS.kfp.profiles["gpu-h100"]
    assert forwarded.wants_gpu
    assert forwarded.env == {"SLIPWAY_IMAGE": "reg/slipway-torch:abc",
                             "SLIPWAY_CODE_VERSION": "0123456789abcdef"}  # no Secret values
    claim = trainjob.workspace_claim(_task_config(), "/kfp-workspace")
    assert claim == "training-x7k2p-kfp-workspace"
    manifest = _manifest(profile, node=forwarded, workspace_claim=claim)
    checks.validate_manifest(manifest)
    from_profile = _manifest(profile)
    # The same manifest but for the env and the count's type (the driver writes "1").
    assert _pod(manifest) == {**_pod(from_profile), "volumes": [
        {"name": "slipway-workspace",
         "persistentVolumeClaim": {"claimName": "training-x7k2p-kfp-workspace"}},
        *_pod(from_profile)["volumes"][1:]]}
    limits = manifest["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert limits == {**from_profile["spec"]["trainer"]["resourcesPerNode"]["limits"],
                      "nvidia.com/gpu": "1"}


def test_a_task_without_the_workspace_is_refused():
    with pytest.raises(SlipwayError, match="no PersistentVolumeClaim mounted at the workspace "
                                           "'/kfp-workspace'") as err:
        trainjob.workspace_claim(_task_config(volumes=[], volumeMounts=[]), "/kfp-workspace")
    assert "nnodes > 1" in err.value.fix


def test_api_refusal_is_a_clear_error():
    """The API server answering 403 (no RBAC for TrainJobs) is reported with the fix; a
    kubernetes ApiException stands in for its answer (no API server runs here)."""
    from kubernetes.client import ApiException

    class Forbidden:
        def create_namespaced_custom_object(self, *args, **kwargs):
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(SlipwayError, match="refused TrainJob slipway-train-1a2b in namespace "
                                           "team-a \\(403 Forbidden\\)") as err:
        trainjob.submit_and_watch(Forbidden(), _manifest(Profile()), report=lambda s: None)
    assert "create/get/delete trainjobs" in err.value.fix


class ReplayApi:
    """Stands in for the Kubernetes API server (none can run here): takes the TrainJob,
    checks it against the CRD schema as the server would, and answers each read with the
    next of a recorded sequence of status objects (each checked against the schema too)."""

    def __init__(self, statuses):
        self.statuses, self.created, self.deleted = iter(statuses), None, False
        self.last = {}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body,
                                        field_validation=None):
        assert field_validation == "Strict"
        checks.validate_manifest(body)
        self.created = body
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.last = next(self.statuses, self.last)
        job = {**self.created, **({"status": self.last} if self.last else {})}
        checks.validate_manifest(job)
        return job

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted = True


@pytest.fixture
def in_cluster(tmp_path, monkeypatch):
    """The train task's surroundings on a cluster, as far as they can be had here: its
    image (env), its pod name, its service account's namespace file, kfp's workspace (a
    folder), and the in-cluster Kubernetes client returning the test's fake API."""
    import kubernetes

    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("team-a\n")
    monkeypatch.setattr(trainjob, "NAMESPACE_FILE", str(namespace_file))
    monkeypatch.setenv("SLIPWAY_IN_IMAGE", "1")
    monkeypatch.setenv("SLIPWAY_IMAGE", "reg/slipway-torch:abc")
    monkeypatch.setenv("HOSTNAME", "training-x7k2p-system-container-impl-2155")
    monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda: None)
    workspace = tmp_path / "kfp-workspace"
    workspace.mkdir()
    state = {"api": None}
    monkeypatch.setattr(kubernetes.client, "CustomObjectsApi", lambda *a: state["api"])
    return workspace, state


def _rules(tmp_path, nnodes=2):
    from components.config import TrainParams, to_parameter

    rules = TrainParams(framework="torch", estimator="mlp", cv_folds=3, seed=0,
                        hyperparameters={"mlp": HP}, checkpoint_dir=str(tmp_path / "ckpt"),
                        distributed=DistributedParams(nnodes=nnodes, nproc_per_node=1,
                                                      poll_s=1))
    return to_parameter(rules.model_dump(mode="json"))


def _run_body(built, out: Path, rules: str, workspace: Path, task_config):
    from kfp.dsl import Dataset, Metrics, Model

    from components.kfp_components import train_nodes_op

    model, metrics = Model(uri=str(out / "model")), Metrics(uri=str(out / "cv_metrics"))
    train_nodes_op.python_func(
        train=Dataset(uri=str(built.processed[0])), val=Dataset(uri=str(built.processed[1])),
        rules=rules, workspace_path=str(workspace), shm_size="", model=model,
        cv_metrics=metrics, task_config=task_config)
    return model, metrics


def test_the_train_task_fails_when_the_recorded_job_fails(built_classification, tmp_path,
                                                          in_cluster, capsys):
    """The train task's body (train_nodes_op) with nnodes=2: it stages the data in the
    workspace, submits the TrainJob, reports the job's progress, and fails with the job's
    reason when the recorded job fails. No cluster runs here: the API answers with recorded
    status objects (ReplayApi), checked against the CRD schema."""
    pytest.importorskip("torch")
    workspace, state = in_cluster
    state["api"] = api = ReplayApi([*RUNNING, FAILED])
    forwarded = _task_config(volumeMounts=[{"name": "kfp-workspace",
                                            "mountPath": str(workspace)}])
    with pytest.raises(SystemExit) as exit_:
        _run_body(built_classification, tmp_path, _rules(tmp_path), workspace, forwarded)
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    name = trainjob.job_name("train", "training-x7k2p-system-container-impl-2155")
    assert (f"error: train: the distributed fit failed: TrainJob {name} failed (JobSetFailed): "
            "jobset failed: node-1 exited with code 137") in err
    assert f"TrainJob {name}: Created; node: 2 active, 2 ready; 40% (about 95 s left)" in out
    assert api.deleted
    job = api.created
    assert job["metadata"]["namespace"] == "team-a"
    assert job["spec"]["trainer"]["image"] == "reg/slipway-torch:abc"
    assert job["spec"]["trainer"]["resourcesPerNode"] == RECORDED_TASK_CONFIG["resources"]
    assert _pod(job)["volumes"][0]["persistentVolumeClaim"]["claimName"] == \
        "training-x7k2p-kfp-workspace"
    staged = workspace / name
    assert job["spec"]["trainer"]["command"][-1] == str(staged)
    with np.load(staged / "arrays.npz", allow_pickle=False) as arrays:
        assert set(arrays.files) == {"x", "y", "x_val", "y_val"}
    assert json.loads((staged / "trainer.json").read_text())["backend"] == "nccl"  # GPU nodes
    assert not (tmp_path / "model").exists()  # nothing half-written taken as a model


@pytest.mark.slow
def test_the_train_task_collects_the_model_its_nodes_trained(built_classification, tmp_path,
                                                             in_cluster, capsys):
    """The train task's body (train_nodes_op) with nnodes=2, end to end but for Kubernetes:
    the fake API (LocalNodesApi; no cluster runs here) starts the manifest's command as two
    torchrun "nodes" on CPU (gloo) over the staged workspace; the task collects the model
    rank 0 wrote, which is the model one process trains on the same data."""
    pytest.importorskip("torch")
    from components.config import section
    from components.io import read_json
    from components.train import train as train_core

    workspace, state = in_cluster
    state["api"] = api = LocalNodesApi()
    cpu_nodes = {**RECORDED_TASK_CONFIG, "resources": {
        "limits": {"cpu": "8", "memory": "16Gi"}, "requests": {"cpu": "4", "memory": "8Gi"}},
        "volumeMounts": [{"name": "kfp-workspace", "mountPath": str(workspace)}]}
    model, metrics = _run_body(built_classification, tmp_path, _rules(tmp_path), workspace,
                               _task_config(cpu_nodes))
    assert not api.deleted and api.created["spec"]["trainer"]["numNodes"] == 2
    out = capsys.readouterr().out
    assert "Complete; node: 2 succeeded" in out
    record = read_json(tmp_path / "model" / "training.json")
    assert "x 2 processes (gloo)" in record["device"]
    assert model.metadata["framework"] == "torch"
    assert "cv_accuracy_mean" in metrics.metadata
    # The checkpoint lies in the workspace, keyed as locally: a rerun would resume from it.
    assert list((workspace / "checkpoints").glob("*/checkpoint.safetensors"))
    one = section("train", _rules(tmp_path / "one", nnodes=1))
    alone = train_core(*built_classification.processed[:2], tmp_path / "alone", one)
    np.testing.assert_allclose(record["history"]["val_loss"], alone["history"]["val_loss"],
                               rtol=1e-4)


def test_the_readme_role_grants_what_the_task_calls():
    """The Role the README gives is valid Kubernetes RBAC and grants the verbs the task's
    calls need (create, get, delete of trainjobs), no more."""
    import re

    import kubernetes_validate
    import yaml

    readme = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S)
                 if "kind: Role\n" in b)
    docs = list(yaml.safe_load_all(block))
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    role = next(d for d in docs if d["kind"] == "Role")
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    source = Path(trainjob.__file__).read_text()
    used = {verb for verb in ("create", "get", "delete", "list", "patch", "watch")
            if f"api.{verb}_namespaced_custom_object" in source}
    assert role["rules"] == [{"apiGroups": [trainjob.GROUP], "resources": [trainjob.PLURAL],
                              "verbs": sorted(used, key=["create", "get", "delete"].index)}]


@pytest.mark.parametrize("override,match", [
    ("train.distributed.nnodes=2",  # params.yaml's framework is sklearn
     "several nodes train the torch backend only .*set train.framework=torch"),
    ("train.distributed.workspace_size=20 GB", "'20 GB' is not a Kubernetes quantity"),
    ("train.distributed.poll_s=0", "poll_s"),
])
def test_bad_several_nodes_settings_are_refused_on_load(override, match):
    with pytest.raises(SlipwayError, match=match):
        load_params(REPO / "params.yaml", [override])


def test_a_tuning_trial_fits_on_one_node_when_the_final_fit_takes_several(
        built_classification):
    """With nnodes=2 only retrain's fit is a TrainJob; a trial fits in its own task."""
    pytest.importorskip("torch")
    from components.config import TrainParams
    from components.tune import score_trial

    base = TrainParams(framework="torch", estimator="mlp", cv_folds=2, seed=0,
                       hyperparameters={"mlp": {**HP, "epochs": 1}},
                       distributed=DistributedParams(nnodes=2))
    trial = {"trial": 0, "framework": "torch", "estimator": "mlp",
             "hyperparameters": {**HP, "epochs": 1}}
    scored = score_trial(*built_classification.processed[:2], base, trial)
    assert 0.0 <= scored["val_score"] <= 1.0
