"""Settings: params.yaml loading, overrides, and errors that name the key (components.config)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.config import (
    FileDataset,
    SklearnDataset,
    dataset_spec,
    load_params,
    params_from_dict,
    parse_overrides,
    section,
)
from components.errors import SlipwayError


@pytest.fixture
def params_path(repo) -> Path:
    return repo / "params.yaml"


@pytest.fixture
def raw_params(params_path) -> dict:
    return yaml.safe_load(params_path.read_text())


def test_load_params_reads_the_repository_settings(params_path):
    params = load_params(params_path)

    assert params.dataset == "breast_cancer"
    assert isinstance(params.dataset_spec, SklearnDataset)
    assert params.dataset_spec.task == "classification"
    assert params.validate_.min_rows == 20
    assert params.split.test_size == 0.2
    assert params.train.estimator == "random_forest"
    assert params.train.chosen_hyperparameters() == {"n_estimators": 200, "min_samples_leaf": 1}
    assert params.gate.rule("regression").metric == "r2"
    assert params.model_name() == "breast-cancer-classification"


def test_file_dataset_keeps_declared_column_order(params_path):
    spec = load_params(params_path, ["dataset=auto_mpg"]).dataset_spec

    assert isinstance(spec, FileDataset)
    assert list(spec.columns) == [
        "mpg", "cylinders", "displacement", "horsepower", "weight",
        "acceleration", "model_year", "origin", "car_name",
    ]
    assert spec.na_values == ["?"]


def test_overrides_replace_values_with_yaml_types(params_path):
    params = load_params(params_path, [
        "dataset=auto_mpg", "train.estimator=svm", "split.seed=7", "train.cv_folds=3",
        "train.hyperparameters.svm.C=0.5", "package.bentoml_store=false",
    ])

    assert params.dataset == "auto_mpg"
    assert params.train.estimator == "svm"
    assert params.split.seed == 7
    assert params.train.cv_folds == 3
    assert params.train.chosen_hyperparameters() == {"C": 0.5, "kernel": "rbf", "gamma": "scale"}
    assert params.package.bentoml_store is False
    assert params.model_name() == "auto-mpg-regression"


def test_override_leaves_sibling_keys_alone(params_path):
    params = load_params(params_path, ["split.seed=1"])

    assert params.split.test_size == 0.2
    assert params.split.val_size == 0.1


@pytest.mark.parametrize(
    ("override", "key", "suggestion"),
    [
        ("train.estimatr=svm", "train.estimatr: unknown key", "did you mean 'estimator'?"),
        ("datset=iris", "datset: unknown key", "did you mean 'dataset'?"),
        ("validate.min_rowz=3", "validate.min_rowz: unknown key", "did you mean 'min_rows'?"),
        ("gate.classification.metrc=r2", "gate.classification.metrc: unknown key",
         "did you mean 'metric'?"),
        ("datasets.auto_mpg.colums={}", "datasets.auto_mpg.colums: unknown key",
         "did you mean 'columns'?"),
    ],
)
def test_unknown_key_names_the_dotted_key_and_suggests(params_path, override, key, suggestion):
    with pytest.raises(SlipwayError) as caught:
        load_params(params_path, [override])

    assert key in caught.value.message
    assert suggestion in caught.value.message
    assert "params.yaml" in caught.value.fix


def test_mistyped_key_in_the_file_is_an_error(tmp_path, raw_params):
    raw_params["train"]["estimatr"] = raw_params["train"].pop("estimator")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw_params))

    with pytest.raises(SlipwayError) as caught:
        load_params(path)

    assert "train.estimatr: unknown key (did you mean 'estimator'?" in caught.value.message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("split.seed=abc", "split.seed: Input should be a valid integer"),
        ("preprocess.scale=robust",
         "preprocess.scale: Input should be 'standard', 'minmax' or 'none'"),
        ("validate.min_rows=0", "validate.min_rows: Input should be greater than or equal to 1"),
        ("train.cv_folds=1", "train.cv_folds: Input should be greater than or equal to 2"),
        ("datasets.iris.name=iris2", "datasets.iris.name: Input should be 'iris'"),
    ],
)
def test_mistyped_value_names_the_key_and_the_valid_values(params_path, override, expected):
    with pytest.raises(SlipwayError) as caught:
        load_params(params_path, [override])

    assert expected in caught.value.message


def test_undeclared_dataset_suggests_a_declared_one(params_path):
    with pytest.raises(SlipwayError) as caught:
        load_params(params_path, ["dataset=irs"])

    assert "dataset 'irs' is not declared under `datasets`" in caught.value.message
    assert "did you mean 'iris'?" in caught.value.message


@pytest.mark.parametrize(("test_size", "val_size"), [(0.6, 0.4), (0.7, 0.5)])
def test_split_fractions_must_leave_training_rows(params_path, test_size, val_size):
    with pytest.raises(SlipwayError, match=r"split: test_size \+ val_size must leave rows"):
        load_params(params_path, [f"split.test_size={test_size}", f"split.val_size={val_size}"])


def test_split_fractions_just_below_one_are_accepted(params_path):
    params = load_params(params_path, ["split.test_size=0.5", "split.val_size=0.49"])

    assert params.split.test_size + params.split.val_size == pytest.approx(0.99)


def test_target_must_be_among_declared_columns(params_path):
    with pytest.raises(SlipwayError) as caught:
        load_params(params_path, ["datasets.auto_mpg.target=price"])

    assert "datasets.auto_mpg: target 'price' is not among `columns`" in caught.value.message


def test_headerless_file_needs_columns(params_path):
    with pytest.raises(SlipwayError, match="without a header row needs `columns`"):
        load_params(params_path, ["datasets.auto_mpg.columns=null"])


def test_missing_settings_file(tmp_path):
    with pytest.raises(SlipwayError, match="settings file .*nowhere.yaml not found"):
        load_params(tmp_path / "nowhere.yaml")


def test_invalid_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("dataset: [unclosed\n")

    with pytest.raises(SlipwayError, match="is not valid YAML"):
        load_params(path)


def test_params_must_be_a_mapping():
    with pytest.raises(SlipwayError, match="must be a mapping of sections"):
        params_from_dict(["dataset", "iris"])  # type: ignore[arg-type]


def test_parse_overrides_nests_dotted_keys_and_parses_yaml_values():
    assert parse_overrides([
        "train.estimator=svm", "train.hyperparameters.svm.C=2", "split.test_size=0.25",
        "package.bentoml_store=false", "datasets.x.na_values=['?', NA]", "kfp.registry=a=b",
    ]) == {
        "train": {"estimator": "svm", "hyperparameters": {"svm": {"C": 2}}},
        "split": {"test_size": 0.25},
        "package": {"bentoml_store": False},
        "datasets": {"x": {"na_values": ["?", "NA"]}},
        "kfp": {"registry": "a=b"},
    }


@pytest.mark.parametrize("item", ["train.estimator", "svm", ""])
def test_parse_overrides_rejects_an_item_without_equals(item):
    with pytest.raises(SlipwayError) as caught:
        parse_overrides([item])

    assert f"override {item!r} is not of the form key=value" in caught.value.message
    assert "train.estimator=svm" in caught.value.fix


def test_parse_overrides_scalar_then_nested_key_is_a_slipway_error():
    with pytest.raises(SlipwayError, match="train"):
        parse_overrides(["train=1", "train.seed=2"])


def test_section_validates_one_section():
    assert section("split", {"test_size": 0.3, "seed": 1}).test_size == 0.3

    with pytest.raises(SlipwayError, match=r"section 'split'.*\n  tets_size: unknown key"):
        section("split", {"tets_size": 0.3})


def test_dataset_spec_validates_one_entry():
    assert dataset_spec({"source": "sklearn", "name": "wine"}).name == "wine"

    with pytest.raises(SlipwayError, match="name: Input should be 'iris'"):
        dataset_spec({"source": "sklearn", "name": "mnist"})
