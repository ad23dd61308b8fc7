"""The ``training`` pipeline: ingest → validate → split → preprocess → train → evaluate →
gate → package, wired with typed kfp artifacts.

Its parameter defaults come from ``params.yaml``: :func:`build` takes the validated
settings and returns the ``@dsl.pipeline`` function, so nothing is read at import time.
Compile it with ``python -m pipelines compile``; run it locally with
``python -m pipelines run training``.
"""

# No `from __future__ import annotations` here: kfp reads the annotations as objects.
from collections.abc import Callable

from kfp import dsl

from components import kfp_components as ops
from components.config import Params
from pipelines import profiles

DESCRIPTION = (
    "Slipway training: ingest a DVC-versioned dataset, validate it, split it, fit "
    "preprocessing on the training split, train the configured estimator with k-fold CV, "
    "evaluate on the test split, gate against the threshold and the packaged model, and "
    "package a versioned model with lineage into the BentoML model store."
)


def _without_none(value):
    """KFP parameters cannot hold null, so drop null settings; a task that re-validates its
    section gets the field's default back, which is right only where that default is null
    too (a setting that is off is "", never null: tests/unit/test_pipeline_defaults.py)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


# Dashboard names of the tasks, by the key that `kfp.task_profiles` uses.
TITLES = {
    "ingest": "Ingest dataset",
    "validate": "Validate data",
    "split": "Split train / val / test",
    "preprocess": "Fit preprocessing",
    "train": "Train model",
    "evaluate": "Evaluate on test split",
    "gate": "Gate",
    "package": "Package model version",
}


def stage_settings(task: dsl.PipelineTask, key: str, params: Params,
                   title: str | None = None) -> dsl.PipelineTask:
    """Display name, component image, caching and the task's resource profile."""
    task.set_display_name(title or TITLES[key])
    task.set_container_image(params.kfp.image)
    task.set_caching_options(True)
    profiles.apply(task, params.kfp.profile_for(key)[1])
    return task


def pipeline_defaults(params: Params) -> dict:
    """The settings as kfp parameter defaults: one dict per params.yaml section."""
    sections = _without_none(params.model_dump(mode="json", by_alias=True))
    dataset_default = sections["datasets"][params.dataset]
    if dataset_default.get("columns"):
        # A list keeps the file's column order; a Struct parameter would sort the keys.
        dataset_default["columns"] = params.dataset_spec.columns_as_pairs()
    return {**sections, "dataset": dataset_default}


def data_stages(params: Params, dataset_name, dataset, data_root, validate, split, preprocess):
    """ingest → validate → split → preprocess; returns the preprocess task."""
    ingested = stage_settings(ops.ingest_op(dataset_name=dataset_name, dataset=dataset,
                                            data_root=data_root), "ingest", params)
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
    verdict.set_caching_options(False)  # compares with the store's current model
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
        ), "package", params).set_caching_options(False)


def build(params: Params) -> Callable:
    """The ``training`` pipeline function with defaults from ``params``."""
    d = pipeline_defaults(params)

    @dsl.pipeline(name="training", description=DESCRIPTION)
    def training(
        dataset_name: str = params.dataset,
        dataset: dict = d["dataset"],
        validate: dict = d["validate"],
        split: dict = d["split"],
        preprocess: dict = d["preprocess"],
        train: dict = d["train"],
        gate: dict = d["gate"],
        model_name: str = params.model_name(),
        register_model: bool = params.package.bentoml_store,
        data_root: str = ".",
        code_dir: str = ".",
    ):
        """Train, evaluate, gate and package one model.

        Args:
            dataset_name: key of the dataset under ``datasets`` in params.yaml.
            dataset: that dataset's declaration (source, path, target, column types).
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
        prep = data_stages(params, dataset_name, dataset, data_root, validate, split,
                           preprocess)
        fitted = stage_settings(ops.train_op(train=prep.outputs["train_features"],
                                             val=prep.outputs["val_features"], rules=train),
                                "train", params)
        release_stages(params, prep, fitted.outputs["model"],
                       {"dataset_name": dataset_name, "dataset": dataset, "validate": validate,
                        "split": split, "preprocess": preprocess, "train": train},
                       gate, model_name, register_model, code_dir)

    return training
