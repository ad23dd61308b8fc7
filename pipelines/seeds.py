"""``make seeds``: three classic workflows reproduced, expected against measured values.

1. Linear regression on y = 1 + 2x + 0.1·noise (NumPy seed 42, 100 points, shuffled, the
   first 80 for training), fitted three ways: gradient descent in NumPy, scikit-learn's
   LinearRegression, and a torch autograd loop with SGD (lr 0.1, 1000 epochs, parameters
   drawn with torch seed 42). Each recovers intercept 1.0235 and slope 1.9690.
2. Auto MPG regression through the ``training`` pipeline with the Keras backend and the
   TensorFlow tutorial's model: two Dense(64, relu) layers and Dense(1), RMSprop 0.001,
   inputs normalised with training statistics, origin one-hot encoded, 80/20 split.
   Test MAE at or below 2.2 MPG.
3. Image classification with the torch CNN on scikit-learn's digits through the
   ``training`` pipeline: test accuracy at least 0.95, per-class accuracy in the report.

Prints a table and writes it as JSON (``reports/seeds.json``); exits 1 when a check fails.

    python -m pipelines.seeds [--only linear,auto_mpg_keras,digits_cnn]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import did_you_mean
from components.io import write_json


@dataclass(frozen=True)
class Check:
    workflow: str
    quantity: str
    expected: str
    measured: float
    passed: bool


def linear_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The synthetic data, split as in the original: train x, y, validation x, y."""
    n = 100
    np.random.seed(42)
    x = np.random.rand(n, 1)
    y = 1 + 2 * x + 0.1 * np.random.randn(n, 1)
    idx = np.arange(n)
    np.random.shuffle(idx)
    train, val = idx[: int(n * 0.8)], idx[int(n * 0.8):]
    return x[train], y[train], x[val], y[val]


def fit_numpy(x: np.ndarray, y: np.ndarray, lr: float = 0.1, epochs: int = 1000):
    np.random.seed(42)
    b, w = np.random.randn(1), np.random.randn(1)
    for _ in range(epochs):
        error = (b + w * x) - y
        b = b - lr * 2 * error.mean()
        w = w - lr * 2 * (x * error).mean()
    return float(b[0]), float(w[0])


def fit_sklearn(x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(x, y)
    return float(model.intercept_[0]), float(model.coef_[0][0])


def fit_torch(x: np.ndarray, y: np.ndarray, lr: float = 0.1, epochs: int = 1000):
    import torch

    torch.manual_seed(42)
    b = torch.randn(1, requires_grad=True, dtype=torch.float)
    w = torch.randn(1, requires_grad=True, dtype=torch.float)
    x_t = torch.as_tensor(x, dtype=torch.float)
    y_t = torch.as_tensor(y, dtype=torch.float)
    optimizer = torch.optim.SGD([b, w], lr=lr)
    loss_fn = torch.nn.MSELoss(reduction="mean")
    for _ in range(epochs):
        loss = loss_fn(b + w * x_t, y_t)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return float(b.item()), float(w.item())


def linear_regression() -> list[Check]:
    x, y, _, _ = linear_data()
    checks = []
    for name, fit in (("numpy gradient descent", fit_numpy), ("sklearn LinearRegression",
                      fit_sklearn), ("torch autograd + SGD", fit_torch)):
        b, w = fit(x, y)
        # "to three decimals": within half a unit of the third decimal place.
        checks.append(Check(f"linear regression, {name}", "intercept", "1.0235",
                            b, abs(b - 1.0235) < 5e-4))
        checks.append(Check(f"linear regression, {name}", "slope", "1.9690",
                            w, abs(w - 1.9690) < 5e-4))
    return checks


# Settings that turn the default params into each tutorial's setup.
AUTO_MPG_KERAS = [
    "dataset=auto_mpg",
    "split.test_size=0.2",
    "split.val_size=0.1",  # taken from the 80 %: early stopping, as the tutorial's validation
    "train.framework=keras",
    "train.estimator=mlp",
    "train.cv_folds=2",
    "train.hyperparameters.mlp={hidden: [64, 64], dropout: 0.0, epochs: 300, patience: 20, "
    "batch_size: 32, optimizer: rmsprop, lr: 0.001, weight_decay: 0.0, schedule: none}",
    "preprocess.scale=standard",
    "gate.regression.metric=mae",
    "gate.regression.threshold=2.2",
]
DIGITS_CNN = [
    "dataset=digits",
    "train.framework=torch",
    "train.estimator=cnn",
    "train.cv_folds=2",
    "gate.classification.metric=accuracy",
    "gate.classification.threshold=0.95",
]


def _pipeline_metrics(overrides: list[str], model_name: str) -> dict[str, Any]:
    """Run the training pipeline locally with these settings; its test metrics."""
    from components.config import load_params
    from pipelines import local, training

    params = load_params("params.yaml", [*overrides, f"package.model_name={model_name}"])
    repo = str(Path.cwd())
    result = local.run(training.build(params), params, {"data_root": repo, "code_dir": repo},
                       terminal=sys.stderr)
    if not result.ok:
        raise SystemExit(f"seeds: pipeline failed ({', '.join(result.failed_tasks)}); "
                         f"log: {result.log}")
    return {**result.summary.get("metrics", {}), "report": result.summary.get("report")}


def auto_mpg_keras() -> list[Check]:
    metrics = _pipeline_metrics(AUTO_MPG_KERAS, "seeds-auto-mpg-keras")
    return [Check("Auto MPG, Keras tutorial model", "test MAE (MPG)", "<= 2.2",
                  metrics["mae"], metrics["mae"] <= 2.2)]


def digits_cnn() -> list[Check]:
    metrics = _pipeline_metrics(DIGITS_CNN, "seeds-digits-cnn")
    return [Check("digits, torch CNN", "test accuracy", ">= 0.95",
                  metrics["accuracy"], metrics["accuracy"] >= 0.95)]


WORKFLOWS: dict[str, Callable[[], list[Check]]] = {
    "linear": linear_regression,
    "auto_mpg_keras": auto_mpg_keras,
    "digits_cnn": digits_cnn,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(WORKFLOWS),
                        help=f"comma-separated subset of: {', '.join(WORKFLOWS)}")
    parser.add_argument("--json", default="reports/seeds.json", help="where to write results")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKFLOWS]
    if unknown or not names:
        parser.error(f"unknown workflow {unknown[0]!r}: {did_you_mean(unknown[0], WORKFLOWS)}"
                     if unknown else "--only names no workflow")
    checks: list[Check] = []
    for name in names:
        print(f"seeds: running {name} ...", file=sys.stderr, flush=True)
        checks += WORKFLOWS[name]()
    width = max(len(c.workflow) for c in checks)
    print(f"\n{'workflow':{width}}  {'quantity':16} {'expected':>9} {'measured':>10}  result")
    for c in checks:
        print(f"{c.workflow:{width}}  {c.quantity:16} {c.expected:>9} {c.measured:>10.4f}  "
              f"{'ok' if c.passed else 'FAIL'}")
    write_json(args.json, {"checks": [asdict(c) for c in checks],
                           "passed": all(c.passed for c in checks)})
    print(f"\nwritten to {args.json}")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
