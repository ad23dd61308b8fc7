"""The run summary under a real kfp.local, with and without its cache (pipelines.local.run).

A two-task pipeline of the real components (ingest → validate on iris) runs in this process
as ``make run`` runs a pipeline. With the cache on, a second run whose validate fails
reuses the first run's ingest: its summary shows that dataset and names the task as reused
(kfp.local's log of the cache hit reached the runner, and its entry was found). Without the
cache, a run whose ingest fails shows no dataset at all, although earlier runs in the same
pipeline root have one.
"""

# No `from __future__ import annotations` here: kfp reads the annotations as objects.
import io
from pathlib import Path

import pytest
from kfp import dsl

from components import kfp_components as ops
from components.config import load_params
from pipelines import local
from pipelines.training import pipeline_defaults

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def build(params):
    d = pipeline_defaults(params)

    @dsl.pipeline(name="ingest-validate")
    def ingest_validate(dataset_name: str = params.dataset, dataset: dict = d["dataset"],
                        validate: dict = d["validate"], data_root: str = "."):
        table = ops.ingest_op(dataset_name=dataset_name, dataset=dataset, data_root=data_root)
        ops.validate_op(table=table.outputs["table"], rules=validate)

    return ingest_validate


def run(tmp_path: Path, *settings: str, cache: bool) -> local.RunResult:
    params = load_params(REPO / "params.yaml", ["dataset=iris",
                                                f"kfp.pipeline_root={tmp_path / 'kfp'}",
                                                *settings])
    return local.run(build(params), params, {"data_root": str(tmp_path)}, terminal=io.StringIO(),
                     cache=cache)


def test_summary_shows_this_runs_results_with_and_without_the_cache(tmp_path):
    first = run(tmp_path, cache=True)
    assert first.ok and first.summary["reused"] == []
    assert first.summary["dataset"]["name"] == "iris"

    second = run(tmp_path, "validate.min_rows=100000", cache=True)
    assert not second.ok and second.failed_tasks == ["validate-op"]
    assert second.summary["reused"] == ["ingest-op"]
    assert second.summary["executed"] == ["validate-op"]
    assert second.summary["dataset"] == first.summary["dataset"]
    assert "Task ingest-op cache hit (key=" in second.log.read_text()

    third = run(tmp_path, "dataset=missing", "datasets.missing={source: file, path: "
                          "missing.csv, format: csv, target: y, task: classification}",
                cache=False)
    assert not third.ok and third.failed_tasks == ["ingest-op"]
    assert third.run_dir not in (first.run_dir, second.run_dir)
    assert "dataset" not in third.summary and third.summary["reused"] == []
