"""Paired statistics of per-seed results: t-intervals, paired tests, Holm correction, relative gains.

Every headline number is a paired difference of one value per seed; its 95% confidence interval is
the paired t-interval (scipy.stats.t), p the paired t-test, Holm-corrected across the rows of a table
(`with_holm`); Wilcoxon only with >= 6 pairs. Relative % = 100 (AUC - AUC_ref) / AUC_ref and
RelaImpr = 100 ((AUC - 0.5) / (AUC_ref - 0.5) - 1), per seed, then averaged. A null result comes with
its power: `mde`, the smallest true effect the same test would have found with 80% power.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

LEVEL = 0.95
POWER = 0.80
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


def _power(nc: float, df: int, crit: float) -> float:
    from scipy import stats

    # the far tail (a significant result of the wrong sign) underflows to NaN in scipy for large nc
    return float(stats.nct.sf(crit, df, nc) + np.nan_to_num(stats.nct.cdf(-crit, df, nc)))


def _spread(values) -> tuple[float, int]:
    """(the SD of the non-NaN `values`, 0.0 with fewer than 2; how many there are)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return (float(v.std(ddof=1)) if len(v) >= 2 else 0.0), len(v)


def mde(values, *, level: float = LEVEL, power: float = POWER) -> float:
    """The minimum detectable effect: the smallest true mean that a two-sided one-sample (paired) t-test
    at alpha = 1 - `level` finds with probability `power`, with as many values as `values` and their
    standard deviation taken as the true one (noncentral t). What a null result at this size rules out:
    an effect below it could well have been missed. Uncorrected alpha, so under Holm it is larger still.
    NaN with fewer than 2 values or no spread."""
    return mde_for_spread(*_spread(values), level=level, power=power)


def mde_for_spread(sd: float, n: int, *, level: float = LEVEL, power: float = POWER) -> float:
    """`mde` of `n` pairs whose differences have standard deviation `sd`."""
    from scipy import optimize, stats

    if n < 2 or not sd > 0:
        return float("nan")
    df = n - 1
    crit = float(stats.t.ppf(0.5 + level / 2, df))
    high = 2 * crit + 4.0
    while _power(high, df, crit) < power:  # two values (one df) need a noncentrality near 25
        high *= 2
    nc = optimize.brentq(lambda x: _power(x, df, crit) - power, 0.0, high, xtol=1e-10)
    return nc * sd / float(np.sqrt(n))


def sd_of_interval(low: float, high: float, n: int, *, level: float = LEVEL) -> float:
    """The SD of the `n` per-seed values behind a printed paired t-interval (`level`): its half-width
    is t * sd / sqrt(n). NaN with fewer than 2 pairs."""
    from scipy import stats

    if n < 2:
        return float("nan")
    return (high - low) / 2 / float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(np.sqrt(n))


def sd_upper(sd: float, n: int, *, level: float = LEVEL) -> float:
    """The one-sided upper `level` confidence bound of a normal population's SD from the sample SD `sd`
    of `n` values (chi-square): a few seeds' SD is itself uncertain (at 5 seeds the true SD may be up to
    2.37x the sample's), so an MDE at this SD is what the pairs rule out with that confidence too."""
    from scipy import stats

    if n < 2 or np.isnan(sd):
        return float("nan")
    return float(sd * np.sqrt((n - 1) / stats.chi2.ppf(1 - level, n - 1)))


def mde_of_interval(low: float, high: float, n: int, *, level: float = LEVEL, power: float = POWER) -> float:
    """`mde` from a published paired t-interval (`level`) of `n` pairs, as the tables print it, without
    the per-seed values."""
    return mde_for_spread(sd_of_interval(low, high, n, level=level), n, level=level, power=power)


def seeds_needed(values, effect: float, *, level: float = LEVEL, power: float = POWER, most: int = 10_000) -> int:
    """How many pairs the paired t-test needs to find a true mean of `effect` with probability `power`,
    at the spread of `values` (e.g. the per-seed rel % of a pilot run, against the paper's claimed gain);
    0 when `values` has fewer than 2 values or no spread, `most` + 1 when even `most` pairs are not enough."""
    return seeds_for_spread(_spread(values)[0], effect, level=level, power=power, most=most)


def seeds_for_spread(sd: float, effect: float, *, level: float = LEVEL, power: float = POWER, most: int = 10_000) -> int:
    """`seeds_needed` from the standard deviation of the per-seed differences (0 without a spread)."""
    if not sd > 0 or effect == 0:
        return 0 if not sd > 0 else most + 1
    from scipy import stats

    def enough(n: int) -> bool:
        crit = float(stats.t.ppf(0.5 + level / 2, n - 1))
        return _power(abs(effect) * np.sqrt(n) / sd, n - 1, crit) >= power - 1e-9  # float noise at the boundary

    if not enough(most):
        return most + 1
    lo, hi = 2, most  # power grows with n: the smallest n that is enough, by bisection
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return lo


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
    diff, rel = new - ref, rel_pct(new, ref)
    out = {"n_pairs": n, **ci_columns("auc_diff", diff), **ci_columns("rel_pct", rel), "rel_pct_mde": mde(rel),
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


def differences(diff, *, prefix: str) -> dict:
    """The paired comparison of per-seed differences already taken (e.g. one seed's gain at one model
    size minus the same seed's gain at another): their mean [95% t-interval], `mde`, the one-sample
    t-test against 0 (the paired t-test of the two sides) and `paired`'s notes; NaN left out."""
    from scipy import stats

    d = np.asarray(diff, dtype=float)
    keep = ~np.isnan(d)
    d, n = d[keep], int(keep.sum())
    spread = n >= 2 and float(np.std(d)) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(stats.ttest_1samp(d, 0.0).pvalue) if spread else float("nan")
    return {"n_pairs": n, **ci_columns(prefix, d), f"{prefix}_mde": mde(d), "p_ttest": p,
            "note": _notes(d, spread=spread, dropped=len(keep) - n, wilcoxon=False)}  # (no Wilcoxon here)


def _notes(diff: np.ndarray, *, spread: bool, dropped: int, wilcoxon: bool = True) -> str:
    n, same = len(diff), int((diff == 0).sum())
    notes = [NOTE_FEW] if n < 2 else ([NOTE_NO_WILCOXON] if n < MIN_WILCOXON and wilcoxon else [])
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
