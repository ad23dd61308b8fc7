"""Validate: each data rule passing and failing, the report and its Markdown rendering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import ValidateParams
from components.errors import SlipwayError
from components.io import write_table
from components.validate import run_checks, to_markdown, validate

LOOSE = ValidateParams(min_rows=3, max_missing_fraction=0.5, max_duplicate_fraction=0.5,
                       min_class_fraction=0.2)


def table(**overrides):
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "color": ["red", "blue", "red"],
                       "label": ["a", "b", "a"]})
    meta = {"name": "tiny", "source": "test", "md5": "abc123", "task": "classification",
            "target": "label", "features": {"x": "numeric", "color": "categorical"}, "rows": 3}
    meta.update(overrides.pop("meta", {}))
    for column, values in overrides.items():
        df[column] = values
    return df, meta


def validate_frame(tmp_path, df, meta, rules=LOOSE):
    path = tmp_path / "dataset.parquet"
    write_table(df, path, meta)
    return validate(path, rules)


def test_clean_table_passes_every_check(tmp_path):
    report, markdown = validate_frame(tmp_path, *table())

    assert report["passed"] is True
    assert (report["dataset"], report["md5"], report["rows"]) == ("tiny", "abc123", 3)
    rules = {(c["rule"], c["column"]) for c in report["checks"]}
    assert {("column_present", "x"), ("column_type", "color"), ("min_rows", "*"),
            ("max_missing_fraction", "label"), ("max_duplicate_fraction", "*"),
            ("min_classes", "label"), ("min_class_fraction", "label=b")} <= rules
    assert all(c["passed"] for c in report["checks"])
    assert f"{len(report['checks'])} of {len(report['checks'])} checks passed" in markdown


def test_regression_target_must_be_numeric(tmp_path):
    df, meta = table(label=["1.0", "2.0", "x"], meta={"task": "regression"})

    with pytest.raises(SlipwayError, match="label: target_numeric broken"):
        validate_frame(tmp_path, df, meta)


def test_numeric_regression_target_passes(tmp_path):
    df, meta = table(label=[1.0, 2.5, 4.0], meta={"task": "regression"})

    report, _ = validate_frame(tmp_path, df, meta)

    assert [c["passed"] for c in report["checks"] if c["rule"] == "target_numeric"] == [True]
    assert not any(c["rule"].startswith("min_class") for c in report["checks"])


@pytest.mark.parametrize(
    ("change", "rules", "expected"),
    [
        ({"meta": {"features": {"x": "numeric", "size": "numeric"}}}, LOOSE,
         "size: column_present broken (missing from the data)"),
        ({"meta": {"features": {"x": "numeric", "color": "numeric"}}}, LOOSE,
         "color: column_type broken (declared numeric, stored as"),
        ({"x": ["1", "2", "3"]}, LOOSE, "x: column_type broken (declared numeric"),
        ({}, LOOSE.model_copy(update={"min_rows": 4}),
         "*: min_rows broken (3 rows; value 3, threshold 4)"),
        ({"x": [1.0, np.nan, np.nan]}, LOOSE,
         "x: max_missing_fraction broken (2 of 3 rows missing; value 0.6667, threshold 0.5)"),
        ({"label": ["a", None, "b"]}, LOOSE,
         "label: max_missing_fraction broken (1 of 3 rows missing; value 0.3333, threshold 0)"),
        ({"x": [1.0, 1.0, 3.0], "color": ["red", "red", "blue"], "label": ["a", "a", "b"]},
         LOOSE.model_copy(update={"max_duplicate_fraction": 0.2}),
         "*: max_duplicate_fraction broken (1 duplicate rows; value 0.3333, threshold 0.2)"),
        ({"label": ["a", "a", "a"]}, LOOSE, "label: min_classes broken (1 classes; value 1"),
        ({}, LOOSE.model_copy(update={"min_class_fraction": 0.4}),
         "label=b: min_class_fraction broken (class 'b' is 33.3% of rows; value 0.3333, "
         "threshold 0.4)"),
    ],
    ids=["missing-column", "declared-numeric-is-text", "numbers-stored-as-text", "too-few-rows",
         "missing-fraction", "target-missing", "duplicates", "one-class", "min-class-fraction"],
)
def test_broken_rule_names_column_and_rule(tmp_path, change, rules, expected):
    df, meta = table(**change)

    with pytest.raises(SlipwayError) as caught:
        validate_frame(tmp_path, df, meta, rules)

    assert expected in caught.value.message
    assert "dataset 'tiny' failed 1 validation check(s)" in caught.value.message
    assert "`validate` section of params.yaml" in caught.value.fix


def test_every_broken_rule_is_listed(tmp_path):
    df, meta = table(x=[1.0, np.nan, np.nan], label=["a", "a", "a"])

    with pytest.raises(SlipwayError) as caught:
        validate_frame(tmp_path, df, meta, LOOSE.model_copy(update={"min_rows": 10}))

    message = caught.value.message
    assert "failed 3 validation check(s)" in message
    for part in ("x: max_missing_fraction", "*: min_rows", "label: min_classes"):
        assert part in message


def test_missing_target_stops_after_the_schema_checks():
    df, meta = table()
    checks = run_checks(df.drop(columns=["label"]), meta, LOOSE)

    assert [(c.rule, c.column, c.passed) for c in checks if not c.passed] == [
        ("column_present", "label", False)
    ]
    assert {c.rule for c in checks} == {"column_present", "column_type"}


def test_markdown_lists_failures_first():
    df, meta = table(x=[1.0, np.nan, np.nan])
    checks = run_checks(df, meta, LOOSE)

    markdown = to_markdown(checks, meta)

    lines = markdown.splitlines()
    assert lines[0] == "# Data validation: tiny"
    assert f"{len(checks) - 1} of {len(checks)} checks passed (3 rows, source test, md5 abc123)." \
        in markdown
    rows = [line for line in lines if line.startswith("| ok") or line.startswith("| **FAIL**")]
    assert len(rows) == len(checks)
    assert rows[0] == ("| **FAIL** | max_missing_fraction | x | 0.6667 | 0.5 "
                       "| 2 of 3 rows missing |")
    assert all(row.startswith("| ok") for row in rows[1:])
    assert "| ok | column_present | x | 1 |  | present |" in lines
