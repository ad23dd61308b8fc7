"""Property-based fuzzing of ``POST /predict`` in-process: no request body gives a 5xx.

Hypothesis generates arbitrary JSON (with NaN and infinity literals), near-valid row and
column bodies built from the model's own feature names and categories, random bytes under
every content type the service knows (and some it refuses), and corrupted ``.npy`` and
Arrow bodies. Every answer must be a 2xx or a 4xx with a JSON error, never a 5xx or a
traceback. The same properties run against a real server in test_server.py.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.conftest import serving_client

CONTENT_TYPES = [
    "application/json", "application/json; charset=utf-8", "application/x-npy",
    "application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.file",
    "application/python-pickle", "application/vnd.bentoml+pickle", "text/plain", "",
    "multipart/form-data; boundary=x", "application/octet-stream",
]
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=40,
)


@pytest.fixture(scope="module")
def client(auto_model):
    with serving_client({"SLIPWAY_MODEL": auto_model.tag, "SLIPWAY_MAX_INSTANCES": "50",
                         "SLIPWAY_MAX_BODY_BYTES": "100000",
                         "SLIPWAY_MAX_BINARY_BODY_BYTES": "100000"},
                        raise_server_exceptions=False) as c:
        yield c


def check(answer, rows: int | None = None) -> None:
    assert answer.status_code < 500, answer.text
    assert "Traceback" not in answer.text
    if answer.status_code >= 400:
        body = answer.json()
        assert body["error"] and body["reason"]
    elif rows is not None and answer.status_code == 200:
        assert len(answer.json()["predictions"]) == rows


def post(client, content: bytes, ctype: str = "application/json"):
    headers = {"Content-Type": ctype} if ctype else {}
    return client.post("/predict", content=content, headers=headers)


@FUZZ
@given(body=json_values)
def test_arbitrary_json(client, body):
    check(post(client, json.dumps(body, allow_nan=True).encode()))


def values_for(model) -> st.SearchStrategy:
    cats = [c for f in model.schema["features"] for c in f.get("categories", [])]
    return (st.none() | st.booleans() | st.integers() | st.integers(-10**400, 10**400)
            | st.floats() | st.floats(-1e4, 1e4) | st.sampled_from(cats) | st.text(max_size=5)
            | st.lists(st.integers(), max_size=2))


@FUZZ
@given(data=st.data())
def test_near_valid_rows(client, auto_model, data):
    names = [f["name"] for f in auto_model.schema["features"]]
    keys = st.sampled_from(names) | st.text(max_size=8)
    instance = (st.dictionaries(keys, values_for(auto_model), min_size=len(names) - 1,
                                max_size=len(names) + 1)
                | st.fixed_dictionaries({n: values_for(auto_model) for n in names})
                | st.lists(values_for(auto_model), min_size=len(names) - 1,
                           max_size=len(names) + 1))
    instances = data.draw(st.lists(instance, max_size=60))
    check(post(client, json.dumps({"instances": instances}, allow_nan=True).encode()),
          len(instances))


@FUZZ
@given(data=st.data())
def test_near_valid_columns(client, auto_model, data):
    names = [f["name"] for f in auto_model.schema["features"]]
    n = data.draw(st.integers(0, 8))
    columns = {name: data.draw(st.lists(values_for(auto_model), min_size=n, max_size=n + 1))
               for name in names if data.draw(st.integers(0, 9)) > 0}  # drop ~1 in 10
    if data.draw(st.booleans()):
        columns[data.draw(st.text(max_size=6))] = [1.0] * n
    check(post(client, json.dumps({"inputs": columns}, allow_nan=True).encode()))


@FUZZ
@given(content=st.binary(max_size=2000), ctype=st.sampled_from(CONTENT_TYPES))
def test_random_bytes_under_any_content_type(client, content, ctype):
    check(post(client, content, ctype))


def _arrow_body(model, n: int) -> bytes:
    import pyarrow as pa

    table = pa.Table.from_pandas(model.features.head(n), preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@FUZZ
@given(data=st.data())
def test_corrupted_binary_bodies(client, auto_model, data):
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).uniform(0, 1, (3, 7)))
    original, ctype = data.draw(st.sampled_from([
        (buf.getvalue(), "application/x-npy"),
        (_arrow_body(auto_model, 5), "application/vnd.apache.arrow.stream"),
    ]))
    body = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    check(post(client, bytes(body[:cut] if data.draw(st.booleans()) else body), ctype))


# ---- the Open Inference Protocol v2 routes ----------------------------------------------

def post_v2(client, model, content: bytes, ctype: str = "application/json",
            headers: dict[str, str] | None = None):
    return client.post(f"/v2/models/{model.name}/infer", content=content,
                       headers={**({"Content-Type": ctype} if ctype else {}), **(headers or {})})


V2_DATATYPES = ["FP64", "FP32", "FP16", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BYTES",
                "BF16", "float", ""]


@FUZZ
@given(body=json_values)
def test_v2_arbitrary_json(client, auto_model, body):
    check(post_v2(client, auto_model, json.dumps(body, allow_nan=True).encode()))


@FUZZ
@given(data=st.data())
def test_v2_near_valid_tensors(client, auto_model, data):
    names = [f["name"] for f in auto_model.schema["features"]]
    n = data.draw(st.integers(0, 6))
    shape = st.sampled_from([[n], [n, 1], [n, 2], [n + 1], [], [-1], [n, 0]]) | st.lists(
        st.integers(-2, 8), max_size=3)
    tensor = st.fixed_dictionaries({
        "name": st.sampled_from(names) | st.text(max_size=6),
        "datatype": st.sampled_from(V2_DATATYPES),
        "shape": shape,
        "data": st.lists(values_for(auto_model), min_size=max(0, n - 1), max_size=n + 1)
        | st.lists(st.lists(values_for(auto_model), max_size=2), max_size=n),
    }, optional={"parameters": st.fixed_dictionaries({}, optional={
        "binary_data_size": st.integers(-1, 64)})})
    inputs = data.draw(st.lists(tensor, max_size=len(names) + 1))
    body = {"inputs": inputs}
    if data.draw(st.booleans()):
        body["outputs"] = data.draw(st.lists(st.fixed_dictionaries({"name": st.sampled_from(
            ["label", "probabilities", "x"])}), max_size=3))
    check(post_v2(client, auto_model, json.dumps(body, allow_nan=True).encode()))


@FUZZ
@given(content=st.binary(max_size=600), head=st.integers(-5, 700),
       ctype=st.sampled_from(["application/octet-stream", "application/json", ""]))
def test_v2_random_binary_bodies(client, auto_model, content, head, ctype):
    check(post_v2(client, auto_model, content, ctype,
                  {"Inference-Header-Content-Length": str(head)}))
