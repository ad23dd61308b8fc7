"""``make gpu-check``: every CUDA path of Slipway, run once on an NVIDIA GPU, into one results file.

Made for a bare GPU machine: Python 3.12 with a CUDA build of PyTorch, none of Slipway's other
dependencies, no network. ``make gpu-wheels`` (run here, with network) puts the few wheels the
check needs for that Python in ``build/gpu-wheels`` (numpy, pandas, pydantic, PyYAML,
safetensors, tqdm, pytest and their dependencies, under 60 MB) plus the digits data taken out
of scikit-learn's wheel. Copy the checkout with that folder to the GPU machine and run
``make gpu-check`` (or ``python3 -m benchmarks.gpu_check``): it makes ``build/gpu-venv``
with ``--system-site-packages`` (so the machine's CUDA torch is used as it is), installs the
wheels with ``pip --no-index`` from the folder, and runs in that environment:

1. ``pytest -m gpu tests/gpu``: the CUDA paths of the torch trainer (bf16 / fp16 autocast,
   channels-last, loader workers, save on GPU and load on CPU, resume);
2. ResNet-18 (CIFAR shape, bf16, channels-last), eager and ``torch.compile``: images/s and the
   share of the card's bf16 peak (``benchmarks.train.gpu_resnet``);
3. a 1-GPU torchrun fit (NCCL) through :mod:`components.trainers.distributed`;
4. the digits CNN with params.yaml's ``cnn`` settings, as the train core fits it;
5. Keras mixed precision, where a CUDA TensorFlow is installed (skipped otherwise).

Each step records ``status`` (ok, failed, skipped), why, its seconds and its figures in
``build/gpu-check/results.json``; the check exits 1 when a step failed. Without a GPU every
GPU step is skipped and says so; ``--cpu`` runs steps 3 and 4 on the CPU instead (how the
check itself is tested here).

    python3 -m benchmarks.gpu_check [--wheels build/gpu-wheels] [--out build/gpu-check/results.json]
    python3 -m benchmarks.gpu_check --download build/gpu-wheels   # what make gpu-wheels runs

Only the standard library is imported before the environment is ready.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "benchmarks" / "gpu-requirements.txt"
DIGITS = "digits.csv.gz"  # scikit-learn's bundled digits, taken out of its wheel
TARGET_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64")
MAX_MB = 60
GPU_TESTS_TIMEOUT_S = 240
STEPS = ("gpu_tests", "resnet18", "torchrun_fit", "digits_cnn", "keras_mixed_precision")


# ------------------------------------------------------------------------------- wheels

def download(folder: Path, python: str = TARGET_PYTHON) -> dict[str, Any]:
    """``make gpu-wheels``: the check's wheels for ``python`` on x86-64 Linux, pinned by
    requirements.lock, and the digits data, into ``folder``; refuses more than 60 MB."""
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp",
           *[a for p in PLATFORMS for a in ("--platform", p)]]
    subprocess.run([*pip, "-d", str(folder), "-c", str(REPO / "requirements.lock"),
                    "-r", str(REQUIREMENTS)], check=True)
    # The digits set ships inside scikit-learn, whose wheel and scipy alone are 44 MB: take
    # out the one 57 kB file and drop the wheel.
    sklearn_pin = next(line.strip() for line in (REPO / "requirements.lock").read_text()
                       .splitlines() if line.lower().startswith("scikit-learn=="))
    scratch = folder / "sklearn-wheel"
    subprocess.run([*pip, "--no-deps", "-d", str(scratch), sklearn_pin], check=True)
    wheel = next(scratch.glob("scikit_learn-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        (folder / DIGITS).write_bytes(z.read(f"sklearn/datasets/data/{DIGITS}"))
    for p in scratch.iterdir():
        p.unlink()
    scratch.rmdir()
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"gpu-wheels: {len(list(folder.glob('*.whl')))} wheels and {DIGITS} in {folder}: "
          f"{size:.1f} MB")
    if size > MAX_MB:
        raise SystemExit(f"gpu-wheels: {size:.1f} MB is over the {MAX_MB} MB budget: "
                         f"trim {REQUIREMENTS.relative_to(REPO)}")
    return {"folder": str(folder), "mb": round(size, 1)}


def prepare(wheels: Path, env_dir: Path, requirements: Path = REQUIREMENTS) -> Path:
    """A venv that sees the machine's packages (its CUDA torch) plus the check's wheels,
    installed from ``wheels`` only (no index, no network); returns its python."""
    if not wheels.is_dir() or not any(wheels.glob("*.whl")):
        raise SystemExit(f"gpu-check: no wheels in {wheels}: run `make gpu-wheels` on a machine "
                         "with network first and copy the folder along with the checkout")
    python = env_dir / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-index",
                    "--find-links", str(wheels), "-r", str(requirements)], check=True)
    return python


# -------------------------------------------------------------------------------- steps

def digits_data(wheels: Path = REPO / "build" / "gpu-wheels"):
    """Digits as float32 pixels in [0, 1] and labels: scikit-learn's when installed, else
    the file ``make gpu-wheels`` took out of its wheel (into ``wheels``)."""
    import numpy as np

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        with gzip.open(wheels / DIGITS, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        return table[:, :-1] / 16, table[:, -1].astype(np.int64)
    data = load_digits()
    return (data.data / 16).astype(np.float32), data.target.astype(np.int64)


def _digits_fit(wheels: Path, nproc: int | None) -> dict[str, Any]:
    """params.yaml's cnn on digits (1437 train, 360 validation rows); ``nproc``: through
    torchrun with that many processes, None: as the train core fits with one."""
    import numpy as np

    from components.config import load_params
    from components.trainers import distributed
    from components.trainers.torch import TorchTrainer

    x, y = digits_data(wheels)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    cut = len(x) * 4 // 5
    rules = load_params(REPO / "params.yaml").train
    hp = rules.hyperparameters["cnn"]
    trainer = TorchTrainer("classification", "cnn", hp, rules.seed, image_shape=(1, 8, 8))
    started = time.perf_counter()
    if nproc is None:
        fitted = distributed.fit(trainer, x[:cut], y[:cut], x[cut:], y[cut:])
    else:
        fitted = distributed.launch(trainer, x[:cut], y[:cut], x[cut:], y[cut:], nproc)
    seconds = time.perf_counter() - started
    accuracy = float((fitted.predict(x[cut:]) == y[cut:]).mean())
    epochs = len(fitted.history["loss"])
    return {"device": fitted.device, "epochs": epochs, "val_accuracy": round(accuracy, 4),
            "fit_seconds": round(seconds, 2),
            "samples_per_s": round(cut * epochs / seconds, 1)}


def _gpu_tests(out_dir: Path, wheels: Path) -> dict[str, Any]:
    report = out_dir / "gpu-tests.xml"
    # Bounded: the whole check is meant to finish in under 8 minutes.
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider",
                           "tests/gpu", f"--junitxml={report}", "-q"], cwd=REPO, check=False,
                          env={**os.environ, "SLIPWAY_GPU_WHEELS": str(wheels)},
                          timeout=GPU_TESTS_TIMEOUT_S)
    import xml.etree.ElementTree as ET

    counts = {}
    if report.is_file():
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    if done.returncode not in (0, 5):
        raise RuntimeError(f"pytest exited with {done.returncode}: {counts}")
    return counts


def _resnet() -> dict[str, Any]:
    from benchmarks.train import gpu_resnet

    result = gpu_resnet(repeat=3)
    if "skipped" in result:
        raise _Skip(result["skipped"])
    return result


def _keras() -> dict[str, Any]:
    try:
        import tensorflow as tf
    except ImportError:
        raise _Skip("TensorFlow is not installed (a CUDA TensorFlow would run Keras' "
                    "mixed-precision fit)") from None
    if not tf.config.list_physical_devices("GPU"):
        raise _Skip("TensorFlow is installed but sees no GPU (a CPU build)")
    import numpy as np

    from components.trainers.keras import KerasTrainer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2048, 64)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    trainer = KerasTrainer("classification", "mlp",
                           {"epochs": 3, "batch_size": 256, "precision": "auto"}, 0)
    started = time.perf_counter()
    trainer.fit(x, y, x[:256], y[:256])
    return {"device": trainer.device, "fit_seconds": round(time.perf_counter() - started, 2)}


class _Skip(Exception):
    """A step that cannot run on this machine, and why."""


def _step(name: str, fn, *args) -> dict[str, Any]:
    print(f"==> gpu-check: {name}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        result = {"status": "ok", **fn(*args)}
    except _Skip as why:
        result = {"status": "skipped", "why": str(why)}
    except Exception as err:  # a failed step is recorded; the others still run
        result = {"status": "failed", "why": f"{type(err).__name__}: {err}"}
    result["seconds"] = round(time.perf_counter() - started, 2)
    print(f"    {name}: {result['status']}" + (f" ({result['why']})" if "why" in result else ""),
          file=sys.stderr, flush=True)
    return result


def run_steps(wheels: Path, out: Path, cpu: bool = False) -> dict[str, Any]:
    """Run the check's steps in this environment; write and return the results."""
    import torch

    cuda = torch.cuda.is_available()
    no_gpu = _Skip("no CUDA GPU visible")

    def gpu_only(fn, *args):
        def run():
            if not cuda:
                raise no_gpu
            return fn(*args)
        return run

    def cpu_or_gpu(fn, *args):
        def run():
            if not cuda and not cpu:
                raise no_gpu
            return fn(*args)
        return run

    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if cuda
                    else None, "cpus": os.cpu_count()},
        "steps": {},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plan = {"gpu_tests": gpu_only(_gpu_tests, out.parent, wheels), "resnet18": gpu_only(_resnet),
            "torchrun_fit": cpu_or_gpu(_digits_fit, wheels, 1),
            "digits_cnn": cpu_or_gpu(_digits_fit, wheels, None),
            "keras_mixed_precision": gpu_only(_keras)}
    for name in STEPS:
        results["steps"][name] = _step(name, plan[name])
        out.write_text(json.dumps(results, indent=2))  # what finished, if the rest hangs
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["ok"] = all(s["status"] != "failed" for s in results["steps"].values())
    out.write_text(json.dumps(results, indent=2))
    print(f"gpu-check: results in {out}", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=REPO / "build" / "gpu-wheels")
    parser.add_argument("--env", type=Path, default=REPO / "build" / "gpu-venv")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu-check" / "results.json")
    parser.add_argument("--download", type=Path, metavar="FOLDER",
                        help="download the wheels into FOLDER (make gpu-wheels) and stop")
    parser.add_argument("--cpu", action="store_true",
                        help="without a GPU, run the torchrun and digits fits on the CPU")
    parser.add_argument("--in-env", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.download:
        download(args.download)
        return 0
    if not args.in_env:  # this interpreter may lack everything but torch: go into the venv
        python = prepare(args.wheels, args.env)
        command = [str(python), "-m", "benchmarks.gpu_check", "--in-env",
                   "--wheels", str(args.wheels), "--out", str(args.out)]
        return subprocess.run(command + (["--cpu"] if args.cpu else []), cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}).returncode
    return 0 if run_steps(args.wheels, args.out, args.cpu)["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
