"""Trainer backends behind one small interface (:class:`components.trainers.base.Trainer`).

``get_trainer(framework, ...)`` builds one by name; :func:`load_trainer` reopens a saved one
from its directory (the framework is recorded in ``trainer.json``). Backends import their
framework lazily, so choosing scikit-learn never imports torch or TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.errors import SlipwayError
from components.io import read_json
from components.trainers.base import META_FILE, Trainer

FRAMEWORKS = ("sklearn", "torch", "keras")


def _backend(framework: str) -> type[Trainer]:
    if framework == "sklearn":
        from components.trainers.sklearn import SklearnTrainer

        return SklearnTrainer
    if framework == "torch":
        from components.trainers.torch import TorchTrainer

        return TorchTrainer
    if framework == "keras":
        from components.trainers.keras import KerasTrainer

        return KerasTrainer
    raise SlipwayError(
        f"unknown framework {framework!r}",
        f"set train.framework in params.yaml to one of: {', '.join(FRAMEWORKS)}",
    )


def get_trainer(
    framework: str,
    task: str,
    estimator: str,
    hyperparameters: dict[str, Any],
    seed: int,
    **options: Any,
) -> Trainer:
    """A new, unfitted trainer of the named framework (options: see :class:`Trainer`)."""
    return _backend(framework)(task, estimator, hyperparameters, seed, **options)


def load_trainer(directory: str | Path, hashes: dict[str, str] | None = None) -> Trainer:
    """Reopen a trainer saved with :meth:`Trainer.save`.

    Args:
        directory: where it was saved.
        hashes: optional ``{file name: sha256}`` to verify before loading.
    """
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise SlipwayError(f"{directory} holds no saved model ({META_FILE} missing)",
                           "rerun the train stage")
    meta = read_json(meta_path)
    return _backend(meta["framework"]).load(directory, meta, hashes or {})
