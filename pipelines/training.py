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

from kfp import dsl

from components import kfp_components as ops
from components import stages
from components.config import Params, to_parameter
from pipelines import profiles

DESCRIPTION = (
    "Slipway training: ingest a DVC-versioned dataset, validate it, split it, fit "
    "preprocessing on the training split, train the configured estimator with k-fold CV, "
    "evaluate on the test split, gate against the threshold and the packaged model, and "
    "package a versioned model with lineage into the BentoML model store."
)


def stage_settings(task: dsl.PipelineTask, key: str, params: Params) -> dsl.PipelineTask:
    """What the stage graph says of a task: its title, its role's image, the version of
    its code (in its cache key), whether it may be cached; and its resource profile."""
    stage = stages.stage(key)
    task.set_display_name(stage.title)
    image = image_for(stages.image_role(stage, frameworks(params)), params)
    task.set_container_image(image)
    task.set_env_variable(stages.IMAGE_ENV, image)
    task.set_env_variable(stages.CODE_VERSION_ENV, stages.code_version(key))
    task.set_caching_options(stage.cached)
    profiles.apply(task, params.kfp.profile_for(key)[1])
    return task


def frameworks(params: Params) -> frozenset[str]:
    """The training frameworks a pipeline built from ``params`` fits models with."""
    tuned = {c.framework for c in params.tune.search_space}
    return frozenset({params.train.framework} | tuned)


def image_for(role: str, params: Params) -> str:
    """The image of a role: ``kfp.image`` (one image for every role until ``make images``
    builds one per role)."""
    return params.kfp.image


def pipeline_defaults(params: Params) -> dict:
    """The settings as kfp parameter defaults: one JSON text per params.yaml section, as
    the stages read them back (:func:`components.config.section`)."""
    sections = params.model_dump(mode="json", by_alias=True)
    return {**{name: to_parameter(value) for name, value in sections.items()},
            "dataset": to_parameter(sections["datasets"][params.dataset])}


def data_stages(params: Params, dataset_name, dataset, dataset_md5, data_root, validate,
                split, preprocess):
    """ingest → validate → split → preprocess; returns the preprocess task."""
    ingested = stage_settings(ops.ingest_op(dataset_name=dataset_name, dataset=dataset,
                                            dataset_md5=dataset_md5, data_root=data_root),
                              "ingest", params)
    checked = stage_settings(ops.validate_op(table=ingested.outputs["table"], rules=validate),
                             "validate", params)
    parts = stage_settings(ops.split_op(table=ingested.outputs["table"], rules=split),
                           "split", params)
    parts.after(checked)  # split only validated data
    return stage_settings(ops.preprocess_op(train=parts.outputs["train"],
                                            val=parts.outputs["val"],
                                            test=parts.outputs["test"], rules=preprocess),
                          "preprocess", params)


def release_stages(params: Params, prep, model, settings: dict, gate, model_name,
                   register_model, code_dir) -> None:
    """evaluate → gate → (if passed) package, for a fitted model."""
    scored = stage_settings(ops.evaluate_op(model=model, test=prep.outputs["test_features"]),
                            "evaluate", params)
    verdict = stage_settings(ops.gate_op(evaluation=scored.outputs["evaluation"], rules=gate,
                                         model_name=model_name), "gate", params)
    with dsl.If(verdict.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
        stage_settings(ops.package_op(
            transformer=prep.outputs["transformer"],
            model=model,
            evaluation=scored.outputs["evaluation"],
            gate=gate,
            model_name=model_name,
            register=register_model,
            code_dir=code_dir,
            **settings,
        ), "package", params)


def build(params: Params) -> Callable:
    """The ``training`` pipeline function with defaults from ``params``."""
    d = pipeline_defaults(params)

    @dsl.pipeline(name="training", description=DESCRIPTION)
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
        """
        prep = data_stages(params, dataset_name, dataset, dataset_md5, data_root, validate,
                           split, preprocess)
        fitted = stage_settings(ops.train_op(train=prep.outputs["train_features"],
                                             val=prep.outputs["val_features"], rules=train),
                                "train", params)
        release_stages(params, prep, fitted.outputs["model"],
                       {"dataset_name": dataset_name, "dataset": dataset, "validate": validate,
                        "split": split, "preprocess": preprocess, "train": train},
                       gate, model_name, register_model, code_dir)

    return training
