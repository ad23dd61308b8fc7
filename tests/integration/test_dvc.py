"""The DVC pipeline (dvc.yaml) in a temporary git repository, with a real remote.

The repository is a copy of this one's git-tracked files (as they are in the work tree);
its DVC remote is a real local directory under the test's temporary folder, set up by
``python -m pipelines.workspace --remote DIR`` (which restores the data file from the
md5-checked seed copy and pushes it). Covered: that setup; ``dvc repro`` running every
stage and writing a verifiable model version and metrics; a second ``dvc repro`` doing
nothing; a changed ``train.estimator`` rerunning only train and the stages after it;
``dvc push`` then a fresh ``git clone`` + ``dvc pull`` from the same remote directory
restoring identical data and models; ``dvc exp run -S`` and ``dvc exp show --json``; and
going back to an earlier model version with ``git checkout`` + ``dvc checkout``.

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

from components.io import file_hash
from components.package import verify

pytestmark = pytest.mark.slow

STAGES = ("ingest", "validate", "split", "preprocess", "train", "evaluate", "gate", "package")
DATA = Path("data") / "auto-mpg.data"
OUTPUT_DIRS = ("models/package", "models/model", "models/transformer", "data/interim",
               "data/processed")


@dataclass
class Repo:
    root: Path
    remote: Path
    model_name: str
    setup_output: str = ""
    repro_output: str = ""
    rev: str = ""


def ran(output: str) -> list[str]:
    """The stages a ``dvc repro`` / ``dvc exp run`` output says it ran, in order."""
    return re.findall(r"^Running stage '([^']+)'", output, flags=re.MULTILINE)


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


@pytest.fixture(scope="module")
def git(run_cmd):
    def run(repo: Path, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
        return run_cmd(["git", "-C", repo, *args], cwd=repo, expect=expect, timeout=60)

    return run


@pytest.fixture(scope="module")
def dvc(run_cmd, dvc_cmd):
    def run(repo: Path, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
        return run_cmd([*dvc_cmd, *args], cwd=repo, expect=expect, timeout=400)

    return run


def init_git(git, root: Path) -> None:
    git(root, "config", "user.name", "Slipway Tests")
    git(root, "config", "user.email", "tests@slipway.invalid")
    git(root, "config", "commit.gpgsign", "false")


@pytest.fixture(scope="module")
def base(tmp_path_factory, copy_tracked, run_cmd, python_cmd, git, dvc) -> Repo:
    """Version A: the copied repository, set up, reproduced, committed and pushed."""
    tmp = tmp_path_factory.mktemp("dvc")
    repo = Repo(root=tmp / "repo", remote=tmp / "remote",
                model_name="t-" + uuid.uuid4().hex[:8] + "-{dataset}")
    repo.root.mkdir()
    copied = copy_tracked(repo.root)
    assert "dvc.yaml" in copied and str(DATA) + ".dvc" in copied
    assert not (repo.root / DATA).exists()  # git does not hold the data, DVC does
    # A model name of this module's own (the gate compares with its latest version), and
    # version A's model spelt out (the tests change the estimator to knn).
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


def test_workspace_restores_data_from_seed_and_pushes_it(base, run_cmd, python_cmd):
    assert f"DVC remote: local -> {base.remote}" in base.setup_output
    assert ("restored data/auto-mpg.data from data/seed/auto-mpg.data (md5 verified); "
            "pushed to the DVC remote") in base.setup_output
    local_config = (base.root / ".dvc" / "config.local").read_text()
    assert str(base.remote) in local_config
    md5 = yaml.safe_load((base.root / f"{DATA}.dvc").read_text())["outs"][0]["md5"]
    assert file_hash(base.root / DATA, "md5") == md5
    # The remote directory holds the file under its md5 (DVC 3 layout files/md5/xx/yyyy).
    stored = base.remote / "files" / "md5" / md5[:2] / md5[2:]
    assert stored.is_file() and file_hash(stored, "md5") == md5
    # Idempotent: a second setup keeps the remote and restores nothing.
    again = run_cmd([*python_cmd, "-m", "pipelines.workspace", "--remote", base.remote],
                    cwd=base.root, timeout=120).output
    assert "(already configured)" in again and "restored" not in again


def test_repro_runs_every_stage_and_writes_model_and_metrics(base):
    assert ran(base.repro_output) == list(STAGES)
    lineage = verify(base.root / "models" / "package")
    assert f"package: version {lineage['version']} -> models/package" in base.repro_output
    assert lineage["estimator"] == "random_forest"
    metrics = json.loads((base.root / "reports" / "metrics.json").read_text())
    assert metrics == lineage["metrics"]
    assert metrics["accuracy"] > 0.85
    lock = yaml.safe_load((base.root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    # Version A's lineage names the commit it was built from.
    assert re.fullmatch(r"[0-9a-f]{40}", lineage["code"]["commit"])


def test_second_repro_does_nothing(base, dvc, git):
    lock_before = (base.root / "dvc.lock").read_bytes()
    output = dvc(base.root, "repro").output
    assert "Data and pipelines are up to date." in output
    assert ran(output) == []
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in output
    assert (base.root / "dvc.lock").read_bytes() == lock_before
    assert git(base.root, "status", "--porcelain").stdout == ""


def test_push_then_clone_and_pull_restores_identical_data_and_models(base, clone_of, dvc):
    clone, pulled = clone_of(base, "fresh-clone")
    assert "data/auto-mpg.data" in pulled and "models/package/" in pulled
    assert tree_hashes(clone, str(DATA), *OUTPUT_DIRS) == tree_hashes(base.root, str(DATA),
                                                                      *OUTPUT_DIRS)
    verify(clone / "models" / "package")
    assert "Data and pipelines are up to date." in dvc(clone, "status").output


@pytest.fixture(scope="module")
def version_b(base, clone_of, dvc, git):
    """A clone of version A with train.estimator changed to knn, reproduced."""
    clone, _ = clone_of(base, "version-b")
    edit_params(clone / "params.yaml", train__estimator="knn")
    return clone, dvc(clone, "repro").output


def test_changed_estimator_reruns_only_train_and_later_stages(version_b):
    clone, output = version_b
    assert ran(output) == ["train", "evaluate", "gate", "package"]
    for stage in ("ingest", "validate", "split", "preprocess"):
        assert f"Stage '{stage}' didn't change, skipping" in output
    lineage = verify(clone / "models" / "package")
    assert lineage["estimator"] == "knn"
    assert lineage["params"]["train"]["estimator"] == "knn"


def test_checkout_restores_an_earlier_model_version(base, version_b, git, dvc):
    clone, _ = version_b
    version_a = verify(base.root / "models" / "package")["version"]
    version_b_id = verify(clone / "models" / "package")["version"]
    assert version_b_id != version_a
    files_b = tree_hashes(clone, "models/package", "models/model")
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "version B")
    rev_b = git(clone, "rev-parse", "HEAD").stdout.strip()

    git(clone, "checkout", base.rev, "--", "dvc.lock", "params.yaml")
    dvc(clone, "checkout")
    assert verify(clone / "models" / "package")["version"] == version_a
    assert tree_hashes(clone, "models/package", "models/model") == tree_hashes(
        base.root, "models/package", "models/model")

    git(clone, "checkout", rev_b, "--", "dvc.lock", "params.yaml")
    dvc(clone, "checkout")
    assert verify(clone / "models" / "package")["version"] == version_b_id
    assert tree_hashes(clone, "models/package", "models/model") == files_b


def test_experiment_run_and_show_list_its_metrics(base, clone_of, dvc):
    clone, _ = clone_of(base, "experiments")
    output = dvc(clone, "exp", "run", "-n", "knn-trial", "-S", "train.estimator=knn").output
    assert ran(output) == ["train", "evaluate", "gate", "package"]
    shown = json.loads(dvc(clone, "exp", "show", "--json").stdout)
    experiments = {
        exp["name"]: exp["revs"][0]["data"]
        for baseline in shown for exp in (baseline.get("experiments") or [])
    }
    assert "knn-trial" in experiments, f"experiments listed: {sorted(experiments)}"
    data = experiments["knn-trial"]
    assert data["params"]["params.yaml"]["data"]["train"]["estimator"] == "knn"
    metrics = data["metrics"]["reports/metrics.json"]["data"]
    # The experiment's results are applied to the workspace: the same metrics.
    assert metrics == json.loads((clone / "reports" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.85
    baseline_metrics = next(b for b in shown if b["rev"] != "workspace")["data"]["metrics"]
    assert baseline_metrics["reports/metrics.json"]["data"] == json.loads(
        (base.root / "reports" / "metrics.json").read_text())

