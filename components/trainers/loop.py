"""What the epoch-based backends (torch, keras) share: their settings, checks and progress line.

Both backends read the same hyperparameters (``train.hyperparameters.mlp`` / ``.cnn`` in
params.yaml), validated here into :class:`NetSettings`, so one set of settings means the
same model in either framework. Nothing here imports a framework.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from components.errors import SlipwayError, did_you_mean
from components.trainers.base import Trainer, reject_unknown_hyperparameters

ESTIMATORS = ("mlp", "cnn")
OPTIMIZERS = ("adamw", "adam", "rmsprop", "sgd")
SCHEDULES = ("cosine", "plateau", "none")
# auto: mixed precision on a GPU (bf16, or fp16 with loss scaling on cards without native
# bf16), float32 on CPU. bf16 and fp16 run on CPUs too (fp16 slowly, with a warning).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Fallbacks for keys params.yaml leaves out (params.yaml sets every one of them).
_COMMON: dict[str, Any] = {
    "dropout": 0.0,          # fraction of units dropped after each hidden dense layer
    "epochs": 30,            # at most; early stopping may end sooner
    "patience": 5,           # epochs without validation-loss improvement before stopping
    "batch_size": 32,        # rows per optimizer step
    "optimizer": "adamw",
    "lr": 1e-3,              # initial learning rate
    "weight_decay": 0.0,
    "schedule": "cosine",
    "num_workers": None,     # DataLoader workers (torch); None: 2 on CUDA, 0 on CPU
    "precision": "auto",     # one of PRECISIONS
    "scale_target": True,    # regression: fit standardised targets, predict in real units
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"hidden": [64, 64], **_COMMON},
    # channels_last (torch): NHWC weights and batches; None: on CUDA only.
    "cnn": {"channels": [32, 64], "hidden": [120, 84], "channels_last": None, **_COMMON},
}


@dataclass(frozen=True)
class NetSettings:
    """Validated hyperparameters of an ``mlp`` or ``cnn``."""

    hidden: tuple[int, ...]
    channels: tuple[int, ...] | None
    dropout: float
    epochs: int
    patience: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    schedule: str
    num_workers: int | None
    scale_target: bool
    precision: str
    channels_last: bool | None  # cnn only (an mlp has no image batches)

    def as_dict(self) -> dict[str, Any]:
        """The settings as used (what ``trainer.json`` records), lists not tuples."""
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        if self.channels is None:
            del out["channels"], out["channels_last"]
        else:
            out["channels"] = list(self.channels)
        return out


def _where(estimator: str, key: str) -> str:
    return f"train.hyperparameters.{estimator}.{key} in params.yaml"


def _int(estimator: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SlipwayError(f"{key} must be a whole number >= {low}, got {value!r}",
                           f"correct {_where(estimator, key)}")
    return value


def _float(estimator: str, key: str, value: Any, low: float, high: float | None = None) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (high is not None and value >= high):
        bound = f">= {low}" + (f" and < {high}" if high is not None else "")
        raise SlipwayError(f"{key} must be a number {bound}, got {value!r}",
                           f"correct {_where(estimator, key)}")
    return float(value)


def _choice(estimator: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SlipwayError(f"unknown {key} {value!r}",
                           f"correct {_where(estimator, key)}: " + did_you_mean(value, choices))
    return value


def _units(estimator: str, key: str, value: Any, length: int | None) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or (length is not None and len(value) != length):
        want = f"a list of {length} layer sizes" if length else "a list of layer sizes"
        raise SlipwayError(f"{key} must be {want}, got {value!r}",
                           f"correct {_where(estimator, key)}")
    return tuple(_int(estimator, key, v, 1) for v in value)


def net_settings(framework: str, estimator: str, hyperparameters: dict[str, Any]) -> NetSettings:
    """Validate an estimator's hyperparameters, filling in the fallbacks.

    Raises:
        SlipwayError: an unknown estimator or key, or a value of the wrong type or range.
    """
    if estimator not in ESTIMATORS:
        raise SlipwayError(
            f"unknown estimator {estimator!r} for framework {framework}",
            "set train.estimator in params.yaml: " + did_you_mean(estimator, ESTIMATORS),
        )
    allowed = DEFAULTS[estimator]
    reject_unknown_hyperparameters(f"{framework} {estimator}", estimator, hyperparameters,
                                   allowed)
    hp = {**allowed, **hyperparameters}
    workers = hp["num_workers"]
    if not isinstance(hp["scale_target"], bool):
        raise SlipwayError(f"scale_target must be true or false, got {hp['scale_target']!r}",
                           f"correct {_where(estimator, 'scale_target')}")
    channels_last = hp.get("channels_last")  # a cnn's only
    if channels_last is not None and not isinstance(channels_last, bool):
        raise SlipwayError(f"channels_last must be true, false or null (automatic), got "
                           f"{channels_last!r}", f"correct {_where(estimator, 'channels_last')}")
    return NetSettings(
        hidden=_units(estimator, "hidden", hp["hidden"], 2 if estimator == "cnn" else None),
        channels=_units(estimator, "channels", hp["channels"], 2) if estimator == "cnn" else None,
        dropout=_float(estimator, "dropout", hp["dropout"], 0.0, 1.0),
        epochs=_int(estimator, "epochs", hp["epochs"], 1),
        patience=_int(estimator, "patience", hp["patience"], 0),
        batch_size=_int(estimator, "batch_size", hp["batch_size"], 1),
        optimizer=_choice(estimator, "optimizer", hp["optimizer"], OPTIMIZERS),
        lr=_float(estimator, "lr", hp["lr"], 1e-12),
        weight_decay=_float(estimator, "weight_decay", hp["weight_decay"], 0.0),
        schedule=_choice(estimator, "schedule", hp["schedule"], SCHEDULES),
        num_workers=None if workers is None else _int(estimator, "num_workers", workers, 0),
        scale_target=hp["scale_target"],
        precision=_choice(estimator, "precision", hp["precision"], PRECISIONS),
        channels_last=channels_last,
    )


def check_image_shape(
    estimator: str, image_shape: tuple[int, ...] | None, n_features: int | None = None
) -> tuple[int, int, int] | None:
    """The ``(channels, height, width)`` a cnn reads its flat pixel rows as.

    Args:
        estimator: ``mlp`` needs no image shape (it reads pixels as plain features).
        image_shape: from the dataset's metadata.
        n_features: feature columns of the data, checked against the shape when given.

    Raises:
        SlipwayError: a cnn on a dataset that is not an image set, a malformed shape, an image
            too small for two 2x2 poolings, or a shape whose pixel count is not the number of
            feature columns.
    """
    if image_shape is None:
        if estimator == "cnn":
            raise SlipwayError(
                "estimator 'cnn' needs images, but the dataset is not an image set (its "
                "metadata has no image_shape)",
                "use estimator mlp for tabular data, or choose an image dataset (digits, "
                "cifar10) in params.yaml",
            )
        return None
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(s, int | np.integer) and s > 0 for s in shape):
        raise SlipwayError(
            f"wrong image shape {list(shape)}: expected [channels, height, width], "
            "three positive whole numbers",
            "fix image_shape in the dataset's metadata (ingest)",
        )
    shape = tuple(int(s) for s in shape)
    if estimator == "cnn" and min(shape[1:]) < 4:
        raise SlipwayError(
            f"image shape {list(shape)} is too small for the cnn: two 2x2 poolings need "
            "images of at least 4x4 pixels",
            "use estimator mlp for such small images",
        )
    pixels = shape[0] * shape[1] * shape[2]
    if n_features is not None and pixels != n_features:
        raise SlipwayError(
            f"wrong image shape {list(shape)}: it holds {pixels} pixels, but the data has "
            f"{n_features} feature columns",
            "fix image_shape in the dataset's metadata (ingest), or check that "
            "preprocessing kept exactly the pixel columns",
        )
    return shape


def n_outputs(task: str, y: np.ndarray, y_val: np.ndarray | None) -> int:
    """Output units: one per class (classes are indices 0..k-1), or 1 for regression."""
    if task != "classification":
        return 1
    labels = y if y_val is None else np.concatenate([y, y_val])
    if labels.size == 0:
        raise SlipwayError("no training rows", "check the split sizes in params.yaml")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise SlipwayError(
            "classification targets must be class indices 0..k-1, got "
            f"{labels.dtype} values from {labels.min()} to {labels.max()}",
            "encode the labels first (components.train.encode_target)",
        )
    return int(labels.max()) + 1


def target_scale(task: str, y: np.ndarray, settings: NetSettings) -> tuple[float, float]:
    """Mean and standard deviation regression targets are standardised with (0, 1: none).

    Standardised targets let the same learning rate work whatever the target's units
    (miles per gallon or dollars); predictions are mapped back, so the model's output, its
    loss and its MAE are in the target's units.
    """
    if task != "regression" or not settings.scale_target:
        return 0.0, 1.0
    std = float(np.std(y))
    return float(np.mean(y)), std if std > 0 else 1.0


def metric_name(task: str) -> str:
    """The per-epoch metric besides the loss: accuracy, or mean absolute error."""
    return "accuracy" if task == "classification" else "mae"


def mixed_precision(precision: str, gpu: bool, native_bf16: bool) -> tuple[str | None, list[str]]:
    """What a ``precision`` setting means on this device, for either framework: ``"bf16"``,
    ``"fp16"`` (with loss scaling) or None (float32), and warnings where it will be slow.

    Args:
        precision: one of :data:`PRECISIONS`.
        gpu: training on a CUDA GPU.
        native_bf16: that GPU computes bf16 natively (Ampere and newer).
    """
    if precision == "auto":
        return ("bf16" if native_bf16 else "fp16") if gpu else None, []
    if precision == "bf16" and gpu and not native_bf16:
        return "bf16", ["this GPU has no native bf16: it is emulated, slowly; precision auto "
                        "would use fp16 with loss scaling"]
    if precision == "fp16" and not gpu:
        return "fp16", ["fp16 on a CPU is slow on most CPUs (bf16 is the CPU's mixed "
                        "precision); training in fp16 with loss scaling as asked"]
    return (None if precision == "fp32" else precision), []


def fingerprint(config: dict[str, Any], *arrays: np.ndarray | None) -> str:
    """A digest of the fit's settings and data: a checkpoint resumes only the same fit."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for a in arrays:
        if a is None:
            h.update(b"none")
        else:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _number(v: float) -> str:
    return f"{v:.3f}" if 1e-3 <= abs(v) < 1e5 or v == 0 else f"{v:.3e}"


def epoch_line(epoch: int, epochs: int, logs: dict[str, float], lr: float) -> str:
    """``epoch 3/30 loss 0.412 val_loss 0.388 val_acc 0.912 lr 1.9e-3``.

    Args:
        epoch: 1-based.
        epochs: the most the fit will run.
        logs: this epoch's values (history keys).
        lr: the learning rate the epoch ran with.
    """
    short = {"accuracy": "acc", "val_accuracy": "val_acc"}
    keys = ["loss"] + (["val_loss", "val_accuracy", "val_mae"] if "val_loss" in logs
                       else ["accuracy", "mae"])
    parts = [f"epoch {epoch}/{epochs}"]
    parts += [f"{short.get(k, k)} {_number(logs[k])}" for k in keys if k in logs]
    mantissa, exponent = f"{lr:.1e}".split("e")
    parts.append(f"lr {mantissa}e{int(exponent)}")
    return " ".join(parts)


def say(line: str) -> None:
    """A progress line on stderr (stdout stays for the stages' results)."""
    print(line, file=sys.stderr, flush=True)


_announced: set[str] = set()  # lines announce() has already said in this process


def announce(framework: str, line: str, warnings: list[str]) -> None:
    """Say ``<framework>: <line>`` (where and how a fit trains) and its warnings, each once
    per process: cross-validation fits the same settings once per fold."""
    for text in [*(f"{framework}: warning: {w}" for w in warnings), f"{framework}: {line}"]:
        if text not in _announced:
            _announced.add(text)
            say(text)


class NetTrainer(Trainer):
    """What the epoch-based backends (torch, keras) share at construction: validated
    ``mlp`` / ``cnn`` settings, recorded as used, and a checked image shape."""

    def __init__(
        self, task: str, estimator: str, hyperparameters: dict[str, Any], seed: int,
        **options: Any,
    ) -> None:
        super().__init__(task, estimator, hyperparameters, seed, **options)
        self.settings = net_settings(self.framework, estimator, hyperparameters)
        self.hyperparameters = self.settings.as_dict()  # as used, recorded in trainer.json
        self.image_shape = check_image_shape(estimator, self.image_shape)

    def fit_key(self, arithmetic: dict[str, Any], *arrays: np.ndarray | None) -> str:
        """The digest a checkpoint must match to be resumed: the settings, the arithmetic
        chosen for this device and the data; not the device itself (a fit killed on one
        machine may resume on another) nor the loader workers (they do not change a fit)."""
        settings = {k: v for k, v in self.hyperparameters.items() if k != "num_workers"}
        return fingerprint({**self.describe(), "device": None, "hyperparameters": settings,
                            **arithmetic}, *arrays)
