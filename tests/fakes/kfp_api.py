"""A local fake of the Kubeflow Pipelines v2beta1 REST API, for tests only.

No KFP backend can run here (it needs a Kubernetes API server, Argo and MySQL/MinIO), so
``pipelines/kfp_api.py`` is tested with the real ``kfp.Client`` against this fake. To keep
the fake honest it is held to the API's published contract:

- every request is matched to an operation of the published swagger document
  (``kfp_v2beta1.swagger.json``, see ``README.md`` here for its source and commit): an
  undeclared path, method or query parameter, or a body that does not match the operation's
  schema (a field the API does not have, a wrong type), is answered 400 and recorded in
  :attr:`FakeKfp.violations`; every answer is checked against the response schema too;
- every uploaded pipeline is parsed with kfp's own protobuf schemas
  (``pipeline_spec_pb2.PipelineSpec`` / ``PlatformSpec``, ``ignore_unknown_fields=False``);
- it refuses what the real API server refuses, with its status codes: a missing or wrong
  bearer token (401), a namespace the token may not use (403), a missing namespace in
  multi-user mode (400), duplicate pipeline, version and experiment names (409), a cron the
  API server's parser (robfig/cron v1.2.0: 5 or 6 fields, seconds first) cannot read and a
  max concurrency outside 1-10 (400), references to things that do not exist (404).

Like the real parser it *accepts* a 5-field cron (reading it as second minute hour day
month): Slipway must refuse one before sending. Runs do not execute: each GET of a run moves
it one step along :attr:`FakeKfp.script` (PENDING, RUNNING, then the outcome), with the
spec's tasks as its task details.

    with FakeKfp(tokens={"t0ken": {"team-a"}}, multi_user=True) as fake:
        client = kfp.Client(host=fake.url, existing_token="t0ken", namespace="team-a")
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

SWAGGER = Path(__file__).with_name("kfp_v2beta1.swagger.json")
# google.rpc.Code values the API server uses
CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# ---- the swagger contract ------------------------------------------------------------------


class Contract:
    """Operations and schemas of the published swagger document."""

    def __init__(self, path: Path = SWAGGER) -> None:
        doc = json.loads(path.read_text())
        self.definitions = doc["definitions"]
        self.routes = []
        for template, ops in doc["paths"].items():
            names, pattern = [], ""
            for piece in re.split(r"(\{[^}]+\})", template):
                if piece.startswith("{"):
                    names.append(piece[1:-1])
                    pattern += f"(?P<p{len(names) - 1}>[^/:]+)"
                else:
                    pattern += re.escape(piece)
            literal = len(re.sub(r"\{[^}]+\}", "", template))
            for method, op in ops.items():
                self.routes.append((literal, re.compile(f"^{pattern}$"), names,
                                    method.upper(), op))
        self.routes.sort(key=lambda r: -r[0])

    def match(self, method: str, path: str) -> tuple[dict[str, Any], dict[str, str]]:
        known_path = False
        for _, regex, names, m, op in self.routes:
            found = regex.match(path)
            if found:
                known_path = True
                if m == method:
                    return op, {n: found.group(f"p{i}") for i, n in enumerate(names)}
        raise ApiError(405 if known_path else 404,
                       f"{method} {path} is not an operation of the v2beta1 API")

    def check(self, schema: dict[str, Any], value: Any, where: str) -> list[str]:
        """Problems of ``value`` against a swagger schema (strict about unknown fields)."""
        if "$ref" in schema:
            schema = self.definitions[schema["$ref"].rsplit("/", 1)[-1]]
        kind = schema.get("type")
        if "enum" in schema:
            ok = value in schema["enum"]
            return [] if ok else [f"{where}: {value!r} not in {schema['enum']}"]
        if kind == "object" or "properties" in schema:
            if not isinstance(value, dict):
                return [f"{where}: expected an object, got {type(value).__name__}"]
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            if props is None and extra is None:
                return []  # a protobuf Struct: free-form
            problems = []
            for key, item in value.items():
                if props and key in props:
                    problems += self.check(props[key], item, f"{where}.{key}")
                elif isinstance(extra, dict):
                    problems += self.check(extra, item, f"{where}.{key}") if extra else []
                else:
                    problems.append(f"{where}: unknown field {key!r}")
            return problems
        if kind == "array":
            if not isinstance(value, list):
                return [f"{where}: expected an array"]
            return [p for i, v in enumerate(value)
                    for p in self.check(schema.get("items", {}), v, f"{where}[{i}]")]
        if kind == "string":
            if schema.get("format") in ("int64", "uint64"):
                ok = isinstance(value, int) and not isinstance(value, bool) or (
                    isinstance(value, str) and re.fullmatch(r"-?\d+", value))
                return [] if ok else [f"{where}: expected an int64, got {value!r}"]
            return [] if isinstance(value, str) else [f"{where}: expected a string, got {value!r}"]
        if kind == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
            return [] if ok else [f"{where}: expected an integer, got {value!r}"]
        if kind == "number":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            return [] if ok else [f"{where}: expected a number, got {value!r}"]
        if kind == "boolean":
            return [] if isinstance(value, bool) else [f"{where}: expected a boolean"]
        return []  # protobuf Value / Any: anything


# ---- cron as the API server reads it (robfig/cron v1.2.0's Parse) ---------------------------

_BOUNDS = [(0, 59, None), (0, 59, None), (0, 23, None), (1, 31, None),
           (1, 12, ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                    "nov", "dec"]),
           (0, 6, ["sun", "mon", "tue", "wed", "thu", "fri", "sat"])]


def robfig_parse(spec: str) -> None:
    """Raise ValueError where robfig/cron v1.2.0 ``cron.Parse`` fails."""
    if spec.startswith("@"):
        if spec in ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                    "@hourly") or re.fullmatch(r"@every \S+", spec):
            return
        raise ValueError(f"Unrecognized descriptor: {spec}")
    fields = spec.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"Expected 5 or 6 fields, found {len(fields)}: {spec}")
    for text, (low, high, names) in zip(fields, _BOUNDS, strict=False):
        for expr in text.split(","):
            base, _, step = expr.partition("/")
            if step and not step.isdigit():
                raise ValueError(f"Failed to parse int from {step}")
            if base in ("*", "?"):
                continue
            parts = base.split("-")
            if len(parts) > 2:
                raise ValueError(f"Too many hyphens: {expr}")
            nums = []
            for p in parts:
                if names and p.lower() in names:
                    nums.append(names.index(p.lower()) + low)
                elif p.isdigit():
                    nums.append(int(p))
                else:
                    raise ValueError(f"Failed to parse int from {p}")
            if nums[0] < low:
                raise ValueError(f"Beginning of range ({nums[0]}) below minimum ({low}): {expr}")
            if nums[-1] > high:
                raise ValueError(f"End of range ({nums[-1]}) above maximum ({high}): {expr}")
            if nums[0] > nums[-1]:
                raise ValueError(f"Beginning of range beyond end of range: {expr}")


def parse_pipeline_file(data: bytes) -> dict[str, Any]:
    """Parse an uploaded pipeline with kfp's protobuf schemas; the stored spec."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    try:
        docs = [d for d in yaml.safe_load_all(data.decode()) if d is not None]
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ApiError(400, f"Failed to read a pipeline spec file: {err}") from None
    if not docs or not isinstance(docs[0], dict):
        raise ApiError(400, "Failed to read a pipeline spec file: empty")
    try:
        json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec(),
                              ignore_unknown_fields=False)
        if len(docs) > 1:
            json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec(),
                                  ignore_unknown_fields=False)
    except json_format.ParseError as err:
        raise ApiError(400, f"Invalid input error: invalid pipeline spec: {err}") from None
    if len(docs) > 2:
        raise ApiError(400, "Invalid input error: more than two documents in the file")
    if len(docs) == 1:
        return docs[0]
    return {"pipeline_spec": docs[0], "platform_spec": docs[1]}


# ---- the fake server -----------------------------------------------------------------------


class FakeKfp:
    """The fake API server: state, rules, and an HTTP server on 127.0.0.1."""

    def __init__(self, tokens: dict[str, set[str] | None] | None = None,
                 multi_user: bool = False) -> None:
        # token -> namespaces it may use (None: all). No tokens: no authentication.
        self.tokens = {"t0ken": None} if tokens is None else tokens
        self.multi_user = multi_user
        self.contract = Contract()
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict, Any]] = []
        self.violations: list[str] = []
        self.script = ["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"]
        # operationId -> callable(fake, query, body) run just before the operation: lets a
        # test make something happen "meanwhile" (another client uploading the same version)
        self.hooks: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._clock = datetime(2026, 12, 1, tzinfo=UTC)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle --
    def __enter__(self) -> FakeKfp:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, answer = fake.handle(self.command, self.path, dict(self.headers), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- helpers --
    def _id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids):04d}"

    def _now(self) -> str:
        self._clock += timedelta(seconds=1)
        return self._clock.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _namespace_allowed(self, token: str | None, namespace: str | None) -> None:
        if not self.tokens or not namespace:
            return
        allowed = self.tokens.get(token or "")
        if allowed is not None and namespace not in allowed:
            raise ApiError(403, f"PermissionDenied: User is not authorized to access "
                                f"namespace {namespace!r}")

    def _need_namespace(self, namespace: str | None, what: str) -> None:
        if self.multi_user and not namespace:
            raise ApiError(400, f"Invalid input error: {what} cannot have an empty namespace "
                                "in multi-user mode")

    @staticmethod
    def _filter(items: list[dict], raw: str | None) -> list[dict]:
        if not raw:
            return items
        for p in json.loads(raw).get("predicates", []):
            if p.get("operation") != "EQUALS":
                raise ApiError(400, f"Invalid input error: unsupported operation {p}")
            items = [i for i in items if i.get(p["key"]) == p.get("stringValue")]
        return items

    @staticmethod
    def _page(items: list[dict], query: dict, key: str, sort_default: str = "created_at"
              ) -> dict[str, Any]:
        sort = (query.get("sort_by") or sort_default).split()
        items = sorted(items, key=lambda i: i.get(sort[0]) or "",
                       reverse=len(sort) > 1 and sort[1] == "desc")
        size = int(query.get("page_size") or 20)
        start = int(query.get("page_token") or 0)
        page: dict[str, Any] = {key: items[start:start + size], "total_size": len(items)}
        if start + size < len(items):
            page["next_page_token"] = str(start + size)
        return page

    # -- dispatch --
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes
               ) -> tuple[int, dict]:
        with self._lock:
            try:
                return 200, self._handle(method, raw_path, headers, body)
            except ApiError as err:
                return err.status, {"error": err.message, "code": CODES.get(err.status, 2),
                                    "message": err.message, "details": []}
            except AssertionError as err:  # the fake broke the contract: a test must fail
                self.violations.append(f"FAKE: {err}")
                return 500, {"error": str(err), "code": 13, "message": str(err), "details": []}

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> dict:
        url = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        op, path_params = self.contract.match(method, url.path)
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        if self.tokens and token not in self.tokens:
            raise ApiError(401, "Unauthenticated: Request header error: there is no user "
                                "identity header or the token is invalid")
        declared = {p["name"]: p for p in op.get("parameters", [])}
        for name in query:
            if declared.get(name, {}).get("in") != "query":
                self._violation(f"{op['operationId']}: undeclared query parameter {name!r}")
        payload: Any = None
        body_param = next((p for p in declared.values() if p["in"] == "body"), None)
        form: dict[str, bytes] = {}
        if body_param is not None:
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                self._violation(f"{op['operationId']}: body is not JSON")
            problems = self.contract.check(body_param["schema"], payload, body_param["name"])
            if problems:
                self._violation(f"{op['operationId']}: " + "; ".join(problems))
        elif any(p["in"] == "formData" for p in declared.values()):
            form = self._multipart(headers, body)
            for name in form:
                if declared.get(name, {}).get("in") != "formData":
                    self._violation(f"{op['operationId']}: undeclared form field {name!r}")
        elif body.strip():
            self._violation(f"{op['operationId']}: takes no body")
        self.requests.append((op["operationId"], url.path, query, payload))
        if op["operationId"] in self.hooks:
            self.hooks[op["operationId"]](self, query, payload)
        handler = getattr(self, f"op_{op['operationId']}", None)
        if handler is None:
            raise ApiError(501, f"{op['operationId']} is not implemented by the fake")
        answer = handler(path_params=path_params, query=query, body=payload, form=form,
                         token=token)
        schema = op.get("responses", {}).get("200", {}).get("schema")
        if schema:
            problems = self.contract.check(schema, answer, "response")
            if problems:  # the fake itself is wrong: fail loudly
                raise AssertionError(f"fake answer breaks the contract: {problems}")
        return answer

    def _violation(self, message: str) -> None:
        self.violations.append(message)
        raise ApiError(400, f"request does not match the published API: {message}")

    @staticmethod
    def _multipart(headers: dict[str, str], body: bytes) -> dict[str, bytes]:
        ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
        msg = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body)
        if not msg.is_multipart():
            raise ApiError(400, "Failed to read pipeline from file")
        return {part.get_param("name", header="content-disposition"): part.get_payload(
            decode=True) for part in msg.iter_parts()}

    # -- healthz --
    def op_HealthzService_GetHealthz(self, **_: Any) -> dict:
        return {"multi_user": self.multi_user, "pipeline_store": "database"}

    # -- pipelines --
    def op_PipelineService_ListPipelines(self, query: dict, token: str | None, **_: Any) -> dict:
        namespace = query.get("namespace") or None
        self._namespace_allowed(token, namespace)
        items = [p for p in self.pipelines.values() if p.get("namespace") in (None, namespace)]
        return self._page(self._filter(items, query.get("filter")), query, "pipelines")

    def _new_pipeline(self, name: str, display: str | None, namespace: str | None,
                      description: str | None, token: str | None) -> dict:
        if not name:
            raise ApiError(400, "Invalid input error: pipeline name cannot be empty")
        self._namespace_allowed(token, namespace)
        if any(p["name"] == name and p.get("namespace") == namespace
               for p in self.pipelines.values()):
            raise ApiError(409, f"Already exist error: Failed to create a new pipeline. The "
                                f"name {name} already exists. Please specify a new name")
        pipeline = {"pipeline_id": self._id("pipeline"), "name": name,
                    "display_name": display or name, "description": description or "",
                    "created_at": self._now()}
        if namespace:
            pipeline["namespace"] = namespace
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        return pipeline

    def op_PipelineService_CreatePipeline(self, body: dict, token: str | None, **_: Any) -> dict:
        return self._new_pipeline(body.get("name") or body.get("display_name", ""),
                                  body.get("display_name"), body.get("namespace"),
                                  body.get("description"), token)

    def op_UploadPipeline(self, query: dict, form: dict, token: str | None, **_: Any) -> dict:
        if "uploadfile" not in form:
            raise ApiError(400, "Failed to read pipeline from file")
        spec = parse_pipeline_file(form["uploadfile"])
        pipeline = self._new_pipeline(query.get("name") or query.get("display_name") or "",
                                      query.get("display_name"), query.get("namespace"),
                                      query.get("description"), token)
        self._new_version(pipeline["pipeline_id"], pipeline["name"], query.get("description"),
                          spec)
        return pipeline

    def _new_version(self, pipeline_id: str, name: str, description: str | None,
                     spec: dict) -> dict:
        if pipeline_id not in self.pipelines:
            raise ApiError(404, f"Not found: pipeline {pipeline_id} not found")
        if any(v["pipeline_id"] == pipeline_id and v["name"] == name
               for v in self.versions.values()):
            raise ApiError(409, f"Already exist error: Failed to create a new pipeline "
                                f"version. The name {name} already exist")
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": self._id("version"),
                   "name": name, "display_name": name, "description": description or "",
                   "created_at": self._now(), "pipeline_spec": spec}
        self.versions[version["pipeline_version_id"]] = version
        return version

    def op_UploadPipelineVersion(self, query: dict, form: dict, token: str | None,
                                 **_: Any) -> dict:
        if "uploadfile" not in form:
            raise ApiError(400, "Failed to read pipeline from file")
        pipeline = self.pipelines.get(query.get("pipelineid", ""))
        if pipeline is None:
            raise ApiError(404 if query.get("pipelineid") else 400,
                           "Invalid input error: pipeline id is missing or unknown")
        self._namespace_allowed(token, pipeline.get("namespace"))
        spec = parse_pipeline_file(form["uploadfile"])
        name = query.get("name") or query.get("display_name") or ""
        if not name:
            raise ApiError(400, "Invalid input error: pipeline version name cannot be empty")
        version = self._new_version(pipeline["pipeline_id"], name, query.get("description"),
                                    spec)
        return {k: v for k, v in version.items() if k != "pipeline_spec"}

    def op_PipelineService_GetPipeline(self, path_params: dict, token: str | None,
                                       **_: Any) -> dict:
        pipeline = self.pipelines.get(path_params["pipeline_id"])
        if pipeline is None:
            raise ApiError(404, "Not found: pipeline not found")
        self._namespace_allowed(token, pipeline.get("namespace"))
        return pipeline

    def op_PipelineService_ListPipelineVersions(self, path_params: dict, query: dict,
                                                token: str | None, **_: Any) -> dict:
        pipeline = self.op_PipelineService_GetPipeline(path_params=path_params, token=token)
        items = [{k: v for k, v in ver.items() if k != "pipeline_spec"}
                 for ver in self.versions.values()
                 if ver["pipeline_id"] == pipeline["pipeline_id"]]
        return self._page(self._filter(items, query.get("filter")), query, "pipeline_versions")

    def op_PipelineService_GetPipelineVersion(self, path_params: dict, token: str | None,
                                              **_: Any) -> dict:
        self.op_PipelineService_GetPipeline(path_params=path_params, token=token)
        version = self.versions.get(path_params["pipeline_version_id"])
        if version is None or version["pipeline_id"] != path_params["pipeline_id"]:
            raise ApiError(404, "Not found: pipeline version not found")
        return version

    # -- experiments --
    def op_ExperimentService_ListExperiments(self, query: dict, token: str | None,
                                             **_: Any) -> dict:
        namespace = query.get("namespace") or None
        self._need_namespace(namespace, "A list of experiments")
        self._namespace_allowed(token, namespace)
        items = [e for e in self.experiments.values() if e.get("namespace") == namespace]
        return self._page(self._filter(items, query.get("filter")), query, "experiments")

    def op_ExperimentService_CreateExperiment(self, body: dict, token: str | None,
                                              **_: Any) -> dict:
        namespace = body.get("namespace") or None
        if not body.get("display_name"):
            raise ApiError(400, "Invalid input error: Experiment name cannot be empty")
        self._need_namespace(namespace, "An experiment")
        self._namespace_allowed(token, namespace)
        if any(e["display_name"] == body["display_name"] and e.get("namespace") == namespace
               for e in self.experiments.values()):
            raise ApiError(409, "Already exist error: Failed to create a new experiment: "
                                f"name {body['display_name']} already exists in the namespace")
        experiment = {"experiment_id": self._id("experiment"),
                      "display_name": body["display_name"],
                      "description": body.get("description", ""), "created_at": self._now(),
                      "storage_state": "AVAILABLE"}
        if namespace:
            experiment["namespace"] = namespace
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def op_ExperimentService_GetExperiment(self, path_params: dict, token: str | None,
                                           **_: Any) -> dict:
        experiment = self.experiments.get(path_params["experiment_id"])
        if experiment is None:
            raise ApiError(404, "Not found: experiment not found")
        self._namespace_allowed(token, experiment.get("namespace"))
        return experiment

    # -- runs --
    def _version_ref(self, body: dict) -> dict:
        ref = body.get("pipeline_version_reference") or {}
        version = self.versions.get(ref.get("pipeline_version_id", ""))
        if version is None or version["pipeline_id"] != ref.get("pipeline_id"):
            raise ApiError(404, "Not found: the pipeline version reference names no version")
        return version

    def _spec_of(self, version: dict) -> dict:
        spec = version["pipeline_spec"]
        return spec.get("pipeline_spec", spec)

    def op_RunService_CreateRun(self, body: dict, token: str | None, **_: Any) -> dict:
        if not body.get("display_name"):
            raise ApiError(400, "Invalid input error: The run name is empty. Please specify a "
                                "valid name")
        experiment = self.op_ExperimentService_GetExperiment(
            path_params={"experiment_id": body.get("experiment_id", "")}, token=token)
        version = self._version_ref(body)
        declared = self._spec_of(version).get("root", {}).get("inputDefinitions", {}) \
            .get("parameters", {})
        params = (body.get("runtime_config") or {}).get("parameters") or {}
        unknown = sorted(set(params) - set(declared))
        run = {"run_id": self._id("run"), "display_name": body["display_name"],
               "description": body.get("description", ""),
               "experiment_id": experiment["experiment_id"],
               "pipeline_version_reference": body["pipeline_version_reference"],
               "runtime_config": {"parameters": params}, "created_at": self._now(),
               "state": "PENDING", "storage_state": "AVAILABLE", "_step": 0,
               "_tasks": sorted(self._spec_of(version).get("root", {}).get("dag", {})
                                .get("tasks", {}))}
        if unknown:  # the driver fails such a run when it resolves the parameters
            run["_fail"] = f"unknown input parameter(s) {', '.join(unknown)}"
        if experiment.get("namespace"):
            run["namespace"] = experiment["namespace"]
        self.runs[run["run_id"]] = run
        return self._public(run)

    def _public(self, run: dict) -> dict:
        out = {k: v for k, v in run.items() if not k.startswith("_")}
        out.pop("namespace", None)
        return out

    def op_RunService_GetRun(self, path_params: dict, token: str | None, **_: Any) -> dict:
        run = self.runs.get(path_params["run_id"])
        if run is None:
            raise ApiError(404, "Not found: run not found")
        self._namespace_allowed(token, run.get("namespace"))
        step = min(run["_step"], len(self.script) - 1)
        state = self.script[step]
        if run.get("_fail") and state not in ("PENDING",):
            state = "FAILED"
            run["error"] = {"code": 3, "message": run["_fail"], "details": []}
        run["state"], run["_step"] = state, run["_step"] + 1
        done = {"SUCCEEDED": len(run["_tasks"]), "RUNNING": len(run["_tasks"]) // 2}
        tasks = []
        for i, name in enumerate(run["_tasks"]):
            if state == "FAILED":
                task_state = "FAILED" if i == 0 else "SKIPPED"
            else:
                task_state = "SUCCEEDED" if i < done.get(state, 0) else (
                    "RUNNING" if state == "RUNNING" and i == done[state] else "PENDING")
            tasks.append({"run_id": run["run_id"], "task_id": f"{run['run_id']}-{i}",
                          "display_name": name, "state": task_state})
        out = self._public(run)
        out["run_details"] = {"task_details": tasks}
        return out

    def op_RunService_ListRuns(self, query: dict, token: str | None, **_: Any) -> dict:
        experiment_id, namespace = query.get("experiment_id"), query.get("namespace") or None
        if experiment_id:
            self.op_ExperimentService_GetExperiment(path_params={"experiment_id": experiment_id},
                                                    token=token)
            items = [r for r in self.runs.values() if r["experiment_id"] == experiment_id]
        else:
            self._need_namespace(namespace, "A list of runs")
            self._namespace_allowed(token, namespace)
            items = [r for r in self.runs.values() if r.get("namespace") == namespace]
        page = self._page([self._public(r) for r in items], query, "runs")
        return page

    # -- recurring runs --
    def op_RecurringRunService_CreateRecurringRun(self, body: dict, token: str | None,
                                                  **_: Any) -> dict:
        if not body.get("display_name"):
            raise ApiError(400, "Invalid input error: The recurring run name is empty")
        experiment = self.op_ExperimentService_GetExperiment(
            path_params={"experiment_id": body.get("experiment_id", "")}, token=token)
        self._version_ref(body)
        concurrency = int(body.get("max_concurrency") or 0)
        if not 1 <= concurrency <= 10:
            raise ApiError(400, "Invalid input error: Max concurrency of a recurring run must "
                                f"be at least 1 and at most 10. Received {concurrency}")
        cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron")
        if cron is not None:
            try:
                robfig_parse(cron)
            except ValueError as err:
                raise ApiError(400, "Invalid input error: Schedule cron is not a supported "
                                    f"format(https://godoc.org/github.com/robfig/cron). "
                                    f"Error: {err}") from None
        job = {**body, "recurring_run_id": self._id("recurring"), "created_at": self._now(),
               "max_concurrency": str(concurrency), "status": "ENABLED"
               if body.get("mode") == "ENABLE" else "DISABLED"}
        if experiment.get("namespace"):
            job["namespace"] = experiment["namespace"]
        self.recurring[job["recurring_run_id"]] = job
        return job

    def op_RecurringRunService_ListRecurringRuns(self, query: dict, token: str | None,
                                                 **_: Any) -> dict:
        experiment_id, namespace = query.get("experiment_id"), query.get("namespace") or None
        if experiment_id:
            self.op_ExperimentService_GetExperiment(path_params={"experiment_id": experiment_id},
                                                    token=token)
            items = [r for r in self.recurring.values() if r["experiment_id"] == experiment_id]
        else:
            self._need_namespace(namespace, "A list of recurring runs")
            self._namespace_allowed(token, namespace)
            items = [r for r in self.recurring.values() if r.get("namespace") == namespace]
        return self._page(items, query, "recurringRuns")

    def op_RecurringRunService_GetRecurringRun(self, path_params: dict, token: str | None,
                                               **_: Any) -> dict:
        job = self.recurring.get(path_params["recurring_run_id"])
        if job is None:
            raise ApiError(404, "Not found: recurring run not found")
        self._namespace_allowed(token, job.get("namespace"))
        return job

    def op_RecurringRunService_DeleteRecurringRun(self, path_params: dict, token: str | None,
                                                  **_: Any) -> dict:
        job = self.op_RecurringRunService_GetRecurringRun(path_params=path_params, token=token)
        del self.recurring[job["recurring_run_id"]]
        return {}
