"""pipelines.images: which image a task runs, and the runners' checks that it can.

Real git repositories in temporary folders; no podman needed (the set of images podman holds
is passed in where a test needs one). Building is tested in tests/containers/.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from components.errors import SlipwayError
from pipelines import containers, images

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git work tree with what the stages image is built from, one commit."""
    for rel, text in {
        "requirements.lock": "numpy==2.4.6\n",
        "components/images/stages.txt": "numpy\n",
        "components/images/none.txt": "# nothing\n",
        "components/images/Containerfile": "FROM scratch\n",
        "components/__init__.py": "",
        "components/ingest.py": "X = 1\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    return tmp_path


def _record(repo: Path, role: str = "stages", **fields) -> dict:
    entry = {"ref": f"localhost/slipway-{role}@{DIGEST}", "digest": DIGEST, "size": 1,
             "tag": f"localhost/slipway-{role}:x", "code": images.code_hash(role, repo),
             **fields}
    (repo / "build").mkdir(exist_ok=True)
    (repo / images.IMAGES_FILE).write_text(json.dumps({role: entry}))
    return entry


def test_image_ref_is_the_commit_tag_until_built(repo: Path) -> None:
    commit = images.git_commit(repo)
    assert len(commit) == 12
    assert images.image_ref("stages", repo) == f"slipway-stages:{commit}"
    assert images.image_ref("torch", repo) == f"slipway-torch:{commit}"


def test_image_ref_is_the_digest_once_built(repo: Path) -> None:
    _record(repo)
    assert images.image_ref("stages", repo) == f"localhost/slipway-stages@{DIGEST}"
    # other roles still by tag
    assert images.image_ref("keras", repo).startswith("slipway-keras:")


def test_unknown_role_is_named_with_the_valid_ones(repo: Path) -> None:
    with pytest.raises(SlipwayError,
                       match=r"(?s)unknown image role 'stage'.*did you mean 'stages'"):
        images.image_ref("stage", repo)


def test_require_built_says_make_images_when_not_built(repo: Path) -> None:
    with pytest.raises(SlipwayError) as err:
        images.require_built(["stages"], repo, present=set())
    assert "image for role 'stages' not built" in str(err.value)
    assert "make images" in str(err.value)


def test_require_built_when_podman_lost_the_image(repo: Path) -> None:
    _record(repo)
    with pytest.raises(SlipwayError, match=r"not built: .* is not in podman's image store"):
        images.require_built(["stages"], repo, present={"sha256:" + "cd" * 32})


def test_require_built_refuses_an_image_of_other_code(repo: Path) -> None:
    _record(repo)
    assert images.require_built(["stages"], repo, present={DIGEST}) == {
        "stages": f"localhost/slipway-stages@{DIGEST}"}
    (repo / "components/ingest.py").write_text("X = 2\n")
    with pytest.raises(SlipwayError, match="out of date.*other code") as err:
        images.require_built(["stages"], repo, present={DIGEST})
    assert "make images" in str(err.value)


def test_code_hash_follows_code_and_pins_not_caches(repo: Path) -> None:
    before = images.code_hash("stages", repo)
    (repo / "components/__pycache__").mkdir()
    (repo / "components/__pycache__/ingest.cpython-311.pyc").write_bytes(b"\0")
    assert images.code_hash("stages", repo) == before
    (repo / "requirements.lock").write_text("numpy==2.4.5\n")
    assert images.code_hash("stages", repo) != before


def test_broken_images_file_is_a_clear_error(repo: Path) -> None:
    (repo / "build").mkdir()
    (repo / images.IMAGES_FILE).write_text("{not json")
    with pytest.raises(SlipwayError, match="not valid JSON"):
        images.image_ref("stages", repo)


def test_no_podman_names_the_install_and_the_subprocess_runner(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no podman on it
    with pytest.raises(SlipwayError) as err:
        containers.check_podman()
    text = str(err.value)
    assert "podman" in text and "apt-get install podman" in text
    assert "subprocess runner (make run)" in text


def test_podman_env_points_at_slipways_containers_conf(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CONTAINERS_CONF", raising=False)
    env = images.podman_env(tmp_path)
    conf = Path(env["CONTAINERS_CONF"])
    assert conf == tmp_path / "build" / "containers.conf"
    assert 'runtime = "runc"' in conf.read_text()
    assert "nofile=20000:20000" in conf.read_text()
