"""A retraining run started locally by the trigger, and ``make runs`` showing it.

The trigger's local target runs ``python -m pipelines run training`` for real (kfp.local's
SubprocessRunner) in a temporary work tree, then writes the alert into the run's folder;
``python -m pipelines runs`` then lists that run with its key parameters, test metrics, gate
decision, model version and the alert that caused it.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from pipelines import cli, runs, trigger

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_a_local_retraining_run_records_the_alert_and_make_runs_lists_it(
        tmp_path, monkeypatch, capsys):
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    root = tmp_path / "kfp"
    name = "t-" + uuid.uuid4().hex[:8]
    start = trigger.local_starter(
        tmp_path / "params.yaml", "training", "kfp", tmp_path / "logs",
        settings=["train.estimator=logistic_regression", "train.cv_folds=2",
                  f"package.model_name={name}-{{dataset}}-{{task}}",
                  f"kfp.pipeline_root={root}"], cwd=tmp_path)
    episode = trigger.Episode("0123456789abcdef", "breast-cancer-classification", "v1",
                              "SlipwayInputDrift", "2026-12-02T18:00:00Z", "{}:{}",
                              {"mean radius": 0.41, "mean texture": None})
    run_id = start(episode)
    assert run_id == "local-0123456789abcdef"
    (thread,) = start.threads
    thread.join(600)
    assert not thread.is_alive()
    log = (tmp_path / "logs" / f"{run_id}.log").read_text()
    (run_dir,) = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("training-")]
    record = json.loads((run_dir / runs.TRIGGER_FILE).read_text())
    assert record["exit_status"] == 0, log
    assert record["model_version"] == "v1" and record["psi"] == {"mean radius": 0.41}
    assert record["features"] == ["mean radius", "mean texture"]
    # The new model version's lineage names the alert that caused it.
    lineage = json.loads((run_dir / "package-op" / "model_version" / "lineage.json").read_text())
    assert lineage["trigger"]["alertname"] == "SlipwayInputDrift"
    assert lineage["trigger"]["model_version"] == "v1"
    assert lineage["trigger"]["psi"] == {"mean radius": 0.41}

    (row,) = runs.local_rows(root)
    assert row.state == "SUCCEEDED" and row.model == "sklearn/logistic_regression"
    assert row.params == "C=1 max_iter=2000" and row.gate == "passed"
    assert row.dataset == "breast_cancer" and len(row.version) == 12
    assert 0.9 < row.metrics["accuracy"] <= 1.0
    assert row.trigger == "SlipwayInputDrift v1"

    monkeypatch.chdir(tmp_path)
    assert cli.main(["runs", "--local-only", "--set", f"kfp.pipeline_root={root}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["where", "run"] and "accuracy" in out[0]
    assert run_dir.name in out[1] and row.version in out[1] and "SlipwayInputDrift" in out[1]
