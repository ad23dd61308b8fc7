"""The Keras (TensorFlow) backend on small real data: scikit-learn's iris, digits (8x8
images) and diabetes sets. Importing TensorFlow takes a few seconds, once per session."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from sklearn.metrics import log_loss, r2_score  # noqa: E402

from components.errors import SlipwayError  # noqa: E402
from components.io import file_hash, read_json  # noqa: E402
from components.trainers import get_trainer, load_trainer  # noqa: E402
from components.trainers.keras import (  # noqa: E402
    BACKUP_DIR,
    MODEL_FILE,
    PROGRESS_FILE,
    KerasTrainer,
    dtype_policy,
)

# Keras 3.15 copies TensorFlow tensors with np.array(x, copy=False)-style calls that
# NumPy 2 warns about (on save and get_weights): Keras' business, not these tests'.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

SMALL_MLP = {"hidden": [32], "epochs": 10, "patience": 5, "batch_size": 16, "lr": 1e-2}
SMALL_CNN = {"channels": [16, 32], "hidden": [64, 32], "epochs": 8, "patience": 3,
             "batch_size": 64, "lr": 1e-2, "dropout": 0.0}


@pytest.fixture(scope="module")
def digits_cnn(digits):
    (x, y), (xv, yv), _ = digits
    trainer = KerasTrainer("classification", "cnn", SMALL_CNN, 0, image_shape=(1, 8, 8))
    trainer.fit(x, y, xv, yv)
    return trainer


def test_get_trainer_dispatches_to_keras():
    trainer = get_trainer("keras", "regression", "mlp", {"optimizer": "rmsprop"}, 0)
    assert isinstance(trainer, KerasTrainer)
    assert trainer.hyperparameters["optimizer"] == "rmsprop"


def test_mlp_classifies_iris(iris):
    (x, y), (xv, yv), (xt, yt) = iris
    trainer = KerasTrainer("classification", "mlp", {**SMALL_MLP, "epochs": 20}, 0)
    trainer.fit(x, y, xv, yv)
    assert trainer.device == "cpu"
    pred, proba = trainer.predict(xt), trainer.predict_proba(xt)
    assert pred.shape == (len(xt),) and pred.dtype == np.int64
    assert proba.shape == (len(xt), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert (pred == yt).mean() >= 0.9
    assert set(trainer.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len({len(v) for v in trainer.history.values()}) == 1


def test_tutorial_mlp_regression_on_diabetes(diabetes):
    (x, y), (xv, yv), (xt, yt) = diabetes
    # The TensorFlow regression tutorial's model: Dense(64)x2, RMSprop 0.001, no dropout.
    hp = {"hidden": [64, 64], "dropout": 0.0, "optimizer": "rmsprop", "lr": 1e-3,
          "weight_decay": 0.0, "epochs": 25, "patience": 10, "schedule": "none"}
    trainer = KerasTrainer("regression", "mlp", hp, 0)
    trainer.fit(x, y, xv, yv)
    pred = trainer.predict(xt)
    assert pred.shape == (len(xt),) and pred.dtype == np.float64
    assert trainer.predict_proba(xt) is None
    assert r2_score(yt, pred) > 0.3
    assert set(trainer.history) == {"loss", "mae", "val_loss", "val_mae"}
    assert trainer.history["val_mae"][-1] > 20  # in the target's units, not standardised


def test_cnn_classifies_digits(digits, digits_cnn):
    _, _, (xt, yt) = digits
    accuracy = float((digits_cnn.predict(xt) == yt).mean())
    print(f"keras cnn digits test accuracy {accuracy:.3f}")
    assert accuracy >= 0.9
    layers = {layer.name: layer for layer in digits_cnn.model.layers}
    assert layers["flatten"].output.shape[-1] == 32 * 2 * 2  # 8 -> 4 -> 2


def test_early_stopping_restores_the_best_epoch():
    rng = np.random.default_rng(0)
    x, xv = rng.normal(size=(200, 5)).astype(np.float32), rng.normal(size=(60, 5))
    y, yv = rng.integers(0, 2, 200), rng.integers(0, 2, 60)
    hp = {"hidden": [64], "epochs": 60, "patience": 2, "lr": 1e-2, "schedule": "none"}
    trainer = KerasTrainer("classification", "mlp", hp, 0)
    trainer.fit(x, y, xv.astype(np.float32), yv)
    val_loss = trainer.history["val_loss"]
    assert len(val_loss) < 60
    best = int(np.argmin(val_loss))
    assert len(val_loss) == best + 1 + 2
    restored = log_loss(yv, trainer.predict_proba(xv.astype(np.float32)), labels=[0, 1])
    assert restored == pytest.approx(val_loss[best], rel=1e-4)


def test_save_load_round_trip_and_hash_check(tmp_path, digits, digits_cnn):
    _, _, (xt, _) = digits
    meta = digits_cnn.save(tmp_path)
    assert meta["files"] == [MODEL_FILE]
    assert read_json(tmp_path / "trainer.json")["framework"] == "keras"
    digest = file_hash(tmp_path / MODEL_FILE, "sha256")
    loaded = load_trainer(tmp_path, {MODEL_FILE: digest})
    np.testing.assert_allclose(loaded.predict_proba(xt), digits_cnn.predict_proba(xt),
                               rtol=0, atol=1e-6)
    np.testing.assert_array_equal(loaded.predict(xt), digits_cnn.predict(xt))
    with pytest.raises(SlipwayError, match="does not match its recorded sha256"):
        load_trainer(tmp_path, {MODEL_FILE: "f" * 64})
    # Saving the same model again gives the same bytes (no save time in the file).
    digits_cnn.save(tmp_path / "again")
    assert file_hash(tmp_path / "again" / MODEL_FILE, "sha256") == digest


@pytest.mark.parametrize(
    ("precision", "capability", "policy", "warning"),
    [
        # The rule is loop.mixed_precision's (its cases: the torch device-plan table); these
        # check the capability threshold and the names Keras gets.
        ("auto", (9, 0), "mixed_bfloat16", None),   # H100, H200
        ("auto", (8, 0), "mixed_bfloat16", None),   # A100: native bf16 from 8.0
        ("auto", (7, 5), "mixed_float16", None),    # T4
        ("auto", None, "float32", None),            # CPU
        ("bf16", (7, 0), "mixed_bfloat16", "no native bf16"),
    ],
)
def test_dtype_policy(precision, capability, policy, warning):
    got, warnings = dtype_policy(precision, capability)
    assert got == policy
    assert (warning is None and warnings == []) or warning in warnings[0]


def test_cnn_trains_with_mixed_bfloat16_on_cpu(tmp_path, digits, capsys):
    """The GPU's mixed precision (hidden layers compute in bfloat16; the output layer, the
    loss and the weights in float32) run on the CPU, where TensorFlow computes bfloat16 too.
    The reopened model computes in float32."""
    (x, y), (xv, yv), (xt, yt) = digits
    trainer = KerasTrainer("classification", "cnn", {**SMALL_CNN, "precision": "bf16"}, 0,
                           image_shape=(1, 8, 8))
    trainer.fit(x, y, xv, yv)
    assert "keras: training on cpu: mixed_bfloat16" in capsys.readouterr().err
    layers = {layer.name: layer for layer in trainer.model.layers}
    assert layers["conv_1"].compute_dtype == "bfloat16"
    assert layers["dense_2"].compute_dtype == "bfloat16"
    assert layers["output"].compute_dtype == "float32"
    assert {w.dtype for w in trainer.model.weights} == {"float32"}
    assert (trainer.predict(xt) == yt).mean() >= 0.9
    trainer.save(tmp_path)
    loaded = load_trainer(tmp_path, {MODEL_FILE: file_hash(tmp_path / MODEL_FILE, "sha256")})
    assert {layer.compute_dtype for layer in loaded.model.layers} == {"float32"}
    assert (loaded.predict(xt) == trainer.predict(xt)).mean() >= 0.98


def test_fp16_with_loss_scaling_on_cpu(iris, capsys):
    (x, y), (xv, yv), (xt, yt) = iris
    trainer = KerasTrainer("classification", "mlp", {**SMALL_MLP, "epochs": 20,
                                                     "precision": "fp16"}, 0)
    trainer.fit(x, y, xv, yv)
    assert "keras: warning: fp16 on a CPU is slow on most CPUs" in capsys.readouterr().err
    assert trainer.policy == "mixed_float16"
    assert {layer.compute_dtype for layer in trainer.model.layers} >= {"float16"}
    assert (trainer.predict(xt) == yt).mean() >= 0.85


@pytest.mark.gpu
def test_cnn_trains_on_gpu_in_mixed_precision(digits):
    from components.trainers.keras import pick_device

    if pick_device()[1] is None:
        pytest.skip("TensorFlow sees no GPU: the lock installs tensorflow-cpu; install the "
                    "CUDA build (tensorflow[and-cuda]) to run this")
    (x, y), (xv, yv), (xt, yt) = digits
    trainer = KerasTrainer("classification", "cnn", SMALL_CNN, 0, image_shape=(1, 8, 8))
    trainer.fit(x, y, xv, yv)
    assert trainer.device.startswith("cuda")
    assert trainer.policy in ("mixed_bfloat16", "mixed_float16")
    assert (trainer.predict(xt) == yt).mean() >= 0.9


def test_safe_mode_refuses_code_in_the_file(tmp_path, digits_cnn):
    import keras

    inputs = keras.Input(shape=(2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    model.save(tmp_path / MODEL_FILE)
    meta = {**digits_cnn.describe(), "files": [MODEL_FILE]}
    (tmp_path / "trainer.json").write_text(json.dumps(meta))
    with pytest.raises(SlipwayError, match="not a loadable Keras model.*"):
        load_trainer(tmp_path)


def test_same_seed_same_model(tmp_path, iris):
    (x, y), (xv, yv), (xt, _) = iris
    hp = {**SMALL_MLP, "epochs": 3, "dropout": 0.2}
    digests = []
    for run in range(2):
        trainer = KerasTrainer("classification", "mlp", hp, 5)
        trainer.fit(x, y, xv, yv)
        trainer.save(tmp_path / str(run))
        digests.append(file_hash(tmp_path / str(run) / MODEL_FILE, "sha256"))
    assert digests[0] == digests[1]
    with zipfile.ZipFile(tmp_path / "0" / MODEL_FILE) as zf:
        assert "date_saved" not in json.loads(zf.read("metadata.json"))


class _Interrupted(RuntimeError):
    pass


def _interrupting(at_epoch: int):
    """A trainer whose fit dies when epoch ``at_epoch`` (0-based) begins, as if killed."""
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == at_epoch:
                raise _Interrupted(f"interrupted at epoch {epoch}")

    class Trainer(KerasTrainer):
        def _callbacks(self, *args, **kwargs):
            return [*super()._callbacks(*args, **kwargs), Interrupt()]

    return Trainer


def _epoch_lines(err: str) -> int:
    return sum(line.startswith("epoch ") for line in err.splitlines())


# fp16: the loss-scale optimizer's state goes through the backup as well.
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_interrupted_fit_resumes_from_its_backup(tmp_path, capsys, precision):
    rng = np.random.default_rng(0)
    x, xv = rng.normal(size=(200, 5)).astype(np.float32), rng.normal(size=(60, 5))
    y, yv = rng.integers(0, 2, 200), rng.integers(0, 2, 60)  # noise: the best epoch is early
    xv = xv.astype(np.float32)
    hp = {"hidden": [64], "epochs": 60, "patience": 5, "lr": 1e-2, "schedule": "plateau",
          "precision": precision}
    with pytest.raises(_Interrupted):
        _interrupting(2)("classification", "mlp", hp, 0, checkpoint_dir=tmp_path).fit(
            x, y, xv, yv)
    assert (tmp_path / BACKUP_DIR / "training_metadata.json").is_file()
    assert (tmp_path / PROGRESS_FILE).is_file()
    assert _epoch_lines(capsys.readouterr().err) == 2

    resumed = KerasTrainer("classification", "mlp", hp, 0, checkpoint_dir=tmp_path)
    resumed.fit(x, y, xv, yv)
    err = capsys.readouterr().err
    assert "resuming" in err and "after epoch 2/60" in err
    val_loss = resumed.history["val_loss"]
    assert _epoch_lines(err) == len(val_loss) - 2  # only the remaining epochs ran
    assert all(len(v) == len(val_loss) for v in resumed.history.values())  # whole history
    # The best epoch came before the kill: its weights and the early-stopping count survived.
    best = int(np.argmin(val_loss))
    assert best < 2 and len(val_loss) == best + 1 + 5
    restored = log_loss(yv, resumed.predict_proba(xv), labels=[0, 1])
    assert restored == pytest.approx(val_loss[best], rel=1e-4)
    assert not (tmp_path / BACKUP_DIR).exists()  # a finished fit leaves no backup
    assert not (tmp_path / PROGRESS_FILE).exists()


def test_backup_of_another_fit_is_dropped(tmp_path, iris, capsys):
    (x, y), (xv, yv), _ = iris
    hp = {**SMALL_MLP, "epochs": 4}
    with pytest.raises(_Interrupted):
        _interrupting(2)("classification", "mlp", hp, 0, checkpoint_dir=tmp_path).fit(
            x, y, xv, yv)
    other = KerasTrainer("classification", "mlp", hp, 1, checkpoint_dir=tmp_path)
    other.fit(x, y, xv, yv)
    assert "from a different fit" in capsys.readouterr().err
    assert all(len(v) == 4 for v in other.history.values())


@pytest.mark.slow
def test_cross_validate(iris):
    (x, y), _, _ = iris
    trainer = KerasTrainer("classification", "mlp", {**SMALL_MLP, "epochs": 10}, 0)
    cv = trainer.cross_validate(x, y, folds=3)
    assert cv["metric"] == "accuracy" and len(cv["folds"]) == 3
    assert cv["mean"] > 0.8


def test_settings_and_image_errors(digits):
    with pytest.raises(SlipwayError, match="(?s)unknown estimator 'cnnn'.*did you mean 'cnn'"):
        KerasTrainer("classification", "cnnn", {}, 0)
    with pytest.raises(SlipwayError, match="(?s)unknown schedule 'cosin'.*did you mean 'cosine'"):
        KerasTrainer("classification", "mlp", {"schedule": "cosin"}, 0)
    with pytest.raises(SlipwayError, match="not an image set"):
        KerasTrainer("classification", "cnn", {}, 0)
    (x, y), _, _ = digits
    trainer = KerasTrainer("classification", "cnn", SMALL_CNN, 0, image_shape=(1, 16, 16))
    with pytest.raises(SlipwayError, match=r"wrong image shape \[1, 16, 16\].*256 pixels.*64"):
        trainer.fit(x, y)


def test_unfitted_trainer_cannot_save(tmp_path):
    with pytest.raises(SlipwayError, match="not been fitted"):
        KerasTrainer("regression", "mlp", {}, 0).save(Path(tmp_path))
