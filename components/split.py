"""Split stage: train / validation / test tables, stratified for classification, seeded.

    python -m components.split --data data/interim/dataset.parquet \\
        --train data/interim/train.parquet --val data/interim/val.parquet \\
        --test data/interim/test.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from components.config import Params, SplitParams
from components.errors import SlipwayError
from components.io import read_table, write_table


def split_frame(
    df: pd.DataFrame, target: str, task: str, rules: SplitParams
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split rows into train, validation and test.

    Args:
        df: the whole table.
        target: the target column (stratified on for classification).
        task: ``classification`` or ``regression``.
        rules: the fractions (of all rows) and the seed.

    Returns:
        train, val, test frames; val is empty when ``val_size`` is 0.
    """
    from sklearn.model_selection import train_test_split

    n_test = max(1, round(len(df) * rules.test_size))
    n_val = round(len(df) * rules.val_size)
    if len(df) - n_test - n_val < 1:
        raise SlipwayError(
            f"{len(df)} rows are too few to split into test {rules.test_size:g} and "
            f"validation {rules.val_size:g} with rows left to train on",
            "add data or lower split.test_size / split.val_size in params.yaml",
        )
    stratify = task == "classification"
    if stratify:
        counts = df[target].value_counts()
        rare = counts[counts < 2]
        if not rare.empty:
            raise SlipwayError(
                f"class(es) {', '.join(map(repr, rare.index))} of {target!r} have a single row: "
                "a stratified split needs at least two",
                "add rows of that class or remove it from the data",
            )

    def cut(frame: pd.DataFrame, size: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        strat = frame[target] if stratify else None
        # A stratified cut needs at least one row per class on each side.
        if stratify and (min(size, len(frame) - size) < frame[target].nunique()
                         or frame[target].value_counts().min() < 2):
            strat = None
        return train_test_split(
            frame, test_size=size, random_state=rules.seed, shuffle=True, stratify=strat
        )

    rest, test = cut(df, n_test)
    if n_val:
        train, val = cut(rest, n_val)
    else:
        train, val = rest, rest.iloc[:0]
    return (
        train.reset_index(drop=True),
        val.reset_index(drop=True),
        test.reset_index(drop=True),
    )


def split(
    data: str | Path, train: str | Path, val: str | Path, test: str | Path, rules: SplitParams
) -> dict[str, int]:
    """Split the table at ``data`` into three Parquet files; returns their row counts."""
    df, meta = read_table(data)
    parts = split_frame(df, meta["target"], meta["task"], rules)
    for frame, path, name in zip(parts, (train, val, test), ("train", "val", "test"), strict=True):
        write_table(frame, path, {**meta, "split": name, "rows": int(len(frame))})
    return {name: len(f) for name, f in zip(("train", "val", "test"), parts, strict=True)}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="Parquet table from ingest")
    for name in ("train", "val", "test"):
        parser.add_argument(f"--{name}", required=True, help=f"{name} table to write")


def _run(args: argparse.Namespace, params: Params) -> None:
    sizes = split(args.data, args.train, args.val, args.test, params.split)
    print("split: " + ", ".join(f"{k} {v} rows" for k, v in sizes.items()))


def main(argv: list[str] | None = None) -> int:
    from components.cli import stage_main

    return stage_main("split", __doc__.splitlines()[0], _add_arguments, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
