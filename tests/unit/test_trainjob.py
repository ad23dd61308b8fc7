"""The multi-node TrainJob (pipelines/trainjob.py): its manifest, schema check and watcher.

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
from pipelines import trainjob

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
TWO_NODES = DistributedParams(nnodes=2, nproc_per_node=1)


def _manifest(profile: Profile, distributed: DistributedParams = TWO_NODES, **kw):
    args = {"name": "slipway-train-1a2b", "namespace": "team-a", "image": "reg/slipway:abc",
            "profile": profile, "distributed": distributed,
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
    trainjob.validate_manifest(manifest)
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
    trainjob.validate_manifest(manifest)
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
        trainjob.validate_manifest(manifest)


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
    committed = json.loads(trainjob.SCHEMA.read_text())
    source = committed.pop("$comment")
    assert "kubeflow/trainer tag v2.3.0" in source and "trainer.kubeflow.org_trainjobs" in source
    crd = {"spec": {"versions": [{"name": "v1alpha1",
                                  "schema": {"openAPIV3Schema": copy.deepcopy(committed)}}]}}
    assert trainjob.trim_crd_schema(crd) == committed


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
        trainjob.validate_manifest(_job(status))


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

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
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
        trainjob.validate_manifest(job)
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
                               image="reg/slipway:abc", profile=Profile(),
                               distributed=TWO_NODES, api=api, poll_s=0.2)
    two = fit(TorchTrainer("classification", "mlp", HP, 3, checkpoint_dir="unused"),
              x, y, xv, yv)
    assert api.created["spec"]["trainer"]["numNodes"] == 2 and not api.deleted
    assert (tmp_path / "slipway-train-1a2b" / "checkpoint" / "checkpoint.safetensors").is_file()
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
                               image="reg/slipway:abc", profile=Profile(),
                               distributed=TWO_NODES, api=api, poll_s=0.2, timeout_s=300)
    with pytest.raises(SlipwayError, match="the distributed fit failed: TrainJob "
                                           r"slipway-train-1a2b failed \(JobSetFailed\)"):
        fit(TorchTrainer("classification", "mlp", HP, 3), x, y, xv, yv)
    assert api.deleted
