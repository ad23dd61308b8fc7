"""Reading (and, for tests, writing) the CIFAR-10 binary format.

The "binary version" of CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar.html) ships as
``data_batch_1.bin`` … ``data_batch_5.bin`` (10000 training images each) and
``test_batch.bin``. Every record is 3073 bytes: one label byte (0–9, an index into
``batches.meta.txt``), then the 32x32 image as 1024 red, 1024 green and 1024 blue bytes,
each plane row-major. The pixels are returned in that same (channel, row, column) order,
so a row of :func:`read_cifar10`'s output is the flat ``IMAGE_SHAPE`` image the trainers'
``cnn`` expects.

    pixels, labels = read_cifar10(sorted(Path("cifar-10-batches-bin").glob("data_batch_*.bin")))
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from components.errors import SlipwayError
from components.io import atomic_path

IMAGE_SHAPE = (3, 32, 32)  # channels, height, width
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]  # 3072
RECORD_BYTES = 1 + PIXELS  # label byte + pixels
# batches.meta.txt order: label byte i names CLASSES[i].
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")


def _read_one(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise SlipwayError(f"CIFAR file {path} not found",
                           "download and unpack the CIFAR-10 binary version, or fix the path")
    size = path.stat().st_size
    if size == 0 or size % RECORD_BYTES:
        whole = size // RECORD_BYTES
        raise SlipwayError(
            f"corrupted CIFAR file {path}: {size} bytes is not a whole number of "
            f"{RECORD_BYTES}-byte records (short record at byte {whole * RECORD_BYTES}, "
            f"record {whole})" if size else f"corrupted CIFAR file {path}: it is empty",
            "download the file again (a CIFAR-10 batch is 30730000 bytes)",
        )
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels >= len(CLASSES))
    if bad.size:
        first = int(bad[0])
        raise SlipwayError(
            f"corrupted CIFAR file {path}: record {first} (byte {first * RECORD_BYTES}) has "
            f"label {int(labels[first])}, a label outside the class list 0-{len(CLASSES) - 1} "
            f"({bad.size} such record(s))",
            "download the file again; CIFAR-100 files (2 label bytes per record) are not "
            "CIFAR-10 files",
        )
    return np.ascontiguousarray(records[:, 1:]), labels.copy()


def read_cifar10(paths: str | Path | Iterable[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read one or more CIFAR-10 binary batch files, in the order given.

    Args:
        paths: a batch file, or several (their records are concatenated).

    Returns:
        ``pixels`` (uint8, shape (n, 3072), each row (channel, row, column) ordered) and
        ``labels`` (uint8, shape (n,), indices into :data:`CLASSES`).

    Raises:
        SlipwayError: a file is missing, is not a whole number of records, or has a label
            byte outside 0-9.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    parts = [_read_one(Path(p)) for p in paths]
    if not parts:
        raise SlipwayError("no CIFAR files given", "name at least one data_batch_*.bin")
    if len(parts) == 1:
        return parts[0]
    return (np.concatenate([p for p, _ in parts]), np.concatenate([lab for _, lab in parts]))


def write_cifar10(path: str | Path, pixels: np.ndarray, labels: np.ndarray) -> None:
    """Write records in the CIFAR-10 binary format, atomically (used to build test files).

    Args:
        path: the file to write.
        pixels: shape (n, 3072) or (n, 3, 32, 32), values 0-255.
        labels: shape (n,), values 0-9.
    """
    pixels = np.asarray(pixels).reshape(len(pixels), -1)
    labels = np.asarray(labels).reshape(-1)
    if pixels.shape[1] != PIXELS or len(labels) != len(pixels):
        raise ValueError(f"expected pixels (n, {PIXELS}) and labels (n,), got "
                         f"{pixels.shape} and {labels.shape}")
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255 or labels.min(initial=0) < 0 \
            or labels.max(initial=0) > 255:
        raise ValueError("pixels and labels must fit in one byte (0-255)")
    records = np.concatenate([labels[:, None], pixels], axis=1).astype(np.uint8)
    with atomic_path(path) as tmp:
        records.tofile(tmp)
