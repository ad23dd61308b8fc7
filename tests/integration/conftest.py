"""Fixtures for the integration tests: real subprocesses in temporary work trees.

Nothing is mocked. Commands run with this interpreter's environment first on ``PATH`` (so
``python`` in dvc.yaml is the venv's), the session's BentoML store (``BENTOML_HOME``, set by
``tests/conftest.py``) and DVC's global and system config pointed at empty directories, so
the user's own DVC settings (a default remote, say) cannot leak into a test repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.integration.object_store import s3_store  # noqa: F401 - one S3 server per session

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DATA_FILE = Path("data") / "auto-mpg.data"

Runner = Callable[..., subprocess.CompletedProcess]


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def integration_env(tmp_path_factory) -> dict[str, str]:
    """Environment for subprocesses: venv first on PATH, isolated DVC config, same store."""
    assert os.environ.get("BENTOML_HOME"), "tests/conftest.py should have set BENTOML_HOME"
    config = tmp_path_factory.mktemp("dvc-config")
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        PYTHONUNBUFFERED="1",
        DVC_NO_ANALYTICS="1",
        DVC_GLOBAL_CONFIG_DIR=str(config / "global"),
        DVC_SYSTEM_CONFIG_DIR=str(config / "system"),
        DVC_SITE_CACHE_DIR=str(config / "site-cache"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Slipway Tests",
        GIT_AUTHOR_EMAIL="tests@slipway.invalid",
        GIT_COMMITTER_NAME="Slipway Tests",
        GIT_COMMITTER_EMAIL="tests@slipway.invalid",
    )
    env.pop("SLIPWAY_GIT_COMMIT", None)  # would override the git commit in lineage
    return env


@pytest.fixture(scope="session")
def run_cmd(integration_env) -> Runner:
    """Run a command; fail with its output when the exit status is not ``expect``.

    ``run_cmd(args, cwd=..., expect=0, timeout=300)``; ``expect=None`` accepts any status.
    The result has ``.output`` (stdout and stderr together) besides the usual fields.
    """

    def run(args: Sequence[str | os.PathLike], cwd: str | os.PathLike, expect: int | None = 0,
            timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        args = [str(a) for a in args]
        proc = subprocess.run(args, cwd=cwd, env=env or integration_env, capture_output=True,
                              text=True, timeout=timeout)
        proc.output = proc.stdout + proc.stderr
        if expect is not None and proc.returncode != expect:
            pytest.fail(
                f"`{' '.join(args)}` (in {cwd}) exited {proc.returncode}, expected {expect}\n"
                f"--- stdout ---\n{_tail(proc.stdout)}\n--- stderr ---\n{_tail(proc.stderr)}",
                pytrace=False,
            )
        return proc

    return run


@pytest.fixture(scope="session")
def python_cmd() -> list[str]:
    """This interpreter (the package is installed in it, editable)."""
    return [sys.executable]


@pytest.fixture(scope="session")
def dvc_cmd() -> list[str]:
    """DVC from this environment."""
    return [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="session")
def source_data_file() -> Path:
    """The DVC-tracked data file of the main work tree, or its committed seed copy."""
    restored = REPO / DATA_FILE
    return restored if restored.is_file() else REPO / "data" / "seed" / DATA_FILE.name


@pytest.fixture(scope="session")
def copy_tracked() -> Callable[[Path], list[str]]:
    """Copy the repository's git-tracked files, as they are in the work tree, into a folder.

    Uncommitted edits are included; files deleted from the work tree are skipped. Returns
    the relative paths copied.
    """

    def copy(dst: Path) -> list[str]:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], check=True,
                                capture_output=True).stdout.decode().split("\0")
        copied = []
        for rel in filter(None, listed):
            src = REPO / rel
            if not src.is_file():
                continue
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
            copied.append(rel)
        return copied

    return copy
