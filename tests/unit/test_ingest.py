"""Ingest: files (CSV, whitespace, Parquet) and bundled scikit-learn sets to a typed table."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import pytest

from components.config import FileDataset, SklearnDataset
from components.errors import SlipwayError
from components.ingest import ingest, load_file
from components.io import read_table


def file_spec(**fields) -> FileDataset:
    return FileDataset.model_validate({"source": "file", "task": "classification", **fields})


CSV = "x,color,label\n1.5,red,a\n2.5,blue,b\n-3,red,a\n"


def test_csv_with_header(tmp_path):
    (tmp_path / "t.csv").write_text(CSV)
    out = tmp_path / "out" / "dataset.parquet"

    meta = ingest("tiny", file_spec(path="t.csv", format="csv", target="label"), out, tmp_path)

    df, stored = read_table(out)
    assert stored == meta
    assert df["x"].tolist() == [1.5, 2.5, -3.0]
    assert df["color"].tolist() == ["red", "blue", "red"]
    assert df["label"].tolist() == ["a", "b", "a"]
    assert meta["features"] == {"x": "numeric", "color": "categorical"}
    assert (meta["rows"], meta["columns"]) == (3, 3)
    assert meta["source"] == "file:t.csv"
    assert (meta["task"], meta["target"], meta["name"]) == ("classification", "label", "tiny")


def test_file_md5_is_the_md5_of_its_bytes(tmp_path):
    (tmp_path / "t.csv").write_text(CSV)

    meta = ingest("tiny", file_spec(path="t.csv", format="csv", target="label"),
                  tmp_path / "o.parquet", tmp_path)

    assert meta["md5"] == hashlib.md5((tmp_path / "t.csv").read_bytes()).hexdigest()


def test_whitespace_without_header_takes_names_from_columns(tmp_path):
    (tmp_path / "cars.data").write_text(
        '18.0   8   3504.   1\t"chevrolet chevelle malibu"\n'
        '26.0   4   2234.   2\t"vw rabbit"\n'
        '31.5   4   2000.   3\t"honda civic cvcc"\n'
    )
    spec = file_spec(
        path="cars.data", format="whitespace", header=False, target="mpg", task="regression",
        columns={"mpg": "numeric", "cylinders": "numeric", "weight": "numeric",
                 "origin": "categorical", "name": "drop"},
    )

    meta = ingest("cars", spec, tmp_path / "o.parquet", tmp_path)

    df, _ = read_table(tmp_path / "o.parquet")
    assert list(df.columns) == ["mpg", "cylinders", "weight", "origin"]
    assert df["mpg"].tolist() == [18.0, 26.0, 31.5]
    assert df["weight"].tolist() == [3504.0, 2234.0, 2000.0]
    assert df["origin"].tolist() == ["1", "2", "3"]
    assert meta["features"] == {"cylinders": "numeric", "weight": "numeric",
                                "origin": "categorical"}
    assert meta["columns"] == 4


def test_parquet_file(tmp_path):
    pd.DataFrame({"a": [1, 2, 3], "kind": ["p", "q", "p"], "label": ["n", "y", "n"]}).to_parquet(
        tmp_path / "t.parquet"
    )

    meta = ingest("pq", file_spec(path="t.parquet", format="parquet", target="label"),
                  tmp_path / "o.parquet", tmp_path)

    df, _ = read_table(tmp_path / "o.parquet")
    assert df["a"].dtype == "float64"
    assert df["a"].tolist() == [1.0, 2.0, 3.0]
    assert df["label"].tolist() == ["n", "y", "n"]
    assert meta["features"] == {"a": "numeric", "kind": "categorical"}
    assert meta["md5"] == hashlib.md5((tmp_path / "t.parquet").read_bytes()).hexdigest()


def test_na_values_become_missing(tmp_path):
    (tmp_path / "t.data").write_text("1 ? a\n? 2 b\n3 4 ?\n")
    spec = file_spec(path="t.data", format="whitespace", header=False, target="label",
                     na_values=["?"],
                     columns={"p": "numeric", "q": "numeric", "label": "categorical"})

    ingest("na", spec, tmp_path / "o.parquet", tmp_path)

    df, _ = read_table(tmp_path / "o.parquet")
    assert df["p"].isna().tolist() == [False, True, False]
    assert df["q"].isna().tolist() == [True, False, False]
    assert df["label"].isna().tolist() == [False, False, True]
    assert df.loc[0, "p"] == 1.0


def test_drop_columns_are_not_features(tmp_path):
    (tmp_path / "t.csv").write_text("id,x,label\n101,1,a\n102,2,b\n103,3,a\n")
    spec = file_spec(path="t.csv", format="csv", target="label",
                     columns={"id": "drop", "x": "numeric", "label": "categorical"})

    meta = ingest("d", spec, tmp_path / "o.parquet", tmp_path)

    df, _ = read_table(tmp_path / "o.parquet")
    assert list(df.columns) == ["x", "label"]
    assert meta["features"] == {"x": "numeric"}


def test_declared_categorical_column_stays_text(tmp_path):
    (tmp_path / "t.csv").write_text("zip,x,label\n01234,1,a\n05678,2,b\n09999,3,a\n")
    spec = file_spec(path="t.csv", format="csv", target="label",
                     columns={"zip": "categorical", "x": "numeric", "label": "categorical"})

    ingest("z", spec, tmp_path / "o.parquet", tmp_path)

    df, _ = read_table(tmp_path / "o.parquet")
    assert df["zip"].tolist() == ["01234", "05678", "09999"]


@pytest.mark.parametrize(
    ("name", "rows", "columns", "n_features", "classes", "feature"),
    [
        ("iris", 150, 5, 4, {"setosa", "versicolor", "virginica"}, "sepal_length_(cm)"),
        ("wine", 178, 14, 13, {"class_0", "class_1", "class_2"}, "alcohol"),
        ("breast_cancer", 569, 31, 30, {"malignant", "benign"}, "mean_radius"),
        ("digits", 1797, 65, 64, {str(d) for d in range(10)}, "pixel_0_0"),
    ],
)
def test_bundled_sklearn_sets(tmp_path, name, rows, columns, n_features, classes, feature):
    meta = ingest(name, SklearnDataset(source="sklearn", name=name), tmp_path / "o.parquet")

    df, _ = read_table(tmp_path / "o.parquet")
    assert (meta["rows"], meta["columns"]) == (rows, columns) == df.shape
    assert meta["source"] == f"sklearn:{name}"
    assert meta["target"] == "target" and meta["task"] == "classification"
    assert len(meta["features"]) == n_features
    assert set(meta["features"].values()) == {"numeric"}
    assert feature in meta["features"]
    assert set(df["target"]) == classes
    assert re.fullmatch(r"[0-9a-f]{32}", meta["md5"])
    assert meta["image_shape"] == ([1, 8, 8] if name == "digits" else None)


def test_bundled_set_md5_is_stable_and_distinct(tmp_path):
    iris = SklearnDataset(source="sklearn", name="iris")
    first = ingest("iris", iris, tmp_path / "a.parquet")["md5"]
    again = ingest("iris", iris, tmp_path / "b.parquet")["md5"]
    wine = ingest("wine", SklearnDataset(source="sklearn", name="wine"), tmp_path / "c.parquet")

    assert first == again
    assert wine["md5"] != first


def test_non_numeric_value_names_column_row_line_and_value(tmp_path):
    (tmp_path / "t.csv").write_text("x,label\n1,a\n2,b\nabc,a\n")
    spec = file_spec(path="t.csv", format="csv", target="label",
                     columns={"x": "numeric", "label": "categorical"})

    with pytest.raises(SlipwayError) as caught:
        load_file(spec, tmp_path)

    assert "column 'x' of t.csv is numeric but data row 3 (line 4) holds 'abc'" in str(caught.value)
    assert "na_values" in caught.value.fix


def test_undeclared_text_column_is_categorical(tmp_path):
    (tmp_path / "t.csv").write_text("x,label\n1,a\n2,b\nabc,a\n")

    df = load_file(file_spec(path="t.csv", format="csv", target="label"), tmp_path)

    assert df["x"].tolist() == ["1", "2", "abc"]


def test_non_numeric_value_line_counts_blank_lines(tmp_path):
    (tmp_path / "t.csv").write_text("x,label\n1,a\n\n2,b\nabc,a\n")
    spec = file_spec(path="t.csv", format="csv", target="label",
                     columns={"x": "numeric", "label": "categorical"})

    with pytest.raises(SlipwayError, match=r"\(line 5\)"):
        load_file(spec, tmp_path)


@pytest.mark.parametrize(
    ("fmt", "text", "line", "count"),
    [
        ("csv", "x,y,label\n1,2,a\n1,2,3,b\n", 3, 4),
        ("csv", "x,y,label\n1,2,a\n1,b\n", 3, 2),
        ("whitespace", 'x y label\n1 2 "a a"\n1 2 3 b\n', 3, 4),
        ("whitespace", "x y label\n1 2 a\n3 4 b\n1 b\n", 4, 2),
    ],
)
def test_malformed_row_names_its_line(tmp_path, fmt, text, line, count):
    (tmp_path / "t.txt").write_text(text)

    with pytest.raises(SlipwayError) as caught:
        load_file(file_spec(path="t.txt", format=fmt, target="label"), tmp_path)

    assert f"t.txt line {line} is malformed: it has {count} fields, expected 3" in str(caught.value)


def test_quoted_field_with_spaces_is_one_whitespace_field(tmp_path):
    (tmp_path / "t.data").write_text('1 "a b c"\n2 "d"\n3 e\n')
    spec = file_spec(path="t.data", format="whitespace", header=False, target="y",
                     task="regression", columns={"y": "numeric", "name": "categorical"})

    df = load_file(spec, tmp_path)

    assert df["name"].tolist() == ["a b c", "d", "e"]


def test_missing_file(tmp_path):
    with pytest.raises(SlipwayError) as caught:
        load_file(file_spec(path="data/none.csv", format="csv", target="label"), tmp_path)

    assert "data file data/none.csv not found" in caught.value.message
    assert "dvc pull data/none.csv.dvc" in caught.value.fix


def test_unknown_target_lists_the_columns(tmp_path):
    (tmp_path / "t.csv").write_text(CSV)

    with pytest.raises(SlipwayError, match=r"target column 'price' is not in t.csv "
                                           r"\(columns: x, color, label\)"):
        load_file(file_spec(path="t.csv", format="csv", target="price"), tmp_path)


def test_declared_column_missing_from_a_header_file(tmp_path):
    (tmp_path / "t.csv").write_text(CSV)
    spec = file_spec(path="t.csv", format="csv", target="label",
                     columns={"x": "numeric", "size": "numeric", "label": "categorical"})

    with pytest.raises(SlipwayError, match="t.csv lacks declared column.* size"):
        load_file(spec, tmp_path)


def test_header_only_file_has_no_rows(tmp_path):
    (tmp_path / "t.csv").write_text("x,color,label\n")

    with pytest.raises(SlipwayError, match="t.csv has no data rows"):
        load_file(file_spec(path="t.csv", format="csv", target="label"), tmp_path)


def test_zero_byte_csv_is_a_slipway_error(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"")

    with pytest.raises(SlipwayError, match="t.csv"):
        load_file(file_spec(path="t.csv", format="csv", target="label"), tmp_path)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_integer_class_labels_keep_their_text(tmp_path, fmt):
    frame = pd.DataFrame({"x": [0.5, 1.5, 2.5], "label": [0, 1, 0]})
    if fmt == "csv":
        frame.to_csv(tmp_path / "t.data", index=False)
    else:
        frame.to_parquet(tmp_path / "t.data")

    ingest("ints", file_spec(path="t.data", format=fmt, target="label"),
           tmp_path / "o.parquet", tmp_path)

    df, _ = read_table(tmp_path / "o.parquet")
    assert df["label"].tolist() == ["0", "1", "0"]


def test_classification_target_missing_values_stay_missing(tmp_path):
    (tmp_path / "t.csv").write_text("x,label\n1,a\n2,\n3,b\n")

    ingest("m", file_spec(path="t.csv", format="csv", target="label"),
           tmp_path / "o.parquet", tmp_path)

    df, _ = read_table(tmp_path / "o.parquet")
    assert df["label"].isna().tolist() == [False, True, False]
    assert not np.any(df["label"].astype(object) == "nan")
