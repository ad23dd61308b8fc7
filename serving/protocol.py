"""The wire protocols of the inference service: content types, decoding and encoding.

Everything that turns bytes on the wire into validated rows, and predictions back into
bytes, lives here, apart from the runtime (model, batching, metrics) and the routes:

* **KServe v1** (``POST /predict``): JSON ``{"instances": [...]}`` / ``{"inputs": {...}}``
  (:func:`decode_v1`), answered ``{"predictions", "probabilities", "model_version"}``
  (:func:`encode_v1`);
* **NumPy** ``.npy`` and **Arrow** IPC stream / file bodies on the same route
  (:func:`parse_npy`, :func:`parse_arrow`, the latter with its decompressed size capped),
  and an Arrow answer (:func:`encode_arrow`);
* the **Open Inference Protocol v2** (``POST /v2/models/{name}/infer``; KServe, MLServer,
  Triton): :func:`decode_v2` reads an inference request (JSON tensors, and Triton's binary
  tensor extension) into rows, :func:`encode_v2` writes the response,
  :func:`v2_model_metadata` declares every input's name, datatype and shape.

Validation against the model's schema is :class:`serving.schema.InputSchema`'s; every
refusal is a :class:`serving.schema.RequestError` (a 4xx naming the field or input).
Nothing here imports pandas; pyarrow is imported only for Arrow bodies.
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from components.errors import did_you_mean
from serving.schema import InputSchema, NonFinite, RawRows, RequestError

# ---- content types ---------------------------------------------------------------------

JSON_TYPE = "application/json"
NPY_TYPE = "application/x-npy"
ARROW_STREAM_TYPE = "application/vnd.apache.arrow.stream"  # IANA-registered
ARROW_FILE_TYPE = "application/vnd.apache.arrow.file"
OCTET_TYPE = "application/octet-stream"  # Triton's binary tensor extension
# Triton's binary tensor extension: the JSON part's length, in requests and answers.
V2_HEADER_LENGTH = "inference-header-content-length"

ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def parse_content_type(raw: str) -> tuple[str, dict[str, str]]:
    """The media type (lower case) and its parameters (charset, ...) of a header value."""
    kind, *params = raw.split(";")
    options = {}
    for p in params:
        key, _, value = p.partition("=")
        options[key.strip().lower()] = value.strip().strip('"').lower()
    return kind.strip().lower(), options


def check_json_charset(options: dict[str, str]) -> None:
    if options.get("charset", "utf-8") not in ("utf-8", "utf8"):
        raise RequestError("unsupported_media_type", f"charset {options['charset']} is not "
                           "supported; send UTF-8 JSON", "Content-Type", status=415)


def unsupported_type(kind: str, accepted: str) -> RequestError:
    """The 415 for a content type the route does not take (pickle named as refused)."""
    if "pickle" in kind:
        return RequestError("unsupported_media_type", f"content type {kind} is refused: "
                            "unpickling a request could run code on the server; send "
                            f"{accepted}", "Content-Type", status=415)
    shown = f"content type {kind!r}" if kind else "no Content-Type header"
    return RequestError("unsupported_media_type", f"{shown} is not supported; send {accepted}",
                        "Content-Type", status=415)


# ---- JSON ------------------------------------------------------------------------------

def parse_json(body: bytes) -> Any:
    """Parse JSON strictly and fast (orjson); on failure, re-parse with the standard
    library only to turn NaN/Infinity literals into :class:`NonFinite` markers that the
    validator can name by field, or to report where the JSON is broken."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        text = bytes(body).decode("utf-8")
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


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=ORJSON_OPTIONS)


# ---- NumPy -----------------------------------------------------------------------------

def parse_npy(body: bytes) -> np.ndarray:
    """A NumPy array from ``.npy`` bytes, without pickle and without trusting the header.

    The header's shape is checked against the bytes actually sent before anything is
    allocated (``np.load`` would allocate what the header claims, and would take a body that
    is not ``.npy`` for a pickle).
    """
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


# ---- Arrow -----------------------------------------------------------------------------

ARROW_FILE_MAGIC = b"ARROW1"
_RECORD_BATCH, _DICTIONARY_BATCH = 3, 4  # MessageHeader union tags (Arrow's Message.fbs)


class _Flat:
    """Just enough of a FlatBuffers reader for an Arrow IPC message header (Message.fbs):
    tables, scalar fields, sub-tables and vectors of structs. Every offset is bounds-checked
    (struct raises on a short buffer; a bad offset is the client's malformed body)."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def root(self) -> int:
        return struct.unpack_from("<I", self.buf, 0)[0]

    def _field(self, table: int, index: int) -> int:
        vtable = table - struct.unpack_from("<i", self.buf, table)[0]
        vsize = struct.unpack_from("<H", self.buf, vtable)[0]
        slot = 4 + 2 * index
        if slot + 2 > vsize:
            return 0
        return struct.unpack_from("<H", self.buf, vtable + slot)[0]

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        off = self._field(table, index)
        return struct.unpack_from(fmt, self.buf, table + off)[0] if off else default

    def table(self, table: int, index: int) -> int | None:
        off = self._field(table, index)
        if not off:
            return None
        at = table + off
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def struct_vector(self, table: int, index: int) -> tuple[int, int]:
        """(start, count) of a vector field."""
        off = self._field(table, index)
        if not off:
            return 0, 0
        at = table + off
        start = at + struct.unpack_from("<I", self.buf, at)[0]
        return start + 4, struct.unpack_from("<I", self.buf, start)[0]


def _batch_decoded_bytes(metadata: bytes, body: Any) -> int:
    """Bytes a record (or dictionary) batch message takes once its buffers are decompressed,
    read from its header and the 8-byte uncompressed length that prefixes every compressed
    buffer (Arrow's IPC format), without decompressing anything."""
    flat = _Flat(metadata)
    message = flat.root()
    kind = flat.scalar(message, 1, "<B")
    header = flat.table(message, 2)
    if header is None or kind not in (_RECORD_BATCH, _DICTIONARY_BATCH):
        return 0
    batch = flat.table(header, 1) if kind == _DICTIONARY_BATCH else header
    if batch is None:
        return 0
    compressed = flat.table(batch, 3) is not None
    start, count = flat.struct_vector(batch, 2)  # buffers: struct Buffer {offset, length}
    view = memoryview(body)
    total = 0
    for k in range(count):
        offset, length = struct.unpack_from("<qq", metadata, start + 16 * k)
        if offset < 0 or length < 0 or offset + length > len(view):
            raise ValueError("a buffer lies outside the message body")
        if compressed and length >= 8:
            decoded = struct.unpack_from("<q", view, offset)[0]
            total += length - 8 if decoded == -1 else max(decoded, 0)
        else:
            total += length
    return total


def arrow_decoded_bytes(body: bytes, kind: str) -> int:
    """Total bytes of an Arrow IPC body's batches once decompressed (see above)."""
    import pyarrow as pa

    data = body
    if kind == ARROW_FILE_TYPE:
        if not body.startswith(ARROW_FILE_MAGIC):
            raise ValueError("not an Arrow file (no ARROW1 magic)")
        data = memoryview(body)[8:]  # the file's messages follow its 8-byte magic as a stream
    reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(data))
    total = 0
    while True:
        try:
            message = reader.read_next_message()
        except StopIteration:
            break
        if message is None:
            break
        total += _batch_decoded_bytes(message.metadata.to_pybytes(), message.body or b"")
    return total


def parse_arrow(body: bytes, kind: str, max_decoded_bytes: int | None = None) -> Any:
    """An Arrow table from IPC stream or file bytes, fully validated.

    Args:
        body: the request body.
        kind: :data:`ARROW_STREAM_TYPE` or :data:`ARROW_FILE_TYPE`.
        max_decoded_bytes: refuse (413) a body whose buffers would take more than this once
            decompressed (LZ4/ZSTD buffers can expand a thousandfold); checked from the
            headers before anything is decompressed.
    """
    import pyarrow as pa

    form = "file" if kind == ARROW_FILE_TYPE else "stream"
    try:
        decoded = arrow_decoded_bytes(body, kind) if max_decoded_bytes is not None else 0
    except Exception as err:  # noqa: BLE001 - unreadable headers are the client's
        detail = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise RequestError("malformed_request", f"body is not an Arrow IPC {form}: {detail}",
                           "body") from None
    if max_decoded_bytes is not None and decoded > max_decoded_bytes:
        raise RequestError(
            "body_too_large",
            f"the Arrow body decompresses to {decoded} bytes, over the limit of "
            f"{max_decoded_bytes} bytes (SLIPWAY_MAX_BINARY_BODY_BYTES); split the request",
            "body", status=413)
    try:
        if kind == ARROW_FILE_TYPE:
            table = pa.ipc.open_file(pa.BufferReader(body)).read_all()
        else:
            table = pa.ipc.open_stream(pa.BufferReader(body)).read_all()
        table.validate(full=True)  # lengths and offsets against the buffers sent
        return table
    except Exception as err:  # noqa: BLE001 - any failure to decode these bytes is the client's
        detail = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise RequestError("malformed_request", f"body is not an Arrow IPC {form}: {detail}",
                           "body") from None


# ---- KServe v1 -------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """The caps a decoder applies (from the service settings)."""

    max_binary_rows: int
    max_binary_body_bytes: int


def decode_v1(schema: InputSchema, kind: str, body: bytes, limits: Limits) -> RawRows:
    """Rows from a ``POST /predict`` body of media type ``kind`` (JSON, ``.npy`` or Arrow)."""
    if kind == JSON_TYPE:
        return schema.from_json(parse_json(body))
    if kind == NPY_TYPE:
        return schema.from_npy(parse_npy(body), limits.max_binary_rows)
    if kind in (ARROW_STREAM_TYPE, ARROW_FILE_TYPE):
        table = parse_arrow(body, kind, limits.max_binary_body_bytes)
        return schema.from_arrow(table, limits.max_binary_rows)
    raise unsupported_type(kind, f"{JSON_TYPE}, {NPY_TYPE}, or {ARROW_STREAM_TYPE}")


def encode_v1(model: Any, prediction: Any) -> dict[str, Any]:
    """The KServe v1 style JSON answer: ``predictions``, ``probabilities``, ``model_version``."""
    body: dict[str, Any] = {"predictions": model.labels(prediction.outputs)}
    if prediction.proba is not None:
        body["probabilities"] = prediction.proba
    body["model_version"] = model.version
    return body


def encode_arrow(model: Any, prediction: Any) -> bytes:
    """The answer as an Arrow IPC stream: ``prediction`` and ``probabilities`` columns,
    ``model_version`` and ``classes`` in the schema metadata."""
    import pyarrow as pa

    columns = {"prediction": pa.array(model.labels(prediction.outputs))}
    if prediction.proba is not None:
        k = prediction.proba.shape[1]
        columns["probabilities"] = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(prediction.proba).ravel()), k)
    meta = {b"model_version": model.version.encode(),
            b"classes": json.dumps(model.classes).encode()}
    table = pa.table(columns).replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


# ---- Open Inference Protocol v2 --------------------------------------------------------

V2_DTYPES = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
V2_NUMERIC = ("FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32",
              "UINT16", "UINT8")
V2_DATATYPES = (*V2_DTYPES, "BYTES", "BF16")
LABEL_OUTPUT, PROBA_OUTPUT = "label", "probabilities"
_REQUEST_KEYS = ("id", "parameters", "inputs", "outputs")
_TENSOR_KEYS = ("name", "shape", "datatype", "parameters", "data")


@dataclass
class V2Request:
    """A decoded v2 inference request: validated rows and how to answer."""

    rows: RawRows
    id: str | None
    outputs: list[str]  # output names, in the order asked for (all when none were named)
    binary: dict[str, bool]  # output name -> answer as a binary tensor


def _err(reason: str, message: str, field: str, status: int = 400) -> RequestError:
    return RequestError(reason, message, field, status)


def _shape(value: Any, where: str) -> list[int]:
    if (not isinstance(value, list) or not value
            or not all(type(d) is int and d >= 0 for d in value)):
        raise _err("wrong_shape", f"{where}.shape: expected a list of non-negative integers "
                   f"like [N] or [N, 1], got {_show(value)}", f"{where}.shape")
    return value


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=repr) if not isinstance(value, NonFinite) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flatten(data: Any, where: str) -> list[Any]:
    """Tensor data as a flat row-major list (the protocol allows flat or nested lists)."""
    if not isinstance(data, list):
        raise _err("wrong_type", f"{where}.data: expected a list of values, got "
                   f"{type(data).__name__ if data is not None else 'null'}", f"{where}.data")
    if not any(type(v) is list for v in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    depth_limit = 8
    while stack:
        for v in stack[-1]:
            if type(v) is list:
                if len(stack) >= depth_limit:
                    raise _err("wrong_shape", f"{where}.data: nested deeper than the shape",
                               f"{where}.data")
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _binary_values(raw: memoryview, datatype: str, count: int,
                   where: str) -> list[Any] | np.ndarray:
    """Values of a binary tensor (Triton's extension): raw little-endian, or for BYTES each
    element as a 4-byte little-endian length and its bytes."""
    if datatype == "BYTES":
        out: list[Any] = []
        at = 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise _err("wrong_length", f"{where}: a BYTES element's length is cut off",
                           f"{where}.parameters.binary_data_size")
            n = struct.unpack_from("<I", raw, at)[0]
            at += 4
            if at + n > len(raw):
                raise _err("wrong_length", f"{where}: a BYTES element runs past the tensor's "
                           "binary_data_size", f"{where}.parameters.binary_data_size")
            try:
                out.append(bytes(raw[at:at + n]).decode("utf-8"))
            except UnicodeDecodeError:
                raise _err("wrong_type", f"{where}: a BYTES element is not UTF-8",
                           f"{where}.data") from None
            at += n
        return out
    if datatype == "BF16":
        raise _err("wrong_datatype", f"{where}.datatype: BF16 is not supported; send FP32 or "
                   "FP64", f"{where}.datatype")
    dtype = V2_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise _err("wrong_length", f"{where}: {len(raw)} bytes of binary data, but shape and "
                   f"datatype {datatype} need {count * dtype.itemsize}",
                   f"{where}.parameters.binary_data_size")
    return np.frombuffer(raw, dtype=dtype, count=count)


@dataclass
class _Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: list[Any] | np.ndarray
    where: str


def _read_tensors(doc: Any, binary: memoryview | None) -> tuple[list[_Tensor], dict[str, Any]]:
    if not isinstance(doc, dict):
        raise _err("wrong_type", "body: expected a JSON object like {\"inputs\": [{\"name\": "
                   "..., \"shape\": [...], \"datatype\": ..., \"data\": [...]}]}", "body")
    unknown = [k for k in doc if k not in _REQUEST_KEYS]
    if unknown:
        hint = did_you_mean(str(unknown[0]), list(_REQUEST_KEYS), listing=False)
        raise _err("unknown_key", f"body: unknown key {unknown[0]!r}"
                   f"{f' ({hint})' if hint else ''}; an inference request has "
                   "id, parameters, inputs and outputs", str(unknown[0]))
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _err("missing_key" if inputs is None else "wrong_type",
                   "inputs: expected a non-empty list of input tensors "
                   "({\"name\", \"shape\", \"datatype\", \"data\"})", "inputs")
    tensors: list[_Tensor] = []
    seen: set[str] = set()
    at = 0
    for i, spec in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(spec, dict):
            raise _err("wrong_type", f"{where}: expected an object with name, shape, datatype "
                       "and data", where)
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise _err("missing_key", f"{where}.name: every input needs a name (a feature "
                       "name; see GET /v2/models/<name>)", f"{where}.name")
        where = f"inputs[{i}] ({name})"
        if name in seen:
            raise _err("duplicate_feature", f"{where}: input {name!r} appears twice", name)
        seen.add(name)
        extra = [k for k in spec if k not in _TENSOR_KEYS]
        if extra:
            raise _err("unknown_key", f"{where}: unknown key {extra[0]!r}; a tensor has "
                       "name, shape, datatype, parameters and data", name)
        datatype = spec.get("datatype")
        if datatype not in V2_DATATYPES:
            raise _err("wrong_datatype", f"{where}.datatype: {_show(datatype)} is not a v2 "
                       f"datatype ({', '.join(V2_DATATYPES)})", name)
        shape = _shape(spec.get("shape"), where)
        count = math.prod(shape)
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise _err("wrong_type", f"{where}.parameters: expected an object", name)
        size = params.get("binary_data_size")
        if size is not None:
            if binary is None:
                raise _err("malformed_request", f"{where}: binary_data_size given, but the "
                           "request has no Inference-Header-Content-Length header", name)
            if type(size) is not int or size < 0 or at + size > len(binary):
                raise _err("wrong_length", f"{where}: binary_data_size {_show(size)} runs past "
                           f"the {len(binary) - at} binary bytes left in the body", name)
            if "data" in spec:
                raise _err("malformed_request", f"{where}: both data and binary_data_size; "
                           "send one", name)
            values: list[Any] | np.ndarray = _binary_values(binary[at:at + size], datatype,
                                                            count, where)
            at += size
        else:
            if "data" not in spec:
                raise _err("missing_key", f"{where}.data: missing (or give "
                           "parameters.binary_data_size with a binary body)", name)
            values = _flatten(spec["data"], where)
        if len(values) != count:
            raise _err("wrong_length", f"{where}: shape {shape} holds {count} values but "
                       f"data has {len(values)}", name)
        tensors.append(_Tensor(name, datatype, shape, values, where))
    if binary is not None and at != len(binary):
        raise _err("wrong_length", f"body: {len(binary) - at} binary bytes after the last "
                   "input's binary_data_size", "body")
    return tensors, doc


def _check_values(t: _Tensor, numeric: bool, feature: str) -> list[Any]:
    """The tensor's values as Python objects, checked against its datatype."""
    if numeric:
        if t.datatype not in V2_NUMERIC:
            raise _err("wrong_datatype", f"{t.where}.datatype: {t.datatype}, but {feature} is "
                       "numeric; send FP64, FP32 or an integer type", t.name)
        if isinstance(t.values, np.ndarray):
            return t.values.astype(np.float64).tolist()
        ints = t.datatype.startswith(("INT", "UINT"))
        for k, v in enumerate(t.values):
            kind = type(v)
            if v is None or kind is NonFinite:  # null: missing; NaN: named by the schema
                continue
            if kind is int or (kind is float and not ints):
                continue
            raise _err("wrong_type", f"{t.where}.data[{k}]: {_show(v)} is not a "
                       f"{t.datatype} value", f"{t.name}[{k}]")
        return t.values
    if t.datatype != "BYTES":
        raise _err("wrong_datatype", f"{t.where}.datatype: {t.datatype}, but {feature} is "
                   "categorical; send BYTES (strings)", t.name)
    values = t.values if isinstance(t.values, list) else t.values.tolist()
    for k, v in enumerate(values):
        if v is not None and type(v) is not str:
            raise _err("wrong_type", f"{t.where}.data[{k}]: {_show(v)} is not a string "
                       "(BYTES)", f"{t.name}[{k}]")
    return values


def _tensor_path(name: str):
    return lambda feat, i: f"{name}[{i}]"


def decode_v2(schema: InputSchema, body: bytes, header_length: str | None,
              outputs_known: tuple[str, ...], max_rows: int) -> V2Request:
    """Validated rows from a v2 inference request.

    Inputs: one tensor per feature, named as in the schema, of shape ``[N]`` or ``[N, 1]``
    (a numeric datatype for numeric features, ``BYTES`` for categorical ones), or, for
    all-numeric models, one ``[N, F]`` tensor with the features in schema order. ``null``
    in JSON data is a missing value, as in v1.

    Args:
        schema: the model's input contract.
        body: the request body (JSON, or JSON then binary tensors).
        header_length: the ``Inference-Header-Content-Length`` header, when binary tensors
            follow the JSON.
        outputs_known: the model's output names.
        max_rows: the most rows one request may hold.

    Raises:
        RequestError: a 4xx naming the input (or key) at fault.
    """
    binary = None
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if n < 0 or n > len(body):
            raise _err("malformed_request", f"Inference-Header-Content-Length {header_length!r} "
                       f"is not a length within the {len(body)}-byte body",
                       "Inference-Header-Content-Length")
        binary = memoryview(body)[n:]
        body = body[:n]
    tensors, doc = _read_tensors(parse_json(body), binary)
    rows = _rows(schema, tensors, max_rows)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _err("wrong_type", "id: expected a string", "id")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise _err("wrong_type", "parameters: expected an object", "parameters")
    all_binary = params.get("binary_data_output") is True
    wanted = doc.get("outputs")
    binary_out: dict[str, bool] = {}
    if wanted is None:
        names = list(outputs_known)
        binary_out = dict.fromkeys(names, all_binary)
    else:
        if not isinstance(wanted, list):
            raise _err("wrong_type", "outputs: expected a list of {\"name\": ...}", "outputs")
        names = []
        for i, out in enumerate(wanted):
            name = out.get("name") if isinstance(out, dict) else None
            if name not in outputs_known:
                raise _err("unknown_output", f"outputs[{i}]: unknown output {_show(name)}; this "
                           f"model answers {', '.join(outputs_known)}", f"outputs[{i}]")
            o_params = out.get("parameters") or {}
            binary_out[name] = bool(o_params.get("binary_data", all_binary)) \
                if isinstance(o_params, dict) else all_binary
            names.append(name)
    return V2Request(rows, request_id, names, binary_out)


def _rows(schema: InputSchema, tensors: list[_Tensor], max_rows: int) -> RawRows:
    by_name = {t.name: t for t in tensors}
    if (len(tensors) == 1 and tensors[0].name not in schema.name_set
            and len(tensors[0].shape) == 2 and not schema.categorical):
        return _matrix_rows(schema, tensors[0], max_rows)
    unknown = [t for t in tensors if t.name not in schema.name_set]
    if unknown:
        t = unknown[0]
        hint = did_you_mean(t.name, schema.names, listing=False)
        matrix = ("" if schema.categorical else
                  f", or send one [N, {len(schema.names)}] tensor with the features in order")
        raise _err("unknown_input", f"{t.where}: unknown input {t.name!r}"
                   f"{f' ({hint})' if hint else ''}; the inputs are the model's features, "
                   f"listed by GET /v2/models/<name>{matrix}", t.name)
    missing = [n for n in schema.names if n not in by_name]
    if missing:
        raise _err("missing_input", f"inputs: missing input {missing[0]!r}"
                   + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                   + "; send one tensor per feature, null for a missing value", missing[0])
    n = None
    columns: list[list[Any]] = []
    for feat in schema.features:
        t = by_name[feat.name]
        if not (len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1)):
            raise _err("wrong_shape", f"{t.where}.shape: {t.shape}, expected [N] or [N, 1] "
                       "(one value per row)", t.name)
        if n is None:
            n = t.shape[0]
            if n == 0:
                raise _err("empty", f"{t.where}: no rows; send at least one", t.name)
            if n > max_rows:
                raise _err("too_many_instances", f"{t.where}: {n} rows, more than the limit "
                           f"of {max_rows} per request; split the request", t.name, 413)
        elif t.shape[0] != n:
            first = by_name[schema.names[0]]
            raise _err("wrong_shape", f"{t.where}.shape: {t.shape[0]} rows, but "
                       f"{first.name} has {n}; every input needs one value per row", t.name)
        columns.append(_check_values(t, feat.kind == "numeric", feat.name))
    return schema.from_feature_columns(columns, _tensor_path_by_feature)


def _tensor_path_by_feature(feat: Any, i: int) -> str:
    return f"{feat.name}[{i}]"


def _matrix_rows(schema: InputSchema, t: _Tensor, max_rows: int) -> RawRows:
    n, width = t.shape
    if width != len(schema.names):
        raise _err("wrong_shape", f"{t.where}.shape: {t.shape}, expected [N, "
                   f"{len(schema.names)}] with the features in the order "
                   f"{', '.join(schema.names[:4])}{', …' if len(schema.names) > 4 else ''} "
                   "(see GET /v2/models/<name>)", t.name)
    if n == 0:
        raise _err("empty", f"{t.where}: no rows; send at least one", t.name)
    if n > max_rows:
        raise _err("too_many_instances", f"{t.where}: {n} rows, more than the limit of "
                   f"{max_rows} per request; split the request", t.name, 413)
    values = _check_values(t, True, "every feature of this model")
    rows = [values[i * width:(i + 1) * width] for i in range(n)]
    name = t.name
    return schema.from_value_rows(rows, lambda feat, i: f"{name}[{i}].{feat.name}")


def _bytes_tensor(values: list[str]) -> bytes:
    parts = []
    for v in values:
        raw = v.encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def encode_v2(model: Any, prediction: Any, request: V2Request) -> tuple[bytes, dict[str, str]]:
    """The v2 inference response (JSON, or JSON then binary tensors) and its headers."""
    n = len(prediction)
    labels = model.labels(prediction.outputs)
    tensors: dict[str, tuple[str, list[int], Any]] = {}
    if model.classes is not None:
        tensors[LABEL_OUTPUT] = ("BYTES", [n], labels)
    else:
        tensors[LABEL_OUTPUT] = ("FP64", [n], np.asarray(prediction.outputs, np.float64))
    if prediction.proba is not None:
        proba = np.ascontiguousarray(prediction.proba, dtype=np.float64)
        tensors[PROBA_OUTPUT] = ("FP64", list(proba.shape), proba.ravel())
    outputs = []
    blobs = []
    for name in request.outputs:
        if name not in tensors:
            continue
        datatype, shape, data = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if request.binary.get(name):
            blob = (_bytes_tensor(data) if datatype == "BYTES"
                    else np.asarray(data, "<f8").tobytes())
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request.id is not None:
        answer["id"] = request.id
    answer["outputs"] = outputs
    head = dumps(answer)
    if not blobs:
        return head, {"content-type": JSON_TYPE}
    return head + b"".join(blobs), {"content-type": OCTET_TYPE,
                                     V2_HEADER_LENGTH: str(len(head))}


def v2_outputs(model: Any) -> tuple[str, ...]:
    return (LABEL_OUTPUT, PROBA_OUTPUT) if model.classes is not None else (LABEL_OUTPUT,)


def v2_model_metadata(model: Any, schema: InputSchema) -> dict[str, Any]:
    """``GET /v2/models/{name}``: every input's name, datatype and shape, the outputs."""
    inputs = [{"name": f.name, "datatype": "FP64" if f.kind == "numeric" else "BYTES",
               "shape": [-1]} for f in schema.features]
    outputs = [{"name": LABEL_OUTPUT, "datatype": "BYTES" if model.classes is not None
                else "FP64", "shape": [-1]}]
    if model.classes is not None:
        outputs.append({"name": PROBA_OUTPUT, "datatype": "FP64",
                        "shape": [-1, len(model.classes)]})
    parameters: dict[str, Any] = {"classes": model.classes, "task": model.task}
    if not schema.categorical:
        parameters["matrix_input"] = {
            "shape": [-1, len(schema.names)],
            "datatype": "FP64",
            "note": "instead of one tensor per feature, one [N, F] tensor (any name) with "
                    "the features in the order of 'inputs'",
        }
    return {"name": model.name, "versions": [model.version],
            "platform": f"slipway-{model.lineage.get('framework', 'unknown')}",
            "inputs": inputs, "outputs": outputs, "parameters": parameters}


def v2_server_metadata(version: str) -> dict[str, Any]:
    """``GET /v2``."""
    return {"name": "slipway", "version": version,
            "extensions": ["binary_tensor_data"]}
