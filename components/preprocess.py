"""Preprocess stage: imputation, one-hot encoding and scaling, fitted on the training split.

The fitted transformer is applied identically to the validation and test splits here, and
to requests at serving time (it is packaged with the model). Alongside it goes the input
schema: each raw feature's type, its allowed range or categories, and training statistics
(bin edges and shares) that serving compares live inputs against for drift.

    python -m components.preprocess --train ... --val ... --test ... \\
        --transformer models/transformer --out-train ... --out-val ... --out-test ...
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components import safe_load
from components.config import Params, PreprocessParams
from components.errors import SlipwayError
from components.io import atomic_dir, read_json, read_table, write_json, write_table

TRANSFORMER_FILE = "preprocessor.skops"
SCHEMA_FILE = "schema.json"
DRIFT_BINS = 10


def build_transformer(features: dict[str, str], rules: PreprocessParams) -> Any:
    """An unfitted ColumnTransformer for the declared feature types."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

    numeric = [c for c, kind in features.items() if kind == "numeric"]
    categorical = [c for c, kind in features.items() if kind == "categorical"]
    num_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy=rules.numeric_impute))]
    if rules.scale != "none":
        num_steps.append(
            ("scale", StandardScaler() if rules.scale == "standard" else MinMaxScaler())
        )
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        parts.append(("num", Pipeline(num_steps), numeric))
    if categorical:
        parts.append((
            "cat",
            Pipeline([
                ("impute", SimpleImputer(strategy=rules.categorical_impute)),
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]),
            categorical,
        ))
    if not parts:
        raise SlipwayError("the dataset has no feature columns besides the target",
                           "declare at least one feature column")
    return ColumnTransformer(parts, verbose_feature_names_out=False)


def input_schema(train: pd.DataFrame, meta: dict[str, Any]) -> dict[str, Any]:
    """The raw input contract and training statistics, derived from the training split."""
    features = []
    for name, kind in meta["features"].items():
        col = train[name]
        entry: dict[str, Any] = {"name": name, "type": kind}
        present = col.dropna()
        if kind == "numeric":
            values = present.to_numpy(dtype="float64")
            edges = np.unique(np.quantile(values, np.linspace(0, 1, DRIFT_BINS + 1)))
            counts = np.histogram(values, bins=edges)[0] if len(edges) > 1 else np.array([1])
            entry.update(
                min=float(values.min()), max=float(values.max()),
                mean=float(values.mean()), std=float(values.std()),
                bin_edges=[float(e) for e in edges],
                bin_shares=[float(c) for c in counts / max(1, counts.sum())],
            )
        else:
            shares = present.astype(str).value_counts(normalize=True).sort_index()
            entry.update(categories=list(shares.index), category_shares=list(map(float, shares)))
        entry["missing_fraction"] = float(col.isna().mean())
        features.append(entry)
    schema = {
        "target": meta["target"],
        "task": meta["task"],
        "features": features,
        "dataset": {k: meta[k] for k in ("name", "source", "md5") if k in meta},
    }
    if meta["task"] == "classification":
        schema["classes"] = sorted(train[meta["target"]].dropna().astype(str).unique().tolist())
    return schema


def transform(transformer: Any, frame: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """Apply a fitted transformer; the target column is carried over unchanged."""
    matrix = transformer.transform(frame[list(meta["features"])])
    out = pd.DataFrame(
        np.asarray(matrix, dtype="float32"), columns=list(transformer.get_feature_names_out())
    )
    out[meta["target"]] = frame[meta["target"]].to_numpy()
    return out


def preprocess(
    train: str | Path,
    val: str | Path,
    test: str | Path,
    transformer_dir: str | Path,
    outs: tuple[str | Path, str | Path, str | Path],
    rules: PreprocessParams,
) -> dict[str, Any]:
    """Fit on the training table, transform all three, write the transformer and schema.

    Args:
        train, val, test: the split tables.
        transformer_dir: directory for ``preprocessor.skops`` and ``schema.json``.
        outs: transformed train, val and test tables to write.
        rules: imputation and scaling choices.

    Returns:
        The input schema.
    """
    frames = [read_table(p) for p in (train, val, test)]
    train_df, meta = frames[0]
    transformer = build_transformer(meta["features"], rules)
    transformer.fit(train_df[list(meta["features"])])
    schema = input_schema(train_df, meta)
    schema["transformed_features"] = list(transformer.get_feature_names_out())
    with atomic_dir(transformer_dir) as tmp:  # transformer and schema together, or neither
        safe_load.dump(transformer, tmp / TRANSFORMER_FILE)
        write_json(tmp / SCHEMA_FILE, schema)
    for (frame, frame_meta), out in zip(frames, outs, strict=True):
        write_table(transform(transformer, frame, meta), out,
                    {**frame_meta, "transformed": True})
    return schema


def load_transformer(transformer_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """The fitted transformer and the input schema written by :func:`preprocess`."""
    transformer_dir = Path(transformer_dir)
    return (
        safe_load.load(transformer_dir / TRANSFORMER_FILE),
        read_json(transformer_dir / SCHEMA_FILE),
    )


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    for name in ("train", "val", "test"):
        parser.add_argument(f"--{name}", required=True, help=f"{name} table from split")
        parser.add_argument(f"--out-{name}", required=True, help=f"transformed {name} table")
    parser.add_argument("--transformer", required=True, help="directory for the transformer")


def _run(args: argparse.Namespace, params: Params) -> None:
    schema = preprocess(
        args.train, args.val, args.test, args.transformer,
        (args.out_train, args.out_val, args.out_test), params.preprocess,
    )
    print(f"preprocess: {len(schema['features'])} inputs -> "
          f"{len(schema['transformed_features'])} model features")


def main(argv: list[str] | None = None) -> int:
    from components.cli import stage_main

    return stage_main("preprocess", __doc__.splitlines()[0], _add_arguments, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
