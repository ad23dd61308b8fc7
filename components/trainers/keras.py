"""Keras 3 backend (TensorFlow): the same ``mlp`` and ``cnn`` as the torch backend.

The same hyperparameters build the same networks: an MLP of Dense+ReLU(+Dropout) layers,
or Conv2D-MaxPool-Conv2D-MaxPool-Flatten and three Dense layers, whose flat (channel, row,
column) pixel rows are reshaped to channels-last images inside the model. The network is
trained on logits (classification) or standardised targets (regression); the saved model
adds a Softmax, or a Rescaling back to the target's units, so it predicts what the data
mean. Seeds are fixed (and TensorFlow ops made deterministic on CPU); validation loss
drives early stopping, keeping the best epoch's weights. With a ``checkpoint_dir`` every
epoch is backed up (``BackupAndRestore``: weights, optimizer state, epoch) together with the
history and the early-stopping and learning-rate counters, so a killed fit resumes where it
stopped. Models are saved as ``model.keras`` and loaded with ``safe_mode=True``.

Keras and TensorFlow are imported on first use, with ``KERAS_BACKEND=tensorflow``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from components import safe_load
from components.errors import SlipwayError
from components.io import write_json
from components.trainers.base import META_FILE, Trainer
from components.trainers.loop import (
    NetTrainer,
    announce,
    check_image_shape,
    epoch_line,
    metric_name,
    mixed_precision,
    n_outputs,
    say,
    target_scale,
)

MODEL_FILE = "model.keras"
BACKUP_DIR = "backup"  # BackupAndRestore's folder inside checkpoint_dir
PROGRESS_FILE = "progress.npz"  # history, callback counters and best weights per epoch
EVAL_BATCH = 1024


def _keras():
    """Import keras on the TensorFlow backend (the environment is set before the import)."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no C++ info lines on stderr
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SlipwayError(
            f"keras was already imported with the {keras.backend.backend()} backend",
            "unset KERAS_BACKEND, or import keras only through Slipway's trainer",
        )
    return keras


def pick_device() -> tuple[str, tuple[int, int] | None]:
    """``("cuda:0 (<card>)", compute capability)`` when TensorFlow sees a GPU (it then places
    ops there), else ``("cpu", None)``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "cpu", None
    details = tf.config.experimental.get_device_details(gpus[0])
    return (f"cuda:0 ({details.get('device_name', 'GPU')})",
            tuple(details.get("compute_capability") or (0, 0)))


def dtype_policy(precision: str, capability: tuple[int, int] | None) -> tuple[str, list[str]]:
    """The Keras dtype policy of the hidden layers for a ``precision`` setting (the rule is
    :func:`~components.trainers.loop.mixed_precision`), and its warnings.

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        capability: the GPU's CUDA compute capability, or None on CPU. bf16 is native from
            8.0 (Ampere) on.
    """
    gpu = capability is not None
    kind, warnings = mixed_precision(precision, gpu, gpu and capability >= (8, 0))
    return {None: "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[kind], warnings


class KerasTrainer(NetTrainer):
    """``mlp`` and ``cnn`` in Keras; hyperparameters: see :mod:`components.trainers.loop`.

    ``num_workers`` and ``channels_last`` are accepted (the settings are shared with torch)
    but unused: arrays in memory are fed to Keras directly, and Keras convolutions are
    channels-last already. ``precision`` sets the hidden layers' dtype policy (mixed
    bfloat16 or float16); the output layer, the loss and the weights stay float32.
    """

    framework = "keras"

    def __init__(
        self, task: str, estimator: str, hyperparameters: dict[str, Any], seed: int,
        **options: Any,
    ) -> None:
        super().__init__(task, estimator, hyperparameters, seed, **options)
        self.model = None  # the saved model: probabilities, or values in the target's units
        self.policy = "float32"  # the hidden layers' dtype policy (fit chooses it)

    # ---------------------------------------------------------------------- the network

    def _build(self, keras, n_features: int, outputs: int, mean: float, std: float):
        """``(train_model, model)``: the first ends in logits or standardised values and is
        the one fitted; the second shares its layers and adds Softmax or Rescaling."""
        s, layers, dtype = self.settings, keras.layers, self.policy
        # Explicit names and seeds: the saved config and the weights do not depend on what
        # else this process built before.
        inputs = keras.Input(shape=(n_features,), name="features")
        h = inputs
        if self.estimator == "cnn":
            c, height, width = self.image_shape
            h = layers.Reshape((c, height, width), name="image")(h)
            h = layers.Permute((2, 3, 1), name="channels_last")(h)
            for i, filters in enumerate(s.channels, start=1):
                h = layers.Conv2D(filters, 3, padding="same", activation="relu",
                                  name=f"conv_{i}", dtype=dtype)(h)
                h = layers.MaxPooling2D(2, name=f"pool_{i}", dtype=dtype)(h)
            h = layers.Flatten(name="flatten")(h)
        for i, units in enumerate(s.hidden, start=1):
            h = layers.Dense(units, activation="relu", name=f"dense_{i}", dtype=dtype)(h)
            if s.dropout > 0:
                h = layers.Dropout(s.dropout, seed=self.seed + i, name=f"dropout_{i}",
                                   dtype=dtype)(h)
        # Logits and regression values in float32, as the torch backend keeps them.
        z = layers.Dense(outputs, name="output", dtype="float32")(h)
        train_model = keras.Model(inputs, z, name=f"{self.estimator}_train")
        if self.task == "classification":
            out = layers.Softmax(name="probabilities")(z)
        else:
            out = layers.Rescaling(scale=std, offset=mean, name="target_units")(z)
        return train_model, keras.Model(inputs, out, name=self.estimator)

    def _compile(self, keras, train_model, steps_per_epoch: int) -> None:
        s = self.settings
        lr: Any = s.lr
        if s.schedule == "cosine":  # per step, down to 0 after the last epoch's last step
            lr = keras.optimizers.schedules.CosineDecay(s.lr, decay_steps=s.epochs
                                                        * steps_per_epoch)
        decay = s.weight_decay or None  # Keras decouples weight decay in every optimizer
        optimizer = {
            "adamw": lambda: keras.optimizers.AdamW(lr, weight_decay=s.weight_decay),
            "adam": lambda: keras.optimizers.Adam(lr, weight_decay=decay),
            "rmsprop": lambda: keras.optimizers.RMSprop(lr, weight_decay=decay),
            "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9, weight_decay=decay),
        }[s.optimizer]()
        if self.policy == "mixed_float16":  # float16 gradients underflow without it
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        if self.task == "classification":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        else:
            loss = keras.losses.MeanSquaredError()
        train_model.compile(optimizer=optimizer, loss=loss, metrics=[metric_name(self.task)])

    def _callbacks(self, keras, has_val: bool, key: str, std: float) -> list:
        """Early stopping, the plateau schedule, progress (history, line, resumable state)
        and the backup, in the order Keras must call them."""
        s, monitor = self.settings, "val_loss" if has_val else "loss"
        stateful = []
        if has_val:
            stateful.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=max(1, s.patience), restore_best_weights=True))
        if s.schedule == "plateau":  # as in torch: halve after half the patience
            stateful.append(keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, factor=0.5, patience=max(1, s.patience // 2), verbose=0))
        backup = None
        if self.checkpoint_dir is not None:
            backup = keras.callbacks.BackupAndRestore(
                str(self.checkpoint_dir / BACKUP_DIR), double_checkpoint=True)
        progress = _progress_callback(keras)(self, stateful, key, std)
        return [*stateful, progress, *([backup] if backup else [])]

    # ------------------------------------------------------------------------ training

    def fit(self, x, y, x_val=None, y_val=None) -> None:
        keras = _keras()
        import tensorflow as tf

        s = self.settings
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x_val is None or y_val is None or len(x_val) == 0:
            x_val = y_val = None
        self.image_shape = check_image_shape(self.estimator, self.image_shape, x.shape[1])
        outputs = n_outputs(self.task, y, y_val)
        mean, std = target_scale(self.task, y, s)
        self.device, capability = pick_device()
        self.policy, warnings = dtype_policy(s.precision, capability)
        announce("keras", f"training on {self.device}: {self.policy}", warnings)
        keras.utils.set_random_seed(self.seed)  # Python, NumPy and TensorFlow generators
        if self.device == "cpu":
            # Process-wide and for good (TensorFlow has no switch back); on CPU it costs
            # little, and it makes the same fit give the same weights.
            tf.config.experimental.enable_op_determinism()
        train_model, model = self._build(keras, x.shape[1], outputs, mean, std)
        steps = -(-len(x) // s.batch_size)
        self._compile(keras, train_model, steps)

        def encode(t):
            if self.task == "classification":
                return np.asarray(t, dtype=np.int64)
            return ((np.asarray(t, dtype=np.float64) - mean) / std).astype(np.float32)

        key = self.fit_key({"n_outputs": outputs, "policy": self.policy}, x, y, x_val, y_val)
        if self.checkpoint_dir is not None:
            _drop_other_checkpoint(self.checkpoint_dir, key)
        self.history = {}
        train_model.fit(
            x, encode(y),
            validation_data=None if x_val is None else (np.asarray(x_val, np.float32),
                                                        encode(y_val)),
            epochs=s.epochs, batch_size=s.batch_size, shuffle=True, verbose=0,
            callbacks=self._callbacks(keras, x_val is not None, key, std),
        )
        self.model = model

    # ---------------------------------------------------------------------- predicting

    def _outputs(self, x: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise SlipwayError("the keras trainer has not been fitted", "call fit() first")
        x = np.ascontiguousarray(x, dtype=np.float32)
        n_features = self.model.input_shape[-1]
        if x.ndim != 2 or x.shape[1] != n_features:
            raise SlipwayError(
                f"expected rows of {n_features} features, got an array of shape {x.shape}",
                "preprocess the data with the transformer the model was trained with",
            )
        if len(x) == 0:
            return np.zeros((0, self.model.output_shape[-1]), dtype=np.float32)
        # Direct calls, not model.predict: no tf.data pipeline or tf.function to build (and
        # retrace for every new model) for the few batches a stage predicts.
        return np.concatenate([np.asarray(self.model(x[i:i + EVAL_BATCH], training=False))
                               for i in range(0, len(x), EVAL_BATCH)])

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self._outputs(x)
        if self.task == "classification":
            return out.argmax(axis=1).astype(np.int64)
        return out.reshape(-1).astype(np.float64)

    def predict_proba(self, x: np.ndarray) -> np.ndarray | None:
        if self.task != "classification":
            return None
        proba = self._outputs(x).astype(np.float64)
        return proba / proba.sum(axis=1, keepdims=True)  # rows sum to 1 in float64 too

    # ------------------------------------------------------------------- save and load

    def save(self, directory: Path) -> dict[str, Any]:
        if self.model is None:
            raise SlipwayError("the keras trainer has not been fitted", "call fit() first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Keras insists on the .keras suffix, so atomic_path's temp name will not do.
        fd, tmp = tempfile.mkstemp(prefix=f".{MODEL_FILE}.", suffix=".keras", dir=directory)
        os.close(fd)
        try:
            self.model.save(tmp)
            _make_reproducible(Path(tmp))
            os.chmod(tmp, 0o644)
            os.replace(tmp, directory / MODEL_FILE)
        finally:
            Path(tmp).unlink(missing_ok=True)
        meta = {**self.describe(), "files": [MODEL_FILE]}
        write_json(directory / META_FILE, meta)
        return meta

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any], hashes: dict[str, str]) -> Trainer:
        """Reopen a saved model; safe mode refuses code (lambda layers) in the file."""
        path = Path(directory) / MODEL_FILE
        safe_load.verify_file(path, hashes.get(MODEL_FILE))
        keras = _keras()
        trainer = cls(meta["task"], meta["estimator"], meta["hyperparameters"], meta["seed"],
                      image_shape=meta.get("image_shape"))
        trainer.device = meta.get("device", "cpu")  # where it was trained (lineage)
        try:
            trainer.model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise SlipwayError(f"{path} is not a loadable Keras model: {err}",
                               "restore the model version or retrain it") from None
        # Mixed precision is for training: the weights are float32, and a reopened model
        # (evaluated, served, usually on a CPU) computes in float32, as torch's does.
        for layer in trainer.model.layers:
            if layer.dtype_policy.name != "float32":
                layer.dtype_policy = "float32"
        return trainer


def _make_reproducible(path: Path) -> None:
    """Rewrite a .keras zip without the save time (member timestamps, ``date_saved``), so
    the same fit gives the same bytes (and so the same content hash and model version)."""
    with zipfile.ZipFile(path) as src:
        members = {name: src.read(name) for name in src.namelist()}
    meta = json.loads(members["metadata.json"])
    meta.pop("date_saved", None)
    members["metadata.json"] = json.dumps(meta, sort_keys=True).encode()
    with zipfile.ZipFile(path, "w") as dst:
        for name in sorted(members):
            dst.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), members[name],
                         compress_type=zipfile.ZIP_DEFLATED)


# --------------------------------------------------------------------------- checkpoints

def _read_progress(directory: Path) -> tuple[dict[str, Any], list[np.ndarray]] | None:
    path = directory / PROGRESS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            state = json.loads(str(f["state"]))
            weights = [f[f"w{i}"] for i in range(state["n_weights"])]
    except Exception as err:  # a garbled file: training again is the fix
        say(f"keras: ignoring unreadable {path} ({err})")
        return None
    return state, weights


def _backup_epoch(directory: Path) -> int:
    """Epochs BackupAndRestore has saved (0: nothing to resume)."""
    meta = directory / BACKUP_DIR / "training_metadata.json"
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _drop_other_checkpoint(directory: Path, key: str) -> None:
    """Remove a backup that is not this fit's (other data or settings): it would be
    restored into the wrong model."""
    if not (directory / BACKUP_DIR).exists():
        return
    progress = _read_progress(directory)
    if progress is not None and progress[0].get("fingerprint") == key:
        return
    say(f"keras: ignoring checkpoint {directory}: it is from a different fit; starting afresh")
    shutil.rmtree(directory / BACKUP_DIR, ignore_errors=True)
    (directory / PROGRESS_FILE).unlink(missing_ok=True)


def _progress_callback(keras):
    """The callback class that keeps the history and the per-epoch line, and makes the
    early-stopping and plateau counters (and the best weights) survive a kill."""

    class Progress(keras.callbacks.Callback):
        # Counters of EarlyStopping / ReduceLROnPlateau that BackupAndRestore does not keep.
        KEEP = ("wait", "best", "best_epoch", "cooldown_counter", "stopped_epoch")

        def __init__(self, trainer: KerasTrainer, stateful: list, key: str, std: float):
            super().__init__()
            self.trainer, self.stateful, self.key = trainer, stateful, key
            self.scale = {"loss": std**2, "mae": std}  # back to the target's units
            self.dir = trainer.checkpoint_dir
            self.snapshots: list[list[dict[str, Any]]] = []  # per epoch, per stateful cb
            self.best: tuple[int, list[np.ndarray]] | None = None  # (epoch, weights)
            self.lr = 0.0

        def _lr(self) -> float:
            return float(self.model.optimizer.learning_rate)  # a variable, or a schedule's value

        def on_train_begin(self, logs=None):
            # Runs after the stateful callbacks reset themselves, before the backup loads.
            done = _backup_epoch(self.dir) if self.dir else 0
            progress = _read_progress(self.dir) if done else None
            if progress is None or progress[0]["epoch"] < done:
                return
            state, weights = progress
            # The progress file is written just before the backup: it may be one epoch ahead.
            self.snapshots = state["snapshots"][:done]
            self.trainer.history = {k: v[:done] for k, v in state["history"].items()}
            for cb, snap in zip(self.stateful, self.snapshots[-1], strict=True):
                for name, value in snap.items():
                    setattr(cb, name, value)
            for cb in self.stateful:
                if isinstance(cb, keras.callbacks.EarlyStopping) and weights \
                        and state["best_epoch"] == cb.best_epoch:
                    cb.best_weights = weights
                    self.best = (cb.best_epoch, weights)
            say(f"keras: resuming from {self.dir} after epoch {done}/"
                f"{self.trainer.settings.epochs}")

        def on_epoch_begin(self, epoch, logs=None):
            self.lr = self._lr()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            out: dict[str, float] = {}
            for name in ("loss", metric_name(self.trainer.task)):
                for key in (name, f"val_{name}"):
                    if key in logs:
                        out[key] = float(logs[key]) * self.scale.get(name, 1.0)
            s = self.trainer.settings
            if not np.isfinite(out["loss"]):
                raise SlipwayError(
                    f"the {self.trainer.estimator} diverged: training loss is {out['loss']} in "
                    f"epoch {epoch + 1}",
                    f"lower train.hyperparameters.{self.trainer.estimator}.lr in params.yaml, "
                    "or check the features are scaled",
                )
            for name, value in out.items():
                self.trainer.history.setdefault(name, []).append(value)
            say(epoch_line(epoch + 1, s.epochs, out, self.lr))
            self.snapshots.append([{k: _plain(getattr(cb, k)) for k in self.KEEP
                                    if hasattr(cb, k)} for cb in self.stateful])
            for cb in self.stateful:
                if isinstance(cb, keras.callbacks.EarlyStopping):
                    if cb.best_weights is not None and (self.best is None
                                                        or self.best[0] != cb.best_epoch):
                        self.best = (cb.best_epoch, cb.best_weights)
                    if self.model.stop_training:
                        say(f"keras: early stopping after epoch {epoch + 1}: val_loss has not "
                            f"improved for {cb.wait} epochs; keeping epoch "
                            f"{cb.best_epoch + 1}")
            if self.dir is not None:
                self._write(epoch + 1)

        def _write(self, epoch: int) -> None:
            weights = self.best[1] if self.best else []
            state = {"fingerprint": self.key, "epoch": epoch, "snapshots": self.snapshots,
                     "history": self.trainer.history, "n_weights": len(weights),
                     "best_epoch": self.best[0] if self.best else None}
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{PROGRESS_FILE}.", suffix=".npz", dir=self.dir)
            os.close(fd)
            try:
                np.savez(tmp, state=np.array(json.dumps(state)),
                         **{f"w{i}": w for i, w in enumerate(weights)})
                os.replace(tmp, self.dir / PROGRESS_FILE)
            finally:
                Path(tmp).unlink(missing_ok=True)

        def on_train_end(self, logs=None):
            # The fit is complete; BackupAndRestore (called next) deletes its backup too.
            if self.dir is not None:
                with contextlib.suppress(OSError):
                    (self.dir / PROGRESS_FILE).unlink()

    return Progress


def _plain(value: Any) -> Any:
    """A JSON-ready copy of a callback counter (numpy scalars, inf)."""
    if isinstance(value, np.generic):
        return value.item()
    return value
