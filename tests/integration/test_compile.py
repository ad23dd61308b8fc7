"""Compiling the ``training`` pipeline to KFP IR YAML, and what the YAML holds.

``pipelines.cli.compile_all`` with the settings of params.yaml (and with overrides), parsed
back: the eight stage components and their executors, the artifact type of every output,
pipeline parameters whose defaults are params.yaml's (auto_mpg's columns as ordered
``[name, type]`` pairs), each executor's image by its stage's role, the gate
condition around the package task, display names and caching; and the
``python -m pipelines compile --out-dir`` command writing the same YAML.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.config import from_parameter, load_params
from components.stages import PIPELINE_STAGES, code_version
from components.stages import STAGES as STAGE_GRAPH
from pipelines import PIPELINES
from pipelines.cli import compile_all
from pipelines.images import image_ref

REPO = Path(__file__).resolve().parents[2]
STAGES = PIPELINE_STAGES["training"]  # from the stage graph

# component -> {output artifact: schema title}
OUTPUT_TYPES = {
    "ingest": {"table": "system.Dataset"},
    "validate": {"report": "system.Markdown"},
    "split": {"train": "system.Dataset", "val": "system.Dataset", "test": "system.Dataset"},
    "preprocess": {"transformer": "system.Model", "train_features": "system.Dataset",
                   "val_features": "system.Dataset", "test_features": "system.Dataset"},
    "train": {"model": "system.Model", "cv_metrics": "system.Metrics"},
    "evaluate": {"metrics": "system.Metrics",
                 "classification_metrics": "system.ClassificationMetrics",
                 "report": "system.HTML", "summary": "system.Markdown",
                 "evaluation": "system.Artifact"},
    "gate": {"decision": "system.Markdown"},
    "package": {"model_version": "system.Model"},
}
# component -> {input artifact: schema title}
INPUT_TYPES = {
    "validate": {"table": "system.Dataset"},
    "split": {"table": "system.Dataset"},
    "preprocess": {"train": "system.Dataset", "val": "system.Dataset", "test": "system.Dataset"},
    "train": {"train": "system.Dataset", "val": "system.Dataset"},
    "evaluate": {"model": "system.Model", "test": "system.Dataset"},
    "gate": {"evaluation": "system.Artifact"},
    "package": {"transformer": "system.Model", "model": "system.Model",
                "evaluation": "system.Artifact"},
}


def compile_to_dict(tmp_path: Path, *overrides: str) -> dict:
    params = load_params(REPO / "params.yaml", list(overrides))
    written = compile_all(params, tmp_path)
    assert sorted(written) == sorted(tmp_path / f"{name}.yaml" for name in PIPELINES)
    assert all(path.is_file() for path in written)
    return yaml.safe_load((tmp_path / "training.yaml").read_text())


def assert_has_settings(compiled, settings, key: str = "") -> None:
    """Every setting of a params.yaml section is in the compiled default, with its value.

    (The default may hold more: keys params.yaml leaves to their built-in defaults.)
    A section's default is its JSON text; decoded, its values have params.yaml's types.
    """
    if isinstance(compiled, str) and isinstance(settings, dict):
        compiled = from_parameter(compiled)
    if isinstance(settings, dict):
        assert isinstance(compiled, dict), f"{key}: {compiled!r} is not a mapping"
        for name, value in settings.items():
            assert name in compiled, f"{key}.{name} missing from the compiled default"
            assert_has_settings(compiled[name], value, f"{key}.{name}")
    else:
        assert compiled == settings, f"{key}: compiled {compiled!r}, params.yaml {settings!r}"
        assert type(compiled) is type(settings), f"{key}: {compiled!r} is not {settings!r}"


@pytest.fixture(scope="module")
def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    """The pipeline compiled with params.yaml as it is."""
    return compile_to_dict(tmp_path_factory.mktemp("compile"))


def _all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline, those inside sub-DAGs (conditions) included."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_every_stage_has_a_component_and_an_executor(spec):
    assert spec["pipelineInfo"]["name"] == "training"
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{s}-op" for s in STAGES}
    for stage in STAGES:
        component = spec["components"][f"comp-{stage}-op"]
        assert component["executorLabel"] == f"exec-{stage}-op"
        container = executors[f"exec-{stage}-op"]["container"]
        assert "--function_to_execute" in container["args"]
        assert container["args"][container["args"].index("--function_to_execute") + 1] \
            == f"{stage}_op"
        # The body imports its core from the installed package (install_kfp_package=False).
        assert f"from components.{stage} import" in container["command"][-1]


def test_artifact_types_of_outputs_and_inputs(spec):
    for stage, outputs in OUTPUT_TYPES.items():
        component = spec["components"][f"comp-{stage}-op"]
        declared = component["outputDefinitions"]["artifacts"]
        assert {name: a["artifactType"]["schemaTitle"] for name, a in declared.items()} \
            == outputs, stage
    for stage, inputs in INPUT_TYPES.items():
        declared = spec["components"][f"comp-{stage}-op"]["inputDefinitions"]["artifacts"]
        assert {name: a["artifactType"]["schemaTitle"] for name, a in declared.items()} \
            == inputs, stage
    gate_outputs = spec["components"]["comp-gate-op"]["outputDefinitions"]["parameters"]
    assert gate_outputs == {"Output": {"parameterType": "BOOLEAN"}}


def test_pipeline_parameters_default_to_params_yaml(spec, raw_params):
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    defaults = {name: p.get("defaultValue") for name, p in inputs.items()}
    assert defaults["dataset_name"] == raw_params["dataset"] == "breast_cancer"
    assert_has_settings(defaults["dataset"], raw_params["datasets"]["breast_cancer"], "dataset")
    for section in ("validate", "split", "preprocess", "train", "gate"):
        assert_has_settings(defaults[section], raw_params[section], section)
        assert inputs[section]["parameterType"] == "STRING"
    assert from_parameter(defaults["train"])["estimator"] == raw_params["train"]["estimator"]
    assert defaults["model_name"] == "breast-cancer-classification"  # {dataset}-{task}
    assert defaults["register_model"] is raw_params["package"]["bentoml_store"]
    assert defaults["data_root"] == defaults["code_dir"] == "."
    for name, parameter in inputs.items():
        assert parameter.get("description"), f"parameter {name} has no description"


def test_overrides_change_the_defaults_and_the_images(tmp_path):
    spec = compile_to_dict(tmp_path, "dataset=auto_mpg", "train.estimator=svm",
                           "kfp.registry=registry.example.com/ml/", "package.model_name=mpg-{task}")
    defaults = {n: p.get("defaultValue")
                for n, p in spec["root"]["inputDefinitions"]["parameters"].items()}
    assert defaults["dataset_name"] == "auto_mpg"
    assert from_parameter(defaults["train"])["estimator"] == "svm"
    assert defaults["model_name"] == "mpg-regression"
    columns = yaml.safe_load((REPO / "params.yaml").read_text())["datasets"]["auto_mpg"]["columns"]
    # In file order (a Struct parameter would sort the keys).
    assert list(from_parameter(defaults["dataset"])["columns"].items()) == list(columns.items())
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    (image,) = images
    assert image.startswith("registry.example.com/ml/slipway-stages:")  # the commit's tag


def test_each_executor_runs_its_roles_image(tmp_path):
    """The stage graph's roles: scikit-learn trains in the stages image; torch's train,
    evaluate and package tasks in the torch image, the data stages still in the stages one.
    An image that was built is named by digest, otherwise by the commit's tag."""
    for framework, estimator, trainer_role in (("sklearn", "random_forest", "stages"),
                                               ("torch", "mlp", "torch")):
        spec = compile_to_dict(tmp_path / framework, f"train.framework={framework}",
                               f"train.estimator={estimator}")
        executors = spec["deploymentSpec"]["executors"]
        for stage in STAGES:
            role = trainer_role if STAGE_GRAPH[stage].role == "trainer" else "stages"
            container = executors[f"exec-{STAGE_GRAPH[stage].task}"]["container"]
            assert container["image"] == image_ref(role), stage
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert env["SLIPWAY_IMAGE"] == image_ref(role)
            assert env["SLIPWAY_CODE_VERSION"] == code_version(stage)
        ref = image_ref("stages")
        assert "@sha256:" in ref or ref.startswith("slipway-stages:")


def test_package_runs_only_inside_the_gate_condition(spec):
    root_tasks = spec["root"]["dag"]["tasks"]
    assert "package-op" not in root_tasks
    conditions = {name: t for name, t in root_tasks.items() if name.startswith("condition-")}
    assert len(conditions) == 1
    (cond_name, cond), = conditions.items()
    assert "gate-op" in cond["dependentTasks"]
    trigger = cond["triggerPolicy"]["condition"]
    expected = "inputs.parameter_values['pipelinechannel--gate-op-Output']==true"
    assert trigger.replace(" ", "") == expected
    gate_output = cond["inputs"]["parameters"]["pipelinechannel--gate-op-Output"]
    assert gate_output["taskOutputParameter"] == {"outputParameterKey": "Output",
                                                  "producerTask": "gate-op"}
    sub_dag = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
    assert set(sub_dag) == {"package-op"}
    assert sub_dag["package-op"]["componentRef"]["name"] == "comp-package-op"
    assert cond["taskInfo"]["name"] == "gate-passed"


def test_task_wiring_display_names_and_caching(spec):
    tasks = _all_tasks(spec)
    for stage, title in ((k, STAGE_GRAPH[k].title) for k in STAGES):
        assert tasks[f"{stage}-op"]["taskInfo"]["name"] == title
    root = spec["root"]["dag"]["tasks"]
    # split waits for validation as well as for ingest's table.
    assert set(root["split-op"]["dependentTasks"]) == {"ingest-op", "validate-op"}
    assert root["train-op"]["inputs"]["artifacts"]["train"]["taskOutputArtifact"] == {
        "outputArtifactKey": "train_features", "producerTask": "preprocess-op"}
    assert root["evaluate-op"]["inputs"]["artifacts"]["test"]["taskOutputArtifact"] == {
        "outputArtifactKey": "test_features", "producerTask": "preprocess-op"}
    # gate compares with the store's current model and package writes to it: never cached.
    for stage in STAGES:
        cached = tasks[f"{stage}-op"].get("cachingOptions", {}).get("enableCache", False)
        assert cached is (stage not in ("gate", "package")), stage


def test_compile_cli_writes_the_same_yaml(tmp_path, run_cmd, python_cmd, spec):
    out = tmp_path / "out dir"
    proc = run_cmd([*python_cmd, "-m", "pipelines", "compile", "--out-dir", out], cwd=REPO,
                   timeout=120)
    for name in PIPELINES:
        assert f"compiled {out / f'{name}.yaml'}" in proc.stdout
    assert yaml.safe_load((out / "training.yaml").read_text()) == spec


def test_compile_cli_rejects_an_unknown_pipeline(tmp_path, run_cmd, python_cmd):
    proc = run_cmd([*python_cmd, "-m", "pipelines", "compile", "trainng", "--out-dir", tmp_path],
                   cwd=REPO, expect=2, timeout=120)
    assert "unknown pipeline 'trainng'" in proc.stderr
    assert "did you mean 'training'?" in proc.stderr
    assert not (tmp_path / "trainng.yaml").exists()


def test_the_remote_secret_reaches_the_tasks_that_use_the_dvc_remote(tmp_path):
    """kfp.remote_secret: ingest (fetches the dataset) and package (pushes the model
    version) get the object store's credentials from a Secret, as environment variables;
    no other task does, and without the setting none does."""
    from pipelines.cli import compile_all

    params = load_params(REPO / "params.yaml", ["kfp.remote_secret=dvc-remote"])
    (path,) = compile_all(params, tmp_path, ["training"])
    docs = list(yaml.safe_load_all(path.read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    with_secret = {name for name, e in executors.items() if e.get("secretAsEnv")}
    assert with_secret == {f"exec-{STAGE_GRAPH[k].task}" for k in ("ingest", "package")}
    (secret,) = executors["exec-ingest-op"]["secretAsEnv"]
    assert {kv["secretKey"]: kv["envVar"] for kv in secret["keyToEnv"]} == {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
    plain = yaml.safe_load_all(compile_all(load_params(REPO / "params.yaml"), tmp_path / "p",
                                           ["training"])[0].read_text())
    assert "secretAsEnv" not in str(list(plain))
