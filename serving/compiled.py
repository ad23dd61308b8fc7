"""The packaged preprocessing as NumPy operations: the serving hot path, with no pandas.

``components.preprocess`` fits a scikit-learn ``ColumnTransformer``: numeric columns
imputed (``SimpleImputer``) then scaled (``StandardScaler`` / ``MinMaxScaler``), categorical
columns imputed then one-hot encoded (``OneHotEncoder(handle_unknown="ignore")``). Calling it
at serving time means building a pandas DataFrame per batch and going through
scikit-learn's input validation per step: about 1 ms for one row on these machines, most of
a single-row request's cost. :class:`NumpyPreprocessor` reads the fitted statistics once
(``statistics_``, ``mean_``, ``scale_``, ``min_``, ``categories_``) and applies the very same
float64 operations in the same order to the validated ``RawRows`` arrays, so its output is
bit-for-bit the transformer's (``tests/serving/test_compiled.py`` checks it on the test
split, and the service's answers against the packaged model's).

Anything it does not recognise (another step, an imputer that drops an all-missing column,
infrequent categories, a ``remainder`` that is not dropped) makes :meth:`compile` return
``None``, and the service keeps calling the transformer through pandas.

Why not ONNX (the issue's other option): it would add skl2onnx and onnxruntime, a
packaging-time export and a second artifact to hash and verify, and ONNX Runtime's
converters for these steps compute in float32 by default, so "the packaged model's answers"
would need a tolerance argument instead of an identity. The NumPy replay gives identical
numbers with no new dependency. ONNX Runtime itself was not measured here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class _NumericBlock:
    columns: np.ndarray  # indices into RawRows.numeric
    fill: np.ndarray  # imputer statistics
    ops: list[tuple[str, Any, Any]]  # ("standard", mean|None, scale|None) / ("minmax", ...)


@dataclass
class _CategoricalBlock:
    columns: list[int]  # indices into RawRows.categorical
    fill: list[Any]  # imputer statistics (None: no imputer)
    lookups: list[dict[str, int]]  # category -> position, per column
    widths: list[int]


class NumpyPreprocessor:
    """A fitted ColumnTransformer replayed with NumPy (see the module docstring)."""

    def __init__(self, blocks: list[Any], width: int) -> None:
        self.blocks = blocks
        self.width = width

    @classmethod
    def compile(cls, transformer: Any, numeric: list[str],
                categorical: list[str]) -> NumpyPreprocessor | None:
        """The NumPy version of ``transformer``, or None when it has a part this does not
        replay exactly.

        Args:
            transformer: the fitted preprocessing of a model version.
            numeric: the numeric feature names, in ``RawRows.numeric`` order.
            categorical: the categorical feature names, in ``RawRows.categorical`` order.
        """
        from sklearn.compose import ColumnTransformer

        if type(transformer) is not ColumnTransformer:
            return None
        num_index = {n: i for i, n in enumerate(numeric)}
        cat_index = {n: i for i, n in enumerate(categorical)}
        blocks: list[Any] = []
        width = 0
        for name, part, columns in transformer.transformers_:
            if part == "drop" or (name == "remainder" and len(columns) == 0):
                continue
            if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
                return None
            if all(c in num_index for c in columns):
                block = cls._numeric(part, [num_index[c] for c in columns])
                if block is None:
                    return None
                width += len(columns)
            elif all(c in cat_index for c in columns):
                block = cls._categorical(part, [cat_index[c] for c in columns])
                if block is None:
                    return None
                width += sum(block.widths)
            else:
                return None
            blocks.append(block)
        return cls(blocks, width)

    @staticmethod
    def _steps(part: Any) -> list[Any] | None:
        from sklearn.pipeline import Pipeline

        if type(part) is Pipeline:
            return [step for _, step in part.steps if step != "passthrough"]
        return [part]

    @classmethod
    def _numeric(cls, part: Any, columns: list[int]) -> _NumericBlock | None:
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import MinMaxScaler, StandardScaler

        steps = cls._steps(part)
        if not steps or type(steps[0]) is not SimpleImputer:
            return None
        imputer = steps[0]
        fill = np.asarray(imputer.statistics_, dtype=np.float64)
        if (imputer.add_indicator or not _is_nan(imputer.missing_values)
                or fill.shape != (len(columns),) or not np.isfinite(fill).all()):
            return None  # an all-missing column would be dropped; an indicator adds columns
        ops: list[tuple[str, Any, Any]] = []
        for step in steps[1:]:
            if type(step) is StandardScaler:
                ops.append(("standard", step.mean_ if step.with_mean else None,
                            step.scale_ if step.with_std else None))
            elif type(step) is MinMaxScaler:
                ops.append(("minmax", step.scale_, step.min_))
                if step.clip:
                    ops.append(("clip", *step.feature_range))
            else:
                return None
        return _NumericBlock(np.asarray(columns, dtype=np.intp), fill, ops)

    @classmethod
    def _categorical(cls, part: Any, columns: list[int]) -> _CategoricalBlock | None:
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import OneHotEncoder

        steps = cls._steps(part)
        if not steps:
            return None
        fill: list[Any] = [None] * len(columns)
        if type(steps[0]) is SimpleImputer:
            imputer = steps.pop(0)
            if imputer.add_indicator or not _is_nan(imputer.missing_values):
                return None
            fill = list(imputer.statistics_)
            if len(fill) != len(columns) or any(v is None or v != v for v in fill):
                return None
        if len(steps) != 1 or type(steps[0]) is not OneHotEncoder:
            return None
        encoder = steps[0]
        if (encoder.handle_unknown != "ignore" or getattr(encoder, "drop_idx_", None) is not None
                or getattr(encoder, "_infrequent_enabled", False)
                or len(encoder.categories_) != len(columns)):
            return None
        lookups = [{str(c): k for k, c in enumerate(cats)} for cats in encoder.categories_]
        if any(len(lk) != len(cats) for lk, cats in zip(lookups, encoder.categories_,
                                                          strict=True)):
            return None  # categories that collide once turned into strings
        return _CategoricalBlock(columns, fill, lookups, [len(c) for c in encoder.categories_])

    def transform(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """The model input (float32, as the packaged path gives it) for validated rows."""
        n = numeric.shape[0]
        out = np.empty((n, self.width), dtype=np.float64)
        at = 0
        for block in self.blocks:
            if isinstance(block, _NumericBlock):
                x = numeric[:, block.columns]  # a copy (fancy indexing)
                missing = np.isnan(x)
                if missing.any():
                    x[missing] = np.broadcast_to(block.fill, x.shape)[missing]
                for op, a, b in block.ops:
                    if op == "standard":
                        if a is not None:
                            x -= a
                        if b is not None:
                            x /= b
                    elif op == "minmax":
                        x *= a
                        x += b
                    else:
                        np.clip(x, a, b, out=x)
                k = x.shape[1]
                out[:, at:at + k] = x
                at += k
            else:
                for col, fill, lookup, w in zip(block.columns, block.fill, block.lookups,
                                                block.widths, strict=True):
                    hot = out[:, at:at + w]
                    hot[:] = 0.0
                    for i, value in enumerate(categorical[:, col]):
                        if value is None:
                            value = fill
                        k = lookup.get(value)
                        if k is not None:
                            hot[i, k] = 1.0
                    at += w
        return out.astype(np.float32)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


# ---- forests: the trees called directly -------------------------------------------------

_FOREST_CLASSES = ("RandomForestClassifier", "ExtraTreesClassifier",
                   "RandomForestRegressor", "ExtraTreesRegressor")


class ForestCall:
    """A fitted scikit-learn random forest (or extra-trees), called tree by tree.

    scikit-learn's ``predict_proba`` / ``predict`` of a forest validates the input, then hands
    each tree to joblib, which validates nothing more (``check_input=False``) and adds each
    tree's answer into one float64 array, tree after tree, before dividing by the number of
    trees. For one row of a 200-tree forest that machinery is about 80% of the call (10.7
    against 2.3 ms on these machines). This does the same additions in the same order on
    the same float32 input, so the probabilities are the forest's, bit for bit
    (``tests/serving/test_compiled.py``).
    """

    def __init__(self, forest: Any) -> None:
        self.trees = list(forest.estimators_)
        self.width = int(forest.n_features_in_)
        self.classifier = hasattr(forest, "classes_")
        self.n_classes = int(forest.n_classes_) if self.classifier else 0

    @classmethod
    def compile(cls, estimator: Any) -> ForestCall | None:
        """The forest's fast call, or None for any other estimator (or a multi-output one)."""
        if (type(estimator).__name__ not in _FOREST_CLASSES
                or type(estimator).__module__.split(".")[0] != "sklearn"
                or getattr(estimator, "n_outputs_", 1) != 1 or not estimator.estimators_):
            return None
        return cls(estimator)

    def _input(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(f"the forest takes {self.width} features, got shape {x.shape}")
        return x

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x = self._input(x)
        out = np.zeros((x.shape[0], self.n_classes), dtype=np.float64)
        for tree in self.trees:
            out += tree.predict_proba(x, check_input=False)
        out /= len(self.trees)
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = self._input(x)
        out = np.zeros(x.shape[0], dtype=np.float64)
        for tree in self.trees:
            out += tree.predict(x, check_input=False)
        out /= len(self.trees)
        return out
