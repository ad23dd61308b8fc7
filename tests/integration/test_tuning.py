"""The ``tuning`` pipeline: run locally under kfp.local, and compiled.

``python -m pipelines run tuning`` on iris, in a temporary work tree, with a grid of four
trials (k-NN with two ``n_neighbors``, logistic regression with two ``C``; the search space
goes through ``--set`` as one YAML flow value), ``tune.parallelism=2`` and a model name of its
own. Checked: exit status; the four trial tasks (their directories, the log, at most two at
once); the summary's best trial; select's ``best`` artifact (four results, the best has the
highest validation score, ties broken by CV); the retrained model's training record (fit on
train + validation, with the tuning record); the evaluation report's tuning table and
embedded plot; the version in the session's BentoML store, whose lineage records the best
trial's settings. Compiled: the ``dsl.ParallelFor`` over the trials output with the
parallelism from params, and select's ``dsl.Collected`` input.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from components.config import Candidate, load_params
from components.io import read_json, read_table
from pipelines.cli import compile_all

REPO = Path(__file__).resolve().parents[2]
SPACE = ("[{estimator: knn, hyperparameters: {n_neighbors: [3, 9]}}, "
         "{estimator: logistic_regression, hyperparameters: {C: [0.1, 10.0]}}]")
SETTINGS = ("dataset=iris", "tune.method=grid", f"tune.search_space={SPACE}",
            "tune.parallelism=2", "train.cv_folds=2")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY_LINE = re.compile(r"^  (\S.*?)\s{2,}(\S.*)$")


@dataclass
class TuningRun:
    cwd: Path
    output: str
    stdout: str
    summary: dict[str, str]
    model_name: str

    def path(self, key: str) -> Path:
        path = Path(self.summary[key])
        return path if path.is_absolute() else self.cwd / path

    @property
    def run_dir(self) -> Path:
        return self.path("files").parents[1]  # <run>/package-op/model_version

    def log(self) -> str:
        return _ANSI.sub("", self.path("full log").read_text())


def parse_summary(output: str) -> dict[str, str]:
    _, rule, tail = output.partition("=" * 72)
    assert rule, f"no run summary in the output:\n{output}"
    return {m.group(1): m.group(2) for line in tail.splitlines()
            if (m := _SUMMARY_LINE.match(line))}


def test_search_space_goes_through_set_as_one_yaml_value():
    params = load_params(REPO / "params.yaml", list(SETTINGS))
    assert params.tune.method == "grid" and params.tune.parallelism == 2
    assert list(params.tune.search_space) == [
        Candidate(estimator="knn", hyperparameters={"n_neighbors": [3, 9]}),
        Candidate(estimator="logistic_regression", hyperparameters={"C": [0.1, 10.0]}),
    ]


# ---- compiled ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    """The tuning pipeline compiled with parallelism 3 (not params.yaml's 2)."""
    params = load_params(REPO / "params.yaml", ["tune.parallelism=3"])
    (path,) = compile_all(params, tmp_path_factory.mktemp("compile-tuning"), ["tuning"])
    return next(yaml.safe_load_all(path.read_text()))


def test_trials_fan_out_with_parallel_for(compiled):
    assert compiled["pipelineInfo"]["name"] == "tuning"
    root = compiled["root"]["dag"]["tasks"]
    (loop_name,) = [name for name in root if name.startswith("for-loop")]
    loop = root[loop_name]
    assert loop["iteratorPolicy"] == {"parallelismLimit": 3}
    iterator = loop["parameterIterator"]
    channel = iterator["items"]["inputParameter"]
    assert loop["inputs"]["parameters"][channel] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "trials-op"}}
    assert set(loop["dependentTasks"]) == {"trials-op", "preprocess-op"}
    body = compiled["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert set(body) == {"trial-op"}
    trial = body["trial-op"]["inputs"]
    assert trial["parameters"]["trial"] == {"componentInputParameter": iterator["itemInput"]}
    assert trial["artifacts"]["train"]["componentInputArtifact"].endswith("train_features")
    assert trial["artifacts"]["val"]["componentInputArtifact"].endswith("val_features")
    # The trials are the output of trials-op, a list of dicts.
    outputs = compiled["components"]["comp-trials-op"]["outputDefinitions"]["parameters"]
    assert outputs == {"Output": {"parameterType": "LIST"}}


def test_select_collects_every_trials_result(compiled):
    root = compiled["root"]["dag"]["tasks"]
    (loop_name,) = [name for name in root if name.startswith("for-loop")]
    loop_outputs = compiled["components"][root[loop_name]["componentRef"]["name"]]["dag"][
        "outputs"]["artifacts"]
    (collected_key, collected), = loop_outputs.items()
    assert collected == {"artifactSelectors": [{"outputArtifactKey": "result",
                                                "producerSubtask": "trial-op"}]}
    select = root["select-op"]
    assert select["inputs"]["artifacts"]["results"] == {
        "taskOutputArtifact": {"outputArtifactKey": collected_key, "producerTask": loop_name}}
    assert select["dependentTasks"] == [loop_name]
    results = compiled["components"]["comp-select-op"]["inputDefinitions"]["artifacts"]["results"]
    assert results["isArtifactList"] is True
    retrain = root["retrain-op"]["inputs"]["artifacts"]["tuning"]
    assert retrain == {"taskOutputArtifact": {"outputArtifactKey": "best",
                                              "producerTask": "select-op"}}


def test_tuning_tasks_have_display_names_and_profiles(compiled):
    root = compiled["root"]["dag"]["tasks"]
    assert root["trials-op"]["taskInfo"]["name"] == "Draw trials"
    assert root["select-op"]["taskInfo"]["name"] == "Select best trial"
    assert root["retrain-op"]["taskInfo"]["name"] == "Retrain best on train + val"
    executors = compiled["deploymentSpec"]["executors"]
    # params.yaml: trial and retrain on cpu-large, the rest on the default cpu-small.
    assert executors["exec-trial-op"]["container"]["resources"]["resourceCpuRequest"] == "4"
    assert executors["exec-retrain-op"]["container"]["resources"]["resourceCpuRequest"] == "4"
    assert executors["exec-select-op"]["container"]["resources"]["resourceCpuRequest"] == "500m"


# ---- run locally ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tuning_run(tmp_path_factory, run_cmd, python_cmd) -> TuningRun:
    root = tmp_path_factory.mktemp("tuning-local")
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    model_name = "t-" + uuid.uuid4().hex[:8]
    args = [*python_cmd, "-m", "pipelines", "run", "tuning",
            "--set", f"kfp.pipeline_root={root / 'kfp'}",
            "--set", f"package.model_name={model_name}"]
    for setting in SETTINGS:
        args += ["--set", setting]
    proc = run_cmd(args, cwd=root, timeout=600)
    return TuningRun(root, proc.output, proc.stdout, parse_summary(proc.stdout), model_name)


def _trial_dirs(run: TuningRun) -> list[Path]:
    return sorted(run.run_dir.glob("for-loop-*-iteration-*/trial-op"))


@pytest.fixture(scope="module")
def trial_results(tuning_run) -> list[dict]:
    return sorted((read_json(d / "result") for d in _trial_dirs(tuning_run)),
                  key=lambda r: r["trial"])


@pytest.fixture(scope="module")
def selected(tuning_run) -> dict:
    return read_json(tuning_run.run_dir / "select-op" / "best")


@pytest.mark.slow
def test_run_succeeds(tuning_run):
    assert "pipeline tuning succeeded" in tuning_run.stdout
    assert "trials: 4 to run" in tuning_run.stdout
    for task in ("ingest", "validate", "split", "preprocess", "trials"):  # before the fan-out
        assert f"✓ {task}-op success" in tuning_run.stdout, task
    # Every task wrote its executor output (kfp.local writes it when the task succeeds).
    done = {p.parent.name for p in tuning_run.run_dir.glob("*/executor_output.json")}
    assert done == {f"{t}-op" for t in ("ingest", "validate", "split", "preprocess", "trials",
                                        "select", "retrain", "evaluate", "gate", "package")}
    assert tuning_run.summary["gate"].startswith("passed: ")


@pytest.mark.slow
def test_four_trial_tasks_ran_two_at_a_time(tuning_run, trial_results):
    dirs = _trial_dirs(tuning_run)
    assert len(dirs) == 4
    assert all((d / "executor_output.json").is_file() for d in dirs)
    # The four trials of the grid, with params.yaml's other settings of each estimator.
    assert [(r["trial"], r["estimator"], r["hyperparameters"]) for r in trial_results] == [
        (0, "knn", {"n_neighbors": 3, "weights": "distance"}),
        (1, "knn", {"n_neighbors": 9, "weights": "distance"}),
        (2, "logistic_regression", {"C": 0.1, "max_iter": 2000}),
        (3, "logistic_regression", {"C": 10.0, "max_iter": 2000}),
    ]
    for r in trial_results:
        assert r["framework"] == "sklearn" and r["metric"] == "accuracy"
        assert 0.5 < r["cv_mean"] <= 1 and 0.5 < r["val_score"] <= 1
    # The log: each task's start, and the line each trial prints as it finishes. (kfp.local's
    # own "finished" lines are not counted: concurrent tasks can lose them, see below.)
    events = re.findall(r"Executing task 'trial-op'|"
                        r"trial (\d) sklearn/\w+: cv \d\.\d{4}, validation \d\.\d{4}",
                        tuning_run.log())
    assert events.count("") == 4  # "" marks a start
    assert sorted(e for e in events if e) == ["0", "1", "2", "3"]
    running = peak = 0
    for finished in events:
        running += -1 if finished else 1
        peak = max(peak, running)
    assert peak == 2  # tune.parallelism: two side by side, never more


@pytest.mark.slow
def test_terminal_shows_every_trial(tuning_run):
    assert tuning_run.stdout.count("▸ trial-op") == 4
    for trial in range(4):
        assert re.search(rf"^    trial {trial} sklearn/", tuning_run.stdout, re.M), trial


@pytest.mark.slow
def test_summary_names_the_best_trial(tuning_run, trial_results):
    best = max(trial_results, key=lambda r: (r["val_score"], r["cv_mean"]))
    assert tuning_run.summary["best trial"] == (
        f"{best['trial']}: sklearn/{best['estimator']}, validation {best['val_score']:.4f} "
        "(all trials: see the report)")
    assert tuning_run.summary["model"] == f"sklearn/{best['estimator']} on cpu"


@pytest.mark.slow
def test_select_chooses_the_best_on_validation(selected, trial_results, tuning_run):
    assert sorted(selected["results"], key=lambda r: r["trial"]) == trial_results
    best = selected["best"]
    assert best in trial_results
    top = max(r["val_score"] for r in trial_results)
    assert best["val_score"] == top
    # Ties on validation go to the better CV mean.
    assert best["cv_mean"] == max(r["cv_mean"] for r in trial_results if r["val_score"] == top)
    table = (tuning_run.run_dir / "select-op" / "table").read_text()
    assert table.startswith(f"## Tuning: 4 trials, best trial {best['trial']}")
    assert f"| {best['trial']} **best** | sklearn/{best['estimator']} |" in table


@pytest.mark.slow
def test_retrained_model_is_fit_on_train_and_val(tuning_run, selected):
    record = read_json(tuning_run.run_dir / "retrain-op" / "model" / "training.json")
    assert record["fit_on"] == "train+val"
    assert record["tuning"] == selected
    best = selected["best"]
    assert (record["framework"], record["estimator"]) == (best["framework"], best["estimator"])
    assert record["hyperparameters"] == best["hyperparameters"]
    prep = tuning_run.run_dir / "preprocess-op"
    rows = [len(read_table(prep / f"{split}_features")[0]) for split in ("train", "val")]
    assert record["rows"] == sum(rows) and rows[1] > 0
    assert "val_score" not in record  # validation is in the fit: no score on it
    packaged = read_json(tuning_run.path("files") / "training.json")
    assert packaged["fit_on"] == "train+val" and packaged["tuning"]["best"] == best


@pytest.mark.slow
def test_report_has_the_tuning_table_and_plot(tuning_run, selected):
    page = tuning_run.path("report").read_text()
    assert "<h2>Tuning (4 trials)</h2>" in page
    best = selected["best"]["trial"]
    for r in selected["results"]:
        mark = " (best)" if r["trial"] == best else ""
        assert (f"<tr><th>{r['trial']}{mark}</th><td>sklearn/{r['estimator']}</td>") in page
    assert page.count("(best)</th>") == 1
    (encoded,) = re.findall(r'<img alt="tuning_trials" src="data:image/png;base64,'
                            r'([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(encoded).startswith(b"\x89PNG\r\n\x1a\n")
    summary_md = (tuning_run.path("report").parent / "summary.md").read_text()
    assert f"## Tuning: 4 trials, best trial {best}" in summary_md


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")
def test_version_is_in_the_bentoml_store(tuning_run, selected):
    import bentoml

    tag = tuning_run.summary["BentoML model"]
    assert tag == f"{tuning_run.model_name}:{tuning_run.summary['model version']}"
    model = bentoml.models.get(tag)
    store = Path(model.path)
    assert (store / "lineage.json").read_bytes() \
        == (tuning_run.path("files") / "lineage.json").read_bytes()
    lineage = json.loads((store / "lineage.json").read_text())
    assert lineage["estimator"] == selected["best"]["estimator"]
    assert read_json(store / "training.json")["fit_on"] == "train+val"
    assert [str(m.tag) for m in bentoml.models.list(tuning_run.model_name)] == [tag]


@pytest.mark.slow
def test_lineage_records_the_chosen_trials_settings(tuning_run, selected):
    """The packaged version's params are those the model was fitted with: the best trial's
    framework, estimator and hyperparameters over the base ``train`` section."""
    train = read_json(tuning_run.path("files") / "lineage.json")["params"]["train"]
    best = selected["best"]
    assert (train["framework"], train["estimator"]) == (best["framework"], best["estimator"])
    assert train["hyperparameters"][best["estimator"]] == best["hyperparameters"]
    assert train["cv_folds"] == 2  # the base section's other settings are kept
    base = load_params(REPO / "params.yaml", list(SETTINGS)).train
    assert train["hyperparameters"]["random_forest"] == base.hyperparameters["random_forest"]
