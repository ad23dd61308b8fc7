"""Sliding-window PSI (serving/drift.py) against known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from serving.drift import DriftMonitor

FEATURES = [
    {"name": "x", "type": "numeric", "bin_edges": [0.0, 1.0, 2.0, 3.0, 4.0],
     "bin_shares": [0.25, 0.25, 0.25, 0.25]},
    {"name": "c", "type": "categorical", "categories": ["a", "b"], "category_shares": [0.5, 0.5]},
]


def feed(monitor: DriftMonitor, x: np.ndarray, c: list) -> None:
    numeric = np.asarray(x, dtype=np.float64).reshape(-1, 1)
    categorical = np.asarray(c, dtype=object).reshape(-1, 1)
    monitor.add(monitor.bins_of(numeric, categorical))


def test_matching_distribution_scores_near_zero_and_a_shift_scores_high():
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(FEATURES, window=2000)
    feed(monitor, rng.uniform(0, 4, 2000), list(rng.choice(["a", "b"], 2000)))
    scores = monitor.psi()
    assert scores["x"] < 0.01 and scores["c"] < 0.01
    feed(monitor, rng.uniform(3, 4, 2000), ["a"] * 2000)  # all in the last bin; all 'a'
    scores = monitor.psi()
    assert scores["x"] > 1.0 and scores["c"] > 1.0


def test_window_forgets_old_rows():
    monitor = DriftMonitor(FEATURES, window=100)
    feed(monitor, np.full(100, 3.5), ["a"] * 100)
    shifted = monitor.psi()["x"]
    feed(monitor, np.tile([0.5, 1.5, 2.5, 3.5], 25), ["a", "b"] * 50)  # replaces all 100 rows
    assert monitor.rows == 100
    assert monitor.psi()["x"] < 0.01 < shifted


def only(x: np.ndarray, c: list) -> dict[str, float]:
    """The PSI of a fresh window of 10 fed exactly these rows."""
    fresh = DriftMonitor(FEATURES, window=10)
    feed(fresh, x, c)
    return fresh.psi()


def test_wraparound_and_batches_larger_than_the_window():
    monitor = DriftMonitor(FEATURES, window=10)
    xs, cs = [], []
    for k, start in enumerate(range(0, 37, 7)):  # 6 batches of 7: the ring wraps mid-batch
        x, c = np.arange(start, start + 7) % 4 + 0.5, ["a" if k % 2 else "b"] * 7
        feed(monitor, x, c)
        xs.extend(x)
        cs.extend(c)
    assert monitor.rows == 10
    last = only(np.array(xs[-10:]), cs[-10:])
    assert monitor.psi() == pytest.approx(last)
    assert last["c"] > 0.1  # 3 'b', 7 'a': not the even mix of all 42 rows
    feed(monitor, np.full(25, 0.5), ["b"] * 25)
    assert monitor.rows == 10
    assert monitor.psi() == pytest.approx(only(np.full(10, 0.5), ["b"] * 10))
    assert monitor.psi()["c"] > 1.0


def test_out_of_range_values_fall_in_the_edge_bins_and_missing_values_are_skipped():
    monitor = DriftMonitor(FEATURES, window=8)
    bins = monitor.bins_of(np.array([[-5.0], [0.0], [1.0], [4.0], [99.0], [np.nan]]),
                           np.array([["a"], ["b"], [None], ["a"], ["b"], [None]], dtype=object))
    assert bins[:, 0].tolist() == [0, 0, 1, 3, 3, -1]
    assert bins[:, 1].tolist() == [0, 1, -1, 0, 1, -1]
    monitor.add(bins[5:])  # one row, all missing
    assert monitor.psi() == {}
