"""The run summary shows this run's results only (pipelines.local.read_summary).

Real folder layouts as kfp.local leaves them under the pipeline root: one folder per run,
one per task that ran, ``executor_output.json`` in the folder of each task that succeeded,
and the cache entries that kfp.local's own ``LocalCache`` writes. A later run that failed
must not show an earlier run's dataset, model, metrics or report; a run that reused cached
tasks shows the outputs of the entries it reused, not those of the newest earlier run.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from kfp import dsl
from kfp.local.cache import LocalCache

from pipelines.local import _ConsoleFilter, cache_entry, read_summary

TABLE = {"name": "iris", "source": "sklearn:iris", "md5": "0" * 32, "rows": 150}


def _artifact(run: Path, task: str, output: str, metadata: dict) -> dict:
    return {"name": output, "uri": str(run / task / output), "metadata": metadata}


def write_task(run: Path, task: str, outputs: dict[str, dict]) -> None:
    """A task that succeeded: its folder, its output files and ``executor_output.json``."""
    folder = run / task
    folder.mkdir(parents=True)
    artifacts = {}
    for output, metadata in outputs.items():
        (folder / output).mkdir()
        artifacts[output] = {"artifacts": [_artifact(run, task, output, metadata)]}
    (folder / "executor_output.json").write_text(json.dumps({"artifacts": artifacts}))


def write_evaluation(run: Path, accuracy: float) -> None:
    evaluation = run / "evaluate-op" / "evaluation"
    (evaluation / "metrics.json").write_text(json.dumps({"accuracy": accuracy}))
    (evaluation / "report.html").write_text("<!doctype html>")


def complete_run(root: Path, stamp: str, md5: str, estimator: str, accuracy: float) -> Path:
    """A training run in which every task succeeded."""
    run = root / f"training-2026-01-01-00-00-{stamp}"
    write_task(run, "ingest-op", {"table": {**TABLE, "md5": md5}})
    for task in ("validate-op", "split-op", "preprocess-op"):
        write_task(run, task, {})
    write_task(run, "train-op", {"model": {"framework": "sklearn", "estimator": estimator,
                                           "device": "cpu"}, "cv_metrics": {}})
    write_task(run, "evaluate-op", {"evaluation": {"task": "classification"}})
    write_evaluation(run, accuracy)
    write_task(run, "gate-op", {"decision": {"passed": True, "reason": "ok"}})
    write_task(run, "package-op", {"model_version": {"version": f"v-{stamp}"}})
    return run


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "kfp-local"


def test_a_complete_run_is_summarised_from_its_own_folders(root):
    run = complete_run(root, "00-000001", "a" * 32, "svm", 0.93)
    s = read_summary(run)
    assert s["dataset"] == {**TABLE, "md5": "a" * 32}
    assert s["model"]["estimator"] == "svm"
    assert s["metrics"] == {"accuracy": 0.93}
    assert s["report"] == str(run / "evaluate-op" / "evaluation" / "report.html")
    assert s["gate"]["passed"] is True
    assert s["model_version"] == {"version": "v-00-000001",
                                  "path": str(run / "package-op" / "model_version")}


def test_a_run_that_failed_at_ingest_reports_nothing_of_an_earlier_run(root):
    complete_run(root, "00-000001", "a" * 32, "svm", 0.93)
    failed = root / "training-2026-01-01-00-01-00-000002"
    (failed / "ingest-op").mkdir(parents=True)  # started, failed: no executor output
    assert read_summary(failed) == {}


def test_a_run_that_failed_at_train_shows_its_own_dataset_and_nothing_later(root):
    complete_run(root, "00-000001", "a" * 32, "svm", 0.93)
    failed = root / "training-2026-01-01-00-01-00-000002"
    write_task(failed, "ingest-op", {"table": {**TABLE, "md5": "b" * 32}})
    for task in ("validate-op", "split-op", "preprocess-op"):
        write_task(failed, task, {})
    (failed / "train-op").mkdir()
    assert read_summary(failed) == {"dataset": {**TABLE, "md5": "b" * 32}}


def test_cached_tasks_come_from_the_entries_this_run_reused(root):
    """Run A, then run B (newer, other results), then a cached run that reused A's outputs:
    the summary shows A's, though B is the newest run that has those task folders."""
    run_a = complete_run(root, "00-000001", "a" * 32, "svm", 0.93)
    complete_run(root, "01-000002", "b" * 32, "knn", 0.51)
    cache = LocalCache(str(root / ".kfp_cache"))
    entries = {
        "ingest-op": {"table": dsl.Dataset(**_artifact(run_a, "ingest-op", "table",
                                                      {**TABLE, "md5": "a" * 32}))},
        "train-op": {"model": dsl.Model(**_artifact(run_a, "train-op", "model", {
            "framework": "sklearn", "estimator": "svm", "device": "cpu"}))},
        "evaluate-op": {"evaluation": dsl.Artifact(**_artifact(run_a, "evaluate-op",
                                                              "evaluation", {}))},
    }
    reused = {}
    for i, (task, outputs) in enumerate(entries.items()):
        key = f"{i:x}" * 64
        cache.put(key, outputs)  # as kfp.local stores a task's outputs
        reused[task] = cache_entry(root / ".kfp_cache", key[:12])

    run_c = root / "training-2026-01-01-00-02-00-000003"
    write_task(run_c, "gate-op", {"decision": {"passed": True, "reason": "ok"}})
    write_task(run_c, "package-op", {"model_version": {"version": "v-c"}})
    s = read_summary(run_c, reused)
    assert s["dataset"]["md5"] == "a" * 32
    assert s["model"]["estimator"] == "svm"
    assert s["metrics"] == {"accuracy": 0.93}
    assert s["report"] == str(run_a / "evaluate-op" / "evaluation" / "report.html")
    assert s["model_version"]["path"] == str(run_c / "package-op" / "model_version")
    # Without the record of what it reused, nothing is borrowed from another run.
    assert read_summary(run_c) == {"gate": {"passed": True, "reason": "ok"},
                                   "model_version": s["model_version"]}


def test_console_filter_records_cache_hits_as_kfp_local_logs_them():
    terminal, log = io.StringIO(), io.StringIO()
    tee = _ConsoleFilter(terminal, log)
    tee.write("10:26:16.100 - INFO - Task ingest-op cache hit (key=d840b18b5f7c); "
              "skipping execution.\n")
    tee.write("10:26:16.181 - INFO - Executing task \x1b[96m'gate-op'\x1b[0m\n")
    assert tee.reused == [("ingest-op", "d840b18b5f7c")]
    assert tee.executed == ["gate-op"]
    assert "↺ ingest-op reused from the kfp.local cache" in terminal.getvalue()
    assert "cache hit (key=d840b18b5f7c)" in log.getvalue()


def test_cache_entry_is_the_one_file_with_that_key_prefix(tmp_path):
    (tmp_path / f"{'ab' * 32}.json").write_text("{}")
    (tmp_path / f"{'cd' * 6}{'0' * 52}.json").write_text("{}")
    (tmp_path / f"{'cd' * 6}{'1' * 52}.json").write_text("{}")
    assert cache_entry(tmp_path, "ab" * 6) == tmp_path / f"{'ab' * 32}.json"
    assert cache_entry(tmp_path, "cd" * 6) is None  # ambiguous
    assert cache_entry(tmp_path, "ef" * 6) is None
    assert cache_entry(tmp_path, "") is None


def test_console_filter_times_parallel_iterations_of_one_task_apart():
    """A ParallelFor's iterations all log as the same task: each start is paired with the
    next end in turn, and every iteration counts as executed."""
    terminal, log = io.StringIO(), io.StringIO()
    tee = _ConsoleFilter(terminal, log)
    for _ in range(3):
        tee.write("10:26:16.181 - INFO - Executing task \x1b[96m'trial-op'\x1b[0m\n")
    for _ in range(3):
        tee.write("10:26:18.000 - INFO - Task \x1b[96m'trial-op'\x1b[0m finished with status "
                  "\x1b[92mSUCCESS\x1b[0m\n")
    assert tee.executed == ["trial-op"] * 3
    assert tee.started["trial-op"] == []  # every start matched an end
    assert terminal.getvalue().count("✓ trial-op success") == 3
