"""Split: train / validation / test sizes, stratification, seeding and the errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import SplitParams
from components.errors import SlipwayError
from components.io import read_table, write_table
from components.split import split, split_frame


def labelled(counts: dict[str, int], seed: int = 0) -> pd.DataFrame:
    labels = [label for label, n in counts.items() for _ in range(n)]
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": range(len(labels)), "x": rng.normal(size=len(labels)),
                         "label": labels})


def test_sizes_and_rows_partition_the_table():
    df = labelled({"a": 20, "b": 10})

    train, val, test = split_frame(df, "label", "classification",
                                   SplitParams(test_size=0.2, val_size=0.1, seed=0))

    assert (len(train), len(val), len(test)) == (21, 3, 6)
    ids = [*train["id"], *val["id"], *test["id"]]
    assert sorted(ids) == list(range(30))
    assert list(train.index) == list(range(21))


def test_stratified_split_keeps_class_proportions():
    df = labelled({"a": 16, "b": 8})

    train, val, test = split_frame(df, "label", "classification",
                                   SplitParams(test_size=0.25, val_size=0.25, seed=3))

    assert train["label"].value_counts().to_dict() == {"a": 8, "b": 4}
    assert val["label"].value_counts().to_dict() == {"a": 4, "b": 2}
    assert test["label"].value_counts().to_dict() == {"a": 4, "b": 2}


def test_same_seed_same_split_other_seed_other_split():
    df = labelled({"a": 15, "b": 15})
    rules = SplitParams(test_size=0.2, val_size=0.2, seed=11)

    first = split_frame(df, "label", "classification", rules)
    again = split_frame(df, "label", "classification", rules)
    other = split_frame(df, "label", "classification", rules.model_copy(update={"seed": 12}))

    for a, b in zip(first, again, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert sorted(first[2]["id"]) != sorted(other[2]["id"])


def test_regression_split_is_not_stratified():
    df = pd.DataFrame({"id": range(12), "y": np.linspace(0.0, 1.0, 12)})

    train, val, test = split_frame(df, "y", "regression",
                                   SplitParams(test_size=0.25, val_size=0.25, seed=0))

    assert (len(train), len(val), len(test)) == (6, 3, 3)
    assert sorted([*train["id"], *val["id"], *test["id"]]) == list(range(12))


def test_zero_val_size_gives_an_empty_validation_split():
    df = labelled({"a": 6, "b": 6})

    train, val, test = split_frame(df, "label", "classification",
                                   SplitParams(test_size=0.25, val_size=0.0, seed=0))

    assert (len(train), len(val), len(test)) == (9, 0, 3)
    assert list(val.columns) == list(df.columns)


def test_single_row_class_is_refused():
    df = labelled({"a": 10, "b": 10, "lonely": 1})

    with pytest.raises(SlipwayError) as caught:
        split_frame(df, "label", "classification", SplitParams(seed=0))

    assert "class(es) 'lonely' of 'label' have a single row" in caught.value.message
    assert "add rows of that class" in caught.value.fix


@pytest.mark.parametrize(("rows", "test_size", "val_size"), [(3, 0.5, 0.4), (1, 0.5, 0.0)])
def test_too_few_rows_to_leave_a_training_row(rows, test_size, val_size):
    df = pd.DataFrame({"x": range(rows), "y": range(rows)})

    with pytest.raises(SlipwayError) as caught:
        split_frame(df, "y", "regression",
                    SplitParams(test_size=test_size, val_size=val_size, seed=0))

    assert f"{rows} rows are too few to split" in caught.value.message
    assert "split.test_size" in caught.value.fix


def test_few_rows_per_class_fall_back_to_an_unstratified_cut():
    df = labelled({"a": 3, "b": 3, "c": 3})

    train, val, test = split_frame(df, "label", "classification",
                                   SplitParams(test_size=0.2, val_size=0.1, seed=0))

    assert (len(train), len(val), len(test)) == (6, 1, 2)


def test_two_row_class_survives_the_validation_cut():
    df = labelled({"a": 10, "b": 2})

    train, val, test = split_frame(df, "label", "classification",
                                   SplitParams(test_size=0.3, val_size=0.3, seed=0))

    assert len(train) + len(val) + len(test) == 12


def test_split_writes_three_tables_with_their_facts(tmp_path):
    df = labelled({"a": 8, "b": 8})
    meta = {"name": "tiny", "task": "classification", "target": "label",
            "features": {"id": "numeric", "x": "numeric"}, "rows": 16}
    write_table(df, tmp_path / "dataset.parquet", meta)
    paths = [tmp_path / "out" / f"{name}.parquet" for name in ("train", "val", "test")]

    sizes = split(tmp_path / "dataset.parquet", *paths,
                  SplitParams(test_size=0.25, val_size=0.25, seed=0))

    assert sizes == {"train": 8, "val": 4, "test": 4}
    for path, name in zip(paths, ("train", "val", "test"), strict=True):
        frame, frame_meta = read_table(path)
        assert frame_meta == {**meta, "split": name, "rows": sizes[name]}
        assert len(frame) == sizes[name]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "test.parquet", "train.parquet", "val.parquet",
    ]
