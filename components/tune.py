"""Tune stage: trials from the search space in params.yaml, scored, and the best one chosen.

Trials come from ``tune.search_space`` (every combination for ``grid``, ``n_trials`` of them
drawn with the seed for ``random``), each over any framework. A trial is scored by k-fold
cross-validation on the training split and, fitted on the whole training split, on the
validation split; the best on validation (ties: best CV) is retrained on train +
validation by the pipeline and then evaluated once on test. The ``tuning`` pipeline fans
the trials out with ``dsl.ParallelFor``; this CLI runs them one after another:

    python -m components.tune --train data/processed/train.parquet \\
        --val data/processed/val.parquet --out reports/tuning.json
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path
from typing import Any

from components.config import Params, TrainParams, TuneParams
from components.errors import SlipwayError
from components.io import read_table, write_json
from components.train import encode_target, features_and_target
from components.trainers import distributed, get_trainer


def generate_trials(tune: TuneParams, base: TrainParams) -> list[dict[str, Any]]:
    """The trials to run: framework, estimator and full hyperparameters of each.

    Each candidate's values are laid over ``train.hyperparameters`` of its estimator.
    """
    if not tune.search_space:
        raise SlipwayError("tune.search_space is empty",
                           "list at least one estimator with values to try in params.yaml")
    grid = []
    for cand in tune.search_space:
        names = list(cand.hyperparameters)
        for values in itertools.product(*(cand.hyperparameters[n] for n in names)):
            grid.append({
                "framework": cand.framework,
                "estimator": cand.estimator,
                "hyperparameters": {**base.hyperparameters.get(cand.estimator, {}),
                                    **dict(zip(names, values, strict=True))},
            })
    if tune.method == "random" and tune.n_trials < len(grid):
        grid = random.Random(tune.seed).sample(grid, tune.n_trials)
    return [{"trial": i, **t} for i, t in enumerate(grid)]


def trial_rules(base: TrainParams, trial: dict[str, Any]) -> TrainParams:
    """The train settings of one trial."""
    return base.model_copy(update={
        "framework": trial["framework"],
        "estimator": trial["estimator"],
        "hyperparameters": {**base.hyperparameters, trial["estimator"]: trial["hyperparameters"]},
    })


def score_trial(
    train_path: str | Path, val_path: str | Path, base: TrainParams, trial: dict[str, Any]
) -> dict[str, Any]:
    """k-fold CV on the training split and the validation score of one trial."""
    from sklearn.metrics import accuracy_score, r2_score

    rules = trial_rules(base, trial)
    train_df, meta = read_table(train_path)
    val_df, _ = read_table(val_path)
    if not len(val_df):
        raise SlipwayError("tuning needs a validation split", "set split.val_size above 0")
    task = meta["task"]
    x, y_raw = features_and_target(train_df, meta)
    y, classes = encode_target(y_raw, task)
    x_val, y_val_raw = features_and_target(val_df, meta)
    y_val, _ = encode_target(y_val_raw, task, classes)
    trainer = get_trainer(rules.framework, task, rules.estimator,
                          rules.chosen_hyperparameters(), rules.seed,
                          image_shape=meta.get("image_shape"))
    cv = trainer.cross_validate(x, y, rules.cv_folds)
    # A trial fits in its own task on one node (nproc_per_node processes); only the final
    # fit of a pipeline compiled with nnodes > 1 spans several nodes.
    one_node = rules.distributed.model_copy(update={"nnodes": 1})
    trainer = distributed.fit(trainer, x, y, x_val, y_val, one_node)
    score = accuracy_score if task == "classification" else r2_score
    return {
        **trial,
        "trial": trial["trial"],
        "hyperparameters": dict(trainer.hyperparameters),
        "metric": cv["metric"],
        "cv_mean": cv["mean"],
        "cv_std": cv["std"],
        "val_score": float(score(y_val, trainer.predict(x_val))),
    }


def select_best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial with the best validation score (ties: the better CV mean)."""
    if not results:
        raise SlipwayError("no trial results to choose from", "check the tuning trials ran")
    return max(results, key=lambda r: (r["val_score"], r["cv_mean"]))


def results_markdown(results: list[dict[str, Any]], best: dict[str, Any]) -> str:
    ordered = sorted(results, key=lambda r: -r["val_score"])
    metric = best["metric"]
    lines = [f"## Tuning: {len(results)} trials, best trial {best['trial']}", "",
             f"| trial | model | hyperparameters | cv {metric} | validation {metric} |",
             "|---|---|---|---|---|"]
    for r in ordered:
        hp = ", ".join(f"{k}={v}" for k, v in r["hyperparameters"].items())
        mark = " **best**" if r["trial"] == best["trial"] else ""
        lines.append(f"| {r['trial']}{mark} | {r['framework']}/{r['estimator']} | {hp} | "
                     f"{r['cv_mean']:.4f} ± {r['cv_std']:.4f} | {r['val_score']:.4f} |")
    return "\n".join(lines) + "\n"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="preprocessed training table")
    parser.add_argument("--val", required=True, help="preprocessed validation table")
    parser.add_argument("--out", required=True, help="JSON file for the trial results")


def _run(args: argparse.Namespace, params: Params) -> None:
    trials = generate_trials(params.tune, params.train)
    results = []
    for trial in trials:
        results.append(score_trial(args.train, args.val, params.train, trial))
        r = results[-1]
        print(f"tune: trial {r['trial']} {r['framework']}/{r['estimator']} "
              f"cv {r['cv_mean']:.4f} val {r['val_score']:.4f}")
    best = select_best(results)
    write_json(args.out, {"results": results, "best": best})
    print(f"tune: best trial {best['trial']} ({best['framework']}/{best['estimator']})")


def main(argv: list[str] | None = None) -> int:
    from components.cli import stage_main

    return stage_main("tune", __doc__.splitlines()[0], _add_arguments, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
