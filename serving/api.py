"""The HTTP routes of the inference service: ``POST /predict`` and ``GET /metadata``.

A Starlette app mounted into the BentoML service (``@bentoml.asgi_app``), so that the
routes control their own request parsing: the body is read against a size cap, its
content type picks the parser (JSON, NumPy ``.npy`` or Arrow; pickle never), and every
client error is answered with a 4xx JSON body ``{"error", "reason", "field"}`` that names
the field and the problem. Nothing a client sends can produce a 5xx or a traceback: an
unexpected failure is logged with its traceback and answered with a plain 500 message.

Request parsing that may take a while (bodies over ``OFFLOAD_BYTES``) runs in a worker
thread, so one large batch does not stall the event loop for the requests around it.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from serving.guard import current_runtime
from serving.schema import (
    ARROW_FILE_TYPE,
    ARROW_STREAM_TYPE,
    JSON_TYPE,
    NPY_TYPE,
    NonFinite,
    RawRows,
    RequestError,
)

logger = logging.getLogger("slipway.serving")

OFFLOAD_BYTES = 256 * 1024
ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class JSONAnswer(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=ORJSON_OPTIONS)


def error_answer(err: RequestError, headers: dict[str, str] | None = None) -> JSONAnswer:
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
    raw = request.headers.get("content-type", "")
    kind, *params = raw.split(";")
    options = {}
    for p in params:
        key, _, value = p.partition("=")
        options[key.strip().lower()] = value.strip().strip('"').lower()
    return kind.strip().lower(), options


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refusing more than ``cap`` bytes (413) before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError("malformed_request", "Content-Length is not a number",
                               "Content-Length") from None
        if size > cap:
            raise RequestError("body_too_large", f"body of {size} bytes is over the limit of "
                               f"{cap} bytes; split the request", "body", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise RequestError("body_too_large", f"body is over the limit of {cap} bytes; "
                               "split the request", "body", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """Parse JSON strictly and fast (orjson); on failure, re-parse with the standard
    library only to turn NaN/Infinity literals into :class:`NonFinite` markers that the
    validator can name by field, or to report where the JSON is broken."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError("malformed_json", f"body is not UTF-8 (byte {err.start})",
                           "body") from None
    if not text.strip():
        raise RequestError("malformed_json", "body is empty; send a JSON object like "
                           '{"instances": [...]}', "body")
    try:
        return json.loads(text, parse_constant=NonFinite)
    except json.JSONDecodeError as err:
        raise RequestError("malformed_json", f"body is not valid JSON: {err.msg} at line "
                           f"{err.lineno} column {err.colno}", "body") from None
    except RecursionError:
        raise RequestError("malformed_json", "body is not valid JSON: nested too deeply",
                           "body") from None


def parse_npy(body: bytes) -> Any:
    """A NumPy array from ``.npy`` bytes, without pickle and without trusting the header.

    The header's shape is checked against the bytes actually sent before anything is
    allocated (``np.load`` would allocate what the header claims, and would take a body that
    is not ``.npy`` for a pickle).
    """
    import numpy as np
    from numpy.lib import format as npy

    def bad(detail: str, status: int = 400, reason: str = "malformed_request") -> RequestError:
        return RequestError(reason, f"body is not a usable .npy array: {detail}", "body", status)

    if not body.startswith(npy.MAGIC_PREFIX):
        raise bad("it does not start with the .npy magic bytes (write it with numpy.save)")
    stream = io.BytesIO(body)
    try:
        version = npy.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(stream)
        else:
            raise bad(f"format version {version[0]}.{version[1]} is not supported (use 1.0 or 2.0)")
    except RequestError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy's header parser raises ValueError,
        # SyntaxError or tokenize.TokenError on a garbled header: all the client's doing
        raise bad(f"unreadable header ({type(err).__name__})") from None
    if dtype.hasobject:
        raise bad("object arrays need pickle, which is refused; send a numeric array", 415,
                  "unsupported_format")
    count = 1
    for dim in shape:
        count *= int(dim)
    offset = stream.tell()
    if count * dtype.itemsize != len(body) - offset:
        raise bad(f"the header says shape {tuple(shape)} of {dtype} ({count * dtype.itemsize} "
                  f"bytes) but {len(body) - offset} bytes follow it")
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")


def parse_arrow(body: bytes, kind: str) -> Any:
    import pyarrow as pa

    try:
        if kind == ARROW_FILE_TYPE:
            table = pa.ipc.open_file(pa.BufferReader(body)).read_all()
        else:
            table = pa.ipc.open_stream(pa.BufferReader(body)).read_all()
        table.validate(full=True)  # lengths and offsets against the buffers sent
        return table
    except Exception as err:  # noqa: BLE001 - any failure to decode these bytes is the client's
        form = "file" if kind == ARROW_FILE_TYPE else "stream"
        detail = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise RequestError("malformed_request", f"body is not an Arrow IPC {form}: {detail}",
                           "body") from None


def _json_rows(runtime: Any, body: bytes) -> RawRows:
    return runtime.schema.from_json(parse_json(body))


def _npy_rows(runtime: Any, body: bytes) -> RawRows:
    return runtime.schema.from_npy(parse_npy(body), runtime.settings.max_binary_rows)


def _arrow_rows(runtime: Any, body: bytes, kind: str) -> RawRows:
    return runtime.schema.from_arrow(parse_arrow(body, kind), runtime.settings.max_binary_rows)


async def _parse(runtime: Any, request: Request) -> RawRows:
    kind, options = content_type(request)
    settings = runtime.settings
    if kind == JSON_TYPE:
        if options.get("charset", "utf-8") not in ("utf-8", "utf8"):
            raise RequestError("unsupported_media_type", f"charset {options['charset']} is not "
                               "supported; send UTF-8 JSON", "Content-Type", status=415)
        body = await read_body(request, settings.max_body_bytes)
        if len(body) > OFFLOAD_BYTES:
            return await run_in_threadpool(_json_rows, runtime, body)
        return _json_rows(runtime, body)
    if kind == NPY_TYPE:
        body = await read_body(request, settings.max_binary_body_bytes)
        return await run_in_threadpool(_npy_rows, runtime, body)
    if kind in (ARROW_STREAM_TYPE, ARROW_FILE_TYPE):
        body = await read_body(request, settings.max_binary_body_bytes)
        return await run_in_threadpool(_arrow_rows, runtime, body, kind)
    if "pickle" in kind:
        raise RequestError("unsupported_media_type", f"content type {kind} is refused: "
                           "unpickling a request could run code on the server; send JSON, "
                           ".npy or Arrow", "Content-Type", status=415)
    shown = f"content type {kind!r}" if kind else "no Content-Type header"
    raise RequestError(
        "unsupported_media_type",
        f"{shown} is not supported; send {JSON_TYPE}, {NPY_TYPE}, or {ARROW_STREAM_TYPE}",
        "Content-Type", status=415,
    )


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
        rows = await _parse(runtime, request)
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
            payload = await run_in_threadpool(runtime.arrow_answer, prediction)
            return Response(payload, media_type=ARROW_STREAM_TYPE)
        return JSONAnswer(runtime.answer(prediction))
    except Exception:
        return internal_error("predicting")


async def metadata(request: Request) -> Response:
    runtime = current_runtime()
    if not runtime.ready:
        return not_ready_answer(runtime)
    return JSONAnswer(runtime.metadata())


def build_app() -> Starlette:
    """The Starlette app with the service's routes (no state: it reads the running
    service's runtime per request)."""
    return Starlette(routes=[
        Route("/predict", predict, methods=["POST"]),
        Route("/metadata", metadata, methods=["GET"]),
    ])
