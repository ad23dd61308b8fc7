"""Validate stage: schema, missing values, duplicates and class balance against thresholds.

Every check is recorded in a JSON report (and a Markdown rendering of it). When a check
breaks a threshold from the ``validate`` section of params.yaml the stage fails with a
message that names the column and the rule, and writes nothing.

    python -m components.validate --data data/interim/dataset.parquet \\
        --report reports/validation.json
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import Params, ValidateParams
from components.errors import SlipwayError
from components.io import read_table, write_json, write_text


@dataclass(frozen=True)
class Check:
    """One rule applied to the data (or one column of it)."""

    rule: str
    column: str
    value: float
    threshold: float | None
    passed: bool
    detail: str


def run_checks(df: pd.DataFrame, meta: dict[str, Any], rules: ValidateParams) -> list[Check]:
    """Apply every rule; returns all checks, passed or not.

    Args:
        df: the ingested table.
        meta: its dataset facts (target, task, features).
        rules: the thresholds.
    """
    target, task, features = meta["target"], meta["task"], meta["features"]
    checks: list[Check] = []
    add = checks.append

    # Schema: every declared column present with its declared type, target present.
    for column in [target, *features]:
        present = column in df.columns
        add(Check("column_present", column, float(present), None, present,
                  "present" if present else "missing from the data"))
    for column, kind in features.items():
        if column not in df.columns:
            continue
        numeric = pd.api.types.is_numeric_dtype(df[column])
        ok = numeric == (kind == "numeric")
        add(Check("column_type", column, float(ok), None, ok,
                  f"declared {kind}, stored as {df[column].dtype}"))
    if target not in df.columns:
        return checks

    n = len(df)
    add(Check("min_rows", "*", float(n), float(rules.min_rows), n >= rules.min_rows,
              f"{n} rows"))
    for column in df.columns:
        frac = float(df[column].isna().mean()) if n else 0.0
        limit = 0.0 if column == target else rules.max_missing_fraction
        add(Check("max_missing_fraction", column, frac, limit, frac <= limit,
                  f"{int(df[column].isna().sum())} of {n} rows missing"))
    dup = float(df.duplicated().mean()) if n else 0.0
    add(Check("max_duplicate_fraction", "*", dup, rules.max_duplicate_fraction,
              dup <= rules.max_duplicate_fraction,
              f"{int(df.duplicated().sum())} duplicate rows"))

    if task == "classification":
        shares = df[target].value_counts(normalize=True, dropna=True)
        add(Check("min_classes", target, float(len(shares)), 2.0, len(shares) >= 2,
                  f"{len(shares)} classes"))
        for label, share in shares.items():
            add(Check("min_class_fraction", f"{target}={label}", float(share),
                      rules.min_class_fraction, share >= rules.min_class_fraction,
                      f"class {label!r} is {share:.1%} of rows"))
    else:
        numeric = pd.api.types.is_numeric_dtype(df[target])
        add(Check("target_numeric", target, float(numeric), None, numeric,
                  f"regression target stored as {df[target].dtype}"))
    return checks


def to_markdown(checks: list[Check], meta: dict[str, Any]) -> str:
    """A Markdown table of the checks, failures first."""
    failed = [c for c in checks if not c.passed]
    lines = [
        f"# Data validation: {meta.get('name', '?')}",
        "",
        f"{len(checks) - len(failed)} of {len(checks)} checks passed "
        f"({meta.get('rows', '?')} rows, source {meta.get('source', '?')}, "
        f"md5 {meta.get('md5', '?')}).",
        "",
        "| result | rule | column | value | threshold | detail |",
        "|---|---|---|---|---|---|",
    ]
    for c in sorted(checks, key=lambda c: c.passed):
        threshold = "" if c.threshold is None else f"{c.threshold:g}"
        lines.append(
            f"| {'ok' if c.passed else '**FAIL**'} | {c.rule} | {c.column} | {c.value:.4g} "
            f"| {threshold} | {c.detail} |"
        )
    return "\n".join(lines) + "\n"


def validate(
    data: str | Path, rules: ValidateParams
) -> tuple[dict[str, Any], str]:
    """Check the ingested table; raise if any rule is broken.

    Args:
        data: the Parquet table written by ingest.
        rules: thresholds from params.yaml.

    Returns:
        The report (a JSON-able dict) and its Markdown rendering.

    Raises:
        SlipwayError: naming every broken rule and column.
    """
    df, meta = read_table(data)
    checks = run_checks(df, meta, rules)
    failed = [c for c in checks if not c.passed]
    if failed:
        listed = "\n  ".join(
            f"{c.column}: {c.rule} broken ({c.detail}"
            + (f"; value {c.value:.4g}, threshold {c.threshold:g})" if c.threshold is not None
               else ")")
            for c in failed
        )
        raise SlipwayError(
            f"dataset {meta.get('name')!r} failed {len(failed)} validation check(s):\n  {listed}",
            "clean the data, or relax the thresholds in the `validate` section of params.yaml",
        )
    report = {
        "dataset": meta.get("name"),
        "md5": meta.get("md5"),
        "rows": len(df),
        "passed": True,
        "checks": [asdict(c) for c in checks],
    }
    return report, to_markdown(checks, meta)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="Parquet table from ingest")
    parser.add_argument("--report", required=True, help="JSON report to write")
    parser.add_argument("--markdown", help="also write the report as Markdown here")


def _run(args: argparse.Namespace, params: Params) -> None:
    report, markdown = validate(args.data, params.validate_)
    write_json(args.report, report)
    if args.markdown:
        write_text(args.markdown, markdown)
    print(f"validate: {len(report['checks'])} checks passed")


def main(argv: list[str] | None = None) -> int:
    from components.cli import stage_main

    return stage_main("validate", __doc__.splitlines()[0], _add_arguments, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
