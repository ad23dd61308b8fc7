"""Package stage: write a model version and register it in the BentoML model store.

A model version is a directory holding the fitted preprocessing and model (skops, which
cannot execute code on load), the input schema, the test metrics and ``lineage.json``:
dataset hash, params, git commit, time, library versions and the sha256 of every other
file. The version id is derived from those file hashes, so packaging the same model twice
gives the same version (and registers it once).

    python -m components.package --transformer models/transformer \\
        --model models/model --evaluation reports/evaluation.json --out models/package
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from components.config import Params
from components.errors import SlipwayError
from components.io import atomic_dir, file_hash, read_json, write_json

LINEAGE_FILE = "lineage.json"
METRICS_FILE = "metrics.json"
EVALUATION_FILE = "evaluation.json"
BENTOML_MODULE = "slipway"  # the model store's module name: marks a model as Slipway's
LIBRARIES = ("scikit-learn", "numpy", "pandas", "pyarrow", "skops", "kfp", "bentoml", "dvc",
             "torch", "tensorflow", "keras")


def git_commit(cwd: str | Path = ".") -> dict[str, Any]:
    """The code version: commit and whether the work tree had uncommitted changes."""
    import os

    if os.environ.get("SLIPWAY_GIT_COMMIT"):  # baked into the component image on a cluster
        return {"commit": os.environ["SLIPWAY_GIT_COMMIT"], "dirty": False}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=cwd, capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def version_id(hashes: dict[str, str]) -> str:
    """A short id for a set of files, from their names and sha256."""
    joined = "\n".join(f"{name}:{digest}" for name, digest in sorted(hashes.items()))
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def package(
    transformer_dir: str | Path,
    model_dir: str | Path,
    evaluation_path: str | Path,
    params: dict[str, Any],
    out_dir: str | Path,
    code_dir: str | Path = ".",
    images: dict[str, str] | None = None,
    trigger: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a model version directory.

    Args:
        transformer_dir: preprocess output (transformer and input schema).
        model_dir: train output (trainer files and training record).
        evaluation_path: evaluation.json from evaluate.
        params: the settings the model was built with (recorded in the lineage).
        out_dir: the version directory to write (replaced atomically).
        code_dir: the git work tree whose commit is recorded.
        images: the images (by digest) the model was trained and packaged in, by task;
            recorded in the lineage, which the version id does not hash, so the same model
            trained in an image and as a local subprocess has the same version.
        trigger: the alert that started the run (``slipway trigger``), if one did.

    Returns:
        The lineage record, including ``version`` and ``files``.
    """
    evaluation = read_json(evaluation_path)
    sources = [p for d in (transformer_dir, model_dir) for p in sorted(Path(d).iterdir())
               if p.is_file() and not p.name.startswith(".")]
    with atomic_dir(out_dir) as tmp:
        for src in sources:
            shutil.copy2(src, tmp / src.name)
        write_json(tmp / METRICS_FILE, evaluation["metrics"])
        write_json(tmp / EVALUATION_FILE, evaluation)
        hashes = {p.name: file_hash(p, "sha256") for p in sorted(tmp.iterdir())}
        training = evaluation["training"]
        lineage = {
            "version": version_id(hashes),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "task": evaluation["task"],
            "framework": training["framework"],
            "estimator": training["estimator"],
            "device": training.get("device", "cpu"),
            "dataset": {k: evaluation["dataset"].get(k) for k in ("name", "source", "md5", "rows")},
            "metrics": evaluation["metrics"],
            "params": params,
            "code": git_commit(code_dir),
            "images": images or {},
            **({"trigger": trigger} if trigger else {}),
            "libraries": library_versions(),
            "platform": f"{platform.system()} {platform.machine()}",
            "files": hashes,
        }
        write_json(tmp / LINEAGE_FILE, lineage)
    return lineage


def verify(version_dir: str | Path, allow: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check every file of a model version against the hashes in its lineage.

    Every recorded file must be there with its recorded sha256, no unrecorded file may be
    there (but those named in ``allow``), and the version id must be the one the recorded
    hashes give, so editing lineage.json to match a changed file is caught too.

    Args:
        version_dir: the model version directory.
        allow: names of extra files to tolerate, e.g. BentoML's ``model.yaml`` in a store
            entry.

    Returns:
        The lineage record.

    Raises:
        SlipwayError: naming the missing, extra or changed file.
    """
    version_dir = Path(version_dir)
    lineage_path = version_dir / LINEAGE_FILE
    if not lineage_path.is_file():
        raise SlipwayError(f"{version_dir} is not a model version ({LINEAGE_FILE} missing)",
                           "package the model again")
    try:
        lineage = json.loads(lineage_path.read_text())
        expected: dict[str, str] = dict(lineage["files"])
        version = lineage["version"]
    except (ValueError, KeyError, TypeError) as err:
        raise SlipwayError(f"{lineage_path} is unreadable: {err}", "package the model again") \
            from None
    if version_id(expected) != version:
        raise SlipwayError(
            f"{version_dir}: lineage.json records version {version} but its file hashes give "
            f"{version_id(expected)} (lineage.json was edited)",
            "restore the model version (dvc pull / dvc checkout) or package it again",
        )
    extra = sorted(p.name for p in version_dir.iterdir()
                   if p.name not in expected and p.name != LINEAGE_FILE and p.name not in allow)
    if extra:
        raise SlipwayError(
            f"model version {version}: unexpected file(s) {', '.join(extra)} "
            "not recorded at packaging",
            "remove them, or restore the version (dvc pull / dvc checkout)",
        )
    for name, digest in sorted(expected.items()):
        path = version_dir / name
        if not path.is_file():
            raise SlipwayError(f"model version {version}: file {name} is missing",
                               "restore the version (dvc pull / dvc checkout)")
        if file_hash(path, "sha256") != digest:
            raise SlipwayError(
                f"model version {version}: {name} does not match its recorded sha256 "
                "(changed, truncated or tampered with)",
                "restore the version (dvc pull / dvc checkout) or package it again",
            )
    return lineage


def register(version_dir: str | Path, model_name: str) -> str:
    """Add a verified model version to the BentoML model store; returns its tag.

    A version already in the store (same content) is left as it is.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    lineage = verify(version_dir)
    tag = f"{model_name}:{lineage['version']}"
    try:
        bentoml.models.get(tag)
        return tag
    except NotFound:
        pass
    labels = {
        "task": lineage["task"],
        "framework": lineage["framework"],
        "dataset": lineage["dataset"]["name"],
    }
    meta = {
        "dataset_md5": lineage["dataset"]["md5"],
        "commit": lineage["code"]["commit"] or "unknown",
        **{f"test_{k}": v for k, v in lineage["metrics"].items()},
    }
    with bentoml.models.create(tag, labels=labels, metadata=meta, module=BENTOML_MODULE) as model:
        for src in Path(version_dir).iterdir():
            if src.is_file():
                shutil.copy2(src, Path(model.path) / src.name)
    return tag


def current_packaged(model_name: str) -> tuple[str, dict[str, float]] | None:
    """Version and test metrics of the latest model of that name in the BentoML store."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        model = bentoml.models.get(f"{model_name}:latest")
        metrics = read_json(Path(model.path) / METRICS_FILE)
    except (BentoMLException, FileNotFoundError, ValueError):
        return None
    return str(model.tag.version), metrics


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transformer", required=True, help="transformer directory")
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--evaluation", required=True, help="evaluation.json from evaluate")
    parser.add_argument("--out", required=True, help="model version directory to write")


def _run(args: argparse.Namespace, params: Params) -> None:
    lineage = package(args.transformer, args.model, args.evaluation,
                      params.model_dump(mode="json", by_alias=True), args.out)
    where = str(args.out)
    if params.package.bentoml_store:
        where += f", BentoML model {register(args.out, params.model_name())}"
    print(f"package: version {lineage['version']} -> {where}")


def main(argv: list[str] | None = None) -> int:
    from components.cli import stage_main

    return stage_main("package", __doc__.splitlines()[0], _add_arguments, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
