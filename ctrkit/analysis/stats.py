"""Paired statistics of per-seed results: t-intervals, paired tests, Holm correction, relative gains.

Every headline number is a paired difference of one value per seed; its 95% confidence interval is
the paired t-interval (scipy.stats.t), p the paired t-test, Holm-corrected across the rows of a table
(`with_holm`); Wilcoxon only with >= 6 pairs. Relative % = 100 (AUC - AUC_ref) / AUC_ref and
RelaImpr = 100 ((AUC - 0.5) / (AUC_ref - 0.5) - 1), per seed, then averaged.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

LEVEL = 0.95
MIN_WILCOXON = 6
CI_NAME = "95% paired t-interval"
# The unit of a slope against a partner's AUC: rel % per 0.01 of AUC (one AUC point), the scale the
# pretrained partners differ on (per 1.0 of AUC reads as an effect far outside any partner's range)
AUC_POINT = 0.01
NOTE_FEW = "<2 pairs: no CI or test"
NOTE_NO_WILCOXON = f"<{MIN_WILCOXON} pairs: no Wilcoxon"
# both arms gave the same AUC in every pair (e.g. finetuning where both kept the pretrained weights):
# a zero-width interval here is no evidence of a precise null, just no difference to measure
NOTE_IDENTICAL = "identical in every pair: nothing to test"
# ... in some pairs only: the t statistic then rests on the few pairs that differ (with one differing
# pair of five, t = 1 and p = 0.374 whatever its size), which a reader should know before reading p
NOTE_SOME_IDENTICAL = "{k}/{n} pairs identical"
# one and the same non-zero difference in every pair: no spread, so no t-test (scipy would say p = 0)
NOTE_CONSTANT = "the same difference in every pair: no t-test"
NOTE_DROPPED = "pairs without an AUC left out: {k}"


def t_interval(values, *, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the t-interval of the mean of `values` (NaN bounds with fewer than 2)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    order = np.argsort(q, kind="mergesort")
    adj = np.minimum(np.maximum.accumulate((len(q) - np.arange(len(q))) * q[order]), 1.0)
    res = np.empty(len(q))
    res[order] = adj
    out[ok] = res
    return out


def rel_pct(auc, ref) -> np.ndarray:
    auc, ref = np.asarray(auc, dtype=float), np.asarray(ref, dtype=float)
    return 100.0 * (auc - ref) / ref


def rela_impr(auc, ref) -> np.ndarray:
    """RelaImpr (Yan et al. 2014): the relative gain of AUC above a random guesser's 0.5, in %."""
    auc, ref = np.asarray(auc, dtype=float), np.asarray(ref, dtype=float)
    return 100.0 * ((auc - 0.5) / (ref - 0.5) - 1.0)


def ci_columns(prefix: str, values) -> dict:
    m, lo, hi = t_interval(values)
    return {f"{prefix}_mean": m, f"{prefix}_ci_low": lo, f"{prefix}_ci_high": hi}


def paired(new, ref, *, logloss_new=None, logloss_ref=None) -> dict:
    """Paired comparison of AUCs `new` vs `ref` (one value per seed): the difference, relative %,
    RelaImpr (each mean + 95% t-interval), the logloss difference, paired t and Wilcoxon p-values.
    A pair missing either AUC is left out of all of them (so every number stands on `n_pairs`)."""
    from scipy import stats

    new, ref = np.asarray(new, dtype=float), np.asarray(ref, dtype=float)
    keep = ~(np.isnan(new) | np.isnan(ref))
    new, ref, n = new[keep], ref[keep], int(keep.sum())
    diff = new - ref
    out = {"n_pairs": n, **ci_columns("auc_diff", diff), **ci_columns("rel_pct", rel_pct(new, ref)),
           **ci_columns("relaimpr_pct", rela_impr(new, ref))}
    if logloss_new is not None and logloss_ref is not None:
        ll = np.asarray(logloss_new, dtype=float) - np.asarray(logloss_ref, dtype=float)
        out.update(ci_columns("logloss_diff", ll[keep]))
    spread = n >= 2 and float(np.std(diff)) > 0
    p_t = p_w = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's warnings of ties and few pairs: the notes say what matters
        if spread:
            p_t = float(stats.ttest_rel(new, ref).pvalue)
        if n >= MIN_WILCOXON and np.any(new != ref):
            p_w = float(stats.wilcoxon(new, ref).pvalue)
    return {**out, "p_ttest": p_t, "p_wilcoxon": p_w, "note": _notes(diff, spread=spread, dropped=len(keep) - n)}


def _notes(diff: np.ndarray, *, spread: bool, dropped: int) -> str:
    n, same = len(diff), int((diff == 0).sum())
    notes = [NOTE_FEW] if n < 2 else ([NOTE_NO_WILCOXON] if n < MIN_WILCOXON else [])
    if n and same == n:
        notes.append(NOTE_IDENTICAL)
    elif same:
        notes.append(NOTE_SOME_IDENTICAL.format(k=same, n=n))
    elif n >= 2 and not spread:
        notes.append(NOTE_CONSTANT)
    if dropped:
        notes.append(NOTE_DROPPED.format(k=dropped))
    return "; ".join(notes)


def with_holm(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Add p_holm: the t-test p-values Holm-corrected within each group of `by` (one table's models)."""
    if df.empty or "p_ttest" not in df.columns:
        return df
    df = df.copy()
    df["p_holm"] = np.nan
    for _, g in df.groupby(list(by), dropna=False, sort=False):
        df.loc[g.index, "p_holm"] = holm(g["p_ttest"].to_numpy())
    cols = list(df.columns)
    cols.insert(cols.index("p_ttest") + 1, cols.pop(cols.index("p_holm")))
    return df[cols]
