"""``make images``: the stages image as built by podman from this work tree.

Real podman (no registry: the base is debootstrapped). Checks what the image holds (the
stages' packages, no torch or TensorFlow, this commit's code, a non-root user), what
build/images.json says about it, and that a code change rebuilds only the code layer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines import images

pytestmark = [pytest.mark.containers, pytest.mark.slow]

PROBE = """
import importlib.util, json, os, sys
mods = ["sklearn", "pandas", "pyarrow", "skops", "kfp", "dvc", "dvc_s3", "s3fs", "bentoml",
        "matplotlib", "yaml", "pydantic", "torch", "tensorflow", "keras"]
print(json.dumps({"uid": os.getuid(), "python": sys.version.split()[0],
                  "commit": os.environ.get("SLIPWAY_GIT_COMMIT"),
                  "in_image": os.environ.get("SLIPWAY_IN_IMAGE"),
                  "found": {m: importlib.util.find_spec(m) is not None for m in mods}}))
"""


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True,
                          env=images.podman_env()).stdout


def test_stages_image_holds_the_stages_packages_not_torch_or_tensorflow(stages_image):
    probe = json.loads(podman("run", "--rm", stages_image["ref"], "python3", "-c", PROBE))
    assert probe["uid"] == 1000, "the image runs as its non-root user"
    assert probe["python"].startswith("3.11.")
    assert probe["commit"] == images.git_commit(short=False)
    assert probe["in_image"] == "1"  # so a task's lineage records the image it ran in
    found = probe["found"]
    for module in ("sklearn", "pandas", "pyarrow", "skops", "kfp", "dvc", "dvc_s3", "s3fs",
                   "bentoml"):
        assert found[module], f"{module} is missing from the stages image"
    for module in ("torch", "tensorflow", "keras"):
        assert not found[module], f"{module} does not belong in the stages image"


def test_stages_image_has_this_work_trees_code_and_pins(stages_image):
    inside = podman("run", "--rm", stages_image["ref"], "cat",
                    "/opt/slipway/components/ingest.py")
    assert inside == (images.ROOT / "components" / "ingest.py").read_text()
    frozen = podman("run", "--rm", stages_image["ref"], "pip", "freeze")
    lock = {line.split("==")[0].lower(): line for line in
            (images.ROOT / "requirements.lock").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    for line in frozen.splitlines():
        name = line.split("==")[0].lower()
        if name in lock:
            assert line.lower() == lock[name].lower(), f"{line} is not pinned as {lock[name]}"
    assert "scikit-learn==" in frozen


def test_images_json_records_tag_digest_and_size(stages_image):
    recorded = images.built()["stages"]
    assert recorded == stages_image
    assert recorded["tag"] == f"localhost/slipway-stages:{images.git_commit()}"
    assert recorded["ref"] == f"localhost/slipway-stages@{recorded['digest']}"
    inspected = json.loads(podman("image", "inspect", recorded["tag"]))[0]
    assert inspected["Digest"] == recorded["digest"]
    assert inspected["Size"] == recorded["size"] > 0
    assert images.image_ref("stages") == recorded["ref"]
    assert images.require_built(["stages"]) == {"stages": recorded["ref"]}


def test_a_code_change_rebuilds_only_the_code_layer(stages_image, tmp_path: Path):
    """A copy of the work tree with one stage edited: every layer below the code is reused."""
    listed = subprocess.run(["git", "-C", str(images.ROOT), "ls-files", "-z"], check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (images.ROOT / rel).is_file():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(images.ROOT / rel, tmp_path / rel)
    with open(tmp_path / "components" / "ingest.py", "a") as f:
        f.write("\n# an edit\n")
    base = images.base_image()
    wheels = images.ROOT / images.BUILD_DIR / "wheels"
    edited = images.build_role("stages", base, wheels, root=tmp_path)
    try:
        old = json.loads(podman("image", "inspect", stages_image["ref"]))[0]["RootFS"]["Layers"]
        new = json.loads(podman("image", "inspect", edited["tag"]))[0]["RootFS"]["Layers"]
        assert edited["digest"] != stages_image["digest"]
        assert len(new) == len(old)
        assert new[:-1] == old[:-1], "layers below the code were rebuilt"
        assert new[-1] != old[-1]
        print(f"code-only rebuild: {edited['build_seconds']} s")
    finally:
        subprocess.run(["podman", "rmi", edited["tag"]], capture_output=True,
                       env=images.podman_env())


ROLE_PROBES = {
    "torch": "import torch, sklearn, kfp; from components.trainers import get_trainer; "
             "print(torch.__version__, torch.cuda.is_available())",
    "keras": "import keras, tensorflow, sklearn, kfp; print(keras.__version__)",
    "serving": "import bentoml, serving.service; print(bentoml.__version__)",
}


@pytest.mark.parametrize("role", sorted(ROLE_PROBES))
def test_the_other_roles_images_import_their_code(role, request):
    """The serving image (built by the session's fixture, as CI does) and the torch and keras
    images where `make images` built them (CI does not build those: they skip there)."""
    if role == "serving":
        request.getfixturevalue("serving_image")
    entry = images.built().get(role)
    if not entry or entry["digest"] not in images.podman_digests():
        pytest.skip(f"the {role} image is not built (make images ROLES={role})")
    out = podman("run", "--rm", entry["ref"], "python3", "-c", ROLE_PROBES[role])
    if role == "torch":
        assert out.split() == ["2.13.0+cpu", "False"], out
    assert out.strip()
    # Non-root: the trainers as the stages' user (components/images/Containerfile), serving as
    # the serving chart's runAsUser (serving/Containerfile).
    uid = "10001" if role == "serving" else "1000"
    assert podman("run", "--rm", entry["ref"], "id", "-u").strip() == uid
