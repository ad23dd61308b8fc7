"""Request validation (serving/schema.py) against a small hand-written input schema.

Every refusal is checked for its status, its reason code and the field its message names;
every accepted shape for the values it produces.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from serving.api import parse_json
from serving.schema import InputSchema, RequestError

SCHEMA = {
    "task": "classification",
    "target": "label",
    "classes": ["a", "b"],
    "features": [
        {"name": "width", "type": "numeric", "min": 0.0, "max": 10.0, "mean": 5.0, "std": 2.0,
         "bin_edges": [0.0, 5.0, 10.0], "bin_shares": [0.5, 0.5], "missing_fraction": 0.0},
        {"name": "colour", "type": "categorical", "categories": ["blue", "red"],
         "category_shares": [0.5, 0.5], "missing_fraction": 0.0},
        {"name": "height", "type": "numeric", "min": -1.0, "max": 1.0, "mean": 0.0, "std": 0.5,
         "bin_edges": [-1.0, 0.0, 1.0], "bin_shares": [0.5, 0.5], "missing_fraction": 0.1},
    ],
}
NUMERIC_ONLY = {**SCHEMA, "features": [SCHEMA["features"][0], SCHEMA["features"][2]]}


@pytest.fixture
def schema() -> InputSchema:
    return InputSchema(SCHEMA, max_instances=5, range_margin=0.5)


def refused(fn, *args) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args)
    err = info.value
    assert 400 <= err.status < 500
    assert err.message and err.reason
    return err


def test_rows_as_objects_lists_and_columns_agree(schema):
    objects = schema.from_json({"instances": [
        {"width": 1, "colour": "red", "height": 0.5},
        {"width": 2.5, "colour": "blue", "height": None},
    ]})
    lists = schema.from_json({"instances": [[1, "red", 0.5], [2.5, "blue", None]]})
    columns = schema.from_json({"inputs": {"width": [1, 2.5], "colour": ["red", "blue"],
                                           "height": [0.5, None]}})
    for rows in (objects, lists, columns):
        assert len(rows) == 2
        np.testing.assert_array_equal(rows.numeric, [[1.0, 0.5], [2.5, np.nan]])
        assert rows.categorical.tolist() == [["red"], ["blue"]]


def test_missing_values_are_null_and_allowed_everywhere(schema):
    rows = schema.from_json({"instances": [{"width": None, "colour": None, "height": None}]})
    assert np.isnan(rows.numeric).all()
    assert rows.categorical.tolist() == [[None]]


@pytest.mark.parametrize("body, reason, field", [
    ([1, 2], "wrong_type", "body"),
    ({}, "missing_key", "instances"),
    ({"instance": []}, "unknown_key", "instance"),
    ({"instances": [], "inputs": {}}, "unknown_key", "body"),
    ({"instances": {"width": 1}}, "wrong_type", "instances"),
    ({"instances": []}, "empty", "instances"),
    ({"instances": ["x"]}, "wrong_type", "instances[0]"),
    ({"instances": [{"width": 1, "colour": "red"}]}, "missing_feature", "instances[0].height"),
    ({"instances": [{"width": 1, "colour": "red", "height": 0, "hieght": 1}]},
     "unknown_feature", "instances[0].hieght"),
    ({"instances": [[1, "red"]]}, "wrong_length", "instances[0]"),
    ({"instances": [[1, "red", 0.1, 4]]}, "wrong_length", "instances[0]"),
    ({"instances": [{"width": "1", "colour": "red", "height": 0}]}, "wrong_type",
     "instances[0].width"),
    ({"instances": [{"width": True, "colour": "red", "height": 0}]}, "wrong_type",
     "instances[0].width"),
    ({"instances": [{"width": [1], "colour": "red", "height": 0}]}, "wrong_type",
     "instances[0].width"),
    ({"instances": [[1, "red", 0], [1, "red", {"x": 1}]]}, "wrong_type", "instances[1].height"),
    ({"instances": [{"width": 1, "colour": "green", "height": 0}]}, "unknown_category",
     "instances[0].colour"),
    ({"instances": [{"width": 1, "colour": 1.5, "height": 0}]}, "wrong_type",
     "instances[0].colour"),
    ({"instances": [{"width": 1e6, "colour": "red", "height": 0}]}, "out_of_range",
     "instances[0].width"),
    ({"instances": [{"width": 1, "colour": "red", "height": -2.5}]}, "out_of_range",
     "instances[0].height"),
    ({"instances": [{"width": 10**400, "colour": "red", "height": 0}]}, "non_finite",
     "instances[0].width"),
    ({"instances": [{"width": math.inf, "colour": "red", "height": 0}]}, "non_finite",
     "instances[0].width"),
    ({"instances": [{"width": math.nan, "colour": "red", "height": 0}]}, "non_finite",
     "instances[0].width"),
    ({"inputs": [1]}, "wrong_type", "inputs"),
    ({"inputs": {"width": [1], "colour": ["red"]}}, "missing_feature", "inputs.height"),
    ({"inputs": {"width": [1, 2], "colour": ["red"], "height": [0, 0]}}, "wrong_length",
     "inputs.colour"),
    ({"inputs": {"width": 1, "colour": ["red"], "height": [0]}}, "wrong_type", "inputs.width"),
    ({"inputs": {"width": [1, "x"], "colour": ["red", "red"], "height": [0, 0]}}, "wrong_type",
     "inputs.width[1]"),
])
def test_bad_json_bodies_name_the_field(schema, body, reason, field):
    err = refused(schema.from_json, body)
    assert (err.reason, err.field, err.status) == (reason, field, 400)
    assert field.split(".")[-1].split("[")[0] in err.message or field == "body"


def test_misspelt_names_get_a_hint_without_the_list_of_valid_names(schema):
    row = {"width": 1, "colour": "red", "height": 0}
    for body, hint in (({"instances": [{**row, "hieght": 1}]}, " (did you mean 'height'?)"),
                       ({"instance": []}, " (did you mean 'instances'?)"),
                       ({"instances": [{**row, "colour": "rde"}]}, " (did you mean 'red'?)")):
        message = refused(schema.from_json, body).message
        assert hint in message and "valid:" not in message
    far = refused(schema.from_json, {"instances": [{**row, "zz": 1}]}).message
    assert "did you mean" not in far and "valid:" not in far


def test_too_many_instances_is_413_and_points_to_the_binary_path(schema):
    err = refused(schema.from_json, {"instances": [[1, "red", 0]] * 6})
    assert (err.status, err.reason) == (413, "too_many_instances")
    assert "limit of 5" in err.message and "Arrow" in err.message


@pytest.mark.parametrize("text, field", [
    (b'{"instances": [{"width": NaN, "colour": "red", "height": 0}]}', "instances[0].width"),
    (b'{"instances": [[1, "red", Infinity]]}', "instances[0].height"),
    (b'{"inputs": {"width": [-Infinity], "colour": ["red"], "height": [0]}}', "inputs.width[0]"),
    (b'{"instances": [[1e999, "red", 0]]}', "instances[0].width"),
])
def test_nan_and_infinity_literals_are_refused_by_field(schema, text, field):
    err = refused(schema.from_json, parse_json(text))
    assert (err.reason, err.field) == ("non_finite", field)


@pytest.mark.parametrize("text, reason", [
    (b"", "malformed_json"),
    (b"   ", "malformed_json"),
    (b'{"instances": [', "malformed_json"),
    (b"\xff\xfe{}", "malformed_json"),
    (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),
])
def test_malformed_json_is_a_400(text, reason):
    err = refused(parse_json, text)
    assert err.reason == reason and err.status == 400


def test_range_margin_widens_training_range_and_inf_turns_it_off():
    strict = InputSchema(SCHEMA, range_margin=0.0)
    assert refused(strict.from_json, {"instances": [[10.5, "red", 0]]}).reason == "out_of_range"
    loose = InputSchema(SCHEMA, range_margin=math.inf)
    assert len(loose.from_json({"instances": [[1e300, "red", -1e300]]})) == 1
    width = InputSchema(SCHEMA, range_margin=0.5).describe()["features"][0]
    assert (width["min"], width["max"]) == (-5.0, 15.0)
    assert (width["training_min"], width["training_max"]) == (0.0, 10.0)


def test_describe_lists_names_types_ranges_and_categories(schema):
    described = schema.describe()
    assert described["order"] == ["width", "colour", "height"]
    colour = described["features"][1]
    assert colour == {"name": "colour", "type": "string", "nullable": True,
                      "categories": ["blue", "red"]}


def test_npy_numeric_only():
    schema = InputSchema(NUMERIC_ONLY, max_instances=5)
    rows = schema.from_npy(np.array([[1.0, 0.5], [2, -0.5]]), max_rows=10)
    np.testing.assert_array_equal(rows.numeric, [[1.0, 0.5], [2.0, -0.5]])
    assert refused(schema.from_npy, np.ones((2, 3)), 10).reason == "wrong_shape"
    assert refused(schema.from_npy, np.ones(2), 10).reason == "wrong_shape"
    assert refused(schema.from_npy, np.array([["a", "b"]]), 10).reason == "wrong_type"
    assert refused(schema.from_npy, np.array([[1.0, np.nan]]), 10).field == "height[0]"
    assert refused(schema.from_npy, np.ones((11, 2)), 10).status == 413
    assert refused(schema.from_npy, np.array([[99.0, 0.0]]), 10).reason == "out_of_range"
    err = refused(InputSchema(SCHEMA).from_npy, np.ones((1, 3)), 10)
    assert err.status == 415 and "colour" in err.message


def test_arrow_with_nulls_and_categories(schema):
    import pyarrow as pa

    table = pa.table({"height": [0.5, None], "width": [1, 2], "colour": ["red", None]})
    rows = schema.from_arrow(table, max_rows=10)
    np.testing.assert_array_equal(rows.numeric, [[1.0, 0.5], [2.0, np.nan]])
    assert rows.categorical.tolist() == [["red"], [None]]
    dictionary = pa.table({"width": [1.0], "height": [0.0],
                           "colour": pa.array(["blue"]).dictionary_encode()})
    assert schema.from_arrow(dictionary, 10).categorical.tolist() == [["blue"]]


@pytest.mark.parametrize("columns, reason, field", [
    ({"width": [1.0], "colour": ["red"]}, "missing_feature", "body.height"),
    ({"width": [1.0], "colour": ["red"], "height": [0.0], "x": [1]}, "unknown_feature", "body.x"),
    ({"width": ["1"], "colour": ["red"], "height": [0.0]}, "wrong_type", "width"),
    ({"width": [1.0], "colour": [1], "height": [0.0]}, "wrong_type", "colour"),
    ({"width": [1.0], "colour": ["pink"], "height": [0.0]}, "unknown_category", "colour[0]"),
    ({"width": [float("nan")], "colour": ["red"], "height": [0.0]}, "non_finite", "width[0]"),
    ({"width": [1.0], "colour": ["red"], "height": [5.0]}, "out_of_range", "height[0]"),
])
def test_bad_arrow_tables(schema, columns, reason, field):
    import pyarrow as pa

    err = refused(schema.from_arrow, pa.table(columns), 10)
    assert (err.reason, err.field) == (reason, field)


def test_npy_parse_refuses_pickled_object_arrays():
    from serving.api import parse_npy

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    err = refused(parse_npy, buf.getvalue())
    assert err.status == 415 and "pickle" in err.message
    assert refused(parse_npy, b"not an array").status == 400


def test_npy_header_is_checked_against_the_bytes_sent():
    from numpy.lib import format as npy

    from serving.api import parse_npy

    buf = io.BytesIO()
    np.save(buf, np.ones((3, 2)))
    good = buf.getvalue()
    assert parse_npy(good).shape == (3, 2)
    assert refused(parse_npy, good[:-8]).status == 400  # truncated
    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                        "shape": (10**12, 30)})
    err = refused(parse_npy, header.getvalue() + b"\0" * 16)  # claims 240 TB, sends 16 bytes
    assert "bytes follow" in err.message


def test_garbled_npy_header_is_a_400():
    from serving.api import parse_npy

    buf = io.BytesIO()
    np.save(buf, np.ones((3, 7)))
    body = bytearray(buf.getvalue())
    body[10] = 0  # found by the fuzzer: numpy's header parser raised tokenize.TokenError
    assert refused(parse_npy, bytes(body)).reason == "malformed_request"
