"""The stages as kfp v2 components: thin adapters from typed artifacts to the stage cores.

Each function body only imports its core, translates artifact paths and settings, and
records facts in artifact ``.metadata``; the logic lives in ``components/<stage>.py``. The
bodies run in their role's image (``make images``, which installs this package, so
``install_kfp_package=False``) and in this environment under kfp.local's subprocess runner.
The pipeline sets each task's image from the stage graph (:mod:`components.stages`).

Settings travel as the JSON text of their ``params.yaml`` section (``rules``, ``train``, ...)
and are validated by :func:`components.config.section`: a kfp ``dict`` parameter would pass
through a protobuf Struct, which sorts keys, drops nulls and turns every int into a float.

A :class:`~components.errors.SlipwayError` raised by a core is reported by
:func:`components.kfp_support.reporting_errors` as one clear line before the task exits
non-zero; the same context pushes the stage's run metrics when the pipeline was compiled
with a Pushgateway (:mod:`components.pushgateway`; :func:`report_op` is the exit task).
"""

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

# No `from __future__ import annotations` here: kfp reads the annotations as objects.
# The base image is a placeholder: the pipeline gives each task its role's image.
_component = dsl.component(base_image="python:3.11", install_kfp_package=False)


@_component
def ingest_op(dataset_name: str, dataset: str, dataset_md5: str, data_root: str,
              dataset_pointer: str, dvc_remote: str, table: Output[Dataset]):
    """Read the dataset declared in params.yaml into a typed Parquet table.

    ``dataset_md5`` is the content hash the run expects (DVC's md5 of the data): it keys
    the cache on the data, not its path, and the stage checks the data against it.
    Data not under ``data_root`` is first fetched from the DVC remote (``dvc_remote``,
    JSON) by its pointer (``dataset_pointer``, the ``.dvc`` file's outs entry as JSON).
    """
    from components.kfp_support import reporting_errors

    with reporting_errors("ingest"):
        from components.config import dataset_spec, from_parameter
        from components.dvc_remote import ensure_dataset
        from components.ingest import ingest

        spec = dataset_spec(dataset)
        fetched = ensure_dataset(getattr(spec, "path", None), data_root,
                                 from_parameter(dataset_pointer or "null"),
                                 from_parameter(dvc_remote or "null"))
        # fetched data was verified against its DVC pointer, the stronger check
        meta = ingest(dataset_name, spec, table.path, data_root,
                      expected_md5="" if fetched else dataset_md5)
        table.metadata.update({k: v for k, v in meta.items() if k != "features"})


@_component
def validate_op(table: Input[Dataset], rules: str, report: Output[Markdown]):
    """Check schema, missing values, duplicates and class balance against thresholds."""
    from components.kfp_support import reporting_errors

    with reporting_errors("validate"):
        from components.config import section
        from components.io import write_text
        from components.validate import validate

        result, markdown = validate(table.path, section("validate", rules))
        write_text(report.path, markdown)
        report.metadata["checks_passed"] = len(result["checks"])


@_component
def split_op(
    table: Input[Dataset],
    rules: str,
    train: Output[Dataset],
    val: Output[Dataset],
    test: Output[Dataset],
):
    """Split into train / validation / test, stratified for classification, seeded."""
    from components.kfp_support import reporting_errors

    with reporting_errors("split"):
        from components.config import section
        from components.split import split

        sizes = split(table.path, train.path, val.path, test.path, section("split", rules))
        for artifact, name in ((train, "train"), (val, "val"), (test, "test")):
            artifact.metadata["rows"] = sizes[name]


@_component
def preprocess_op(
    train: Input[Dataset],
    val: Input[Dataset],
    test: Input[Dataset],
    rules: str,
    transformer: Output[Model],
    train_features: Output[Dataset],
    val_features: Output[Dataset],
    test_features: Output[Dataset],
):
    """Fit imputation, encoding and scaling on train; apply it to all three splits."""
    from components.kfp_support import reporting_errors

    with reporting_errors("preprocess"):
        from components.config import section
        from components.preprocess import preprocess

        schema = preprocess(
            train.path, val.path, test.path, transformer.path,
            (train_features.path, val_features.path, test_features.path),
            section("preprocess", rules),
        )
        transformer.metadata.update(
            inputs=len(schema["features"]), outputs=len(schema["transformed_features"])
        )


@_component
def train_op(
    train: Input[Dataset],
    val: Input[Dataset],
    rules: str,
    model: Output[Model],
    cv_metrics: Output[Metrics],
):
    """Fit the configured estimator; record k-fold CV and validation scores."""
    from components.kfp_support import reporting_errors

    with reporting_errors("train"):
        from components.config import section
        from components.kfp_support import record_fit
        from components.train import train as train_core

        record = train_core(train.path, val.path, model.path, section("train", rules))
        record_fit(record, model, cv_metrics)


@_component
def evaluate_op(
    model: Input[Model],
    test: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[HTML],
    summary: Output[Markdown],
    evaluation: Output[Artifact],
):
    """Score on the test split; write metrics, plots and the HTML and Markdown reports."""
    from components.kfp_support import reporting_errors

    with reporting_errors("evaluate") as run_metrics:
        import shutil

        from components import pushgateway
        from components.evaluate import evaluate, write_outputs
        from components.kfp_support import write_metrics_file

        result = evaluate(model.path, test.path)
        run_metrics.add(pushgateway.evaluated, result["metrics"])
        paths = write_outputs(result, evaluation.path)
        shutil.copyfile(paths["report"], report.path)
        shutil.copyfile(paths["summary"], summary.path)
        for name, value in result["metrics"].items():
            metrics.log_metric(name, value)
        detail = result["detail"]
        if result["task"] == "classification":
            classification_metrics.log_confusion_matrix(
                [str(c) for c in detail["classes"]], detail["confusion_matrix"]
            )
            if "roc" in detail:
                roc = detail["roc"]
                classification_metrics.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
        evaluation.metadata["task"] = result["task"]
        write_metrics_file(metrics, classification_metrics)


@_component
def gate_op(
    evaluation: Input[Artifact], rules: str, model_name: str, decision: Output[Markdown]
) -> bool:
    """Pass when the test metric meets the threshold and is no worse than the packaged model.

    Returns a single bool (the reason is in ``decision``): kfp.local 2.17 cannot resolve a
    named output of a task inside a ``dsl.If`` condition, only the single ``Output``.
    """
    from components.kfp_support import reporting_errors

    with reporting_errors("gate") as run_metrics:
        from pathlib import Path

        from components import pushgateway
        from components.config import section
        from components.gate import decide
        from components.io import read_json, write_text
        from components.package import current_packaged

        result = read_json(Path(evaluation.path) / "evaluation.json")
        verdict = decide(result["metrics"], result["task"], section("gate", rules),
                         current_packaged(model_name))
        write_text(decision.path, f"# Gate: {'passed' if verdict.passed else 'REJECTED'}\n\n"
                                  f"{verdict.reason}\n")
        decision.metadata.update(verdict.as_dict())
        run_metrics.add(pushgateway.gated, verdict.as_dict())
        print(f"gate: {'passed' if verdict.passed else 'REJECTED'}: {verdict.reason}")
        return verdict.passed


@_component
def package_op(
    transformer: Input[Model],
    model: Input[Model],
    evaluation: Input[Artifact],
    dataset_name: str,
    dataset: str,
    validate: str,
    split: str,
    preprocess: str,
    train: str,
    gate: str,
    model_name: str,
    register_model: bool,
    code_dir: str,
    dvc_remote: str,
    trigger: str,
    model_version: Output[Model],
):
    """Write the model version (skops files, schema, metrics, lineage); register it in BentoML;
    push it to the DVC remote (``dvc_remote``, JSON; "" for none) and record its pointer.

    The settings arrive section by section (a dict of pipeline channels is not resolved
    by kfp.local) and are recorded together in the lineage, as params.yaml wrote them.
    """
    from components.kfp_support import reporting_errors

    with reporting_errors("package") as run_metrics:
        from pathlib import Path

        from components import pushgateway
        from components.config import from_parameter
        from components.package import package
        from components.package import register as register_version
        from components.stages import running_image

        sections = {"validate": validate, "split": split, "preprocess": preprocess,
                    "train": train, "gate": gate}
        settings = {"dataset": dataset_name,
                    "datasets": {dataset_name: from_parameter(dataset)},
                    **{name: from_parameter(text) for name, text in sections.items()}}
        images = {"train": model.metadata.get("image"), "package": running_image()}
        lineage = package(transformer.path, model.path,
                          Path(evaluation.path) / "evaluation.json", settings,
                          model_version.path, code_dir,
                          images={k: v for k, v in images.items() if v},
                          trigger=from_parameter(trigger) if trigger else None)
        model_version.metadata.update(version=lineage["version"],
                                      dataset_md5=lineage["dataset"]["md5"],
                                      framework=lineage["framework"])
        if register_model:
            model_version.metadata["bentoml_tag"] = register_version(model_version.path,
                                                                     model_name)
        if dvc_remote:  # the version's DVC pointer: `dvc pull` restores it anywhere
            from components.dvc_remote import push

            model_version.metadata["dvc"] = push(model_version.path,
                                                 from_parameter(dvc_remote))
        run_metrics.add(pushgateway.packaged, lineage["version"], dataset_name,
                        lineage["dataset"]["md5"], lineage["framework"],
                        model.metadata.get("estimator", ""))


# ---- tuning ------------------------------------------------------------------------------


@_component
def trials_op(tune: str, train: str) -> list[str]:
    """The trials of the search space (grid, or random draws from it)."""
    from components.kfp_support import reporting_errors

    with reporting_errors("trials"):
        from components.config import section, to_parameter
        from components.tune import generate_trials

        trials = generate_trials(section("tune", tune), section("train", train))
        print(f"trials: {len(trials)} to run")
        return [to_parameter(t) for t in trials]


@_component
def trial_op(
    train: Input[Dataset],
    val: Input[Dataset],
    rules: str,
    trial: str,
    result: Output[Artifact],
):
    """Score one trial: k-fold CV on the training split, then the validation split."""
    from components.kfp_support import reporting_errors

    with reporting_errors("trial"):
        from components.config import from_parameter, section
        from components.io import write_json
        from components.tune import score_trial

        scored = score_trial(train.path, val.path, section("train", rules),
                             from_parameter(trial))
        write_json(result.path, scored)
        result.metadata.update({k: scored[k] for k in ("trial", "estimator", "cv_mean",
                                                       "val_score")})
        print(f"trial {scored['trial']} {scored['framework']}/{scored['estimator']}: "
              f"cv {scored['cv_mean']:.4f}, validation {scored['val_score']:.4f}")


@_component
def select_op(results: Input[list[Artifact]], table: Output[Markdown], best: Output[Artifact]):
    """Choose the best trial on validation; write the results table."""
    from components.kfp_support import reporting_errors

    with reporting_errors("select"):
        from components.io import read_json, write_json, write_text
        from components.tune import results_markdown, select_best

        scored = [read_json(r.path) for r in results]
        chosen = select_best(scored)
        write_text(table.path, results_markdown(scored, chosen))
        write_json(best.path, {"results": scored, "best": chosen})
        best.metadata.update(trial=chosen["trial"], estimator=chosen["estimator"],
                             framework=chosen["framework"], val_score=chosen["val_score"])
        print(f"select: best trial {chosen['trial']} ({chosen['framework']}/"
              f"{chosen['estimator']}), validation {chosen['val_score']:.4f}")


@_component
def retrain_op(
    train: Input[Dataset],
    val: Input[Dataset],
    rules: str,
    tuning: Input[Artifact],
    model: Output[Model],
    cv_metrics: Output[Metrics],
) -> str:
    """Fit the best trial on train + validation; returns the train settings it used.

    Those (the chosen framework, estimator and hyperparameters over the base ``train``
    section) are what the packaged version's lineage records, not the base section.
    """
    from components.kfp_support import reporting_errors

    with reporting_errors("retrain"):
        from components.config import section, to_parameter
        from components.io import read_json
        from components.kfp_support import record_fit
        from components.train import train as train_core
        from components.tune import trial_rules

        results = read_json(tuning.path)
        chosen = trial_rules(section("train", rules), results["best"])
        record = train_core(train.path, val.path, model.path, chosen, merge_val=True,
                            tuning=results)
        record_fit(record, model, cv_metrics, trial=results["best"]["trial"])
        return to_parameter(chosen)


# ---- several nodes (train.distributed.nnodes > 1) ----------------------------------------
# The train and retrain tasks of a pipeline compiled with nnodes > 1 (pipelines/training.py
# picks these): the same adapters, whose fit runs as a Kubeflow Trainer TrainJob
# (components/trainers/trainjob.py). kfp's driver forwards the task's profile to them
# (dsl.TaskConfig) instead of applying it to the task's own pod, which only stages the data
# in the run's workspace, watches the job and records the model: the nodes get the GPUs.
# Env and volumes (the workspace) stay on the task too. A default pipeline uses train_op
# and retrain_op, so its IR does not change.
_cluster_component = dsl.component(
    base_image="python:3.11", install_kfp_package=False,
    task_config_passthroughs=[
        dsl.TaskConfigField.RESOURCES,
        dsl.TaskConfigField.KUBERNETES_NODE_SELECTOR,
        dsl.TaskConfigField.KUBERNETES_TOLERATIONS,
        dsl.TaskConfigPassthrough(field=dsl.TaskConfigField.ENV, apply_to_task=True),
        dsl.TaskConfigPassthrough(field=dsl.TaskConfigField.KUBERNETES_VOLUMES,
                                  apply_to_task=True),
    ],
)


@_cluster_component
def train_nodes_op(
    train: Input[Dataset],
    val: Input[Dataset],
    rules: str,
    workspace_path: str,
    shm_size: str,
    model: Output[Model],
    cv_metrics: Output[Metrics],
    task_config: dsl.TaskConfig,
):
    """train_op whose final fit is a TrainJob of ``train.distributed.nnodes`` nodes.

    ``workspace_path`` is kfp's workspace placeholder (the run's shared volume);
    ``shm_size`` the profile's ``/dev/shm`` for each node; ``task_config`` what kfp
    forwarded of the task's profile.
    """
    from components.kfp_support import reporting_errors

    with reporting_errors("train"):
        from components.config import section
        from components.kfp_support import record_fit
        from components.train import train as train_core
        from components.trainers.trainjob import task_fit

        settings = section("train", rules)
        fit = task_fit("train", settings.distributed, workspace_path, task_config, shm_size)
        record = train_core(train.path, val.path, model.path, settings, fit=fit)
        record_fit(record, model, cv_metrics)


@_cluster_component
def retrain_nodes_op(
    train: Input[Dataset],
    val: Input[Dataset],
    rules: str,
    tuning: Input[Artifact],
    workspace_path: str,
    shm_size: str,
    model: Output[Model],
    cv_metrics: Output[Metrics],
    task_config: dsl.TaskConfig,
) -> str:
    """retrain_op whose final fit is a TrainJob of ``train.distributed.nnodes`` nodes
    (arguments as train_nodes_op's)."""
    from components.kfp_support import reporting_errors

    with reporting_errors("retrain"):
        from components.config import section, to_parameter
        from components.io import read_json
        from components.kfp_support import record_fit
        from components.train import train as train_core
        from components.trainers.trainjob import task_fit
        from components.tune import trial_rules

        results = read_json(tuning.path)
        chosen = trial_rules(section("train", rules), results["best"])
        fit = task_fit("retrain", chosen.distributed, workspace_path, task_config, shm_size)
        record = train_core(train.path, val.path, model.path, chosen, merge_val=True,
                            tuning=results, fit=fit)
        record_fit(record, model, cv_metrics, trial=results["best"]["trial"])
        return to_parameter(chosen)


# ---- run metrics -------------------------------------------------------------------------


@_component
def report_op(status: dsl.PipelineTaskFinalStatus, created: str) -> str:
    """The exit task of a pipeline compiled with a Pushgateway: push the run's end, its
    final state and its duration (``created``: the pipeline job's creation time, from
    ``dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER``). Returns where they went."""
    from components.pushgateway import push_run

    said = push_run(status.state, created)
    print(f"run metrics: {said}")
    return said
