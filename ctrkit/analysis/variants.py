"""The variants table: the relatives of mutual learning side by side, each minus its alone control,
with prediction churn.

Variants (per model, finetuning and from scratch, separate or one shared embedding table):
mutual (MSE: the paper; KL: deep mutual learning), the ensemble teacher, EKTF, KD from the best
pretrained model (students only), and "shared table" (the shared-embedding alone run minus the
separate one: what sharing alone does). Each is paired by seed with the `alone` run of the same
init, embedding sharing and schedule (same batches, steps and stopping, weight 0), so no gain is the
extra training's or the LR schedule's. 95% paired t-intervals, p Holm-corrected across the table.

Churn (`ctrkit.experiments.churn`): `peers_*` is a run's disagreement between its peers (recorded
per peer, the mean over its partners); `seeds_*` between two seeds of the same configuration and
model, from the saved test predictions, over consecutive seed pairs (s1, s2), (s2, s3), ... (they
share seeds, so the interval of their difference is approximate). Each with the treatment's value,
the control's, and the paired difference treatment - control with its 95% t-interval.

Only the runs of one peer set (`models`, in any order) and of the given settings enter: the
finetuning weight and lr scale (`finetune`, the sweep's choice) and the weight from scratch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ctrkit.analysis.pairing import same_start
from ctrkit.analysis.records import CONTROL_FIELDS, EXPLORATION, records
from ctrkit.analysis.stats import ci_columns, paired, rel_pct, with_holm
from ctrkit.experiments import churn

__all__ = ["VARIANTS", "pairs", "seed_churn", "table", "figure_frame"]

# (label, mode, divergence) in the table's order; "shared table" is alone (shared) - alone (separate).
VARIANTS = (("mutual (MSE)", "mutual", "mse"), ("mutual (KL)", "mutual", "kl"),
            ("ensemble teacher", "ensemble_teacher", None), ("EKTF", "ektf", None), ("KD from the best", "kd", None))
SHARED_TABLE = "shared table"
INITS = (("pretrained", "finetune"), ("scratch", "from scratch"))
# The figure's tick labels (14 comparisons side by side): variant, init, "shared" for one table.
SHORT = {"mutual (MSE)": "MSE", "mutual (KL)": "KL", "ensemble teacher": "ens", "KD from the best": "KD",
         SHARED_TABLE: "table", "finetune": "FT", "from scratch": "scratch"}
_FINETUNE_FIELDS = ("finetune_lr_scale", "finetune_epochs", "finetune_monitor")
_KEEP = ["peer", "seed", "model", "run_key", "test_auc", "test_logloss", "pretrained_test_auc", "peer_churn_abs",
         "peer_churn_top10"]


def _frame(source, dataset: str, models: Sequence[str]) -> pd.DataFrame:
    df = records(source, include_exploration=True, dataset=dataset)
    df = df[df["tag"].astype(str) != EXPLORATION]
    want = sorted(models)
    df = df[df["peers"].map(lambda s: sorted(str(s).split("+")) == want)].copy()
    share = df["share_embedding"] if "share_embedding" in df.columns else pd.Series(False, index=df.index)
    df["embedding"] = np.where(share.fillna(False).astype(bool), "shared", "separate")
    for c in ("peer_churn_abs", "peer_churn_top10"):
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df.columns else np.nan
    return df


def _one_setting(g: pd.DataFrame) -> pd.DataFrame:
    """Of several settings keys left, the one with most records (then the key): deterministic."""
    if g.empty:
        return g
    sizes = g.groupby("settings_key").size().reset_index(name="n").sort_values(["n", "settings_key"],
                                                                               ascending=[False, True])
    return g[g["settings_key"] == sizes.iloc[0]["settings_key"]]


def _fields(g: pd.DataFrame, names: Sequence[str]) -> list:
    """A run's values of `names`, comparable (missing -> None, everything else as text)."""
    return [None if not isinstance(v, (dict, list)) and pd.isna(v) else str(v) for v in g[list(names)].iloc[0]]


def _arms(df: pd.DataFrame, init: str, finetune: dict, scratch_weight: float) -> dict:
    """{(variant, embedding): (treatment records, control records)} of one init."""
    d = df[df["init"] == init]
    if init == "pretrained":
        d = d[np.isclose(pd.to_numeric(d["finetune_lr_scale"]), float(finetune["finetune_lr_scale"]))]
        weight = float(finetune["weight"])
    else:
        weight = float(scratch_weight)
    fields = [f for f in CONTROL_FIELDS if init == "pretrained" or f not in _FINETUNE_FIELDS]
    alone = {e: _one_setting(d[(d["mode"] == "alone") & (d["embedding"] == e)]) for e in ("separate", "shared")}
    out = {}
    for label, mode, div in VARIANTS:
        for emb in ("separate", "shared"):
            t = d[(d["mode"] == mode) & (d["embedding"] == emb) & np.isclose(d["weight"], weight)]
            t = _one_setting(t[t["divergence"] == div] if div else t)
            c = alone[emb]
            if t.empty or c.empty:
                continue
            if _fields(t, fields) == _fields(c, fields):  # the same schedule, batches and stopping; otherwise no control
                out[(label, emb)] = (t[t["peer_index"] != 0] if mode == "kd" else t, c)
    same = [f for f in fields if f != "share_embedding"]  # the one difference this row measures
    if not alone["shared"].empty and not alone["separate"].empty and \
            _fields(alone["shared"], same) == _fields(alone["separate"], same):
        out[(SHARED_TABLE, "shared")] = (alone["shared"], alone["separate"])
    return out


def pairs(source, *, dataset: str, models: Sequence[str], finetune: dict, scratch_weight: float = 1.0,
          predictions=None) -> pd.DataFrame:
    """One row per (init, embedding, variant, model, seed): treatment `*_t` and control `*_c` side by
    side (test AUC, logloss, peer churn, run keys). `finetune`: {"weight", "finetune_lr_scale"} of
    the finetuning runs (the sweep's choice); `predictions`: unused here, see `seed_churn`."""
    df = _frame(source, dataset, models)
    rows = []
    for init, init_label in INITS:
        for (variant, emb), (t, c) in _arms(df, init, finetune, scratch_weight).items():
            m = t[_KEEP].drop_duplicates(["peer", "seed"], keep="last").merge(
                c[_KEEP].drop_duplicates(["peer", "seed"], keep="last"), on=["peer", "seed"], suffixes=("_t", "_c"))
            m = m[same_start(m)]  # as every table's pairs: both arms from the same checkpoint
            rows.append(m.assign(dataset=dataset, init=init_label, embedding=emb, variant=variant,
                                 weight=float(t["weight"].iloc[0]), model=m["model_t"]))
    cols = ["dataset", "init", "embedding", "variant", "weight", "model", "peer", "seed"]
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.concat(rows, ignore_index=True)
    return out[cols + [c for c in out.columns if c not in cols and c not in ("model_t", "model_c")]]


def seed_churn(p: pd.DataFrame, predictions) -> pd.DataFrame:
    """Churn between consecutive seeds of each (variant, model), treatment and control, from the test
    predictions saved in `predictions` (`ctrkit.experiments.churn.predictions_dir(store)`); pairs of
    seeds with a missing prediction file are left out."""
    rows = []
    keys = ["dataset", "init", "embedding", "variant", "model", "peer"]
    for key, g in p.groupby(keys, sort=False):
        g = g.sort_values("seed")
        for a, b in zip(g.itertuples(), g.iloc[1:].itertuples()):
            row = dict(zip(keys, key), seed_a=a.seed, seed_b=b.seed)
            for arm in ("t", "c"):
                pa = churn.load_predictions(predictions, getattr(a, f"run_key_{arm}"), a.peer)
                pb = churn.load_predictions(predictions, getattr(b, f"run_key_{arm}"), b.peer)
                if pa is None or pb is None:
                    break
                c = churn.churn(pa, pb)
                row.update({f"seeds_abs_{arm}": c["mean_abs"], f"seeds_top10_{arm}": c["top_decile_flip"]})
            else:
                rows.append(row)
    return pd.DataFrame(rows, columns=keys + ["seed_a", "seed_b", "seeds_abs_t", "seeds_top10_t", "seeds_abs_c",
                                              "seeds_top10_c"])


def _churn_columns(prefix: str, t, c) -> dict:
    t, c = np.asarray(t, dtype=float), np.asarray(c, dtype=float)
    ok = ~(np.isnan(t) | np.isnan(c))
    return {f"{prefix}_t": float(np.mean(t[ok])) if ok.any() else np.nan,
            f"{prefix}_c": float(np.mean(c[ok])) if ok.any() else np.nan,
            **ci_columns(f"{prefix}_diff", t[ok] - c[ok])}


def table(p: pd.DataFrame, seeds: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (dataset, init, embedding, variant, model): treatment - alone paired by seed (AUC
    difference, relative %, logloss difference, each with its 95% t-interval; paired t-test, Holm
    across the table), and the churn columns (`peers_*` within runs, `seeds_*` between seeds)."""
    keys = ["dataset", "init", "embedding", "variant", "model"]
    rows = []
    for key, g in p.groupby(keys, sort=False):
        row = {**dict(zip(keys, key)), "weight": g["weight"].iloc[0], "auc_t_mean": float(g["test_auc_t"].mean()),
               "auc_c_mean": float(g["test_auc_c"].mean())}
        row.update(paired(g["test_auc_t"], g["test_auc_c"], logloss_new=g["test_logloss_t"],
                          logloss_ref=g["test_logloss_c"]))
        row.update(_churn_columns("peers_abs", g["peer_churn_abs_t"], g["peer_churn_abs_c"]))
        row.update(_churn_columns("peers_top10", g["peer_churn_top10_t"], g["peer_churn_top10_c"]))
        s = seeds[(seeds[keys] == pd.Series(dict(zip(keys, key)))).all(axis=1)] if seeds is not None and len(seeds) \
            else pd.DataFrame(columns=["seeds_abs_t", "seeds_abs_c", "seeds_top10_t", "seeds_top10_c"])
        row.update(_churn_columns("seeds_abs", s["seeds_abs_t"], s["seeds_abs_c"]))
        row.update(_churn_columns("seeds_top10", s["seeds_top10_t"], s["seeds_top10_c"]))
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=keys)
    return with_holm(pd.DataFrame(rows), ["dataset"])


def figure_frame(t: pd.DataFrame) -> pd.DataFrame:
    """What the variants figure draws: per model and comparison (variant, init, embedding, in `SHORT`
    words: MSE/KL mutual, ens(emble teacher), EKTF, KD, table = sharing alone; FT = finetuning), the
    mean relative % with its 95% t-interval (the shape `ctrkit.analysis.plots.paired_gains` reads; `init`
    its panels)."""
    cols = ["dataset", "model", "init", "comparison", "setting", "n_pairs", "rel_pct_mean", "rel_pct_ci_low",
            "rel_pct_ci_high"]
    if t.empty:
        return pd.DataFrame(columns=cols)
    comp = (t["variant"].map(lambda v: SHORT.get(v, v)) + "\n" + t["init"].map(lambda v: SHORT.get(v, v))
            + np.where(t["embedding"] == "shared", "\nshared", ""))
    return t.assign(comparison=comp, setting="")[cols]


def per_seed_rel_pct(p: pd.DataFrame) -> pd.Series:
    """The per-seed relative % difference (treatment vs control test AUC) of a pairs frame."""
    return pd.Series(rel_pct(p["test_auc_t"], p["test_auc_c"]), index=p.index)


def _ci(mean, lo, hi, fmt: str) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:{fmt}}" if pd.isna(lo) else f"{mean:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def display(t: pd.DataFrame) -> pd.DataFrame:
    """The table in its human form: one string per estimate with its interval."""
    if t.empty:
        return t
    f = lambda p, fmt: [_ci(*v, fmt) for v in zip(t[f"{p}_mean"], t[f"{p}_ci_low"], t[f"{p}_ci_high"])]  # noqa: E731
    return pd.DataFrame({
        "init": t["init"], "embedding": t["embedding"], "variant": t["variant"], "model": t["model"],
        "n_pairs": t["n_pairs"], "rel_pct": f("rel_pct", "+.3f"),
        "rel_pct_mde": t["rel_pct_mde"].map(lambda v: "–" if pd.isna(v) else f"{v:.3f}"), "logloss_diff": f("logloss_diff", "+.4f"),
        "p_holm": t["p_holm"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
        "churn_peers (t/c)": [f"{a:.4f}/{b:.4f}" if not pd.isna(a) else "" for a, b in zip(t["peers_abs_t"],
                                                                                          t["peers_abs_c"])],
        "churn_peers_diff": f("peers_abs_diff", "+.4f"),
        "churn_seeds (t/c)": [f"{a:.4f}/{b:.4f}" if not pd.isna(a) else "" for a, b in zip(t["seeds_abs_t"],
                                                                                          t["seeds_abs_c"])],
        "churn_seeds_diff": f("seeds_abs_diff", "+.4f"), "top10_flip_seeds_diff": f("seeds_top10_diff", "+.4f")})
