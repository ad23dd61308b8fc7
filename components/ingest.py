"""Ingest stage: read the dataset declared in params.yaml into a typed Parquet table.

Sources: a DVC-tracked file under ``data/`` (CSV, whitespace-separated or Parquet) with its
target column, NA markers and column types, a bundled scikit-learn set, or CIFAR-10 in its
binary format (images: the table's metadata then carries their shape). The output table
carries the dataset facts (rows, columns, source, task, target, feature types and the
content hash, DVC's md5 for a file) in its metadata.

    python -m components.ingest --out data/interim/dataset.parquet
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import Cifar10Dataset, FileDataset, Params, SklearnDataset
from components.errors import SlipwayError
from components.io import file_hash, write_table

_WHITESPACE_FIELD = re.compile(r'"[^"]*"|\S+')


def load_sklearn(spec: SklearnDataset) -> pd.DataFrame:
    """A bundled scikit-learn set as a frame with a ``target`` column of class names."""
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{spec.name}")()
    # 'mean radius' -> 'mean_radius': names that read as JSON keys and identifiers.
    names = [str(n).strip().replace(" ", "_") for n in bunch.feature_names]
    df = pd.DataFrame(bunch.data, columns=names)
    labels = [str(t) for t in bunch.target_names]
    df["target"] = pd.Series([labels[i] for i in bunch.target], dtype="str")
    return df


def _check_field_counts(path: Path, spec: FileDataset, expected: int | None) -> list[int]:
    """Fail on the first row whose field count differs from the header's (or `columns`).

    Returns:
        The file line number of each data row (blank lines are skipped, as pandas does),
        so later errors can name the line a bad value is on.
    """
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        if spec.format == "csv":
            reader = csv.reader(f)  # line_num counts physical lines (quoted newlines too)
            rows = ((reader.line_num, len(r)) for r in reader if r)
        else:
            rows = (
                (i, len(_WHITESPACE_FIELD.findall(line)))
                for i, line in enumerate(f, start=1)
                if line.strip()
            )
        lines = []
        for line_no, count in rows:
            lines.append(line_no)
            if expected is None:
                expected = count
            elif count != expected:
                raise SlipwayError(
                    f"{path} line {line_no} is malformed: it has {count} fields, "
                    f"expected {expected}",
                    "fix or remove that row (quote fields that contain the separator), "
                    "then `dvc add` the file again",
                )
    return lines[1:] if spec.header else lines


def cifar_files(spec: Cifar10Dataset, root: Path) -> list[Path]:
    """The CIFAR-10 batch files the dataset names, sorted."""
    directory = root / spec.path
    files = sorted({f for pattern in spec.files for f in directory.glob(pattern)})
    if not files:
        raise SlipwayError(
            f"no CIFAR-10 files matching {', '.join(spec.files)} in {spec.path}",
            f"run `dvc pull` for {spec.path}, or correct the dataset's `path` / `files`",
        )
    return files


def load_cifar10(spec: Cifar10Dataset, root: Path) -> tuple[pd.DataFrame, list[Path]]:
    """CIFAR-10 binary batches as a frame: one column per pixel (channel, row, column
    order, named ``pixel_<c>_<y>_<x>``) and a ``label`` column of class names."""
    from components.cifar import CLASSES, IMAGE_SHAPE, read_cifar10

    files = cifar_files(spec, root)
    pixels, labels = read_cifar10(files)
    if spec.max_rows:
        pixels, labels = pixels[: spec.max_rows], labels[: spec.max_rows]
    c, h, w = IMAGE_SHAPE
    names = [f"pixel_{k}_{y}_{x}" for k in range(c) for y in range(h) for x in range(w)]
    df = pd.DataFrame(pixels.astype("float32"), columns=names)
    df["label"] = pd.Series([CLASSES[i] for i in labels], dtype="str")
    return df, files


def load_file(spec: FileDataset, root: Path) -> pd.DataFrame:
    """Read a data file, checking shape, columns and numeric values."""
    path = root / spec.path
    if not path.is_file():
        raise SlipwayError(
            f"data file {spec.path} not found",
            f"run `dvc pull {spec.path}.dvc` to fetch it from the DVC remote, or correct "
            "the dataset's `path` in params.yaml",
        )
    names = list(spec.columns) if (spec.columns and not spec.header) else None
    line_numbers: list[int] | None = None
    if spec.format == "parquet":
        df = pd.read_parquet(path)
    else:
        line_numbers = _check_field_counts(path, spec, len(names) if names else None)
        if not line_numbers:
            raise SlipwayError(f"{spec.path} has no data rows", "check the file is the right one")
        sep = "," if spec.format == "csv" else r"\s+"
        try:
            df = pd.read_csv(
                path,
                sep=sep,
                header=0 if spec.header else None,
                names=names,
                index_col=False,
                dtype="str",  # convert per declared type below, so errors name the value
                keep_default_na=True,
                na_values=spec.na_values,
                skipinitialspace=True,
            )
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise SlipwayError(
                f"{spec.path} could not be parsed as {spec.format}: {err}",
                "check the file's `format` in params.yaml and the row named above",
            ) from None
    if df.empty:
        raise SlipwayError(f"{spec.path} has no data rows", "check the file is the right one")
    df.columns = [str(c).strip() for c in df.columns]
    if spec.target not in df.columns:
        raise SlipwayError(
            f"target column {spec.target!r} is not in {spec.path} "
            f"(columns: {', '.join(df.columns)})",
            "set the dataset's `target` in params.yaml to one of those columns",
        )
    if spec.columns:
        missing = [c for c in spec.columns if c not in df.columns]
        if missing:
            raise SlipwayError(
                f"{spec.path} lacks declared column(s) {', '.join(missing)} "
                f"(it has: {', '.join(df.columns)})",
                "correct the dataset's `columns` in params.yaml",
            )
        df = df[[c for c, kind in spec.columns.items() if kind != "drop"]]
    for column in df.columns:
        if column == spec.target and spec.task == "classification":
            continue  # class labels stay as written: 1 must not become "1.0"
        if _column_kind(spec, column, df[column]) == "numeric":
            df[column] = _to_numeric(df[column], column, spec, line_numbers)
    return df


def _column_kind(spec: FileDataset, column: str, values: pd.Series) -> str:
    if spec.columns:
        return spec.columns[column]
    if pd.api.types.is_numeric_dtype(values):
        return "numeric"
    converted = pd.to_numeric(values, errors="coerce")
    return "numeric" if converted.notna().sum() == values.notna().sum() else "categorical"


def _to_numeric(
    values: pd.Series, column: str, spec: FileDataset, line_numbers: list[int] | None
) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna() & values.notna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        where = f" (line {line_numbers[row]})" if line_numbers else ""
        raise SlipwayError(
            f"column {column!r} of {spec.path} is numeric but data row {row + 1}{where} "
            f"holds {values.iloc[row]!r}",
            f"add {values.iloc[row]!r} to the dataset's `na_values` if it marks a missing "
            f"value, or declare {column!r} as categorical in `columns`",
        )
    return converted.astype("float64")


def _files_md5(files: list[Path]) -> str:
    return hashlib.md5("".join(file_hash(f, "md5") for f in files).encode()).hexdigest()


def content_key(spec: SklearnDataset | FileDataset | Cifar10Dataset,
                root: str | Path = ".") -> str:
    """The content hash a run expects of its data, known before any task reads it.

    A file's md5 (DVC's hash, the one in its ``.dvc`` pointer); for CIFAR-10 the md5 of
    its files' md5s; for data not in place but tracked by DVC, its pointer's md5; for a
    dataset bundled with scikit-learn, the library's name and version (the data changes
    only with the library). It keys the cache on the bytes,
    not the path, so a file changed in place is not served from the cache.

    Raises:
        SlipwayError: the data is missing.
    """
    root = Path(root)
    if isinstance(spec, SklearnDataset):
        from importlib.metadata import version

        return f"scikit-learn-{version('scikit-learn')}-{spec.name}"
    if not (root / spec.path).exists():
        from components.dvc_remote import read_pointer

        # not here: the ingest task fetches it by its DVC pointer, whose md5 keys the run
        if pointer := read_pointer(spec.path, root):
            return pointer["md5"]
    if isinstance(spec, Cifar10Dataset):
        return _files_md5(cifar_files(spec, root))
    path = root / spec.path
    if not path.is_file():
        raise SlipwayError(f"data file {spec.path} not found",
                           "run `make setup` (it pulls DVC-tracked data) or `dvc pull`")
    return file_hash(path, "md5")


def _check_content(name: str, expected: str, actual: str) -> None:
    if expected and expected != actual:
        raise SlipwayError(
            f"dataset {name!r} changed under the run: expected md5 {expected}, read {actual}",
            "run again: the data was replaced while the pipeline was starting",
        )


def ingest(
    name: str,
    spec: SklearnDataset | FileDataset | Cifar10Dataset,
    out: str | Path,
    root: str | Path = ".",
    expected_md5: str = "",
) -> dict[str, Any]:
    """Read a dataset and write it as a typed Parquet table.

    Args:
        name: the dataset's key under ``datasets`` in params.yaml.
        spec: its declaration.
        out: the Parquet file to write.
        root: directory that relative data paths are resolved against.
        expected_md5: the :func:`content_key` the run was started with; the data read must
            have it ("" to skip the check).

    Returns:
        The dataset facts also stored in the table's metadata.
    """
    root = Path(root)
    if isinstance(spec, Cifar10Dataset):
        df, files = load_cifar10(spec, root)
        source = f"cifar10:{spec.path}"
        md5 = _files_md5(files)
        _check_content(name, expected_md5, md5)
    elif isinstance(spec, SklearnDataset):
        df = load_sklearn(spec)
        source = f"sklearn:{spec.name}"
        # A content hash of the canonical CSV bytes, so a library update that changes the
        # bundled data changes the hash too.
        md5 = hashlib.md5(df.to_csv(index=False).encode()).hexdigest()
    else:
        md5 = file_hash(root / spec.path, "md5") if (root / spec.path).is_file() else ""
        _check_content(name, expected_md5, md5 or expected_md5)
        df = load_file(spec, root)
        source = f"file:{spec.path}"
    if df.empty:
        raise SlipwayError(f"dataset {name!r} has no rows", "check the data source")
    features = {
        c: ("numeric" if pd.api.types.is_numeric_dtype(df[c]) else "categorical")
        for c in df.columns
        if c != spec.target
    }
    if spec.task == "classification":
        df[spec.target] = df[spec.target].astype("str").where(df[spec.target].notna())
    meta = {
        "image_shape": image_shape(spec),
        "name": name,
        "source": source,
        "md5": md5,
        "task": spec.task,
        "target": spec.target,
        "features": features,
        "rows": int(len(df)),
        "columns": int(df.shape[1]),
    }
    write_table(df, out, meta)
    return meta


def image_shape(spec: SklearnDataset | FileDataset | Cifar10Dataset) -> list[int] | None:
    """(channels, height, width) when the feature columns are an image's pixels."""
    if isinstance(spec, SklearnDataset) and spec.name == "digits":
        return [1, 8, 8]
    if isinstance(spec, Cifar10Dataset):
        from components.cifar import IMAGE_SHAPE

        return list(IMAGE_SHAPE)
    return None


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="Parquet file to write")
    parser.add_argument("--root", default=".", help="directory data paths are relative to")


def _run(args: argparse.Namespace, params: Params) -> None:
    meta = ingest(params.dataset, params.dataset_spec, args.out, args.root)
    print(
        f"ingest: {meta['name']} ({meta['source']}): {meta['rows']} rows, "
        f"{meta['columns']} columns, md5 {meta['md5']}"
    )


def main(argv: list[str] | None = None) -> int:
    from components.cli import stage_main

    return stage_main("ingest", __doc__.splitlines()[0], _add_arguments, _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
