"""Package: model version files and lineage, stable version ids, verify, BentoML registration."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from components.errors import SlipwayError
from components.io import read_json
from components.package import (
    current_packaged,
    package,
    register,
    verify,
    version_id,
)

PARAMS = {"train": {"estimator": "logistic_regression"}}
FILES = ["evaluation.json", "lineage.json", "metrics.json", "model.skops", "preprocessor.skops",
         "schema.json", "trainer.json", "training.json"]


@pytest.fixture
def version(tmp_path, built_classification):
    """A freshly packaged model version of the tiny classifier, and its lineage."""
    out = tmp_path / "package"
    lineage = package(built_classification.transformer, built_classification.model,
                      built_classification.evaluation_path, PARAMS, out)
    return out, lineage


def test_package_writes_the_files_and_their_sha256(version, built_classification):
    out, lineage = version

    assert sorted(p.name for p in out.iterdir()) == FILES
    assert read_json(out / "lineage.json") == lineage
    assert set(lineage["files"]) == set(FILES) - {"lineage.json"}
    for name, digest in lineage["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert lineage["version"] == version_id(lineage["files"])
    assert (out / "model.skops").read_bytes() == \
        (built_classification.model / "model.skops").read_bytes()


def test_lineage_records_where_the_model_came_from(version, built_classification):
    _, lineage = version
    evaluation = built_classification.evaluation

    assert lineage["task"] == "classification"
    assert (lineage["framework"], lineage["estimator"]) == ("sklearn", "logistic_regression")
    assert lineage["dataset"] == {k: evaluation["dataset"][k]
                                  for k in ("name", "source", "md5", "rows")}
    assert lineage["metrics"] == pytest.approx(evaluation["metrics"])
    assert lineage["params"] == PARAMS
    assert {"python", "scikit-learn", "numpy", "skops"} <= set(lineage["libraries"])
    assert set(lineage["code"]) == {"commit", "dirty"}
    assert read_json(version[0] / "metrics.json") == pytest.approx(evaluation["metrics"])


def test_git_commit_comes_from_the_environment_in_an_image(tmp_path, monkeypatch,
                                                           built_classification):
    monkeypatch.setenv("SLIPWAY_GIT_COMMIT", "feedbeef")

    lineage = package(built_classification.transformer, built_classification.model,
                      built_classification.evaluation_path, PARAMS, tmp_path / "v")

    assert lineage["code"] == {"commit": "feedbeef", "dirty": False}


def test_lineage_records_the_images_without_changing_the_version(tmp_path, version,
                                                                 built_classification):
    """A model trained in an image records that image's digest; the version id hashes the
    files only, so it equals the version of the same model trained as a subprocess."""
    image = "localhost/slipway-stages@sha256:" + "ab" * 32
    lineage = package(built_classification.transformer, built_classification.model,
                      built_classification.evaluation_path, PARAMS, tmp_path / "v",
                      images={"train": image, "package": image})

    assert lineage["images"] == {"train": image, "package": image}
    assert lineage["version"] == version[1]["version"] and version[1]["images"] == {}


def test_running_image_only_inside_an_image(monkeypatch):
    from components.stages import IMAGE_ENV, IN_IMAGE_ENV, running_image

    monkeypatch.setenv(IMAGE_ENV, "localhost/slipway-torch@sha256:" + "cd" * 32)
    monkeypatch.delenv(IN_IMAGE_ENV, raising=False)
    assert running_image() is None  # a local subprocess gets the variable too
    monkeypatch.setenv(IN_IMAGE_ENV, "1")
    assert running_image().startswith("localhost/slipway-torch@sha256:")


def test_version_id_is_stable_across_package_calls(tmp_path, version, built_classification):
    out, first = version

    again = package(built_classification.transformer, built_classification.model,
                    built_classification.evaluation_path, {"other": "params"}, tmp_path / "b")
    replaced = package(built_classification.transformer, built_classification.model,
                       built_classification.evaluation_path, PARAMS, out)

    assert again["version"] == replaced["version"] == first["version"]
    assert again["files"] == first["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "package"]


def test_version_id_depends_on_names_and_contents():
    base = version_id({"a.json": "11", "b.skops": "22"})

    assert base == version_id({"b.skops": "22", "a.json": "11"})
    assert len(base) == 12
    assert base != version_id({"a.json": "11", "b.skops": "23"})
    assert base != version_id({"c.json": "11", "b.skops": "22"})


def test_verify_accepts_an_intact_version(version):
    out, lineage = version

    assert verify(out) == lineage


@pytest.mark.parametrize("name", ["model.skops", "metrics.json", "schema.json"])
def test_verify_detects_a_changed_file(version, name):
    out, lineage = version
    data = bytearray((out / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / name).write_bytes(bytes(data))

    with pytest.raises(SlipwayError) as caught:
        verify(out)

    assert f"model version {lineage['version']}: {name} does not match its recorded sha256" \
        in caught.value.message


def test_verify_detects_a_truncated_file(version):
    out, _ = version
    data = (out / "preprocessor.skops").read_bytes()
    (out / "preprocessor.skops").write_bytes(data[: len(data) - 10])

    with pytest.raises(SlipwayError, match="preprocessor.skops does not match its recorded sha256"):
        verify(out)


def test_verify_detects_a_missing_file(version):
    out, lineage = version
    (out / "trainer.json").unlink()

    with pytest.raises(SlipwayError) as caught:
        verify(out)

    assert f"model version {lineage['version']}: file trainer.json is missing" \
        in caught.value.message
    assert "dvc pull" in caught.value.fix


def test_verify_detects_an_extra_file(version):
    out, _ = version
    (out / "surprise.py").write_text("print('hello')\n")

    with pytest.raises(SlipwayError, match="surprise.py"):
        verify(out)


def test_verify_refuses_a_directory_without_lineage(tmp_path):
    with pytest.raises(SlipwayError, match="is not a model version \\(lineage.json missing\\)"):
        verify(tmp_path)


def test_verify_refuses_unreadable_lineage(version):
    out, _ = version
    (out / "lineage.json").write_text("{not json")

    with pytest.raises(SlipwayError, match="lineage.json is unreadable"):
        verify(out)


def test_register_puts_the_version_in_the_bentoml_store(version, unique_model_name):
    import bentoml

    out, lineage = version

    tag = register(out, unique_model_name)

    assert tag == f"{unique_model_name}:{lineage['version']}"
    model = bentoml.models.get(tag)
    assert model.info.labels == {"task": "classification", "framework": "sklearn",
                                 "dataset": "tiny-classification"}
    assert model.info.metadata["dataset_md5"] == lineage["dataset"]["md5"]
    assert model.info.metadata["test_accuracy"] == pytest.approx(lineage["metrics"]["accuracy"])
    for name in FILES:
        assert (Path(model.path) / name).read_bytes() == (out / name).read_bytes()


def test_registering_twice_is_a_no_op(version, unique_model_name):
    import bentoml

    out, _ = version

    first = register(out, unique_model_name)
    second = register(out, unique_model_name)

    assert first == second
    assert [str(m.tag) for m in bentoml.models.list(unique_model_name)] == [first]


def test_register_refuses_a_tampered_version(version, unique_model_name):
    out, _ = version
    (out / "metrics.json").write_text('{"accuracy": 1.0}\n')

    with pytest.raises(SlipwayError, match="metrics.json does not match"):
        register(out, unique_model_name)
    assert current_packaged(unique_model_name) is None


def test_current_packaged_returns_version_and_metrics(version, unique_model_name):
    out, lineage = version
    assert current_packaged(unique_model_name) is None

    register(out, unique_model_name)

    assert current_packaged(unique_model_name) == (lineage["version"], lineage["metrics"])


def test_package_copies_no_hidden_files(tmp_path, built_classification):
    model = tmp_path / "model"
    shutil.copytree(built_classification.model, model)
    (model / ".model.skops.123.tmp").write_bytes(b"half written")

    lineage = package(built_classification.transformer, model,
                      built_classification.evaluation_path, PARAMS, tmp_path / "v")

    assert ".model.skops.123.tmp" not in lineage["files"]
    assert not (tmp_path / "v" / ".model.skops.123.tmp").exists()
