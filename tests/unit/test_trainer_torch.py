"""The torch backend on small real data: scikit-learn's iris, digits (8x8 images) and
diabetes sets. CPU only, except the one ``gpu`` test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.metrics import log_loss, r2_score  # noqa: E402

from components.errors import SlipwayError  # noqa: E402
from components.io import file_hash, read_json  # noqa: E402
from components.trainers import get_trainer, load_trainer  # noqa: E402
from components.trainers.loop import epoch_line, net_settings  # noqa: E402
from components.trainers.torch import (  # noqa: E402
    CHECKPOINT_FILE,
    MODEL_FILE,
    TorchTrainer,
    device_plan,
)

REPO = Path(__file__).resolve().parents[2]
SMALL_MLP = {"hidden": [32], "epochs": 20, "patience": 5, "batch_size": 16, "lr": 1e-2}
SMALL_CNN = {"channels": [16, 32], "hidden": [64, 32], "epochs": 8, "patience": 3,
             "batch_size": 64, "lr": 1e-2, "dropout": 0.0}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Train these tiny models on one thread: splitting a 64x16x8x8 convolution over cores
    costs more in synchronisation than it saves, and far more when other processes share
    the cores (CI runners, parallel test workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits_cnn(digits):
    (x, y), (xv, yv), _ = digits
    trainer = TorchTrainer("classification", "cnn", SMALL_CNN, 0, image_shape=(1, 8, 8))
    trainer.fit(x, y, xv, yv)
    return trainer


def _weights(trainer):
    return {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------ fitting

def test_get_trainer_dispatches_to_torch():
    trainer = get_trainer("torch", "classification", "mlp", {}, 0)
    assert isinstance(trainer, TorchTrainer)
    assert trainer.framework == "torch"
    assert trainer.hyperparameters["optimizer"] == "adamw"  # defaults recorded as used


def test_mlp_classifies_iris(iris):
    (x, y), (xv, yv), (xt, yt) = iris
    trainer = TorchTrainer("classification", "mlp", SMALL_MLP, 0)
    trainer.fit(x, y, xv, yv)
    assert trainer.device == "cpu"
    pred, proba = trainer.predict(xt), trainer.predict_proba(xt)
    assert pred.shape == (len(xt),) and pred.dtype == np.int64
    assert proba.shape == (len(xt), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(axis=1), pred)
    assert (pred == yt).mean() >= 0.9
    assert set(trainer.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len({len(v) for v in trainer.history.values()}) == 1


def test_mlp_regression_on_diabetes(diabetes):
    (x, y), (xv, yv), (xt, yt) = diabetes
    trainer = TorchTrainer("regression", "mlp", {**SMALL_MLP, "lr": 3e-3, "epochs": 40}, 0)
    trainer.fit(x, y, xv, yv)
    pred = trainer.predict(xt)
    assert pred.shape == (len(xt),) and pred.dtype == np.float64
    assert trainer.predict_proba(xt) is None
    assert r2_score(yt, pred) > 0.3
    assert set(trainer.history) == {"loss", "mae", "val_loss", "val_mae"}
    # Reported in the target's units (diabetes targets spread over ~25-346).
    assert trainer.history["val_mae"][-1] > 20


def test_mlp_without_validation_runs_every_epoch(iris):
    (x, y), _, _ = iris
    trainer = TorchTrainer("classification", "mlp", {**SMALL_MLP, "epochs": 4}, 0)
    trainer.fit(x, y)
    assert set(trainer.history) == {"loss", "accuracy"}
    assert len(trainer.history["loss"]) == 4


def test_cnn_classifies_digits(digits, digits_cnn):
    _, _, (xt, yt) = digits
    accuracy = float((digits_cnn.predict(xt) == yt).mean())
    print(f"torch cnn digits test accuracy {accuracy:.3f}")
    assert accuracy >= 0.9
    assert digits_cnn.config["image_shape"] == [1, 8, 8]


def test_cnn_adapts_to_32x32_colour_images():
    rng = np.random.default_rng(0)
    x = rng.random((40, 3 * 32 * 32), dtype=np.float32)
    y = np.arange(40) % 2
    hp = {**SMALL_CNN, "channels": [4, 8], "hidden": [8, 8], "epochs": 1}
    trainer = TorchTrainer("classification", "cnn", hp, 0, image_shape=(3, 32, 32))
    trainer.fit(x, y)
    assert trainer.predict_proba(x).shape == (40, 2)
    assert trainer.model.out.in_features == 8
    assert trainer.model.body[1][0].in_features == 8 * 8 * 8  # 32 -> 16 -> 8


def test_early_stopping_keeps_the_best_epoch():
    rng = np.random.default_rng(0)
    x, xv = rng.normal(size=(200, 5)).astype(np.float32), rng.normal(size=(60, 5))
    y, yv = rng.integers(0, 2, 200), rng.integers(0, 2, 60)  # noise: val loss soon rises
    hp = {"hidden": [64], "epochs": 60, "patience": 2, "lr": 1e-2, "schedule": "none"}
    trainer = TorchTrainer("classification", "mlp", hp, 0)
    trainer.fit(x, y, xv.astype(np.float32), yv)
    val_loss = trainer.history["val_loss"]
    assert len(val_loss) < 60
    best = int(np.argmin(val_loss))
    assert len(val_loss) == best + 1 + 2  # stopped after `patience` epochs without a new best
    restored = log_loss(yv, trainer.predict_proba(xv.astype(np.float32)), labels=[0, 1])
    assert restored == pytest.approx(val_loss[best], rel=1e-4)


@pytest.mark.parametrize(("optimizer", "schedule"), [
    ("adamw", "cosine"), ("adam", "plateau"), ("rmsprop", "none"), ("sgd", "plateau"),
])
def test_optimizers_schedules_and_finished_checkpoint(tmp_path, iris, optimizer, schedule):
    (x, y), (xv, yv), (xt, yt) = iris
    hp = {**SMALL_MLP, "epochs": 3, "optimizer": optimizer, "schedule": schedule,
          "lr": 1e-2 if optimizer != "sgd" else 5e-2}
    first = TorchTrainer("classification", "mlp", hp, 0, checkpoint_dir=tmp_path)
    first.fit(x, y, xv, yv)
    meta = _checkpoint_meta(tmp_path / CHECKPOINT_FILE)
    assert meta["progress"]["epoch"] == 3
    # A rerun of a finished fit trains nothing and restores the same model.
    again = TorchTrainer("classification", "mlp", hp, 0, checkpoint_dir=tmp_path)
    again.fit(x, y, xv, yv)
    _assert_same_weights(_weights(first), _weights(again))
    assert again.history == first.history
    if schedule == "cosine":
        assert first.history["loss"][-1] < first.history["loss"][0]


def test_loader_workers_give_the_same_fit(iris):
    # The CUDA default (2 persistent workers) exercised on CPU: workers only slice batches;
    # the shuffle stays in this process, so the fit does not change.
    (x, y), (xv, yv), _ = iris
    fits = []
    for workers in (0, 2):
        trainer = TorchTrainer("classification", "mlp",
                               {**SMALL_MLP, "epochs": 2, "num_workers": workers}, 0)
        trainer.fit(x, y, xv, yv)
        fits.append(_weights(trainer))
    _assert_same_weights(*fits)


def test_cross_validate_uses_fresh_copies(iris):
    (x, y), _, _ = iris
    trainer = TorchTrainer("classification", "mlp", {**SMALL_MLP, "epochs": 10}, 0)
    cv = trainer.cross_validate(x, y, folds=3)
    assert cv["metric"] == "accuracy" and len(cv["folds"]) == 3
    assert cv["mean"] > 0.8
    assert trainer.model is None  # the folds fitted clones


# ------------------------------------------------------------- device plans, mixed precision

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")
BF16, FP16 = torch.bfloat16, torch.float16


GPU_PLAN = "bf16 autocast, channels-last, pinned memory, 2 loader workers"  # an H100's cnn


@pytest.mark.parametrize(
    ("device", "estimator", "hp", "native_bf16", "plan", "warning"),
    [
        (CUDA, "cnn", {}, True, GPU_PLAN, None),                        # A100, H100, H200
        (CUDA, "cnn", {}, False, "fp16 autocast with loss scaling, channels-last, pinned "
         "memory, 2 loader workers", None),                             # T4, V100
        (CUDA, "mlp", {}, True, "bf16 autocast, pinned memory, 2 loader workers", None),
        (CUDA, "cnn", {"precision": "fp32", "channels_last": False, "num_workers": 0}, True,
         "fp32, pinned memory", None),
        (CUDA, "cnn", {"precision": "bf16"}, False, GPU_PLAN, "no native bf16"),
        (CUDA, "mlp", {"precision": "fp16"}, True,
         "fp16 autocast with loss scaling, pinned memory, 2 loader workers", None),
        (CPU, "cnn", {}, False, "fp32", None),
        (CPU, "cnn", {"precision": "bf16", "channels_last": True, "num_workers": 2}, False,
         "bf16 autocast, channels-last, 2 loader workers", None),
        (CPU, "mlp", {"precision": "fp16"}, False, "fp16 autocast with loss scaling",
         "slow on most CPUs"),
    ],
)
def test_device_plan(device, estimator, hp, native_bf16, plan, warning):
    """The GPU side of the plan is computed for a ``cuda`` device object; no GPU is needed
    to build one. What the plan then does on a real GPU is the ``gpu`` tests' part. The
    description (a fit's first line) names every choice the plan made."""
    settings = net_settings("torch", estimator, hp)
    got, warnings = device_plan(device, estimator, settings, native_bf16)
    assert got.describe() == plan
    assert got.amp_dtype == {"bf16": BF16, "fp16": FP16, "fp32": None}[plan[:4]]
    assert got.loss_scaling == (got.amp_dtype == FP16)
    if warning:
        assert len(warnings) == 1 and warning in warnings[0]
    else:
        assert warnings == []


def test_device_plan_is_printed_with_the_device(iris, capsys):
    (x, y), _, _ = iris
    hp = {**SMALL_MLP, "epochs": 1, "precision": "bf16", "num_workers": 1}
    TorchTrainer("classification", "mlp", hp, 0).fit(x, y)
    assert "torch: training on cpu (1 threads): bf16 autocast, 1 loader worker" \
        in capsys.readouterr().err


def test_cnn_trains_in_bf16_channels_last_with_workers_on_cpu(tmp_path, digits, digits_cnn,
                                                             capsys):
    """The GPU code path (bf16 autocast, channels-last weights and batches, loader workers)
    run on the CPU, where torch runs bf16 autocast too: only pinned memory and the CUDA
    kernels are left to the ``gpu`` tests."""
    (x, y), (xv, yv), (xt, yt) = digits
    hp = {**SMALL_CNN, "precision": "bf16", "channels_last": True, "num_workers": 2}
    trainer = TorchTrainer("classification", "cnn", hp, 0, image_shape=(1, 8, 8))
    trainer.fit(x, y, xv, yv)
    assert "bf16 autocast, channels-last, 2 loader workers" in capsys.readouterr().err
    conv = trainer.model.body[0][0].weight
    assert conv.dtype == torch.float32  # autocast computes in bf16; the weights stay fp32
    assert conv.is_contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=BF16):
        hidden = trainer.model.features(torch.from_numpy(xt[:4]))
        logits = trainer.model(torch.from_numpy(xt[:4]))
    assert hidden.dtype == BF16 and logits.dtype == torch.float32  # the head stays fp32
    accuracy = (trainer.predict(xt) == yt).mean()
    assert accuracy >= 0.9
    assert trainer.hyperparameters["precision"] == "bf16"

    # Saved contiguous, reopened on CPU in float32: the predictions barely move.
    trainer.save(tmp_path)
    loaded = load_trainer(tmp_path, {MODEL_FILE: file_hash(tmp_path / MODEL_FILE, "sha256")})
    assert (loaded.predict(xt) == trainer.predict(xt)).mean() >= 0.98
    # Reproducible on CPU under autocast too: a second fit gives the same weights.
    again = TorchTrainer("classification", "cnn", hp, 0, image_shape=(1, 8, 8))
    again.fit(x, y, xv, yv)
    _assert_same_weights(_weights(trainer), _weights(again))
    # ... and not the float32 fit's.
    assert not torch.equal(conv, digits_cnn.model.body[0][0].weight)


def test_fp16_with_loss_scaling_on_cpu(tmp_path, iris, capsys):
    """The T4's arithmetic (fp16 autocast, gradients through the loss scaler), asked for on
    the CPU: it warns that it is slow there and trains; the scaler's state is checkpointed."""
    (x, y), (xv, yv), (xt, yt) = iris
    trainer = TorchTrainer("classification", "mlp", {**SMALL_MLP, "precision": "fp16"}, 0,
                           checkpoint_dir=tmp_path)
    trainer.fit(x, y, xv, yv)
    err = capsys.readouterr().err
    assert "torch: warning: fp16 on a CPU is slow on most CPUs" in err
    assert "fp16 autocast with loss scaling" in err
    assert trainer._plan.loss_scaling
    assert (trainer.predict(xt) == yt).mean() >= 0.85
    scaler = _checkpoint_meta(tmp_path / CHECKPOINT_FILE)["scaler"]
    assert scaler["scale"] > 1 and scaler["_growth_tracker"] > 0


# ------------------------------------------------------------------------ saving, loading

def test_save_and_load_round_trip(tmp_path, digits, digits_cnn):
    _, _, (xt, _) = digits
    meta = digits_cnn.save(tmp_path)
    assert meta["files"] == [MODEL_FILE]
    saved = read_json(tmp_path / "trainer.json")
    assert saved["framework"] == "torch" and saved["device"] == "cpu"
    assert saved["architecture"]["n_features"] == 64
    assert saved["architecture"]["channels"] == [16, 32]
    loaded = load_trainer(tmp_path, {MODEL_FILE: file_hash(tmp_path / MODEL_FILE, "sha256")})
    np.testing.assert_array_equal(loaded.predict_proba(xt), digits_cnn.predict_proba(xt))
    np.testing.assert_array_equal(loaded.predict(xt), digits_cnn.predict(xt))


def test_load_refuses_a_wrong_hash(tmp_path, digits_cnn):
    digits_cnn.save(tmp_path)
    with pytest.raises(SlipwayError, match="does not match its recorded sha256"):
        load_trainer(tmp_path, {MODEL_FILE: "0" * 64})


def test_load_refuses_weights_that_do_not_fit(tmp_path, digits_cnn):
    digits_cnn.save(tmp_path)
    meta = read_json(tmp_path / "trainer.json")
    meta["architecture"]["hidden"] = [65, 32]
    (tmp_path / "trainer.json").write_text(json.dumps(meta))
    with pytest.raises(SlipwayError, match="does not hold the weights"):
        load_trainer(tmp_path)


def test_same_seed_saves_the_same_bytes(tmp_path, digits):
    (x, y), (xv, yv), _ = digits
    hp = {**SMALL_CNN, "channels": [4, 8], "hidden": [16, 16], "epochs": 2, "dropout": 0.2}
    digests = []
    for run, seed in enumerate((3, 3, 4)):
        trainer = TorchTrainer("classification", "cnn", hp, seed, image_shape=(1, 8, 8))
        trainer.fit(x[:400], y[:400], xv, yv)
        trainer.save(tmp_path / str(run))
        digests.append(file_hash(tmp_path / str(run) / MODEL_FILE, "sha256"))
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


# ---------------------------------------------------------------------------- checkpoints

def _checkpoint_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["slipway"])


KILL_HP = {"channels": [8, 16], "hidden": [32, 16], "epochs": 6, "patience": 6,
           "batch_size": 32, "lr": 5e-3, "dropout": 0.2}

CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from sklearn.datasets import load_digits
    import torch
    import components.trainers.torch as backend

    torch.set_num_threads({threads})  # as the parent: results may depend on the thread count

    # Slow the run down after each checkpoint, so the parent can kill it mid-fit.
    write = backend._write_checkpoint
    def slow_write(*args, **kwargs):
        write(*args, **kwargs)
        time.sleep(1.0)
    backend._write_checkpoint = slow_write

    data = load_digits()
    x, y = (data.data / 16).astype(np.float32), data.target
    trainer = backend.TorchTrainer("classification", "cnn", {hp!r}, 7, image_shape=(1, 8, 8),
                                   checkpoint_dir=sys.argv[1])
    trainer.fit(x[:600], y[:600], x[600:800], y[600:800])
""")


@pytest.mark.slow
@pytest.mark.parametrize("arithmetic", [
    {},
    # A T4's GPU plan on the CPU: fp16 with loss scaling (the scaler's state is resumed
    # too), channels-last, loader workers.
    {"precision": "fp16", "channels_last": True, "num_workers": 2},
], ids=["fp32", "fp16-channels-last-workers"])
def test_killed_fit_resumes_to_the_same_weights(tmp_path, arithmetic):
    hp = {**KILL_HP, **arithmetic}
    ckpt_dir = tmp_path / "killed"
    ckpt = ckpt_dir / CHECKPOINT_FILE
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(hp=hp, threads=torch.get_num_threads()))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, str(script), str(ckpt_dir)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if ckpt.is_file() and _checkpoint_meta(ckpt)["progress"]["epoch"] >= 2:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    killed_at = _checkpoint_meta(ckpt)["progress"]["epoch"]
    assert 2 <= killed_at < KILL_HP["epochs"]
    assert (_checkpoint_meta(ckpt)["scaler"] is not None) == ("precision" in arithmetic)

    data = load_digits()
    x, y = (data.data / 16).astype(np.float32), data.target
    args = (x[:600], y[:600], x[600:800], y[600:800])
    resumed = TorchTrainer("classification", "cnn", hp, 7, image_shape=(1, 8, 8),
                           checkpoint_dir=ckpt_dir)
    resumed.fit(*args)
    whole = TorchTrainer("classification", "cnn", hp, 7, image_shape=(1, 8, 8),
                         checkpoint_dir=tmp_path / "whole")
    whole.fit(*args)
    assert len(resumed.history["loss"]) == KILL_HP["epochs"]
    assert resumed.history == whole.history
    _assert_same_weights(_weights(resumed), _weights(whole))
    np.testing.assert_array_equal(resumed.predict_proba(x[800:]), whole.predict_proba(x[800:]))


def test_checkpoint_of_another_fit_is_ignored(tmp_path, iris, capsys):
    (x, y), (xv, yv), _ = iris
    hp = {**SMALL_MLP, "epochs": 2}
    TorchTrainer("classification", "mlp", hp, 0, checkpoint_dir=tmp_path).fit(x, y, xv, yv)
    other = TorchTrainer("classification", "mlp", hp, 1, checkpoint_dir=tmp_path)
    other.fit(x, y, xv, yv)
    assert "from a different fit" in capsys.readouterr().err
    fresh = TorchTrainer("classification", "mlp", hp, 1)
    fresh.fit(x, y, xv, yv)
    _assert_same_weights(_weights(other), _weights(fresh))


def test_checkpoint_key_follows_the_arithmetic_not_the_workers(tmp_path, iris, capsys):
    """Loader workers do not change a fit, so its checkpoint still resumes; another
    precision does, so the checkpoint is not restored into it."""
    (x, y), (xv, yv), _ = iris
    hp = {**SMALL_MLP, "epochs": 2}
    TorchTrainer("classification", "mlp", hp, 0, checkpoint_dir=tmp_path).fit(x, y, xv, yv)
    capsys.readouterr()
    TorchTrainer("classification", "mlp", {**hp, "num_workers": 1}, 0,
                 checkpoint_dir=tmp_path).fit(x, y, xv, yv)
    assert "resuming from" in capsys.readouterr().err
    TorchTrainer("classification", "mlp", {**hp, "precision": "bf16"}, 0,
                 checkpoint_dir=tmp_path).fit(x, y, xv, yv)
    assert "from a different fit" in capsys.readouterr().err


# ------------------------------------------------------------------------- bad settings

def test_unknown_estimator_suggests_a_name():
    with pytest.raises(SlipwayError, match="unknown estimator 'mpl'") as err:
        TorchTrainer("classification", "mpl", {}, 0)
    assert "did you mean 'mlp'" in str(err.value)


def test_unknown_hyperparameter_and_bad_values():
    with pytest.raises(SlipwayError, match="no hyperparameter.*epoch") as err:
        TorchTrainer("classification", "mlp", {"epoch": 3}, 0)
    assert "did you mean 'epochs'" in str(err.value)
    with pytest.raises(SlipwayError, match="unknown optimizer 'adamx'"):
        TorchTrainer("classification", "mlp", {"optimizer": "adamx"}, 0)
    with pytest.raises(SlipwayError, match="epochs must be a whole number"):
        TorchTrainer("classification", "mlp", {"epochs": 2.5}, 0)
    with pytest.raises(SlipwayError, match="hidden must be a list of 2"):
        TorchTrainer("classification", "cnn", {"hidden": [8]}, 0, image_shape=(1, 8, 8))
    with pytest.raises(SlipwayError, match="unknown precision 'bfloat16'") as err:
        TorchTrainer("classification", "mlp", {"precision": "bfloat16"}, 0)
    assert "valid: auto, bf16, fp16, fp32" in str(err.value)
    with pytest.raises(SlipwayError, match="channels_last must be true, false or null"):
        TorchTrainer("classification", "cnn", {"channels_last": "yes"}, 0, image_shape=(1, 8, 8))
    with pytest.raises(SlipwayError, match="no hyperparameter.*channels_last"):
        TorchTrainer("classification", "mlp", {"channels_last": True}, 0)  # no images
    # Settings reach the trainer as params.yaml wrote them: 3.0 is not a whole number.
    with pytest.raises(SlipwayError, match="epochs must be a whole number"):
        TorchTrainer("classification", "mlp", {"epochs": 3.0}, 0)


def test_cnn_needs_an_image_set():
    with pytest.raises(SlipwayError, match="not an image set"):
        TorchTrainer("classification", "cnn", {}, 0)


def test_wrong_image_shape_names_both_sizes(digits):
    (x, y), _, _ = digits
    trainer = TorchTrainer("classification", "cnn", SMALL_CNN, 0, image_shape=(3, 8, 8))
    with pytest.raises(SlipwayError, match=r"wrong image shape \[3, 8, 8\].*192 pixels.*64 "
                                           "feature columns"):
        trainer.fit(x, y)
    with pytest.raises(SlipwayError, match="too small"):
        TorchTrainer("classification", "cnn", {}, 0, image_shape=(1, 2, 32))


def test_divergence_is_reported(iris):
    (x, y), _, _ = iris
    hp = {"hidden": [8], "epochs": 3, "optimizer": "sgd", "lr": 1e20, "schedule": "none"}
    with pytest.raises(SlipwayError, match="diverged: training loss is nan in epoch 1"):
        TorchTrainer("classification", "mlp", hp, 0).fit(x * 1e10, y)


def test_predict_checks_the_feature_count(iris):
    (x, y), _, _ = iris
    trainer = TorchTrainer("classification", "mlp", {**SMALL_MLP, "epochs": 1}, 0)
    trainer.fit(x, y)
    with pytest.raises(SlipwayError, match="expected rows of 4 features"):
        trainer.predict(x[:, :3])
    assert trainer.predict(x[:0]).shape == (0,)


def test_epoch_line_format():
    logs = {"loss": 0.4123, "accuracy": 0.8, "val_loss": 0.388, "val_accuracy": 0.912}
    assert epoch_line(3, 30, logs, 1.9e-3) == \
        "epoch 3/30 loss 0.412 val_loss 0.388 val_acc 0.912 lr 1.9e-3"
    assert epoch_line(1, 5, {"loss": 12.5, "mae": 2.25}, 0.01) == \
        "epoch 1/5 loss 12.500 mae 2.250 lr 1.0e-2"


# ------------------------------------------------------------------------------------ GPU

@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_cnn_trains_on_cuda_with_mixed_precision_and_channels_last(tmp_path, digits, precision,
                                                                   capsys):
    """auto: bf16 autocast on cards with native bf16 (Ampere on), else fp16; fp16: autocast
    with loss scaling. Checkpointing the GPU state (scaler, CUDA RNG) and resuming are part
    of it."""
    (x, y), (xv, yv), (xt, yt) = digits
    hp = {**SMALL_CNN, "precision": precision}
    trainer = TorchTrainer("classification", "cnn", hp, 0, image_shape=(1, 8, 8),
                           checkpoint_dir=tmp_path / "ckpt")
    trainer.fit(x, y, xv, yv)
    assert trainer.device.startswith("cuda")
    plan = trainer._plan
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    want = BF16 if precision == "auto" and native else FP16
    assert plan.amp_dtype == want and plan.pin_memory and plan.workers == 2
    assert plan.describe() in capsys.readouterr().err
    assert next(trainer.model.parameters()).is_cuda
    conv = trainer.model.body[0][0].weight
    assert conv.dtype == torch.float32
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert (trainer.predict(xt) == yt).mean() >= 0.9
    meta = _checkpoint_meta(tmp_path / "ckpt" / CHECKPOINT_FILE)
    assert (meta["scaler"] is not None) == (want == FP16)

    trainer.save(tmp_path / "model")  # contiguous CPU tensors, reopened on CPU
    loaded = load_trainer(tmp_path / "model")
    assert (loaded.predict(xt) == trainer.predict(xt)).mean() >= 0.98
    resumed = TorchTrainer("classification", "cnn", hp, 0, image_shape=(1, 8, 8),
                           checkpoint_dir=tmp_path / "ckpt")
    resumed.fit(x, y, xv, yv)  # the finished checkpoint: nothing left to train
    assert "resuming" in capsys.readouterr().err
    _assert_same_weights(_weights(trainer), _weights(resumed))
