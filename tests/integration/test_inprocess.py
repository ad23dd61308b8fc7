"""The in-process runner (pipelines.inprocess): the training pipeline's own component
bodies, wired by the stage graph, called in this process with real artifacts in a folder.

It is the baseline of ``make bench-pipeline``, so it must do what a pipeline run does: the
same stages, a verifiable model version, and no package when the gate rejects.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components import stages
from components.config import load_params
from components.ingest import content_key
from components.package import verify
from pipelines import inprocess

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
QUICK = ["train.estimator=logistic_regression", "package.bentoml_store=false"]


def test_runs_every_stage_and_packages_a_verifiable_version(tmp_path):
    params = load_params(REPO / "params.yaml", QUICK)
    results = inprocess.run(params, tmp_path, REPO, REPO)

    assert list(results) == list(stages.PIPELINE_STAGES["training"])
    table = results["ingest"].outputs["table"]
    assert table.metadata["md5"] != ""
    assert results["gate"].outputs["Output"] is True
    version = results["package"].outputs["model_version"]
    lineage = verify(version.path)
    assert lineage["version"] == version.metadata["version"]
    assert lineage["params"]["train"]["estimator"] == "logistic_regression"
    assert lineage["params"]["train"]["hyperparameters"]["logistic_regression"]["max_iter"] \
        == 2000  # an int, as params.yaml wrote it
    assert all(r.seconds > 0 for r in results.values())


def test_no_package_when_the_gate_rejects(tmp_path, capsys):
    params = load_params(REPO / "params.yaml",
                         [*QUICK, "gate.classification.threshold=0.9999"])
    results = inprocess.run(params, tmp_path, REPO, REPO)

    assert results["gate"].outputs["Output"] is False
    assert "package" not in results
    assert "REJECTED" in capsys.readouterr().out


def test_a_failing_stage_names_itself(tmp_path, capsys):
    from components.errors import SlipwayError

    params = load_params(REPO / "params.yaml", [*QUICK, "validate.min_rows=100000"])
    with pytest.raises(SlipwayError, match="stage validate failed"):
        inprocess.run(params, tmp_path, REPO, REPO)
    assert "error: validate:" in capsys.readouterr().err
    assert content_key(params.dataset_spec, REPO).startswith("scikit-learn-")
