"""Matching treatment runs to their alone controls by seed, and the paired comparison of one treatment.

A treatment (mutual or KD) is compared with the alone records of ONE settings key sharing its
`control_id` (the same peers, batches, schedule and stopping with weight 0), row by row per (peer, seed)
where both started from the same pretrained model. The control may come from another peer set (03's
pairs and 04's subsets share the four-model alone run): a model's alone training does not depend on
the models beside it (`ctrkit.training.rng.dropout_stream`), as long as the run's batch is the same.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ctrkit.analysis.stats import ci_columns, paired, rel_pct
from ctrkit.experiments import designs


def largest_peer_set(df: pd.DataFrame) -> str | None:
    """The main comparison's peer set: the one with most peers (then most records)."""
    if df.empty:
        return None
    sizes = df.groupby("peers").agg(n=("n_peers", "max"), rows=("peer", "size")).reset_index()
    return str(sizes.sort_values(["n", "rows", "peers"], ascending=[False, False, True]).iloc[0]["peers"])


# Two records started from the same pretrained model when their scores of it agree to this (the same
# checkpoint scored twice gives the same number; another checkpoint of the same model does not).
SAME_START_TOL = 1e-9


def control_runs(df: pd.DataFrame, treat: pd.DataFrame) -> pd.DataFrame:
    """The alone records of ONE settings key that controls `treat`: same control fields and the same
    batch as run (where both recorded it: a run's batch is its first peer's preset's unless set); of
    several, the one covering most of its (peer, seed, pretrained start), then the same peer set, then
    the key (deterministic)."""
    cand = df[(df["mode"] == "alone") & (df["control_id"] == treat["control_id"].iloc[0])]
    batch = pd.to_numeric(treat["run_batch_size"], errors="coerce").iloc[0] if "run_batch_size" in treat else np.nan
    if pd.notna(batch) and "run_batch_size" in cand:
        size = pd.to_numeric(cand["run_batch_size"], errors="coerce")
        cand = cand[size.isna() | (size == batch)]
    if cand.empty:
        return cand
    need = _units(treat)
    peers = treat["peers"].iloc[0]
    scores = sorted((-len(need & _units(g)), g["peers"].iloc[0] != peers, key) for key, g in cand.groupby("settings_key"))
    return cand[cand["settings_key"] == scores[0][2]]


def _starts(aucs) -> list:
    """Each record's pretrained start as a comparable key: its pretrained test AUC rounded to the
    tolerance, None from scratch (the one rule both `control_runs` and `seed_pairs` apply)."""
    digits = int(-np.log10(SAME_START_TOL))
    return [None if pd.isna(s) else round(float(s), digits) for s in pd.to_numeric(pd.Series(aucs), errors="coerce")]


def _units(g: pd.DataFrame) -> set:
    """(peer, seed, pretrained start) of each record."""
    start = g["pretrained_test_auc"] if "pretrained_test_auc" in g else [np.nan] * len(g)
    return set(zip(g["peer"], g["seed"], _starts(start)))


def seed_pairs(treat: pd.DataFrame, ctrl: pd.DataFrame) -> pd.DataFrame:
    """Treatment and control rows side by side per (peer, seed): `*_t` and `*_c` columns."""
    cols = ["peer", "seed", "test_auc", "test_logloss", "valid_auc", "pretrained_test_auc", "epochs", "best_epoch",
            "epoch_cap_hit"]
    cols = [c for c in cols if c in treat.columns and c in ctrl.columns]
    t = treat[cols + ["model"]].drop_duplicates(["peer", "seed"], keep="last")
    c = ctrl[cols].drop_duplicates(["peer", "seed"], keep="last")
    m = t.merge(c, on=["peer", "seed"], suffixes=("_t", "_c"))
    if "pretrained_test_auc_t" in m:
        m = m[same_start(m)]
    return m.assign(_r=paper_order(m["peer"])).sort_values(["_r", "peer", "seed"]).drop(columns="_r")


def same_start(m: pd.DataFrame) -> pd.Series:
    """Which treatment/control pairs (`pretrained_test_auc_t`, `_c` side by side) started from the same
    model, both from scratch included: a pair of two checkpoint folders compares the checkpoints."""
    same = [a == b for a, b in zip(_starts(m["pretrained_test_auc_t"]), _starts(m["pretrained_test_auc_c"]))]
    return pd.Series(same, index=m.index, dtype=bool)  # a Series: an empty list would select columns


def paper_order(labels: pd.Series) -> pd.Series:
    """Sort key: the paper's models in the paper's order, anything else after them."""
    order = {m: i for i, m in enumerate(designs.PAPER_MODELS)}
    return labels.map(lambda v: order.get(v, len(order)))


def setting_columns(g: pd.DataFrame) -> dict:
    r = g.iloc[0]
    # a record without a divergence (hand-made, older) reads None from JSONL and NaN from a CSV export: one value
    div = None if pd.isna(r["divergence"]) else r["divergence"]
    return {"weight": r["weight"], "divergence": div, "finetune_lr_scale": r["finetune_lr_scale"],
            "finetune_epochs": r["finetune_epochs"], "amp": r["amp"]}


def versus_alone(df: pd.DataFrame, treat: pd.DataFrame) -> list[dict]:
    """One row per peer of one treatment settings key: mutual - alone (paired) and both arms' gains
    over the pretrained model they started from."""
    m = seed_pairs(treat, control_runs(df, treat))
    rows = []
    for peer, g in m.groupby("peer", sort=False):
        row = {"peer": peer, "model": g["model_t"].iloc[0] if "model_t" in g else g["model"].iloc[0],
               "pretrained_auc_mean": float(g["pretrained_test_auc_t"].mean()),
               "alone_auc_mean": float(g["test_auc_c"].mean()), "mutual_auc_mean": float(g["test_auc_t"].mean())}
        row.update(paired(g["test_auc_t"], g["test_auc_c"], logloss_new=g["test_logloss_t"],
                          logloss_ref=g["test_logloss_c"]))
        if g["pretrained_test_auc_t"].notna().all():
            row.update(ci_columns("mutual_gain_rel_pct", rel_pct(g["test_auc_t"], g["pretrained_test_auc_t"])))
            row.update(ci_columns("alone_gain_rel_pct", rel_pct(g["test_auc_c"], g["pretrained_test_auc_c"])))
        row.update(_convergence(g))
        rows.append(row)
    return rows


def _convergence(g: pd.DataFrame) -> dict:
    """Per arm of one peer's pairs: the epochs run (max), how many runs stopped at the epoch cap, and
    for finetuning how many kept their pretrained weights (best epoch 0: no epoch beat the checkpoint,
    so that arm is in effect the pretrained model); `flag` says it in words, empty when nothing is."""
    out, cap_words, kept_words = {}, [], []
    finetuning = "pretrained_test_auc_t" in g and g["pretrained_test_auc_t"].notna().all()
    for arm, s in (("mutual", "_t"), ("alone", "_c")):
        epochs = pd.to_numeric(g.get(f"epochs{s}"), errors="coerce") if f"epochs{s}" in g else pd.Series(dtype=float)
        cap = g[f"epoch_cap_hit{s}"] if f"epoch_cap_hit{s}" in g else pd.Series(dtype=object)
        out[f"{arm}_epochs_max"] = float(epochs.max()) if epochs.notna().any() else float("nan")
        out[f"n_cap_hit_{arm}"] = int((cap == True).sum())  # noqa: E712 (None in older records: unknown)
        if out[f"n_cap_hit_{arm}"]:
            cap_words.append(f"{arm} {out[f'n_cap_hit_{arm}']}/{len(g)}")
        if finetuning:
            best = pd.to_numeric(g.get(f"best_epoch{s}"), errors="coerce") if f"best_epoch{s}" in g else None
            kept = int((best == 0).sum()) if best is not None else 0
            out[f"n_kept_pretrained_{arm}"] = kept if best is not None and best.notna().any() else float("nan")
            if kept:
                kept_words.append(f"{arm} {kept}/{len(g)}")
    # a finetuning run stops at its checkpoint's patience or at finetune_epochs: reaching the cap means
    # early stopping never ended it (converged or not, it might have gone on), said apart from pretraining's
    cap_said = "finetuning epoch cap hit" if finetuning else "epoch cap hit"
    out["flag"] = "; ".join(([f"{cap_said}: {', '.join(cap_words)}"] if cap_words else [])
                            + ([f"kept the pretrained weights (best epoch 0): {', '.join(kept_words)}"]
                               if kept_words else []))
    return out
