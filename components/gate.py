"""Gate stage: is the new model good enough, and no worse than the packaged one?

Passes when the chosen test metric reaches the threshold in params.yaml (``gate``) and is
not worse than the currently packaged model's by more than the tolerance. When it does
not pass, the pipeline stops before packaging and the decision says why.

    python -m components.gate --metrics reports/metrics.json \\
        --evaluation reports/evaluation.json --out reports/gate.json
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

from components.config import GateParams, Params
from components.errors import SlipwayError
from components.io import read_json, write_json

HIGHER_IS_BETTER = {"accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "r2"}
LOWER_IS_BETTER = {"mae", "rmse"}


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    metric: str
    value: float
    threshold: float
    baseline_version: str | None = None
    baseline_value: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    metrics: dict[str, float],
    task: str,
    rules: GateParams,
    baseline: tuple[str, dict[str, float]] | None = None,
) -> GateDecision:
    """Apply the gate.

    Args:
        metrics: the new model's test metrics.
        task: ``classification`` or ``regression`` (picks the rule).
        rules: the ``gate`` settings.
        baseline: version and test metrics of the currently packaged model, if any.

    Raises:
        SlipwayError: the rule names a metric the evaluation did not produce.
    """
    rule = rules.rule(task)
    name = rule.metric
    if name not in HIGHER_IS_BETTER | LOWER_IS_BETTER or name not in metrics:
        raise SlipwayError(
            f"gate metric {name!r} is not among this {task} model's metrics "
            f"({', '.join(sorted(metrics))})",
            f"set gate.{task}.metric in params.yaml to one of those",
        )
    higher = name in HIGHER_IS_BETTER
    value = float(metrics[name])
    sign = 1 if higher else -1
    bar = "at least" if higher else "at most"
    if sign * (value - rule.threshold) < 0:
        return GateDecision(
            False,
            f"test {name} {value:.4f} misses the threshold: it must be {bar} {rule.threshold:g}",
            name, value, rule.threshold,
        )
    if baseline is not None and name in baseline[1]:
        version, base_metrics = baseline
        base = float(base_metrics[name])
        if sign * (value - base) < -rules.tolerance - 1e-9:  # exactly at tolerance passes
            return GateDecision(
                False,
                f"test {name} {value:.4f} is worse than the packaged model {version} "
                f"({base:.4f}) by more than the tolerance {rules.tolerance:g}",
                name, value, rule.threshold, version, base,
            )
        return GateDecision(
            True,
            f"test {name} {value:.4f} meets {rule.threshold:g} and is within "
            f"{rules.tolerance:g} of the packaged model {version} ({base:.4f})",
            name, value, rule.threshold, version, base,
        )
    return GateDecision(
        True,
        f"test {name} {value:.4f} meets {rule.threshold:g} (no packaged model to compare with)",
        name, value, rule.threshold,
    )


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", required=True, help="metrics.json from evaluate")
    parser.add_argument("--evaluation", required=True, help="evaluation.json from evaluate")
    parser.add_argument("--out", required=True, help="JSON decision to write")


def _run(args: argparse.Namespace, params: Params) -> None:
    from components.package import current_packaged

    evaluation = read_json(args.evaluation)
    decision = decide(read_json(args.metrics), evaluation["task"], params.gate,
                      current_packaged(params.model_name()))
    if not decision.passed:
        raise SlipwayError(f"gate rejected the model: {decision.reason}",
                           "improve the model, or change the `gate` section of params.yaml")
    write_json(args.out, decision.as_dict())
    print(f"gate: passed: {decision.reason}")


def main(argv: list[str] | None = None) -> int:
    from components.cli import stage_main

    return stage_main("gate", __doc__.splitlines()[0], _add_arguments, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
