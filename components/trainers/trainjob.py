"""Training on several nodes of the cluster: a Kubeflow Trainer v2 ``TrainJob``, and its watcher.

With ``train.distributed.nnodes`` > 1 the pipeline's train task (retrain in the tuning
pipeline) does not fit in its own pod: :func:`task_fit` gives the train core a ``fit`` that
stages the rows and the trainer's settings in the pipeline's workspace (a ReadWriteMany
volume the task and the job's nodes share), submits a ``TrainJob`` whose nodes run torchrun
over :mod:`components.trainers.distributed` (the same worker as one node's fit), follows it
with :func:`watch` until it completes, and reads back the model rank 0 saved; the task then
records and saves it as it does any model, so the result leaves through the task's
``Output[Model]`` artifact.

Why a ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``, Kubeflow Trainer v2) and not the
Training Operator's ``PyTorchJob`` (``kubeflow.org/v1``): kfp 2.17 itself forwards a task's
resources, node selector, tolerations, env and volumes to such a job (``dsl.TaskConfig``,
:mod:`pipelines.training` compiles the passthroughs), Kubeflow's Python SDK (PyPI
``kubeflow==0.5.0``, which resolves with kfp 2.17.0) drives TrainJobs, and the Training
Operator v1 is in maintenance, superseded by Trainer v2. A TrainJob names a
``ClusterTrainingRuntime`` (``train.distributed.runtime``, by default ``torch-distributed``),
which sets torchrun's rendezvous (``PET_*`` variables) for every node, so the manifest
carries only what is Slipway's: image, command, node count, processes per node, per-node
resources from the task's profile, and a runtime patch with the profile's node selector,
tolerations, ``/dev/shm`` and the workspace volume.

This module runs inside the train task's image (only ``components/`` is there); the check
of a manifest against the CRD's published schema, and the CLI that prints one, are in
:mod:`pipelines.trainjob`. In the task the API server checks the manifest against the CRD
itself: it is created with ``fieldValidation=Strict``, so an unknown field is refused, not
dropped.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.errors import SlipwayError

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
NODE = "node"  # the torch runtimes' replicated job, and its trainer container
MANAGER = "slipway.dev/train"  # whose runtime patch it is (runtimePatches are keyed by it)
WORKSPACE_VOLUME = "slipway-workspace"
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
_NOT_ACCELERATORS = {"cpu", "memory", "ephemeral-storage"}


# ----------------------------------------------------------------------------- manifest

@dataclass
class NodeSpec:
    """What each node of the job asks of the cluster: the train task's GPU profile.

    Attributes:
        resources: requests and limits (``{"requests": {...}, "limits": {...}}``).
        node_selector: node labels.
        tolerations: Kubernetes tolerations (dicts).
        shm_size: an in-memory ``/dev/shm`` of this size; "" for none.
        env: environment variables for the trainer containers.
    """

    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    shm_size: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def wants_gpu(self) -> bool:
        limits = self.resources.get("limits") or {}
        return any(k not in _NOT_ACCELERATORS and str(v) not in ("0", "")
                   for k, v in limits.items())

    @classmethod
    def from_profile(cls, profile: Any) -> NodeSpec:
        """From a ``kfp.profiles`` entry (:class:`components.config.Profile`)."""
        requests = {k: v for k, v in (("cpu", profile.cpu_request),
                                      ("memory", profile.memory_request)) if v}
        limits: dict[str, Any] = {k: v for k, v in (("cpu", profile.cpu_limit),
                                                    ("memory", profile.memory_limit)) if v}
        if profile.wants_gpu:
            limits[profile.accelerator_type] = profile.accelerator_count
        return cls(resources={k: v for k, v in (("requests", requests), ("limits", limits))
                              if v},
                   node_selector=dict(profile.node_selector),
                   tolerations=[t.model_dump(exclude_none=True) for t in profile.tolerations],
                   shm_size=profile.shm_size or "")

    @classmethod
    def from_task_config(cls, task_config: Any, shm_size: str = "") -> NodeSpec:
        """From what kfp's driver forwarded to the task (a ``dsl.TaskConfig``): the task's
        resources, node selector, tolerations and the environment variables with plain
        values (those from Secrets or fields stay with the task: the nodes need none)."""
        resources = {k: {name: q for name, q in (v or {}).items()}
                     for k, v in ((task_config.resources or {}).items()) if v}
        env = {e["name"]: e["value"] for e in task_config.env or []
               if "value" in e and "valueFrom" not in e}
        return cls(resources=resources, node_selector=dict(task_config.node_selector or {}),
                   tolerations=list(task_config.tolerations or []), shm_size=shm_size,
                   env=env)


def trainjob_manifest(*, name: str, namespace: str, image: str, node: NodeSpec,
                      distributed: Any, job_dir: str, workspace_claim: str,
                      workspace_mount: str) -> dict[str, Any]:
    """The TrainJob that runs a staged fit (:func:`components.trainers.distributed.stage`).

    Args:
        name: the job's name (DNS label, at most 40 characters: the runtime derives pod
            names from it).
        namespace: the pipeline run's namespace.
        image: the trainer image (the train task's own).
        node: per-node resources, node selector, tolerations, ``/dev/shm``, env.
        distributed: ``train.distributed``: nodes, processes per node, runtime.
        job_dir: the staged fit's folder as the nodes see it (under ``workspace_mount``).
        workspace_claim: the PersistentVolumeClaim the task and the nodes share (ReadWriteMany).
        workspace_mount: where the nodes mount it.

    Raises:
        SlipwayError: a name Kubernetes would refuse, or a fit outside the workspace.
    """
    if not _NAME.match(name):
        raise SlipwayError(f"TrainJob name {name!r} is not a DNS label of at most 40 characters "
                           "(lower-case letters, digits, '-', starting with a letter)",
                           "derive the name from the run id, lower-cased and shortened")
    if not job_dir.startswith(workspace_mount.rstrip("/") + "/"):
        raise SlipwayError(f"the staged fit {job_dir} is not under the workspace mount "
                           f"{workspace_mount}: the nodes could not read it",
                           "stage the fit in the pipeline's workspace")
    trainer: dict[str, Any] = {
        "image": image,
        "numNodes": distributed.nnodes,
        # torchrun reads its node count, rank and rendezvous from the runtime's PET_* vars.
        "command": ["torchrun", "--max-restarts", "0", *_worker(job_dir)],
        "env": [{"name": k, "value": v} for k, v in sorted(node.env.items())],
    }
    if distributed.nproc_per_node != "auto":  # left out, the torch runtime's default: auto
        trainer["numProcPerNode"] = distributed.nproc_per_node
    if node.resources:
        trainer["resourcesPerNode"] = node.resources
    volumes = [{"name": WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": workspace_claim}}]
    mounts = [{"name": WORKSPACE_VOLUME, "mountPath": workspace_mount}]
    if node.shm_size:  # loader workers pass batches through /dev/shm
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory",
                                                     "sizeLimit": node.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    pod: dict[str, Any] = {"volumes": volumes,
                           "containers": [{"name": NODE, "volumeMounts": mounts}]}
    if node.node_selector:
        pod["nodeSelector"] = dict(node.node_selector)
    if node.tolerations:
        pod["tolerations"] = [dict(t) for t in node.tolerations]
    patch = {"manager": MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
        "replicatedJobs": [{"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}]}}}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "slipway"}},
        "spec": {"runtimeRef": {"name": distributed.runtime, "apiGroup": GROUP,
                                "kind": "ClusterTrainingRuntime"},
                 "trainer": trainer,
                 "runtimePatches": [patch]},
    }


def _worker(job_dir: str) -> list[str]:
    from components.trainers.distributed import worker_command

    return worker_command(job_dir)


# ------------------------------------------------------------------------------ watcher

def _true_conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}


def progress_line(name: str, status: dict[str, Any]) -> str:
    """``TrainJob x: Created; node: 2 active, 2 ready; 40% (about 95 s left); loss 0.31``."""
    conditions = _true_conditions(status)
    parts = [f"TrainJob {name}: " + (", ".join(conditions) or "pending")]
    for job in status.get("jobsStatus") or []:
        counts = [f"{job[k]} {k}" for k in ("active", "ready", "succeeded", "failed",
                                             "suspended") if job.get(k)]
        parts.append(f"{job['name']}: " + (", ".join(counts) or "no pods yet"))
    trainer = status.get("trainerStatus") or {}
    if trainer.get("progressPercentage") is not None:
        left = trainer.get("estimatedRemainingSeconds")
        parts.append(f"{trainer['progressPercentage']}%"
                     + (f" (about {left} s left)" if left is not None else ""))
    if trainer.get("metrics"):
        parts.append(" ".join(f"{m['name']} {m['value']}" for m in trainer["metrics"]))
    return "; ".join(parts)


def watch(name: str, read: Callable[[], dict[str, Any]], *, poll_s: float = 15.0,
          timeout_s: float | None = None, report: Callable[[str], None] = print,
          sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Follow a TrainJob until it completes; report each change of its progress.

    Args:
        name: the job's name (for the messages).
        read: returns the TrainJob object as the API server has it now.
        poll_s: seconds between reads.
        timeout_s: give up after this long (None: wait as long as it runs).
        report: where progress lines go (the task's log).

    Returns:
        The job's final status.

    Raises:
        SlipwayError: the job failed (its condition's reason and message), or the timeout
            passed.
    """
    started, last = clock(), None
    while True:
        status = read().get("status") or {}
        line = progress_line(name, status)
        if line != last:
            report(line)
            last = line
        conditions = _true_conditions(status)
        if "Failed" in conditions:
            c = conditions["Failed"]
            raise SlipwayError(f"TrainJob {name} failed ({c.get('reason')}): {c.get('message')}",
                               f"see the logs of its pods (kubectl logs -l "
                               f"jobset.sigs.k8s.io/jobset-name={name}); rerun the task to "
                               "resume from the last checkpoint")
        if "Complete" in conditions:
            return status
        if timeout_s is not None and clock() - started > timeout_s:
            raise SlipwayError(f"TrainJob {name} did not finish within {timeout_s:.0f} s "
                               f"(last: {line})", "raise train.distributed.timeout_s, or "
                               "check why the job is stuck (pending pods: no node fits the "
                               "profile?)")
        sleep(poll_s)


def submit_and_watch(api: Any, manifest: dict[str, Any], **watch_options: Any
                     ) -> dict[str, Any]:
    """Create the TrainJob with a ``kubernetes.client.CustomObjectsApi`` and :func:`watch`
    it; the job is deleted when the watch ends in an error (its checkpoint stays).

    Raises:
        SlipwayError: the API server refused the job (its answer), or the job failed.
    """
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        # Strict: the API server refuses a field the CRD's schema does not know.
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest,
                                            field_validation="Strict")
    except Exception as err:  # kubernetes.client.ApiException, without importing it here
        if not hasattr(err, "status"):
            raise
        raise SlipwayError(
            f"the API server refused TrainJob {name} in namespace {namespace} "
            f"({err.status} {getattr(err, 'reason', '')}): {getattr(err, 'body', '')}",
            "403: give the pipeline runner's service account the Role of README 'Several "
            "nodes' (create/get/delete trainjobs); 404: install Kubeflow Trainer v2 and its "
            f"ClusterTrainingRuntime {manifest['spec']['runtimeRef']['name']!r}; 400/422: "
            "the manifest does not fit the installed CRD (python -m pipelines.trainjob "
            "manifest checks it)") from None
    try:
        return watch(name, lambda: api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name), **watch_options)
    except SlipwayError:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        raise


def cluster_fit(*, workspace: Path, workspace_claim: str, name: str, namespace: str,
                image: str, node: NodeSpec, distributed: Any, api: Any = None,
                **watch_options: Any) -> Callable[..., Any]:
    """The train core's ``fit`` for several nodes: stage, submit, watch, collect.

    Args:
        workspace: the pipeline's workspace as the train task sees it; the nodes mount the
            same claim at the same path.
        workspace_claim: its PersistentVolumeClaim.
        name, namespace, image, node, distributed: as :func:`trainjob_manifest` takes them.
        api: a ``kubernetes.client.CustomObjectsApi``; None: the in-cluster one.
        watch_options: for :func:`watch` (``poll_s``, ``timeout_s``, ``report``).
    """
    from components.trainers import distributed as ddp

    def fit(trainer: Any, x, y, x_val, y_val) -> Any:
        nonlocal api
        if trainer.framework != "torch":  # retrain's chosen trial may be another backend's
            watch_options.get("report", print)(
                f"{trainer.framework} trains in one process: fitting in the task's own pod, "
                "not as a TrainJob")
            trainer.fit(x, y, x_val, y_val)
            return trainer
        work = Path(workspace) / name
        backend = distributed.backend
        if backend == "auto":
            backend = "nccl" if node.wants_gpu else "gloo"
        if trainer.checkpoint_dir is not None:
            # On the shared volume, keyed as locally by data and settings: a rerun of the
            # task in the same run resumes from the last epoch the nodes finished.
            trainer.checkpoint_dir = Path(workspace) / "checkpoints" / Path(
                trainer.checkpoint_dir).name
        ddp.stage(work, trainer, x, y, x_val, y_val, backend)
        manifest = trainjob_manifest(name=name, namespace=namespace, image=image, node=node,
                                     distributed=distributed, job_dir=str(work),
                                     workspace_claim=workspace_claim,
                                     workspace_mount=str(workspace))
        if api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            api = client.CustomObjectsApi()
        from components.trainers.loop import say

        per_node = "auto" if distributed.nproc_per_node == "auto" else distributed.nproc_per_node
        say(f"torch: distributed fit: TrainJob {namespace}/{name}, {distributed.nnodes} nodes "
            f"x {per_node} process(es) ({backend}, runtime {distributed.runtime}), staged in "
            f"{work}")
        try:
            submit_and_watch(api, manifest, **watch_options)
        except SlipwayError as err:
            nproc = distributed.nnodes * (1 if per_node == "auto" else per_node)
            raise ddp.failure(work, err.message, nproc, trainer.checkpoint_dir) from None
        return ddp.collect(work, trainer)

    return fit


# --------------------------------------------------------------------- in the kfp task

def job_name(stage: str, pod: str) -> str:
    """A TrainJob name for a task's attempt: ``slipway-<stage>-<10 hex of the pod name>``
    (kfp's pod names are unique per attempt, and too long for a TrainJob)."""
    return f"slipway-{stage}-{hashlib.sha256(pod.encode()).hexdigest()[:10]}"


def workspace_claim(task_config: Any, workspace_path: str) -> str:
    """The PersistentVolumeClaim kfp's driver mounted at ``workspace_path`` (it forwards
    the workspace volume to a task with the KUBERNETES_VOLUMES passthrough).

    Raises:
        SlipwayError: no forwarded volume is mounted there.
    """
    mounts = {m.get("name"): m.get("mountPath") for m in task_config.volume_mounts or []}
    for volume in task_config.volumes or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and mounts.get(volume.get("name")) == workspace_path.rstrip("/"):
            return claim
    raise SlipwayError(
        f"no PersistentVolumeClaim mounted at the workspace {workspace_path!r} among the "
        f"volumes kfp forwarded to the task ({[v.get('name') for v in task_config.volumes or []]})",
        "compile the pipeline with train.distributed.nnodes > 1 (it then asks kfp for a "
        "workspace and forwards it) and run it on a KFP backend of 2.5 or later")


def task_fit(stage: str, distributed: Any, workspace_path: str, task_config: Any,
             shm_size: str = "", *, api: Any = None, namespace: str | None = None,
             image: str | None = None, pod: str | None = None,
             report: Callable[[str], None] = print) -> Callable[..., Any] | None:
    """The ``fit`` of a pipeline's train (or retrain) task compiled for several nodes.

    Args:
        stage: ``train`` or ``retrain`` (in the job's name and folder).
        distributed: ``train.distributed`` as the task received it.
        workspace_path: where kfp mounted the pipeline's workspace in the task.
        task_config: the ``dsl.TaskConfig`` kfp forwarded (resources, node selector,
            tolerations, env, volumes).
        shm_size: the profile's ``/dev/shm`` for each node ("" for none).
        api, namespace, image, pod: the in-cluster ones when None (the API client, the
            service account's namespace file, the task's image, ``HOSTNAME``).
        report: where the watcher's progress lines go.

    Returns:
        None when ``distributed.nnodes`` is 1 (the task fits in its own pod), else the fit.

    Raises:
        SlipwayError: the task does not run in its image, or has no workspace.
    """
    if distributed.nnodes == 1:
        return None
    if image is None:
        from components.stages import running_image

        image = running_image()
        if not image:
            raise SlipwayError(
                "train.distributed.nnodes > 1 runs the fit as a TrainJob in the train task's "
                "image, but this task does not run in one (a local run?)",
                "set train.distributed.nnodes=1 for a local run, or submit the pipeline to "
                "a cluster (make submit)")
    if namespace is None:
        namespace = Path(NAMESPACE_FILE).read_text().strip()
    claim = workspace_claim(task_config, workspace_path)
    node = NodeSpec.from_task_config(task_config, shm_size)
    return cluster_fit(workspace=Path(workspace_path), workspace_claim=claim,
                       name=job_name(stage, pod or os.environ.get("HOSTNAME", stage)),
                       namespace=namespace, image=image, node=node, distributed=distributed,
                       api=api, poll_s=distributed.poll_s,
                       timeout_s=distributed.timeout_s or None, report=report)
