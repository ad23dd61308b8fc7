"""Finding a packaged model version in the BentoML model store and loading it safely.

A model version (written by ``components.package``) is served only after every file has
matched the sha256 recorded in its ``lineage.json`` and the version id derived from those
hashes has matched both the lineage and the store tag. Loading hashes each file again and
parses the very bytes it hashed (skops, safetensors), so a file swapped between the check
and the load is refused too; Keras opens ``model.keras`` only by path, right after its
hash check.

Which version to serve (``SLIPWAY_MODEL``, see :func:`resolve`):

* ``name:version`` or ``name:latest`` - that tag;
* ``name`` - the latest version of that name;
* a bare version id - the Slipway model with that version, whatever its name;
* unset - the most recently created Slipway model in the store.

``python -m serving.model [SPEC]`` prints the tag a spec resolves to (used by ``make``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import SlipwayError
from serving.schema import InputSchema, RawRows

MODEL_ENV = "SLIPWAY_MODEL"  # which version to serve (see resolve)
JSON_FILES = ("schema.json", "training.json", "metrics.json", "trainer.json")
STORE_MANIFEST = "model.yaml"  # written by BentoML into every model store entry


def _store_hint() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.bentoml_home.get())


def pinned_model() -> Any:
    """A ``bentoml.models.BentoModel`` when ``SLIPWAY_MODEL`` is a full ``name:version`` tag,
    else None.

    BentoML packs the models a service references as class attributes into the Bento it
    builds, so ``SLIPWAY_MODEL=<tag> bentoml build`` produces a self-contained Bento. (Only
    a tag is recorded here; resolving it happens at build or serve time.)
    """
    import bentoml

    spec = os.environ.get(MODEL_ENV, "").strip()
    return bentoml.models.BentoModel(spec) if ":" in spec else None


def resolve(spec: str | None) -> Any:
    """The ``bentoml.Model`` a model spec names (see the module docstring).

    Raises:
        SlipwayError: no such model, an ambiguous version, or a model that is not Slipway's.
    """
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    from components.package import BENTOML_MODULE  # not at the top: it imports pandas

    spec = (spec or "").strip()
    try:
        if ":" in spec:
            try:
                model = bentoml.models.get(spec)
            except NotFound:
                raise SlipwayError(
                    f"model {spec} is not in the BentoML model store ({_store_hint()})",
                    "list the models with `bentoml models list`, or train one with `make run`",
                ) from None
            if model.info.module != BENTOML_MODULE:
                raise SlipwayError(f"model {model.tag} was not packaged by Slipway "
                                   f"(module {model.info.module!r})",
                                   "serve a model registered by `make run`")
            return model
        models = [m for m in bentoml.models.list() if m.info.module == BENTOML_MODULE]
    except BentoMLException as err:
        raise SlipwayError(f"cannot read the BentoML model store: {err}",
                           "check BENTOML_HOME") from None
    if not models:
        raise SlipwayError(f"no Slipway model in the BentoML model store ({_store_hint()})",
                           "train and register one with `make run`")
    if not spec:
        return max(models, key=lambda m: m.info.creation_time)
    named = [m for m in models if m.tag.name == spec]
    if named:
        return max(named, key=lambda m: m.info.creation_time)
    versioned = [m for m in models if m.tag.version == spec]
    if len(versioned) == 1:
        return versioned[0]
    if len(versioned) > 1:
        raise SlipwayError(f"version {spec} exists under several names: "
                           f"{', '.join(str(m.tag) for m in versioned)}",
                           "pin it as name:version")
    known = ", ".join(sorted(str(m.tag) for m in models)[:10])
    raise SlipwayError(f"no Slipway model named or versioned {spec!r} (the store has: {known})",
                       "set SLIPWAY_MODEL to one of those tags")


@dataclass
class Prediction:
    """Model outputs for some rows: class indices (or values) and class probabilities."""

    outputs: np.ndarray
    proba: np.ndarray | None

    def __len__(self) -> int:
        return int(self.outputs.shape[0])

    def slice(self, start: int, stop: int) -> Prediction:
        return Prediction(self.outputs[start:stop],
                          None if self.proba is None else self.proba[start:stop])

    @staticmethod
    def concat(parts: list[Prediction]) -> Prediction:
        if len(parts) == 1:
            return parts[0]
        proba = None if parts[0].proba is None else np.concatenate([p.proba for p in parts])
        return Prediction(np.concatenate([p.outputs for p in parts]), proba)


class LoadedModel:
    """A verified, loaded model version: preprocessing, model, schema and lineage.

    Build it with :meth:`load`; :meth:`predict` is thread-safe for scikit-learn models (it
    only reads the fitted objects) and is called from the service's inference thread.
    """

    def __init__(self, name: str, lineage: dict[str, Any], docs: dict[str, Any],
                 transformer: Any, trainer: Any) -> None:
        self.name = name
        self.lineage = lineage
        self.version: str = lineage["version"]
        self.schema: dict[str, Any] = docs["schema.json"]
        self.metrics: dict[str, Any] = docs["metrics.json"]
        self.transformer = transformer
        self.trainer = trainer
        self.task: str = self.schema["task"]
        self.classes: list[str] | None = (docs["training.json"].get("classes")
                                          if self.task == "classification" else None)
        self.names = [f["name"] for f in self.schema["features"]]
        self._numeric = [f["name"] for f in self.schema["features"] if f["type"] == "numeric"]
        self._categorical = [f["name"] for f in self.schema["features"]
                             if f["type"] == "categorical"]
        self._class_array = np.asarray(self.classes, dtype=object) if self.classes else None
        from serving.compiled import ForestCall, NumpyPreprocessor

        # The hot path: the fitted preprocessing replayed with NumPy (None: use pandas), and
        # a forest's trees called directly (None: the trainer's own predict).
        self.fast = NumpyPreprocessor.compile(transformer, self._numeric, self._categorical)
        self.fast_model = (ForestCall.compile(trainer.model)
                           if getattr(trainer, "framework", None) == "sklearn" else None)

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    @classmethod
    def from_store(cls, spec: str | None) -> LoadedModel:
        """The model version ``spec`` names in the BentoML store (:func:`resolve`), verified
        and loaded (:meth:`load`)."""
        stored = resolve(spec)
        return cls.load(stored.path, stored.tag.name, stored.tag.version)

    @classmethod
    def load(cls, path: str | Path, name: str, expected_version: str | None = None) -> LoadedModel:
        """Verify and load the model version in ``path``.

        Args:
            path: the version directory (a BentoML store entry or a package output).
            name: the model's name (for metrics and messages).
            expected_version: the version the store tag claims; must match the lineage.

        Raises:
            SlipwayError: a missing, extra-hashed, changed or truncated file, a lineage whose
                version does not derive from its hashes, or an unloadable model.
        """
        from components import safe_load
        from components.preprocess import TRANSFORMER_FILE
        from components.trainers import load_trainer

        path = Path(path)
        lineage = verify_version(path)
        hashes: dict[str, str] = lineage["files"]
        if expected_version is not None and expected_version != lineage["version"]:
            raise SlipwayError(
                f"{path}: the store tag says version {expected_version} but the files are "
                f"version {lineage['version']}", "register the model version again")
        missing = [f for f in (*JSON_FILES, TRANSFORMER_FILE) if f not in hashes]
        if missing:
            raise SlipwayError(f"{path}: lineage.json does not cover {', '.join(missing)}",
                               "package the model again")
        docs = {name_: _read_verified_json(path / name_, hashes[name_]) for name_ in JSON_FILES}
        transformer = safe_load.load(path / TRANSFORMER_FILE, hashes[TRANSFORMER_FILE])
        trainer = load_trainer(path, hashes)
        return cls(name, lineage, docs, transformer, trainer)

    def input_schema(self, max_instances: int, range_margin: float) -> InputSchema:
        return InputSchema(self.schema, max_instances=max_instances, range_margin=range_margin)

    def frame(self, rows: RawRows) -> Any:
        """The rows as the DataFrame the preprocessing was fitted on (same columns, dtypes)."""
        import pandas as pd

        data: dict[str, Any] = {}
        for j, name in enumerate(self._numeric):
            data[name] = rows.numeric[:, j]
        for j, name in enumerate(self._categorical):
            # pandas' str dtype, as ingest produced: None becomes NaN, which the imputer fills.
            data[name] = pd.array(rows.categorical[:, j], dtype="str")
        return pd.DataFrame(data, columns=self.names)

    def features(self, rows: RawRows) -> np.ndarray:
        """The float32 model input for some raw rows (NumPy, or the packaged transformer
        through pandas when it has a part ``serving.compiled`` does not replay)."""
        if self.fast is not None:
            return self.fast.transform(rows.numeric, rows.categorical)
        return self.packaged_features(rows)

    def packaged_features(self, rows: RawRows) -> np.ndarray:
        """The float32 model input computed by the packaged transformer itself (pandas)."""
        return np.asarray(self.transformer.transform(self.frame(rows)), dtype=np.float32)

    def predict(self, rows: RawRows) -> Prediction:
        """Preprocess and predict. Classification outputs are class indices, chosen as the
        most probable class (what scikit-learn's ``predict`` does for these estimators) so
        that one model call gives both."""
        x = self.features(rows)
        model = self.fast_model or self.trainer
        if self.task != "classification":
            return Prediction(np.asarray(model.predict(x), dtype=np.float64), None)
        proba = model.predict_proba(x)
        if proba is None:
            return Prediction(np.asarray(self.trainer.predict(x), dtype=np.int64), None)
        proba = np.asarray(proba, dtype=np.float64)
        return Prediction(proba.argmax(axis=1), proba)

    def labels(self, outputs: np.ndarray) -> list[Any]:
        """Predictions as the labels the model was trained on (or numbers for regression)."""
        if self._class_array is None:
            return outputs.tolist()
        return self._class_array[outputs].tolist()

    def describe(self) -> dict[str, Any]:
        """The model part of ``GET /metadata``."""
        lineage = self.lineage
        return {
            "model_name": self.name,
            "model_version": self.version,
            "tag": self.tag,
            "task": self.task,
            "framework": lineage.get("framework"),
            "estimator": lineage.get("estimator"),
            "created": lineage.get("created"),
            "classes": self.classes,
            "metrics": self.metrics,
            "lineage": {
                "dataset": lineage.get("dataset"),
                "params": lineage.get("params"),
                "code": lineage.get("code"),
                "libraries": lineage.get("libraries"),
                "files": lineage.get("files"),
            },
            "serving_artifact": self.serving_artifact(),
        }

    def serving_artifact(self) -> dict[str, Any]:
        """What answers at serving time, by the files (and hashes) of the lineage: the
        packaged preprocessing, replayed with NumPy or called as is, and the model."""
        from components.preprocess import TRANSFORMER_FILE

        files = self.lineage.get("files") or {}
        return {
            "preprocessing": {
                "file": TRANSFORMER_FILE, "sha256": files.get(TRANSFORMER_FILE),
                "runs_as": "numpy replay (serving/compiled.py)" if self.fast is not None
                else "the scikit-learn transformer (pandas)",
            },
            "model_runs_as": "its trees called directly (serving/compiled.py)"
            if self.fast_model is not None else "the trainer's own predict",
            "model_files": {k: v for k, v in files.items()
                            if k != TRANSFORMER_FILE and not k.endswith(".json")},
        }


def verify_version(path: Path) -> dict[str, Any]:
    """Check a model version in the BentoML store against its ``lineage.json``.

    :func:`components.package.verify`, tolerating BentoML's own manifest (``model.yaml``,
    written into every store entry).

    Raises:
        SlipwayError: naming the missing, unexpected or changed file.
    """
    from components.package import verify

    return verify(path, allow=(STORE_MANIFEST,))


def _read_verified_json(path: Path, sha256: str) -> Any:
    """Parse a JSON file from the very bytes that were hashed (no check-then-read gap)."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SlipwayError(f"{path} does not match its recorded sha256 (changed or truncated)",
                           "restore the model version or package it again")
    return json.loads(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print the BentoML tag a model spec resolves to")
    parser.add_argument("spec", nargs="?", default="",
                        help="name:version, name, a bare version, or empty for the newest")
    args = parser.parse_args(argv)
    try:
        print(resolve(args.spec).tag)
    except SlipwayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
