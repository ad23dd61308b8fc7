"""Data and models through DVC: dvc.yaml's one stage runs the kfp pipeline, real remotes.

The repository is a copy of this one's git-tracked files (as they are in the work tree),
committed in a temporary git repository; its DVC remote is a real local directory, set up
by ``python -m pipelines.workspace --remote DIR`` (as ``make setup`` does; it restores the
data file from the md5-checked seed copy and pushes it). Covered, as a user would go:

- ``dvc repro`` (what ``make run`` runs) trains through kfp.local; ``dvc metrics show``
  lists the test metrics; ``git status`` shows exactly the files to commit (``dvc.lock``,
  the model pointer, and ``reports/metrics.json``); the package task already pushed the
  model version to the remote under the md5 that ``dvc.lock`` records;
- a second ``dvc repro`` does nothing; after ``git commit`` + ``dvc push`` a fresh
  ``git clone`` + ``dvc pull`` restores that exact model version (same file hashes, its
  lineage verified);
- a gate rejection fails the run and leaves ``dvc.lock``, the model and the metrics as
  they were;
- ``dvc exp run -S`` and ``dvc exp show --json`` compare experiments;
- against a real S3 object store (SeaweedFS on 127.0.0.1): the pipeline reads its dataset
  from the store (the file absent locally), pushes the model version there, and another
  place restores it by its pointer.

Stages run ``python`` from PATH, so the venv comes first on PATH; the packaged versions go
to the session's BentoML store under a model name of this module's own.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from components.dvc_remote import fetch
from components.io import file_hash
from components.package import verify
from tests.integration.object_store import S3_CREDENTIALS

pytestmark = pytest.mark.slow

DATA = Path("data") / "auto-mpg.data"
MODEL = "models/current"
METRICS = "reports/metrics.json"


@dataclass
class Repo:
    root: Path
    remote: Path
    model_name: str
    setup_output: str = ""
    repro_output: str = ""
    status_after_run: str = ""
    rev: str = ""


def tree_hashes(root: Path, *dirs: str) -> dict[str, str]:
    """sha256 of every file under the given folders (paths relative to ``root``)."""
    out = {}
    for d in dirs:
        base = root / d
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for p in paths:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def edit_params(path: Path, **dotted) -> None:
    """Set dotted keys in a params file (values only: DVC tracks values, not formatting)."""
    params = yaml.safe_load(path.read_text())
    for key, value in dotted.items():
        node = params
        *parents, last = key.split("__")
        for part in parents:
            node = node[part]
        assert last in node, f"{key} is not in {path}"
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def lock_out(root: Path) -> dict:
    """dvc.lock's entry for the model version directory."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return next(o for o in lock["stages"]["training"]["outs"] if o["path"] == MODEL)


@pytest.fixture(scope="module")
def git(run_cmd):
    def run(repo: Path, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
        return run_cmd(["git", "-C", repo, *args], cwd=repo, expect=expect, timeout=60)

    return run


@pytest.fixture(scope="module")
def dvc(run_cmd, dvc_cmd):
    def run(repo: Path, *args: str, expect: int | None = 0,
            env: dict | None = None) -> subprocess.CompletedProcess:
        return run_cmd([*dvc_cmd, *args], cwd=repo, expect=expect, timeout=600, env=env)

    return run


def init_git(git, root: Path) -> None:
    git(root, "config", "user.name", "Slipway Tests")
    git(root, "config", "user.email", "tests@slipway.invalid")
    git(root, "config", "commit.gpgsign", "false")


@pytest.fixture(scope="module")
def base(tmp_path_factory, copy_tracked, run_cmd, python_cmd, git, dvc) -> Repo:
    """Version A: the copied repository, set up, `dvc repro` (make run), committed, pushed."""
    tmp = tmp_path_factory.mktemp("dvc")
    repo = Repo(root=tmp / "repo", remote=tmp / "remote",
                model_name="t-" + uuid.uuid4().hex[:8] + "-{dataset}")
    repo.root.mkdir()
    copied = copy_tracked(repo.root)
    assert "dvc.yaml" in copied and str(DATA) + ".dvc" in copied
    assert not (repo.root / DATA).exists()  # git does not hold the data, DVC does
    # A model name of this module's own (the gate compares with its latest version), and
    # version A's model spelt out (the experiment changes the estimator to knn).
    edit_params(repo.root / "params.yaml", package__model_name=repo.model_name,
                dataset="breast_cancer", train__framework="sklearn",
                train__estimator="random_forest")
    git(repo.root, "init", "-q")
    init_git(git, repo.root)
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-q", "-m", "copy of the project")
    repo.setup_output = run_cmd([*python_cmd, "-m", "pipelines.workspace", "--remote",
                                 repo.remote], cwd=repo.root, timeout=120).output
    repo.repro_output = dvc(repo.root, "repro").output
    repo.status_after_run = git(repo.root, "status", "--porcelain",
                                "--untracked-files=all").stdout
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-q", "-m", "version A")
    repo.rev = git(repo.root, "rev-parse", "HEAD").stdout.strip()
    dvc(repo.root, "push")
    return repo


@pytest.fixture(scope="module")
def clone_of(git, dvc):
    """``git clone`` the base repository, point DVC at the same remote and ``dvc pull``."""

    def clone(base: Repo, name: str) -> tuple[Path, str]:
        dst = base.root.parent / name
        git(base.root.parent, "clone", "-q", str(base.root), str(dst))
        init_git(git, dst)
        assert not (dst / DATA).exists() and not (dst / "models").exists()
        dvc(dst, "remote", "add", "--local", "-d", "local", str(base.remote))
        return dst, dvc(dst, "pull").output

    return clone


def test_workspace_restores_data_from_seed_and_pushes_it(base):
    assert f"DVC remote: local -> {base.remote}" in base.setup_output
    assert ("restored data/auto-mpg.data from data/seed/auto-mpg.data (md5 verified); "
            "pushed to the DVC remote") in base.setup_output
    md5 = yaml.safe_load((base.root / f"{DATA}.dvc").read_text())["outs"][0]["md5"]
    stored = base.remote / "files" / "md5" / md5[:2] / md5[2:]
    assert stored.is_file() and file_hash(stored, "md5") == md5


def test_run_versions_the_model_and_metrics_with_dvc(base, dvc):
    assert "Running stage 'training'" in base.repro_output
    assert "pipeline training succeeded" in base.repro_output
    # git status shows what to commit: the pointer file and the metrics, nothing else
    # (the model itself is DVC's: models/ is git-ignored).
    changed = sorted(line[3:] for line in base.status_after_run.splitlines())
    assert changed == ["dvc.lock", METRICS], base.status_after_run
    lineage = verify(base.root / MODEL)
    assert lineage["estimator"] == "random_forest"
    metrics = json.loads((base.root / METRICS).read_text())
    assert metrics == lineage["metrics"] and metrics["accuracy"] > 0.85
    shown = json.loads(dvc(base.root, "metrics", "show", "--json").stdout)
    listed = next(iter(shown.values()))["data"][METRICS]["data"]
    assert listed == pytest.approx(metrics)
    # dvc.lock's pointer is the one the package task pushed: the remote held the model
    # version under that md5 before any `dvc push`, and the run printed it.
    out = lock_out(base.root)
    assert f"DVC remote     pushed, md5 {out['md5']}" in base.repro_output
    manifest = base.remote / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
    assert manifest.is_file()
    assert re.fullmatch(r"[0-9a-f]{40}", lineage["code"]["commit"])


def test_second_run_does_nothing(base, dvc, git):
    lock_before = (base.root / "dvc.lock").read_bytes()
    output = dvc(base.root, "repro").output
    assert "Stage 'training' didn't change, skipping" in output
    assert "Running stage" not in output
    assert (base.root / "dvc.lock").read_bytes() == lock_before
    assert git(base.root, "status", "--porcelain").stdout == ""


def test_another_clone_restores_that_exact_model_version(base, clone_of, dvc):
    clone, pulled = clone_of(base, "fresh-clone")
    assert f"{MODEL}/" in pulled and str(DATA) in pulled
    assert tree_hashes(clone, MODEL, str(DATA)) == tree_hashes(base.root, MODEL, str(DATA))
    assert verify(clone / MODEL)["version"] == verify(base.root / MODEL)["version"]
    assert "Data and pipelines are up to date." in dvc(clone, "status").output
    assert json.loads((clone / METRICS).read_text()) == json.loads(
        (base.root / METRICS).read_text())


def test_gate_rejection_leaves_dvc_lock_model_and_metrics_as_they_were(base, clone_of, dvc):
    clone, _ = clone_of(base, "rejected")
    before = {"lock": (clone / "dvc.lock").read_bytes(),
              **tree_hashes(clone, MODEL, METRICS)}
    edit_params(clone / "params.yaml", gate__classification__threshold=0.9999)
    output = dvc(clone, "repro", expect=None)
    assert output.returncode != 0
    assert "REJECTED" in output.output
    after = {"lock": (clone / "dvc.lock").read_bytes(), **tree_hashes(clone, MODEL, METRICS)}
    assert after == before
    assert "changed" in dvc(clone, "status").output  # params changed, nothing recorded


def test_experiment_run_and_show_list_its_metrics(base, clone_of, dvc):
    clone, _ = clone_of(base, "experiments")
    output = dvc(clone, "exp", "run", "-n", "knn-trial", "-S", "train.estimator=knn").output
    assert "Running stage 'training'" in output
    shown = json.loads(dvc(clone, "exp", "show", "--json").stdout)
    experiments = {
        exp["name"]: exp["revs"][0]["data"]
        for baseline in shown for exp in (baseline.get("experiments") or [])
    }
    assert "knn-trial" in experiments, f"experiments listed: {sorted(experiments)}"
    data = experiments["knn-trial"]
    assert data["params"]["params.yaml"]["data"]["train"]["estimator"] == "knn"
    metrics = data["metrics"][METRICS]["data"]
    assert metrics == json.loads((clone / METRICS).read_text())
    assert verify(clone / MODEL)["estimator"] == "knn"
    baseline_metrics = next(b for b in shown if b["rev"] != "workspace")["data"]["metrics"]
    assert baseline_metrics[METRICS]["data"] == json.loads((base.root / METRICS).read_text())


def test_pipeline_reads_its_dataset_from_s3_and_pushes_the_model_there(
        base, clone_of, dvc, run_cmd, python_cmd, integration_env, s3_store, tmp_path):
    """The object store is the only remote: the data file is absent from the work tree."""
    clone, _ = clone_of(base, "s3-clone")
    env = {**integration_env, **S3_CREDENTIALS}
    prefix = f"story-{uuid.uuid4().hex[:8]}"
    remote = s3_store.remote(prefix)
    dvc(clone, "remote", "add", "--local", "-f", "-d", "s3store", remote["url"])
    dvc(clone, "remote", "modify", "--local", "s3store", "endpointurl", remote["endpointurl"])
    dvc(clone, "push", f"{DATA}.dvc", env=env)  # the dataset goes to the object store
    data_md5 = file_hash(clone / DATA, "md5")
    (clone / DATA).unlink()

    run = run_cmd([*python_cmd, "-m", "pipelines", "run", "training", "--set",
                   "dataset=auto_mpg", "--export", "exported"], cwd=clone, env=env,
                  timeout=600)
    assert f"md5 {data_md5}" in run.output  # the summary's dataset line
    assert file_hash(clone / DATA, "md5") == data_md5  # fetched into place, verified
    pointer_md5 = re.search(r"DVC remote     pushed, md5 (\S+)", run.output).group(1)
    keys = [o["Key"] for o in s3_store.client().list_objects_v2(
        Bucket=s3_store.bucket, Prefix=prefix)["Contents"]]
    assert f"{prefix}/files/md5/{pointer_md5[:2]}/{pointer_md5[2:]}" in keys

    restored = tmp_path / "elsewhere" / "version"
    fetch({"md5": pointer_md5, "path": "version"}, remote, restored)
    assert tree_hashes(restored, ".") == tree_hashes(clone / "exported", ".")
    assert verify(restored)["dataset"]["md5"] == data_md5
