"""The Open Inference Protocol v2 routes in-process, through ``Slipway.to_asgi()``.

Health, server and model metadata, and inference with one tensor per feature (numeric and
BYTES categoricals, nulls as missing values) and with one ``[N, F]`` matrix, compared with
the model called in-process and with the v1 answers; Triton's binary tensor extension both
ways; every malformed request a 4xx that names the input; the same metrics, drift and
concurrency guard as v1. A real ``tritonclient`` against a real ``bentoml serve`` is in
test_server.py; the categorical model's v2 tests are in test_service_asgi_categorical.py.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tests.serving.asgi_helpers import post_json
from tests.serving.conftest import serving_client


@pytest.fixture(scope="module")
def bc_client(bc_model):
    with serving_client({"SLIPWAY_MODEL": bc_model.tag, "SLIPWAY_MAX_INSTANCES": "500",
                         "SLIPWAY_MAX_BODY_BYTES": "200000"}) as client:
        yield client


def infer_url(model, version: bool = False) -> str:
    base = f"/v2/models/{model.name}"
    return (f"{base}/versions/{model.version}" if version else base) + "/infer"


def feature_tensors(model, n: int | None = None) -> list[dict]:
    rows = model.instances(n)
    out = []
    for f in model.schema["features"]:
        numeric = f["type"] == "numeric"
        out.append({"name": f["name"], "datatype": "FP64" if numeric else "BYTES",
                    "shape": [len(rows)],
                    "data": [r[f["name"]] if numeric or r[f["name"]] is None
                             else str(r[f["name"]]) for r in rows]})
    return out


def post_v2(client, model, body, version=False, **headers):
    return client.post(infer_url(model, version), content=json.dumps(body).encode(),
                       headers={"Content-Type": "application/json", **headers})


def outputs(answer) -> dict:
    return {o["name"]: o for o in answer.json()["outputs"]}


def test_health_and_server_metadata(bc_client):
    assert bc_client.get("/v2/health/live").status_code == 200
    assert bc_client.get("/v2/health/ready").json() == {"ready": True}
    server = bc_client.get("/v2").json()
    assert server["name"] == "slipway" and "binary_tensor_data" in server["extensions"]


def test_model_metadata_declares_every_input(bc_client, bc_model):
    for path in (f"/v2/models/{bc_model.name}",
                 f"/v2/models/{bc_model.name}/versions/{bc_model.version}"):
        meta = bc_client.get(path).json()
        assert meta["name"] == bc_model.name and meta["versions"] == [bc_model.version]
        assert [i["name"] for i in meta["inputs"]] == [f["name"] for f in
                                                     bc_model.schema["features"]]
        assert {(i["datatype"], tuple(i["shape"])) for i in meta["inputs"]} == {("FP64", (-1,))}
        assert meta["outputs"][1] == {"name": "probabilities", "datatype": "FP64",
                                      "shape": [-1, len(bc_model.schema["classes"])]}
    ready = bc_client.get(f"/v2/models/{bc_model.name}/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True


@pytest.mark.parametrize("version", [False, True])
def test_feature_tensors_match_the_model_and_v1(bc_client, bc_model, version):
    answer = post_v2(bc_client, bc_model, {"id": "r1", "inputs": feature_tensors(bc_model)},
                     version=version)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["model_name"] == bc_model.name and data["model_version"] == bc_model.version
    assert data["id"] == "r1"
    out = outputs(answer)
    n = len(bc_model.expected_labels)
    assert out["label"]["datatype"] == "BYTES" and out["label"]["shape"] == [n]
    assert out["label"]["data"] == bc_model.expected_labels
    proba = np.asarray(out["probabilities"]["data"]).reshape(out["probabilities"]["shape"])
    v1 = post_json(bc_client, {"instances": bc_model.instances()}).json()
    np.testing.assert_array_equal(proba, np.asarray(v1["probabilities"]))


def test_one_matrix_tensor_for_numeric_models(bc_client, bc_model):
    names = [f["name"] for f in bc_model.schema["features"]]
    matrix = bc_model.features[names].to_numpy(dtype=np.float64)
    body = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": list(matrix.shape),
                        "data": matrix.astype(np.float32).ravel().tolist()}],
            "outputs": [{"name": "label"}]}
    answer = post_v2(bc_client, bc_model, body)
    assert answer.status_code == 200, answer.text
    assert [o["name"] for o in answer.json()["outputs"]] == ["label"]
    labels = outputs(answer)["label"]["data"]
    # float32 inputs may round a value across a split of the forest: nearly all agree.
    agree = np.mean(np.asarray(labels) == np.asarray(bc_model.expected_labels))
    assert agree > 0.97
    nested = {"inputs": [{"name": "x", "datatype": "FP64", "shape": list(matrix.shape),
                          "data": matrix.tolist()}]}
    answer = post_v2(bc_client, bc_model, nested)
    assert outputs(answer)["label"]["data"] == bc_model.expected_labels


def _binary_body(model, n: int) -> tuple[bytes, int]:
    rows = model.instances(n)
    inputs, blobs = [], []
    for f in model.schema["features"]:
        values = np.asarray([r[f["name"]] for r in rows], dtype="<f4")
        blob = values.tobytes()
        inputs.append({"name": f["name"], "datatype": "FP32", "shape": [n, 1],
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    head = json.dumps({"inputs": inputs, "outputs": [
        {"name": "label", "parameters": {"binary_data": True}},
        {"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    return head + b"".join(blobs), len(head)


def test_binary_tensor_extension_both_ways(bc_client, bc_model):
    body, head = _binary_body(bc_model, 12)
    answer = bc_client.post(infer_url(bc_model), content=body, headers={
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(head)})
    assert answer.status_code == 200, answer.text
    size = int(answer.headers["inference-header-content-length"])
    meta = json.loads(answer.content[:size])
    blob = answer.content[size:]
    label, proba = meta["outputs"]
    labels, at = [], 0
    for _ in range(label["shape"][0]):
        (k,) = struct.unpack_from("<I", blob, at)
        labels.append(blob[at + 4:at + 4 + k].decode())
        at += 4 + k
    assert at == label["parameters"]["binary_data_size"]
    values = np.frombuffer(blob[at:], dtype="<f8").reshape(proba["shape"])
    assert values.shape == (12, 2)
    np.testing.assert_allclose(values.sum(axis=1), 1.0)
    assert np.mean(np.asarray(labels) == np.asarray(bc_model.expected_labels[:12])) > 0.9


def _tensors(bc_model, n=1):
    return feature_tensors(bc_model, n)


def _with(bc_model, index, **changes):
    tensors = _tensors(bc_model)
    tensors[index] = {**tensors[index], **changes}
    return {"inputs": tensors}


BAD = [
    # (name, body builder, status, reason, field)
    ("unknown input", lambda m: {"inputs": [*_tensors(m), {"name": "mean_radios",
                                 "datatype": "FP64", "shape": [1], "data": [1.0]}]},
     400, "unknown_input", "mean_radios"),
    ("missing input", lambda m: {"inputs": _tensors(m)[1:]}, 400, "missing_input",
     "mean_radius"),
    ("wrong shape", lambda m: _with(m, 3, shape=[1, 2], data=[1.0, 2.0]), 400, "wrong_shape",
     "mean_area"),
    ("rows disagree", lambda m: _with(m, 2, shape=[2], data=[1.0, 2.0]), 400, "wrong_shape",
     "mean_perimeter"),
    ("wrong datatype", lambda m: _with(m, 0, datatype="BYTES", data=["1"]), 400,
     "wrong_datatype", "mean_radius"),
    ("unknown datatype", lambda m: _with(m, 0, datatype="FLOAT"), 400, "wrong_datatype",
     "mean_radius"),
    ("string in FP64", lambda m: _with(m, 1, data=["12"]), 400, "wrong_type",
     "mean_texture[0]"),
    ("float in INT32", lambda m: _with(m, 1, datatype="INT32", data=[1.5]), 400, "wrong_type",
     "mean_texture[0]"),
    ("length not the shape", lambda m: _with(m, 4, shape=[2]), 400, "wrong_length",
     "mean_smoothness"),
    ("out of range", lambda m: _with(m, 0, data=[1e9]), 400, "out_of_range",
     "mean_radius[0]"),
    ("no inputs", lambda m: {"inputs": []}, 400, "wrong_type", "inputs"),
    ("no name", lambda m: {"inputs": [{"shape": [1], "datatype": "FP64", "data": [1]}]},
     400, "missing_key", "inputs[0].name"),
    ("bad shape", lambda m: _with(m, 0, shape=[-1]), 400, "wrong_shape",
     "inputs[0] (mean_radius).shape"),
    ("duplicate input", lambda m: {"inputs": [*_tensors(m), _tensors(m)[0]]}, 400,
     "duplicate_feature", "mean_radius"),
    ("unknown output", lambda m: {"inputs": _tensors(m), "outputs": [{"name": "proba"}]},
     400, "unknown_output", "outputs[0]"),
    ("unknown key", lambda m: {"input": _tensors(m)}, 400, "unknown_key", "input"),
    ("matrix of wrong width", lambda m: {"inputs": [{"name": "x", "datatype": "FP64",
                                         "shape": [1, 3], "data": [1, 2, 3]}]},
     400, "wrong_shape", "x"),
]


@pytest.mark.parametrize("name, build, status, reason, field", BAD, ids=[b[0] for b in BAD])
def test_malformed_requests_name_the_input(bc_client, bc_model, name, build, status, reason,
                                           field):
    answer = post_v2(bc_client, bc_model, build(bc_model))
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert (body["reason"], body["field"]) == (reason, field), body
    assert field.split("[")[0].split(" ")[0] in body["error"] or field in body["error"]


def test_non_finite_values_are_named(bc_client, bc_model):
    text = json.dumps(_with(bc_model, 5, data=[0.0])).replace("[0.0]", "[NaN]")
    answer = bc_client.post(infer_url(bc_model), content=text.encode(),
                            headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["reason"] == "non_finite"
    assert answer.json()["field"] == "mean_compactness[0]"


def test_unknown_model_or_version_is_a_404(bc_client, bc_model):
    body = json.dumps({"inputs": _tensors(bc_model)}).encode()
    answer = bc_client.post("/v2/models/nope/infer", content=body)
    assert answer.status_code == 404 and answer.json()["reason"] == "unknown_model"
    assert "'nope'" in answer.json()["error"] and bc_model.name in answer.json()["error"]
    answer = bc_client.post(f"/v2/models/{bc_model.name}/versions/0000/infer", content=body)
    assert answer.status_code == 404 and answer.json()["reason"] == "unknown_version"
    assert bc_client.get("/v2/models/nope").status_code == 404
    assert bc_client.get("/v2/models/nope/ready").status_code == 404


def test_content_types(bc_client, bc_model):
    body = json.dumps({"inputs": _tensors(bc_model)}).encode()
    assert bc_client.post(infer_url(bc_model), content=body).status_code == 200  # none: JSON
    answer = bc_client.post(infer_url(bc_model), content=b"\x80\x04K\x01.",
                            headers={"Content-Type": "application/python-pickle"})
    assert answer.status_code == 415


def test_v2_shares_metrics_and_drift_with_v1(bc_client, bc_model):
    metrics = bc_client.runtime.metrics
    version = {"model_name": bc_model.name, "model_version": bc_model.version}

    def predicted() -> float:
        return sum(s.value for m in metrics.predictions.collect() for s in m.samples
                   if s.name == "slipway_predictions_total"
                   and all(s.labels.get(k) == v for k, v in version.items()))

    def invalid(reason) -> float:
        return metrics.invalid.labels(reason=reason)._value.get()

    before, bad_before = predicted(), invalid("unknown_input")
    drift_before = bc_client.runtime.drift.rows
    post_v2(bc_client, bc_model, {"inputs": _tensors(bc_model, 7)})
    post_v2(bc_client, bc_model, BAD[0][1](bc_model))
    assert predicted() == before + 7
    assert invalid("unknown_input") == bad_before + 1
    assert bc_client.runtime.drift.rows >= min(drift_before + 7, bc_client.runtime.drift.window)
