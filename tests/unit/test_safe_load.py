"""Model files and atomic writes: skops dump/load (components.safe_load) and components.io."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier

from components import safe_load
from components.errors import SlipwayError
from components.io import (
    atomic_dir,
    atomic_path,
    file_hash,
    read_json,
    read_table,
    write_json,
    write_table,
)
from components.trainers.sklearn import ESTIMATORS, SklearnTrainer


class Gadget:
    """A type no reviewer has put on the trusted list."""

    def __init__(self) -> None:
        self.size = 3


def forest(seed: int = 0) -> RandomForestClassifier:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3))
    y = (x[:, 0] > 0).astype(int)
    return RandomForestClassifier(n_estimators=5, random_state=seed).fit(x, y)


def temp_files(directory) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".") and
            p.name.endswith(".tmp")]


def test_dump_is_byte_reproducible(tmp_path):
    safe_load.dump(forest(), tmp_path / "a.skops")
    safe_load.dump(forest(), tmp_path / "b.skops")

    assert (tmp_path / "a.skops").read_bytes() == (tmp_path / "b.skops").read_bytes()
    assert file_hash(tmp_path / "a.skops", "sha256") == file_hash(tmp_path / "b.skops", "sha256")


@pytest.mark.parametrize(
    ("task", "estimator"),
    [(task, name) for name, pair in ESTIMATORS.items()
     for task, cls in zip(("classification", "regression"), pair, strict=True) if cls],
)
def test_every_estimator_dumps_reproducibly(tmp_path, task, estimator):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = (x[:, 0] > 0).astype(int) if task == "classification" else x[:, 0] * 2.0
    for name in ("a", "b"):
        trainer = SklearnTrainer(task, estimator, {}, seed=4)
        trainer.fit(x, y)
        safe_load.dump(trainer.model, tmp_path / f"{name}.skops")

    assert (tmp_path / "a.skops").read_bytes() == (tmp_path / "b.skops").read_bytes()
    reloaded = safe_load.load(tmp_path / "a.skops")
    np.testing.assert_array_equal(reloaded.predict(x), trainer.model.predict(x))


def test_a_different_model_gives_different_bytes(tmp_path):
    safe_load.dump(forest(0), tmp_path / "a.skops")
    safe_load.dump(forest(1), tmp_path / "b.skops")

    assert (tmp_path / "a.skops").read_bytes() != (tmp_path / "b.skops").read_bytes()


def test_load_with_the_right_hash_gives_the_same_model(tmp_path):
    model = forest()
    path = tmp_path / "m.skops"
    safe_load.dump(model, path)
    x = np.random.default_rng(5).normal(size=(6, 3))

    loaded = safe_load.load(path, hashlib.sha256(path.read_bytes()).hexdigest())

    assert type(loaded) is RandomForestClassifier
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


def test_load_refuses_a_hash_mismatch(tmp_path):
    path = tmp_path / "m.skops"
    safe_load.dump(forest(), path)

    with pytest.raises(SlipwayError) as caught:
        safe_load.load(path, "0" * 64)

    assert "does not match its recorded sha256 (expected 000000000000" in caught.value.message
    assert f"found {file_hash(path, 'sha256')[:12]}" in caught.value.message


def test_load_refuses_an_untrusted_type_and_names_it(tmp_path):
    path = tmp_path / "gadget.skops"
    safe_load.dump(Gadget(), path)

    with pytest.raises(SlipwayError) as caught:
        safe_load.load(path)

    assert f"{Gadget.__module__}.Gadget" in caught.value.message
    assert "not on Slipway's trusted list" in caught.value.message
    assert "TRUSTED_TYPES" in caught.value.fix


@pytest.mark.parametrize(
    "garble",
    [
        lambda data: b"this is not a zip file at all",
        lambda data: data[: len(data) // 2],
        lambda data: data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:],
        lambda data: b"",
    ],
    ids=["text", "truncated", "flipped-bytes", "empty"],
)
def test_garbled_bytes_are_a_slipway_error(tmp_path, garble):
    path = tmp_path / "m.skops"
    safe_load.dump(forest(), path)
    path.write_bytes(garble(path.read_bytes()))

    with pytest.raises(SlipwayError, match="is not a readable skops file"):
        safe_load.load(path)


def test_load_of_a_missing_file(tmp_path):
    with pytest.raises(SlipwayError, match="model file .*none.skops not found"):
        safe_load.load(tmp_path / "none.skops")


def test_atomic_path_moves_the_file_into_place(tmp_path):
    target = tmp_path / "sub" / "out.txt"

    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
        assert not target.exists()

    assert target.read_text() == "new"
    assert temp_files(target.parent) == []
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_atomic_path_keeps_the_old_file_when_the_body_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    with pytest.raises(RuntimeError, match="half way"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("half way")

    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_leaves_nothing_when_there_was_no_old_file(tmp_path):
    with pytest.raises(KeyError), atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("half")
        raise KeyError("boom")

    assert os.listdir(tmp_path) == []


def test_atomic_dir_swaps_the_whole_directory(tmp_path):
    target = tmp_path / "version"
    target.mkdir()
    (target / "stale.txt").write_text("old")

    with atomic_dir(target) as tmp:
        (tmp / "fresh.txt").write_text("new")

    assert os.listdir(target) == ["fresh.txt"]
    assert os.listdir(tmp_path) == ["version"]


def test_atomic_dir_keeps_the_old_directory_when_the_body_raises(tmp_path):
    target = tmp_path / "version"
    target.mkdir()
    (target / "kept.txt").write_text("old")

    with pytest.raises(OSError), atomic_dir(target) as tmp:
        (tmp / "partial.txt").write_text("new")
        raise OSError("disk full")

    assert os.listdir(target) == ["kept.txt"]
    assert os.listdir(tmp_path) == ["version"]


def test_file_hash_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(3 << 20))

    assert file_hash(path) == hashlib.md5(path.read_bytes()).hexdigest()
    assert file_hash(path, "sha256") == hashlib.sha256(path.read_bytes()).hexdigest()


def test_json_and_table_round_trips(tmp_path):
    write_json(tmp_path / "d.json", {"b": 1, "a": [1.5, None]})
    frame = pd.DataFrame({"z": [1.0, 2.0], "a": ["x", "y"]})
    write_table(frame, tmp_path / "t.parquet", {"features": {"z": "numeric", "a": "categorical"}})

    assert read_json(tmp_path / "d.json") == {"a": [1.5, None], "b": 1}
    assert (tmp_path / "d.json").read_text().startswith('{\n  "a"')
    table, meta = read_table(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(table, frame, check_dtype=False)
    assert list(meta["features"]) == ["z", "a"]
    assert temp_files(tmp_path) == []
