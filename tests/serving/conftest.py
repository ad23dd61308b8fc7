"""Fixtures for the serving tests: real model versions in the session's BentoML store.

Two small models are trained once per session by the training pipeline's own stages, run
in this process (``pipelines.inprocess``), into the temporary store that
``tests/conftest.py`` sets up (``BENTOML_HOME``):

* ``bc_model`` - breast_cancer (30 numeric features, 2 classes), a small random forest;
* ``auto_model`` - the Auto MPG file as a 3-class problem (predict ``origin``), with
  ``cylinders`` declared categorical and ``horsepower`` holding missing values, so the
  categorical and missing-value paths of the schema are exercised.

Each fixture also gives the test rows and what the model predicts for them when called
in-process (the packaged transformer and trainer), which every prediction test compares to.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
AUTO_DATA = Path("data") / "seed" / "auto-mpg.data"


@dataclass
class TrainedModel:
    """A registered model version and its test rows, with in-process predictions."""

    tag: str
    name: str
    version: str
    package_dir: Path
    features: Any  # DataFrame of raw test features (schema order)
    expected_labels: list[str]
    schema: dict[str, Any]

    def instances(self, n: int | None = None) -> list[dict[str, Any]]:
        """Test rows as JSON row objects (NaN -> null)."""
        frame = self.features if n is None else self.features.head(n)
        rows = []
        for record in frame.to_dict(orient="records"):
            rows.append({k: (None if isinstance(v, float) and np.isnan(v) else
                             (v if not isinstance(v, np.generic) else v.item()))
                         for k, v in record.items()})
        return rows


def _train_and_register(work: Path, name: str, spec: Any, overrides: list[str]) -> TrainedModel:
    """Train, evaluate, package and register a model version with the training pipeline's
    own stages, run in this process (pipelines.inprocess, wired by the stage graph).

    ``spec`` replaces the dataset's declaration when given. The gate is opened (any score,
    any distance to a version packaged before): these models exist to be served.
    """
    from components.config import load_params
    from components.io import read_json, read_table
    from components.trainers import load_trainer
    from pipelines import inprocess

    params = load_params(REPO / "params.yaml", [*overrides, "package.bentoml_store=true",
                                                "gate.classification.threshold=0",
                                                "gate.regression.threshold=-1e9",
                                                "gate.tolerance=1e9"])
    if spec is not None:
        params = params.model_copy(update={"datasets": {**params.datasets,
                                                        params.dataset: spec}})
    results = inprocess.run(params, work, REPO, REPO, model_name=name)
    assert "package" in results, "the gate refused the fixture's model"
    version_artifact = results["package"].outputs["model_version"]
    out = Path(version_artifact.path)
    tag = version_artifact.metadata["bentoml_tag"]
    test_split = Path(results["split"].outputs["test"].path)

    # What the model predicts for the raw test rows when called in-process.
    from components import safe_load

    schema = read_json(out / "schema.json")
    names = [f["name"] for f in schema["features"]]
    test_df, _ = read_table(test_split)
    features = test_df[names].reset_index(drop=True)
    transformer = safe_load.load(out / "preprocessor.skops")
    trainer = load_trainer(out)
    x = np.asarray(transformer.transform(features), dtype=np.float32)
    classes = read_json(out / "training.json")["classes"]
    expected = [classes[i] for i in trainer.predict(x)]
    version = tag.split(":", 1)[1]
    return TrainedModel(tag, name, version, out, features, expected, schema)


@pytest.fixture(scope="session")
def bc_model(tmp_path_factory) -> TrainedModel:
    return _train_and_register(
        tmp_path_factory.mktemp("bc-model"), "t-serve-bc", None,
        ["dataset=breast_cancer", "train.framework=sklearn", "train.estimator=random_forest",
         "train.hyperparameters.random_forest.n_estimators=30", "train.cv_folds=3"],
    )


@pytest.fixture(scope="session")
def auto_model(tmp_path_factory) -> TrainedModel:
    from components.config import FileDataset

    spec = FileDataset(
        source="file", path=str(AUTO_DATA), format="whitespace", header=False,
        target="origin", task="classification", na_values=["?"],
        columns={"mpg": "numeric", "cylinders": "categorical", "displacement": "numeric",
                 "horsepower": "numeric", "weight": "numeric", "acceleration": "numeric",
                 "model_year": "numeric", "origin": "categorical", "car_name": "drop"},
    )
    return _train_and_register(
        tmp_path_factory.mktemp("auto-model"), "t-serve-auto", spec,
        ["dataset=auto_mpg", "train.framework=sklearn", "train.estimator=random_forest",
         "train.hyperparameters.random_forest.n_estimators=30", "train.cv_folds=3",
         "validate.max_missing_fraction=0.05"],
    )


def _forget_bentoml_request_metrics() -> None:
    """BentoML's request-metrics middleware registers its metrics in prometheus_client's
    global registry when an app first serves; a second in-process app in the same session
    would register them again and fail. Under `bentoml serve` there is one app per process."""
    from prometheus_client import REGISTRY

    for name, collector in list(REGISTRY._names_to_collectors.items()):
        if name.startswith("bentoml_"):
            try:
                REGISTRY.unregister(collector)
            except KeyError:  # a collector with several names goes at its first name
                pass


@contextlib.contextmanager
def serving_client(env: dict[str, str], raise_server_exceptions: bool = True):
    """The BentoML service in-process (``Slipway.to_asgi()``) under Starlette's TestClient,
    which runs the app's lifespan, so the service instance is created as under
    ``bentoml serve``. ``SLIPWAY_*`` variables are exactly ``env``; the client waits until the
    model has loaded (or failed) and carries the runtime as ``client.runtime``."""
    import bentoml
    from starlette.testclient import TestClient

    from serving.service import Slipway

    _forget_bentoml_request_metrics()
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("SLIPWAY_"):
                patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        with TestClient(Slipway.to_asgi(),
                        raise_server_exceptions=raise_server_exceptions) as client:
            runtime = bentoml.get_current_service().runtime
            assert runtime.wait_loaded(120), "the model did not finish loading"
            client.runtime = runtime
            yield client
