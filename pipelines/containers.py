"""The containers runner: kfp.local's DockerRunner against podman, every task in its image.

There is no Docker engine here; podman serves a Docker-compatible API on a unix socket.
:func:`docker_runner` starts ``podman system service --time=0 unix://build/podman/podman.sock``
with Slipway's containers.conf (runc, ulimits: see :func:`pipelines.images.podman_env`),
points ``DOCKER_HOST`` at it, yields a :class:`kfp.local.DockerRunner` and stops the service
afterwards, also on an error or Ctrl-C.

kfp 2.17.0's DockerRunner can report a failed task as a success (kubeflow/pipelines#13332):
it runs the container with ``auto_remove=True`` and takes a NotFound from ``wait()`` for
exit status 0; podman answers 500 where Docker answers 404. Here, once, at the boundary:
the container runs without auto-remove, its status is ``wait()``'s ``StatusCode`` (a task
killed by a signal or the OOM killer says so), and it is removed afterwards.

Tasks run as the image's non-root user (``slipway``, uid 1000) with the invoking user's
group added; the folders they write on this machine (the pipeline root, mounted at the same
path, and the BentoML model store, mounted at /var/lib/slipway/bentoml) are made writable
for that group. Used by ``python -m pipelines run training
--runner containers`` (``make run RUNNER=containers``); the images come from
``make images`` (:mod:`pipelines.images`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from components.errors import SlipwayError
from pipelines import images

INSTALL = "apt-get install podman runc uidmap slirp4netns"
ALTERNATIVE = "or use the subprocess runner (make run)"
STORE_MOUNT = "/var/lib/slipway/bentoml"  # the BentoML store, inside the containers


def _bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").resolve()


def _share_with_group(path: Path, gid: int, recursive: bool = False) -> None:
    """Make ``path`` (and, if ``recursive``, what is under it) writable for group ``gid``,
    setgid on folders so that what the tasks create stays in the group."""
    paths = [path]
    if recursive:
        paths += [p for p in path.rglob("*") if not p.is_symlink()]
    for p in paths:
        try:
            st = p.lstat()
            if st.st_uid != os.geteuid():
                continue  # not ours to change (a task's own files)
            if st.st_gid != gid:
                os.chown(p, -1, gid)
            want = stat.S_IRGRP | stat.S_IWGRP | (stat.S_IXGRP | stat.S_ISGID
                                                   if stat.S_ISDIR(st.st_mode) else 0)
            if st.st_mode & want != want:
                os.chmod(p, st.st_mode | want)
        except OSError:
            continue


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code - 128).name if code > 128 else ""
    except ValueError:
        return ""


def _make_handler_class(extra_volumes: dict[str, dict], gid: int):
    """kfp's DockerTaskHandler with an exit status that can be trusted."""
    import docker
    from kfp.local import docker_task_handler, status

    class SlipwayTaskHandler(docker_task_handler.DockerTaskHandler):
        def get_volumes_to_mount(self, client=None):
            volumes = super().get_volumes_to_mount(client)
            volumes.update(extra_volumes)
            return volumes

        def run(self) -> status.Status:
            _share_with_group(Path(self.pipeline_root), gid)
            client = docker.from_env()
            try:
                return status.Status.SUCCESS if self._run(client) == 0 else \
                    status.Status.FAILURE
            except docker.errors.DockerException as err:
                print(f"error: the container of this task could not be run: {err}")
                return status.Status.FAILURE
            finally:
                client.close()

        def _run(self, client) -> int:
            try:
                client.images.get(self.image)
            except docker.errors.ImageNotFound:
                print(f"error: image {self.image} not built\n  fix: run `make images`")
                return 1
            args = dict(self.runner.container_run_args)
            args["environment"] = {**args.get("environment", {}), **self.env_vars}
            container = client.containers.run(
                image=self.image, command=self.full_command, detach=True, stdout=True,
                stderr=True, volumes=self.get_volumes_to_mount(client), auto_remove=False,
                **args)
            try:
                for chunk in container.logs(stream=True, follow=True):
                    print(chunk.decode(errors="replace"), end="")
                code = int(container.wait().get("StatusCode", 1))
                if code:
                    container.reload()
                    state = container.attrs.get("State", {})
                    name = _signal_name(code)
                    # podman 4.3 on cgroups v1 does not set OOMKilled: a SIGKILL may be one
                    why = ("killed by the out-of-memory killer" if state.get("OOMKilled")
                           else "killed by SIGKILL: out of memory, or killed from outside"
                           if name == "SIGKILL" else f"killed by {name}" if name else "")
                    print(f"error: the task's container exited with status {code}"
                          + (f" ({why})" if why else ""))
                return code
            finally:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)

    return SlipwayTaskHandler


def check_podman() -> None:
    """A clear error when podman or the docker client library is missing."""
    if shutil.which("podman") is None:
        raise SlipwayError("the containers runner needs podman, which is not installed",
                           f"{INSTALL}; {ALTERNATIVE}")
    try:
        import docker  # noqa: F401
    except ImportError as err:
        raise SlipwayError("the containers runner needs the Python package docker",
                           f"make setup (it is pinned in pyproject.toml); {ALTERNATIVE}") from err


@contextlib.contextmanager
def podman_service(root: Path = images.ROOT, timeout: float = 30.0) -> Iterator[str]:
    """Run ``podman system service`` on a socket under build/ for the block; yields its
    ``unix://`` address. Stopped afterwards, whatever happens in the block."""
    check_podman()
    import docker

    folder = root / "build" / "podman"
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "podman.sock"
    sock.unlink(missing_ok=True)
    url = f"unix://{sock}"
    log = open(folder / "service.log", "ab")
    # cwd: podman 4.3's conmon leaves an empty file named "oom" in the service's working
    # directory when a container is killed for memory; keep it under build/, not in the
    # user's work tree.
    service = subprocess.Popen(["podman", "system", "service", "--time=0", url],
                               env=images.podman_env(root), stdout=log, stderr=log,
                               cwd=folder, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if service.poll() is not None:
                raise SlipwayError(f"podman system service exited ({service.returncode})",
                                   f"see {folder / 'service.log'}; {ALTERNATIVE}")
            if sock.exists():
                with contextlib.suppress(docker.errors.DockerException):
                    client = docker.DockerClient(base_url=url)
                    try:
                        client.ping()
                        break
                    finally:
                        client.close()
            if time.monotonic() > deadline:
                raise SlipwayError(f"podman's API socket {sock} did not answer in {timeout:.0f} s",
                                   f"see {folder / 'service.log'}; {ALTERNATIVE}")
            time.sleep(0.2)
        yield url
    finally:
        service.terminate()
        try:
            service.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        log.close()
        sock.unlink(missing_ok=True)


@contextlib.contextmanager
def docker_runner(roles: tuple[str, ...] = ("stages",), root: Path = images.ROOT,
                  mounts: dict[str, str] | None = None,
                  **container_run_args) -> Iterator[object]:
    """A kfp.local DockerRunner on podman for the block (see the module docstring).

    Args:
        roles: the image roles the run needs; each must be built from this work tree's code
            (:func:`pipelines.images.require_built`), checked before anything starts.
        root: the repository root (build/ holds the socket and containers.conf).
        mounts: host folders the tasks see at the same path, by mode ("ro" or "rw"): the
            data root a file dataset is read from, a local-directory DVC remote.
        container_run_args: more ``docker run`` arguments for every task.

    Raises:
        SlipwayError: podman missing (the install command, or the subprocess runner), an
            image not built (``make images``), or podman's service not starting.
    """
    check_podman()
    images.require_built(roles, root)
    from kfp import local
    from kfp.local import docker_task_handler

    gid = os.getegid()
    store = _bentoml_home()
    store.mkdir(parents=True, exist_ok=True)
    _share_with_group(store, gid, recursive=True)
    # At a fixed path: the host's may lie under a folder the image's user cannot enter
    # (root's ~/bentoml: the image has its own home for root, closed to others).
    extra = {str(store): {"bind": STORE_MOUNT, "mode": "rw"},
             **{str(Path(p).resolve()): {"bind": str(Path(p).resolve()), "mode": mode}
                for p, mode in (mounts or {}).items()}}
    env = {"BENTOML_HOME": STORE_MOUNT, **container_run_args.pop("environment", {})}
    handler = _make_handler_class(extra, gid)
    with podman_service(root) as url:
        saved_host = os.environ.get("DOCKER_HOST")
        saved_handler = docker_task_handler.DockerTaskHandler
        os.environ["DOCKER_HOST"] = url
        docker_task_handler.DockerTaskHandler = handler
        try:
            yield local.DockerRunner(group_add=[str(gid)], environment=env,
                                     **container_run_args)
        finally:
            docker_task_handler.DockerTaskHandler = saved_handler
            if saved_host is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = saved_host
