"""The ``tuning`` pipeline: the training pipeline's data stages, then trials from the
search space in params.yaml (``tune``) fanned out with ``dsl.ParallelFor``, the best trial on
validation retrained on train + validation, evaluated once on test, gated and packaged.

Each trial is scored by k-fold cross-validation on the training split and by its
validation score; the trial table and a plot of the scores go into the evaluation report.
Run it locally with ``python -m pipelines run tuning`` (``make tune``).
"""

# No `from __future__ import annotations` here: kfp reads the annotations as objects.
from collections.abc import Callable

from kfp import dsl

from components.config import Params
from pipelines import run_metrics
from pipelines.training import SeveralNodes, Wiring, dvc_defaults, pipeline_defaults

DESCRIPTION = (
    "Slipway tuning: ingest, validate, split and preprocess a DVC-versioned dataset; score "
    "each trial of the search space by k-fold CV on the training split and on validation, "
    "in parallel; retrain the best trial on train + validation; evaluate it once on the "
    "test split, gate it and package it with lineage into the BentoML model store."
)

def build(params: Params) -> Callable:
    """The ``tuning`` pipeline function with defaults from ``params``."""
    d = pipeline_defaults(params)
    dvc = dvc_defaults(params)

    @dsl.pipeline(name="tuning", description=DESCRIPTION,
                  pipeline_config=SeveralNodes(params).pipeline_config())
    def tuning(
        dataset_name: str = params.dataset,
        dataset: str = d["dataset"],
        dataset_md5: str = "",
        validate: str = d["validate"],
        split: str = d["split"],
        preprocess: str = d["preprocess"],
        train: str = d["train"],
        tune: str = d["tune"],
        gate: str = d["gate"],
        model_name: str = params.model_name(),
        register_model: bool = params.package.bentoml_store,
        data_root: str = ".",
        code_dir: str = ".",
        dataset_pointer: str = dvc["dataset_pointer"],
        dvc_remote: str = dvc["dvc_remote"],
        trigger: str = "",
    ):
        """Tune, then evaluate, gate and package the best model.

        Args:
            dataset_name: key of the dataset under ``datasets`` in params.yaml.
            dataset: that dataset's declaration (source, path, target, column types).
            dataset_md5: the data's content hash (DVC's md5); set by the runner, it keys
                the cache on the bytes of the data.
            validate: data validation thresholds.
            split: test and validation fractions and the seed.
            preprocess: imputation and scaling choices.
            train: base training settings (CV folds, seed, default hyperparameters).
            tune: search method, number of trials, seed and the search space. Its
                ``parallelism`` is not read from here: ``dsl.ParallelFor`` takes a number
                fixed when the pipeline is built, from params.yaml's ``tune.parallelism``
                (set it with ``--set`` or before compiling).
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
        with run_metrics.reported(params, "tuning", wiring):  # if a Pushgateway is set
            for key in ("ingest", "validate", "split", "preprocess"):
                wiring.add(key)
            drawn = wiring.add("trials")
            with dsl.ParallelFor(drawn.output, parallelism=params.tune.parallelism) as trial:
                scored = wiring.add("trial", trial=trial)
            wiring.add("select", results=dsl.Collected(scored.outputs["result"]))
            fitted = wiring.add("retrain")
            wiring.add("evaluate")
            wiring.add("gate")
            # The lineage records the settings the model was fitted with: the chosen trial's.
            wiring.add("package", train=fitted.outputs["Output"])

    return tuning
