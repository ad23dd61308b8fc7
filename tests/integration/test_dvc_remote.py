"""components.dvc_remote against real DVC remotes: a local directory and an S3 object store.

Nothing is mocked: every case pushes with DVC's own transfer code and fetches with
``dvc pull`` in a throwaway repository. The S3 cases run against a real SeaweedFS server
on 127.0.0.1 (tests/integration/object_store.py; they skip only if its binary cannot
run). Covered, on both remotes: a directory pushed then fetched byte for byte (and its
pointer equal to the one ``dvc add`` writes); a single file by its md5; a corrupted object
in the remote (hash-mismatch error naming the file and both hashes, nothing left at the
destination); a missing object (error naming the file and ``dvc push``); and a wrong or
unreachable remote (error naming the remote).

    .venv/bin/python -m pytest tests/integration/test_dvc_remote.py
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.dvc_remote import fetch, push, remote_config
from components.errors import SlipwayError
from tests.integration.object_store import free_port

REPO = Path(__file__).resolve().parents[2]


def make_version(root: Path) -> Path:
    """A small model-version-like directory: nested files, one binary."""
    version = root / "v1"
    (version / "model").mkdir(parents=True)
    (version / "lineage.json").write_text(json.dumps({"version": "v1"}))
    (version / "model" / "weights.bin").write_bytes(bytes(range(256)) * 40)
    (version / "metrics.json").write_text('{"accuracy": 0.9}')
    return version


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def remote(request, tmp_path) -> tuple[dict, object]:
    """DVC remote settings and a way to reach its objects: (settings, object accessor)."""
    if request.param == "local":
        root = tmp_path / "remote"
        return {"name": "localdir", "url": str(root)}, LocalObjects(root)
    store = request.getfixturevalue("s3_store")
    prefix = f"t-{request.node.name.replace('[', '-').rstrip(']')}-{os.getpid()}"
    return store.remote(prefix), S3Objects(store, prefix)


class LocalObjects:
    def __init__(self, root: Path):
        self.root = root

    def _path(self, md5: str) -> Path:
        return self.root / "files" / "md5" / md5[:2] / md5[2:]

    def read(self, md5: str) -> bytes:
        return self._path(md5).read_bytes()

    def write(self, md5: str, data: bytes) -> None:
        path = self._path(md5)
        path.chmod(0o644)
        path.write_bytes(data)

    def delete(self, md5: str) -> None:
        self._path(md5).unlink()


class S3Objects:
    def __init__(self, store, prefix: str):
        self.store, self.prefix = store, prefix

    def _key(self, md5: str) -> str:
        return f"{self.prefix}/files/md5/{md5[:2]}/{md5[2:]}"

    def read(self, md5: str) -> bytes:
        return self.store.client().get_object(Bucket=self.store.bucket,
                                              Key=self._key(md5))["Body"].read()

    def write(self, md5: str, data: bytes) -> None:
        self.store.client().put_object(Bucket=self.store.bucket, Key=self._key(md5), Body=data)

    def delete(self, md5: str) -> None:
        self.store.client().delete_object(Bucket=self.store.bucket, Key=self._key(md5))


def test_push_then_fetch_a_directory(remote, tmp_path):
    settings, _ = remote
    version = make_version(tmp_path)
    pointer = push(version, settings)
    assert pointer["md5"].endswith(".dir") and pointer["nfiles"] == 3
    assert pointer["size"] == sum(p.stat().st_size for p in version.rglob("*") if p.is_file())
    # the same pointer `dvc add` writes for that directory
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    shutil.copytree(version, repo / "v1")
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "v1"], cwd=repo, check=True)
    added = yaml.safe_load((repo / "v1.dvc").read_text())["outs"][0]
    assert (added["md5"], added["size"], added["nfiles"]) == (
        pointer["md5"], pointer["size"], pointer["nfiles"])

    dest = tmp_path / "elsewhere" / "v1"
    assert fetch(pointer, settings, dest) == dest
    assert tree(dest) == tree(version)
    assert leftovers(dest.parent) == ["v1"]  # no scratch repository left behind
    # pushing again is a no-op that gives the same pointer
    assert push(version, settings) == pointer


def test_fetch_a_single_file_by_its_md5(remote, tmp_path):
    settings, objects = remote
    data = tmp_path / "auto-mpg.data"
    data.write_bytes(b"18.0 8 307.0\n15.0 8 350.0\n")
    pointer = push(data, settings)
    assert pointer["md5"] == hashlib.md5(data.read_bytes()).hexdigest()
    assert objects.read(pointer["md5"]) == data.read_bytes()
    dest = tmp_path / "root" / "data" / "auto-mpg.data"
    fetch({"md5": pointer["md5"], "path": "auto-mpg.data"}, settings, dest)
    assert dest.read_bytes() == data.read_bytes()
    assert leftovers(dest.parent) == ["auto-mpg.data"]


def test_corrupted_object_is_a_hash_mismatch_and_leaves_nothing(remote, tmp_path):
    settings, objects = remote
    version = make_version(tmp_path)
    pointer = push(version, settings)
    manifest = json.loads(objects.read(pointer["md5"]))
    entry = next(e for e in manifest if e["relpath"] == "model/weights.bin")
    objects.write(entry["md5"], b"not the weights")
    bad_md5 = hashlib.md5(b"not the weights").hexdigest()
    dest = tmp_path / "out" / "v1"
    with pytest.raises(SlipwayError) as err:
        fetch(pointer, settings, dest)
    text = str(err.value)
    assert "model/weights.bin" in text and entry["md5"] in text and bad_md5 in text
    assert "dvc push" in err.value.fix
    assert leftovers(dest.parent) == []

    # a corrupted single file: both hashes named too
    data = tmp_path / "d.csv"
    data.write_text("a,b\n1,2\n")
    file_pointer = push(data, settings)
    objects.write(file_pointer["md5"], b"a,b\n1,3\n")
    with pytest.raises(SlipwayError) as err:
        fetch({**file_pointer, "path": "d.csv"}, settings, tmp_path / "out" / "d.csv")
    assert file_pointer["md5"] in str(err.value)
    assert hashlib.md5(b"a,b\n1,3\n").hexdigest() in str(err.value)
    assert leftovers(tmp_path / "out") == []


def test_missing_object_names_the_file_and_dvc_push(remote, tmp_path):
    settings, objects = remote
    version = make_version(tmp_path)
    pointer = push(version, settings)
    manifest = json.loads(objects.read(pointer["md5"]))
    entry = next(e for e in manifest if e["relpath"] == "metrics.json")
    objects.delete(entry["md5"])
    dest = tmp_path / "out" / "v1"
    with pytest.raises(SlipwayError) as err:
        fetch({**pointer, "path": "models/v1"}, settings, dest)
    assert "models/v1" in str(err.value) and "metrics.json" in str(err.value)
    assert "dvc push" in err.value.fix
    assert leftovers(dest.parent) == []
    # a pointer whose data was never pushed at all
    with pytest.raises(SlipwayError, match="not complete|holds no DVC objects") as err:
        fetch({"md5": "0" * 32, "path": "data/x.csv"}, settings, tmp_path / "out" / "x.csv")
    assert "data/x.csv" in str(err.value) and "dvc push" in err.value.fix


def test_wrong_local_remote_names_it(tmp_path):
    with pytest.raises(SlipwayError) as err:
        fetch({"md5": "0" * 32, "path": "data/x.csv"},
              {"name": "mine", "url": str(tmp_path / "no-such-remote")}, tmp_path / "x.csv")
    assert "'mine'" in str(err.value) and "no-such-remote" in str(err.value)
    assert "dvc remote list" in err.value.fix
    assert leftovers(tmp_path) == ["no-such-remote"] or leftovers(tmp_path) == []


@pytest.mark.slow
def test_unreachable_endpoint_names_the_remote(tmp_path, s3_store):
    port = free_port()  # nothing listens there
    settings = {"name": "cluster", "url": "s3://slipway-dvc/x",
                "endpointurl": f"http://127.0.0.1:{port}"}
    with pytest.raises(SlipwayError) as err:
        fetch({"md5": "0" * 32, "path": "data/x.csv"}, settings, tmp_path / "x.csv")
    assert "cannot reach" in str(err.value) and f"127.0.0.1:{port}" in str(err.value)
    assert "'cluster'" in str(err.value) and "endpointurl" in err.value.fix
    assert leftovers(tmp_path) == []
    with pytest.raises(SlipwayError, match="cannot reach"):
        push(make_version(tmp_path), settings)


@pytest.mark.slow
def test_missing_bucket_is_a_wrong_remote(tmp_path, s3_store):
    settings = {"name": "cluster", "url": "s3://no-such-bucket/x",
                "endpointurl": s3_store.endpoint}
    with pytest.raises(SlipwayError) as err:
        fetch({"md5": "0" * 32, "path": "data/x.csv"}, settings, tmp_path / "x.csv")
    assert "no-such-bucket" in str(err.value)


def test_secrets_in_the_remote_settings_are_refused(tmp_path):
    with pytest.raises(SlipwayError, match="secret_access_key") as err:
        push(tmp_path, {"url": "s3://b/x", "secret_access_key": "k"})
    assert "environment" in err.value.fix


def test_remote_config_reads_the_default_remote(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=repo, check=True)
    with pytest.raises(SlipwayError, match="no default remote"):
        remote_config(repo)
    subprocess.run([*dvc, "remote", "add", "-d", "store", "s3://bucket/dvc"], cwd=repo,
                   check=True)
    subprocess.run([*dvc, "remote", "modify", "store", "endpointurl", "http://minio:9000"],
                   cwd=repo, check=True)
    subprocess.run([*dvc, "remote", "modify", "--local", "store", "secret_access_key", "s"],
                   cwd=repo, check=True)
    assert remote_config(repo) == {"name": "store", "url": "s3://bucket/dvc",
                                   "endpointurl": "http://minio:9000"}
    subprocess.run([*dvc, "remote", "add", "--local", "-f", "-d", "here", "../remote"],
                   cwd=repo, check=True)
    assert remote_config(repo) == {"name": "here", "url": str(tmp_path / "remote")}


def test_compiled_pipeline_carries_the_pointer_and_only_an_object_store_remote(
        tmp_path, monkeypatch):
    """`make compile` embeds the dataset's DVC pointer and the repository's default remote
    when other machines can reach it (s3://...), not a local directory."""
    from components.config import load_params
    from components.dvc_remote import pipeline_arguments
    from pipelines.cli import compile_all

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    shutil.copy(REPO / "data" / "auto-mpg.data.dvc", repo / "data")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=repo, check=True)
    subprocess.run([*dvc, "remote", "add", "-d", "here", str(tmp_path / "remote")], cwd=repo,
                   check=True)
    pointer = yaml.safe_load((repo / "data" / "auto-mpg.data.dvc").read_text())["outs"][0]
    local = pipeline_arguments("data/auto-mpg.data", repo)
    assert json.loads(local["dataset_pointer"])["md5"] == pointer["md5"]
    assert json.loads(local["dvc_remote"])["url"] == str(tmp_path / "remote")
    assert pipeline_arguments("data/auto-mpg.data", repo, portable=True)["dvc_remote"] == ""

    subprocess.run([*dvc, "remote", "add", "-d", "store", "s3://bucket/dvc"], cwd=repo,
                   check=True)
    subprocess.run([*dvc, "remote", "modify", "store", "endpointurl", "http://minio:9000"],
                   cwd=repo, check=True)
    params = load_params(REPO / "params.yaml", ["dataset=auto_mpg"])
    monkeypatch.chdir(repo)
    compile_all(params, tmp_path / "out", ["training"])
    spec = yaml.safe_load((tmp_path / "out" / "training.yaml").read_text())
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert json.loads(inputs["dataset_pointer"]["defaultValue"])["md5"] == pointer["md5"]
    assert json.loads(inputs["dvc_remote"]["defaultValue"]) == {
        "name": "store", "url": "s3://bucket/dvc", "endpointurl": "http://minio:9000"}


def test_ensure_dataset_fetches_only_what_is_absent(tmp_path):
    """The ingest task's step: data in place is read as it is; absent data is fetched by
    its pointer; absent data with no remote to fetch from is a clear error."""
    from components.dvc_remote import ensure_dataset

    settings = {"name": "localdir", "url": str(tmp_path / "remote")}
    data = tmp_path / "src.csv"
    data.write_text("a,b\n1,2\n")
    pointer = push(data, settings)
    root = tmp_path / "root"
    assert ensure_dataset(None, root, pointer, settings) is False  # a bundled dataset
    assert ensure_dataset("data/d.csv", root, pointer, settings) is True
    assert (root / "data" / "d.csv").read_text() == "a,b\n1,2\n"
    (root / "data" / "d.csv").write_text("local edit\n")
    assert ensure_dataset("data/d.csv", root, pointer, settings) is False  # left alone
    assert (root / "data" / "d.csv").read_text() == "local edit\n"
    assert ensure_dataset("data/other.csv", root, None, settings) is False  # ingest says
    with pytest.raises(SlipwayError, match="no DVC remote") as err:
        ensure_dataset("data/e.csv", root, pointer, None)
    assert "dvc remote add" in err.value.fix
