"""The service in-process (``to_asgi()``) under other settings: auth, damaged models.

Auth from ``SLIPWAY_API_TOKEN`` and from a token file (everything but the probes and
``/metrics`` needs it); and the not-ready states: an unreadable token file, a tampered model
file, an unknown model, an invalid setting. Each test starts its own service instance
(BentoML keeps one current instance per process).
"""

from __future__ import annotations

from tests.serving.asgi_helpers import post_json
from tests.serving.conftest import serving_client

TOKEN = "test-token-0123456789"


def test_auth_on_protects_everything_but_probes_and_metrics(bc_model, tmp_path, monkeypatch):
    with serving_client({"SLIPWAY_MODEL": bc_model.tag, "SLIPWAY_API_TOKEN": TOKEN}) as client:
        body = {"instances": bc_model.instances(2)}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            answer = post_json(client, body, **headers)
            assert answer.status_code == 401, headers
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert answer.json()["reason"] == "unauthorized"
            assert client.get("/metadata", headers=headers).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert post_json(client, body, **good).status_code == 200
        assert client.get("/metadata", headers=good).status_code == 200
        for probe in ("/livez", "/readyz", "/healthz"):
            assert client.get(probe).status_code == 200
        # BentoML's /metrics reads the multiprocess directory that `bentoml serve` sets up.
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        assert client.get("/metrics").status_code == 200
        assert client.get("/docs.json").status_code == 401  # everything else is protected


def test_auth_from_a_mounted_secret_file(bc_model, tmp_path):
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    with serving_client({"SLIPWAY_MODEL": bc_model.tag,
                         "SLIPWAY_API_TOKEN_FILE": str(secret)}) as client:
        assert client.get("/metadata").status_code == 401
        ok = client.get("/metadata", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200


def test_unreadable_token_file_keeps_the_service_not_ready(bc_model, tmp_path):
    with serving_client({"SLIPWAY_MODEL": bc_model.tag,
                         "SLIPWAY_API_TOKEN_FILE": str(tmp_path / "absent")}) as client:
        assert client.get("/readyz").status_code == 503
        assert client.get("/metadata", headers={"Authorization": "Bearer x"}).status_code == 401


def test_tampered_model_stays_not_ready_and_serves_nothing(bc_model, caplog):
    import bentoml

    from components.package import register
    from serving.model import resolve

    tag = register(bc_model.package_dir, "t-tampered")
    try:
        model_file = resolve(tag).path_of("model.skops")
        with open(model_file, "ab") as f:
            f.write(b"\0")  # one byte more than was packaged
        with serving_client({"SLIPWAY_MODEL": tag}) as client:
            assert client.get("/livez").status_code == 200
            assert client.get("/readyz").status_code == 503
            answer = post_json(client, {"instances": bc_model.instances(1)})
            assert answer.status_code == 503
            assert answer.json()["reason"] == "not_ready"
            assert "model.skops does not match its recorded sha256" in answer.json()["error"]
            assert client.get("/metadata").status_code == 503
            assert client.runtime.model is None  # nothing was loaded from it
    finally:
        # Same files, so same version as bc_model: gone, it cannot make that version ambiguous.
        bentoml.models.delete(tag)
    assert "not ready, serving nothing" in caplog.text
    assert "model.skops does not match its recorded sha256" in caplog.text


def test_unknown_model_and_bad_settings_are_not_ready(bc_model):
    with serving_client({"SLIPWAY_MODEL": "no-such-model:123"}) as client:
        assert client.get("/readyz").status_code == 503
        assert "not in the BentoML model store" in client.runtime.error
    with serving_client({"SLIPWAY_MODEL": bc_model.tag, "SLIPWAY_MAX_CONCURRENCY": "-1"}) as client:
        assert client.get("/readyz").status_code == 503
        answer = post_json(client, {"instances": bc_model.instances(1)})
        assert answer.status_code == 503 and "SLIPWAY_MAX_CONCURRENCY" in answer.json()["error"]


def test_compressed_arrow_over_the_decompressed_cap_is_a_413(bc_model):
    """A zstd Arrow body of 24 MB of zeros is a few KB on the wire: its decompressed size is
    read from the IPC headers and refused before anything is decompressed."""
    import numpy as np
    import pyarrow as pa

    names = [f["name"] for f in bc_model.schema["features"]]
    table = pa.table({n: np.zeros(100_000) for n in names})
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    body = sink.getvalue().to_pybytes()
    cap = 1 << 20
    assert len(body) < cap
    with serving_client({"SLIPWAY_MODEL": bc_model.tag,
                         "SLIPWAY_MAX_BINARY_BODY_BYTES": str(cap)}) as client:
        answer = client.post("/predict", content=body, headers={
            "Content-Type": "application/vnd.apache.arrow.stream"})
        assert answer.status_code == 413, answer.text
        assert answer.json()["reason"] == "body_too_large"
        assert f"limit of {cap} bytes" in answer.json()["error"]
        small = pa.table({n: np.zeros(10) for n in names})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, small.schema, options=options) as writer:
            writer.write_table(small)
        ok = client.post("/predict", content=sink.getvalue().to_pybytes(), headers={
            "Content-Type": "application/vnd.apache.arrow.stream"})
        assert ok.status_code in (200, 400), ok.text  # zeros may be out of range: not a 413
        assert ok.status_code != 413
