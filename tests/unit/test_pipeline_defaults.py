"""Settings reach the stages exactly as params.yaml wrote them (components.config,
pipelines.training).

A kfp ``dict`` parameter would pass through a protobuf Struct: keys sorted (a file's column
order lost), nulls dropped, every int made a float. So each section travels as its JSON text
(``to_parameter``) and the tasks decode it once (``section``). These tests check that every
section, rebuilt the way the tasks rebuild it, equals the section it came from, types and
order included, also after kfp compiled it into the pipeline's IR.
"""

from __future__ import annotations

import json

import pytest
import yaml

from components.config import (
    SECTIONS,
    dataset_spec,
    from_parameter,
    load_params,
    section,
    to_parameter,
)
from pipelines.training import build, pipeline_defaults

VARIANTS = {
    "defaults": [],
    "checkpoints off (null)": ["train.checkpoint_dir=null"],
    "checkpoints off (empty)": ['train.checkpoint_dir=""'],
    "torch, checkpoints off": ["train.framework=torch", "train.estimator=mlp",
                               "train.checkpoint_dir=null"],
    "file dataset": ["dataset=auto_mpg"],
    "cifar10, a row limit": ["dataset=cifar10", "datasets.cifar10.max_rows=500"],
}


@pytest.fixture(params=list(VARIANTS))
def params(request, repo):
    return load_params(repo / "params.yaml", VARIANTS[request.param])


def _dump(model) -> str:
    return json.dumps(model.model_dump(mode="json", by_alias=True))


def test_every_section_survives_the_pipeline_defaults(params):
    defaults = pipeline_defaults(params)
    for name, model in SECTIONS.items():
        own = getattr(params, "validate_" if name == "validate" else name)
        assert isinstance(own, model)
        rebuilt = section(name, defaults[name])
        assert rebuilt == own, name
        assert _dump(rebuilt) == _dump(own), name  # types and key order too
    assert dataset_spec(defaults["dataset"]) == params.dataset_spec


def test_ints_nulls_and_order_survive_compiling(repo, tmp_path):
    """The defaults kfp writes into the compiled IR decode to the very same values."""
    from kfp import compiler

    params = load_params(repo / "params.yaml", ["dataset=auto_mpg",
                                                "datasets.auto_mpg.na_values=[]"])
    path = tmp_path / "training.yaml"
    compiler.Compiler().compile(build(params), str(path))
    inputs = yaml.safe_load(path.read_text())["root"]["inputDefinitions"]["parameters"]
    train = from_parameter(inputs["train"]["defaultValue"])
    forest = train["hyperparameters"]["random_forest"]
    assert forest["n_estimators"] == 200 and type(forest["n_estimators"]) is int
    assert type(train["cv_folds"]) is int
    dataset = from_parameter(inputs["dataset"]["defaultValue"])
    assert list(dataset["columns"]) == list(params.dataset_spec.columns)  # file order
    assert list(dataset["columns"])[:2] == ["mpg", "cylinders"]
    cifar = load_params(repo / "params.yaml", ["dataset=cifar10"])
    assert from_parameter(pipeline_defaults(cifar)["dataset"])["max_rows"] is None  # kept


@pytest.mark.parametrize("value", ["null", '""'])
def test_checkpoints_off_stays_off_in_the_pipeline(repo, value):
    params = load_params(repo / "params.yaml", [f"train.checkpoint_dir={value}"])
    assert params.train.checkpoint_dir == ""
    train = pipeline_defaults(params)["train"]
    assert from_parameter(train)["checkpoint_dir"] == ""
    assert section("train", train).checkpoint_dir == ""


def test_checkpoints_default_to_a_folder(repo):
    params = load_params(repo / "params.yaml", ["train.checkpoint_dir=null"])
    assert load_params(repo / "params.yaml").train.checkpoint_dir == "build/checkpoints"
    assert section("train", {}).checkpoint_dir == "build/checkpoints"
    assert params.train.checkpoint_dir == ""


def test_a_parameter_that_is_not_json_names_the_fix():
    from components.errors import SlipwayError

    with pytest.raises(SlipwayError, match="not JSON") as caught:
        section("split", "{test_size: 0.3")
    assert "JSON text" in caught.value.fix
    assert from_parameter(to_parameter({"b": 1, "a": None})) == {"b": 1, "a": None}
