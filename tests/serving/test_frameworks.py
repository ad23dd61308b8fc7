"""The service serves models of every framework the pipeline trains, not only scikit-learn.

A small MLP per deep-learning backend is trained on breast_cancer with the pipeline's cores,
registered, served in-process and compared with the model called in-process. Marked
``slow``: importing torch or TensorFlow takes seconds.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.serving.asgi_helpers import post_json
from tests.serving.conftest import _train_and_register, serving_client

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("framework, module", [("torch", "torch"), ("keras", "keras")])
def test_mlp_models_are_served_like_sklearn_ones(framework, module, tmp_path):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    trained = _train_and_register(
        tmp_path, f"t-serve-{framework}", None,
        ["dataset=breast_cancer", f"train.framework={framework}", "train.estimator=mlp",
         "train.hyperparameters.mlp.epochs=5", "train.cv_folds=2",
         f"train.checkpoint_dir={tmp_path / 'checkpoints'}"],
    )
    with serving_client({"SLIPWAY_MODEL": trained.tag}) as client:
        assert client.runtime.error is None
        answer = post_json(client, {"instances": trained.instances()})
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == trained.expected_labels
        meta = client.get("/metadata").json()
        assert meta["framework"] == framework
