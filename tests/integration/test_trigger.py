"""The retraining trigger (``slipway trigger serve``) receiving Alertmanager webhooks.

The receiver is driven through its real ASGI app (Starlette's test client) and starts
retraining runs with the real ``kfp.Client`` on the local fake of the KFP v2beta1 API
(``tests/fakes/kfp_api.py``; no KFP backend can run here, see its docstring). The payloads
are shaped as Alertmanager 0.25 sends them for the ``SlipwayInputDrift`` rule of the serving
chart (labels severity, retrain, namespace, service, model_name, model_version, feature;
annotations feature and psi). The end-to-end test with a real Prometheus and Alertmanager is
``test_trigger_e2e.py``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():  # starlette 1.10 prefers httpx2 for its test client
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from components.config import load_params
from components.errors import SlipwayError
from pipelines import trigger
from tests.fakes.kfp_api import FakeKfp

REPO = Path(__file__).resolve().parents[2]
TOKEN = "alert-s3cret"
MODEL = "breast-cancer-classification"


def alert(feature: str = "mean radius", psi: str = "0.4", model: str = MODEL,
          version: str = "v1", starts: str = "2026-12-02T18:00:00.123456789Z",
          status: str = "firing", retrain: str | None = "true") -> dict:
    labels = {"alertname": "SlipwayInputDrift", "severity": "warning", "namespace": "ml",
              "service": "r1-slipway-serving", "model_name": model, "model_version": version,
              "feature": feature}
    if retrain is not None:
        labels["retrain"] = retrain
    return {"status": status, "labels": labels,
            "annotations": {"summary": f"Input drift on feature {feature}", "feature": feature,
                            "psi": psi},
            "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph", "fingerprint": "0123456789abcdef"}


def payload(*alerts: dict, group_key: str = '{}:{alertname="SlipwayInputDrift"}') -> dict:
    return {"version": "4", "groupKey": group_key, "truncatedAlerts": 0, "status": "firing",
            "receiver": "slipway-retrain", "groupLabels": {"alertname": "SlipwayInputDrift"},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am:9093",
            "alerts": list(alerts)}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake():
    with FakeKfp(tokens={"t0ken": {"team-a"}}, multi_user=True) as server:
        yield server
    assert server.violations == []


@pytest.fixture
def setup(fake, tmp_path, monkeypatch):
    """A receiver with target kfp on the fake; returns (client, receiver, build again)."""
    monkeypatch.chdir(REPO)
    env = {"KFP_HOST": fake.url, "KFP_TOKEN": "t0ken", "KFP_NAMESPACE": "team-a",
           trigger.TOKEN_ENV: TOKEN}
    state = tmp_path / "state.json"
    clock = Clock()

    def make():
        params = load_params(REPO / "params.yaml",
                             ["kfp.trigger.target=kfp", f"kfp.trigger.state_file={state}",
                              "kfp.trigger.cooldown_s=600"])
        app, receiver = trigger.build(params, env=env)
        receiver.clock = clock
        return TestClient(app), receiver

    client, receiver = make()
    return client, receiver, make, clock, state


def post(client: TestClient, body, token: str | None = TOKEN, **headers):
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if isinstance(body, dict):
        return client.post("/alerts", json=body, headers=headers)
    headers.setdefault("Content-Type", "application/json")
    return client.post("/alerts", content=body, headers=headers)


def test_a_drift_alert_starts_one_run_that_records_the_alert(setup, fake):
    client, *_ = setup
    answer = post(client, payload(alert("mean radius", "0.4"), alert("mean texture", "0.31")))
    assert answer.status_code == 200, answer.text
    (started,) = answer.json()["started"]
    (run,) = fake.runs.values()
    assert run["run_id"] == started["run_id"]
    assert run["description"] == (
        f"retraining: SlipwayInputDrift {MODEL}:v1; features mean radius 0.400, mean texture "
        "0.310; since 2026-12-02T18:00:00.123456789Z")
    assert run["display_name"] == f"retrain {MODEL} after SlipwayInputDrift"


def test_repeated_notifications_of_one_episode_start_one_run(setup, fake):
    client, *_ = setup
    body = payload(alert())
    assert len(post(client, body).json()["started"]) == 1
    for _ in range(3):  # Alertmanager's repeat_interval, or its restart
        answer = post(client, body).json()
        assert answer["started"] == []
        assert "episode already handled (started run-" in answer["ignored"][0]["reason"]
    assert len(fake.runs) == 1


def test_the_cooldown_holds_a_new_episode_and_survives_a_restart(setup, fake):
    client, receiver, make, clock, state = setup
    post(client, payload(alert(starts="2026-12-02T18:00:00Z")))
    clock.now += 60
    answer = post(client, payload(alert(starts="2026-12-02T19:00:00Z"))).json()
    assert answer["started"] == [] and "cooldown" in answer["ignored"][0]["reason"]
    client, receiver = make()  # a restart: a new process reads the state file
    receiver.clock = clock
    clock.now += 60
    answer = post(client, payload(alert(starts="2026-12-02T19:30:00Z"))).json()
    assert answer["started"] == [] and "cooldown" in answer["ignored"][0]["reason"]
    assert len(fake.runs) == 1
    clock.now += 600  # past the cooldown
    assert len(post(client, payload(alert(starts="2026-12-02T20:00:00Z"))).json()["started"]) == 1
    assert len(fake.runs) == 2
    saved = json.loads(state.read_text())
    assert saved["models"][MODEL]["alert"]["psi"] == {"mean radius": 0.4}
    assert [p.name for p in state.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_only_firing_alerts_labelled_for_retraining_start_runs(setup, fake):
    client, *_ = setup
    answer = post(client, payload(alert(retrain=None), alert(retrain="false"),
                                  alert(status="resolved"))).json()
    assert answer["started"] == []
    assert sorted(i["reason"] for i in answer["ignored"]) == [
        'not labelled retrain="true"', 'not labelled retrain="true"', "status resolved"]
    assert fake.runs == {}


def test_each_model_in_a_group_gets_its_own_run(setup, fake):
    client, *_ = setup
    answer = post(client, payload(alert(model="iris-classification"), alert())).json()
    assert sorted(s["model"] for s in answer["started"]) == ["breast-cancer-classification",
                                                               "iris-classification"]
    assert len(fake.runs) == 2


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_a_caller_without_the_token_gets_401_and_nothing_starts(setup, fake, token):
    client, *_ = setup
    answer = post(client, payload(alert()), token=token)
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert fake.runs == {} and fake.requests == []


@pytest.mark.parametrize("body, status, message", [
    (b"not json", 400, "body is not JSON"),
    (b"[1, 2]", 422, "must be a JSON object"),
    (json.dumps({"text": "deploy finished"}).encode(), 422, "version None"),
    (json.dumps({**payload(alert()), "alerts": "x"}).encode(), 422, "field 'alerts'"),
    (json.dumps(payload({**alert(), "startsAt": "yesterday"})).encode(), 422,
     "alerts[0].startsAt 'yesterday' is not an RFC 3339 time"),
    (json.dumps(payload({**alert(), "labels": None})).encode(), 422, "alerts[0].labels"),
])
def test_what_is_not_an_alertmanager_payload_is_a_4xx_and_nothing_starts(
        setup, fake, body, status, message):
    client, *_ = setup
    answer = post(client, body)
    assert answer.status_code == status and message in answer.json()["error"]
    assert fake.runs == {}


def test_wrong_content_type_and_oversized_bodies_are_refused(setup, fake):
    client, *_ = setup
    answer = post(client, json.dumps(payload(alert())).encode(), **{"Content-Type": "text/plain"})
    assert answer.status_code == 415
    answer = post(client, b"{" + b" " * (trigger.MAX_BODY + 1) + b"}")
    assert answer.status_code == 413
    assert fake.runs == {}


def test_the_receiver_will_not_start_without_a_token(tmp_path):
    params = load_params(REPO / "params.yaml", [f"kfp.trigger.state_file={tmp_path / 's'}"])
    with pytest.raises(SlipwayError, match="no token to check callers against") as err:
        trigger.build(params, env={})
    assert trigger.TOKEN_ENV in err.value.fix


def test_the_token_file_is_read_again_when_it_changes(tmp_path, fake, monkeypatch):
    monkeypatch.chdir(REPO)
    token = tmp_path / "token"
    token.write_text("first\n")
    params = load_params(REPO / "params.yaml", [f"kfp.trigger.token_file={token}",
                                                f"kfp.trigger.state_file={tmp_path / 's'}"])
    app, _ = trigger.build(params, env={})
    client = TestClient(app)
    # not an Alertmanager payload: 422 once past the token check, nothing started
    assert post(client, b"{}", token="first").status_code == 422
    token.write_text("second\n")
    assert post(client, b"{}", token="first").status_code == 401
    assert post(client, b"{}", token="second").status_code == 422


def test_a_corrupt_state_file_is_named(tmp_path):
    state = tmp_path / "state.json"
    state.write_text("{half")
    with pytest.raises(SlipwayError, match=f"trigger state file {state} is not JSON"):
        trigger.State(state)
