"""Train stage: fit the configured estimator on the preprocessed training split.

Records the k-fold cross-validation score on the training split and the score on the
validation split. With ``train.distributed.nproc_per_node`` > 1 the final fit runs as
that many torchrun processes (:mod:`components.trainers.distributed`). The model directory
holds the trainer's own files plus ``training.json`` (class names, feature names, scores, fit time).

    python -m components.train --train data/processed/train.parquet \\
        --val data/processed/val.parquet --model models/model --metrics reports/train.json
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Params, TrainParams
from components.errors import SlipwayError
from components.io import atomic_dir, file_hash, read_json, read_table, write_json
from components.trainers import Trainer, distributed, get_trainer, load_trainer

TRAINING_FILE = "training.json"


def encode_target(
    y: pd.Series, task: str, classes: list[str] | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """Class names to indices (classification) or floats (regression)."""
    if task == "regression":
        return y.to_numpy(dtype="float64"), None
    labels = y.astype(str)
    classes = classes if classes is not None else sorted(labels.unique().tolist())
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise SlipwayError(
            f"label(s) {', '.join(map(repr, unknown[:5]))} are not among the training "
            f"classes {classes}",
            "make sure every class appears in the training split",
        )
    return labels.map(index).to_numpy(dtype="int64"), classes


def features_and_target(frame: pd.DataFrame, meta: dict[str, Any]) -> tuple[np.ndarray, pd.Series]:
    target = meta["target"]
    return frame.drop(columns=[target]).to_numpy(dtype="float32"), frame[target]


def checkpoint_dir(
    rules: TrainParams, train_path: str | Path, merge_val: bool = False
) -> Path | None:
    """Where an epoch-based fit keeps its checkpoint: one folder per (data, settings) pair,
    so a rerun of the same fit resumes and a different fit never picks it up."""
    if not rules.checkpoint_dir or rules.framework == "sklearn":
        return None
    # Not the process count: a fit killed as 2 processes may be resumed as 1 (or 4).
    settings = rules.model_dump_json(exclude={"distributed"})
    key = hashlib.sha256(
        (file_hash(train_path, "sha256") + settings + str(merge_val)).encode()
    ).hexdigest()[:16]
    return Path(rules.checkpoint_dir) / key


def train(
    train_path: str | Path,
    val_path: str | Path,
    model_dir: str | Path,
    rules: TrainParams,
    *,
    merge_val: bool = False,
    tuning: dict[str, Any] | None = None,
    fit: Callable[..., Trainer] | None = None,
) -> dict[str, Any]:
    """Fit and save the model; returns the training record.

    Args:
        train_path: the preprocessed training table.
        val_path: the preprocessed validation table (may have no rows).
        model_dir: directory to save the model into.
        rules: framework, estimator, hyperparameters, folds and seed.
        merge_val: fit on train + validation (the tuning pipeline's final fit, once the
            validation split has chosen the trial); no early stopping then.
        tuning: trial results to keep with the model (shown in the evaluation report).
        fit: how the final fit runs, ``fit(trainer, x, y, x_val, y_val)`` returning the
            fitted trainer; None: in this process or, with ``train.distributed``, as
            torchrun processes on this node. On a cluster, several nodes:
            :func:`components.trainers.trainjob.cluster_fit`.
    """
    train_df, meta = read_table(train_path)
    val_df, _ = read_table(val_path)
    task = meta["task"]
    x, y_raw = features_and_target(train_df, meta)
    y, classes = encode_target(y_raw, task)
    trainer = get_trainer(rules.framework, task, rules.estimator,
                          rules.chosen_hyperparameters(), rules.seed,
                          image_shape=meta.get("image_shape"),
                          checkpoint_dir=checkpoint_dir(rules, train_path, merge_val))
    x_val = y_val = None
    if len(val_df):
        x_val, y_val_raw = features_and_target(val_df, meta)
        y_val, _ = encode_target(y_val_raw, task, classes)
        if merge_val:
            x, y = np.concatenate([x, x_val]), np.concatenate([y, y_val])
            x_val = y_val = None
    cv = trainer.cross_validate(x, y, rules.cv_folds)
    started = time.perf_counter()
    # With train.distributed.nproc_per_node > 1: torchrun processes (the CV folds above
    # fit in this process); the trainer returned is rank 0's model.
    if fit is None:
        trainer = distributed.fit(trainer, x, y, x_val, y_val, rules.distributed)
    else:
        trainer = fit(trainer, x, y, x_val, y_val)
    fit_seconds = time.perf_counter() - started
    record: dict[str, Any] = {
        **trainer.describe(),
        "classes": classes,
        "features": [c for c in train_df.columns if c != meta["target"]],
        "cv": cv,
        "fit_on": "train+val" if merge_val else "train",
        "rows": int(len(y)),
        "history": trainer.history,
    }
    if tuning is not None:
        record["tuning"] = tuning
    if x_val is not None:
        from sklearn.metrics import accuracy_score, r2_score

        score = accuracy_score if task == "classification" else r2_score
        record["val_score"] = float(score(y_val, trainer.predict(x_val)))
    with atomic_dir(model_dir) as tmp:  # all of the model's files, or none of them
        trainer.save(tmp)
        write_json(tmp / TRAINING_FILE, record)
    # Wall time is reported, not saved with the model: saved files stay byte-reproducible.
    return {**record, "fit_seconds": round(fit_seconds, 4)}


def load_model(
    model_dir: str | Path, hashes: dict[str, str] | None = None
) -> tuple[Trainer, dict[str, Any]]:
    """The trainer and its training record from a directory written by :func:`train`."""
    return load_trainer(model_dir, hashes), read_json(Path(model_dir) / TRAINING_FILE)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="preprocessed training table")
    parser.add_argument("--val", required=True, help="preprocessed validation table")
    parser.add_argument("--model", required=True, help="directory to save the model in")
    parser.add_argument("--metrics", help="JSON file for the cross-validation scores")


def _run(args: argparse.Namespace, params: Params) -> None:
    record = train(args.train, args.val, args.model, params.train)
    cv = record["cv"]
    if args.metrics:
        write_json(args.metrics, {f"cv_{cv['metric']}": cv["mean"], "cv_std": cv["std"],
                                  "val_score": record.get("val_score")})
    print(f"train: {record['framework']}/{record['estimator']} "
          f"cv {cv['metric']} {cv['mean']:.4f} ± {cv['std']:.4f}")


def main(argv: list[str] | None = None) -> int:
    from components.cli import stage_main

    return stage_main("train", __doc__.splitlines()[0], _add_arguments, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
