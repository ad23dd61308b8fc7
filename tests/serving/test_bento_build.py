"""`bentoml build` of the service, offline, with the model version packed in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_bentoml_build_produces_a_bento_referencing_the_model(bc_model):
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "SLIPWAY_MODEL": bc_model.tag,
           "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}  # finds `uv`
    out = subprocess.run(
        [str(venv_bin / "bentoml"), "build", "-f", "serving/bentofile.yaml", "-o", "tag", "."],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    tag = out.stdout.strip().splitlines()[-1].split("__tag__:")[-1].strip()
    name, version = tag.split(":")
    bento = Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "serving.service:Slipway"
    models = [m["tag"] for s in info["services"] for m in s["models"]]
    assert models == [bc_model.tag]
    assert (bento / "src" / "serving" / "service.py").is_file()
    assert (bento / "src" / "components" / "safe_load.py").is_file()
