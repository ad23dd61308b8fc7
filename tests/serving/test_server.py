"""The service under a real ``bentoml serve`` process, driven by a real HTTP client (httpx)
and raw TCP sockets where a request must be held half-sent. All on 127.0.0.1.

Marked ``slow``: each server takes a few seconds to start (BentoML's import and the model's
hash check and load).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.serve import ServerProcess, free_port

pytestmark = pytest.mark.slow

TOKEN = "server-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BENTOML = str(Path(sys.executable).with_name("bentoml"))


class Server(ServerProcess):
    """``bentoml serve serving.service:Slipway`` with the settings in ``env`` (and no others)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__(lambda port: [BENTOML, "serve", "serving.service:Slipway", "--host",
                                       "127.0.0.1", "--port", str(port)], env, log)

    def wait_for(self, path: str, status: int = 200, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited:\n{self.log_text()[-3000:]}"
            try:
                if httpx.get(self.url + path, timeout=2).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{path} never answered {status}:\n{self.log_text()[-3000:]}")

    def wait_log(self, text: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.log_text()[-3000:]}"
            time.sleep(0.2)


def private_store(root: Path, tag: str) -> Path:
    """A BentoML home holding a copy of one model of the session's store.

    Every `bentoml serve` empties the Prometheus multiprocess directory under its
    BENTOML_HOME when it starts, which would wipe the metrics of the module's server; the
    servers that tests start and stop on the side therefore get a home of their own.
    """
    name, _ = tag.split(":")
    home = root / "bentoml-home"
    shutil.copytree(Path(os.environ["BENTOML_HOME"]) / "models" / name,
                    home / "models" / name)
    return home


@pytest.fixture(scope="module")
def server(bc_model, tmp_path_factory):
    srv = Server({"SLIPWAY_MODEL": bc_model.tag, "SLIPWAY_API_TOKEN": TOKEN,
                  "SLIPWAY_MAX_CONCURRENCY": "4", "SLIPWAY_MAX_INSTANCES": "200",
                  "SLIPWAY_MAX_BODY_BYTES": "300000"},
                 tmp_path_factory.mktemp("server") / "serve.log")
    try:
        srv.wait_for("/readyz")
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


def test_predictions_match_the_model_in_process(client, bc_model):
    answer = client.post("/predict", json={"instances": bc_model.instances()})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["predictions"] == bc_model.expected_labels
    assert data["model_version"] == bc_model.version
    np.testing.assert_allclose(np.asarray(data["probabilities"]).sum(axis=1), 1.0)


def test_concurrent_clients_get_their_own_answers(server, bc_model):
    import concurrent.futures

    rows = bc_model.instances(40)

    def one(i: int) -> tuple[int, str]:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
            answer = c.post("/predict", json={"instances": [rows[i]]})
            return answer.status_code, answer.json()["predictions"][0]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # = the concurrency limit
        results = list(pool.map(one, range(40)))
    assert [r[1] for r in results] == bc_model.expected_labels[:40]
    assert {r[0] for r in results} == {200}


def test_metadata(client, bc_model):
    meta = client.get("/metadata").json()
    assert meta["model_version"] == bc_model.version
    assert meta["classes"] == bc_model.schema["classes"]
    assert meta["lineage"]["dataset"]["md5"] == bc_model.schema["dataset"]["md5"]
    assert len(meta["input_schema"]["features"]) == 30


@pytest.mark.parametrize("content, ctype, status, reason, field", [
    (b'{"instances": [', "application/json", 400, "malformed_json", "body"),
    (b'{"instances": []}', "application/json", 400, "empty", "instances"),
    (json.dumps({"instances": [[0.0] * 30] * 201}).encode(), "application/json", 413,
     "too_many_instances", "instances"),
    (b'{"instances": [[1, 2]]}', "application/json", 400, "wrong_length", "instances[0]"),
    (b'{"instances": [{"mean_radius": 1}]}', "application/json", 400, "missing_feature",
     "instances[0].mean_texture"),
    (b"\x80\x04K\x01.", "application/python-pickle", 415, "unsupported_media_type",
     "Content-Type"),
    (b"\x80\x04K\x01.", "application/vnd.bentoml+pickle", 415, "unsupported_media_type",
     "Content-Type"),
    (b"{}", "text/plain", 415, "unsupported_media_type", "Content-Type"),
    (b"x" * 300_001, "application/json", 413, "body_too_large", "body"),
])
def test_bad_input_over_http(client, content, ctype, status, reason, field):
    answer = client.post("/predict", content=content, headers={"Content-Type": ctype})
    assert answer.status_code == status, answer.text
    assert (answer.json()["reason"], answer.json()["field"]) == (reason, field)
    assert "Traceback" not in answer.text


@pytest.mark.parametrize("name, value, reason", [
    ("mean_radius", "12", "wrong_type"),
    ("mean_radius", 1e12, "out_of_range"),
    ("mean_radius", None, None),  # null is a missing value, imputed
    ("mean_area", True, "wrong_type"),
    ("worst_area", "NaN", "non_finite"),
    ("worst_area", "Infinity", "non_finite"),
    ("unknown_feature", 1.0, "unknown_feature"),
])
def test_bad_values_over_http(client, bc_model, name, value, reason):
    row = dict(bc_model.instances(1)[0])
    row[name] = value
    text = json.dumps({"instances": [row]})
    if value in ("NaN", "Infinity"):
        text = text.replace(f'"{value}"', value)  # the bare literal, as some encoders send it
    answer = client.post("/predict", content=text.encode(),
                         headers={"Content-Type": "application/json"})
    if reason is None:
        assert answer.status_code == 200
        return
    assert answer.status_code == 400
    assert answer.json()["reason"] == reason
    assert answer.json()["field"] == f"instances[0].{name}"


def test_auth_is_required_but_probes_and_metrics_stay_open(server, bc_model):
    body = {"instances": bc_model.instances(1)}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        answer = httpx.post(server.url + "/predict", json=body, headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == 'Bearer realm="slipway"'
        assert httpx.get(server.url + "/metadata", headers=headers).status_code == 401
    assert httpx.post(server.url + "/predict", json=body, headers=AUTH).status_code == 200
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(server.url + path).status_code == 200


def test_metrics_endpoint_has_bentoml_and_slipway_metrics(server, client, bc_model):
    from prometheus_client.parser import text_string_to_metric_families

    client.post("/predict", json={"instances": bc_model.instances(30)})
    client.post("/predict", json={"instances": [[1.0]]})  # one invalid request
    text = httpx.get(server.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {f.name: f.samples for f in families.values()}

    def find(family: str, sample: str | None = None, **labels):
        return [s for s in samples.get(family, []) if (sample is None or s.name == sample)
                and all(s.labels.get(k) == v for k, v in labels.items())]

    assert find("bentoml_service_request", endpoint="/predict")
    assert find("bentoml_service_request_duration_seconds", endpoint="/predict")
    version = {"model_name": bc_model.name, "model_version": bc_model.version}
    counted = sum(s.value for s in find("slipway_predictions", "slipway_predictions_total",
                                        **version))
    assert counted >= 30
    for cls in set(bc_model.expected_labels[:30]):
        assert find("slipway_predictions", "slipway_predictions_total", **version,
                    **{"class": cls})
    assert find("slipway_prediction_confidence", "slipway_prediction_confidence_bucket",
                **version)
    info = find("slipway_model_info", **version, dataset_md5=bc_model.schema["dataset"]["md5"])
    assert info and info[0].value == 1
    assert find("slipway_invalid_requests", "slipway_invalid_requests_total",
                reason="wrong_length")[0].value >= 1
    assert find("slipway_invalid_requests", "slipway_invalid_requests_total",
                reason="unauthorized")
    drift = find("slipway_input_drift_psi", **version)
    assert {s.labels["feature"] for s in drift} == {f["name"] for f in bc_model.schema["features"]}
    assert find("slipway_model_ready")[0].value == 1
    assert find("slipway_batch_rows", "slipway_batch_rows_count")[0].value >= 1


def _hold_request(server: Server, body: bytes, sent: int) -> socket.socket:
    """A request whose headers and first ``sent`` body bytes are sent, the rest held back."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sock.sendall(head + body[:sent])
    return sock


def _read_answer(sock: socket.socket, timeout: float = 30) -> tuple[int, bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed without an answer"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-answer"
        rest += chunk
    return int(head.split()[1]), rest


def test_overload_gets_503_with_retry_after_at_once(server, bc_model):
    body = json.dumps({"instances": bc_model.instances(1)}).encode()
    held = [_hold_request(server, body, 5) for _ in range(4)]  # = SLIPWAY_MAX_CONCURRENCY
    try:
        time.sleep(0.5)  # the server has seen their headers: four slots taken
        started = time.monotonic()
        answer = httpx.post(server.url + "/predict", content=body, headers={
            **AUTH, "Content-Type": "application/json"}, timeout=10)
        elapsed = time.monotonic() - started
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["reason"] == "overloaded"
        assert elapsed < 2.0  # refused straight away, not after a timeout
        # Probes are not limited.
        assert httpx.get(server.url + "/readyz").status_code == 200
        for sock in held:
            sock.sendall(body[5:])
        for sock in held:
            status, payload = _read_answer(sock)
            assert status == 200 and json.loads(payload)["model_version"] == bc_model.version
    finally:
        for sock in held:
            sock.close()
    assert httpx.post(server.url + "/predict", content=body, headers={
        **AUTH, "Content-Type": "application/json"}).status_code == 200


def test_sigterm_drains_in_flight_requests(bc_model, tmp_path):
    srv = Server({"SLIPWAY_MODEL": bc_model.tag, "SLIPWAY_API_TOKEN": TOKEN,
                  "BENTOML_HOME": str(private_store(tmp_path, bc_model.tag))},
                 tmp_path / "serve.log")
    try:
        srv.wait_for("/readyz")
        body = json.dumps({"instances": bc_model.instances(5)}).encode()
        sock = _hold_request(srv, body, 10)
        time.sleep(0.5)
        os.kill(srv.proc.pid, signal.SIGTERM)  # as Kubernetes does, to the main process
        time.sleep(1.0)  # shutdown has begun; the request is still half-sent
        sock.sendall(body[10:])
        status, payload = _read_answer(sock)
        sock.close()
        assert status == 200
        assert json.loads(payload)["predictions"] == bc_model.expected_labels[:5]
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()


def test_a_tampered_model_keeps_the_server_not_ready(bc_model, tmp_path):
    home = private_store(tmp_path, bc_model.tag)
    path = home / "models" / bc_model.name / bc_model.version / "preprocessor.skops"
    path.write_bytes(path.read_bytes()[:-64])  # truncated
    srv = Server({"SLIPWAY_MODEL": bc_model.tag, "BENTOML_HOME": str(home)},
                 tmp_path / "serve.log")
    try:
        srv.wait_for("/livez")
        srv.wait_log("not ready, serving nothing")
        assert "preprocessor.skops does not match its recorded sha256" in srv.log_text()
        for _ in range(3):
            assert httpx.get(srv.url + "/readyz").status_code == 503
            answer = httpx.post(srv.url + "/predict", json={"instances": bc_model.instances(1)})
            assert answer.status_code == 503 and answer.json()["reason"] == "not_ready"
            time.sleep(0.3)
        assert "slipway_model_ready 0.0" in httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=json_values | st.builds(lambda rows: {"instances": rows}, st.lists(
    st.lists(st.floats(-50, 5000) | st.none() | st.text(max_size=3), min_size=29, max_size=31),
    max_size=5)), ctype=st.sampled_from(["application/json", "application/x-npy",
                                         "application/vnd.apache.arrow.stream", "text/csv"]))
def test_fuzzed_bodies_never_get_a_5xx(client, body, ctype):
    answer = client.post("/predict", content=json.dumps(body, allow_nan=True).encode(),
                         headers={"Content-Type": ctype})
    assert answer.status_code < 500, answer.text
    assert "Traceback" not in answer.text


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="needs a Prometheus binary (apt-get install prometheus)")
def test_a_real_prometheus_scrapes_the_metrics(server, client, bc_model, tmp_path):
    client.post("/predict", json={"instances": bc_model.instances(10)})
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: slipway\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{server.port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        def query(q: str) -> list:
            answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": q})
            return answer.json()["data"]["result"] if answer.status_code == 200 else []

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if query('up{job="slipway"} == 1') and query("slipway_model_info"):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        info = query("slipway_model_info")
        targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets").json()
        assert info, json.dumps(targets)[:2000]
        assert info[0]["metric"]["model_version"] == bc_model.version
        assert info[0]["metric"]["dataset_md5"] == bc_model.schema["dataset"]["md5"]
        assert query('sum by (class) (slipway_predictions_total)')
        assert query('bentoml_service_request_total{endpoint="/predict"}')
        assert query("max(slipway_input_drift_psi) >= 0")
    finally:
        os.killpg(prom.pid, signal.SIGTERM)
        prom.wait(30)
        log.close()


# ---- the Open Inference Protocol v2 with a real client -----------------------------------

@pytest.mark.parametrize("binary", [False, True], ids=["json-tensors", "binary-tensors"])
def test_tritonclient_works_unchanged(server, bc_model, binary):
    """``tritonclient[http]`` (pinned in the dev dependencies), as an application written for
    Triton, KServe or MLServer would use it: JSON tensors, and Triton's binary extension."""
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    # (A fresh headers dict per call: tritonclient adds its own headers to the one given.)
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()  # open probes
        assert client.is_model_ready(bc_model.name, headers=dict(AUTH))
        assert client.is_model_ready(bc_model.name, bc_model.version, headers=dict(AUTH))
        meta = client.get_model_metadata(bc_model.name, headers=dict(AUTH))
        names = [i["name"] for i in meta["inputs"]]
        assert meta["versions"] == [bc_model.version]
        values = bc_model.features[names].to_numpy(dtype=np.float64)
        inputs = []
        for j, name in enumerate(names):
            tensor = httpclient.InferInput(name, [len(values)], "FP64")
            tensor.set_data_from_numpy(values[:, j], binary_data=binary)
            inputs.append(tensor)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=binary)
                  for n in ("label", "probabilities")]
        result = client.infer(bc_model.name, inputs, outputs=wanted, headers=dict(AUTH),
                              model_version=bc_model.version, request_id="tc-1")
        labels = [v.decode() if isinstance(v, bytes) else str(v)
                  for v in result.as_numpy("label")]
        assert labels == bc_model.expected_labels
        proba = result.as_numpy("probabilities")
        assert proba.shape == (len(values), 2)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        response = result.get_response()
        assert response["model_version"] == bc_model.version and response["id"] == "tc-1"

        # The same matrix as one [N, F] tensor.
        matrix = httpclient.InferInput("input-0", list(values.shape), "FP64")
        matrix.set_data_from_numpy(values, binary_data=binary)
        result = client.infer(bc_model.name, [matrix], headers=dict(AUTH))
        assert [v.decode() if isinstance(v, bytes) else str(v)
                for v in result.as_numpy("label")] == bc_model.expected_labels

        # A malformed request: the client raises with the server's message, naming the input.
        inputs[3] = httpclient.InferInput("mean_aera", [len(values)], "FP64")
        inputs[3].set_data_from_numpy(values[:, 3], binary_data=binary)
        with pytest.raises(InferenceServerException, match="mean_aera") as info:
            client.infer(bc_model.name, inputs, headers=dict(AUTH))
        assert info.value.status() == "400"
        with pytest.raises(InferenceServerException, match="unauthorized|bearer"):
            client.infer(bc_model.name, [matrix])  # no token
    finally:
        client.close()


def test_v2_routes_over_http(client, bc_model):
    names = [f["name"] for f in bc_model.schema["features"]]
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 30],
                        "data": bc_model.features[names].to_numpy()[0].tolist()}]}
    answer = client.post(f"/v2/models/{bc_model.name}/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == bc_model.expected_labels[:1]
    bad = client.post(f"/v2/models/{bc_model.name}/versions/nope/infer", json=body)
    assert bad.status_code == 404 and bad.json()["reason"] == "unknown_version"
    assert httpx.get(client.base_url.join("/v2/health/ready")).status_code == 200  # open
    assert httpx.get(client.base_url.join(f"/v2/models/{bc_model.name}")).status_code == 401


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=json_values | st.builds(lambda tensors: {"inputs": tensors}, st.lists(
    st.fixed_dictionaries({"name": st.sampled_from(["mean_radius", "x", ""]),
                           "datatype": st.sampled_from(["FP64", "BYTES", "INT8", "?"]),
                           "shape": st.lists(st.integers(-1, 31), max_size=3),
                           "data": st.lists(st.floats() | st.text(max_size=2), max_size=4)}),
    max_size=3)))
def test_fuzzed_v2_bodies_never_get_a_5xx(client, bc_model, body):
    answer = client.post(f"/v2/models/{bc_model.name}/infer",
                         content=json.dumps(body, allow_nan=True).encode(),
                         headers={"Content-Type": "application/json"})
    assert answer.status_code < 500, answer.text
    assert "Traceback" not in answer.text


# ---- shutdown under load, and the 413 that Python clients read ---------------------------

def _keepalive_client(port: int, request: bytes, stop, counts: dict, lock) -> None:
    """Send requests one after another on a keep-alive connection, reconnecting when an
    answer says ``Connection: close``, until the server refuses to connect or ``stop``.
    A request written on an open connection that gets no whole answer is counted lost."""
    sock = None
    while not stop.is_set():
        if sock is None:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:  # refused: the server stopped accepting; nothing was sent
                with lock:
                    counts["refused"] += 1
                return
        try:
            sock.sendall(request)
        except OSError:
            with lock:
                counts["send_failed"] += 1
            sock.close()
            sock = None
            continue
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed before the answer")
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").lower().split("\r\n")
            length = int(next(x.split(":")[1] for x in lines if x.startswith("content-length")))
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed mid-answer")
                rest += chunk
        except OSError:
            with lock:
                counts["lost"] += 1
            sock.close()
            sock = None
            continue
        status = int(lines[0].split()[1])
        with lock:
            counts[status] = counts.get(status, 0) + 1
            if "connection: close" in lines:
                counts["closed_by_server"] += 1
        if "connection: close" in lines:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


def test_sigterm_under_load_loses_no_request(bc_model, tmp_path):
    """8 keep-alive connections under load, SIGTERM to `bentoml serve` after 1.5 s: every
    request written on an open connection gets its whole answer (the drain answers with
    Connection: close, new connections are refused), and the server exits 0."""
    import threading

    srv = Server({"SLIPWAY_MODEL": bc_model.tag,
                  "BENTOML_HOME": str(private_store(tmp_path, bc_model.tag))},
                 tmp_path / "serve.log")
    try:
        srv.wait_for("/readyz")
        body = json.dumps({"instances": bc_model.instances(1)}).encode()
        request = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                   f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        counts = {"lost": 0, "refused": 0, "send_failed": 0, "closed_by_server": 0}
        lock, stop = threading.Lock(), threading.Event()
        clients = [threading.Thread(target=_keepalive_client,
                                    args=(srv.port, request, stop, counts, lock))
                   for _ in range(8)]
        for c in clients:
            c.start()
        time.sleep(1.5)
        answered_before = counts.get(200, 0)
        os.kill(srv.proc.pid, signal.SIGTERM)
        for c in clients:
            c.join(60)
        stop.set()
        assert srv.proc.wait(60) == 0, srv.log_text()[-3000:]
    finally:
        stop.set()
        srv.stop()
    assert answered_before > 0
    assert counts["lost"] == 0 and counts["send_failed"] == 0, counts
    assert set(counts) - {"lost", "refused", "send_failed", "closed_by_server"} == {200}, counts
    assert counts["closed_by_server"] >= 1, counts  # the drain's answers closed connections
    assert counts["refused"] == 8, counts  # and every client ended on a refused connect


@pytest.fixture(scope="module")
def capped_server(bc_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("capped")
    srv = Server({"SLIPWAY_MODEL": bc_model.tag, "SLIPWAY_MAX_BODY_BYTES": str(1 << 20),
                  "BENTOML_HOME": str(private_store(root, bc_model.tag))}, root / "serve.log")
    try:
        srv.wait_for("/readyz")
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("times", [1, 3, 30])
@pytest.mark.parametrize("client_lib", ["urllib", "requests", "httpx"])
def test_python_clients_read_the_413(capped_server, client_lib, times):
    """Python's http.client sends the whole body before reading: the server reads and
    discards it (up to SLIPWAY_MAX_DRAIN_BYTES) so the 413 arrives instead of a reset."""
    cap = 1 << 20
    body = b" " * (cap * times + 1)
    url = capped_server.url + "/predict"
    headers = {"Content-Type": "application/json"}
    if client_lib == "urllib":
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers),
                                   timeout=60)
        status, answer = info.value.code, json.loads(info.value.read())
    elif client_lib == "requests":
        import requests

        r = requests.post(url, data=body, headers=headers, timeout=60)
        status, answer = r.status_code, r.json()
    else:
        r = httpx.post(url, content=body, headers=headers, timeout=60)
        status, answer = r.status_code, r.json()
    assert status == 413
    assert answer["reason"] == "body_too_large" and str(cap) in answer["error"]
    # The server is fine afterwards.
    ok = httpx.post(url, json={"instances": [[None] * 30]}, timeout=30)
    assert ok.status_code == 200
