"""``python -m pipelines.seeds``: the three classic workflows, expected against measured.

Linear regression on y = 1 + 2x + 0.1·noise fitted three ways (NumPy gradient descent,
scikit-learn, torch autograd with SGD): every check passes and the JSON holds intercept
1.0235 and slope 1.9690 to three decimals for each fit (and those are the least-squares values
of that data). Then the two pipeline workflows, each in a temporary work tree (params.yaml
and the data file; the module runs the ``training`` pipeline with params.yaml of its working
directory, so the runs and their checkpoints stay there): Auto MPG with the Keras tutorial
model (test MAE at most 2.2 MPG) and the torch CNN on digits (test accuracy at least 0.95,
per-class accuracy in the report). Each pipeline workflow takes a minute or two on two cores.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from components.io import read_json
from pipelines.seeds import linear_data

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATA_FILE = Path("data") / "auto-mpg.data"
FITS = ("numpy gradient descent", "sklearn LinearRegression", "torch autograd + SGD")


def run_seeds(run_cmd, python_cmd, cwd: Path, only: str) -> tuple[dict, str]:
    out = cwd / "seeds.json"
    proc = run_cmd([*python_cmd, "-m", "pipelines.seeds", "--only", only, "--json", out],
                   cwd=cwd, timeout=600)
    assert f"written to {out}" in proc.stdout
    return json.loads(out.read_text()), proc.stdout


def table_rows(stdout: str) -> list[str]:
    """The rows of the printed table (after its header)."""
    _, header, tail = stdout.partition("workflow")
    assert header, stdout
    return [line for line in tail.splitlines()[1:] if line.strip() and "written to" not in line]


@pytest.fixture
def workdir(tmp_path, source_data_file) -> Path:
    """A temporary work tree: params.yaml and the Auto MPG data file (restored, or its seed)."""
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data").mkdir()
    shutil.copyfile(source_data_file, tmp_path / DATA_FILE)
    return tmp_path


def only_run(workdir: Path) -> Path:
    """The one pipeline run under the work tree's pipeline root (params.yaml's)."""
    runs = [p for p in (workdir / "build" / "kfp-local").glob("training-*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_expected_values_are_the_least_squares_fit():
    x, y, _, _ = linear_data()
    assert x.shape == (80, 1) and y.shape == (80, 1)
    slope, intercept = np.polyfit(x[:, 0], y[:, 0], 1)
    assert round(intercept, 4) == 1.0235 and round(slope, 4) == 1.9690


def test_linear_regression_three_ways(tmp_path, run_cmd, python_cmd):
    results, stdout = run_seeds(run_cmd, python_cmd, tmp_path, "linear")

    checks = results["checks"]
    assert results["passed"] is True
    assert len(checks) == 6 and all(c["passed"] for c in checks)
    measured = {(c["workflow"], c["quantity"]): c["measured"] for c in checks}
    assert set(measured) == {(f"linear regression, {fit}", q) for fit in FITS
                             for q in ("intercept", "slope")}
    for fit in FITS:
        intercept = measured[(f"linear regression, {fit}", "intercept")]
        slope = measured[(f"linear regression, {fit}", "slope")]
        assert intercept == pytest.approx(1.0235, abs=5e-4), fit
        assert slope == pytest.approx(1.9690, abs=5e-4), fit
    rows = table_rows(stdout)
    assert len(rows) == 6 and all(row.endswith("  ok") for row in rows)
    assert re.search(r"torch autograd \+ SGD\s+slope\s+1\.9690\s+1\.969\d  ok", stdout)


def test_auto_mpg_keras_tutorial_model(workdir, run_cmd, python_cmd):
    results, stdout = run_seeds(run_cmd, python_cmd, workdir, "auto_mpg_keras")

    (check,) = results["checks"]
    assert results["passed"] is True and check["passed"] is True
    assert (check["workflow"], check["quantity"], check["expected"]) \
        == ("Auto MPG, Keras tutorial model", "test MAE (MPG)", "<= 2.2")
    assert 0 < check["measured"] <= 2.2
    run = only_run(workdir)
    metrics = read_json(run / "evaluate-op" / "evaluation" / "metrics.json")
    assert metrics["mae"] == pytest.approx(check["measured"])
    # The tutorial's model: two Dense(64, relu) and Dense(1), RMSprop 0.001, on the 80 %.
    training = read_json(run / "train-op" / "model" / "training.json")
    assert (training["framework"], training["estimator"], training["task"]) \
        == ("keras", "mlp", "regression")
    hp = training["hyperparameters"]
    assert hp["hidden"] == [64, 64] and hp["optimizer"] == "rmsprop" and hp["lr"] == 0.001
    evaluation = read_json(run / "evaluate-op" / "evaluation" / "evaluation.json")
    assert evaluation["dataset"]["name"] == "auto_mpg"
    assert (workdir / "build" / "checkpoints").is_dir()  # kept in the work tree, not the repo
    assert re.search(r"Auto MPG, Keras tutorial model\s+test MAE \(MPG\)\s+<= 2.2\s+[0-9.]+  ok",
                     stdout)


def test_digits_torch_cnn(workdir, run_cmd, python_cmd):
    results, stdout = run_seeds(run_cmd, python_cmd, workdir, "digits_cnn")

    (check,) = results["checks"]
    assert results["passed"] is True and check["passed"] is True
    assert (check["workflow"], check["quantity"]) == ("digits, torch CNN", "test accuracy")
    assert 0.95 <= check["measured"] <= 1
    run = only_run(workdir)
    evaluation_dir = run / "evaluate-op" / "evaluation"
    assert read_json(evaluation_dir / "metrics.json")["accuracy"] == pytest.approx(
        check["measured"])
    training = read_json(run / "train-op" / "model" / "training.json")
    assert (training["framework"], training["estimator"]) == ("torch", "cnn")
    # Per-class accuracy: in the evaluation, as a table and a plot in the report.
    evaluation = read_json(evaluation_dir / "evaluation.json")
    per_class = evaluation["detail"]["per_class_accuracy"]
    assert sorted(per_class, key=int) == [str(d) for d in range(10)]
    assert all(0 <= v <= 1 for v in per_class.values())
    counts = dict(zip(evaluation["detail"]["classes"],
                      np.array(evaluation["detail"]["confusion_matrix"]).sum(1), strict=True))
    overall = sum(per_class[c] * n for c, n in counts.items()) / sum(counts.values())
    assert overall == pytest.approx(check["measured"])  # the per-class numbers add up
    page = (evaluation_dir / "report.html").read_text()
    table = re.search(r"<h2>Per-class accuracy</h2><table>(.*?)</table>", page)
    assert table, "no per-class accuracy table in the report"
    cells = dict(re.findall(r"<tr><th>(\d)</th><td>([0-9.]+)</td></tr>", table.group(1)))
    assert {k: float(v) for k, v in cells.items()} == pytest.approx(per_class, abs=5e-5)
    assert 'alt="per_class_accuracy" src="data:image/png;base64,' in page
