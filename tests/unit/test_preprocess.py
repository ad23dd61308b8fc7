"""Preprocess: fitted on the training split only, imputation, unseen categories, schema, skops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import PreprocessParams
from components.errors import SlipwayError
from components.io import read_json, read_table, write_table
from components.preprocess import (
    SCHEMA_FILE,
    TRANSFORMER_FILE,
    build_transformer,
    load_transformer,
    preprocess,
    transform,
)

META = {"name": "tiny", "source": "test", "md5": "abc", "task": "classification",
        "target": "label", "features": {"x": "numeric", "color": "categorical"}}


def frames():
    train = pd.DataFrame({"x": [1.0, 2.0, 6.0], "color": ["red", "blue", "red"],
                          "label": ["a", "b", "a"]})
    val = pd.DataFrame({"x": [4.0, 5.0, 30.0], "color": ["blue", "red", "red"],
                        "label": ["b", "a", "a"]})
    test = pd.DataFrame({"x": [100.0, 200.0, 300.0], "color": ["red", "purple", "blue"],
                         "label": ["a", "a", "b"]})
    return train, val, test


def run_preprocess(tmp_path, rules=None, data=None):
    paths = []
    for name, frame in zip(("train", "val", "test"), data or frames(), strict=True):
        path = tmp_path / "interim" / f"{name}.parquet"
        write_table(frame, path, {**META, "split": name})
        paths.append(path)
    outs = tuple(tmp_path / "processed" / f"{name}.parquet" for name in ("train", "val", "test"))
    schema = preprocess(*paths, tmp_path / "transformer", outs, rules or PreprocessParams())
    return schema, [read_table(p)[0] for p in outs]


def test_scaler_is_fitted_on_the_training_split_only(tmp_path):
    run_preprocess(tmp_path)

    transformer, _ = load_transformer(tmp_path / "transformer")
    scaler = transformer.named_transformers_["num"].named_steps["scale"]
    assert scaler.mean_.tolist() == [3.0]
    assert scaler.scale_[0] == pytest.approx(np.std([1.0, 2.0, 6.0]))


def test_training_split_is_centred_and_test_split_is_not(tmp_path):
    _, (train, _, test) = run_preprocess(tmp_path)

    assert train["x"].mean() == pytest.approx(0.0, abs=1e-6)
    assert train["x"].std(ddof=0) == pytest.approx(1.0, rel=1e-5)
    expected = (np.array([100.0, 200.0, 300.0]) - 3.0) / np.std([1.0, 2.0, 6.0])
    np.testing.assert_allclose(test["x"], expected, rtol=1e-6)


def test_unseen_category_encodes_as_all_zeros(tmp_path):
    _, (_, _, test) = run_preprocess(tmp_path)

    assert list(test.columns) == ["x", "color_blue", "color_red", "label"]
    assert test[["color_blue", "color_red"]].to_numpy().tolist() == [
        [0.0, 1.0], [0.0, 0.0], [1.0, 0.0],
    ]


def test_target_is_carried_over_unchanged(tmp_path):
    _, processed = run_preprocess(tmp_path)

    assert [frame["label"].tolist() for frame in processed] == [
        ["a", "b", "a"], ["b", "a", "a"], ["a", "a", "b"],
    ]


@pytest.mark.parametrize(("strategy", "filled"), [("median", 2.0), ("mean", 3.0)])
def test_missing_numbers_take_the_training_statistic(tmp_path, strategy, filled):
    train = pd.DataFrame({"x": [1.0, np.nan, 2.0, 6.0], "color": ["red", "blue", "red", "red"],
                          "label": ["a", "b", "a", "b"]})
    test = pd.DataFrame({"x": [np.nan, 7.0, 7.0], "color": ["red", "red", "red"],
                         "label": ["a", "a", "b"]})

    _, (_, _, out) = run_preprocess(
        tmp_path, PreprocessParams(numeric_impute=strategy, scale="none"),
        (train, test, test),
    )

    assert out["x"].tolist() == [filled, 7.0, 7.0]


def test_missing_category_takes_the_most_frequent_training_value(tmp_path):
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0], "color": ["red", None, "red"],
                          "label": ["a", "b", "a"]})
    test = pd.DataFrame({"x": [1.0, 1.0, 1.0], "color": [None, "blue", "red"],
                         "label": ["a", "b", "a"]})

    _, (_, _, out) = run_preprocess(tmp_path, PreprocessParams(scale="none"),
                                    (train, test, test))

    assert list(out.columns) == ["x", "color_red", "label"]
    assert out["color_red"].tolist() == [1.0, 0.0, 1.0]


def test_minmax_scales_training_values_to_the_unit_range(tmp_path):
    _, (train, val, _) = run_preprocess(tmp_path, PreprocessParams(scale="minmax"))

    assert train["x"].tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert val["x"].tolist() == pytest.approx([0.6, 0.8, 5.8])


def test_schema_describes_the_training_inputs(tmp_path):
    schema, (train, _, _) = run_preprocess(tmp_path)

    assert schema == read_json(tmp_path / "transformer" / SCHEMA_FILE)
    x, color = schema["features"]
    assert (x["name"], x["type"]) == ("x", "numeric")
    assert (x["min"], x["max"], x["mean"]) == (1.0, 6.0, 3.0)
    assert x["bin_edges"][0] == 1.0 and x["bin_edges"][-1] == 6.0
    assert x["bin_edges"] == sorted(x["bin_edges"])
    assert sum(x["bin_shares"]) == pytest.approx(1.0)
    assert len(x["bin_shares"]) == len(x["bin_edges"]) - 1
    assert x["missing_fraction"] == 0.0
    assert (color["name"], color["type"]) == ("color", "categorical")
    assert color["categories"] == ["blue", "red"]
    assert color["category_shares"] == pytest.approx([1 / 3, 2 / 3])
    assert schema["classes"] == ["a", "b"]
    assert (schema["target"], schema["task"]) == ("label", "classification")
    assert schema["dataset"] == {"name": "tiny", "source": "test", "md5": "abc"}
    assert schema["transformed_features"] == [c for c in train.columns if c != "label"]


def test_schema_records_the_missing_fraction(tmp_path):
    train = pd.DataFrame({"x": [1.0, np.nan, 3.0, 5.0], "color": ["red", "blue", None, "red"],
                          "label": ["a", "b", "a", "b"]})

    schema, _ = run_preprocess(tmp_path, data=(train, train, train))

    x, color = schema["features"]
    assert x["missing_fraction"] == 0.25 and (x["min"], x["max"]) == (1.0, 5.0)
    assert color["missing_fraction"] == 0.25 and color["categories"] == ["blue", "red"]


def test_transformer_round_trips_through_skops(tmp_path):
    train, _, test = frames()
    run_preprocess(tmp_path)
    assert (tmp_path / "transformer" / TRANSFORMER_FILE).read_bytes()[:2] == b"PK"

    loaded, schema = load_transformer(tmp_path / "transformer")

    fresh = build_transformer(META["features"], PreprocessParams()).fit(train[["x", "color"]])
    pd.testing.assert_frame_equal(transform(loaded, test, META), transform(fresh, test, META))
    assert list(loaded.get_feature_names_out()) == schema["transformed_features"]


def test_refitting_gives_byte_identical_files(tmp_path):
    run_preprocess(tmp_path / "a")
    run_preprocess(tmp_path / "b")

    for name in (TRANSFORMER_FILE, SCHEMA_FILE):
        assert (tmp_path / "a" / "transformer" / name).read_bytes() == \
            (tmp_path / "b" / "transformer" / name).read_bytes()


def test_no_feature_columns_is_an_error():
    with pytest.raises(SlipwayError, match="no feature columns besides the target"):
        build_transformer({}, PreprocessParams())
