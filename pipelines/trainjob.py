"""Training on several nodes of the cluster: a Kubeflow Trainer v2 ``TrainJob``, and its watcher.

With ``train.distributed.nnodes`` > 1 the pipeline's train task does not fit in its own pod:
:func:`cluster_fit` (the ``fit`` the train core takes) stages the rows and the trainer's
settings in the pipeline's workspace (a volume the task and the job's nodes share), submits a
``TrainJob`` whose nodes run torchrun over :mod:`components.trainers.distributed` (the same
worker as one node's fit), follows it with :func:`watch` until it completes, and reads back
the model rank 0 saved; the train task then records and saves it as it does any model, so
the result leaves through the task's ``Output[Model]`` artifact.

Why a ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``, Kubeflow Trainer v2) and not the
Training Operator's ``PyTorchJob`` (``kubeflow.org/v1``): kfp 2.17 itself forwards a task's
resources, node selector, tolerations, env and volumes to a TrainJob (``dsl.TaskConfig``),
Kubeflow's Python SDK (PyPI ``kubeflow==0.5.0``, which resolves with kfp 2.17.0) drives
TrainJobs, and the Training Operator v1 is in maintenance, superseded by Trainer v2. A
TrainJob names a ``ClusterTrainingRuntime`` (``train.distributed.runtime``, by default
``torch-distributed``), which sets torchrun's rendezvous (``PET_*`` variables) for every
node, so the manifest carries only what is Slipway's: image, command, node count, processes
per node, per-node resources from the task's profile, and a runtime patch with the profile's
node selector, tolerations, ``/dev/shm`` and the workspace volume.

The manifest is checked against the TrainJob CRD's published OpenAPI schema (Kubeflow Trainer
v2.3.0), trimmed to the fields Slipway sets: ``pipelines/schemas/trainjob.v1alpha1.json``
(:func:`trim_crd_schema` made it; fields it dropped are refused). No Kubernetes API server
runs where the tests run: they check the manifest against that schema and the watcher on
status objects shaped by the same schema.

    python -m pipelines.trainjob manifest --nodes 2 --profile gpu-h100   # print a manifest
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.config import DistributedParams, Profile
from components.errors import SlipwayError

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
SCHEMA = Path(__file__).parent / "schemas" / "trainjob.v1alpha1.json"
NODE = "node"  # the torch runtimes' replicated job, and its trainer container
MANAGER = "slipway.dev/train"  # whose runtime patch it is (runtimePatches are keyed by it)
WORKSPACE_VOLUME = "slipway-workspace"
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")


# ----------------------------------------------------------------------------- manifest

def resources_per_node(profile: Profile) -> dict[str, dict[str, Any]]:
    """A node's requests and limits from a task's profile (the GPU count as a limit)."""
    requests = {k: v for k, v in (("cpu", profile.cpu_request),
                                  ("memory", profile.memory_request)) if v}
    limits: dict[str, Any] = {k: v for k, v in (("cpu", profile.cpu_limit),
                                                ("memory", profile.memory_limit)) if v}
    if profile.wants_gpu:
        limits[profile.accelerator_type] = profile.accelerator_count
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def trainjob_manifest(*, name: str, namespace: str, image: str, profile: Profile,
                      distributed: DistributedParams, job_dir: str, workspace_claim: str,
                      workspace_mount: str, env: dict[str, str] | None = None
                      ) -> dict[str, Any]:
    """The TrainJob that runs a staged fit (:func:`components.trainers.distributed.stage`).

    Args:
        name: the job's name (DNS label, at most 40 characters: the runtime derives pod
            names from it).
        namespace: the pipeline run's namespace.
        image: the trainer image (the components image of the same commit).
        profile: the train task's profile: per-node resources, node selector, tolerations,
            ``/dev/shm``.
        distributed: ``train.distributed``: nodes, processes per node, runtime.
        job_dir: the staged fit's folder as the nodes see it (under ``workspace_mount``).
        workspace_claim: the PersistentVolumeClaim the task and the nodes share (ReadWriteMany).
        workspace_mount: where the nodes mount it.
        env: extra environment variables for the trainer containers.

    Raises:
        SlipwayError: a name Kubernetes would refuse.
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
        "env": [{"name": k, "value": v} for k, v in sorted((env or {}).items())],
    }
    if distributed.nproc_per_node != "auto":  # left out, the torch runtime's default: auto
        trainer["numProcPerNode"] = distributed.nproc_per_node
    resources = resources_per_node(profile)
    if resources:
        trainer["resourcesPerNode"] = resources
    volumes = [{"name": WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": workspace_claim}}]
    mounts = [{"name": WORKSPACE_VOLUME, "mountPath": workspace_mount}]
    if profile.shm_size:  # loader workers pass batches through /dev/shm
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory",
                                                     "sizeLimit": profile.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    pod: dict[str, Any] = {"volumes": volumes,
                           "containers": [{"name": NODE, "volumeMounts": mounts}]}
    if profile.node_selector:
        pod["nodeSelector"] = dict(profile.node_selector)
    if profile.tolerations:
        pod["tolerations"] = [t.model_dump(exclude_none=True) for t in profile.tolerations]
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


def validate_manifest(manifest: dict[str, Any], schema_path: Path = SCHEMA) -> None:
    """Check a TrainJob against the CRD's schema (trimmed: see the module docstring).

    Raises:
        SlipwayError: naming the field and what the schema wants.
    """
    import jsonschema

    schema = json.loads(schema_path.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(manifest),
                    key=lambda e: list(e.absolute_path))
    if errors:
        where = ", ".join(f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                          for e in errors[:5])
        raise SlipwayError(f"the TrainJob manifest does not fit the CRD's schema: {where}",
                           f"fix the manifest ({schema_path.name} holds the schema)")


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
                               f"(last: {line})", "raise the timeout, or check why the job is "
                               "stuck (pending pods: no node fits the profile?)")
        sleep(poll_s)


def submit_and_watch(api: Any, manifest: dict[str, Any], **watch_options: Any
                     ) -> dict[str, Any]:
    """Create the TrainJob with a ``kubernetes.client.CustomObjectsApi`` and :func:`watch`
    it; the job is deleted when the watch ends in an error (its checkpoint stays)."""
    validate_manifest(manifest)
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    try:
        return watch(name, lambda: api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name), **watch_options)
    except SlipwayError:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        raise


def cluster_fit(*, workspace: Path, workspace_claim: str, name: str, namespace: str,
                image: str, profile: Profile, distributed: DistributedParams,
                api: Any = None, **watch_options: Any) -> Callable[..., Any]:
    """The train core's ``fit`` for several nodes: stage, submit, watch, collect.

    Args:
        workspace: the pipeline's workspace as the train task sees it; the nodes mount the
            same claim at the same path.
        workspace_claim: its PersistentVolumeClaim.
        name, namespace, image, profile, distributed: as :func:`trainjob_manifest` takes them.
        api: a ``kubernetes.client.CustomObjectsApi``; None: the in-cluster one.
    """
    from components.trainers import distributed as ddp

    def fit(trainer: Any, x, y, x_val, y_val) -> Any:
        nonlocal api
        work = Path(workspace) / name
        backend = distributed.backend
        if backend == "auto":
            backend = "nccl" if profile.wants_gpu else "gloo"
        if trainer.checkpoint_dir is not None:  # on the shared volume: a rerun resumes
            trainer.checkpoint_dir = work / "checkpoint"
        ddp.stage(work, trainer, x, y, x_val, y_val, backend)
        manifest = trainjob_manifest(name=name, namespace=namespace, image=image,
                                     profile=profile, distributed=distributed,
                                     job_dir=str(work), workspace_claim=workspace_claim,
                                     workspace_mount=str(workspace))
        if api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            api = client.CustomObjectsApi()
        try:
            submit_and_watch(api, manifest, **watch_options)
        except SlipwayError as err:
            per_node = 1 if distributed.nproc_per_node == "auto" else distributed.nproc_per_node
            raise ddp.failure(work, err.message, distributed.nnodes * per_node,
                              trainer.checkpoint_dir) from None
        return ddp.collect(work, trainer)

    return fit


# ------------------------------------------------------------------------------- schema

# The fields Slipway sets, under the CRD's openAPIV3Schema; True keeps a subtree whole.
_POD_SPEC: dict[str, Any] = {
    "nodeSelector": True, "tolerations": True,
    "volumes": {"name": True, "persistentVolumeClaim": True, "emptyDir": True},
    "containers": {"name": True, "volumeMounts": True},
}
KEEP: dict[str, Any] = {
    "apiVersion": True, "kind": True, "metadata": True, "status": True,
    "spec": {
        "runtimeRef": True, "suspend": True, "activeDeadlineSeconds": True,
        "trainer": {"image": True, "command": True, "args": True, "numNodes": True,
                    "numProcPerNode": True, "env": {"name": True, "value": True},
                    "resourcesPerNode": {"limits": True, "requests": True}},
        "runtimePatches": {"manager": True, "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": {"name": True, "template": {"spec": {"template": {
                "spec": _POD_SPEC}}}}}}}},
    },
}


def trim_crd_schema(crd: dict[str, Any], keep: dict[str, Any] = KEEP) -> dict[str, Any]:
    """The CRD's openAPIV3Schema with only the ``keep`` fields; the objects trimmed refuse
    other fields (``additionalProperties: false``), so a field the trimmed schema does not
    know fails the check instead of passing unchecked."""
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)

    def trim(node: dict[str, Any], keep: dict[str, Any]) -> dict[str, Any]:
        if node.get("type") == "array":
            return {**node, "items": trim(node["items"], keep)}
        props = node["properties"]
        out = {k: v for k, v in node.items() if k != "properties"}
        out["properties"] = {k: (props[k] if sub is True else trim(props[k], sub))
                             for k, sub in keep.items()}
        out["additionalProperties"] = False
        if "required" in out:
            out["required"] = [r for r in out["required"] if r in keep]
        return out

    return trim(version["schema"]["openAPIV3Schema"], keep)


def main(argv: list[str] | None = None) -> int:
    from components.config import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("manifest", help="print the TrainJob a run would submit")
    show.add_argument("--nodes", type=int, default=2)
    show.add_argument("--profile", help="a kfp.profiles entry (default: the train task's)")
    trim = sub.add_parser("trim-schema", help="trim the TrainJob CRD YAML to the schema file")
    trim.add_argument("crd", type=Path)
    args = parser.parse_args(argv)
    if args.command == "trim-schema":
        import yaml

        print(json.dumps(trim_crd_schema(yaml.safe_load(args.crd.read_text())), indent=1))
        return 0
    from pipelines.training import image_for

    params = load_params()
    name, profile = params.kfp.profile_for("train")
    profile = params.kfp.profiles[args.profile] if args.profile else profile
    dist = params.train.distributed.model_copy(update={"nnodes": args.nodes})
    manifest = trainjob_manifest(name="slipway-train", namespace="kubeflow",
                                 image=image_for("torch", params),
                                 profile=profile, distributed=dist,
                                 job_dir="/kfp-workspace/slipway-train",
                                 workspace_claim="kfp-workspace", workspace_mount="/kfp-workspace")
    validate_manifest(manifest)
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
