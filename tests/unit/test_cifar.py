"""The CIFAR-10 binary reader, on small files written byte by byte in that format."""

from __future__ import annotations

import numpy as np
import pytest

from components.cifar import (
    CLASSES,
    IMAGE_SHAPE,
    RECORD_BYTES,
    read_cifar10,
    write_cifar10,
)
from components.errors import SlipwayError


def _records(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            rng.integers(0, 10, size=n, dtype=np.uint8))


def test_classes_follow_batches_meta():
    assert CLASSES == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                       "ship", "truck")
    assert IMAGE_SHAPE == (3, 32, 32) and RECORD_BYTES == 3073


def test_reads_the_byte_layout(tmp_path):
    # One record assembled by hand: label byte, then the red, green and blue planes, each
    # 32 rows of 32 bytes.
    red = np.zeros((32, 32), np.uint8)
    red[0, 1] = 200  # row 0, column 1
    green = np.full((32, 32), 2, np.uint8)
    blue = np.full((32, 32), 3, np.uint8)
    blue[31, 0] = 250  # row 31, column 0
    record = bytes([7]) + red.tobytes() + green.tobytes() + blue.tobytes()
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(record * 2)

    pixels, labels = read_cifar10(path)
    assert pixels.dtype == np.uint8 and labels.dtype == np.uint8
    assert pixels.shape == (2, 3072) and labels.tolist() == [7, 7]
    image = pixels[0].reshape(IMAGE_SHAPE)
    assert image[0, 0, 1] == 200 and image[0, 0, 0] == 0
    assert (image[1] == 2).all()
    assert image[2, 31, 0] == 250 and image[2, 31, 1] == 3


def test_write_then_read_round_trip(tmp_path):
    pixels, labels = _records(5)
    path = tmp_path / "test_batch.bin"
    write_cifar10(path, pixels, labels)
    assert path.stat().st_size == 5 * RECORD_BYTES
    raw = path.read_bytes()
    assert raw[0] == labels[0] and raw[1:3073] == pixels[0].tobytes()
    got_pixels, got_labels = read_cifar10(path)
    np.testing.assert_array_equal(got_pixels, pixels)
    np.testing.assert_array_equal(got_labels, labels)


def test_several_files_are_concatenated_in_order(tmp_path):
    first, second = _records(3, seed=1), _records(4, seed=2)
    write_cifar10(tmp_path / "a.bin", *first)
    write_cifar10(tmp_path / "b.bin", *second)
    pixels, labels = read_cifar10([tmp_path / "a.bin", str(tmp_path / "b.bin")])
    np.testing.assert_array_equal(pixels, np.concatenate([first[0], second[0]]))
    np.testing.assert_array_equal(labels, np.concatenate([first[1], second[1]]))


def test_short_record_is_a_corrupted_file(tmp_path):
    path = tmp_path / "data_batch_2.bin"
    write_cifar10(path, *_records(2))
    path.write_bytes(path.read_bytes()[:-100])  # the second record is cut short
    with pytest.raises(SlipwayError) as err:
        read_cifar10(path)
    message = str(err.value)
    assert f"corrupted CIFAR file {path}: 6046 bytes is not a whole number of 3073-byte " \
           "records (short record at byte 3073" in message
    assert "download the file again" in message


def test_label_outside_the_class_list(tmp_path):
    pixels, labels = _records(6)
    labels[3] = 10
    path = tmp_path / "data_batch_3.bin"
    write_cifar10(path, pixels, labels)
    with pytest.raises(SlipwayError, match=r"record 3 .*label 10, a label outside the class "
                                           r"list 0-9"):
        read_cifar10(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(SlipwayError, match="corrupted CIFAR file .*empty"):
        read_cifar10(tmp_path / "empty.bin")
    with pytest.raises(SlipwayError, match="not found"):
        read_cifar10(tmp_path / "nothing.bin")
    with pytest.raises(SlipwayError, match="no CIFAR files"):
        read_cifar10([])


def test_writer_rejects_values_that_are_not_bytes(tmp_path):
    pixels, labels = _records(2)
    with pytest.raises(ValueError, match="one byte"):
        write_cifar10(tmp_path / "x.bin", pixels.astype(np.int32) + 300, labels)
    with pytest.raises(ValueError, match="expected pixels"):
        write_cifar10(tmp_path / "x.bin", pixels[:, :100], labels)
