"""Aggregates across datasets as the evaluation literature asks (Agarwal et al. 2021, "Deep RL at the
edge of the statistical precipice", the rliable library): the interquartile mean and the probability
of improvement, each with a stratified bootstrap confidence interval.

The tasks are (dataset, model); the runs of a task its seeds. For one comparison (a variant vs its
alone control):
- IQM: the interquartile mean (the mean of the middle 50%, `scipy.stats.trim_mean(x, 0.25)`) of
  the per-seed paired relative differences 100 (AUC_t - AUC_c) / AUC_c pooled over all tasks;
- probability of improvement: the mean over tasks of P(X > Y) + P(X = Y)/2, X the treatment's and
  Y the control's test AUCs over seeds (the Mann-Whitney statistic / (n m), rliable's definition);
- the 95% CIs: percentile intervals of the stratified bootstrap, seeds resampled with replacement
  within each task (paired rows together for the IQM; each arm's seeds for the probability).

Written with numpy and scipy: rliable itself pulls in `arch` (and statsmodels), too heavy for one table.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd

__all__ = ["iqm", "probability_of_improvement", "summary", "display", "REPS", "LEVEL"]

REPS = 2000
LEVEL = 0.95
SEED = 2021


def iqm(values) -> float:
    """Interquartile mean: the mean of the values between the 25th and 75th percentiles (trimmed 25% each side)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return float(stats.trim_mean(v, 0.25)) if len(v) else float("nan")


def _poi_task(x: np.ndarray, y: np.ndarray) -> float:
    gt = (x[:, None] > y[None, :]).mean()
    eq = (x[:, None] == y[None, :]).mean()
    return float(gt + 0.5 * eq)


def probability_of_improvement(tasks: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean over tasks of P(X > Y) + P(X = Y) / 2 (each task: treatment values X, control values Y)."""
    vals = [_poi_task(np.asarray(x, float), np.asarray(y, float)) for x, y in tasks if len(x) and len(y)]
    return float(np.mean(vals)) if vals else float("nan")


def _bootstrap(tasks: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, reps: int) -> tuple:
    """(IQM draws, probability-of-improvement draws) of the stratified bootstrap: the resampled
    indices are drawn rep by rep and task by task (`_indices`), then every rep's statistics are
    computed at once, each rep's numbers exactly as `iqm` and `probability_of_improvement` give them
    one rep at a time (tests/test_aggregate.py compares the two bit for bit)."""
    rows, xs, ys = _indices(tasks, rng, reps)
    diffs = np.concatenate([100.0 * (x[i] - y[i]) / y[i] for (x, y), i in zip(tasks, rows)], axis=1)
    iqms = _iqm_rows(diffs) if not np.isnan(diffs).any() else np.array([iqm(d) for d in diffs])
    return iqms, _poi_rows([(x[ix], y[iy]) for (x, y), ix, iy in zip(tasks, xs, ys)])


def _indices(tasks, rng: np.random.Generator, reps: int) -> tuple[list, list, list]:
    """Per task, [reps, n] index arrays: the paired rows, the treatment's and the control's seeds, drawn
    in the order of one rep after another (the stream the intervals were first computed with): all
    at once (`_draw_at_once`) when that gives the same draws, else one `integers` call at a time."""
    sizes = [n for x, y in tasks for n in (len(x), len(x), len(y))]  # one rep's calls, in order
    saved = copy.deepcopy(rng)
    cols, check = _draw_at_once(sizes, rng, reps), copy.deepcopy(saved)
    if cols is None or not all(np.array_equal(c[0], check.integers(0, n, n)) for c, n in zip(cols, sizes)):
        cols = [np.empty((reps, n), np.int64) for n in sizes]
        for r in range(reps):
            for c, n in zip(cols, sizes):
                c[r] = saved.integers(0, n, n)
    return cols[0::3], cols[1::3], cols[2::3]


def _draw_at_once(sizes: list[int], rng: np.random.Generator, reps: int) -> list | None:
    """`rng.integers(0, n, n)` for each n of `sizes`, rep after rep, from one call: numpy maps each
    32-bit draw u to ``(u * n) >> 32`` (Lemire's method) and consumes none for n = 1, so one block of
    32-bit draws split in call order gives the same indices. None when a draw would have been
    rejected (and redrawn, shifting the stream: about one in 10^9 per draw); `_indices` also checks
    the first rep against the calls themselves, so another numpy's method falls back, never differs."""
    width = sum(n for n in sizes if n > 1)
    raw = rng.integers(0, 1 << 32, (reps, width), dtype=np.uint32).astype(np.uint64)
    cols, at = [], 0
    for n in sizes:
        if n <= 1:
            cols.append(np.zeros((reps, n), np.int64))
            continue
        m = raw[:, at:at + n] * np.uint64(n)
        if ((m & np.uint64(0xFFFFFFFF)) < np.uint64(n)).any():  # Lemire's leftover below n: maybe a redraw
            return None
        cols.append((m >> np.uint64(32)).astype(np.int64))
        at += n
    return cols


def _iqm_rows(v: np.ndarray) -> np.ndarray:
    """`iqm` of every row of `v` (no NaNs), as scipy's trim_mean computes it: a partition, then the
    mean of the middle slice (each row reduced alone, so the same sums in the same order)."""
    n = v.shape[1]
    cut = int(0.25 * n)
    part = np.partition(v, (cut, n - cut - 1), axis=1)
    return np.ascontiguousarray(part[:, cut:n - cut]).mean(axis=1)


def _poi_rows(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """`probability_of_improvement` of every rep: pairs of [reps, n] treatment and [reps, m] control values."""
    per_task = []
    for x, y in pairs:
        gt = (x[:, :, None] > y[:, None, :]).mean(axis=(1, 2))
        eq = (x[:, :, None] == y[:, None, :]).mean(axis=(1, 2))
        per_task.append(gt + 0.5 * eq)
    return np.ascontiguousarray(np.stack(per_task, axis=1)).mean(axis=1)  # [reps, tasks], each row alone


def summary(pairs: pd.DataFrame, *, reps: int = REPS, seed: int = SEED) -> pd.DataFrame:
    """One row per comparison (init, embedding, variant) over every dataset and model of `pairs`
    (the frame of `ctrkit.analysis.variants.pairs`, several datasets concatenated): the number of
    datasets and tasks, the IQM of the relative difference and the probability of improvement over
    alone, each with its 95% stratified bootstrap interval."""
    cols = ["init", "embedding", "variant", "n_datasets", "n_tasks", "n_runs", "iqm_rel_pct", "iqm_ci_low",
            "iqm_ci_high", "p_improve", "p_improve_ci_low", "p_improve_ci_high"]
    if pairs.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    lo, hi = 100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2
    for key, g in pairs.groupby(["init", "embedding", "variant"], sort=False):
        tasks = [(t["test_auc_t"].to_numpy(float), t["test_auc_c"].to_numpy(float))
                 for _, t in g.groupby(["dataset", "peer"], sort=True)]
        point = iqm(np.concatenate([100.0 * (x - y) / y for x, y in tasks]))
        iqms, pois = _bootstrap(tasks, np.random.default_rng(seed), reps)
        rows.append({"init": key[0], "embedding": key[1], "variant": key[2], "n_datasets": g["dataset"].nunique(),
                     "n_tasks": len(tasks), "n_runs": len(g), "iqm_rel_pct": point,
                     "iqm_ci_low": float(np.nanpercentile(iqms, lo)), "iqm_ci_high": float(np.nanpercentile(iqms, hi)),
                     "p_improve": probability_of_improvement(tasks), "p_improve_ci_low": float(np.nanpercentile(pois, lo)),
                     "p_improve_ci_high": float(np.nanpercentile(pois, hi))})
    return pd.DataFrame(rows, columns=cols)


def display(summary_frame: pd.DataFrame) -> pd.DataFrame:
    """Human form of `summary`: each estimate with its [95% bootstrap interval], as the other tables."""
    keep = [c for c in ("init", "embedding", "variant", "n_datasets", "n_tasks", "n_runs") if c in summary_frame]
    out = summary_frame[keep].copy()
    out["iqm_rel_pct"] = [f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, lo, hi in
                          zip(summary_frame["iqm_rel_pct"], summary_frame["iqm_ci_low"], summary_frame["iqm_ci_high"])]
    out["p_improve"] = [f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in
                        zip(summary_frame["p_improve"], summary_frame["p_improve_ci_low"],
                            summary_frame["p_improve_ci_high"])]
    return out
