"""Settings a train task would reject are reported before any task starts (pipelines.cli).

``python -m pipelines run`` exits 2 for bad settings "before any task starts": for both
pipelines that includes the model to train (``train``), and for tuning every trial of the
search space too, not only what pydantic can check in params.yaml.
"""

from __future__ import annotations

import pytest

from components.config import load_params
from components.errors import SlipwayError
from pipelines.cli import _preflight

SPACE = "[{estimator: knn, hyperparameters: {n_neighbors: [3, 9]}}]"


@pytest.mark.parametrize("pipeline", ["training", "tuning"])
@pytest.mark.parametrize(("settings", "message", "fix"), [
    (["train.estimator=svn"], "train: unknown estimator 'svn' for framework sklearn",
     "did you mean 'svm'"),
    (["train.hyperparameters.random_forest.n_estimatorz=5"],
     "train: RandomForestClassifier has no hyperparameter(s) n_estimatorz",
     "did you mean 'n_estimators'"),
    (["train.estimator=linear"], "train: estimator 'linear' does not do classification",
     "logistic_regression"),
])
def test_a_bad_model_to_train_is_reported_before_any_task(repo, pipeline, settings, message,
                                                          fix):
    params = load_params(repo / "params.yaml", [*settings, f"tune.search_space={SPACE}"])
    with pytest.raises(SlipwayError) as err:
        _preflight(params, pipeline)
    assert err.value.message == message
    assert fix in err.value.fix


def test_a_bad_trial_is_reported_for_tuning_only(repo):
    space = "[{estimator: knn, hyperparameters: {n_neighbours: [3, 9]}}]"
    params = load_params(repo / "params.yaml", [f"tune.search_space={space}"])
    _preflight(params, "training")  # the search space is not the training pipeline's
    with pytest.raises(SlipwayError, match=r"tune.search_space: sklearn/knn: .*n_neighbours"):
        _preflight(params, "tuning")


@pytest.mark.parametrize("pipeline", ["training", "tuning"])
def test_the_repository_settings_pass(repo, pipeline):
    _preflight(load_params(repo / "params.yaml"), pipeline)
