"""The BentoML service in-process, through ``Slipway.to_asgi()``: the breast_cancer model.

Predictions (JSON and ``.npy``) are compared with the model called in-process; every kind of
bad input is checked for a 4xx that names the field; probes, the body cap and metrics too.
Auth and not-ready states are in test_service_asgi_config.py; the same behaviour against a
real ``bentoml serve`` process is in test_server.py.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from tests.serving.asgi_helpers import check_predictions, post_json
from tests.serving.conftest import serving_client


@pytest.fixture(scope="module")
def bc_client(bc_model):
    with serving_client({"SLIPWAY_MODEL": bc_model.tag, "SLIPWAY_MAX_INSTANCES": "500",
                         "SLIPWAY_MAX_BODY_BYTES": "200000"}) as client:
        yield client


def test_probes_and_readiness(bc_client):
    assert bc_client.get("/livez").status_code == 200
    assert bc_client.get("/readyz").status_code == 200
    assert bc_client.runtime.ready


@pytest.mark.parametrize("shape", ["objects", "lists", "columns"])
def test_predictions_match_the_model_in_process(bc_client, bc_model, shape):
    check_predictions(bc_client, bc_model, shape)


def test_npy_body(bc_client, bc_model):
    names = [f["name"] for f in bc_model.schema["features"]]
    buf = io.BytesIO()
    np.save(buf, bc_model.features[names].to_numpy(dtype=np.float64))
    answer = bc_client.post("/predict", content=buf.getvalue(),
                            headers={"Content-Type": "application/x-npy"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == bc_model.expected_labels


def _bc_row(bc_model, **changes):
    row = dict(bc_model.instances(1)[0])
    row.update(changes)
    return row


BAD_BODIES = [
    # (name, body bytes or JSON, content type, status, reason, field)
    ("malformed JSON", b'{"instances": [', "application/json", 400, "malformed_json", "body"),
    ("empty body", b"", "application/json", 400, "malformed_json", "body"),
    ("not UTF-8", b"\xff\xfe", "application/json", 400, "malformed_json", "body"),
    ("NaN literal", b'{"instances": [[NaN]]}', "application/json", 400, "wrong_length",
     "instances[0]"),
    ("a list, not an object", [1, 2], "application/json", 400, "wrong_type", "body"),
    ("no instances", {"rows": []}, "application/json", 400, "unknown_key", "rows"),
    ("empty instances", {"instances": []}, "application/json", 400, "empty", "instances"),
    ("too many instances", {"instances": [[0.0] * 30] * 501}, "application/json", 413,
     "too_many_instances", "instances"),
    ("wrong list length", {"instances": [[1.0, 2.0]]}, "application/json", 400, "wrong_length",
     "instances[0]"),
    ("pickle", b"\x80\x04K\x01.", "application/python-pickle", 415, "unsupported_media_type",
     "Content-Type"),
    ("BentoML pickle", b"\x80\x04K\x01.", "application/vnd.bentoml+pickle", 415,
     "unsupported_media_type", "Content-Type"),
    ("x-pickle", b"\x80\x04K\x01.", "application/x-pickle", 415, "unsupported_media_type",
     "Content-Type"),
    ("form", b"a=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type",
     "Content-Type"),
    ("text", b"{}", "text/plain", 415, "unsupported_media_type", "Content-Type"),
    ("latin-1 JSON", b"{}", "application/json; charset=latin-1", 415, "unsupported_media_type",
     "Content-Type"),
    ("not npy", b"hello", "application/x-npy", 400, "malformed_request", "body"),
    ("not arrow", b"hello", "application/vnd.apache.arrow.stream", 400, "malformed_request",
     "body"),
]


@pytest.mark.parametrize("name, body, ctype, status, reason, field", BAD_BODIES,
                         ids=[b[0] for b in BAD_BODIES])
def test_bad_requests_get_a_4xx_naming_the_field(bc_client, name, body, ctype, status, reason,
                                                 field):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = bc_client.post("/predict", content=content, headers={"Content-Type": ctype})
    assert answer.status_code == status, answer.text
    data = answer.json()
    assert (data["reason"], data.get("field")) == (reason, field)
    assert "Traceback" not in answer.text


@pytest.mark.parametrize("change, status, reason, field", [
    ({"mean_radius": "12.0"}, 400, "wrong_type", "instances[0].mean_radius"),
    ({"mean_radius": True}, 400, "wrong_type", "instances[0].mean_radius"),
    ({"mean_radius": 1e9}, 400, "out_of_range", "instances[0].mean_radius"),
    ({"mean_radius": 10**400}, 400, "non_finite", "instances[0].mean_radius"),
    ({"mean_radius": [1]}, 400, "wrong_type", "instances[0].mean_radius"),
    ({"mean_radiuss": 1.0}, 400, "unknown_feature", "instances[0].mean_radiuss"),
])
def test_bad_values_name_the_feature(bc_client, bc_model, change, status, reason, field):
    answer = post_json(bc_client, {"instances": [_bc_row(bc_model, **change)]})
    assert answer.status_code == status
    data = answer.json()
    assert (data["reason"], data["field"]) == (reason, field)
    assert "did you mean 'mean_radius'" in data["error"] or reason != "unknown_feature"


def test_missing_feature_and_nan_literal_by_name(bc_client, bc_model):
    row = _bc_row(bc_model)
    del row["worst_area"]
    data = post_json(bc_client, {"instances": [row]}).json()
    assert (data["reason"], data["field"]) == ("missing_feature", "instances[0].worst_area")
    text = json.dumps({"instances": [_bc_row(bc_model)]}).replace(
        '"mean_texture": ' + json.dumps(_bc_row(bc_model)["mean_texture"]), '"mean_texture": NaN')
    answer = bc_client.post("/predict", content=text.encode(),
                            headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["field"] == "instances[0].mean_texture"
    assert "NaN is not allowed" in answer.json()["error"]


def test_body_over_the_cap_is_413_without_reading_it(bc_client):
    answer = bc_client.post("/predict", content=b"x" * 200_001,
                            headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["reason"] == "body_too_large"


def test_metrics_are_recorded(bc_client, bc_model):
    registry = bc_client.runtime.metrics.registry
    labels = {"model_name": bc_model.name, "model_version": bc_model.version}

    def count(name, **extra):
        return registry.get_sample_value(name, {**labels, **extra}) or 0.0

    before = {c: count("slipway_predictions_total", **{"class": c})
              for c in bc_model.schema["classes"]}
    invalid_before = registry.get_sample_value("slipway_invalid_requests_total",
                                               {"reason": "wrong_length"})
    assert post_json(bc_client, {"instances": bc_model.instances(20)}).status_code == 200
    post_json(bc_client, {"instances": [[1.0]]})
    for c in bc_model.schema["classes"]:
        expected = bc_model.expected_labels[:20].count(c)
        assert count("slipway_predictions_total", **{"class": c}) - before[c] == expected
    assert registry.get_sample_value("slipway_invalid_requests_total",
                                     {"reason": "wrong_length"}) == invalid_before + 1
    assert registry.get_sample_value("slipway_model_info", {
        **labels, "dataset": bc_model.schema["dataset"]["name"],
        "dataset_md5": bc_model.schema["dataset"]["md5"],
        "framework": "sklearn", "estimator": "random_forest",
        "commit": bc_client.runtime.model.lineage["code"]["commit"] or "unknown"}) == 1
    assert count("slipway_prediction_confidence_count") >= 20
    # Drift is published at most once a second; the window already holds the rows.
    assert bc_client.runtime.drift.rows >= 20
    assert set(bc_client.runtime.drift.psi()) == {f["name"] for f in bc_model.schema["features"]}
