"""The service in-process (``to_asgi()``) on a model with a categorical feature and nulls.

Predictions from JSON rows and columns and from an Arrow body with nulls (answered as Arrow)
are compared with the model called in-process; ``/metadata`` is checked for categories,
ranges, metrics and lineage; bad categorical values for the 4xx that names them, and
``.npy`` for its 415 on a model with categorical features.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.serving.asgi_helpers import check_predictions, post_json
from tests.serving.conftest import serving_client
from tests.serving.test_v2_asgi import feature_tensors, outputs, post_v2


@pytest.fixture(scope="module")
def auto_client(auto_model):
    with serving_client({"SLIPWAY_MODEL": auto_model.tag}) as client:
        yield client


@pytest.mark.parametrize("shape", ["objects", "lists", "columns"])
def test_predictions_match_the_model_in_process(auto_client, auto_model, shape):
    check_predictions(auto_client, auto_model, shape)


def test_arrow_body_with_nulls_and_arrow_answer(auto_client, auto_model):
    import pyarrow as pa

    table = pa.Table.from_pandas(auto_model.features, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    answer = auto_client.post(
        "/predict", content=sink.getvalue().to_pybytes(),
        headers={"Content-Type": "application/vnd.apache.arrow.stream",
                 "Accept": "application/vnd.apache.arrow.stream"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/vnd.apache.arrow.stream")
    result = pa.ipc.open_stream(answer.content).read_all()
    assert result.column("prediction").to_pylist() == auto_model.expected_labels
    assert result.schema.metadata[b"model_version"].decode() == auto_model.version
    assert len(result.column("probabilities")[0]) == len(auto_model.schema["classes"])


def test_metadata(auto_client, auto_model):
    meta = auto_client.get("/metadata").json()
    assert meta["model_version"] == auto_model.version
    assert meta["model_name"] == auto_model.name
    assert meta["framework"] == "sklearn" and meta["task"] == "classification"
    assert meta["classes"] == auto_model.schema["classes"]
    features = {f["name"]: f for f in meta["input_schema"]["features"]}
    assert features["cylinders"]["categories"] == ["3", "4", "5", "6", "8"]
    assert features["weight"]["type"] == "number"
    assert features["weight"]["min"] < features["weight"]["training_min"]
    assert set(meta["metrics"]) >= {"accuracy", "f1_macro"}
    lineage = meta["lineage"]
    assert lineage["dataset"]["md5"] == auto_model.schema["dataset"]["md5"]
    assert lineage["params"]["train"]["estimator"] == "random_forest"
    assert "commit" in lineage["code"]
    assert set(lineage["files"]) >= {"model.skops", "preprocessor.skops", "schema.json"}


def test_categorical_checks(auto_client, auto_model):
    row = dict(auto_model.instances(1)[0])
    for value, reason in (("7", "unknown_category"), (8.0, "wrong_type"), (True, "wrong_type")):
        data = post_json(auto_client, {"instances": [{**row, "cylinders": value}]}).json()
        assert (data["reason"], data["field"]) == (reason, "instances[0].cylinders")
        assert "'8'" in data["error"]  # lists the categories
    ok = post_json(auto_client, {"instances": [{**row, "cylinders": 8, "horsepower": None}]})
    assert ok.status_code == 200  # an int names its category; null is imputed
    buf = io.BytesIO()
    np.save(buf, np.ones((1, 7)))
    answer = auto_client.post("/predict", content=buf.getvalue(),
                              headers={"Content-Type": "application/x-npy"})
    assert answer.status_code == 415 and "cylinders" in answer.json()["error"]


# ---- Open Inference Protocol v2: BYTES tensors for categoricals, nulls -------------------

def test_categorical_inputs_are_bytes(auto_client, auto_model):
    meta = auto_client.get(f"/v2/models/{auto_model.name}").json()
    types = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert types["cylinders"] == "BYTES" and types["mpg"] == "FP64"
    assert "matrix_input" not in meta["parameters"]


def test_categoricals_and_nulls(auto_client, auto_model):
    answer = post_v2(auto_client, auto_model, {"inputs": feature_tensors(auto_model)})
    assert answer.status_code == 200, answer.text
    assert outputs(answer)["label"]["data"] == auto_model.expected_labels
    # nulls are missing values, imputed as in v1
    tensors = feature_tensors(auto_model, 3)
    for t in tensors:
        if t["name"] in ("horsepower", "cylinders"):
            t["data"][0] = None
    v2 = post_v2(auto_client, auto_model, {"inputs": tensors})
    assert v2.status_code == 200, v2.text
    rows = auto_model.instances(3)
    rows[0].update(horsepower=None, cylinders=None)
    v1 = post_json(auto_client, {"instances": rows}).json()
    assert outputs(v2)["label"]["data"] == v1["predictions"]
    np.testing.assert_array_equal(
        np.asarray(outputs(v2)["probabilities"]["data"]).reshape(3, -1), v1["probabilities"])
