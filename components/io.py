"""File helpers shared by the stages: atomic writes, content hashes, framed tables.

Every stage writes its outputs through :func:`atomic_path`, so a stage that fails or is
killed half-way leaves either the complete previous file or nothing: never a truncated
file that a later stage or a rerun could take as good.

Tables travel between stages as Parquet files whose key-value metadata carries the
dataset facts (target, task, feature types, source, content hash) under ``slipway``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

META_KEY = b"slipway"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    Args:
        path: the final file path. Its parent directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; swap it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def file_hash(path: str | Path, algorithm: str = "md5") -> str:
    """Hex digest of a file's bytes; ``md5`` equals DVC's hash of a single file."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_table(df: pd.DataFrame, path: str | Path, meta: dict[str, Any]) -> None:
    """Write a frame as Parquet with dataset facts in its metadata, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    existing = table.schema.metadata or {}
    table = table.replace_schema_metadata(
        {**existing, META_KEY: json.dumps(meta).encode()}  # keeps feature order
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a frame written by :func:`write_table` and its dataset facts."""
    import pyarrow.parquet as pq

    from components.errors import SlipwayError

    if not Path(path).is_file():
        raise SlipwayError(f"table {path} not found",
                           "run the stage that writes it first (dvc repro runs them in order)")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a garbled file
        raise SlipwayError(f"table {path} is not readable Parquet: {err}",
                           "rerun the stage that writes it") from None
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    return table.to_pandas(), meta
