"""The across-dataset bootstrap computed all reps at once equals the one-rep-at-a-time reference, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from ctrkit.analysis import aggregate


def _reference(tasks, rng, reps):
    """The bootstrap as first written: one rep at a time through `iqm` and `probability_of_improvement`."""
    iqms, pois = np.empty(reps), np.empty(reps)
    for r in range(reps):
        diffs, pairs = [], []
        for x, y in tasks:
            i = rng.integers(0, len(x), len(x))
            diffs.append(100.0 * (x[i] - y[i]) / y[i])
            pairs.append((x[rng.integers(0, len(x), len(x))], y[rng.integers(0, len(y), len(y))]))
        iqms[r] = aggregate.iqm(np.concatenate(diffs))
        pois[r] = aggregate.probability_of_improvement(pairs)
    return iqms, pois


def _tasks(seed: int, sizes, ties: bool = False, nan: bool = False):
    g = np.random.default_rng(seed)
    out = []
    for n in sizes:
        x, y = 0.7 + 0.01 * g.standard_normal(n), 0.7 + 0.01 * g.standard_normal(n)
        if ties:  # AUCs that repeat (rounded): the P(X = Y) / 2 term counts
            x, y = np.round(x, 2), np.round(y, 2)
        out.append((x, y))
    if nan:
        out[0][0][0] = np.nan
    return out


@pytest.mark.parametrize("sizes", [[3], [5, 5, 5, 5, 5, 5, 5, 5], [3, 4, 10, 2, 7], [1, 6]])
@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_equals_the_one_rep_reference_bit_for_bit(sizes, ties):
    tasks = _tasks(len(sizes) + 7 * ties, sizes, ties)
    want = _reference(tasks, np.random.default_rng(2021), 300)
    got = aggregate._bootstrap(tasks, np.random.default_rng(2021), 300)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_bootstrap_with_a_missing_auc_matches_the_reference():
    tasks = _tasks(3, [5, 5, 4], nan=True)
    want = _reference(tasks, np.random.default_rng(7), 200)
    got = aggregate._bootstrap(tasks, np.random.default_rng(7), 200)
    assert np.array_equal(got[0], want[0], equal_nan=True) and np.array_equal(got[1], want[1])


@pytest.mark.parametrize("sizes", [[5, 5, 5], [1, 3, 8, 2], [7]])
def test_draws_at_once_are_the_one_call_at_a_time_draws(sizes):
    """The fast path itself (not its fallback) gives each `integers(0, n, n)` call's indices."""
    want = np.random.default_rng(5)
    got = aggregate._draw_at_once(sizes, np.random.default_rng(5), 400)
    assert got is not None
    for r in range(400):
        for c, n in zip(got, sizes):
            assert np.array_equal(c[r], want.integers(0, n, n))


@pytest.mark.parametrize("fast", [lambda sizes, rng, reps: None,  # a draw that numpy would have redrawn
                                  lambda sizes, rng, reps: [np.zeros((reps, n), np.int64) for n in sizes]])
def test_bootstrap_falls_back_to_one_call_at_a_time_when_the_fast_draws_cannot_be_trusted(monkeypatch, fast):
    tasks = _tasks(4, [5, 4, 6])
    want = _reference(tasks, np.random.default_rng(2021), 100)
    monkeypatch.setattr(aggregate, "_draw_at_once", fast)
    got = aggregate._bootstrap(tasks, np.random.default_rng(2021), 100)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
