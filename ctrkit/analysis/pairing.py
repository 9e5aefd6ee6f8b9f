"""Matching treatment runs to their alone controls by seed, and the paired comparison of one treatment.

A treatment (mutual or KD) is compared with the alone records of ONE settings key sharing its
`control_id` (the same peers, batches, schedule and stopping with weight 0), row by row per (peer, seed).
"""
from __future__ import annotations

import pandas as pd

from ctrkit.analysis.stats import ci_columns, paired, rel_pct
from ctrkit.experiments import designs


def largest_peer_set(df: pd.DataFrame) -> str | None:
    """The main comparison's peer set: the one with most peers (then most records)."""
    if df.empty:
        return None
    sizes = df.groupby("peers").agg(n=("n_peers", "max"), rows=("peer", "size")).reset_index()
    return str(sizes.sort_values(["n", "rows", "peers"], ascending=[False, False, True]).iloc[0]["peers"])


def control_runs(df: pd.DataFrame, treat: pd.DataFrame) -> pd.DataFrame:
    """The alone records of ONE settings key that controls `treat`: same control fields; of several,
    the one covering most (peer, seed) pairs, then the same peer set, then the key (deterministic)."""
    cand = df[(df["mode"] == "alone") & (df["control_id"] == treat["control_id"].iloc[0])]
    if cand.empty:
        return cand
    need = set(zip(treat["peer"], treat["seed"]))
    peers = treat["peers"].iloc[0]
    scores = sorted((-len(need & set(zip(g["peer"], g["seed"]))), g["peers"].iloc[0] != peers, key)
                    for key, g in cand.groupby("settings_key"))
    return cand[cand["settings_key"] == scores[0][2]]


def seed_pairs(treat: pd.DataFrame, ctrl: pd.DataFrame) -> pd.DataFrame:
    """Treatment and control rows side by side per (peer, seed): `*_t` and `*_c` columns."""
    cols = ["peer", "seed", "test_auc", "test_logloss", "valid_auc", "pretrained_test_auc"]
    t = treat[cols + ["model"]].drop_duplicates(["peer", "seed"], keep="last")
    c = ctrl[cols].drop_duplicates(["peer", "seed"], keep="last")
    m = t.merge(c, on=["peer", "seed"], suffixes=("_t", "_c"))
    return m.assign(_r=paper_order(m["peer"])).sort_values(["_r", "peer", "seed"]).drop(columns="_r")


def paper_order(labels: pd.Series) -> pd.Series:
    """Sort key: the paper's models in the paper's order, anything else after them."""
    order = {m: i for i, m in enumerate(designs.PAPER_MODELS)}
    return labels.map(lambda v: order.get(v, len(order)))


def setting_columns(g: pd.DataFrame) -> dict:
    r = g.iloc[0]
    return {"weight": r["weight"], "finetune_lr_scale": r["finetune_lr_scale"],
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
            row.update(ci_columns("alone_gain_rel_pct", rel_pct(g["test_auc_c"], g["pretrained_test_auc_t"])))
        rows.append(row)
    return rows
