"""Fixtures for the container tests: real podman, real images, real kfp.local DockerRunner.

Every test here carries the ``containers`` marker and is skipped where podman is not
installed (tests/conftest.py); CI installs it (.ci/run). The stages and serving images are
built once per session with ``pipelines.images.build`` (``make images ROLES=stages``); podman
keeps its layers, so a session after the first rebuilds only what changed.
"""

from __future__ import annotations

import pytest

from pipelines import images


@pytest.fixture(scope="session")
def stages_image() -> dict:
    """The stages image, built (or brought up to date) from this work tree."""
    return images.build(["stages"])["stages"]


@pytest.fixture(scope="session")
def serving_image() -> dict:
    """The serving image, built (or brought up to date) from this work tree."""
    return images.build(["serving"])["serving"]
