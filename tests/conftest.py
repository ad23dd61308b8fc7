"""Shared test fixtures.

The test session uses its own BentoML model store (``BENTOML_HOME`` in a temporary
directory, set before anything imports bentoml), so no test reads or writes the user's
``~/bentoml``; subprocesses inherit it. BentoML caches its store per process, so the store
is per session, not per test: a test that needs an empty store uses a model name of its
own (``unique_model_name``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def gpu_available() -> bool:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_containers = pytest.mark.skip(reason="needs a container engine (podman)")
    has_gpu = gpu_available()
    has_podman = shutil.which("podman") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "containers" in item.keywords and not has_podman:
            item.add_marker(skip_containers)


def pytest_configure(config):
    home = Path(tempfile.mkdtemp(prefix="slipway-test-bentoml-"))
    os.environ["BENTOML_HOME"] = str(home)
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))


@pytest.fixture
def unique_model_name(request) -> str:
    """A BentoML model name no other test uses (so its store history starts empty)."""
    return "t-" + uuid.uuid4().hex[:10]


@pytest.fixture
def repo() -> Path:
    """The repository root (params.yaml, dvc.yaml, data/)."""
    return REPO
