"""Shared helpers of the in-process (ASGI) service tests."""

from __future__ import annotations

import json

import numpy as np


def post_json(client, body, **headers):
    return client.post("/predict", content=json.dumps(body).encode(),
                       headers={"Content-Type": "application/json", **headers})


def check_predictions(client, trained, shape):
    rows = trained.instances()
    names = [f["name"] for f in trained.schema["features"]]
    body = {
        "objects": {"instances": rows},
        "lists": {"instances": [[r[n] for n in names] for r in rows]},
        "columns": {"inputs": {n: [r[n] for r in rows] for n in names}},
    }[shape]
    answer = post_json(client, body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["predictions"] == trained.expected_labels
    assert data["model_version"] == trained.version
    proba = np.asarray(data["probabilities"])
    assert proba.shape == (len(rows), len(trained.schema["classes"]))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # The most probable class is the prediction, in the labels trained on.
    classes = trained.schema["classes"]
    assert [classes[i] for i in proba.argmax(axis=1)] == data["predictions"]
