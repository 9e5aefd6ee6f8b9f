"""The mutual-finetuning gain against the baseline's strength: the headline at several model sizes side by side.

Each size is a model preset (`ctrkit.training.presets`) with its own records (a store, a results CSV or a
frame): `table()` keeps each source's records of that preset only, so mutual and alone finetuning are
paired by seed within one size (never a full-size mutual run against a small alone run of the same
seed), at the setting the size's own sweep chose on validation (its only setting when it has none).
`display()` is the side-by-side form; `table()` is also what `ctrkit.analysis.plots.gain_vs_strength` draws
(gain with its 95% paired t-interval against the pretrained test AUC, per model and size).
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from ctrkit.analysis import records, tables
from ctrkit.core.utils import CtrkitError

COLUMNS = ["size", "dataset", "model", "peer", "n_pairs", "pretrained_auc_mean", "alone_auc_mean",
           "mutual_auc_mean", "auc_diff_mean", "auc_diff_ci_low", "auc_diff_ci_high", "rel_pct_mean",
           "rel_pct_ci_low", "rel_pct_ci_high", "p_holm", "weight", "finetune_lr_scale", "chosen_on", "flag"]


def table(sources: Mapping[str, object], *, dataset: str | None = None) -> pd.DataFrame:
    """One row per size and model: mutual - alone finetuning (paired by seed within the size) and the
    pretrained test AUC both arms started from. `sources`: {preset name: store, CSV or frame}, in the
    order the sizes are shown; a source may hold other presets' records too (they are left out)."""
    if not sources:
        raise CtrkitError("strength table: no sizes given")
    out = []
    for size, source in sources.items():
        df = records.records(source, dataset=dataset)
        df = df[df["preset"].astype(str) == str(size)]
        ft = tables.finetune(df) if len(df) else pd.DataFrame()
        if ft.empty:
            continue
        out.append(ft.assign(size=size)[[c for c in COLUMNS if c in ft.columns or c == "size"]])
    if not out:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(out, ignore_index=True).reindex(columns=COLUMNS)


def _interval(r, prefix: str, fmt: str) -> str:
    m, lo, hi = r[f"{prefix}_mean"], r[f"{prefix}_ci_low"], r[f"{prefix}_ci_high"]
    return "" if pd.isna(m) else f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def display(df: pd.DataFrame) -> pd.DataFrame:
    """The side-by-side form: one row per model, per size its pretrained AUC and its gain
    (relative % with the 95% paired t-interval, the pairs it rests on)."""
    if df.empty:
        return pd.DataFrame()
    sizes = list(dict.fromkeys(df["size"]))
    rows = {}
    for r in df.itertuples(index=False):
        r = r._asdict()
        row = rows.setdefault((r["dataset"], r["peer"]), {"dataset": r["dataset"], "model": r["peer"]})
        row[f"{r['size']}: pretrained AUC"] = f"{r['pretrained_auc_mean']:.4f}"
        row[f"{r['size']}: mutual - alone (rel. %)"] = _interval(r, "rel_pct", "+.3f")
        row[f"{r['size']}: pairs"] = int(r["n_pairs"])
    cols = ["dataset", "model"] + [f"{s}: {c}" for s in sizes
                                   for c in ("pretrained AUC", "mutual - alone (rel. %)", "pairs")]
    return pd.DataFrame(list(rows.values())).reindex(columns=cols).fillna("")


__all__ = ["COLUMNS", "table", "display"]
