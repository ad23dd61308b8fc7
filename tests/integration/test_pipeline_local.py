"""The whole ``training`` pipeline under kfp.local, as a user runs it.

``python -m pipelines run training`` runs in a subprocess whose working directory is a
temporary copy of params.yaml and data/; kfp.local's SubprocessRunner really runs every task.
Covered: a classification run (the default dataset, breast_cancer) and a regression run
(auto_mpg, the DVC-tracked file): exit status, the run summary, the HTML report with its
embedded plots, the packaged model version (its lineage hashes verify), the version in the
session's BentoML store and metric sanity; a gate rejection (exit 3, nothing packaged); a
mistyped setting and an unknown estimator or hyperparameter (exit 2 before any task, with
"did you mean"); and a data file with a non-numeric value in a numeric column (exit 1, the
ingest task names column and value).
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

from components.errors import SlipwayError
from components.io import file_hash
from components.package import verify
from components.stages import PIPELINE_STAGES

pytestmark = [
    pytest.mark.slow,
    # bentoml (imported here to read the store) compiles gitignore patterns with pathspec.
    pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning"),
]

DATA_FILE = Path("data") / "auto-mpg.data"
STAGES = PIPELINE_STAGES["training"]
_SUMMARY_LINE = re.compile(r"^  (\S.*?)\s{2,}(\S.*)$")


@dataclass
class Run:
    """One ``python -m pipelines run training`` and what it printed."""

    cwd: Path
    rc: int
    output: str
    summary: dict[str, str]

    def path(self, key: str) -> Path:
        """A path from the summary (printed relative to the working directory)."""
        path = Path(self.summary[key])
        return path if path.is_absolute() else self.cwd / path

    def metrics(self) -> dict[str, float]:
        pairs = (item.rsplit(" ", 1) for item in self.summary["test metrics"].split(", "))
        return {name: float(value) for name, value in pairs}


def parse_summary(output: str) -> dict[str, str]:
    """The ``key   value`` lines after the ``=====`` rule of the run summary."""
    _, rule, tail = output.partition("=" * 72)
    assert rule, f"no run summary in the output:\n{output}"
    summary = {}
    for line in tail.splitlines():
        if m := _SUMMARY_LINE.match(line):
            summary[m.group(1)] = m.group(2)
    return summary


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, source_data_file) -> Path:
    """A temporary work tree: params.yaml and the data file (restored, or its seed)."""
    repo = Path(__file__).resolve().parents[2]
    root = tmp_path_factory.mktemp("pipeline-local")
    shutil.copy2(repo / "params.yaml", root / "params.yaml")
    (root / "data").mkdir()
    shutil.copyfile(source_data_file, root / DATA_FILE)
    shutil.copyfile(repo / "data" / "auto-mpg.data.dvc", root / "data" / "auto-mpg.data.dvc")
    return root


@pytest.fixture(scope="module")
def run_training(workdir, run_cmd, python_cmd):
    def run(*settings: str, expect: int | None = 0, root: str = "kfp") -> Run:
        args = [*python_cmd, "-m", "pipelines", "run", "training",
                "--set", f"kfp.pipeline_root={workdir / root}"]
        for setting in settings:
            args += ["--set", setting]
        proc = run_cmd(args, cwd=workdir, expect=expect)
        summary = parse_summary(proc.stdout) if "=" * 72 in proc.stdout else {}
        return Run(workdir, proc.returncode, proc.output, summary)

    return run


def _name() -> str:
    return "t-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def classification(run_training) -> tuple[Run, str]:
    """breast_cancer (params.yaml's default; binary classification), its own model name."""
    prefix = _name()
    run = run_training("dataset=breast_cancer", f"package.model_name={prefix}-{{dataset}}-{{task}}")
    return run, f"{prefix}-breast-cancer-classification"


@pytest.fixture(scope="module")
def regression(run_training) -> tuple[Run, str]:
    """auto_mpg (regression) from the DVC-tracked file, its own model name."""
    prefix = _name()
    run = run_training("dataset=auto_mpg", f"package.model_name={prefix}-{{dataset}}-{{task}}")
    return run, f"{prefix}-auto-mpg-regression"


@pytest.fixture(scope="module")
def estimator(workdir) -> str:
    """params.yaml's framework/estimator (the runs use the default model)."""
    train = yaml.safe_load((workdir / "params.yaml").read_text())["train"]
    return f"{train['framework']}/{train['estimator']}"


@pytest.fixture(params=["classification", "regression"])
def finished(request) -> tuple[Run, str, str]:
    run, model_name = request.getfixturevalue(request.param)
    return run, model_name, request.param


def test_run_succeeds_with_every_task_and_a_summary(finished, estimator):
    run, model_name, task = finished
    assert run.rc == 0
    assert "pipeline training succeeded" in run.output
    for stage in STAGES:
        assert f"✓ {stage}-op success" in run.output, f"{stage} did not succeed:\n{run.output}"
    s = run.summary
    expected = {"classification": r"breast_cancer \(sklearn:breast_cancer\), 569 rows",
                "regression": r"auto_mpg \(file:data/auto-mpg.data\), 398 rows"}[task]
    assert re.fullmatch(expected + r", md5 [0-9a-f]{32}", s["dataset"]), s["dataset"]
    assert s["model"].startswith(f"{estimator} on "), s["model"]
    assert s["gate"].startswith("passed: "), s["gate"]
    assert re.fullmatch(r"[0-9a-f]{12}", s["model version"]), s["model version"]
    assert s["BentoML model"] == f"{model_name}:{s['model version']}"
    assert run.path("files").is_dir()
    assert run.path("full log").is_file()


def test_report_is_html_with_embedded_plots(finished):
    run, _, task = finished
    report = run.path("report")
    assert report.is_file() and report.suffix == ".html"
    page = report.read_text()
    assert page.lstrip().lower().startswith("<!doctype html") or "<html" in page.lower()
    images = re.findall(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # classification: confusion matrix, per-class accuracy, ROC (binary); regression: two.
    assert len(images) >= (3 if task == "classification" else 2), f"{len(images)} images"
    for encoded in images:
        assert base64.b64decode(encoded).startswith(b"\x89PNG\r\n\x1a\n")
    # The report's metrics are the ones the summary printed.
    metrics = json.loads((report.parent / "metrics.json").read_text())
    for name, value in run.metrics().items():
        assert metrics[name] == pytest.approx(value, abs=5e-5)


def test_model_version_lineage_verifies(finished, estimator, tmp_path):
    run, _, task = finished
    version_dir = run.path("files")
    lineage = verify(version_dir)  # every file against its recorded sha256
    assert lineage["version"] == run.summary["model version"]
    assert lineage["task"] == task
    assert set(lineage["files"]) >= {"model.skops", "preprocessor.skops", "schema.json",
                                     "metrics.json", "training.json", "trainer.json"}
    md5 = run.summary["dataset"].rsplit("md5 ", 1)[1]
    assert lineage["dataset"]["md5"] == md5
    assert f"{lineage['framework']}/{lineage['estimator']}" == estimator
    assert lineage["params"]["train"]["estimator"] == estimator.split("/")[1]
    assert lineage["metrics"] == json.loads((version_dir / "metrics.json").read_text())
    for name, value in run.metrics().items():
        assert lineage["metrics"][name] == pytest.approx(value, abs=5e-5)
    if task == "regression":
        # The DVC-tracked file's md5, as in its .dvc file.
        dvc_md5 = yaml.safe_load((run.cwd / "data" / "auto-mpg.data.dvc").read_text())
        assert md5 == dvc_md5["outs"][0]["md5"] == file_hash(run.cwd / DATA_FILE, "md5")
    # The check can fail: a changed byte in a copy is caught.
    tampered = tmp_path / "version"
    shutil.copytree(version_dir, tampered)
    (tampered / "schema.json").write_text((tampered / "schema.json").read_text() + " ")
    with pytest.raises(SlipwayError, match="schema.json does not match"):
        verify(tampered)


def test_version_is_in_the_bentoml_store(finished):
    import bentoml

    run, model_name, task = finished
    model = bentoml.models.get(run.summary["BentoML model"])
    assert str(model.tag) == run.summary["BentoML model"]
    # The store entry holds the version's files, unchanged, plus BentoML's model.yaml.
    store, version_dir = Path(model.path), run.path("files")
    lineage = json.loads((store / "lineage.json").read_text())
    assert (store / "lineage.json").read_bytes() == (version_dir / "lineage.json").read_bytes()
    assert lineage["version"] == run.summary["model version"]
    assert {p.name for p in store.iterdir()} == {*lineage["files"], "lineage.json", "model.yaml"}
    for name, digest in lineage["files"].items():
        assert file_hash(store / name, "sha256") == digest, name
    assert model.info.labels["task"] == task
    assert model.info.metadata["dataset_md5"] == run.summary["dataset"].rsplit("md5 ", 1)[1]
    assert [str(m.tag) for m in bentoml.models.list(model_name)] == [str(model.tag)]


def test_metrics_are_sane(finished):
    run, _, task = finished
    metrics = run.metrics()
    if task == "classification":
        assert set(metrics) >= {"accuracy", "f1_macro", "precision_macro", "recall_macro"}
        assert metrics["accuracy"] > 0.85
    else:
        assert set(metrics) == {"mae", "rmse", "r2"}
        assert metrics["r2"] > 0.7
        assert 0 < metrics["mae"] <= metrics["rmse"]


def test_gate_rejection_exits_3_and_packages_nothing(run_training):
    import bentoml

    model_name = _name()
    run = run_training("dataset=iris", "gate.classification.threshold=0.999",
                       f"package.model_name={model_name}", expect=3)
    assert re.search(r"gate: REJECTED: test accuracy [0-9.]+ misses the threshold: it must be "
                     r"at least 0.999", run.output), run.output
    assert run.summary["gate"].startswith("REJECTED: test accuracy")
    assert "▸ package-op" not in run.output  # the task never started
    assert "model version" not in run.summary and "BentoML model" not in run.summary
    run_dir = run.path("report").parents[2]  # <run>/evaluate-op/evaluation/report.html
    assert (run_dir / "gate-op").is_dir() and not (run_dir / "package-op").exists()
    assert model_name not in {m.tag.name for m in bentoml.models.list()}


def test_bad_setting_exits_2_before_any_task(run_training, workdir):
    run = run_training("train.estimatr=svm", expect=2, root="kfp-bad-setting")
    assert "train.estimatr: unknown key (did you mean 'estimator'?" in run.output
    assert "Running pipeline" not in run.output and "▸" not in run.output
    assert not (workdir / "kfp-bad-setting").exists()  # the runner never started


@pytest.mark.parametrize(("setting", "message"), [
    ("train.estimator=svn", "train: unknown estimator 'svn' for framework sklearn\n"
                            "  fix: set train.estimator in params.yaml: did you mean 'svm'?"),
    ("train.hyperparameters.random_forest.n_estimatorz=5",
     "train: RandomForestClassifier has no hyperparameter(s) n_estimatorz"),
])
def test_bad_model_to_train_exits_2_before_any_task(run_training, workdir, setting, message):
    run = run_training(setting, expect=2, root="kfp-bad-model")
    assert f"error: {message}" in run.output
    assert "Running pipeline" not in run.output and "▸" not in run.output
    assert not (workdir / "kfp-bad-model").exists()  # the runner never started


def test_bad_data_value_fails_ingest_naming_column_and_value(run_training, workdir):
    lines = (workdir / DATA_FILE).read_text().splitlines(keepends=True)
    horsepower = lines[2].split()[3]  # line 3, fourth field
    lines[2] = re.sub(r"^(\s*(?:\S+\s+){3})\S+", r"\1eighty", lines[2])
    assert lines[2].split()[3] == "eighty" and horsepower != "eighty"
    (workdir / "bad-mpg.data").write_text("".join(lines))
    run = run_training("dataset=auto_mpg", "datasets.auto_mpg.path=bad-mpg.data", expect=1,
                       root="kfp-bad-data")
    assert ("error: ingest: column 'horsepower' of bad-mpg.data is numeric but data row 3 "
            "(line 3) holds 'eighty'") in run.output
    assert "✗ ingest-op failure" in run.output
    assert run.summary["failed task"].startswith("ingest-op")
    assert "▸ validate-op" not in run.output  # nothing after ingest ran
