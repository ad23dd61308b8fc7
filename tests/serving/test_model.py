"""Finding model versions in the store and loading them only when every hash matches."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from components.errors import SlipwayError
from serving.model import LoadedModel, resolve, verify_version


def test_resolve_by_tag_name_version_and_newest(bc_model, auto_model):
    assert str(resolve(bc_model.tag).tag) == bc_model.tag
    assert str(resolve(bc_model.name).tag) == bc_model.tag
    assert str(resolve(bc_model.version).tag) == bc_model.tag
    assert str(resolve(f"{auto_model.name}:latest").tag) == auto_model.tag
    newest = resolve(None)
    assert newest.info.module == "slipway"
    for spec, words in [("nope:123", "not in the BentoML model store"),
                        ("no-such-model", "no Slipway model named or versioned")]:
        with pytest.raises(SlipwayError, match=words):
            resolve(spec)


def test_a_version_under_two_names_must_be_pinned_by_name(bc_model, unique_model_name):
    """The same files give the same version id: registered under a second name, the bare
    version is ambiguous and the error names both tags."""
    import bentoml

    from components.package import register

    twin = register(bc_model.package_dir, unique_model_name)
    try:
        with pytest.raises(SlipwayError, match="exists under several names") as caught:
            resolve(bc_model.version)
        assert bc_model.tag in str(caught.value) and twin in str(caught.value)
        assert caught.value.fix == "pin it as name:version"
        assert str(resolve(twin).tag) == twin
    finally:
        bentoml.models.delete(twin)
    assert str(resolve(bc_model.version).tag) == bc_model.tag


def test_loaded_model_predicts_what_the_model_predicts_in_process(bc_model, auto_model):
    for trained in (bc_model, auto_model):
        stored = resolve(trained.tag)
        model = LoadedModel.load(stored.path, stored.tag.name, stored.tag.version)
        schema = model.input_schema(10_000, float("inf"))
        rows = schema.from_json({"instances": trained.instances()})
        prediction = model.predict(rows)
        assert model.labels(prediction.outputs) == trained.expected_labels
        np.testing.assert_allclose(prediction.proba.sum(axis=1), 1.0)


@pytest.fixture
def copy_of(tmp_path, bc_model):
    def make():
        target = tmp_path / "version"
        shutil.copytree(resolve(bc_model.tag).path, target)
        return target
    return make


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "model.skops").write_bytes((d / "model.skops").read_bytes()[:-100]),
     "model.skops does not match its recorded sha256"),
    (lambda d: (d / "preprocessor.skops").unlink(), "preprocessor.skops is missing"),
    (lambda d: (d / "schema.json").write_text("{}"), "schema.json does not match"),
    (lambda d: (d / "extra.pkl").write_bytes(b"x"), "unexpected file(s) extra.pkl"),
    (lambda d: (d / "lineage.json").unlink(), "lineage.json missing"),
])
def test_damaged_versions_are_refused(copy_of, damage, words):
    version = copy_of()
    damage(version)
    with pytest.raises(SlipwayError) as info:
        LoadedModel.load(version, "t")
    assert words in str(info.value)


def test_an_edited_lineage_is_caught_by_the_version_id(copy_of):
    version = copy_of()
    (version / "model.skops").write_bytes(b"not a model")
    lineage = json.loads((version / "lineage.json").read_text())
    import hashlib

    lineage["files"]["model.skops"] = hashlib.sha256(b"not a model").hexdigest()
    (version / "lineage.json").write_text(json.dumps(lineage))
    with pytest.raises(SlipwayError, match="lineage.json was edited"):
        verify_version(version)


def test_store_tag_must_match_the_files(copy_of, bc_model):
    with pytest.raises(SlipwayError, match="the store tag says version 000000000000"):
        LoadedModel.load(copy_of(), "t", "000000000000")
