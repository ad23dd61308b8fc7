"""The training pipeline under kfp.local with a distributed torch fit (issue 12's make run).

``python -m pipelines run training`` with ``train.distributed.nproc_per_node=2``: the train
task, itself a kfp.local subprocess, launches torchrun with 2 gloo processes; the run
succeeds and its summary names the world size. Small settings (2 folds, 3 epochs) keep it
to a minute or two on 2 cores; ``make run`` with params.yaml's settings does the same at
full size.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")]


def test_train_task_runs_torchrun_from_inside_kfp_local(tmp_path, run_cmd, python_cmd):
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    name = "t-" + uuid.uuid4().hex[:8]
    proc = run_cmd([*python_cmd, "-m", "pipelines", "run", "training",
                    "--set", "dataset=digits", "--set", "train.framework=torch",
                    "--set", "train.estimator=cnn", "--set", "train.cv_folds=2",
                    "--set", "train.hyperparameters.cnn.epochs=3",
                    "--set", "train.distributed.nproc_per_node=2",
                    "--set", "gate.classification.threshold=0.5",
                    "--set", f"package.model_name={name}",
                    "--set", f"kfp.pipeline_root={tmp_path / 'kfp'}"], cwd=tmp_path,
                   timeout=900)
    assert "torch: distributed fit: world size 2 (2 processes on this node, gloo, torchrun)" \
        in proc.output
    assert "pipeline training succeeded" in proc.stdout
    assert re.search(r"^  model +torch/cnn on cpu x 2 processes \(gloo\)$", proc.stdout, re.M)
