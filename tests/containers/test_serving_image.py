"""The serving image run as ``charts/slipway-serving`` runs it: read-only, non-root, no caps.

Real podman, real helm (``make deploy-tools``; the test skips without it), a real model
version trained and registered in the session's store (the recipe of tests/serving/conftest.py)
and shipped in a model image (``pipelines.images.build_model_image``: the serving image plus
that version in its BentoML store). The container gets what the rendered Deployment gives the
pod, read from the chart rendered with its default values (only the image is set, by digest):
its runAsUser/runAsGroup/fsGroup, a read-only root filesystem, one tmpfs per emptyDir mount
and no other writable path (podman's own tmpfs on /run, /tmp and /var/tmp are turned off),
the capabilities it drops, no-new-privileges for ``allowPrivilegeEscalation: false``, its env
and port, its probe paths. Checked: the readiness probe's path answers 200; ``/predict`` and
v2 ``infer`` answer what the model predicts in-process, with the model version; ``/metrics``
counts those requests; BentoML's multiprocess metrics land in the chart's emptyDir; a write
anywhere outside the emptyDirs fails with EROFS; the process runs with the chart's uid, no
effective capability and NoNewPrivs.

Not covered (no Kubernetes here): resource limits (podman's cgroups are not usable on this
machine), the probes' timing, the Secret-mounted token (auth is off by default).

    .venv/bin/python -m pytest tests/containers/test_serving_image.py
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import httpx
import pytest

from benchmarks.serve import free_port
from pipelines import images
from tests.deploy.conftest import SERVING, render
from tests.serving.conftest import _train_and_register

pytestmark = [pytest.mark.containers, pytest.mark.slow]


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check,
                          env=images.podman_env(), timeout=300)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _train_and_register(
        tmp_path_factory.mktemp("image-model"), f"t-img-{uuid.uuid4().hex[:6]}", None,
        ["dataset=breast_cancer", "train.framework=sklearn", "train.estimator=random_forest",
         "train.hyperparameters.random_forest.n_estimators=20", "train.cv_folds=3"])


@pytest.fixture(scope="module")
def model_image(serving_image, model) -> dict:
    built = images.build_model_image(model.tag, serving_image["ref"])
    yield built
    podman("rmi", "--force", built["tag"], check=False)


@pytest.fixture(scope="module")
def pod(model_image) -> dict:
    """The serving container and pod spec of the chart's Deployment, default values."""
    repository, digest = model_image["ref"].split("@")
    objs = render(SERVING, sets=[f"image.repository={repository}", f"image.digest={digest}"],
                  show_only="templates/deployment.yaml")
    spec = objs[0]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return {"spec": spec, "container": container}


def emptydir_mounts(pod: dict) -> list[tuple[str, dict]]:
    """(mountPath, emptyDir) of every volume mount; any other kind of volume fails the test:
    this test knows how to give a container emptyDirs only."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounts = []
    for m in pod["container"].get("volumeMounts", []):
        volume = volumes[m["name"]]
        assert "emptyDir" in volume, f"volume {m['name']} is not an emptyDir: {volume}"
        mounts.append((m["mountPath"], volume["emptyDir"]))
    return mounts


def podman_run_args(pod: dict, port: int) -> list[str]:
    """``podman run`` options equivalent to the pod spec (what Kubernetes would enforce)."""
    spec, c = pod["spec"], pod["container"]
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup"))
    assert uid and gid, "the chart must name a non-root uid and gid"
    assert csc.get("readOnlyRootFilesystem") is True
    args = ["--user", f"{uid}:{gid}", "--read-only", "--read-only-tmpfs=false"]
    if psc.get("fsGroup"):
        args += ["--group-add", str(psc["fsGroup"])]
    for cap in csc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    for cap in csc.get("capabilities", {}).get("add", []):
        args += ["--cap-add", cap]
    if csc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for path, empty in emptydir_mounts(pod):  # an emptyDir is 0777, writable by any uid
        size = str(empty.get("sizeLimit", ""))
        unit = {"Ki": "k", "Mi": "m", "Gi": "g"}.get(size[-2:])
        assert not size or unit, f"sizeLimit {size!r}: this test reads Ki, Mi and Gi only"
        opts = "rw,mode=0777" + (f",size={size[:-2]}{unit}" if size else "")
        args += ["--tmpfs", f"{path}:{opts}"]
    for e in c.get("env", []):
        args += ["--env", f"{e['name']}={e['value']}"]
    (p,) = c["ports"]
    args += ["--publish", f"127.0.0.1:{port}:{p['containerPort']}"]
    return args


@pytest.fixture(scope="module")
def server(pod, tmp_path_factory):
    port = free_port()
    name = f"slipway-serving-test-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    args = podman_run_args(pod, port)
    print("podman run", *args, pod["container"]["image"])
    podman("run", "--detach", "--name", name, *args, pod["container"]["image"])
    url = f"http://127.0.0.1:{port}"
    ready = pod["container"]["readinessProbe"]["httpGet"]["path"]
    live = pod["container"]["startupProbe"]["httpGet"]["path"]
    status = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert state == "true", f"the container stopped:\n{logs(name)}"
            try:
                status = httpx.get(url + ready, timeout=5).status_code
                if status == 200:
                    assert httpx.get(url + live, timeout=5).status_code == 200
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        else:
            raise AssertionError(f"{ready} answered {status}, not 200, within 180 s:\n"
                                 + logs(name))
        print(f"serving container ready in {time.perf_counter() - started:.1f} s")
        yield {"url": url, "name": name}
    finally:
        podman("rm", "--force", "--time", "2", name, check=False)


def logs(name: str) -> str:
    done = podman("logs", name, check=False)
    return (done.stdout + done.stderr)[-4000:]


def exec_sh(server: dict, script: str) -> subprocess.CompletedProcess:
    return podman("exec", server["name"], "sh", "-c", script, check=False)


def test_image_and_chart_agree_on_the_writable_paths(pod, model_image):
    """BentoML writes its multiprocess metrics under $BENTOML_HOME: the chart must mount an
    emptyDir there, and on /tmp; the image must not need any other writable path."""
    env = dict(e.split("=", 1) for e in json_config(model_image["ref"])["Env"])
    paths = {path for path, _ in emptydir_mounts(pod)}
    assert env["BENTOML_HOME"] == images.SERVING_BENTOML_HOME
    assert paths == {"/tmp", f"{env['BENTOML_HOME']}/prometheus_multiproc_dir"}
    assert env["SLIPWAY_MODEL"] == model_image["model"]


def json_config(ref: str) -> dict:
    return json.loads(podman("image", "inspect", ref).stdout)[0]["Config"]


def test_ready_predict_v1_and_v2_with_the_model_version(server, model):
    url, n = server["url"], 8
    v1 = httpx.post(url + "/predict", json={"instances": model.instances(n)}, timeout=30)
    assert v1.status_code == 200, v1.text
    body = v1.json()
    assert body["model_version"] == model.version
    assert body["predictions"] == model.expected_labels[:n]

    frame = model.features.head(n)
    inputs = [{"name": f["name"], "datatype": "FP64", "shape": [n],
               "data": [float(x) for x in frame[f["name"]]]} for f in model.schema["features"]]
    v2 = httpx.post(f"{url}/v2/models/{model.name}/infer", json={"inputs": inputs},
                    timeout=30)
    assert v2.status_code == 200, v2.text
    answer = v2.json()
    assert answer["model_name"] == model.name and answer["model_version"] == model.version
    labels = next(o for o in answer["outputs"] if o["name"] == "label")
    assert labels["data"] == model.expected_labels[:n]


def test_metrics_count_the_requests(server, model):
    from prometheus_client.parser import text_string_to_metric_families

    url = server["url"]
    for _ in range(3):
        assert httpx.post(url + "/predict", json={"instances": model.instances(2)},
                          timeout=30).status_code == 200
    text = httpx.get(url + "/metrics", timeout=30).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def total(name: str, **labels) -> float:
        return sum(s.value for s in samples if s.name == name
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    assert total("bentoml_service_request_total", endpoint="/predict",
                 http_response_code="200") >= 3
    assert total("slipway_predictions_total", model_name=model.name,
                 model_version=model.version) >= 6
    # the multiprocess files are in the chart's emptyDir, not a fallback under /tmp
    listing = exec_sh(server, f"ls {images.SERVING_BENTOML_HOME}/prometheus_multiproc_dir")
    assert re.search(r"\.db$", listing.stdout, re.M), listing


@pytest.mark.parametrize("path", ["/opt/slipway/serving/x", "/opt/slipway/bentoml/models/x",
                                  "/home/slipway/x", "/var/tmp/x", "/run/x", "/x"])
def test_root_filesystem_is_read_only_outside_the_emptydirs(server, path):
    done = exec_sh(server, f"echo x > {path}")
    assert done.returncode != 0, f"{path} was writable"
    assert "Read-only file system" in done.stderr, done.stderr


def test_emptydirs_are_writable_and_the_process_is_unprivileged(server, pod):
    for path, _ in emptydir_mounts(pod):
        done = exec_sh(server, f"echo x > {path}/probe && rm {path}/probe")
        assert done.returncode == 0, f"{path}: {done.stderr}"
    status = exec_sh(server, "id -u; id -g; grep -E '^(CapPrm|CapEff|CapBnd|NoNewPrivs)' "
                             "/proc/1/status").stdout.split()
    psc = pod["spec"]["securityContext"]
    assert status[:2] == [str(psc["runAsUser"]), str(psc["runAsGroup"])]
    fields = dict(zip(status[2::2], status[3::2], strict=True))
    for caps in ("CapPrm:", "CapEff:", "CapBnd:"):  # CapBnd: every capability dropped
        assert int(fields[caps], 16) == 0, f"{caps} {fields[caps]}"
    assert fields["NoNewPrivs:"] == "1"
