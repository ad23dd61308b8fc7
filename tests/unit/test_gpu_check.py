"""``make gpu-check`` (benchmarks/gpu_check.py) as far as a CPU machine can run it.

No GPU here: the GPU steps must skip and say so, the results file must hold every step; the
install from a wheel folder is run for real (pip --no-index into a fresh venv) on a wheel
made here, since downloading the real ones (``make gpu-wheels``) needs the network; and
``--cpu`` runs the torchrun and digits fits on the CPU.

    .venv/bin/python -m pytest tests/unit/test_gpu_check.py
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import gpu_check  # noqa: E402

needs_cpu_only = pytest.mark.skipif(torch.cuda.is_available(),
                                    reason="checks what the check does without a GPU")


def _wheel(folder: Path, name: str = "slipway_gpu_probe", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (PEP 427): one module and its metadata."""
    files = {f"{name}.py": b"ANSWER = 42\n",
             f"{name}-{version}.dist-info/METADATA":
                 f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL":
                 b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"  # noqa: E501
        for path, data in files.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, data in files.items():
            z.writestr(p, data)
        z.writestr(f"{name}-{version}.dist-info/RECORD", record)
    return path


@pytest.mark.slow
def test_installs_from_the_wheel_folder_without_an_index(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    requirements = tmp_path / "req.txt"
    requirements.write_text("slipway-gpu-probe==1.0\n")
    python = gpu_check.prepare(wheels, tmp_path / "env", requirements)
    out = subprocess.run([str(python), "-c", "import slipway_gpu_probe as p; print(p.ANSWER)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "42"
    # A requirement the folder cannot satisfy fails: nothing is fetched from an index.
    requirements.write_text("slipway-gpu-probe==2.0\n")
    with pytest.raises(subprocess.CalledProcessError):
        gpu_check.prepare(wheels, tmp_path / "env", requirements)


def test_refuses_an_empty_wheel_folder(tmp_path):
    with pytest.raises(SystemExit, match="run `make gpu-wheels`"):
        gpu_check.prepare(tmp_path, tmp_path / "env")


def test_requirements_leave_out_torch_and_the_big_wheels():
    names = [line.split("=")[0].strip().lower() for line in
             gpu_check.REQUIREMENTS.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert "torch" not in names and not {"scipy", "scikit-learn", "pyarrow"} & set(names)


def test_digits_from_the_file_taken_out_of_the_wheel(tmp_path, monkeypatch):
    """Without scikit-learn the digits come from digits.csv.gz, as scikit-learn ships it."""
    import sklearn.datasets as datasets
    from sklearn.datasets import load_digits

    shipped = Path(datasets.__file__).parent / "data" / gpu_check.DIGITS
    (tmp_path / gpu_check.DIGITS).write_bytes(shipped.read_bytes())
    data = load_digits()
    monkeypatch.setitem(__import__("sys").modules, "sklearn.datasets", None)  # not installed
    x, y = gpu_check.digits_data(tmp_path)
    np.testing.assert_allclose(x, data.data / 16)
    np.testing.assert_array_equal(y, data.target)
    assert x.dtype == np.float32 and x.shape == (1797, 64)
    with gzip.open(shipped) as f:
        assert len(f.read().splitlines()) == 1797


@needs_cpu_only
def test_without_a_gpu_every_gpu_step_skips_and_the_file_says_so(tmp_path):
    out = tmp_path / "results.json"
    results = gpu_check.run_steps(tmp_path, out)
    assert results == json.loads(out.read_text())
    assert list(results["steps"]) == list(gpu_check.STEPS)
    for step in results["steps"].values():
        assert step["status"] == "skipped" and step["why"] == "no CUDA GPU visible"
    assert results["ok"] is True and results["machine"]["gpu"] is None


@needs_cpu_only
@pytest.mark.slow
def test_cpu_runs_the_torchrun_and_digits_fits(tmp_path):
    out = tmp_path / "results.json"
    results = gpu_check.run_steps(tmp_path, out, cpu=True)
    steps = results["steps"]
    assert steps["gpu_tests"]["status"] == steps["resnet18"]["status"] == "skipped"
    for name in ("torchrun_fit", "digits_cnn"):
        assert steps[name]["status"] == "ok", steps[name]
        assert steps[name]["val_accuracy"] > 0.9 and steps[name]["samples_per_s"] > 0
    assert "x 1 processes" not in steps["torchrun_fit"]["device"]  # world size 1: one device
    assert results["ok"] is True


def test_a_failed_step_is_recorded_and_fails_the_check(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_check, "_digits_fit", broken)
    results = gpu_check.run_steps(tmp_path, tmp_path / "r.json", cpu=True)
    assert results["steps"]["digits_cnn"] == {"status": "failed", "why": "RuntimeError: boom",
                                              "seconds": results["steps"]["digits_cnn"]["seconds"]}
    assert results["ok"] is False
