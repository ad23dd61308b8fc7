"""Compiling the pipelines with ``train.distributed.nnodes`` > 1: what the IR asks of KFP.

The train task (retrain in the tuning pipeline) becomes ``train_nodes_op`` (``retrain_nodes_op``):
its component declares kfp 2.17's task-config passthroughs and takes the run's workspace
(``dsl.WORKSPACE_PATH_PLACEHOLDER``), and the pipeline's ``pipelineConfig`` asks for a
ReadWriteMany workspace; with one node none of it is compiled. The TrainJob such a task
would submit is checked against the CRD's schema: no KFP backend can run here, so
:func:`forwarded` stands in for its driver, building the ``dsl.TaskConfig`` from the IR as
backend/src/v2/driver (initPodSpecPatch, extendPodSpecPatch, getWorkspaceMount) does.

    .venv/bin/python -m pytest tests/integration/test_compile_nodes.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kfp import dsl

from components.config import load_params
from components.trainers.trainjob import NodeSpec, trainjob_manifest, workspace_claim
from pipelines.cli import compile_all
from pipelines.trainjob import validate_manifest

REPO = Path(__file__).resolve().parents[2]
NODES = ["train.distributed.nnodes=2", "train.framework=torch", "train.estimator=mlp",
         "train.distributed.storage_class=nfs-client", "kfp.task_profiles.train=gpu-h100",
         "kfp.task_profiles.retrain=gpu-h100"]
PASSTHROUGHS = [{"field": "RESOURCES"}, {"field": "KUBERNETES_NODE_SELECTOR"},
                {"field": "KUBERNETES_TOLERATIONS"}, {"field": "ENV", "applyToTask": True},
                {"field": "KUBERNETES_VOLUMES", "applyToTask": True}]


def _compile(tmp_path: Path, *overrides: str) -> dict[str, tuple[dict, dict]]:
    params = load_params(REPO / "params.yaml", list(overrides))
    out = {}
    for path in compile_all(params, tmp_path):
        docs = list(yaml.safe_load_all(path.read_text()))
        out[path.stem] = (docs[0], docs[1] if len(docs) > 1 else {})
    return out


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("nodes"), *NODES)


def forwarded(spec: dict, platform: dict, executor: str, run: str) -> dsl.TaskConfig:
    """The TaskConfig KFP's driver gives the task of ``executor`` in run ``run`` (a
    stand-in for the driver, which cannot run here): the container's resources, the
    platform's node selector and tolerations, the env, and the workspace volume."""
    container = spec["deploymentSpec"]["executors"][executor]["container"]
    res = container.get("resources", {})
    requests = {k: res[f] for k, f in (("cpu", "resourceCpuRequest"),
                                       ("memory", "resourceMemoryRequest")) if f in res}
    limits = {k: res[f] for k, f in (("cpu", "resourceCpuLimit"),
                                     ("memory", "resourceMemoryLimit")) if f in res}
    if "accelerator" in res:
        limits[res["accelerator"]["resourceType"]] = res["accelerator"]["resourceCount"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor]
    return dsl.TaskConfig(
        resources={k: v for k, v in (("requests", requests), ("limits", limits)) if v},
        node_selector=k8s.get("nodeSelector", {}).get("labels"),
        tolerations=k8s.get("tolerations"),
        env=container.get("env"),
        volumes=[{"name": "kfp-workspace",
                  "persistentVolumeClaim": {"claimName": f"{run}-kfp-workspace"}}],
        volume_mounts=[{"name": "kfp-workspace", "mountPath": "/kfp-workspace"}])


@pytest.mark.parametrize("pipeline,task", [("training", "train-nodes-op"),
                                           ("tuning", "retrain-nodes-op")])
def test_several_nodes_compile_the_workspace_and_the_passthroughs(nodes, pipeline, task):
    spec, platform = nodes[pipeline]
    assert platform["platforms"]["kubernetes"]["pipelineConfig"] == {"workspace": {
        "size": "20Gi", "kubernetes": {"pvcSpecPatch": {
            "accessModes": ["ReadWriteMany"], "storageClassName": "nfs-client"}}}}
    component = spec["components"][f"comp-{task}"]
    assert component["taskConfigPassthroughs"] == PASSTHROUGHS
    inputs = component["inputDefinitions"]["parameters"]
    assert inputs["task_config"] == {"isOptional": True, "parameterType": "TASK_CONFIG"}
    given = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]
    assert given["workspace_path"] == {"runtimeValue": {"constant": "{{$.workspace_path}}"}}
    assert given["shm_size"] == {"runtimeValue": {"constant": "32Gi"}}  # gpu-h100's
    assert given["rules"] == {"componentInputParameter": "train"}
    assert spec["root"]["dag"]["tasks"][task]["taskInfo"]["name"].startswith(
        "Train" if task.startswith("train") else "Retrain")
    # Only the train / retrain task forwards its profile; the others run as before.
    with_passthroughs = [n for n, c in spec["components"].items()
                         if "taskConfigPassthroughs" in c]
    assert with_passthroughs == [f"comp-{task}"]


@pytest.mark.parametrize("pipeline,task", [("training", "train-nodes-op"),
                                           ("tuning", "retrain-nodes-op")])
def test_the_trainjob_the_task_would_submit_fits_the_crd_schema(nodes, pipeline, task):
    spec, platform = nodes[pipeline]
    config = forwarded(spec, platform, f"exec-{task}", run=f"{pipeline}-x7k2p")
    shm = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]["shm_size"]
    node = NodeSpec.from_task_config(config, shm["runtimeValue"]["constant"])
    params = load_params(REPO / "params.yaml", NODES)
    image = spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]["image"]
    manifest = trainjob_manifest(
        name="slipway-train-0123456789", namespace="team-a", image=image, node=node,
        distributed=params.train.distributed, job_dir="/kfp-workspace/slipway-train-0123456789",
        workspace_claim=workspace_claim(config, "/kfp-workspace"),
        workspace_mount="/kfp-workspace")
    validate_manifest(manifest)
    trainer = manifest["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and "torch" in trainer["image"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    pod = manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == \
        f"{pipeline}-x7k2p-kfp-workspace"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in \
        pod["volumes"]


def test_one_node_compiles_none_of_it(tmp_path):
    for spec, platform in _compile(tmp_path).values():
        assert "pipelineConfig" not in platform.get("platforms", {}).get("kubernetes", {})
        assert not [n for n, c in spec["components"].items()
                    if "taskConfigPassthroughs" in c or "nodes" in n]
        assert "{{$.workspace_path}}" not in yaml.safe_dump(spec)


def test_no_storage_class_leaves_the_clusters_default(tmp_path):
    spec, platform = _compile(tmp_path, *NODES[:3])["training"]
    patch = platform["platforms"]["kubernetes"]["pipelineConfig"]["workspace"]["kubernetes"]
    assert patch == {"pvcSpecPatch": {"accessModes": ["ReadWriteMany"]}}


@pytest.mark.parametrize("pipeline", ["training", "tuning"])
def test_a_local_run_with_several_nodes_exits_2_before_any_task(pipeline, tmp_path,
                                                                monkeypatch, capsys):
    """kfp.local cannot start a TrainJob: the run is refused, naming the setting and the
    fix, before a task (or the pipeline root) exists."""
    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["run", pipeline, "--params", str(REPO / "params.yaml")]
    for override in NODES[:3]:
        args += ["--set", override]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train.distributed.nnodes is 2" in err and "kfp.local" in err
    assert "set train.distributed.nnodes=1 for a local run" in err
    assert not list(tmp_path.iterdir())


def test_the_variants_code_version_covers_the_trainjob_code(nodes):
    """The train task's code version (in its cache key) is taken over its variant's imports,
    the TrainJob's code among them. (The one-node train task's covers that file too: the
    train core imports the trainers package, and a package counts whole.)"""
    from components.stages import CODE_VERSION_ENV, _op_imports, code_version, source_files

    spec, _ = nodes["training"]
    env = {e["name"]: e["value"] for e in
           spec["deploymentSpec"]["executors"]["exec-train-nodes-op"]["container"]["env"]}
    assert env[CODE_VERSION_ENV] == code_version("train", "train_nodes_op")
    assert any(p.name == "trainjob.py" and p.parent.name == "trainers"
               for p in source_files(*_op_imports("train_nodes_op")))
