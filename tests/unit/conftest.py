"""Fixtures for the unit tests: tiny seeded tables and the models the cores build from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from components.config import PreprocessParams, SplitParams, TrainParams
from components.evaluate import evaluate
from components.io import write_json, write_table
from components.preprocess import preprocess
from components.split import split
from components.train import train


@pytest.fixture(autouse=True)
def fresh_announcements():
    """The trainers say where and how they train (and their warnings) once per process;
    each test starts as a new process would, whatever ran before it."""
    from components.trainers import loop

    loop._announced.clear()


CLF_FEATURES = {"x1": "numeric", "x2": "numeric", "color": "categorical"}
REG_FEATURES = {"x1": "numeric", "x2": "numeric"}


def _meta(task: str, target: str, features: dict[str, str], df: pd.DataFrame) -> dict[str, Any]:
    return {
        "name": f"tiny-{task}",
        "source": "test:inline",
        "md5": "0123456789abcdef0123456789abcdef",
        "task": task,
        "target": target,
        "features": dict(features),
        "rows": int(len(df)),
        "columns": int(df.shape[1]),
    }


def classification_table(n: int = 30, seed: int = 0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Two well separated classes: 'b' where x1 + x2 > 0, else 'a'."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    label = np.where(x1 + x2 > 0, "b", "a")
    x1 = x1 + np.where(label == "b", 1.5, -1.5)
    df = pd.DataFrame({
        "x1": x1,
        "x2": x2,
        "color": rng.choice(["red", "green", "blue"], size=n).astype(object),
        "label": label.astype(object),
    })
    return df, _meta("classification", "label", CLF_FEATURES, df)


def regression_table(n: int = 30, seed: int = 0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """y = 3 x1 - 2 x2 + 1 plus a little noise."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    y = 3 * x1 - 2 * x2 + 1 + rng.normal(scale=0.05, size=n)
    df = pd.DataFrame({"x1": x1, "x2": x2, "y": y})
    return df, _meta("regression", "y", REG_FEATURES, df)


@dataclass(frozen=True)
class Built:
    """What split, preprocess, train and evaluate wrote for one tiny table."""

    transformer: Path
    processed: tuple[Path, Path, Path]
    model: Path
    evaluation_path: Path
    evaluation: dict[str, Any]


def _build(root: Path, table: tuple[pd.DataFrame, dict[str, Any]], estimator: str) -> Built:
    df, meta = table
    dataset = root / "interim" / "dataset.parquet"
    write_table(df, dataset, meta)
    splits = tuple(root / "interim" / f"{n}.parquet" for n in ("train", "val", "test"))
    split(dataset, *splits, SplitParams(test_size=0.2, val_size=0.2, seed=0))
    processed = tuple(root / "processed" / f"{n}.parquet" for n in ("train", "val", "test"))
    transformer = root / "work" / "transformer"
    preprocess(*splits, transformer, processed, PreprocessParams())
    model = root / "work" / "model"
    train(processed[0], processed[1], model,
          TrainParams(estimator=estimator, cv_folds=3, seed=0))
    result = evaluate(model, processed[2])
    evaluation_path = root / "reports" / "evaluation.json"
    write_json(evaluation_path, result)
    return Built(transformer, processed, model, evaluation_path, result)


@pytest.fixture(scope="session")
def built_classification(tmp_path_factory) -> Built:
    """A logistic regression trained and evaluated on a tiny two-class table (read only)."""
    return _build(tmp_path_factory.mktemp("built-clf"), classification_table(40),
                  "logistic_regression")


@pytest.fixture(scope="session")
def built_regression(tmp_path_factory) -> Built:
    """A ridge regression trained and evaluated on a tiny table (read only)."""
    return _build(tmp_path_factory.mktemp("built-reg"), regression_table(40), "linear")


# ---- small real arrays for the deep-learning backends (torch, keras) --------------------

def _split_arrays(x, y, seed=0, val=0.15, test=0.2):
    """(train, val, test) pairs of (x, y), drawn with a seeded permutation."""
    idx = np.random.default_rng(seed).permutation(len(y))
    n_test, n_val = int(len(y) * test), int(len(y) * val)
    te, va, tr = idx[:n_test], idx[n_test:n_test + n_val], idx[n_test + n_val:]
    return (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te])


def _standardise(x):
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32)


@pytest.fixture(scope="session")
def iris():
    from sklearn.datasets import load_iris

    data = load_iris()
    return _split_arrays(_standardise(data.data), data.target)


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return _split_arrays((data.data / 16).astype(np.float32), data.target)


@pytest.fixture(scope="session")
def diabetes():
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    return _split_arrays(_standardise(data.data), data.target)
