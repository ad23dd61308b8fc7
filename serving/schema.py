"""Request validation derived from a model version's packaged input schema (``schema.json``).

The schema written by the preprocess stage lists every raw feature with its type, training
range or categories, and training statistics. :class:`InputSchema` turns it into the request
contract of ``POST /predict`` and checks each request against it, column by column with
NumPy where it can, falling back to a value-by-value scan only to name the first bad value.
Every refusal is a :class:`RequestError` that carries the HTTP status, a reason code (the
``reason`` label of ``slipway_invalid_requests_total``), the field at fault and a message
that names the field, the problem and the fix.

Accepted shapes (all produce a :class:`RawRows`):

* ``{"instances": [{"f1": 1.0, "f2": "a"}, ...]}`` - row objects keyed by feature name;
* ``{"instances": [[1.0, "a"], ...]}`` - rows as lists in the schema's feature order;
* ``{"inputs": {"f1": [1.0, ...], "f2": ["a", ...]}}`` - columnar (TF Serving's format);
* a NumPy ``.npy`` 2-D numeric array (numeric-only schemas) or an Arrow IPC stream / file
  with one column per feature (the binary large-batch path);
* Open Inference Protocol v2 tensors (one per feature, or one ``[N, F]`` matrix), through
  :meth:`InputSchema.from_feature_columns` and :meth:`InputSchema.from_value_rows`.

Decoding the bytes of each format is ``serving/protocol.py``'s job; this module checks
values against the model's contract.

``null`` (JSON) or a null (Arrow) marks a missing value, which the packaged preprocessing
imputes as it did in training. NaN and infinity are refused: they are not JSON, and in a
binary body they are more often a bug upstream than a deliberate missing value.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.errors import did_you_mean

_NUMBER_TYPES = frozenset({int, float})
_MISSING = type(None)


class RequestError(Exception):
    """A client error: answered with ``status`` and a JSON body naming the field.

    Args:
        reason: a short code (``missing_feature``, ``wrong_type`` ...), used as a metric label.
        message: what is wrong and how to fix it, naming the field.
        field: the JSON path or column at fault, when there is one.
        status: the HTTP status (a 4xx).
    """

    def __init__(self, reason: str, message: str, field: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field
        self.status = status

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "reason": self.reason}
        if self.field is not None:
            body["field"] = self.field
        return body


class NonFinite:
    """Stands for a ``NaN`` / ``Infinity`` literal found by the lenient JSON parser, so the
    validator can name the field that held it instead of failing the whole parse."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal

    def __repr__(self) -> str:
        return self.literal


@dataclass(frozen=True)
class Feature:
    """One raw input feature of the contract."""

    name: str
    kind: str  # numeric | categorical
    position: int
    train_min: float | None = None
    train_max: float | None = None
    low: float = -math.inf  # allowed range (training range widened by the margin)
    high: float = math.inf
    categories: tuple[str, ...] = ()
    category_set: frozenset[str] = field(default_factory=frozenset)

    def describe(self) -> dict[str, Any]:
        if self.kind == "numeric":
            return {
                "name": self.name, "type": "number", "nullable": True,
                "min": None if math.isinf(self.low) else self.low,
                "max": None if math.isinf(self.high) else self.high,
                "training_min": self.train_min, "training_max": self.train_max,
            }
        return {"name": self.name, "type": "string", "nullable": True,
                "categories": list(self.categories)}


@dataclass
class RawRows:
    """Validated rows, ready for the packaged preprocessing.

    ``numeric`` holds the numeric features (float64, NaN where missing) and ``categorical``
    the categorical ones (str objects, None where missing), each in schema order.
    """

    numeric: np.ndarray
    categorical: np.ndarray

    def __len__(self) -> int:
        return int(self.numeric.shape[0])

    def slice(self, start: int, stop: int) -> RawRows:
        return RawRows(self.numeric[start:stop], self.categorical[start:stop])

    @staticmethod
    def concat(parts: list[RawRows]) -> RawRows:
        if len(parts) == 1:
            return parts[0]
        return RawRows(np.concatenate([p.numeric for p in parts]),
                       np.concatenate([p.categorical for p in parts]))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, NonFinite):
        return value.literal
    return {bool: "boolean", str: "string", dict: "object", list: "array", int: "number",
            float: "number"}.get(type(value), type(value).__name__)


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _did_you_mean(word: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` or nothing: the messages say where the valid names are."""
    hint = did_you_mean(word, choices, listing=False)
    return f" ({hint})" if hint else ""


class InputSchema:
    """The input contract of one model version.

    Args:
        schema: the parsed ``schema.json`` of the version.
        max_instances: the most rows one JSON request may hold.
        range_margin: how far past the training range (as a fraction of its width) a numeric
            value may go; ``inf`` disables the range check.
    """

    def __init__(self, schema: dict[str, Any], max_instances: int = 4096,
                 range_margin: float = 0.5) -> None:
        features = []
        for position, spec in enumerate(schema["features"]):
            if spec["type"] == "numeric":
                lo, hi = float(spec["min"]), float(spec["max"])
                width = max(hi - lo, abs(hi), abs(lo), 1.0) if hi == lo else hi - lo
                margin = range_margin * width
                features.append(Feature(
                    spec["name"], "numeric", position, lo, hi,
                    lo - margin if math.isfinite(margin) else -math.inf,
                    hi + margin if math.isfinite(margin) else math.inf,
                ))
            elif spec["type"] == "categorical":
                cats = tuple(str(c) for c in spec["categories"])
                features.append(Feature(spec["name"], "categorical", position,
                                        categories=cats, category_set=frozenset(cats)))
            else:  # a schema this service does not understand must not be served half-checked
                raise ValueError(f"feature {spec['name']!r} has unknown type {spec['type']!r}")
        self.features = features
        self.names = [f.name for f in features]
        self.name_set = frozenset(self.names)
        self.numeric = [f for f in features if f.kind == "numeric"]
        self.categorical = [f for f in features if f.kind == "categorical"]
        self.max_instances = max_instances
        self.range_margin = range_margin
        self._lows = np.array([f.low for f in self.numeric], dtype=np.float64)
        self._highs = np.array([f.high for f in self.numeric], dtype=np.float64)
        self._range_checked = bool(np.isfinite(self._lows).any() or np.isfinite(self._highs).any())

    # ---- description ---------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "features": [f.describe() for f in self.features],
            "order": list(self.names),
            "missing_values": "null (JSON) or Arrow null: imputed as in training",
            "range_margin": None if math.isinf(self.range_margin) else self.range_margin,
        }

    # ---- JSON bodies ---------------------------------------------------------------------

    def from_json(self, body: Any) -> RawRows:
        """Validate a parsed JSON body (row or columnar format)."""
        if not isinstance(body, dict):
            raise RequestError(
                "wrong_type",
                f"body: expected a JSON object like {{\"instances\": [...]}}, "
                f"got {_type_name(body)}",
                "body",
            )
        keys = set(body)
        if keys == {"instances"}:
            return self.from_instances(body["instances"])
        if keys == {"inputs"}:
            return self.from_columns(body["inputs"])
        if "instances" in keys and "inputs" in keys:
            raise RequestError("unknown_key", "body: send either 'instances' (rows) or "
                               "'inputs' (columns), not both", "body")
        extra = sorted(str(k) for k in keys - {"instances", "inputs"})
        if extra:
            raise RequestError(
                "unknown_key",
                f"body: unknown key {extra[0]!r}"
                f"{_did_you_mean(extra[0], ['instances', 'inputs'])}; "
                "expected 'instances' (rows) or 'inputs' (columns)",
                extra[0],
            )
        raise RequestError("missing_key", "body: missing 'instances' (a list of rows)",
                           "instances")

    def _check_count(self, n: int, where: str, limit: int) -> None:
        if n == 0:
            raise RequestError("empty", f"{where}: empty; send at least one row", where)
        if n > limit:
            raise RequestError(
                "too_many_instances",
                f"{where}: {n} rows, more than the limit of {limit} per request; split the "
                "request, or send large batches as .npy or Arrow (see GET /metadata)",
                where, status=413,
            )

    def from_instances(self, instances: Any) -> RawRows:
        """Validate ``instances``: a list of row objects or of value lists."""
        if not isinstance(instances, list):
            raise RequestError("wrong_type", f"instances: expected a list of rows, got "
                               f"{_type_name(instances)}", "instances")
        self._check_count(len(instances), "instances", self.max_instances)
        names, name_set, width = self.names, self.name_set, len(self.names)
        rows: list[Any] = []
        for i, inst in enumerate(instances):
            kind = type(inst)
            if kind is dict:
                if inst.keys() != name_set:
                    self._key_error(inst, f"instances[{i}]")
                rows.append([inst[n] for n in names])
            elif kind is list:
                if len(inst) != width:
                    raise RequestError(
                        "wrong_length",
                        f"instances[{i}]: {len(inst)} values, expected {width} in the order "
                        f"{', '.join(names[:4])}{', …' if width > 4 else ''} (see GET /metadata)",
                        f"instances[{i}]",
                    )
                rows.append(inst)
            else:
                raise RequestError(
                    "wrong_type",
                    f"instances[{i}]: expected an object keyed by feature name or a list of "
                    f"{width} values, got {_type_name(inst)}",
                    f"instances[{i}]",
                )
        where = _row_path
        if not self.categorical:  # the common case: one conversion of the whole list
            numeric = self._numeric_matrix(rows, lambda i, j: rows[i][j], where)
            return RawRows(numeric, np.empty((len(rows), 0), dtype=object))
        columns = list(zip(*rows, strict=True))
        return self._build(columns, where)

    def from_columns(self, inputs: Any) -> RawRows:
        """Validate columnar ``inputs``: ``{feature: [values...]}``, all the same length."""
        if not isinstance(inputs, dict):
            raise RequestError("wrong_type", "inputs: expected an object mapping each "
                               f"feature to a list of values, got {_type_name(inputs)}", "inputs")
        if inputs.keys() != self.name_set:
            self._key_error(inputs, "inputs")
        columns = []
        length = None
        for name in self.names:
            col = inputs[name]
            if not isinstance(col, list):
                raise RequestError("wrong_type", f"inputs.{name}: expected a list of values, "
                                   f"got {_type_name(col)}", f"inputs.{name}")
            if length is None:
                length = len(col)
                self._check_count(length, f"inputs.{name}", self.max_instances)
            elif len(col) != length:
                raise RequestError(
                    "wrong_length",
                    f"inputs.{name}: {len(col)} values, but inputs.{self.names[0]} has "
                    f"{length}; every column needs one value per row",
                    f"inputs.{name}",
                )
            columns.append(col)
        return self._build(columns, _column_path)

    def from_feature_columns(self, columns: list[Any], where) -> RawRows:
        """Validate per-feature value lists in schema order, already of equal, checked
        length (the v2 tensors); ``where(feature, row)`` names a value in messages."""
        return self._build(columns, where)

    def from_value_rows(self, rows: list[list[Any]], where) -> RawRows:
        """Validate rows of values in schema order for a numeric-only schema (a v2
        ``[N, F]`` tensor); ``where(feature, row)`` names a value in messages."""
        numeric = self._numeric_matrix(rows, lambda i, j: rows[i][j], where)
        return RawRows(numeric, np.empty((len(rows), 0), dtype=object))

    def _key_error(self, obj: dict, where: str) -> None:
        missing = [n for n in self.names if n not in obj]
        unknown = sorted(str(k) for k in obj if k not in self.name_set)
        if unknown:
            key = unknown[0]
            raise RequestError(
                "unknown_feature",
                f"{where}: unknown feature {key!r}{_did_you_mean(key, self.names)}; "
                "the model's features are listed by GET /metadata",
                f"{where}.{key}",
            )
        raise RequestError(
            "missing_feature",
            f"{where}: missing feature {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; send every feature, null for a missing value",
            f"{where}.{missing[0]}",
        )

    def _build(self, columns: list[Any], where) -> RawRows:
        """Rows from per-feature value lists (schema order)."""
        n = len(columns[0]) if columns else 0
        numeric_cols = [columns[f.position] for f in self.numeric]
        # Transposed: numeric_cols[j][i] is row i's value of numeric feature j.
        numeric = self._numeric_matrix(numeric_cols, lambda i, j: numeric_cols[j][i], where,
                                       transposed=True, n=n)
        categorical = np.empty((n, len(self.categorical)), dtype=object)
        for j, feat in enumerate(self.categorical):
            categorical[:, j] = self._categorical_column(columns[feat.position], feat, where)
        return RawRows(numeric, categorical)

    def _numeric_matrix(self, cells: list[Any], value_at, where, transposed: bool = False,
                        n: int | None = None) -> np.ndarray:
        """A float64 (rows, numeric features) matrix from nested lists, checked at once.

        Type, finiteness and range are checked over the whole matrix with a few NumPy
        operations; only when a check fails are the values scanned to name the first bad one
        (``value_at(row, numeric feature index)`` gives the value as sent).
        """
        k = len(self.numeric)
        if k == 0:
            return np.empty((n if n is not None else len(cells), 0), dtype=np.float64)
        kinds = set(map(type, itertools.chain.from_iterable(cells)))
        if not kinds <= _NUMBER_TYPES | {_MISSING}:
            self._raise_first_bad_type(cells, value_at, where, transposed)
        try:
            matrix = np.array(cells, dtype=np.float64)
        except OverflowError:  # an integer beyond float64
            self._raise_first_bad_type(cells, value_at, where, transposed, overflow=True)
            raise
        if transposed:
            matrix = matrix.T
        finite = np.isfinite(matrix)
        if not finite.all():
            # None became NaN (a missing value, allowed); a float NaN or inf was sent.
            for i, j in np.argwhere(~finite):
                value = value_at(int(i), int(j))
                if value is not None:
                    raise RequestError(
                        "non_finite",
                        f"{where(self.numeric[j], int(i))}: {value} is not allowed; send a "
                        "finite number, or null for a missing value",
                        where(self.numeric[j], int(i)),
                    )
        self._check_range(matrix, where)
        return matrix

    def _raise_first_bad_type(self, cells, value_at, where, transposed: bool,
                              overflow: bool = False) -> None:
        rows = len(cells[0]) if transposed else len(cells)
        for i in range(rows):
            for j, feat in enumerate(self.numeric):
                v = value_at(i, j)
                if overflow:
                    if type(v) is int and abs(v) > 1e308:
                        raise RequestError("non_finite", f"{where(feat, i)}: {_show(v)} is too "
                                           "large for a 64-bit float", where(feat, i))
                    continue
                if v is None or type(v) in _NUMBER_TYPES:
                    continue
                if isinstance(v, NonFinite):
                    raise RequestError(
                        "non_finite", f"{where(feat, i)}: {v.literal} is not allowed; send a "
                        "finite number, or null for a missing value", where(feat, i))
                raise RequestError(
                    "wrong_type", f"{where(feat, i)}: expected a number, got {_type_name(v)} "
                    f"{_show(v)}", where(feat, i))

    def _check_range(self, matrix: np.ndarray, where) -> None:
        """Refuse values outside the allowed ranges (NaN compares false: missing passes)."""
        if not self._range_checked:
            return
        bad = (matrix < self._lows) | (matrix > self._highs)
        if bad.any():
            i, j = (int(v) for v in np.argwhere(bad)[0])
            feat = self.numeric[j]
            raise RequestError(
                "out_of_range",
                f"{where(feat, i)}: {matrix[i, j]:g} is outside the allowed range "
                f"[{feat.low:g}, {feat.high:g}] (training range [{feat.train_min:g}, "
                f"{feat.train_max:g}] widened by {self.range_margin:g}x its width on each "
                "side); check the value's unit",
                where(feat, i),
            )

    def _categorical_column(self, col, feat: Feature, where) -> np.ndarray:
        out = np.empty(len(col), dtype=object)
        allowed = feat.category_set
        for i, v in enumerate(col):
            kind = type(v)
            if kind is str:
                value = v
            elif kind is int:  # e.g. origin 1 for the category "1"
                value = str(v)
            elif v is None:
                out[i] = None
                continue
            else:
                raise RequestError(
                    "wrong_type",
                    f"{where(feat, i)}: expected one of the categories "
                    f"{_categories(feat)}, got {_type_name(v)} {_show(v)}",
                    where(feat, i),
                )
            if value not in allowed:
                raise RequestError(
                    "unknown_category",
                    f"{where(feat, i)}: {_show(v)} is not a known category; expected one of "
                    f"{_categories(feat)}{_did_you_mean(value, list(feat.categories))}",
                    where(feat, i),
                )
            out[i] = value
        return out

    # ---- binary bodies -------------------------------------------------------------------

    def from_npy(self, array: np.ndarray, max_rows: int) -> RawRows:
        """Validate a 2-D numeric array whose columns follow the schema's feature order."""
        if self.categorical:
            raise RequestError(
                "unsupported_format",
                "this model has categorical features "
                f"({', '.join(f.name for f in self.categorical)}), "
                "which .npy cannot carry without pickle; send an Arrow IPC stream or JSON",
                "body", status=415,
            )
        if array.ndim != 2 or array.shape[1] != len(self.names):
            raise RequestError(
                "wrong_shape",
                f"body: array of shape {tuple(array.shape)}, expected (rows, {len(self.names)}) "
                f"with columns in the order {', '.join(self.names[:4])}"
                f"{', …' if len(self.names) > 4 else ''} (see GET /metadata)",
                "body",
            )
        if array.dtype.kind not in "iuf":
            raise RequestError("wrong_type", f"body: array of dtype {array.dtype}, expected "
                               "float or integer numbers", "body")
        self._check_count(array.shape[0], "body", max_rows)
        values = np.asarray(array, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            i, j = (int(k) for k in np.argwhere(~finite)[0])
            feat = self.features[j]
            raise RequestError(
                "non_finite",
                f"row {i}, column {j} ({feat.name}): {values[i, j]} is not allowed; .npy has no "
                "missing values: send Arrow (with nulls) or JSON (with null) for those",
                f"{feat.name}[{i}]",
            )
        self._check_range(values, _binary_path)
        return RawRows(values, np.empty((values.shape[0], 0), dtype=object))

    def from_arrow(self, table: Any, max_rows: int) -> RawRows:
        """Validate an Arrow table with one column per feature (nulls are missing values)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        names = list(table.column_names)
        if set(names) != self.name_set or len(names) != len(self.names):
            seen = set()
            dupes = [n for n in names if n in seen or seen.add(n)]
            if dupes:
                raise RequestError("duplicate_feature", f"column {dupes[0]!r} appears twice",
                                   dupes[0])
            self._key_error(dict.fromkeys(names), "body")
        self._check_count(table.num_rows, "body", max_rows)
        n = table.num_rows
        numeric = np.empty((n, len(self.numeric)), dtype=np.float64)
        for j, feat in enumerate(self.numeric):
            col = table.column(feat.name)
            if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
                raise RequestError("wrong_type", f"column {feat.name}: Arrow type {col.type}, "
                                   "expected integers or floats", feat.name)
            values = col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            nulls = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else None
            finite = np.isfinite(values)
            if nulls is not None:
                finite |= nulls
            if not finite.all():
                i = int(np.flatnonzero(~finite)[0])
                raise RequestError(
                    "non_finite",
                    f"column {feat.name}, row {i}: {values[i]} is not allowed; use an Arrow "
                    "null for a missing value",
                    f"{feat.name}[{i}]",
                )
            numeric[:, j] = values
        self._check_range(numeric, _binary_path)
        categorical = np.empty((n, len(self.categorical)), dtype=object)
        for j, feat in enumerate(self.categorical):
            col = table.column(feat.name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                raise RequestError("wrong_type", f"column {feat.name}: Arrow type {col.type}, "
                                   f"expected strings (one of {_categories(feat)})", feat.name)
            known = pc.is_in(col, value_set=pa.array(feat.categories, col.type))
            bad = pc.and_(pc.invert(known), pc.is_valid(col))
            if pc.any(bad).as_py():
                i = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
                raise RequestError(
                    "unknown_category",
                    f"column {feat.name}, row {i}: {_show(col[i].as_py())} is not a known "
                    f"category; expected one of {_categories(feat)}",
                    f"{feat.name}[{i}]",
                )
            categorical[:, j] = col.to_pylist()
        return RawRows(numeric, categorical)


def _row_path(feat: Feature, i: int) -> str:
    return f"instances[{i}].{feat.name}"


def _column_path(feat: Feature, i: int) -> str:
    return f"inputs.{feat.name}[{i}]"


def _binary_path(feat: Feature, i: int) -> str:
    return f"{feat.name}[{i}]"


def _categories(feat: Feature) -> str:
    shown = ", ".join(repr(c) for c in feat.categories[:8])
    return f"[{shown}{', …' if len(feat.categories) > 8 else ''}]"
