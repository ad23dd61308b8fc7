"""scikit-learn backend: estimators chosen by name, saved with skops (no pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components import safe_load
from components.errors import SlipwayError, did_you_mean
from components.io import write_json
from components.trainers.base import META_FILE, Trainer, reject_unknown_hyperparameters

MODEL_FILE = "model.skops"

# name -> (classifier, regressor) as "module:Class"; None where the task has no such model.
ESTIMATORS: dict[str, tuple[str | None, str | None]] = {
    "logistic_regression": ("sklearn.linear_model:LogisticRegression", None),
    "linear": (None, "sklearn.linear_model:Ridge"),
    "random_forest": (
        "sklearn.ensemble:RandomForestClassifier",
        "sklearn.ensemble:RandomForestRegressor",
    ),
    "gradient_boosting": (
        "sklearn.ensemble:GradientBoostingClassifier",
        "sklearn.ensemble:GradientBoostingRegressor",
    ),
    "svm": ("sklearn.svm:SVC", "sklearn.svm:SVR"),
    "knn": ("sklearn.neighbors:KNeighborsClassifier", "sklearn.neighbors:KNeighborsRegressor"),
}


def estimator_class(name: str, task: str) -> type:
    """The scikit-learn class for an estimator name and task."""
    import importlib

    if name not in ESTIMATORS:
        raise SlipwayError(
            f"unknown estimator {name!r} for framework sklearn",
            "set train.estimator in params.yaml: " + did_you_mean(name, ESTIMATORS),
        )
    dotted = ESTIMATORS[name][0 if task == "classification" else 1]
    if dotted is None:
        usable = [n for n, pair in ESTIMATORS.items() if pair[0 if task == "classification" else 1]]
        raise SlipwayError(
            f"estimator {name!r} does not do {task}",
            f"choose one of: {', '.join(usable)}",
        )
    module, cls = dotted.split(":")
    return getattr(importlib.import_module(module), cls)


class SklearnTrainer(Trainer):
    framework = "sklearn"

    def __init__(
        self, task: str, estimator: str, hyperparameters: dict[str, Any], seed: int,
        **options: Any,
    ) -> None:
        super().__init__(task, estimator, hyperparameters, seed, **options)
        cls = estimator_class(estimator, task)
        kwargs = dict(hyperparameters)
        valid = cls().get_params()
        reject_unknown_hyperparameters(cls.__name__, estimator, kwargs, valid)
        self.hyperparameters = dict(kwargs)  # as used, recorded in trainer.json
        if "random_state" in valid:
            kwargs.setdefault("random_state", seed)
        self.model = cls(**kwargs)
        if cls.__name__ == "SVC":
            # Calibrated probabilities for confidence scores and ROC; scikit-learn 1.9
            # deprecates SVC(probability=True) in favour of exactly this.
            from sklearn.calibration import CalibratedClassifierCV

            self.model = CalibratedClassifierCV(self.model, ensemble=False)

    def fit(self, x, y, x_val=None, y_val=None) -> None:
        try:
            self.model.fit(x, y)
        except (ValueError, TypeError) as err:  # e.g. a bad hyperparameter value
            raise SlipwayError(
                f"{type(self.model).__name__} could not be fitted: {err}",
                f"check train.hyperparameters.{self.estimator} in params.yaml",
            ) from None

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray | None:
        if self.task == "classification" and hasattr(self.model, "predict_proba"):
            return self.model.predict_proba(x)
        return None

    def save(self, directory: Path) -> dict[str, Any]:
        directory = Path(directory)
        safe_load.dump(self.model, directory / MODEL_FILE)
        meta = {**self.describe(), "files": [MODEL_FILE]}
        write_json(directory / META_FILE, meta)
        return meta

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any], hashes: dict[str, str]) -> Trainer:
        trainer = cls.__new__(cls)
        Trainer.__init__(trainer, meta["task"], meta["estimator"], meta["hyperparameters"],
                         meta["seed"])
        trainer.device = meta.get("device", "cpu")
        trainer.model = safe_load.load(Path(directory) / MODEL_FILE, hashes.get(MODEL_FILE))
        return trainer
