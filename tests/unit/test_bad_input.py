"""Bad input through the stage CLIs: exit status 2, the problem and its fix, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def write_params(root: Path, dataset: dict | None = None, **sections) -> Path:
    """The repository's params.yaml, with a dataset of our own and sections changed."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    if dataset is not None:
        raw["datasets"]["tiny"] = dataset
        raw["dataset"] = "tiny"
    for name, changes in sections.items():
        raw[name].update(changes)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_stage(stage: str, root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"components.{stage}", "--params", str(root / "params.yaml"),
         *args],
        cwd=root, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def assert_failed_cleanly(proc: subprocess.CompletedProcess, outputs: list[Path], *needles: str):
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert "fix:" in proc.stderr
    for needle in needles:
        assert needle in proc.stderr
    for out in outputs:
        assert not out.exists()
        leftovers = [p.name for p in out.parent.iterdir()
                     if p.name.startswith(".") and p.name.endswith(".tmp")]
        assert leftovers == []


def csv_dataset(path: str = "data/t.csv", **fields) -> dict:
    return {"source": "file", "path": path, "format": "csv", "target": "label",
            "task": "classification", **fields}


def whitespace_dataset(path: str = "data/t.data", **fields) -> dict:
    return {"source": "file", "path": path, "format": "whitespace", "header": False,
            "target": "label", "task": "classification",
            "columns": {"x": "numeric", "y": "numeric", "label": "categorical"}, **fields}


INGEST_CASES = {
    "missing-file": (
        csv_dataset("data/absent.csv"), None,
        ["data file data/absent.csv not found", "dvc pull data/absent.csv.dvc"],
    ),
    "csv-extra-field": (
        csv_dataset(), "x,y,label\n1,2,a\n1,2,3,b\n3,4,a\n",
        ["data/t.csv line 3 is malformed: it has 4 fields, expected 3"],
    ),
    "csv-missing-field": (
        csv_dataset(), "x,y,label\n1,2,a\n3,4,b\n5,a\n",
        ["data/t.csv line 4 is malformed: it has 2 fields, expected 3"],
    ),
    "whitespace-extra-field": (
        whitespace_dataset(), "1 2 a\n3   4\t5 b\n6 7 a\n",
        ["data/t.data line 2 is malformed: it has 4 fields, expected 3"],
    ),
    "whitespace-missing-field": (
        whitespace_dataset(), "1 2 a\n3 4 b\n6 a\n",
        ["data/t.data line 3 is malformed: it has 2 fields, expected 3"],
    ),
    "unknown-target": (
        csv_dataset(target="price"), "x,y,label\n1,2,a\n3,4,b\n5,6,a\n",
        ["target column 'price' is not in data/t.csv (columns: x, y, label)"],
    ),
    "non-numeric-whitespace": (
        whitespace_dataset(), "1 2 a\n3 4 b\n5 six a\n",
        ["column 'y' of data/t.data is numeric but data row 3 (line 3) holds 'six'",
         "na_values"],
    ),
    "non-numeric-csv": (
        csv_dataset(columns={"x": "numeric", "y": "numeric", "label": "categorical"}),
        "x,y,label\n1,2,a\n3,4,b\n1.2.3,6,a\n",
        ["column 'x' of data/t.csv is numeric but data row 3 (line 4) holds '1.2.3'"],
    ),
    "header-only": (
        csv_dataset(), "x,y,label\n",
        ["data/t.csv has no data rows"],
    ),
}


@pytest.mark.parametrize(("dataset", "text", "needles"), INGEST_CASES.values(),
                         ids=INGEST_CASES.keys())
def test_ingest_bad_data(tmp_path, dataset, text, needles):
    write_params(tmp_path, dataset)
    if text is not None:
        (tmp_path / "data").mkdir()
        (tmp_path / dataset["path"]).write_text(text)
    out = tmp_path / "out" / "dataset.parquet"
    out.parent.mkdir()

    proc = run_stage("ingest", tmp_path, "--out", str(out))

    assert_failed_cleanly(proc, [out], "error: ingest:", *needles)


def test_mistyped_key_in_params(tmp_path):
    path = write_params(tmp_path)
    path.write_text(path.read_text().replace("  estimator: random_forest",
                                             "  estimatr: random_forest"))
    out = tmp_path / "out" / "dataset.parquet"
    out.parent.mkdir()

    proc = run_stage("ingest", tmp_path, "--out", str(out))

    assert_failed_cleanly(proc, [out], "train.estimatr: unknown key",
                          "did you mean 'estimator'?")


def test_unknown_estimator_in_train(tmp_path, built_classification):
    write_params(tmp_path, train={"estimator": "random_forrest"})
    out = tmp_path / "out"
    out.mkdir()
    train_table, val_table, _ = built_classification.processed

    proc = run_stage("train", tmp_path, "--train", str(train_table), "--val", str(val_table),
                     "--model", str(out / "model"), "--metrics", str(out / "train.json"))

    assert_failed_cleanly(proc, [out / "model", out / "train.json"],
                          "error: train: unknown estimator 'random_forrest'",
                          "did you mean 'random_forest'?")


def test_validate_missing_input_table(tmp_path):
    write_params(tmp_path)
    out = tmp_path / "reports" / "validation.json"
    out.parent.mkdir()

    proc = run_stage("validate", tmp_path, "--data", "data/interim/dataset.parquet",
                     "--report", str(out))

    assert_failed_cleanly(proc, [out], "data/interim/dataset.parquet")


def test_ingest_zero_byte_file(tmp_path):
    write_params(tmp_path, csv_dataset())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.csv").write_bytes(b"")
    out = tmp_path / "out" / "dataset.parquet"
    out.parent.mkdir()

    proc = run_stage("ingest", tmp_path, "--out", str(out))

    assert_failed_cleanly(proc, [out], "data/t.csv")


def test_train_more_folds_than_rows(tmp_path, built_classification):
    write_params(tmp_path, train={"estimator": "logistic_regression", "cv_folds": 50})
    out = tmp_path / "out"
    out.mkdir()
    train_table, val_table, _ = built_classification.processed

    proc = run_stage("train", tmp_path, "--train", str(train_table), "--val", str(val_table),
                     "--model", str(out / "model"))

    assert_failed_cleanly(proc, [out / "model"], "cv_folds")
