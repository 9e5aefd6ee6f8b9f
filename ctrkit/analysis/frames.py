"""The tidy frames the paper's figures draw, shaped from the tables (means with 95% t-intervals, or per-seed points)."""
from __future__ import annotations

import pandas as pd

from ctrkit.analysis.tables import TABLES, finetune, partner_points, scratch
from ctrkit.core.utils import CtrkitError

FIGURE_FRAMES = ("gains", "partners", "partner_points", "partner_slopes", "peer_count", "sweep")
COMPARISONS = {"scratch": "from scratch: mutual - alone", "finetune_alone": "finetuning alone - pretrained",
               "finetune": "finetuning: mutual - alone"}


def _gains(source, *, include_exploration: bool) -> pd.DataFrame:
    """Per model and comparison: mean relative % with its 95% t-interval (the gains figure)."""
    parts = []  # `source` as given: a results file's scratch and finetune tables are memoised per version
    sc = scratch(source, include_exploration=include_exploration)
    if len(sc):
        parts.append(sc.assign(comparison=COMPARISONS["scratch"], setting=_setting(sc))[
            ["dataset", "model", "comparison", "setting", "n_pairs", "rel_pct_mean", "rel_pct_ci_low",
             "rel_pct_ci_high"]])
    ft = finetune(source, include_exploration=include_exploration)
    if len(ft):
        ft = ft.assign(setting=_setting(ft))
        base = ["dataset", "model", "setting", "n_pairs"]
        if "alone_gain_rel_pct_mean" in ft:
            a = ft[base + [c for c in ft.columns if c.startswith("alone_gain_rel_pct")]]
            parts.append(a.rename(columns=lambda c: c.replace("alone_gain_", "")).assign(
                comparison=COMPARISONS["finetune_alone"], setting=_setting(ft.assign(weight=None))))
        parts.append(ft[base + ["rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high"]].assign(
            comparison=COMPARISONS["finetune"]))
    cols = ["dataset", "model", "comparison", "setting", "n_pairs", "rel_pct_mean", "rel_pct_ci_low",
            "rel_pct_ci_high"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def _setting(t: pd.DataFrame) -> list[str]:
    """Each row's setting in words (the weight, and the lr scale when finetuning): one figure may
    compare scratch at one weight with finetuning at another, and its legend must say so."""
    out = []
    for _, r in t.iterrows():
        w = f"weight {r['weight']:g}" if pd.notna(r.get("weight")) else ""
        lr = f"lr x{r['finetune_lr_scale']:g}" if pd.notna(r.get("finetune_lr_scale")) else ""
        out.append(", ".join(x for x in (w, lr) if x))
    return out


def figure_frame(source, kind: str, *, dataset: str | None = None, include_exploration: bool = False) -> pd.DataFrame:
    """The tidy frame one figure draws (means with their 95% t-intervals, or the per-seed points),
    for one dataset when given. Kinds: gains (per model: scratch mutual - alone, finetuning alone -
    pretrained, finetuning mutual - alone), partners, partner_points, partner_slopes, peer_count, sweep."""
    if kind not in FIGURE_FRAMES:
        raise CtrkitError(f"unknown figure data {kind!r}; valid: {', '.join(FIGURE_FRAMES)}")
    if kind == "gains":
        df = _gains(source, include_exploration=include_exploration)
    elif kind == "partner_points":
        df = partner_points(source, include_exploration=include_exploration)
    else:
        df = TABLES[kind](source, include_exploration=include_exploration)
    if dataset is not None and "dataset" in df.columns:
        df = df[df["dataset"] == dataset]
    return df.reset_index(drop=True)
