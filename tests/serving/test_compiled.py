"""The serving path gives the packaged model's answers.

The packaged model is the version's own transformer (through pandas, as the pipeline
applies it) and trainer, loaded from the package directory. The serving path is
:class:`serving.compiled.NumpyPreprocessor` (the hot path, no pandas),
:class:`serving.compiled.ForestCall` for forests, and the service's ``POST /predict``. On
each test split: identical labels, probabilities within 1e-6 (both are in fact
bit-identical, which is checked too).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.serving.asgi_helpers import post_json
from tests.serving.conftest import serving_client


def packaged_answers(trained):
    """Labels and probabilities of the packaged model, called as the pipeline does."""
    from components import safe_load
    from components.io import read_json
    from components.trainers import load_trainer

    transformer = safe_load.load(trained.package_dir / "preprocessor.skops")
    trainer = load_trainer(trained.package_dir)
    x = np.asarray(transformer.transform(trained.features), dtype=np.float32)
    proba = np.asarray(trainer.predict_proba(x), dtype=np.float64)
    classes = read_json(trained.package_dir / "training.json")["classes"]
    return x, [classes[i] for i in trainer.predict(x)], proba


def loaded(trained):
    from serving.model import LoadedModel

    return LoadedModel.load(trained.package_dir, trained.name, trained.version)


@pytest.mark.parametrize("which", ["bc_model", "auto_model"])
def test_numpy_preprocessing_is_the_packaged_transformer(request, which):
    trained = request.getfixturevalue(which)
    model = loaded(trained)
    assert model.fast is not None, "the default preprocessing must take the NumPy path"
    rows = model.input_schema(10**6, float("inf")).from_instances(trained.instances())
    x_packaged, labels, proba = packaged_answers(trained)
    np.testing.assert_array_equal(model.features(rows), x_packaged)
    np.testing.assert_array_equal(model.packaged_features(rows), x_packaged)
    prediction = model.predict(rows)
    assert model.labels(prediction.outputs) == labels == trained.expected_labels
    np.testing.assert_allclose(prediction.proba, proba, rtol=0, atol=1e-6)
    assert model.fast_model is not None, "both fixtures are random forests"
    np.testing.assert_array_equal(prediction.proba, proba)
    artifact = model.describe()["serving_artifact"]  # GET /metadata names what answers
    assert artifact["preprocessing"]["runs_as"].startswith("numpy")
    assert artifact["model_runs_as"].startswith("its trees called directly")
    assert artifact["preprocessing"]["sha256"] == model.lineage["files"]["preprocessor.skops"]
    assert artifact["model_files"] and all(artifact["model_files"].values())


def test_unrecognised_preprocessing_falls_back_to_the_transformer(bc_model):
    from sklearn.preprocessing import FunctionTransformer

    from serving.compiled import NumpyPreprocessor

    model = loaded(bc_model)
    assert NumpyPreprocessor.compile(FunctionTransformer(), model._numeric, []) is None
    model.fast = None  # as when compile() declined: the pandas path gives the same answers
    rows = model.input_schema(10**6, float("inf")).from_instances(bc_model.instances())
    assert model.labels(model.predict(rows).outputs) == bc_model.expected_labels


@pytest.mark.parametrize("which", ["bc_model", "auto_model"])
def test_the_service_answers_as_the_packaged_model(request, which):
    trained = request.getfixturevalue(which)
    _, labels, proba = packaged_answers(trained)
    with serving_client({"SLIPWAY_MODEL": trained.tag, "SLIPWAY_RANGE_MARGIN": "inf"}) as client:
        answer = post_json(client, {"instances": trained.instances()})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == labels
    np.testing.assert_allclose(np.asarray(answer.json()["probabilities"]), proba, rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize("kind", ["RandomForestClassifier", "ExtraTreesClassifier",
                                  "RandomForestRegressor", "ExtraTreesRegressor"])
def test_forest_call_is_the_forest_bit_for_bit(kind):
    """Binary, three-class and regression forests; float64 input (the call converts it to
    float32 as scikit-learn does); a wrong width is refused."""
    import sklearn.ensemble

    from serving.compiled import ForestCall

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 7))
    cls = getattr(sklearn.ensemble, kind)
    targets = ([(x[:, 0] > 0).astype(int), (x[:, 1] * 3).astype(int) % 3]
               if kind.endswith("Classifier") else [x[:, 0] * 2 + x[:, 3]])
    for y in targets:
        forest = cls(n_estimators=25, random_state=1).fit(x[:200], y[:200])
        call = ForestCall.compile(forest)
        assert call is not None
        if kind.endswith("Classifier"):
            np.testing.assert_array_equal(call.predict_proba(x[200:]),
                                          forest.predict_proba(x[200:]))
        else:
            np.testing.assert_array_equal(call.predict(x[200:]), forest.predict(x[200:]))
        with pytest.raises(ValueError, match="takes 7 features"):
            call.predict(x[:, :3])


def test_other_estimators_keep_their_own_predict():
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from serving.compiled import ForestCall

    for estimator in (LogisticRegression(), GradientBoostingClassifier(), None):
        assert ForestCall.compile(estimator) is None
