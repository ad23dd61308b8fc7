"""The multi-node TrainJob from the pipeline's side: its check against the CRD's schema, the
refusal of a local run, and a CLI that prints the manifest a run would submit.

The job itself (manifest, submission, watcher, the train task's ``fit``) is
:mod:`components.trainers.trainjob`: it runs in the train task's image, which holds
``components/`` only.

The manifest is checked against the TrainJob CRD's published OpenAPI schema (Kubeflow
Trainer v2.3.0), trimmed to the fields Slipway sets: ``pipelines/schemas/trainjob.v1alpha1.json``
(:func:`trim_crd_schema` made it; fields it dropped are refused). No Kubernetes API server
runs where the tests run: they check the manifest against that schema and the watcher on
status objects shaped by the same schema.

    python -m pipelines.trainjob manifest --nodes 2 --profile gpu-h100   # print a manifest
    python -m pipelines.trainjob trim-schema trainer.kubeflow.org_trainjobs.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from components.errors import SlipwayError
from components.trainers.trainjob import VERSION, NodeSpec, trainjob_manifest

SCHEMA = Path(__file__).parent / "schemas" / "trainjob.v1alpha1.json"


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


def refuse_local_run(params: Any) -> None:
    """kfp.local cannot run a TrainJob: a local run with ``train.distributed.nnodes`` > 1
    is refused before any task starts.

    Raises:
        SlipwayError: naming the setting and the fix.
    """
    nodes = params.train.distributed.nnodes
    if nodes > 1:
        raise SlipwayError(
            f"train.distributed.nnodes is {nodes}: several nodes train as a Kubeflow Trainer "
            "TrainJob on a cluster, which a local run (kfp.local) cannot start",
            "set train.distributed.nnodes=1 for a local run (train.distributed.nproc_per_node "
            "uses this machine's GPUs or cores), or run it on a cluster: set it in params.yaml "
            "and `make submit`, or `make upload SET=\"train.distributed.nnodes=" + str(nodes)
            + "\"` then `make submit` with the same SET")


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
    from kfp.dsl.constants import WORKSPACE_MOUNT_PATH

    from pipelines.training import image_for

    params = load_params()
    name, profile = params.kfp.profile_for("train")
    profile = params.kfp.profiles[args.profile] if args.profile else profile
    dist = params.train.distributed.model_copy(update={"nnodes": args.nodes})
    manifest = trainjob_manifest(name="slipway-train", namespace="kubeflow",
                                 image=image_for("torch", params),
                                 node=NodeSpec.from_profile(profile), distributed=dist,
                                 job_dir=f"{WORKSPACE_MOUNT_PATH}/slipway-train",
                                 workspace_claim="<run>-kfp-workspace",
                                 workspace_mount=WORKSPACE_MOUNT_PATH)
    validate_manifest(manifest)
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
