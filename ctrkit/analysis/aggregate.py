"""Pools the variants' comparisons across datasets as the evaluation literature asks (Agarwal et al. 2021,
"Deep RL at the edge of the statistical precipice", the rliable library): the interquartile mean and the
probability of improvement, each with a bootstrap confidence interval that resamples seeds as clusters.

The tasks are (dataset, model); the runs of a task its seeds. For one comparison (a variant vs its
alone control):
- IQM: the interquartile mean (the mean of the middle 50%, `scipy.stats.trim_mean(x, 0.25)`) of
  the per-seed paired relative differences 100 (AUC_t - AUC_c) / AUC_c pooled over all tasks;
- probability of improvement: the mean over tasks of P(X > Y) + P(X = Y)/2, X the treatment's and
  Y the control's test AUCs over seeds (the Mann-Whitney statistic / (n m), rliable's definition);
- the 95% CIs: percentile intervals of a cluster bootstrap stratified by dataset: within each dataset
  its seeds are drawn with replacement, and a drawn seed brings every row of that seed of every task
  of the dataset (each model's treatment and control AUCs). A task that lacks a drawn seed gets
  nothing from it (a task drawing none of its seeds leaves the probability's mean over tasks).

Why clusters, not each task's seeds resampled on their own (rliable's stratified bootstrap): the models
of one seed are the peers of ONE run, trained together on the same batches (the control too is one run
of all the peers), and a treatment and its control of one seed share that seed's pretrained checkpoints
and batches. The tasks (dataset, DeepFM), (dataset, DCN), ... of one seed are therefore not independent,
and resampling each task's seeds apart treats them as if they were: the IQM's intervals came out too
narrow. The independent units are the (dataset, seed) runs, so they are what is resampled. Drawing both
arms of a seed together also makes the probability's interval reflect their pairing (arms that move
together from seed to seed vary less in P(X > Y) than two independent samples would).

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


def _strata(g: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per dataset (sorted), [tasks, seeds] arrays of the treatment's and the control's test AUCs and of
    which (task, seed) rows exist: the columns are every seed of the dataset's tasks (sorted), the rows its
    models (sorted, so the tasks come in `summary`'s order); a task without a seed has a hole there (NaN)."""
    if g.duplicated(["dataset", "peer", "seed"]).any():  # a seed's row must be one run's, or clusters mean nothing
        raise ValueError("aggregate.summary: two rows for one (dataset, peer, seed) of a comparison")
    out = []
    for _, d in g.groupby("dataset", sort=True):
        peers, seeds = np.unique(d["peer"].to_numpy()), np.unique(d["seed"].to_numpy())
        at = (np.searchsorted(peers, d["peer"].to_numpy()), np.searchsorted(seeds, d["seed"].to_numpy()))
        x, y = np.full((2, len(peers), len(seeds)), np.nan)
        ok = np.zeros((len(peers), len(seeds)), bool)
        x[at], y[at], ok[at] = d["test_auc_t"].to_numpy(float), d["test_auc_c"].to_numpy(float), True
        out.append((x, y, ok))
    return out


def _bootstrap(strata: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rng: np.random.Generator,
               reps: int) -> tuple[np.ndarray, np.ndarray]:
    """(IQM draws, probability-of-improvement draws) of the cluster bootstrap over `_strata`: per rep and
    dataset one draw of the dataset's seeds (`_indices`), shared by all its tasks and both arms, then
    every rep's statistics at once, each rep's numbers exactly as `iqm` and `probability_of_improvement`
    give them on that rep's rows (tests/test_aggregate.py compares the two bit for bit)."""
    picks = _indices([x.shape[1] for x, _, _ in strata], rng, reps)
    diffs, pois = [], []
    for (x, y, ok), i in zip(strata, picks):
        d = np.where(ok, 100.0 * (x - y) / y, np.nan)[:, i]  # [tasks, reps, drawn seeds]; holes NaN
        diffs.append(d.transpose(1, 0, 2).reshape(reps, -1))  # pooled in the order task, then drawn seed
        pois += [_poi_rows(xt[i], yt[i], kt[i]) for xt, yt, kt in zip(x, y, ok)]
    iqms = _by_count(np.concatenate(diffs, axis=1), _iqm_rows)
    return iqms, _by_count(np.stack(pois, axis=1), lambda v: v.mean(axis=1))


def _indices(sizes: list[int], rng: np.random.Generator, reps: int) -> list[np.ndarray]:
    """Per stratum of `sizes` seeds, the [reps, n] drawn seed indices, `rng.integers(0, n, n)` in the
    order of one rep after another, stratum by stratum: all at once (`_draw_at_once`) when that gives the
    same draws, else one `integers` call at a time."""
    saved = copy.deepcopy(rng)
    cols, check = _draw_at_once(sizes, rng, reps), copy.deepcopy(saved)
    if cols is None or not all(np.array_equal(c[0], check.integers(0, n, n)) for c, n in zip(cols, sizes)):
        cols = [np.empty((reps, n), np.int64) for n in sizes]
        for r in range(reps):
            for c, n in zip(cols, sizes):
                c[r] = saved.integers(0, n, n)
    return cols


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


def _poi_rows(x: np.ndarray, y: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """One task's P(X > Y) + P(X = Y) / 2 in every rep: [reps, n] drawn treatment and control values, and
    which of them exist (a drawn seed the task lacks counts in neither arm); NaN where none does. The
    counts over n^2 are exact, so the same bits as `_poi_task` on the existing values."""
    both = ok[:, :, None] & ok[:, None, :]
    n = ok.sum(axis=1) ** 2
    gt = ((x[:, :, None] > y[:, None, :]) & both).sum(axis=(1, 2))
    eq = ((x[:, :, None] == y[:, None, :]) & both).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return gt / n + 0.5 * (eq / n)


def _by_count(v: np.ndarray, stat) -> np.ndarray:
    """`stat` (a [rows, k] -> [rows] reduction) of each row's non-NaN values, in their order, rows grouped
    by how many they have (a drawn seed a task lacks, or a missing AUC, leaves a NaN); NaN for a row with
    none. The same values in the same order as the one-rep computation, so the same bits."""
    ok = ~np.isnan(v)
    k = ok.sum(axis=1)
    packed = np.take_along_axis(v, np.argsort(~ok, axis=1, kind="stable"), axis=1)  # non-NaN first, in order
    out = np.full(len(v), np.nan)
    for n in np.unique(k[k > 0]):
        rows = k == n
        out[rows] = stat(np.ascontiguousarray(packed[rows, :n]))
    return out


def summary(pairs: pd.DataFrame, *, reps: int = REPS, seed: int = SEED) -> pd.DataFrame:
    """One row per comparison (init, embedding, variant) over every dataset and model of `pairs`
    (the frame of `ctrkit.analysis.variants.pairs`, several datasets concatenated): the number of
    datasets and tasks, the IQM of the relative difference and the probability of improvement over
    alone, each with its 95% interval of the (dataset, seed) cluster bootstrap (the module's docstring)."""
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
        iqms, pois = _bootstrap(_strata(g), np.random.default_rng(seed), reps)
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
