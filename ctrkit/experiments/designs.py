"""Experimental designs as pure functions: which peer sets to run, and which setting a sweep chose.

- Peer count without confounding: for a target model and N peers, the partners are *every* subset of
  size N - 1 of the other models of the pool, so the mean over subsets does not depend on which
  models happen to join first (`partner_subsets`, `peer_count_sets`).
- Sweep selection on validation only: the test split never chooses a setting (`choose_on_validation`).
- A search that brackets its choice: where the chosen value is the largest or smallest tried
  (`edges`), the next candidates step one further out (`beyond_edges`).

Nothing here trains or reads files; `ctrkit.analysis.tables` and the notebooks call these on tidy frames.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
import pandas as pd

from ctrkit.core.utils import CtrkitError, as_int, as_number

# The paper's four models: the default pool of the peer-count and partner designs (FM/LR are not
# among the paper's models, so they never enter a peer set unless asked for).
PAPER_MODELS = ("DeepFM", "DCN", "PNN", "FiBiNET")
# What a sweep varies; a setting is one value of each.
SWEEP_KEYS = ("weight", "finetune_lr_scale")
# One step past a search's edge: x3 (or /3), half a decade, the spacing of the usual lr and regularizer
# grids (1e-3, 3e-3, 1e-2, ...): small enough not to skip the optimum, large enough to leave the plateau.
WIDEN_FACTOR = 3.0


def _pool(pool: Sequence[str]) -> list[str]:
    pool = list(pool)
    if len(set(pool)) != len(pool) or not pool:
        raise CtrkitError(f"peer pool must be non-empty and without repeats, got {pool}")
    return pool


def partner_subsets(*, target: str, pool: Sequence[str] = PAPER_MODELS, n_peers: int) -> list[tuple[str, ...]]:
    """Every set of partners of `target` in a run of `n_peers` peers: the subsets of size n_peers - 1
    of the pool without the target, in pool order. n_peers = 1 gives [()] (the alone control)."""
    pool = _pool(pool)
    others = [m for m in pool if m != target]
    if as_int(n_peers) is None or not 1 <= n_peers <= len(others) + 1:
        raise CtrkitError(f"n_peers must be an integer in 1..{len(others) + 1} for target {target!r} "
                          f"and pool {pool}, got {n_peers!r}")
    return list(itertools.combinations(others, int(n_peers) - 1))


def peer_set(*, target: str, partners: Sequence[str], pool: Sequence[str] = PAPER_MODELS) -> list[str]:
    """The run a (target, partners) design point is measured in, peers in pool order, so that one
    run serves every member as a target (DeepFM+DCN is DeepFM's partner run and DCN's)."""
    members = {target, *partners}
    order = _pool(pool)
    missing = sorted(members - set(order))
    if missing:
        raise CtrkitError(f"peer set {sorted(members)}: {missing} not in the pool {order}")
    return [m for m in order if m in members]


def peer_count_sets(*, pool: Sequence[str] = PAPER_MODELS, max_peers: int | None = None) -> list[list[str]]:
    """The runs of the peer-count design: every subset of the pool of 2..max_peers models (default:
    the whole pool), smallest first. With these, every target has all its partner subsets for every N."""
    pool = _pool(pool)
    top = len(pool) if max_peers is None else max_peers
    if as_int(top) is None or not 2 <= top <= len(pool):
        raise CtrkitError(f"max_peers must be an integer in 2..{len(pool)}, got {max_peers!r}")
    return [list(c) for n in range(2, int(top) + 1) for c in itertools.combinations(pool, n)]


def sweep_grid(*, weights: Sequence[float], lr_scales: Sequence[float]) -> list[dict]:
    """The settings of a sweep, one dict per (weight, finetune_lr_scale), weights outermost."""
    if not weights or not lr_scales:
        raise CtrkitError(f"a sweep needs at least one weight and one lr scale, got {weights!r} x {lr_scales!r}")
    for name, values in (("weight", weights), ("finetune_lr_scale", lr_scales)):
        if any(as_number(v) is None or not 0 <= v < math.inf for v in values):  # NaN, inf and True too
            raise CtrkitError(f"sweep {name} values must be non-negative numbers, got {list(values)}")
    return [{"weight": float(w), "finetune_lr_scale": float(s)} for w in weights for s in lr_scales]


def choose_on_validation(frame: pd.DataFrame, *, keys: Sequence[str] = SWEEP_KEYS, metric: str = "valid_auc",
                         tiebreak: str | None = "valid_logloss", by: Sequence[str] = ()) -> pd.DataFrame:
    """The setting (one value per `keys`) with the best mean validation `metric` over the frame's rows
    (peers x seeds), per group of `by`. Only validation columns are read: the test split never chooses.

    Ties (equal mean metric) go to the lower mean `tiebreak` (a loss), then to the smaller key values.
    Returns one row per group: the `by` columns, the chosen `keys`, `selection_<metric>` (its mean),
    `n_settings` (how many were compared) and `n_rows` (rows behind the chosen mean).
    """
    keys, by = list(keys), list(by)
    if not metric.startswith("valid") or (tiebreak and not tiebreak.startswith("valid")):
        raise CtrkitError(f"choose_on_validation selects on validation columns only, got {metric!r}/{tiebreak!r}")
    need = keys + by + [metric] + ([tiebreak] if tiebreak else [])
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise CtrkitError(f"choose_on_validation: missing column(s) {missing}")
    df = frame.dropna(subset=keys + [metric])
    if df.empty:
        return pd.DataFrame(columns=by + keys + [f"selection_{metric}", "n_settings", "n_rows"])
    agg = {"score": (metric, "mean"), "n_rows": (metric, "size")}
    if tiebreak:
        agg["loss"] = (tiebreak, "mean")
    means = df.groupby(by + keys, dropna=False, as_index=False).agg(**agg)
    if not tiebreak:
        means["loss"] = 0.0
    rows = []
    groups = means.groupby(by, dropna=False, sort=True) if by else [((), means)]
    for _, g in groups:
        # best score first, then the lower loss, then the smaller settings (deterministic)
        g = g.sort_values(["score", "loss", *keys], ascending=[False, True, *[True] * len(keys)], kind="mergesort")
        best = g.iloc[0]
        rows.append({**{c: best[c] for c in by + keys}, f"selection_{metric}": float(best["score"]),
                     "n_settings": len(g), "n_rows": int(best["n_rows"])})
    return pd.DataFrame(rows)


def edges(chosen: dict[str, float | None], tried: Sequence[dict[str, float | None]]) -> dict[str, str]:
    """The keys whose chosen number is the largest or the smallest of the two or more distinct numbers
    tried for it: {key: "largest" | "smallest"}. The best may lie beyond such a value: the search did
    not bracket it. None (a key a candidate leaves unset, a non-number) is not a value."""
    out = {}
    for key, v in chosen.items():
        values = {x for t in tried if (x := t.get(key)) is not None}
        if v is not None and len(values) >= 2 and v in (max(values), min(values)):
            out[key] = "largest" if v == max(values) else "smallest"
    return out


def beyond_edges(chosen: dict[str, float | None], tried: Sequence[dict[str, float | None]], *,
                 factor: float = WIDEN_FACTOR) -> list[dict[str, float]]:
    """The next candidates of a search whose choice sits at an edge (`edges`): per such key, in the
    chosen's order, the chosen values with that key one step further out (x `factor` past the largest,
    / `factor` past the smallest, to 3 significant digits), leaving out a candidate already tried
    (e.g. 0 divided again)."""
    if not factor > 1:
        raise CtrkitError(f"beyond_edges: factor must be > 1, got {factor!r}")
    out = []
    for key, side in edges(chosen, tried).items():
        value = float(f"{chosen[key] * factor if side == 'largest' else chosen[key] / factor:.3g}")
        cand = {**chosen, key: value}
        if cand not in [*tried, *out]:
            out.append(cand)
    return out


def best_model(frame: pd.DataFrame, *, model: str = "model", metric: str = "valid_auc") -> str:
    """The model with the best mean validation metric (e.g. the KD teacher among the baselines)."""
    if metric not in frame.columns or model not in frame.columns or frame[metric].notna().sum() == 0:
        raise CtrkitError(f"best_model: need columns {model!r} and {metric!r} with values")
    if not metric.startswith("valid"):
        raise CtrkitError(f"best_model chooses on validation columns only, got {metric!r}")
    means = frame.dropna(subset=[metric]).groupby(model)[metric].mean()
    return str(means.sort_index().idxmax())


def seeds_for_half_width(*, sd: float, half_width: float, level: float = 0.95, max_seeds: int = 1000) -> int | None:
    """The fewest seeds n for which the t-interval of a mean of paired differences with standard
    deviation `sd` has a half-width of at most `half_width`: t_{(1+level)/2, n-1} sd / sqrt(n) <= it.
    None when even `max_seeds` is not enough (or sd is not a finite number)."""
    from scipy import stats

    if not np.isfinite(sd) or sd < 0 or half_width <= 0:
        return None
    for n in range(2, max_seeds + 1):
        if stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n) <= half_width:
            return n
    return None
