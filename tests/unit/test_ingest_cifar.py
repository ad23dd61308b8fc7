"""Ingest of CIFAR-10 binary batches: pixels in (channel, row, column) order, class names,
image shape in the table's metadata, errors for missing and corrupted files."""

from __future__ import annotations

import numpy as np
import pytest

from components.cifar import CLASSES, write_cifar10
from components.config import load_params
from components.errors import SlipwayError
from components.ingest import ingest
from components.io import read_table


@pytest.fixture
def cifar_root(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    batches = []
    for i in (1, 2):
        pixels = rng.integers(0, 256, (5, 3072))
        labels = rng.integers(0, 10, 5)
        write_cifar10(folder / f"data_batch_{i}.bin", pixels, labels)
        batches.append((pixels, labels))
    (folder / "test_batch.bin").write_bytes(b"")  # not matched by the default glob
    return tmp_path, batches


def test_cifar_ingest_keeps_pixels_labels_and_shape(cifar_root, tmp_path):
    root, batches = cifar_root
    params = load_params(overrides=["dataset=cifar10"])
    meta = ingest(params.dataset, params.dataset_spec, tmp_path / "t.parquet", root)
    df, stored = read_table(tmp_path / "t.parquet")
    assert meta["image_shape"] == stored["image_shape"] == [3, 32, 32]
    assert meta["rows"] == 10 and meta["task"] == "classification"
    pixels = np.concatenate([p for p, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])
    assert (df.drop(columns="label").to_numpy() == pixels).all()
    assert df.columns[1] == "pixel_0_0_1" and df.columns[1024] == "pixel_1_0_0"
    assert df["label"].tolist() == [CLASSES[i] for i in labels]


def test_cifar_max_rows(cifar_root, tmp_path):
    root, _ = cifar_root
    params = load_params(overrides=["dataset=cifar10", "datasets.cifar10.max_rows=3"])
    assert ingest(params.dataset, params.dataset_spec, tmp_path / "t.parquet", root)["rows"] == 3


def test_cifar_missing_files_named(tmp_path):
    params = load_params(overrides=["dataset=cifar10"])
    with pytest.raises(SlipwayError, match="no CIFAR-10 files matching data_batch_"):
        ingest(params.dataset, params.dataset_spec, tmp_path / "t.parquet", tmp_path)
    assert not (tmp_path / "t.parquet").exists()


def test_cifar_short_record_refused(cifar_root, tmp_path):
    root, _ = cifar_root
    batch = root / "data" / "cifar-10-batches-bin" / "data_batch_2.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    params = load_params(overrides=["dataset=cifar10"])
    with pytest.raises(SlipwayError, match="corrupted CIFAR file"):
        ingest(params.dataset, params.dataset_spec, tmp_path / "t.parquet", root)
    assert not (tmp_path / "t.parquet").exists()
