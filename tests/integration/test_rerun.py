"""A stage killed half-way and run again gives what an uninterrupted run gives.

The train stage's CLI (``python -m components.train``, as dvc.yaml runs it) works on
preprocessed tables made by the real cores in a temporary folder. One run is SIGKILLed
after it has started training (its process has loaded scikit-learn's tree code) and before
it finishes: it must leave no model file, no metrics file and no temporary file. Run again
to completion, its files are byte-identical (sha256) to those of an uninterrupted run in
another folder. Packaging is deterministic too: two ``package()`` calls on the same model
give the same version id and files, repackaging in place leaves no stray folders, and
registering both in the BentoML store keeps one version.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.config import load_params
from components.evaluate import evaluate, write_outputs
from components.ingest import ingest
from components.package import package, register, verify
from components.preprocess import preprocess
from components.split import split
from components.train import load_model, train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning"),
]

REPO = Path(__file__).resolve().parents[2]
SETTINGS = ["dataset=breast_cancer", "train.framework=sklearn", "train.estimator=random_forest"]
# Tree code is loaded when the trainer is built, just before cross-validation starts.
STARTED_MARK = "sklearn/tree/_tree"


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``, hidden ones included."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml", SETTINGS)


@pytest.fixture(scope="module")
def tables(tmp_path_factory, params) -> dict[str, Path]:
    """Preprocessed train / val / test tables and the fitted transformer, from the cores."""
    d = tmp_path_factory.mktemp("tables")
    ingest(params.dataset, params.dataset_spec, d / "dataset.parquet")
    split(d / "dataset.parquet", d / "train.parquet", d / "val.parquet", d / "test.parquet",
          params.split)
    out = {"train": d / "p-train.parquet", "val": d / "p-val.parquet",
           "test": d / "p-test.parquet", "transformer": d / "transformer"}
    preprocess(d / "train.parquet", d / "val.parquet", d / "test.parquet", out["transformer"],
               (out["train"], out["val"], out["test"]), params.preprocess)
    return out


def train_cmd(tables: dict[str, Path], out: Path, n_estimators: int) -> list[str]:
    return [sys.executable, "-m", "components.train", "--params", str(REPO / "params.yaml"),
            "--train", str(tables["train"]), "--val", str(tables["val"]),
            "--model", str(out / "model"), "--metrics", str(out / "train.json"),
            *(x for s in SETTINGS for x in ("--set", s)),
            "--set", f"train.hyperparameters.random_forest.n_estimators={n_estimators}"]


def kill_mid_way(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> bool:
    """Start ``cmd``, SIGKILL it ~1 s into training; False when it finished first."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            maps = Path(f"/proc/{proc.pid}/maps")
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if STARTED_MARK in maps.read_text():
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            else:
                if proc.poll() is None:
                    pytest.fail(f"training did not start within 120 s: {log.read_text()}")
            time.sleep(1.0)
            if proc.poll() is not None:
                return False
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    return True


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_killed_train_leaves_nothing_and_rerun_matches_uninterrupted_run(
        tables, tmp_path, integration_env, run_cmd):
    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    for n_estimators in (400, 1200, 3600):  # heavier until the kill lands mid-way
        cmd = train_cmd(tables, killed_dir, n_estimators)
        if kill_mid_way(cmd, killed_dir, integration_env, tmp_path / "killed.log"):
            break
        for leftover in ("model", "train.json"):  # finished: start over, heavier
            path = killed_dir / leftover
            if path.is_dir():
                for f in path.iterdir():
                    f.unlink()
                path.rmdir()
            path.unlink(missing_ok=True)
    else:
        pytest.fail("train finished within 1 s of starting even with 3600 trees")

    # Killed mid-way: no model file, no metrics, no temporary file anywhere.
    model = killed_dir / "model"
    assert not model.exists() or not any(model.iterdir()), sorted(model.iterdir())
    assert not (killed_dir / "train.json").exists()
    assert [p.name for p in killed_dir.rglob("*") if p.name != "model"] == []

    run_cmd(cmd, cwd=killed_dir, timeout=600)  # the rerun, to completion
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    run_cmd(train_cmd(tables, clean_dir, n_estimators), cwd=clean_dir, timeout=600)

    rerun, clean = hashes(killed_dir), hashes(clean_dir)
    assert set(clean) == {"model/model.skops", "model/trainer.json", "model/training.json",
                          "train.json"}
    assert rerun == clean
    trainer, record = load_model(killed_dir / "model")
    assert record["hyperparameters"]["n_estimators"] == n_estimators
    assert trainer.hyperparameters["n_estimators"] == n_estimators


@pytest.fixture(scope="module")
def evaluated(tables, params, tmp_path_factory) -> dict[str, Path]:
    """A model trained and evaluated in-process (a small forest: this is about packaging)."""
    d = tmp_path_factory.mktemp("evaluated")
    rules = params.train.model_copy(update={"hyperparameters": {"random_forest": {
        "n_estimators": 30, "min_samples_leaf": 1}}})
    train(tables["train"], tables["val"], d / "model", rules)
    write_outputs(evaluate(d / "model", tables["test"]), d / "evaluation")
    return {"model": d / "model", "evaluation": d / "evaluation" / "evaluation.json"}


def test_packaging_twice_gives_the_same_version(tables, evaluated, params, tmp_path,
                                                unique_model_name):
    import bentoml

    settings = params.model_dump(mode="json", by_alias=True)

    def package_to(out: Path) -> dict:
        return package(tables["transformer"], evaluated["model"], evaluated["evaluation"],
                       settings, out, code_dir=tmp_path)

    first, second = package_to(tmp_path / "a"), package_to(tmp_path / "b")
    assert first["version"] == second["version"]
    assert first["files"] == second["files"]
    assert verify(tmp_path / "a")["version"] == verify(tmp_path / "b")["version"]
    files_a = hashes(tmp_path / "a")
    # Everything but lineage.json (it records the time) is byte-identical.
    assert {k: v for k, v in files_a.items() if k != "lineage.json"} == {
        k: v for k, v in hashes(tmp_path / "b").items() if k != "lineage.json"}

    # Packaging again into the same folder replaces it whole, with nothing left beside it.
    again = package_to(tmp_path / "a")
    assert again["version"] == first["version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    assert verify(tmp_path / "a")["files"] == first["files"]

    tag_a = register(tmp_path / "a", unique_model_name)
    tag_b = register(tmp_path / "b", unique_model_name)
    assert tag_a == tag_b == f"{unique_model_name}:{first['version']}"
    assert [str(m.tag) for m in bentoml.models.list(unique_model_name)] == [tag_a]
