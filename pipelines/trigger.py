"""``slipway trigger serve``: Alertmanager's webhook in, one retraining run per drift episode out.

    python -m pipelines trigger serve [--host 127.0.0.1] [--port 9095]     # make trigger

Alertmanager POSTs its webhook payload (version 4) to ``/alerts`` with a bearer token
(``SLIPWAY_TRIGGER_TOKEN`` or ``kfp.trigger.token_file``; the receiver does not start
without one). The receiver acts only on firing alerts labelled ``retrain="true"`` (the
``SlipwayInputDrift`` rule of the serving chart sets it) and starts one retraining run per
model and alert episode, on the KFP endpoint or locally (``kfp.trigger.target``).

Idempotent: Alertmanager repeats a notification every ``repeat_interval`` and after its own
restarts, so an episode (the group key, the model and the earliest ``startsAt`` of its
alerts) starts one run at most; a per-model cooldown (``kfp.trigger.cooldown_s``) stops a
flapping alert from starting a run per flap. Both are kept in a state file
(``kfp.trigger.state_file``) written atomically, so they survive a restart. The run records
the alert that caused it (model version, drifting features, their PSI): as the run's
description on KFP and, where the pipeline declares a ``trigger`` parameter, as that
parameter; for a local run in ``trigger.json`` in the run's folder (``make runs`` shows it).

Answers: 200 with what was started and what was ignored and why; 401 without the token;
400/415/413/422 for what is not an Alertmanager payload (nothing is started).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from components.config import Params, to_parameter
from components.errors import SlipwayError

TOKEN_ENV = "SLIPWAY_TRIGGER_TOKEN"
MAX_BODY = 1 << 20  # Alertmanager's payloads are kilobytes; 1 MiB is generous
PATH = "/alerts"


class PayloadError(Exception):
    """The request is not an Alertmanager webhook payload (-> HTTP 4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# ---- the payload ---------------------------------------------------------------------------


def parse_payload(body: bytes) -> dict[str, Any]:
    """Check that ``body`` is an Alertmanager webhook payload (version 4); return it.

    Raises:
        PayloadError: naming the missing or malformed field.
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise PayloadError(400, "body is not JSON: send Alertmanager's webhook payload") from None
    if not isinstance(payload, dict):
        raise PayloadError(422, "payload must be a JSON object (Alertmanager webhook, version 4)")
    if payload.get("version") != "4":
        raise PayloadError(422, f"payload version {payload.get('version')!r} is not "
                                "Alertmanager's webhook version '4'")
    for key, kind in (("groupKey", str), ("status", str), ("receiver", str),
                      ("alerts", list), ("groupLabels", dict), ("commonLabels", dict)):
        if not isinstance(payload.get(key), kind):
            raise PayloadError(422, f"field {key!r} missing or not a {kind.__name__}: not an "
                                    "Alertmanager webhook payload")
    for i, alert in enumerate(payload["alerts"]):
        if not isinstance(alert, dict):
            raise PayloadError(422, f"alerts[{i}] is not an object")
        for key, kind in (("status", str), ("labels", dict), ("annotations", dict),
                          ("startsAt", str)):
            if not isinstance(alert.get(key), kind):
                raise PayloadError(422, f"alerts[{i}].{key} missing or not a {kind.__name__}")
        try:
            _time(alert["startsAt"])
        except ValueError:
            raise PayloadError(422, f"alerts[{i}].startsAt {alert['startsAt']!r} is not an "
                                    "RFC 3339 time") from None
    return payload


def _time(text: str) -> datetime:
    # Alertmanager writes nanoseconds (2026-12-02T18:00:00.123456789Z); Python takes micro.
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, tail = text.split(".", 1)
        frac = "".join(c for c in tail if c.isdigit())
        zone = tail[len(frac):]
        text = f"{head}.{frac[:6]}{zone}"
    return datetime.fromisoformat(text)


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


@dataclass
class Episode:
    """The alerts of one model in one notification, as one retraining request."""

    key: str
    model_name: str
    model_version: str
    alertname: str
    starts_at: str
    group_key: str
    features: dict[str, float | None] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What the run and the new model version record about the alert."""
        return {"alertname": self.alertname, "model_name": self.model_name,
                "model_version": self.model_version, "features": sorted(self.features),
                "psi": {k: v for k, v in sorted(self.features.items()) if v is not None},
                "starts_at": self.starts_at, "group_key": self.group_key,
                "episode": self.key}

    def summary(self) -> str:
        psi = ", ".join(f"{k} {v:.3f}" if v is not None else k
                        for k, v in sorted(self.features.items()))
        return (f"{self.alertname} {self.model_name}:{self.model_version}; features {psi}; "
                f"since {self.starts_at}")


def episodes(payload: dict[str, Any]) -> tuple[list[Episode], list[dict[str, str]]]:
    """The retraining requests in a payload (one per model) and the alerts ignored, why."""
    ignored: list[dict[str, str]] = []
    by_model: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for alert in payload["alerts"]:
        labels = alert["labels"]
        name = labels.get("alertname", "?")
        if alert["status"] != "firing":
            ignored.append({"alert": name, "reason": f"status {alert['status']}"})
        elif labels.get("retrain") != "true":
            ignored.append({"alert": name, "reason": "not labelled retrain=\"true\""})
        elif not labels.get("model_name"):
            ignored.append({"alert": name, "reason": "no model_name label: which model?"})
        else:
            key = (labels["model_name"], labels.get("model_version", ""))
            by_model.setdefault(key, []).append(alert)
    out = []
    for (model, version), alerts in sorted(by_model.items()):
        starts = min(alerts, key=lambda a: _time(a["startsAt"]))["startsAt"]
        ident = json.dumps([payload["groupKey"], model, version, _time(starts).isoformat()])
        episode = Episode(hashlib.sha256(ident.encode()).hexdigest()[:16], model, version,
                          alerts[0]["labels"].get("alertname", "alert"), starts,
                          payload["groupKey"])
        for alert in alerts:
            feature = alert["labels"].get("feature") or alert["annotations"].get("feature")
            if feature:
                episode.features[feature] = _float(alert["annotations"].get("psi"))
        out.append(episode)
    return out, ignored


# ---- state that survives a restart ---------------------------------------------------------


class State:
    """Episodes seen and the last run per model, in a JSON file written atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        try:
            self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except ValueError:
            raise SlipwayError(f"trigger state file {self.path} is not JSON",
                               "move it away (its episodes and cooldowns are then forgotten)"
                               ) from None
        self.data.setdefault("episodes", {})
        self.data.setdefault("models", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


# ---- starting runs -------------------------------------------------------------------------

Starter = Callable[[Episode], str]  # starts a retraining run; returns its id


def kfp_starter(params: Params, pipeline: str, session_factory: Callable[[], Any]) -> Starter:
    """Start the run on the KFP endpoint; the alert goes into its description (and its
    ``trigger`` parameter when the pipeline declares one)."""
    from pipelines import kfp_api

    def start(episode: Episode) -> str:
        session = session_factory()
        spec = kfp_api.compile_spec(params, pipeline)
        extra = ({"trigger": to_parameter(episode.record())}
                 if "trigger" in spec.parameters else {})
        done = kfp_api.submit(session, params, pipeline, [],
                              run_name=f"retrain {episode.model_name} after {episode.alertname}",
                              description=f"retraining: {episode.summary()}",
                              extra_parameters=extra)
        return done.run_id

    return start


def local_starter(params_path: str | Path, pipeline: str, pipeline_root: str | Path,
                  log_dir: str | Path, settings: list[str] | None = None,
                  cwd: str | Path = ".") -> Starter:
    """Start ``python -m pipelines run <pipeline>`` here, in the background, one at a time;
    when it ends, write the alert into the run's folder as ``trigger.json``."""
    from pipelines.runs import TRIGGER_FILE

    one_at_a_time = threading.Lock()

    def start(episode: Episode) -> str:
        run_id = f"local-{episode.key}"
        log = Path(log_dir) / f"{run_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)

        def work() -> None:
            with one_at_a_time:
                root = Path(cwd) / pipeline_root
                before = {p.name for p in root.iterdir()} if root.is_dir() else set()
                alert = log.with_suffix(".alert.json")
                alert.write_text(json.dumps(episode.record(), indent=1))
                args = [sys.executable, "-m", "pipelines", "run", pipeline, "--params",
                        str(params_path), "--trigger", str(alert)]
                for s in settings or []:
                    args += ["--set", s]
                with open(log, "w") as out:
                    rc = subprocess.call(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
                new = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in before
                             and p.name.startswith(f"{pipeline}-")) if root.is_dir() else []
                record = {**episode.record(), "exit_status": rc, "log": str(log)}
                if new:
                    (new[-1] / TRIGGER_FILE).write_text(json.dumps(record, indent=1))

        thread = threading.Thread(target=work, name=run_id, daemon=True)
        thread.start()
        start.threads.append(thread)  # type: ignore[attr-defined]
        return run_id

    start.threads = []  # type: ignore[attr-defined]
    return start


# ---- the decision --------------------------------------------------------------------------


class Receiver:
    """Decides, per episode, whether to start a run; records it in the state."""

    def __init__(self, state: State, starter: Starter, cooldown_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.state, self.starter, self.cooldown_s, self.clock = state, starter, cooldown_s, clock

    def handle(self, payload: dict[str, Any]) -> dict[str, Any]:
        found, ignored = episodes(payload)
        started = []
        with self.state.lock:
            for episode in found:
                seen = self.state.data["episodes"].get(episode.key)
                if seen is not None:
                    ignored.append({"alert": episode.alertname, "model": episode.model_name,
                                    "reason": f"episode already handled ({seen['outcome']})"})
                    continue
                last = self.state.data["models"].get(episode.model_name)
                now = self.clock()
                if last is not None and now - last["at"] < self.cooldown_s:
                    left = self.cooldown_s - (now - last["at"])
                    outcome = f"cooldown: run {last['run_id']} started {now - last['at']:.0f} s ago"
                    self.state.data["episodes"][episode.key] = {"outcome": outcome, "at": now}
                    self.state.save()
                    ignored.append({"alert": episode.alertname, "model": episode.model_name,
                                    "reason": f"{outcome} ({left:.0f} s of cooldown left)"})
                    continue
                run_id = self.starter(episode)
                self.state.data["episodes"][episode.key] = {"outcome": f"started {run_id}",
                                                            "at": now}
                self.state.data["models"][episode.model_name] = {
                    "at": now, "run_id": run_id, "episode": episode.key,
                    "alert": episode.record()}
                self.state.save()
                started.append({"run_id": run_id, "model": episode.model_name,
                                "episode": episode.key, "alert": episode.summary()})
                print(f"trigger: started {run_id} for {episode.summary()}", flush=True)
        return {"started": started, "ignored": ignored}


# ---- HTTP ----------------------------------------------------------------------------------


def _token_reader(token_file: str, env: dict[str, str]) -> Callable[[], str]:
    """The expected token, re-read from its file on each request (it may be rotated)."""
    if env.get(TOKEN_ENV):
        token = env[TOKEN_ENV].strip()
        return lambda: token
    if token_file:
        def read() -> str:
            return Path(token_file).read_text().strip()

        try:
            if read():
                return read
        except OSError as err:
            raise SlipwayError(f"cannot read the trigger token file {token_file}: "
                               f"{err.strerror}", "check kfp.trigger.token_file") from None
    raise SlipwayError("the trigger receiver has no token to check callers against",
                       f"set {TOKEN_ENV} or kfp.trigger.token_file (and the same token in "
                       "Alertmanager's webhook_configs.http_config.authorization)")


def make_app(receiver: Receiver, expected_token: Callable[[], str]):
    """The Starlette app: ``POST /alerts`` and ``GET /healthz``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def alerts(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), expected_token().encode()):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return JSONResponse({"error": f"content type {ctype or 'none'!r}: send "
                                          "application/json (Alertmanager does)"},
                                status_code=415)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY:
            return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
        try:
            payload = parse_payload(body)
        except PayloadError as err:
            return JSONResponse({"error": err.message}, status_code=err.status)
        import anyio

        try:  # starting a run may compile and call the KFP API: off the event loop
            answer = await anyio.to_thread.run_sync(receiver.handle, payload)
        except SlipwayError as err:
            return JSONResponse({"error": str(err)}, status_code=502)
        return JSONResponse(answer)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route(PATH, alerts, methods=["POST"]),
                             Route("/healthz", healthz, methods=["GET"])])


def build(params: Params, params_path: str | Path = "params.yaml",
          env: dict[str, str] | None = None, cwd: str | Path = "."):
    """The app as configured by ``kfp.trigger`` (and ``kfp.endpoint`` for target kfp)."""
    env = dict(os.environ if env is None else env)
    cfg = params.kfp.trigger
    token = _token_reader(cfg.token_file, env)
    from pipelines import PIPELINES

    if cfg.pipeline not in PIPELINES:
        from components.errors import did_you_mean

        raise SlipwayError(f"kfp.trigger.pipeline: unknown pipeline {cfg.pipeline!r}",
                           did_you_mean(cfg.pipeline, PIPELINES))
    if cfg.target == "kfp":
        from pipelines import kfp_api

        kfp_api.resolve_endpoint(params, env)  # fail at start when no endpoint is set
        starter = kfp_starter(params, cfg.pipeline, lambda: kfp_api.connect(params, env))
    else:
        starter = local_starter(params_path, cfg.pipeline, params.kfp.pipeline_root,
                                Path(cfg.state_file).parent / "runs", cwd=cwd)
    receiver = Receiver(State(Path(cwd) / cfg.state_file), starter, cfg.cooldown_s)
    return make_app(receiver, token), receiver


def serve(params: Params, params_path: str | Path, host: str, port: int) -> None:
    import uvicorn

    app, _ = build(params, params_path)
    cfg = params.kfp.trigger
    print(f"trigger: listening on http://{host}:{port}{PATH} (target {cfg.target}, pipeline "
          f"{cfg.pipeline}, cooldown {cfg.cooldown_s:g} s, state {cfg.state_file})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
