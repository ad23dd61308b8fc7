"""The tune core (components.tune): trials from the search space, their settings, scoring a
trial on real preprocessed tables, choosing the best and the results table.

generate_trials: a grid has one trial per combination (the product of each candidate's value
lists, summed over candidates); random search draws ``n_trials`` distinct ones reproducibly
for a seed and takes them all when ``n_trials`` reaches the grid's size; a candidate's values
are laid over ``train.hyperparameters`` of its estimator; an empty search space is an error.
score_trial runs on the tiny tables that tests/unit/conftest.py builds with the cores (split
and preprocess), and agrees with the training core fitting the same settings.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from components.config import Candidate, TrainParams, TuneParams
from components.errors import SlipwayError
from components.io import read_table, write_table
from components.train import train
from components.tune import (
    generate_trials,
    results_markdown,
    score_trial,
    select_best,
    trial_rules,
)

BASE = TrainParams(
    estimator="random_forest",
    cv_folds=2,
    seed=0,
    hyperparameters={
        "knn": {"n_neighbors": 7, "weights": "distance"},
        "svm": {"C": 1.0, "kernel": "rbf", "gamma": "scale"},
        "linear": {"alpha": 1.0},
        "mlp": {"hidden": [16], "epochs": 5, "lr": 0.01},
    },
)

SPACE = [
    Candidate(estimator="knn", hyperparameters={"n_neighbors": [1, 3, 5],
                                                "weights": ["uniform", "distance"]}),
    Candidate(estimator="svm", hyperparameters={"C": [0.5, 2.0]}),
    Candidate(framework="torch", estimator="mlp", hyperparameters={"lr": [0.001]}),
]
GRID_SIZE = 3 * 2 + 2 + 1


def _key(trial: dict) -> str:
    """A trial without its number, as a comparable string."""
    return json.dumps({k: v for k, v in trial.items() if k != "trial"}, sort_keys=True)


# ---- generate_trials --------------------------------------------------------------------

def test_grid_has_every_combination_of_every_candidate():
    trials = generate_trials(TuneParams(method="grid", search_space=SPACE), BASE)

    assert len(trials) == GRID_SIZE
    assert [t["trial"] for t in trials] == list(range(GRID_SIZE))
    knn = [(t["hyperparameters"]["n_neighbors"], t["hyperparameters"]["weights"])
           for t in trials if t["estimator"] == "knn"]
    assert sorted(knn) == sorted(itertools.product([1, 3, 5], ["uniform", "distance"]))
    assert sorted(t["hyperparameters"]["C"] for t in trials if t["estimator"] == "svm") \
        == [0.5, 2.0]
    assert len({_key(t) for t in trials}) == GRID_SIZE  # no combination twice
    assert {t["framework"] for t in trials if t["estimator"] != "mlp"} == {"sklearn"}
    (mlp,) = [t for t in trials if t["estimator"] == "mlp"]
    assert mlp["framework"] == "torch"


def test_grid_ignores_n_trials():
    trials = generate_trials(TuneParams(method="grid", n_trials=2, search_space=SPACE), BASE)
    assert len(trials) == GRID_SIZE


def test_grid_count_is_the_product_of_the_value_lists():
    space = [Candidate(estimator="random_forest",
                       hyperparameters={"n_estimators": [10, 20, 30, 40],
                                        "min_samples_leaf": [1, 2, 3],
                                        "max_depth": [2, 4]}),
             Candidate(estimator="logistic_regression", hyperparameters={"C": [0.1, 1.0]})]
    trials = generate_trials(TuneParams(method="grid", search_space=space), BASE)
    assert len(trials) == 4 * 3 * 2 + 2


def test_candidate_values_override_the_estimators_defaults():
    trials = generate_trials(TuneParams(method="grid", search_space=SPACE), BASE)

    for t in trials:
        defaults = BASE.hyperparameters[t["estimator"]]
        # Every default is kept unless the candidate sets it.
        assert set(t["hyperparameters"]) >= set(defaults)
    svm = [t["hyperparameters"] for t in trials if t["estimator"] == "svm"]
    assert svm == [{"C": 0.5, "kernel": "rbf", "gamma": "scale"},
                   {"C": 2.0, "kernel": "rbf", "gamma": "scale"}]
    (mlp,) = [t["hyperparameters"] for t in trials if t["estimator"] == "mlp"]
    assert mlp == {"hidden": [16], "epochs": 5, "lr": 0.001}  # lr 0.01 -> the candidate's
    # An estimator without defaults gets just the candidate's values.
    trials = generate_trials(TuneParams(method="grid", search_space=[
        Candidate(estimator="gradient_boosting", hyperparameters={"max_depth": [2]})]), BASE)
    assert trials == [{"trial": 0, "framework": "sklearn", "estimator": "gradient_boosting",
                       "hyperparameters": {"max_depth": 2}}]
    assert BASE.hyperparameters["svm"]["C"] == 1.0  # the base settings are left alone


def test_random_draws_n_trials_distinct_trials_from_the_grid():
    grid = {_key(t) for t in generate_trials(TuneParams(method="grid", search_space=SPACE),
                                             BASE)}
    trials = generate_trials(TuneParams(method="random", n_trials=4, seed=7,
                                        search_space=SPACE), BASE)

    assert len(trials) == 4
    assert [t["trial"] for t in trials] == [0, 1, 2, 3]
    drawn = {_key(t) for t in trials}
    assert len(drawn) == 4
    assert drawn <= grid


def test_random_is_reproducible_for_a_seed():
    def draw(seed: int) -> list[str]:
        tune = TuneParams(method="random", n_trials=4, seed=seed, search_space=SPACE)
        return [_key(t) for t in generate_trials(tune, BASE)]

    assert draw(7) == draw(7)
    # Different seeds draw differently (C(9, 4) = 126 subsets; these seeds differ).
    assert len({tuple(sorted(draw(seed))) for seed in range(5)}) > 1


@pytest.mark.parametrize("n_trials", [GRID_SIZE, GRID_SIZE + 5])
def test_random_takes_the_whole_grid_when_n_trials_reaches_its_size(n_trials):
    grid = generate_trials(TuneParams(method="grid", search_space=SPACE), BASE)
    trials = generate_trials(TuneParams(method="random", n_trials=n_trials, seed=3,
                                        search_space=SPACE), BASE)
    assert trials == grid


def test_empty_search_space_is_an_error():
    with pytest.raises(SlipwayError, match="tune.search_space is empty") as err:
        generate_trials(TuneParams(method="grid", search_space=[]), BASE)
    assert "at least one estimator" in err.value.fix


# ---- trial_rules --------------------------------------------------------------------------

def test_trial_rules_sets_framework_estimator_and_hyperparameters():
    trial = {"trial": 2, "framework": "torch", "estimator": "mlp",
             "hyperparameters": {"hidden": [8], "epochs": 3, "lr": 0.1}}
    rules = trial_rules(BASE, trial)

    assert rules.framework == "torch" and rules.estimator == "mlp"
    assert rules.chosen_hyperparameters() == {"hidden": [8], "epochs": 3, "lr": 0.1}
    # Folds, seed and the other estimators' settings stay the base's.
    assert (rules.cv_folds, rules.seed, rules.checkpoint_dir) \
        == (BASE.cv_folds, BASE.seed, BASE.checkpoint_dir)
    assert rules.hyperparameters["knn"] == BASE.hyperparameters["knn"]
    assert BASE.framework == "sklearn" and BASE.hyperparameters["mlp"]["lr"] == 0.01


# ---- score_trial ----------------------------------------------------------------------------

def test_score_trial_agrees_with_the_training_core(built_classification, tmp_path):
    train_path, val_path, _ = built_classification.processed
    trial = {"trial": 5, "framework": "sklearn", "estimator": "knn",
             "hyperparameters": {"n_neighbors": 3, "weights": "uniform"}}

    scored = score_trial(train_path, val_path, BASE, trial)

    assert scored["trial"] == 5 and isinstance(scored["trial"], int)
    assert (scored["framework"], scored["estimator"]) == ("sklearn", "knn")
    assert scored["hyperparameters"]["n_neighbors"] == 3
    assert isinstance(scored["hyperparameters"]["n_neighbors"], int)
    assert scored["metric"] == "accuracy"
    assert 0 <= scored["cv_std"] and 0 <= scored["cv_mean"] <= 1
    # The training core, fitting the same settings on the same split, scores the same.
    record = train(train_path, val_path, tmp_path / "model", trial_rules(BASE, trial))
    assert scored["cv_mean"] == pytest.approx(record["cv"]["mean"])
    assert scored["cv_std"] == pytest.approx(record["cv"]["std"])
    assert scored["val_score"] == pytest.approx(record["val_score"])
    # The well separated tiny classes are learnt.
    assert scored["val_score"] >= 0.75


def test_score_trial_uses_the_trials_hyperparameters(built_regression):
    train_path, val_path, _ = built_regression.processed

    def val_r2(alpha: float) -> dict:
        return score_trial(train_path, val_path, BASE, {
            "trial": 0, "framework": "sklearn", "estimator": "linear",
            "hyperparameters": {"alpha": alpha}})

    good, crushed = val_r2(0.001), val_r2(1e6)
    assert good["metric"] == "r2"
    assert good["val_score"] > 0.95  # y = 3 x1 - 2 x2 + 1 + noise
    assert crushed["val_score"] < 0.5  # a huge ridge penalty flattens the fit
    assert good["cv_mean"] > crushed["cv_mean"]


def test_score_trial_needs_a_validation_split(built_classification, tmp_path):
    train_path, val_path, _ = built_classification.processed
    val, meta = read_table(val_path)
    empty = tmp_path / "val.parquet"
    write_table(val.iloc[:0], empty, meta)
    trial = {"trial": 0, "framework": "sklearn", "estimator": "knn",
             "hyperparameters": {"n_neighbors": 3}}

    with pytest.raises(SlipwayError, match="tuning needs a validation split") as err:
        score_trial(train_path, empty, BASE, trial)
    assert "split.val_size" in err.value.fix


# ---- select_best and results_markdown ----------------------------------------------------

def _result(trial: int, val: float, cv: float, estimator: str = "knn") -> dict:
    return {"trial": trial, "framework": "sklearn", "estimator": estimator,
            "hyperparameters": {"n_neighbors": trial + 1}, "metric": "accuracy",
            "cv_mean": cv, "cv_std": 0.01, "val_score": val}


def test_select_best_takes_the_best_validation_score():
    results = [_result(0, 0.90, 0.99), _result(1, 0.95, 0.80), _result(2, 0.93, 0.97)]
    assert select_best(results)["trial"] == 1


def test_select_best_breaks_ties_by_cv_mean():
    results = [_result(0, 1.0, 0.90), _result(1, 1.0, 0.95), _result(2, 1.0, 0.92),
               _result(3, 0.8, 0.99)]
    assert select_best(results)["trial"] == 1
    assert select_best(list(reversed(results)))["trial"] == 1  # whatever the order


def test_select_best_of_nothing_is_an_error():
    with pytest.raises(SlipwayError, match="no trial results"):
        select_best([])


def test_results_markdown_orders_by_validation_and_marks_the_best():
    results = [_result(0, 0.90, 0.91), _result(1, 0.97, 0.93, "svm"), _result(2, 0.95, 0.96)]
    best = select_best(results)
    text = results_markdown(results, best)
    lines = text.splitlines()

    assert lines[0] == "## Tuning: 3 trials, best trial 1"
    assert "| cv accuracy | validation accuracy |" in lines[2]
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[0] for r in rows] == ["| 1 **best**", "| 2", "| 0"]
    assert sum("**best**" in line for line in lines) == 1
    assert rows[0] == ("| 1 **best** | sklearn/svm | n_neighbors=2 | 0.9300 ± 0.0100 "
                       "| 0.9700 |")
    assert text.endswith("\n")


def test_results_markdown_marks_the_chosen_trial_not_the_first_row():
    # Equal validation scores: the tie is broken by CV (trial 0), not by row order.
    results = [_result(1, 1.0, 0.90), _result(0, 1.0, 0.95)]
    text = results_markdown(results, select_best(results))
    (marked,) = [line for line in text.splitlines() if "**best**" in line]
    assert marked.startswith("| 0 **best** |")
    assert "best trial 0" in text


def test_tune_cli_scores_every_trial(built_classification, tmp_path, repo):
    """``python -m components.tune`` in-process: every trial of the grid, and the best."""
    from components.tune import main

    train_path, val_path, _ = built_classification.processed
    params = tmp_path / "params.yaml"
    params.write_text((repo / "params.yaml").read_text())
    out = tmp_path / "tuning.json"
    space = ("[{estimator: knn, hyperparameters: {n_neighbors: [1, 5]}}, "
             "{estimator: logistic_regression, hyperparameters: {C: [0.1]}}]")
    argv = ["--params", str(params), "--train", str(train_path), "--val", str(val_path),
            "--out", str(out), "--set", "tune.method=grid", "--set", f"tune.search_space={space}",
            "--set", "train.cv_folds=2"]
    assert main(argv) == 0
    written = json.loads(Path(out).read_text())
    assert sorted(r["trial"] for r in written["results"]) == [0, 1, 2]
    assert written["best"] == select_best(written["results"])
