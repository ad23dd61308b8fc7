"""The wire protocols (serving/protocol.py) without a server: v2 decoding against a small
hand-written schema, and the Arrow decompressed-size cap on real compressed Arrow bodies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving import protocol
from serving.schema import InputSchema, RequestError
from tests.serving.test_schema import NUMERIC_ONLY, SCHEMA

OUTPUTS = ("label", "probabilities")


def decode(schema, body, header=None, max_rows=100):
    return protocol.decode_v2(schema, json.dumps(body).encode() if not isinstance(
        body, bytes) else body, header, OUTPUTS, max_rows)


def refused(fn, *args) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args)
    assert 400 <= info.value.status < 500
    return info.value


def test_v2_tensors_agree_with_v1_rows():
    schema = InputSchema(SCHEMA, max_instances=5)
    v2 = decode(schema, {"inputs": [
        {"name": "width", "datatype": "INT64", "shape": [2], "data": [1, 2]},
        {"name": "colour", "datatype": "BYTES", "shape": [2, 1], "data": [["red"], ["blue"]]},
        {"name": "height", "datatype": "FP32", "shape": [2], "data": [0.5, None]},
    ], "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]})
    v1 = schema.from_json({"instances": [[1, "red", 0.5], [2, "blue", None]]})
    np.testing.assert_array_equal(v2.rows.numeric, v1.numeric)
    assert v2.rows.categorical.tolist() == v1.categorical.tolist()
    assert v2.outputs == ["probabilities"] and v2.binary == {"probabilities": True}


def test_v2_matrix_only_for_numeric_schemas():
    numeric = InputSchema(NUMERIC_ONLY)
    rows = decode(numeric, {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 2],
                                        "data": [1, 0.5, 2, -0.5]}]}).rows
    np.testing.assert_array_equal(rows.numeric, [[1, 0.5], [2, -0.5]])
    err = refused(decode, InputSchema(SCHEMA), {"inputs": [
        {"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 0.5, 2]}]})
    assert err.reason == "unknown_input" and "'x'" in err.message
    err = refused(decode, numeric, {"inputs": [
        {"name": "x", "datatype": "FP64", "shape": [1, 2], "data": [1, 50]}]})
    assert (err.reason, err.field) == ("out_of_range", "x[0].height")


def test_v2_binary_tensors():
    numeric = InputSchema(NUMERIC_ONLY)
    blob = np.asarray([[1.0, 0.5], [2.0, -0.5]], dtype="<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "m", "datatype": "FP32", "shape": [2, 2],
                                   "parameters": {"binary_data_size": len(blob)}}]}).encode()
    rows = decode(numeric, head + blob, str(len(head))).rows
    np.testing.assert_array_equal(rows.numeric, [[1, 0.5], [2, -0.5]])
    assert refused(decode, numeric, head + blob[:-1], str(len(head))).reason == "wrong_length"
    assert refused(decode, numeric, head + blob, "x").reason == "malformed_request"
    assert refused(decode, numeric, head + blob + b"!", str(len(head))).reason == "wrong_length"


def test_v2_rows_cap_is_413():
    schema = InputSchema(NUMERIC_ONLY)
    err = refused(decode, schema, {"inputs": [
        {"name": "width", "datatype": "FP64", "shape": [3], "data": [1, 2, 3]},
        {"name": "height", "datatype": "FP64", "shape": [3], "data": [0, 0, 0]}]}, None, 2)
    assert err.status == 413 and err.field == "width"


def _arrow(table, compression=None, file=False) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    new = pa.ipc.new_file if file else pa.ipc.new_stream
    with new(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=100_000)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
@pytest.mark.parametrize("file", [False, True])
def test_arrow_decompressed_size_is_capped(compression, file):
    import pyarrow as pa

    table = pa.table({"width": np.zeros(400_000), "height": np.zeros(400_000)})
    body = _arrow(table, compression, file)
    kind = protocol.ARROW_FILE_TYPE if file else protocol.ARROW_STREAM_TYPE
    assert len(body) < 200_000  # zeros compress a hundredfold and more
    decoded = protocol.arrow_decoded_bytes(body, kind)
    assert decoded >= 2 * 400_000 * 8
    err = refused(protocol.parse_arrow, body, kind, 1_000_000)
    assert err.status == 413 and err.reason == "body_too_large"
    assert "1000000 bytes" in err.message and "decompresses" in err.message
    assert protocol.parse_arrow(body, kind, 10 * decoded).num_rows == 400_000


def test_arrow_uncompressed_size_counts_too():
    import pyarrow as pa

    body = _arrow(pa.table({"width": np.ones(1000)}))
    size = protocol.arrow_decoded_bytes(body, protocol.ARROW_STREAM_TYPE)
    assert 8000 <= size <= len(body)
    assert protocol.parse_arrow(body, protocol.ARROW_STREAM_TYPE, size).num_rows == 1000
    assert refused(protocol.parse_arrow, body, protocol.ARROW_STREAM_TYPE, size - 1).status == 413
