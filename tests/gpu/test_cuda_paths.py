"""The torch trainer's CUDA paths, single-process and through torchrun (NCCL).

Every test here is marked ``gpu`` and skips without a CUDA GPU (tests/conftest.py). They
need only torch, numpy, pandas, pydantic, PyYAML, safetensors and pytest, so that
``make gpu-check`` runs them on a bare GPU machine from the wheels of ``make gpu-wheels``;
the digits come from scikit-learn when installed, else from the file ``make gpu-wheels``
took out of its wheel (``SLIPWAY_GPU_WHEELS`` names that folder).

    .venv/bin/python -m pytest -m gpu tests/gpu
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.gpu_check import digits_data  # noqa: E402
from components.config import DistributedParams  # noqa: E402
from components.trainers import distributed, load_trainer  # noqa: E402
from components.trainers.torch import CHECKPOINT_FILE, TorchTrainer, checkpoint_epoch  # noqa: E402

pytestmark = pytest.mark.gpu

SMALL_CNN = {"channels": [16, 32], "hidden": [64, 32], "epochs": 8, "patience": 3,
             "batch_size": 64, "lr": 1e-2, "dropout": 0.0}


@pytest.fixture(scope="module")
def digits():
    wheels = Path(os.environ.get("SLIPWAY_GPU_WHEELS", "build/gpu-wheels"))
    x, y = digits_data(wheels)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1200], y[:1200]), (x[1200:1500], y[1200:1500]), (x[1500:], y[1500:])


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_cnn_on_cuda_mixed_precision_checkpoint_and_cpu_load(tmp_path, digits, precision):
    (x, y), (xv, yv), (xt, yt) = digits
    hp = {**SMALL_CNN, "precision": precision}
    trainer = TorchTrainer("classification", "cnn", hp, 0, image_shape=(1, 8, 8),
                           checkpoint_dir=tmp_path / "ckpt")
    trainer.fit(x, y, xv, yv)
    assert trainer.device.startswith("cuda")
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    want = torch.bfloat16 if precision == "auto" and native else torch.float16
    assert trainer._plan.amp_dtype == want and trainer._plan.channels_last
    conv = trainer.model.body[0][0].weight
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    assert (trainer.predict(xt) == yt).mean() >= 0.9
    assert checkpoint_epoch(tmp_path / "ckpt" / CHECKPOINT_FILE) >= 1
    trainer.save(tmp_path / "model")
    loaded = load_trainer(tmp_path / "model")  # on CPU
    assert (loaded.predict(xt) == trainer.predict(xt)).mean() >= 0.98


def test_auto_is_one_process_per_gpu():
    assert distributed.world_size("auto") == torch.cuda.device_count()
    with pytest.raises(Exception, match="NCCL needs one GPU per process"):
        distributed.world_size(torch.cuda.device_count() + 1)


def test_one_gpu_torchrun_fit_with_nccl(tmp_path, digits, capfd):
    (x, y), (xv, yv), (xt, yt) = digits
    trainer = TorchTrainer("classification", "cnn", SMALL_CNN, 0, image_shape=(1, 8, 8),
                           checkpoint_dir=tmp_path / "ckpt")
    fitted = distributed.launch(trainer, x, y, xv, yv, 1)
    assert "world size 1 (1 process on this node, nccl, torchrun)" in capfd.readouterr().err
    assert "cuda" in fitted.device
    assert (fitted.predict(xt) == yt).mean() >= 0.9


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs two GPUs")
def test_two_gpus_give_the_model_of_one(digits):
    (x, y), (xv, yv), _ = digits
    hp = {**SMALL_CNN, "epochs": 3, "precision": "fp32", "batch_size": 66}
    one = TorchTrainer("classification", "cnn", hp, 0, image_shape=(1, 8, 8))
    one.fit(x, y, xv, yv)
    two = distributed.fit(TorchTrainer("classification", "cnn", hp, 0, image_shape=(1, 8, 8)),
                          x, y, xv, yv, DistributedParams(nproc_per_node=2))
    # cuDNN picks its kernels per process (benchmark mode): close, not bit-equal.
    np.testing.assert_allclose(two.history["val_loss"], one.history["val_loss"], rtol=1e-3)
