"""Upload, submit and schedule Slipway pipelines on a Kubeflow Pipelines endpoint.

Everything goes through the real ``kfp.Client`` (the KFP v2beta1 REST API):

    python -m pipelines upload [training] [--set key=value]         # make upload
    python -m pipelines submit [training] [--set key=value] [--wait] # make submit
    python -m pipelines schedule create nightly --cron "0 0 3 * * *" # make schedule
    python -m pipelines schedule list | delete nightly

The endpoint comes from ``kfp.endpoint`` in ``params.yaml`` or the environment (``KFP_HOST``,
``KFP_NAMESPACE``, ``KFP_TOKEN``, ``KFP_TOKEN_FILE``, ``KFP_EXPERIMENT``; the environment
wins). The bearer token is, in that order: ``KFP_TOKEN``, the token file, or the in-cluster
service account token that Kubeflow projects for the pipelines audience. The pipeline is
compiled exactly as ``make compile`` compiles it (:func:`pipelines.cli.compile_all`), and each
distinct compiled spec becomes one pipeline version named after the git commit and the
spec's hash, so uploading the same thing twice changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from components.config import Params
from components.errors import SlipwayError, did_you_mean

ENV_HOST, ENV_NAMESPACE, ENV_TOKEN, ENV_TOKEN_FILE, ENV_EXPERIMENT = (
    "KFP_HOST", "KFP_NAMESPACE", "KFP_TOKEN", "KFP_TOKEN_FILE", "KFP_EXPERIMENT")
# Where Kubeflow projects a service account token for the `pipelines.kubeflow.org` audience
# into a pod (the path kfp's ServiceAccountTokenVolumeCredentials reads by default).
IN_CLUSTER_TOKEN = "/var/run/secrets/kubeflow/pipelines/token"
API = "/apis/v2beta1"
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELING")


# ---- the endpoint and its credentials -----------------------------------------------------


@dataclass
class Endpoint:
    """Where the KFP API is and how to authenticate to it."""

    host: str
    namespace: str = ""
    experiment: str = "slipway"
    token: str | None = None          # a literal token (from the environment)
    token_file: str | None = None     # re-read on every request (tokens rotate)
    credential: str = "none"          # what the token came from, for messages
    timeout_s: float = 10.0

    def headers(self) -> dict[str, str]:
        token = self.token
        if token is None and self.token_file:
            token = _read_token(self.token_file)
        return {"Authorization": f"Bearer {token}"} if token else {}


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as err:
        raise SlipwayError(f"cannot read the KFP token file {path}: {err.strerror}",
                           f"check {ENV_TOKEN_FILE} / kfp.endpoint.token_file") from None
    if not token:
        raise SlipwayError(f"the KFP token file {path} is empty",
                           "write the bearer token into it, or unset it")
    return token


def resolve_endpoint(params: Params, env: dict[str, str] | None = None,
                     in_cluster_token: str = IN_CLUSTER_TOKEN) -> Endpoint:
    """The endpoint from ``kfp.endpoint`` and the environment (the environment wins)."""
    env = dict(os.environ if env is None else env)
    cfg = params.kfp.endpoint
    host = (env.get(ENV_HOST) or cfg.host).rstrip("/")
    if not host:
        raise SlipwayError(
            "no KFP endpoint is configured",
            f"set kfp.endpoint.host in params.yaml or {ENV_HOST}, e.g. "
            f"{ENV_HOST}=http://127.0.0.1:8888 after `kubectl port-forward -n kubeflow "
            "svc/ml-pipeline-ui 8888:80`",
        )
    if not re.match(r"^https?://", host):
        raise SlipwayError(f"KFP endpoint {host!r} has no scheme",
                           f"write it as https://{host} (or http:// for a port-forward)")
    endpoint = Endpoint(host=host, namespace=env.get(ENV_NAMESPACE) or cfg.namespace,
                        experiment=env.get(ENV_EXPERIMENT) or cfg.experiment,
                        timeout_s=cfg.timeout_s)
    token_file = env.get(ENV_TOKEN_FILE) or cfg.token_file
    if env.get(ENV_TOKEN):
        endpoint.token, endpoint.credential = env[ENV_TOKEN].strip(), f"${ENV_TOKEN}"
    elif token_file:
        _read_token(token_file)  # fail now, with the path, rather than at the first request
        endpoint.token_file, endpoint.credential = token_file, f"token file {token_file}"
    elif Path(in_cluster_token).is_file():
        endpoint.token_file = in_cluster_token
        endpoint.credential = f"in-cluster service account token {in_cluster_token}"
    return endpoint


def _http_error_message(endpoint: Endpoint, status: int, body: str, action: str) -> SlipwayError:
    detail = _error_detail(body)
    if status == 401:
        return SlipwayError(
            f"{action}: the KFP endpoint {endpoint.host} refused the token (401 Unauthorized; "
            f"credential: {endpoint.credential}){detail}",
            f"set a valid bearer token in {ENV_TOKEN} or {ENV_TOKEN_FILE} (for example "
            "`kubectl create token default-editor -n <your-namespace> --audience "
            "pipelines.kubeflow.org`)",
        )
    if status == 403:
        where = f"namespace {endpoint.namespace!r}" if endpoint.namespace else "this endpoint"
        return SlipwayError(
            f"{action}: access to {where} is forbidden for this token (403 Forbidden){detail}",
            f"use a namespace your identity belongs to ({ENV_NAMESPACE} or "
            "kfp.endpoint.namespace), or ask its owner to add you as a contributor",
        )
    return SlipwayError(f"{action}: the KFP API answered {status}{detail}",
                        "see the message above; check the endpoint and the pipeline")


def _error_detail(body: str) -> str:
    try:
        data = json.loads(body)
        message = data.get("message") or data.get("error") or ""
    except (ValueError, AttributeError):
        message = (body or "").strip()[:300]
    return f": {message}" if message else ""


def probe(endpoint: Endpoint) -> dict[str, Any]:
    """GET the healthz endpoint once, with a timeout: a clear error when the endpoint is
    unreachable or refuses the credentials (kfp.Client would retry for 25 s and then raise
    a TimeoutError that names neither)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{endpoint.host}{API}/healthz", headers=endpoint.headers())
    try:
        with urllib.request.urlopen(request, timeout=endpoint.timeout_s) as answer:
            body = answer.read().decode()
    except urllib.error.HTTPError as err:
        raise _http_error_message(endpoint, err.code, err.read().decode(errors="replace"),
                                  "connecting") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SlipwayError(
            f"the KFP endpoint {endpoint.host} is unreachable ({reason})",
            f"check {ENV_HOST} / kfp.endpoint.host; for a cluster without ingress run "
            "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8888:80` and use "
            "http://127.0.0.1:8888",
        ) from None
    try:
        return json.loads(body)
    except ValueError:
        raise SlipwayError(
            f"{endpoint.host}{API}/healthz did not answer JSON (a login page?)",
            "point kfp.endpoint.host at the Kubeflow Pipelines API (…/pipeline on a "
            "Kubeflow ingress) and pass a bearer token",
        ) from None


@dataclass
class Session:
    """A connected ``kfp.Client`` and the namespace it works in."""

    client: Any
    endpoint: Endpoint
    multi_user: bool

    @property
    def namespace(self) -> str | None:
        return self.endpoint.namespace or None


def connect(params: Params, env: dict[str, str] | None = None,
            in_cluster_token: str = IN_CLUSTER_TOKEN) -> Session:
    """Resolve the endpoint, check it answers and accepts the token, return a session."""
    import warnings

    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    endpoint = resolve_endpoint(params, env, in_cluster_token)
    health = probe(endpoint)
    multi_user = bool(health.get("multi_user"))
    if multi_user and not endpoint.namespace:
        raise SlipwayError(
            f"the KFP endpoint {endpoint.host} runs in multi-user mode and no namespace is set",
            f"set {ENV_NAMESPACE} or kfp.endpoint.namespace to your Kubeflow profile's "
            "namespace (e.g. kubeflow-user-example-com)",
        )
    kwargs: dict[str, Any] = {"host": endpoint.host}
    if endpoint.token:
        kwargs["existing_token"] = endpoint.token
    elif endpoint.token_file:
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(endpoint.token_file)
    # A namespace in the client's context skips its own healthz probe (retried for 25 s);
    # ours already ran. "kubeflow" is the client's sentinel for "none given".
    kwargs["namespace"] = endpoint.namespace or "kubeflow"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP >= 2.0.0-beta.2"
        with api_errors(endpoint, "connecting"):
            client = kfp.Client(**kwargs)
    return Session(client, endpoint, multi_user)


@contextlib.contextmanager
def api_errors(endpoint: Endpoint, action: str) -> Iterator[None]:
    """Turn the generated client's exceptions into errors that name the problem and fix."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as err:
        raise _http_error_message(endpoint, err.status or 0, err.body or err.reason or "",
                                  action) from None
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise SlipwayError(f"{action}: the KFP endpoint {endpoint.host} is unreachable ({err})",
                           f"check {ENV_HOST} / kfp.endpoint.host") from None


def _conflict(err: Exception) -> bool:
    return getattr(err, "status", None) == 409


# ---- the compiled spec ---------------------------------------------------------------------


@dataclass
class CompiledSpec:
    """A compiled pipeline: its IR documents and the hash that names its version."""

    name: str
    path: Path
    pipeline_spec: dict[str, Any]
    platform_spec: dict[str, Any] | None
    sha256: str = ""

    def __post_init__(self) -> None:
        canonical = json.dumps([self.pipeline_spec, self.platform_spec], sort_keys=True,
                               separators=(",", ":"))
        self.sha256 = hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        """The pipeline's root input parameters (type, default) by name."""
        root = self.pipeline_spec.get("root", {})
        return dict(root.get("inputDefinitions", {}).get("parameters", {}))

    def defaults(self) -> dict[str, Any]:
        return {k: v.get("defaultValue") for k, v in self.parameters.items()}

    def without_defaults(self) -> str:
        """The spec with the parameter defaults blanked: what a run cannot change."""
        spec = json.loads(json.dumps(self.pipeline_spec))
        for p in spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}).values():
            p.pop("defaultValue", None)
            p.pop("isOptional", None)
        return json.dumps([spec, self.platform_spec], sort_keys=True)


def load_spec(path: str | Path, expected_name: str | None = None) -> CompiledSpec:
    """Read a compiled pipeline (KFP IR YAML: the pipeline spec, optionally followed by the
    platform spec) and check it is the pipeline it is meant to be."""
    path = Path(path)
    if not path.is_file():
        raise SlipwayError(f"compiled pipeline {path} not found", "run `make compile` first")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as err:
        raise SlipwayError(f"{path} is not valid YAML: {err}", "compile it again") from None
    if not docs or not isinstance(docs[0], dict) or "pipelineInfo" not in docs[0]:
        raise SlipwayError(f"{path} is not a compiled KFP pipeline (no pipelineInfo)",
                           "compile it with `make compile`")
    name = docs[0]["pipelineInfo"].get("name", "")
    if expected_name is not None and name != expected_name:
        raise SlipwayError(
            f"{path} was compiled for pipeline {name!r}, not {expected_name!r}",
            f"upload it as {name!r}, or compile {expected_name!r} (`make compile`)",
        )
    platform = docs[1] if len(docs) > 1 else None
    if platform is not None and "platforms" not in platform:
        raise SlipwayError(f"{path}: its second document is not a platform spec",
                           "compile it again with `make compile`")
    return CompiledSpec(name, path, docs[0], platform)


def compile_spec(params: Params, name: str, out_dir: str | Path = "build/pipelines"
                 ) -> CompiledSpec:
    """Compile one pipeline the way ``make compile`` does and load it."""
    from pipelines import PIPELINES
    from pipelines.cli import compile_all

    if name not in PIPELINES:
        raise SlipwayError(f"unknown pipeline {name!r}", did_you_mean(name, PIPELINES))
    (path,) = compile_all(params, out_dir, [name])
    return load_spec(path, name)


def describe_changes(new: CompiledSpec, old: CompiledSpec | None, commit: dict[str, Any],
                     old_name: str | None = None) -> str:
    """A pipeline version's description: its commit, and what differs from the last one."""
    code = (commit.get("commit") or "unknown")[:12] + (" (uncommitted changes)"
                                                       if commit.get("dirty") else "")
    lines = [f"commit {code}; spec sha256 {new.sha256[:12]}"]
    if old is None:
        lines.append("first version of this pipeline")
        return "\n".join(lines)
    changes = []
    new_d, old_d = new.defaults(), old.defaults()
    changed = sorted(k for k in set(new_d) | set(old_d) if new_d.get(k) != old_d.get(k))
    if changed:
        changes.append("parameter defaults: " + ", ".join(changed))
    new_tasks = set(new.pipeline_spec.get("root", {}).get("dag", {}).get("tasks", {}))
    old_tasks = set(old.pipeline_spec.get("root", {}).get("dag", {}).get("tasks", {}))
    if new_tasks - old_tasks:
        changes.append("tasks added: " + ", ".join(sorted(new_tasks - old_tasks)))
    if old_tasks - new_tasks:
        changes.append("tasks removed: " + ", ".join(sorted(old_tasks - new_tasks)))
    images = {
        json.dumps(sorted(_images(spec.pipeline_spec).items())) for spec in (new, old)
    }
    if len(images) > 1:
        changes.append("images: " + ", ".join(sorted(set(_images(new.pipeline_spec).values()))))
    if new.platform_spec != old.platform_spec:
        changes.append("cluster settings (node selectors, tolerations, volumes)")
    structural = changes[1:] if changed else changes
    if not structural and new.without_defaults() != old.without_defaults():
        changes.append("component code, commands or resources")
    lines.append(f"changed since {old_name or 'the previous version'}: "
                 + ("; ".join(changes) if changes else "nothing but formatting"))
    return "\n".join(lines)


def _images(spec: dict[str, Any]) -> dict[str, str]:
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    return {k: v.get("container", {}).get("image", "") for k, v in executors.items()}


def version_name(spec: CompiledSpec, commit: dict[str, Any]) -> str:
    """``<pipeline>-<commit>-<spec hash>``: the hash alone identifies the content."""
    short = (commit.get("commit") or "nocommit")[:8] + ("-dirty" if commit.get("dirty") else "")
    return f"{spec.name}-{short}-{spec.sha256[:12]}"


# ---- pipelines and versions ----------------------------------------------------------------


@dataclass
class Version:
    pipeline_id: str
    version_id: str
    name: str
    created: bool
    description: str = ""


def _eq_filter(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key,
                                       "stringValue": value}]})


def find_pipeline(session: Session, name: str) -> str | None:
    """The id of the pipeline of that name (shared or in the session's namespace)."""
    with api_errors(session.endpoint, f"looking up pipeline {name!r}"):
        found = session.client.list_pipelines(filter=_eq_filter("display_name", name),
                                              namespace=session.namespace, page_size=10)
    matches = [p for p in (found.pipelines or []) if p.display_name == name]
    return matches[0].pipeline_id if matches else None


def _versions(session: Session, pipeline_id: str) -> list[Any]:
    out, token = [], ""
    with api_errors(session.endpoint, "listing pipeline versions"):
        while True:
            page = session.client.list_pipeline_versions(pipeline_id, page_token=token,
                                                         page_size=100,
                                                         sort_by="created_at desc")
            out.extend(page.pipeline_versions or [])
            token = page.next_page_token or ""
            if not token:
                return out


def ensure_version(session: Session, spec: CompiledSpec, commit: dict[str, Any],
                   out: TextIO | None = None) -> Version:
    """Upload ``spec`` as a new version of its pipeline unless a version with the same
    spec hash is there already; create the pipeline on first use."""
    out = out or sys.stdout
    import kfp_server_api

    endpoint = session.endpoint
    pipeline_id = find_pipeline(session, spec.name)
    if pipeline_id is None:
        body = kfp_server_api.V2beta1Pipeline(
            display_name=spec.name, namespace=session.namespace,
            description=spec.pipeline_spec.get("pipelineInfo", {}).get("description")
            or f"Slipway {spec.name} pipeline")
        with api_errors(endpoint, f"creating pipeline {spec.name!r}"):
            try:
                pipeline_id = session.client._pipelines_api \
                    .pipeline_service_create_pipeline(pipeline=body).pipeline_id
                out.write(f"created pipeline {spec.name} ({pipeline_id})\n")
            except kfp_server_api.ApiException as err:
                if not _conflict(err):
                    raise
                pipeline_id = None  # created meanwhile by someone else: look it up
        pipeline_id = pipeline_id or find_pipeline(session, spec.name)
        if pipeline_id is None:
            raise SlipwayError(f"pipeline {spec.name!r} could not be created or found",
                               "check your permissions in the namespace")
    versions = _versions(session, pipeline_id)
    for v in versions:
        if v.display_name and v.display_name.endswith(spec.sha256[:12]):
            out.write(f"pipeline {spec.name}: version {v.display_name} already uploaded "
                      "(same compiled spec): nothing to do\n")
            return Version(pipeline_id, v.pipeline_version_id, v.display_name, False,
                           v.description or "")
    name = version_name(spec, commit)
    previous = previous_name = None
    if versions:
        latest = versions[0]
        with api_errors(endpoint, "reading the previous version"):
            full = session.client.get_pipeline_version(pipeline_id, latest.pipeline_version_id)
        if full.pipeline_spec:
            docs = full.pipeline_spec
            pipeline_doc = docs.get("pipeline_spec", docs) if isinstance(docs, dict) else docs
            platform_doc = docs.get("platform_spec") if isinstance(docs, dict) else None
            previous = CompiledSpec(spec.name, spec.path, pipeline_doc, platform_doc)
            previous_name = latest.display_name
    description = describe_changes(spec, previous, commit, previous_name)
    with api_errors(endpoint, f"uploading version {name}"):
        try:
            created = session.client.upload_pipeline_version(
                str(spec.path), name, pipeline_id=pipeline_id, description=description)
        except kfp_server_api.ApiException as err:
            if not _conflict(err):
                raise
            # Uploaded meanwhile (the same name means the same content): take that one.
            for v in _versions(session, pipeline_id):
                if v.display_name == name:
                    out.write(f"pipeline {spec.name}: version {name} already uploaded\n")
                    return Version(pipeline_id, v.pipeline_version_id, name, False,
                                   v.description or "")
            raise
    out.write(f"pipeline {spec.name}: uploaded version {name}\n  "
              + description.replace("\n", "\n  ") + "\n")
    return Version(pipeline_id, created.pipeline_version_id, name, True, description)


# ---- experiments and runs ------------------------------------------------------------------


def find_experiment(session: Session, name: str) -> str | None:
    with api_errors(session.endpoint, f"looking up experiment {name!r}"):
        found = session.client.list_experiments(filter=_eq_filter("display_name", name),
                                                namespace=session.namespace, page_size=10)
    matches = [e for e in (found.experiments or []) if e.display_name == name]
    return matches[0].experiment_id if matches else None


def experiment_names(session: Session) -> list[str]:
    with api_errors(session.endpoint, "listing experiments"):
        found = session.client.list_experiments(namespace=session.namespace, page_size=100)
    return [e.display_name for e in (found.experiments or [])]


def require_experiment(session: Session, name: str) -> str:
    """The experiment's id; an error naming the known ones when there is none."""
    experiment_id = find_experiment(session, name)
    if experiment_id is None:
        raise SlipwayError(f"unknown experiment {name!r}"
                           + (f" in namespace {session.namespace!r}" if session.namespace else ""),
                           did_you_mean(name, experiment_names(session))
                           or "submit a run first (`make submit`) to create it")
    return experiment_id


def ensure_experiment(session: Session, name: str, out: TextIO | None = None) -> str:
    """Get or create the experiment of that name in the session's namespace."""
    out = out or sys.stdout
    import kfp_server_api

    experiment_id = find_experiment(session, name)
    if experiment_id:
        return experiment_id
    body = kfp_server_api.V2beta1Experiment(display_name=name, namespace=session.namespace,
                                            description="Slipway runs")
    with api_errors(session.endpoint, f"creating experiment {name!r}"):
        try:
            experiment_id = session.client._experiment_api \
                .experiment_service_create_experiment(experiment=body).experiment_id
            out.write(f"created experiment {name} ({experiment_id})\n")
            return experiment_id
        except kfp_server_api.ApiException as err:
            if not _conflict(err):
                raise
    found = find_experiment(session, name)  # created meanwhile
    if found is None:
        raise SlipwayError(f"experiment {name!r} exists but cannot be read",
                           "check your permissions in the namespace")
    return found


def run_parameters(base: CompiledSpec, overridden: CompiledSpec,
                   overrides: list[str]) -> dict[str, Any]:
    """The run parameters that turn ``base`` into ``overridden``: the pipeline parameters
    whose defaults the ``SET`` overrides changed. An override that changes the compiled
    pipeline itself (a resource profile, the image, tuning's parallelism) is not a run
    parameter: that needs its own version."""
    if base.without_defaults() != overridden.without_defaults():
        raise SlipwayError(
            f"the overrides {' '.join(overrides)} change the compiled pipeline itself, not only "
            "its parameters (a profile, an image, tuning.parallelism)",
            "upload that as its own version: `make upload SET=\"...\"` then `make submit "
            "SET=\"...\"` with the same overrides, or put them in params.yaml",
        )
    new, old = overridden.defaults(), base.defaults()
    return {k: v for k, v in new.items() if old.get(k) != v}


@dataclass
class Submitted:
    run_id: str
    experiment_id: str
    version: Version
    parameters: dict[str, Any]
    url: str
    state: str | None = None


def run_url(session: Session, run_id: str) -> str:
    return f"{session.endpoint.host}/#/runs/details/{run_id}"


def create_run(session: Session, experiment_id: str, version: Version, display_name: str,
               parameters: dict[str, Any], description: str = "") -> str:
    """Create a run of a pipeline version; returns its id."""
    import kfp_server_api

    body = kfp_server_api.V2beta1Run(
        experiment_id=experiment_id, display_name=display_name, description=description or None,
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id=version.pipeline_id, pipeline_version_id=version.version_id),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(parameters=parameters))
    with api_errors(session.endpoint, "creating the run"):
        return session.client._run_api.run_service_create_run(run=body).run_id


def submit(session: Session, params: Params, pipeline: str, overrides: list[str],
           experiment: str | None = None, run_name: str | None = None,
           description: str = "", extra_parameters: dict[str, Any] | None = None,
           base_params: Params | None = None, out: TextIO | None = None,
           out_dir: str | Path = "build/pipelines") -> Submitted:
    """Upload (if new) the pipeline compiled from ``params.yaml`` and start a run of it with
    the overrides as run parameters.

    Args:
        session: from :func:`connect`.
        params: the settings with the overrides applied.
        pipeline: pipeline name.
        overrides: the ``key=value`` overrides (for messages).
        experiment: experiment name (get or create); default ``kfp.endpoint.experiment``.
        run_name: the run's display name; default ``<pipeline> <version>``.
        description: the run's description.
        extra_parameters: pipeline parameters to set as they are (e.g. from an alert).
        base_params: the settings without overrides (default: reloaded from params.yaml).
        out: where progress goes.
        out_dir: where compiled pipelines go.
    """
    out = out or sys.stdout
    from components.package import git_commit

    base_params = base_params or params
    base = compile_spec(base_params, pipeline, out_dir)
    parameters: dict[str, Any] = {}
    if overrides:
        overridden = compile_spec(params, pipeline, Path(out_dir) / "overridden")
        parameters = run_parameters(base, overridden, overrides)
    for key, value in (extra_parameters or {}).items():
        if key not in base.parameters:
            raise SlipwayError(f"pipeline {pipeline!r} has no parameter {key!r}",
                               did_you_mean(key, base.parameters))
        parameters[key] = value
    version = ensure_version(session, base, git_commit("."), out)
    experiment = experiment or session.endpoint.experiment
    experiment_id = ensure_experiment(session, experiment, out)
    name = run_name or f"{pipeline} {version.name.removeprefix(pipeline + '-')}"
    run_id = create_run(session, experiment_id, version, name, parameters, description)
    url = run_url(session, run_id)
    shown = ", ".join(sorted(parameters)) or "none (the version's defaults)"
    out.write(f"run {run_id} started in experiment {experiment}: {name}\n"
              f"  parameters set  {shown}\n  details         {url}\n")
    return Submitted(run_id, experiment_id, version, parameters, url)


def wait(session: Session, run_id: str, timeout_s: float = 3600, poll_s: float = 5.0,
         out: TextIO | None = None) -> str:
    """Poll a run until it ends, printing its state and each task's as they change.

    Returns:
        The final state (``SUCCEEDED``, ``FAILED``, ...), or ``TIMEOUT``.
    """
    out = out or sys.stdout
    deadline = time.monotonic() + timeout_s
    last_state, tasks = None, {}
    while True:
        with api_errors(session.endpoint, f"reading run {run_id}"):
            run = session.client.get_run(run_id)
        state = str(run.state or "PENDING")
        if state != last_state:
            out.write(f"  run {state.lower()}\n")
            last_state = state
        for task in (run.run_details.task_details if run.run_details else None) or []:
            key = task.display_name or task.task_id
            if task.state and tasks.get(key) != task.state:
                tasks[key] = task.state
                mark = {"SUCCEEDED": "✓", "FAILED": "✗", "RUNNING": "▸"}.get(task.state, "·")
                out.write(f"    {mark} {key} {task.state.lower()}\n")
        if state in TERMINAL_STATES:
            if run.error and getattr(run.error, "message", None):
                out.write(f"  error: {run.error.message}\n")
            out.flush()
            return state
        if time.monotonic() > deadline:
            out.write(f"  still {state.lower()} after {timeout_s:.0f} s: stopped waiting "
                      f"(the run goes on: {run_url(session, run_id)})\n")
            return "TIMEOUT"
        out.flush()
        time.sleep(poll_s)


def list_runs(session: Session, experiment: str | None = None, limit: int = 20) -> list[Any]:
    """The newest runs (of one experiment, or of the namespace)."""
    experiment_id = require_experiment(session, experiment) if experiment else None
    with api_errors(session.endpoint, "listing runs"):
        found = session.client.list_runs(experiment_id=experiment_id,
                                         namespace=session.namespace, page_size=limit,
                                         sort_by="created_at desc")
    return list(found.runs or [])


# ---- recurring runs ------------------------------------------------------------------------

_CRON_FIELDS = (("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None),
                ("day of month", 1, 31, None),
                ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
                                  "sep", "oct", "nov", "dec")),
                ("day of week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")))
_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                "@hourly")


def validate_cron(expr: str) -> str:
    """Check a cron expression the way KFP reads it: 6 fields, seconds first (robfig/cron).

    KFP's API server accepts 5 fields too, but reads them as *second minute hour day month*,
    so ``0 3 * * *`` (a Unix crontab's "every day at 03:00") would run at second 0 of minute 3
    of every hour. Refusing it here is the only protection.

    Returns:
        The expression, whitespace normalised.

    Raises:
        SlipwayError: naming the field and the fix.
    """
    expr = " ".join((expr or "").split())
    if expr in _DESCRIPTORS or re.fullmatch(r"@every \d+(\.\d+)?(ns|us|ms|s|m|h)"
                                            r"(\d+(\.\d+)?(ns|us|ms|s|m|h))*", expr):
        return expr
    fields = expr.split(" ") if expr else []
    if len(fields) == 5:
        raise SlipwayError(
            f"cron {expr!r} has 5 fields; KFP wants 6, seconds first (a 5-field one would be "
            "read as second minute hour day month)",
            f"add the seconds: \"0 {expr}\"",
        )
    if len(fields) != 6:
        raise SlipwayError(f"cron {expr!r} has {len(fields)} fields; KFP wants 6: second "
                           "minute hour day-of-month month day-of-week",
                           "e.g. \"0 0 3 * * *\" for every day at 03:00")
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            problem = _cron_part_problem(part, low, high, names,
                                         allow_question=name in ("day of month", "day of week"))
            if problem:
                raise SlipwayError(f"cron {expr!r}: {name} field {text!r}: {problem}",
                                   f"the {name} takes {low}-{high}"
                                   + (f" or {names[0].upper()}-{names[-1].upper()}"
                                      if names else "") + ", *, ranges a-b, steps */n, lists a,b")
    return expr


def _cron_part_problem(part: str, low: int, high: int, names: tuple[str, ...] | None,
                       allow_question: bool) -> str | None:
    if part in ("*", "?"):
        return None if part == "*" or allow_question else "'?' only in the day fields"
    base, _, step = part.partition("/")
    if step and not (step.isdigit() and int(step) > 0):
        return f"step {step!r} is not a positive number"
    if base in ("*", "?"):
        return None
    bounds = base.split("-")
    if len(bounds) > 2 or not all(bounds):
        return f"{part!r} is not a value or a range a-b"
    values = []
    for b in bounds:
        if b.isdigit():
            values.append(int(b))
        elif names and b.lower() in names:
            values.append(names.index(b.lower()) + low)
        else:
            return f"{b!r} is not a number"
    if any(v < low or v > high for v in values):
        return f"{part!r} is outside {low}-{high}"
    if len(values) == 2 and values[0] > values[1]:
        return f"range {part!r} runs backwards"
    return None


@dataclass
class Schedule:
    """What a recurring run should be."""

    name: str
    cron: str
    max_concurrency: int = 1
    no_catchup: bool = True
    enabled: bool = True
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cron = validate_cron(self.cron)
        if not 1 <= self.max_concurrency <= 10:
            raise SlipwayError(f"max concurrency {self.max_concurrency} is out of range",
                               "KFP takes 1 to 10 runs of a schedule at once")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}", self.name):
            raise SlipwayError(f"schedule name {self.name!r} is not a simple name",
                               "use letters, digits, '.', '_', '-' (e.g. nightly)")


def _recurring_runs(session: Session, experiment_id: str) -> list[Any]:
    out, token = [], ""
    with api_errors(session.endpoint, "listing recurring runs"):
        while True:
            page = session.client.list_recurring_runs(experiment_id=experiment_id,
                                                      page_token=token, page_size=100)
            out.extend(page.recurring_runs or [])
            token = page.next_page_token or ""
            if not token:
                return out


def _same_schedule(existing: Any, want: Schedule, version: Version) -> bool:
    ref = existing.pipeline_version_reference
    cron = existing.trigger.cron_schedule.cron if existing.trigger and \
        existing.trigger.cron_schedule else None
    params = (existing.runtime_config.parameters if existing.runtime_config else None) or {}
    return (ref is not None and ref.pipeline_version_id == version.version_id
            and cron == want.cron and int(existing.max_concurrency or 1) == want.max_concurrency
            and bool(existing.no_catchup) == want.no_catchup
            and _enabled(existing) == want.enabled and params == want.parameters)


def _enabled(existing: Any) -> bool:
    # `status` is what the API server reports; `mode` only echoes the creation request
    if existing.status in ("ENABLED", "DISABLED"):
        return existing.status == "ENABLED"
    return existing.mode == "ENABLE"


def schedule(session: Session, want: Schedule, version: Version, experiment: str,
             out: TextIO | None = None) -> tuple[str, str]:
    """Create the recurring run, or replace the one of the same name when it differs.

    Returns:
        ``(recurring_run_id, "created" | "replaced" | "unchanged")``.
    """
    out = out or sys.stdout
    experiment_id = ensure_experiment(session, experiment, out)
    existing = [r for r in _recurring_runs(session, experiment_id) if r.display_name == want.name]
    if len(existing) == 1 and _same_schedule(existing[0], want, version):
        out.write(f"schedule {want.name}: unchanged ({want.cron}, version {version.name})\n")
        return existing[0].recurring_run_id, "unchanged"
    for old in existing:  # KFP cannot update a recurring run: replace it
        with api_errors(session.endpoint, f"deleting the old schedule {want.name}"):
            session.client.delete_recurring_run(old.recurring_run_id)
    with api_errors(session.endpoint, f"creating schedule {want.name}"):
        created = session.client.create_recurring_run(
            experiment_id, want.name, description=f"Slipway {version.name}: {want.cron}",
            cron_expression=want.cron, max_concurrency=want.max_concurrency,
            no_catchup=want.no_catchup, params=want.parameters,
            pipeline_id=version.pipeline_id, version_id=version.version_id,
            enabled=want.enabled)
    action = "replaced" if existing else "created"
    out.write(f"schedule {want.name}: {action} ({want.cron}, at most {want.max_concurrency} at "
              f"once, {'no catch-up' if want.no_catchup else 'catch-up'}, version "
              f"{version.name})\n")
    return created.recurring_run_id, action


def list_schedules(session: Session, experiment: str) -> list[Any]:
    return _recurring_runs(session, require_experiment(session, experiment))


def delete_schedule(session: Session, name: str, experiment: str) -> int:
    """Delete the recurring run(s) of that name; an error naming the known ones if none."""
    runs = list_schedules(session, experiment)
    doomed = [r for r in runs if r.display_name == name]
    if not doomed:
        raise SlipwayError(f"no schedule named {name!r} in experiment {experiment!r}",
                           did_you_mean(name, [r.display_name for r in runs])
                           or "`make schedule ACTION=list` shows them")
    for r in doomed:
        with api_errors(session.endpoint, f"deleting schedule {name}"):
            session.client.delete_recurring_run(r.recurring_run_id)
    return len(doomed)
