"""Runtime helpers for the kfp component bodies (kept out of the bodies themselves)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from components.errors import SlipwayError


class StageReport:
    """What a stage body reports to the Pushgateway, when the pipeline was compiled with one
    (:mod:`components.pushgateway`): its wall time, pushed by :func:`reporting_errors`
    whatever the outcome, and the facts the body adds, pushed only when it succeeds.
    Without a Pushgateway it records and pushes nothing."""

    def __init__(self, stage: str) -> None:
        from components import pushgateway

        self.stage = stage
        self.enabled = pushgateway.target() is not None
        self.facts: dict[str, Any] = {}

    def add(self, build: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> None:
        """Facts to push at the body's end: ``build`` (``pushgateway.evaluated``,
        ``gated``, ``packaged``) is called with the arguments only when there is a
        Pushgateway. A builder that fails is a warning: a metric never fails a task."""
        if not self.enabled:
            return
        try:
            self.facts.update(build(*args, **kwargs))
        except Exception as err:  # noqa: BLE001
            print(f"warning: {self.stage}: run metrics not recorded: {err!r}",
                  file=sys.stderr, flush=True)

    def push(self, seconds: float, succeeded: bool) -> None:
        from components import pushgateway

        if not self.enabled:
            return
        pushgateway.push({pushgateway.STAGE_METRIC: round(seconds, 3)}, stage=self.stage)
        if succeeded and self.facts:
            pushgateway.push(self.facts)


@contextlib.contextmanager
def reporting_errors(stage: str) -> Iterator[StageReport]:
    """Turn a SlipwayError into one clear message on stderr and a non-zero exit; at the end,
    push the stage's wall time and facts if the pipeline has a Pushgateway (a failed push
    is a warning, never the task's failure)."""
    report = StageReport(stage)
    started = time.perf_counter()
    succeeded = False
    try:
        yield report
        succeeded = True
    except SlipwayError as err:
        print(f"error: {stage}: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        report.push(time.perf_counter() - started, succeeded)


def record_fit(record: dict, model, cv_metrics, **metadata) -> None:
    """Record a fit (the train core's record) on a train-like task's outputs: the model
    artifact's metadata (framework, estimator, device, the task's image, and ``metadata``)
    and the CV score, plus the validation score where there was one, in ``cv_metrics``."""
    from components.stages import running_image

    model.metadata.update(framework=record["framework"], estimator=record["estimator"],
                          device=record["device"], **metadata, image=running_image() or "")
    cv = record["cv"]
    cv_metrics.log_metric(f"cv_{cv['metric']}_mean", cv["mean"])
    cv_metrics.log_metric(f"cv_{cv['metric']}_std", cv["std"])
    if "val_score" in record:
        cv_metrics.log_metric(f"val_{cv['metric']}", record["val_score"])
    write_metrics_file(cv_metrics)


def write_metrics_file(*artifacts) -> None:
    """Write each metrics artifact's metadata to its file as JSON.

    KFP keeps logged metrics in metadata only; kfp.local's cache counts an output without
    a file as missing, so tasks with metrics outputs were never reused. The file also
    makes the metrics readable from the artifact store on a cluster.
    """
    import json
    from pathlib import Path

    for artifact in artifacts:
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        Path(artifact.path).write_text(json.dumps(artifact.metadata, indent=2, sort_keys=True))
