"""``make run RUNNER=containers``: the training pipeline with every task in its image.

Real podman, real kfp.local DockerRunner through podman's Docker-compatible socket
(pipelines.containers), the stages image built from this work tree. Covered: the
classification pipeline (breast_cancer, scikit-learn) gives the same summary and the same
model version id in containers as with the subprocess runner; a stage that raises and a
stage that is killed (SIGKILL, or over its memory limit) fail the run, with the error
printed: kfp 2.17.0's own DockerRunner can report such a task as a success
(kubeflow/pipelines#13332); Ctrl-C stops the run, its container and podman's service.
"""

# No `from __future__ import annotations`: kfp reads the components' annotations as objects.
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kfp import dsl
from kfp.dsl import Artifact, Output

from components.config import load_params
from pipelines import containers, images, local

pytestmark = [pytest.mark.containers, pytest.mark.slow]

RULE = "=" * 72
_SUMMARY_LINE = re.compile(r"^  (\S.*?)\s{2,}(\S.*)$")
# Lines of the summary that name this run's folders or times, not its results.
PER_RUN = ("report", "full log", "files")


def summary(output: str) -> dict[str, str]:
    _, rule, tail = output.partition(RULE)
    assert rule, f"no run summary in the output:\n{output[-3000:]}"
    return {m.group(1): m.group(2) for line in tail.splitlines()
            if (m := _SUMMARY_LINE.match(line))}


def run_cli(workdir: Path, store: Path, *args: str, expect: int = 0) -> str:
    env = {**os.environ, "BENTOML_HOME": str(store), "PYTHONUNBUFFERED": "1"}
    env.pop("SLIPWAY_GIT_COMMIT", None)
    proc = subprocess.run([sys.executable, "-m", "pipelines", "run", "training", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=1200)
    output = proc.stdout + proc.stderr
    assert proc.returncode == expect, \
        f"exit {proc.returncode}, expected {expect}:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("containers-run")
    (root / "params.yaml").write_text((images.ROOT / "params.yaml").read_text())
    return root


def test_training_in_containers_matches_the_subprocess_runner(stages_image, workdir: Path):
    name = f"t-{uuid.uuid4().hex[:8]}-{{dataset}}-{{task}}"
    common = ["--set", "dataset=breast_cancer", "--set", "train.framework=sklearn",
              "--set", f"package.model_name={name}"]
    plain = run_cli(workdir, workdir / "store-subprocess", *common,
                    "--set", f"kfp.pipeline_root={workdir / 'kfp-subprocess'}")
    boxed = run_cli(workdir, workdir / "store-containers", *common, "--runner", "containers",
                    "--set", f"kfp.pipeline_root={workdir / 'kfp-containers'}")
    assert "DockerRunner on podman" in boxed
    ours, theirs = summary(boxed), summary(plain)
    version = next(k for k in theirs if k.startswith("model version"))
    assert ours[version] == theirs[version], "a different model version id in containers"
    assert {k: v for k, v in ours.items() if not k.startswith(PER_RUN)} == \
        {k: v for k, v in theirs.items() if not k.startswith(PER_RUN)}
    # the containers run registered its version in the store it was given (mounted)
    assert any((workdir / "store-containers" / "models").rglob("model.yaml"))
    # and its lineage records the image, by digest, that trained and packaged the model
    (boxed_lineage,) = (workdir / "kfp-containers").glob("training-*/package-op/*/lineage.json")
    (plain_lineage,) = (workdir / "kfp-subprocess").glob("training-*/package-op/*/lineage.json")
    recorded = json.loads(boxed_lineage.read_text())["images"]
    assert recorded["train"] == recorded["package"] == images.image_ref("stages")
    assert recorded["train"].startswith("localhost/slipway-stages@sha256:")
    assert json.loads(plain_lineage.read_text())["images"] == {}  # not run in an image


def test_a_stage_that_raises_fails_the_cli_with_exit_1(stages_image, workdir: Path):
    out = run_cli(workdir, workdir / "store-fail", "--runner", "containers",
                  "--set", "dataset=breast_cancer", "--set", "train.framework=sklearn",
                  "--set", "validate.min_rows=100000",
                  "--set", f"kfp.pipeline_root={workdir / 'kfp-fail'}", expect=1)
    assert "min_rows" in out
    assert re.search(r"✗ validate-op failure", out), out[-3000:]


def _run_failing(component, workdir: Path, label: str) -> tuple[local.RunResult, str]:
    @dsl.pipeline(name=f"fails-{label}")
    def failing():
        component().set_container_image(images.image_ref("stages"))

    params = load_params(str(images.ROOT / "params.yaml"),
                         [f"kfp.pipeline_root={workdir / ('kfp-' + label)}"])
    terminal = io.StringIO()
    result = local.run(failing, params, {}, terminal=terminal, runner="containers")
    return result, terminal.getvalue() + result.log.read_text()


@dsl.component(base_image="unused", install_kfp_package=False)
def raises_op(out: Output[Artifact]):
    raise ValueError("this stage raises on purpose")


@dsl.component(base_image="unused", install_kfp_package=False)
def killed_op(out: Output[Artifact]):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("component, label, printed", [
    (raises_op, "raises", "ValueError: this stage raises on purpose"),
    (killed_op, "killed", "exited with status 137 (killed by SIGKILL"),
])
def test_a_failed_container_is_never_a_success(stages_image, workdir, component, label, printed):
    result, output = _run_failing(component, workdir, label)
    assert not result.ok, f"a failed task was reported as a success:\n{output[-3000:]}"
    assert result.failed_tasks == [component.name.replace("_", "-")]
    assert printed in output
    assert not (result.run_dir / component.name.replace("_", "-") / "executor_output.json"
                ).exists()


def test_no_container_is_left_behind(stages_image):
    with containers.podman_service() as url:
        import docker

        client = docker.DockerClient(base_url=url)
        try:
            left = [c.name for c in client.containers.list(all=True)
                    if c.image.id and any("slipway-stages" in t for t in c.image.tags)]
        finally:
            client.close()
    assert left == []


def _service_processes(sock: Path) -> list[int]:
    """Ids of processes whose command line names podman's socket of this work tree."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "system\0service" in cmdline and str(sock) in cmdline:
                found.append(int(proc.name))
    return found


def test_ctrl_c_stops_the_run_its_container_and_podmans_service(stages_image, workdir):
    sock = images.ROOT / "build" / "podman" / "podman.sock"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BENTOML_HOME": str(workdir / "store-int")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "run", "training", "--runner", "containers",
         "--set", f"kfp.pipeline_root={workdir / 'kfp-int'}"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # as a terminal's Ctrl-C finds it: SIGINT not ignored (a background job's would be)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "▸ validate-op" in line:  # the second task's container is starting
            break
    assert _service_processes(sock), "podman's service was not running during the run"
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, "".join(seen) + rest
    assert _service_processes(sock) == []
    assert not sock.exists()
    left = subprocess.run(["podman", "ps", "-a", "--format", "{{.Image}}"], check=True,
                          capture_output=True, text=True, env=images.podman_env()).stdout
    assert "slipway-stages" not in left, left


@dsl.component(base_image="unused", install_kfp_package=False)
def greedy_op(out: Output[Artifact]):
    block = bytearray(600 * 1024 * 1024)  # over the container's 128 MB
    block[::4096] = b"x" * len(block[::4096])


def test_a_task_killed_for_memory_fails_the_run(stages_image, tmp_path):
    """A container over its memory limit is SIGKILLed; the run fails and says so."""
    from kfp import local as kfp_local

    @dsl.pipeline(name="fails-memory")
    def greedy():
        greedy_op().set_container_image(images.image_ref("stages"))

    with containers.docker_runner(mem_limit="128m") as runner:
        kfp_local.init(runner=runner, pipeline_root=str(tmp_path), raise_on_error=True)
        printed = io.StringIO()
        saved, sys.stdout = sys.stdout, printed
        try:
            with pytest.raises(RuntimeError, match="greedy-op"):
                greedy()
        finally:
            sys.stdout = saved
    assert "exited with status 137 (killed by" in printed.getvalue()
    assert not (images.ROOT / "oom").exists(), "podman's 'oom' marker landed in the work tree"
