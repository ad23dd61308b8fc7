"""Input drift: population stability index (PSI) per feature over a sliding window of rows.

The preprocess stage recorded, for each numeric feature, quantile bin edges and the share
of training rows in each bin, and for each categorical feature the share of each category.
:class:`DriftMonitor` keeps the bin of each of the last ``window`` served rows per feature
(a ring buffer of small ints, so adding a batch and forgetting the oldest rows is a
``bincount`` away) and computes

    PSI = sum over bins of (live_share - train_share) * ln(live_share / train_share)

with both shares floored at ``EPSILON`` so an empty bin does not give infinity. Rules of
thumb: below 0.1 no shift, 0.1-0.25 moderate, above 0.25 a shift worth a look. Values
outside the training range fall in the first or last bin; missing values are not counted.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

EPSILON = 1e-4
MISSING = -1


class DriftMonitor:
    """Sliding-window PSI for every feature of a schema.

    Args:
        features: ``schema.json``'s feature list (with ``bin_edges``/``bin_shares`` or
            ``categories``/``category_shares``).
        window: how many of the most recent rows the score covers.
    """

    def __init__(self, features: list[dict[str, Any]], window: int = 1000) -> None:
        self.window = int(window)
        self.names = [f["name"] for f in features]
        self._numeric: list[tuple[int, np.ndarray]] = []  # (feature index, interior edges)
        self._categorical: list[tuple[int, dict[str, int]]] = []
        expected = []
        for i, f in enumerate(features):
            if f["type"] == "numeric":
                edges = np.asarray(f.get("bin_edges") or [], dtype=np.float64)
                shares = np.asarray(f.get("bin_shares") or [1.0], dtype=np.float64)
                self._numeric.append((i, edges[1:-1]))
            else:
                cats = [str(c) for c in f.get("categories", [])]
                shares = np.asarray(f.get("category_shares") or [1.0] * len(cats),
                                    dtype=np.float64)
                self._categorical.append((i, {c: k for k, c in enumerate(cats)}))
            expected.append(shares / shares.sum() if shares.sum() > 0 else shares)
        self._bins = max(len(e) for e in expected) if expected else 1
        self._expected = np.full((len(features), self._bins), np.nan)
        for i, e in enumerate(expected):
            self._expected[i, : len(e)] = e
        self._ring = np.full((self.window, len(features)), MISSING, dtype=np.int32)
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()

    def bins_of(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """Bin index of each value (``MISSING`` where missing), shape (rows, features).

        Args:
            numeric: the numeric features' values in schema order (NaN where missing).
            categorical: the categorical features' values in schema order (None where missing).
        """
        out = np.full((numeric.shape[0], len(self.names)), MISSING, dtype=np.int32)
        for col, (i, interior) in enumerate(self._numeric):
            values = numeric[:, col]
            idx = np.searchsorted(interior, values, side="right").astype(np.int32)
            idx[np.isnan(values)] = MISSING
            out[:, i] = idx
        for col, (i, lookup) in enumerate(self._categorical):
            out[:, i] = [lookup.get(v, MISSING) for v in categorical[:, col]]
        return out

    def add(self, bins: np.ndarray) -> None:
        """Add rows' bins (from :meth:`bins_of`) to the window, forgetting the oldest."""
        if bins.shape[0] >= self.window:
            bins = bins[-self.window:]
        with self._lock:
            n = bins.shape[0]
            end = self._next + n
            if end <= self.window:
                self._ring[self._next:end] = bins
            else:
                split = self.window - self._next
                self._ring[self._next:] = bins[:split]
                self._ring[: n - split] = bins[split:]
            self._next = end % self.window
            self._filled = min(self.window, self._filled + n)

    @property
    def rows(self) -> int:
        return self._filled

    def psi(self) -> dict[str, float]:
        """PSI per feature over the rows in the window (features with no values left out)."""
        with self._lock:
            ring = self._ring[: self._filled].copy()
        scores: dict[str, float] = {}
        for i, name in enumerate(self.names):
            col = ring[:, i]
            col = col[col != MISSING]
            if col.size == 0:
                continue
            expected = self._expected[i]
            k = int(np.count_nonzero(~np.isnan(expected)))
            live = np.bincount(col, minlength=k)[:k] / col.size
            p = np.maximum(live, EPSILON)
            q = np.maximum(expected[:k], EPSILON)
            scores[name] = float(np.sum((p - q) * np.log(p / q)))
        return scores
