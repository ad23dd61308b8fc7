"""The ``training`` pipeline: ingest → validate → split → preprocess → train → evaluate →
gate → package, wired with typed kfp artifacts. What each task is (title, image, cache) comes
from the stage graph, :mod:`components.stages`.

Its parameter defaults come from ``params.yaml``: :func:`build` takes the validated
settings and returns the ``@dsl.pipeline`` function, so nothing is read at import time.
Compile it with ``python -m pipelines compile``; run it locally with
``python -m pipelines run training``.
"""

# No `from __future__ import annotations` here: kfp reads the annotations as objects.
from collections.abc import Callable
from typing import Any

from kfp import dsl

from components import stages
from components.config import Params, to_parameter
from pipelines import profiles, run_metrics

DESCRIPTION = (
    "Slipway training: ingest a DVC-versioned dataset, validate it, split it, fit "
    "preprocessing on the training split, train the configured estimator with k-fold CV, "
    "evaluate on the test split, gate against the threshold and the packaged model, and "
    "package a versioned model with lineage into the BentoML model store."
)


def stage_settings(task: dsl.PipelineTask, key: str, params: Params,
                   op: str | None = None) -> dsl.PipelineTask:
    """What the stage graph says of a task: its title, its role's image, the version of
    its code (in its cache key; ``op``: the component variant it runs, if not the stage's
    own), whether it may be cached; and its resource profile."""
    stage = stages.stage(key)
    task.set_display_name(stage.title)
    image = image_for(stages.image_role(stage, frameworks(params)), params)
    task.set_container_image(image)
    task.set_env_variable(stages.IMAGE_ENV, image)
    task.set_env_variable(stages.CODE_VERSION_ENV, stages.code_version(key, op))
    task.set_caching_options(stage.cached)
    if stage.remote and params.kfp.remote_secret:
        from kfp import kubernetes

        kubernetes.use_secret_as_env(task, secret_name=params.kfp.remote_secret,
                                     secret_key_to_env={k: k for k in
                                                        params.kfp.remote_secret_keys})
    profiles.apply(task, params.kfp.profile_for(key)[1])
    return task


def frameworks(params: Params) -> frozenset[str]:
    """The training frameworks a pipeline built from ``params`` fits models with."""
    tuned = {c.framework for c in params.tune.search_space}
    return frozenset({params.train.framework} | tuned)


def image_for(role: str, params: Params) -> str:
    """The image a task of ``role`` runs in: by digest when ``make images`` built it (by the
    commit's tag otherwise). With ``kfp.registry`` set, the commit's tag in that registry:
    a push gives the image a new manifest digest there, so the local one would not pull."""
    from pipelines import images

    if params.kfp.registry:
        tag = images.built().get(role, {}).get("commit") or images.git_commit()
        return f"{params.kfp.registry.rstrip('/')}/slipway-{role}:{tag}"
    return images.image_ref(role)


def pipeline_defaults(params: Params) -> dict:
    """The settings as kfp parameter defaults: one JSON text per params.yaml section, as
    the stages read them back (:func:`components.config.section`)."""
    sections = params.model_dump(mode="json", by_alias=True)
    return {**{name: to_parameter(value) for name, value in sections.items()},
            "dataset": to_parameter(sections["datasets"][params.dataset])}


def dvc_defaults(params: Params) -> dict[str, str]:
    """The dataset's DVC pointer and the repository's object-store remote, as compiled in."""
    from components.dvc_remote import pipeline_arguments

    return pipeline_arguments(getattr(params.dataset_spec, "path", None), ".", portable=True)


class Wiring:
    """Adds stages to the pipeline being defined, wired as the stage graph says.

    An artifact input comes from the output the stage ``takes`` it from; ``rules`` is the
    pipeline parameter of the stage's ``section``; every other input is the pipeline
    parameter of its name, unless given. A stage with ``when`` runs inside ``dsl.If`` on
    that stage's result.
    """

    def __init__(self, params: Params, values: dict[str, Any]) -> None:
        self.params, self.values = params, values
        self.tasks: dict[str, dsl.PipelineTask] = {}
        self.nodes = SeveralNodes(params)

    def add(self, key: str, **given: Any) -> dsl.PipelineTask:
        stage = stages.stage(key)
        if stage.when:
            # kfp.local 2.17 resolves only the single `Output` of a task in a condition.
            passed = self.tasks[stage.when].outputs["Output"] == True  # noqa: E712
            with dsl.If(passed, name=f"{stage.when}-passed"):
                return self._add(stage, given)
        return self._add(stage, given)

    def _add(self, stage: stages.Stage, given: dict[str, Any]) -> dsl.PipelineTask:
        args = {}
        op = self.nodes.op(stage)
        component = stage.component(op)
        given = {**self.nodes.inputs(stage), **given}
        for name, spec in (component.component_spec.inputs or {}).items():
            if spec.type == "TaskConfig":  # kfp's driver fills it in (SeveralNodes)
                continue
            if name in given:
                args[name] = given[name]
            elif name in stage.takes:
                source, output = stage.source(name)
                args[name] = self.tasks[source].outputs[output]
            else:
                args[name] = self.values[stage.section if name == "rules" else name]
        task = stage_settings(component(**args), stage.key, self.params, op)
        for key in stage.after:
            task.after(self.tasks[key])
        self.tasks[stage.key] = task
        if stage.provides:
            self.tasks[stage.provides] = task
        return task


class SeveralNodes:
    """What ``train.distributed.nnodes`` > 1 changes in a pipeline: its train and retrain
    tasks run the ``*_nodes_op`` variants of their components (their fit is a Kubeflow
    Trainer TrainJob, :mod:`components.trainers.trainjob`), which take the run's workspace
    (``dsl.WORKSPACE_PATH_PLACEHOLDER``), the profile's ``/dev/shm`` for the nodes and,
    through kfp's task-config passthroughs, the rest of the task's profile; and the pipeline
    asks kfp for that workspace (:meth:`pipeline_config`). With one node nothing changes:
    the compiled IR is the same as without this class.
    """

    OPS = {"train": "train_nodes_op", "retrain": "retrain_nodes_op"}

    def __init__(self, params: Params) -> None:
        self.params = params
        self.on = params.train.distributed.nnodes > 1

    def op(self, stage: stages.Stage) -> str | None:
        """The component variant the stage runs as (its code version follows that
        variant's imports, the TrainJob code among them); None: the stage's own."""
        return self.OPS.get(stage.key) if self.on else None

    def inputs(self, stage: stages.Stage) -> dict[str, Any]:
        if not self.op(stage):
            return {}
        shm = self.params.kfp.profile_for(stage.key)[1].shm_size or ""
        return {"workspace_path": dsl.WORKSPACE_PATH_PLACEHOLDER, "shm_size": shm}

    def pipeline_config(self) -> dsl.PipelineConfig | None:
        """The run's workspace: a PersistentVolumeClaim kfp creates per run and mounts in
        the task at ``/kfp-workspace``; the TrainJob's nodes mount the same claim, so it
        must be ReadWriteMany (``train.distributed.storage_class``)."""
        if not self.on:
            return None
        dist = self.params.train.distributed
        patch: dict[str, Any] = {"accessModes": ["ReadWriteMany"]}
        if dist.storage_class:
            patch["storageClassName"] = dist.storage_class
        return dsl.PipelineConfig(workspace=dsl.WorkspaceConfig(
            size=dist.workspace_size,
            kubernetes=dsl.KubernetesWorkspaceConfig(pvcSpecPatch=patch)))


def build(params: Params) -> Callable:
    """The ``training`` pipeline function with defaults from ``params``."""
    d = pipeline_defaults(params)
    dvc = dvc_defaults(params)

    @dsl.pipeline(name="training", description=DESCRIPTION,
                  pipeline_config=SeveralNodes(params).pipeline_config())
    def training(
        dataset_name: str = params.dataset,
        dataset: str = d["dataset"],
        dataset_md5: str = "",
        validate: str = d["validate"],
        split: str = d["split"],
        preprocess: str = d["preprocess"],
        train: str = d["train"],
        gate: str = d["gate"],
        model_name: str = params.model_name(),
        register_model: bool = params.package.bentoml_store,
        data_root: str = ".",
        code_dir: str = ".",
        dataset_pointer: str = dvc["dataset_pointer"],
        dvc_remote: str = dvc["dvc_remote"],
        trigger: str = "",
    ):
        """Train, evaluate, gate and package one model.

        Args:
            dataset_name: key of the dataset under ``datasets`` in params.yaml.
            dataset: that dataset's declaration (source, path, target, column types).
            dataset_md5: the data's content hash (DVC's md5); set by the runner, it keys
                the cache on the bytes of the data.
            validate: data validation thresholds.
            split: test and validation fractions and the seed.
            preprocess: imputation and scaling choices.
            train: framework, estimator, hyperparameters, CV folds, seed.
            gate: metric thresholds and tolerance against the packaged model.
            model_name: BentoML model store name for the packaged version.
            register_model: add the packaged version to the BentoML model store.
            data_root: directory that dataset paths are relative to (the DVC work tree).
            code_dir: git work tree whose commit is recorded in the lineage.
            dataset_pointer: the data's DVC pointer (its ``.dvc`` outs entry, JSON): ingest
                fetches the data by it when it is not under ``data_root``.
            dvc_remote: the DVC remote (JSON: name, url, endpointurl; credentials come
                from the task's environment): the data comes from it, the packaged model
                version goes to it. "" for none.
            trigger: the alert that started this run (JSON: alert, model version,
                features, PSI), recorded in the lineage; "" for a run started by hand.
        """
        wiring = Wiring(params, dict(locals()))  # the parameters above, by name
        with run_metrics.reported(params, "training", wiring):  # if a Pushgateway is set
            for key in stages.PIPELINE_STAGES["training"]:
                wiring.add(key)

    return training
