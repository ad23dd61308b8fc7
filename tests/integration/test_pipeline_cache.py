"""The content-keyed cache of local runs, under a real kfp.local (pipelines.local.run).

The real ``training`` pipeline (auto_mpg, a file dataset, and a linear model to keep it
quick) runs in this process as ``make run`` runs it, in a temporary pipeline root, with its
data file copied into a temporary data root. Each run says which tasks it executed and which
the cache served; the cache key must change exactly when what a task depends on changes:
the bytes of the data (changed in place, same path and size), a setting, the stage's code.
Gate and package are never reused. Then the run summary: it shows this run's results only,
with and without the cache.
"""

# No `from __future__ import annotations` here: kfp reads the annotations as objects.
import io
import shutil
from pathlib import Path

import pytest

from components import stages
from components.config import load_params
from pipelines import local
from pipelines.training import build

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TASKS = {key: stages.stage(key).task for key in stages.PIPELINE_STAGES["training"]}
ALWAYS_RUN = {TASKS["gate"], TASKS["package"]}
QUICK = ["dataset=auto_mpg", "train.estimator=linear", "train.cv_folds=2",
         "package.bentoml_store=false"]


@pytest.fixture
def area(tmp_path, source_data_file):
    (tmp_path / "data").mkdir()
    shutil.copy(source_data_file, tmp_path / "data" / "auto-mpg.data")
    return tmp_path


def run(area: Path, *settings: str, cache: bool = True) -> local.RunResult:
    params = load_params(REPO / "params.yaml", [*QUICK, f"kfp.pipeline_root={area / 'kfp'}",
                                                *settings])
    result = local.run(build(params), params, local.arguments(params, area, REPO),
                       terminal=io.StringIO(), cache=cache)
    assert result.ok, result.log.read_text()[-3000:]
    return result


def tasks(*keys: str) -> set[str]:
    return {TASKS[k] for k in keys}


def test_the_cache_reruns_exactly_what_a_change_affects(area, monkeypatch):
    cold = run(area)
    assert cold.summary["reused"] == []
    assert set(cold.summary["executed"]) == set(TASKS.values())

    again = run(area)
    assert set(again.summary["executed"]) == ALWAYS_RUN
    assert set(again.summary["reused"]) == set(TASKS.values()) - ALWAYS_RUN
    assert again.summary["model_version"]["version"] == cold.summary["model_version"]["version"]
    assert again.summary["metrics"] == cold.summary["metrics"]

    # One byte of the data file changed in place: same path, same size, other content.
    data = area / "data" / "auto-mpg.data"
    text = data.read_text()
    assert "18.0   8   307.0" in text
    data.write_text(text.replace("18.0   8   307.0", "19.0   8   307.0", 1))
    changed = run(area)
    assert changed.summary["reused"] == []
    assert changed.summary["dataset"]["md5"] != cold.summary["dataset"]["md5"]

    # A setting: only the tasks that read the train section, and those after them.
    tuned = run(area, "train.hyperparameters.linear.alpha=0.5")
    assert set(tuned.summary["executed"]) == tasks("train", "evaluate") | ALWAYS_RUN
    assert set(tuned.summary["reused"]) == tasks("ingest", "validate", "split", "preprocess")

    # Stage code: a new version of the evaluate stage's code reruns evaluate (and the
    # always-run tasks after it), nothing before it.
    real = stages.code_version
    monkeypatch.setattr(
        stages, "code_version",
        lambda key, op=None: real(key, op) + ("-edited" if key == "evaluate" else ""))
    edited = run(area, "train.hyperparameters.linear.alpha=0.5")
    assert set(edited.summary["executed"]) == tasks("evaluate") | ALWAYS_RUN

    off = run(area, "train.hyperparameters.linear.alpha=0.5", cache=False)
    assert off.summary["reused"] == [] and set(off.summary["executed"]) == set(TASKS.values())


def test_code_version_follows_the_source_a_stage_imports(tmp_path, monkeypatch):
    """code_version hashes the stage's core and the components modules it (or its kfp
    body) imports: editing one changes exactly the stages that import it."""
    package = tmp_path / "components"
    shutil.copytree(stages.PACKAGE_DIR, package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(stages, "PACKAGE_DIR", package)
    before = {key: stages.code_version.__wrapped__(key) for key in stages.STAGES}
    with open(package / "trainers" / "sklearn.py", "a") as f:
        f.write("\n# an edit\n")
    after = {key: stages.code_version.__wrapped__(key) for key in stages.STAGES}
    changed = {key for key in stages.STAGES if before[key] != after[key]}
    assert changed == {"train", "trials", "trial", "select", "retrain", "evaluate"}


def test_summary_shows_this_runs_results_with_and_without_the_cache(area):
    first = run(area, "train.estimator=linear")
    second_params = ["validate.min_rows=100000"]
    params = load_params(REPO / "params.yaml", [*QUICK, f"kfp.pipeline_root={area / 'kfp'}",
                                                *second_params])
    second = local.run(build(params), params, local.arguments(params, area, REPO),
                       terminal=io.StringIO())
    assert not second.ok and second.failed_tasks == [TASKS["validate"]]
    assert second.summary["reused"] == [TASKS["ingest"]]
    assert second.summary["dataset"] == first.summary["dataset"]
    assert "model_version" not in second.summary and "metrics" not in second.summary
    assert f"Task {TASKS['ingest']} cache hit (key=" in second.log.read_text()

    (area / "data" / "auto-mpg.data").write_text("")  # ingest fails on an empty file
    params = load_params(REPO / "params.yaml", [*QUICK, f"kfp.pipeline_root={area / 'kfp'}"])
    third = local.run(build(params), params, local.arguments(params, area, REPO),
                      terminal=io.StringIO(), cache=False)
    assert not third.ok and third.failed_tasks == [TASKS["ingest"]]
    assert third.run_dir not in (first.run_dir, second.run_dir)
    assert "dataset" not in third.summary and third.summary["reused"] == []
