"""Train: every sklearn estimator per task, the cv record, saved models and setting errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.svm import SVC

from components.config import TrainParams
from components.errors import SlipwayError
from components.io import read_json, write_table
from components.train import checkpoint_dir, encode_target, load_model, train
from components.trainers import get_trainer, load_trainer
from components.trainers.sklearn import SklearnTrainer

SMALL = {"n_estimators": 30}
CASES = [
    ("classification", "logistic_regression", {}, "LogisticRegression"),
    ("classification", "random_forest", SMALL, "RandomForestClassifier"),
    ("classification", "gradient_boosting", SMALL, "GradientBoostingClassifier"),
    ("classification", "svm", {}, "CalibratedClassifierCV"),
    ("classification", "knn", {"n_neighbors": 3}, "KNeighborsClassifier"),
    ("regression", "linear", {}, "Ridge"),
    ("regression", "random_forest", SMALL, "RandomForestRegressor"),
    ("regression", "gradient_boosting", SMALL, "GradientBoostingRegressor"),
    ("regression", "svm", {"C": 10.0}, "SVR"),
    ("regression", "knn", {"n_neighbors": 3}, "KNeighborsRegressor"),
]


def processed_tables(tmp_path, task: str, n_train: int = 24, n_val: int = 6):
    """Preprocessed-looking train and val tables: two float features and a target."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n_train + n_val, 2)).astype("float32")
    if task == "classification":
        target = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no").astype(object)
        x[:, 0] += np.where(target == "yes", 2.0, -2.0)
    else:
        target = 3 * x[:, 0] - 2 * x[:, 1] + 1
    frame = pd.DataFrame({"f0": x[:, 0], "f1": x[:, 1], "t": target})
    meta = {"name": "tiny", "task": task, "target": "t",
            "features": {"f0": "numeric", "f1": "numeric"}, "transformed": True}
    write_table(frame.iloc[:n_train], tmp_path / "train.parquet", meta)
    write_table(frame.iloc[n_train:], tmp_path / "val.parquet", meta)
    return tmp_path / "train.parquet", tmp_path / "val.parquet"


@pytest.mark.parametrize(("task", "estimator", "hyper", "cls_name"), CASES,
                         ids=[f"{t[:3]}-{e}" for t, e, _, _ in CASES])
def test_each_estimator_trains_saves_and_reloads(tmp_path, task, estimator, hyper, cls_name):
    train_path, val_path = processed_tables(tmp_path, task)
    rules = TrainParams(estimator=estimator, cv_folds=3, seed=5,
                        hyperparameters={estimator: hyper})

    record = train(train_path, val_path, tmp_path / "model", rules)

    assert record["framework"] == "sklearn"
    assert (record["task"], record["estimator"]) == (task, estimator)
    assert record["hyperparameters"] == hyper
    assert record["features"] == ["f0", "f1"]
    assert record["classes"] == (["no", "yes"] if task == "classification" else None)
    assert record["cv"]["metric"] == ("accuracy" if task == "classification" else "r2")
    assert len(record["cv"]["folds"]) == 3
    assert record["val_score"] >= 0.6
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "model.skops", "trainer.json", "training.json",
    ]
    trainer, saved = load_model(tmp_path / "model")
    assert type(trainer.model).__name__ == cls_name
    assert saved == {k: v for k, v in record.items() if k != "fit_seconds"}
    assert record["fit_seconds"] >= 0


def test_cv_record_summarises_the_folds(tmp_path):
    train_path, val_path = processed_tables(tmp_path, "classification")

    cv = train(train_path, val_path, tmp_path / "m",
               TrainParams(estimator="logistic_regression", cv_folds=4, seed=0))["cv"]

    assert len(cv["folds"]) == 4
    assert all(0.0 <= s <= 1.0 for s in cv["folds"])
    assert cv["mean"] == pytest.approx(np.mean(cv["folds"]))
    assert cv["std"] == pytest.approx(np.std(cv["folds"]))


def test_same_seed_gives_the_same_model_file(tmp_path):
    train_path, val_path = processed_tables(tmp_path, "classification")
    rules = TrainParams(estimator="random_forest", cv_folds=2, seed=3,
                        hyperparameters={"random_forest": SMALL})

    first = train(train_path, val_path, tmp_path / "a", rules)
    second = train(train_path, val_path, tmp_path / "b", rules)

    assert first["cv"] == second["cv"]
    assert (tmp_path / "a" / "model.skops").read_bytes() == \
        (tmp_path / "b" / "model.skops").read_bytes()


def test_seed_becomes_random_state_and_svc_is_calibrated():
    forest = SklearnTrainer("classification", "random_forest", {}, 13).model
    calibrated = SklearnTrainer("classification", "svm", {"C": 2.0}, 13).model
    chosen = SklearnTrainer("classification", "random_forest", {"random_state": 1}, 13).model

    assert forest.random_state == 13
    assert isinstance(calibrated.estimator, SVC)
    assert (calibrated.estimator.C, calibrated.estimator.random_state) == (2.0, 13)
    assert chosen.random_state == 1


def test_empty_validation_split_records_no_val_score(tmp_path):
    train_path, val_path = processed_tables(tmp_path, "regression", n_val=0)

    record = train(train_path, val_path, tmp_path / "m",
                   TrainParams(estimator="linear", cv_folds=2, seed=0))

    assert "val_score" not in record
    assert read_json(tmp_path / "m" / "training.json")["cv"] == record["cv"]


@pytest.mark.parametrize("off", [None, ""])
def test_checkpoints_off_gives_no_checkpoint_folder(tmp_path, off):
    train_path, _ = processed_tables(tmp_path, "classification")
    rules = TrainParams(framework="torch", estimator="mlp", checkpoint_dir=off)
    assert rules.checkpoint_dir == ""  # null reads as off, and stays a string for kfp
    assert checkpoint_dir(rules, train_path) is None
    on = checkpoint_dir(rules.model_copy(update={"checkpoint_dir": str(tmp_path / "c")}),
                        train_path)
    assert on is not None and on.parent == tmp_path / "c"
    assert checkpoint_dir(TrainParams(checkpoint_dir=str(tmp_path)), train_path) is None  # sklearn


def test_classifier_predictions_reload_identically(tmp_path):
    train_path, val_path = processed_tables(tmp_path, "classification")
    train(train_path, val_path, tmp_path / "m",
          TrainParams(estimator="gradient_boosting", cv_folds=2, seed=0,
                      hyperparameters={"gradient_boosting": SMALL}))
    x = np.random.default_rng(1).normal(size=(5, 2)).astype("float32")

    trainer = load_trainer(tmp_path / "m")
    proba = trainer.predict_proba(x)

    assert proba.shape == (5, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert trainer.predict(x).tolist() == proba.argmax(axis=1).tolist()


def test_unknown_estimator_suggests_the_nearest():
    with pytest.raises(SlipwayError) as caught:
        get_trainer("sklearn", "classification", "random_forrest", {}, 0)

    assert "unknown estimator 'random_forrest' for framework sklearn" in caught.value.message
    assert "did you mean 'random_forest'?" in caught.value.fix


def test_unknown_framework():
    with pytest.raises(SlipwayError, match="unknown framework 'xgboost'"):
        get_trainer("xgboost", "classification", "gbm", {}, 0)


@pytest.mark.parametrize(
    ("task", "estimator", "usable"),
    [
        ("regression", "logistic_regression", "linear, random_forest"),
        ("classification", "linear", "logistic_regression, random_forest"),
    ],
)
def test_estimator_not_for_the_task(task, estimator, usable):
    with pytest.raises(SlipwayError) as caught:
        SklearnTrainer(task, estimator, {}, 0)

    assert f"estimator {estimator!r} does not do {task}" in caught.value.message
    assert usable in caught.value.fix
    assert estimator not in caught.value.fix


def test_unknown_hyperparameter_is_named():
    with pytest.raises(SlipwayError) as caught:
        SklearnTrainer("classification", "random_forest", {"n_estimatrs": 5}, 0)

    assert "RandomForestClassifier has no hyperparameter(s) n_estimatrs" in caught.value.message
    assert "train.hyperparameters.random_forest" in caught.value.fix
    assert "did you mean 'n_estimators'?" in caught.value.fix


def test_bad_hyperparameter_value_fails_the_fit_with_a_slipway_error():
    trainer = SklearnTrainer("classification", "logistic_regression", {"C": -1.0}, 0)
    x = np.array([[0.0], [1.0], [2.0], [3.0]])

    with pytest.raises(SlipwayError, match="LogisticRegression could not be fitted: .*'C'"):
        trainer.fit(x, np.array([0, 0, 1, 1]))


def test_more_folds_than_rows_is_a_slipway_error():
    trainer = SklearnTrainer("classification", "logistic_regression", {}, 0)
    x = np.array([[0.0], [1.0], [2.0], [3.0]])

    with pytest.raises(SlipwayError, match="cv_folds"):
        trainer.cross_validate(x, np.array([0, 0, 1, 1]), 5)


def test_encode_target():
    y, classes = encode_target(pd.Series(["b", "a", "b"]), "classification")
    assert (y.tolist(), classes) == ([1, 0, 1], ["a", "b"])

    values, none = encode_target(pd.Series([1, 2.5]), "regression")
    assert (values.tolist(), none) == ([1.0, 2.5], None)

    with pytest.raises(SlipwayError, match=r"label\(s\) 'c' are not among the training classes"):
        encode_target(pd.Series(["a", "c"]), "classification", ["a", "b"])
