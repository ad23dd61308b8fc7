"""The trainer interface every framework backend implements.

A trainer works on the preprocessed feature matrix (float32) and on encoded targets:
class indices ``0..k-1`` for classification (the class names are kept by the train stage),
floats for regression. It saves itself into a directory in a format that cannot execute
code on load, with ``trainer.json`` describing it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import SlipwayError, did_you_mean

META_FILE = "trainer.json"


def reject_unknown_hyperparameters(
    model: str, estimator: str, given: Iterable[str], allowed: Iterable[str]
) -> None:
    """Refuse hyperparameters the model does not have, with a did-you-mean.

    Args:
        model: how to name the model in the message (e.g. ``RandomForestClassifier``).
        estimator: its name in params.yaml (``train.hyperparameters.<estimator>``).
        given: the hyperparameter names asked for.
        allowed: the names the model takes.
    """
    allowed = list(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise SlipwayError(
            f"{model} has no hyperparameter(s) {', '.join(unknown)}",
            f"correct train.hyperparameters.{estimator} in params.yaml: "
            + did_you_mean(unknown[0], allowed),
        )


class Trainer(ABC):
    """Fit, predict, save and load one model.

    Args:
        task: ``classification`` or ``regression``.
        estimator: the model family's name within the framework.
        hyperparameters: keyword settings for that family.
        seed: random seed for everything the fit draws.
        image_shape: ``(channels, height, width)`` when the feature columns are the pixels
            of an image (row-major), for backends with image models; else None.
        checkpoint_dir: where an epoch-based backend keeps its per-epoch checkpoint, so a
            killed fit resumes; None for no checkpoints.
    """

    framework: str = ""

    def __init__(
        self,
        task: str,
        estimator: str,
        hyperparameters: dict[str, Any],
        seed: int,
        *,
        image_shape: tuple[int, int, int] | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> None:
        self.task = task
        self.estimator = estimator
        self.hyperparameters = dict(hyperparameters)
        self.seed = seed
        self.image_shape = tuple(image_shape) if image_shape else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.history: dict[str, list[float]] = {}  # per-epoch curves, for backends that have them
        self.device = "cpu"

    @abstractmethod
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        x_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
    ) -> None:
        """Fit on training rows; validation rows, when given, may steer early stopping."""

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class indices (classification) or values (regression)."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray | None:
        """Class probabilities, shape (rows, classes), or None when the model has none."""
        return None

    def cross_validate(self, x: np.ndarray, y: np.ndarray, folds: int) -> dict[str, Any]:
        """k-fold score of fresh copies of this trainer (stratified for classification).

        Returns:
            The metric's name (accuracy or r2), its mean and std over folds, and each fold's.
        """
        from sklearn.metrics import accuracy_score, r2_score
        from sklearn.model_selection import KFold, StratifiedKFold

        classify = self.task == "classification"
        smallest = int(np.bincount(y.astype("int64")).min(initial=len(y))) if classify else len(y)
        if folds > len(y) or (classify and folds > smallest):
            raise SlipwayError(
                f"{folds}-fold cross-validation needs at least {folds} rows"
                + (" of every class" if classify else "")
                + f"; the training split has {len(y)} rows"
                + (f", its smallest class {smallest}" if classify else ""),
                "lower train.cv_folds in params.yaml, or add data",
            )
        splitter = (StratifiedKFold if classify else KFold)(
            n_splits=folds, shuffle=True, random_state=self.seed
        )
        scores = []
        for fit_idx, score_idx in splitter.split(x, y):
            fold = self.clone()
            fold.fit(x[fit_idx], y[fit_idx])
            score = accuracy_score if classify else r2_score
            scores.append(float(score(y[score_idx], fold.predict(x[score_idx]))))
        return {
            "metric": "accuracy" if classify else "r2",
            "mean": float(np.mean(scores)),
            "std": float(np.std(scores)),
            "folds": scores,
        }

    def clone(self) -> Trainer:
        """A new, unfitted trainer with the same settings (no checkpoints: CV folds)."""
        return type(self)(self.task, self.estimator, self.hyperparameters, self.seed,
                          image_shape=self.image_shape)

    @abstractmethod
    def save(self, directory: Path) -> dict[str, Any]:
        """Write the model files and ``trainer.json`` into ``directory``; returns the meta."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, meta: dict[str, Any], hashes: dict[str, str]) -> Trainer:
        """Reopen a saved model, verifying file hashes where given."""

    def describe(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "task": self.task,
            "estimator": self.estimator,
            "hyperparameters": self.hyperparameters,
            "seed": self.seed,
            "device": self.device,
            "image_shape": list(self.image_shape) if self.image_shape else None,
        }
