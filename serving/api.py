"""The HTTP routes of the inference service: KServe v1, the Open Inference Protocol v2,
and the model's metadata.

A Starlette app mounted into the BentoML service (``@bentoml.asgi_app``), so that the
routes control their own request parsing: the body is read against a size cap, its
content type picks the decoder (``serving/protocol.py``: JSON, NumPy ``.npy``, Arrow, v2
tensors; pickle never), and every client error is answered with a 4xx JSON body
``{"error", "reason", "field"}`` that names the field or input. Nothing a client sends can
produce a 5xx or a traceback: an unexpected failure is logged with its traceback and
answered with a plain 500 message.

* ``POST /predict``, ``GET /metadata`` - KServe v1 (rows, columns, ``.npy``, Arrow);
* ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}[/versions/
  {version}]``, ``.../ready``, ``POST .../infer`` - the Open Inference Protocol v2 over REST.

Both go through the same validation, batching, metrics, drift, auth and concurrency limit.
Request parsing that may take a while (bodies over ``OFFLOAD_BYTES``) runs in a worker
thread, so one large batch does not stall the event loop for the requests around it.

A body over its cap is read and thrown away (up to ``SLIPWAY_MAX_DRAIN_BYTES``) before the
413 goes out with ``Connection: close``: Python's http.client (urllib, requests) sends the
whole body before it reads an answer, and a server that closes early leaves such a client
with a broken pipe or a reset instead of the 413.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import metadata as importlib_metadata
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from serving import protocol
from serving.guard import current_runtime
from serving.protocol import (
    ARROW_FILE_TYPE,
    ARROW_STREAM_TYPE,
    JSON_TYPE,
    NPY_TYPE,
    OCTET_TYPE,
    V2_HEADER_LENGTH,
    parse_arrow,  # noqa: F401 - re-exported: tests and tools import the parsers from here
    parse_json,  # noqa: F401
    parse_npy,  # noqa: F401
)
from serving.schema import RequestError

logger = logging.getLogger("slipway.serving")

OFFLOAD_BYTES = 256 * 1024
DRAIN_SECONDS = 30.0  # give up draining an oversized body after this long


class JSONAnswer(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return protocol.dumps(content)


def error_answer(err: RequestError, headers: dict[str, str] | None = None) -> JSONAnswer:
    if err.status == 413 and err.reason == "body_too_large":
        headers = {**(headers or {}), "Connection": "close"}
    return JSONAnswer(err.to_json(), status_code=err.status, headers=headers)


def not_ready_answer(runtime: Any) -> JSONAnswer:
    """503 until the model is loaded. (A request before the service instance exists never
    reaches a route: the guard in front of the app answers it.)"""
    runtime.metrics.record_rejected("not_ready")
    detail = runtime.error if runtime.error else "the model is still loading"
    return JSONAnswer({"error": f"not ready: {detail}", "reason": "not_ready"},
                      status_code=503, headers={"Retry-After": "5"})


def content_type(request: Request) -> tuple[str, dict[str, str]]:
    """The request's media type (lower case) and its parameters (charset, ...)."""
    return protocol.parse_content_type(request.headers.get("content-type", ""))


async def _drain(request: Request, limit: int) -> None:
    """Read and discard what is left of the body, up to ``limit`` bytes and
    ``DRAIN_SECONDS``, so a client that sends everything before reading gets the answer."""
    size = 0
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return
    except (TimeoutError, ClientDisconnect):
        return


async def read_body(request: Request, cap: int, drain: int = 0) -> bytes:
    """The request body, refusing more than ``cap`` bytes (413) after draining at most
    ``drain`` bytes of it (see the module docstring)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError("malformed_request", "Content-Length is not a number",
                               "Content-Length") from None
        if size > cap:
            if size <= drain:
                await _drain(request, drain)
            raise RequestError("body_too_large", f"body of {size} bytes is over the limit of "
                               f"{cap} bytes; split the request", "body", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            await _drain(request, drain - size)
            raise RequestError("body_too_large", f"body is over the limit of {cap} bytes; "
                               "split the request", "body", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _limits(runtime: Any) -> protocol.Limits:
    s = runtime.settings
    return protocol.Limits(max_binary_rows=s.max_binary_rows,
                           max_binary_body_bytes=s.max_binary_body_bytes)


async def _parse_v1(runtime: Any, request: Request) -> Any:
    kind, options = content_type(request)
    settings = runtime.settings
    if kind == JSON_TYPE:
        protocol.check_json_charset(options)
        cap = settings.max_body_bytes
    elif kind in (NPY_TYPE, ARROW_STREAM_TYPE, ARROW_FILE_TYPE):
        cap = settings.max_binary_body_bytes
    else:
        raise protocol.unsupported_type(kind, f"{JSON_TYPE}, {NPY_TYPE}, or {ARROW_STREAM_TYPE}")
    body = await read_body(request, cap, settings.max_drain_bytes)
    if kind == JSON_TYPE and len(body) <= OFFLOAD_BYTES:
        return protocol.decode_v1(runtime.schema, kind, body, _limits(runtime))
    return await run_in_threadpool(protocol.decode_v1, runtime.schema, kind, body,
                                   _limits(runtime))


def _wants_arrow(request: Request) -> bool:
    return ARROW_STREAM_TYPE in request.headers.get("accept", "")


def internal_error(what: str) -> JSONAnswer:
    logger.exception("slipway: %s failed", what)
    return JSONAnswer({"error": f"internal error while {what} (logged on the server)",
                       "reason": "internal"}, status_code=500)


async def predict(request: Request) -> Response:
    runtime = current_runtime()
    if not runtime.ready:
        return not_ready_answer(runtime)
    try:
        rows = await _parse_v1(runtime, request)
    except RequestError as err:
        runtime.metrics.record_invalid(err.reason)
        return error_answer(err)
    except ClientDisconnect:
        return Response(status_code=499)  # nobody is listening; keeps the log honest
    except Exception:  # a bug of ours, not the client's: the fuzz tests look for these
        return internal_error("reading the request")
    try:
        prediction = await runtime.predict(rows)
        if _wants_arrow(request):
            payload = await run_in_threadpool(protocol.encode_arrow, runtime.model, prediction)
            return Response(payload, media_type=ARROW_STREAM_TYPE)
        return JSONAnswer(protocol.encode_v1(runtime.model, prediction))
    except Exception:
        return internal_error("predicting")


async def metadata(request: Request) -> Response:
    runtime = current_runtime()
    if not runtime.ready:
        return not_ready_answer(runtime)
    return JSONAnswer(runtime.metadata())


# ---- Open Inference Protocol v2 --------------------------------------------------------

def _check_model(runtime: Any, request: Request) -> None:
    """404 naming the model or version when the path does not name the one served."""
    model = runtime.model
    name = request.path_params["name"]
    if name != model.name:
        raise RequestError("unknown_model", f"model {name!r} is not served here; this server "
                           f"serves {model.name!r} (GET /v2/models/{model.name})", "model",
                           status=404)
    version = request.path_params.get("version")
    if version is not None and version != model.version:
        raise RequestError("unknown_version", f"model {name!r} has no version {version!r} "
                           f"here; the served version is {model.version!r}", "version",
                           status=404)


async def v2_live(request: Request) -> Response:
    return JSONAnswer({"live": True})


async def v2_ready(request: Request) -> Response:
    runtime = current_runtime()
    ready = bool(runtime is not None and runtime.ready and not runtime.draining)
    return JSONAnswer({"ready": ready}, status_code=200 if ready else 503)


async def v2_server(request: Request) -> Response:
    try:
        version = importlib_metadata.version("slipway")
    except importlib_metadata.PackageNotFoundError:
        version = "unknown"
    return JSONAnswer(protocol.v2_server_metadata(version))


async def v2_model(request: Request) -> Response:
    runtime = current_runtime()
    if not runtime.ready:
        return not_ready_answer(runtime)
    try:
        _check_model(runtime, request)
    except RequestError as err:
        runtime.metrics.record_invalid(err.reason)
        return error_answer(err)
    return JSONAnswer(protocol.v2_model_metadata(runtime.model, runtime.schema))


async def v2_model_ready(request: Request) -> Response:
    runtime = current_runtime()
    if not runtime.ready:
        return JSONAnswer({"name": request.path_params["name"], "ready": False},
                          status_code=503)
    try:
        _check_model(runtime, request)
    except RequestError as err:
        runtime.metrics.record_invalid(err.reason)
        return error_answer(err)
    return JSONAnswer({"name": runtime.model.name, "ready": True})


async def _parse_v2(runtime: Any, request: Request) -> protocol.V2Request:
    _check_model(runtime, request)
    settings = runtime.settings
    header_length = request.headers.get(V2_HEADER_LENGTH)
    kind, options = content_type(request)
    if header_length is None:
        # tritonclient sends its JSON requests without a Content-Type: take none as JSON.
        if kind not in (JSON_TYPE, ""):
            raise protocol.unsupported_type(
                kind, f"{JSON_TYPE} (or {OCTET_TYPE} with Inference-Header-Content-Length)")
        protocol.check_json_charset(options)
        cap, max_rows = settings.max_body_bytes, settings.max_instances
    else:
        if kind not in (OCTET_TYPE, JSON_TYPE, ""):
            raise protocol.unsupported_type(kind, f"{OCTET_TYPE} with binary tensors")
        cap, max_rows = settings.max_binary_body_bytes, settings.max_binary_rows
    body = await read_body(request, cap, settings.max_drain_bytes)
    args = (runtime.schema, body, header_length, protocol.v2_outputs(runtime.model), max_rows)
    if len(body) <= OFFLOAD_BYTES:
        return protocol.decode_v2(*args)
    return await run_in_threadpool(protocol.decode_v2, *args)


async def v2_infer(request: Request) -> Response:
    runtime = current_runtime()
    if not runtime.ready:
        return not_ready_answer(runtime)
    try:
        decoded = await _parse_v2(runtime, request)
    except RequestError as err:
        runtime.metrics.record_invalid(err.reason)
        return error_answer(err)
    except ClientDisconnect:
        return Response(status_code=499)
    except Exception:
        return internal_error("reading the request")
    try:
        prediction = await runtime.predict(decoded.rows)
        payload, headers = protocol.encode_v2(runtime.model, prediction, decoded)
        media = headers.pop("content-type")
        return Response(payload, media_type=media, headers=headers)
    except Exception:
        return internal_error("predicting")


def build_app() -> Starlette:
    """The Starlette app with the service's routes (no state: it reads the running
    service's runtime per request)."""
    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    return Starlette(routes=[
        Route("/predict", predict, methods=["POST"]),
        Route("/metadata", metadata, methods=["GET"]),
        Route("/v2/health/live", v2_live, methods=["GET"]),
        Route("/v2/health/ready", v2_ready, methods=["GET"]),
        Route("/v2", v2_server, methods=["GET"]),
        Route(model, v2_model, methods=["GET"]),
        Route(version, v2_model, methods=["GET"]),
        Route(model + "/ready", v2_model_ready, methods=["GET"]),
        Route(version + "/ready", v2_model_ready, methods=["GET"]),
        Route(model + "/infer", v2_infer, methods=["POST"]),
        Route(version + "/infer", v2_infer, methods=["POST"]),
    ])
