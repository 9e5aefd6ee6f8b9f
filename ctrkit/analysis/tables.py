"""The paper's result tables and the tidy frames its figures draw, from the results store only.

Every table function takes a store path / ResultsStore / tidy DataFrame and returns a NUMERIC tidy
DataFrame; `display(name, df)` turns it into the human form and `render(name, df, fmt)` writes
Markdown, LaTeX or CSV (CSV stays numeric and tidy).

How the numbers are made (the same in every table):
- Runs are grouped by `settings_key` (every setting that changes a result except the seed): a table
  row never mixes settings. Runs tagged "exploration" (the widget) are left out unless asked for.
- Every headline number is a paired difference against its control, by seed: mutual - alone (the same
  peers, batches, schedule and stopping with weight 0), from scratch and when finetuning.
- 95% confidence intervals are paired t-intervals (scipy.stats.t) of the per-seed differences; p is
  the paired t-test, Holm-corrected across the rows (models) of a table; Wilcoxon only with >= 6 pairs.
- Relative % = 100 (AUC - AUC_ref) / AUC_ref and RelaImpr = 100 ((AUC - 0.5) / (AUC_ref - 0.5) - 1),
  per seed, then averaged; the logloss difference sits beside the AUC difference.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ctrkit.experiments import designs
from ctrkit.experiments.store import read_results
from ctrkit.core.utils import CtrkitError

FORMATS = ("md", "csv", "tex")
LEVEL = 0.95
MIN_WILCOXON = 6
CI_NAME = "95% paired t-interval"
NOTE_FEW = "<2 pairs: no CI or test"
NOTE_NO_WILCOXON = f"<{MIN_WILCOXON} pairs: no Wilcoxon"
EXPLORATION = "exploration"

# What defines a setting apart from the peer set (so designs over several peer sets share it) ...
SETTING_FIELDS = ("dataset", "fingerprint", "init", "mode", "weight", "divergence", "warmup_steps", "preset",
                  "max_epochs", "finetune_lr_scale", "finetune_epochs", "finetune_monitor", "batch_size", "overrides",
                  "amp")
# ... and what a control must share with its treatment (weight, divergence, warm-up are moot at weight 0).
CONTROL_FIELDS = ("dataset", "fingerprint", "init", "preset", "max_epochs", "finetune_lr_scale",
                  "finetune_epochs", "finetune_monitor", "batch_size", "overrides", "amp")
_CONFIG_FIELDS = {"finetune_lr_scale": "finetune_lr_scale", "finetune_epochs": "finetune_epochs",
                  "warmup_steps": "warmup_steps", "max_epochs": "epochs", "finetune_monitor": "finetune_monitor",
                  "batch_size": "batch_size", "overrides": "overrides"}


# ---- statistics --------------------------------------------------------------------------------
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


def _ci(prefix: str, values) -> dict:
    m, lo, hi = t_interval(values)
    return {f"{prefix}_mean": m, f"{prefix}_ci_low": lo, f"{prefix}_ci_high": hi}


def paired(new, ref, *, logloss_new=None, logloss_ref=None) -> dict:
    """Paired comparison of AUCs `new` vs `ref` (one value per seed): the difference, relative %,
    RelaImpr (each mean + 95% t-interval), the logloss difference, paired t and Wilcoxon p-values."""
    from scipy import stats

    new, ref = np.asarray(new, dtype=float), np.asarray(ref, dtype=float)
    n = len(new)
    out = {"n_pairs": n, **_ci("auc_diff", new - ref), **_ci("rel_pct", rel_pct(new, ref)),
           **_ci("relaimpr_pct", rela_impr(new, ref))}
    if logloss_new is not None and logloss_ref is not None:
        out.update(_ci("logloss_diff", np.asarray(logloss_new, dtype=float) - np.asarray(logloss_ref, dtype=float)))
    p_t = p_w = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-variance differences: NaN is the honest answer
        if n >= 2:
            p_t = float(stats.ttest_rel(new, ref).pvalue)
        if n >= MIN_WILCOXON and np.any(new != ref):
            p_w = float(stats.wilcoxon(new, ref).pvalue)
    notes = [NOTE_FEW] if n < 2 else ([NOTE_NO_WILCOXON] if n < MIN_WILCOXON else [])
    return {**out, "p_ttest": p_t, "p_wilcoxon": p_w, "note": "; ".join(notes)}


def _with_holm(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
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


# ---- records -----------------------------------------------------------------------------------
def _hash(values) -> str:
    text = json.dumps([None if (isinstance(v, float) and np.isnan(v)) else v for v in values], default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _config_value(cfg, key):
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            return None
    return cfg.get(key) if isinstance(cfg, dict) else None


def records(source, *, include_exploration: bool = False, dataset: str | None = None) -> pd.DataFrame:
    """The store as one tidy row per peer per run, with every column the tables read (older records
    lacking a field get None/NaN), `settings_key` (computed from the settings when the record has
    none), `setting_id` (the settings without the peer set) and `control_id` (what a control shares)."""
    if isinstance(source, pd.DataFrame) and {"setting_id", "control_id"} <= set(source.columns):
        df = source  # already normalised (tables calling tables): only filter
        df = df if dataset is None else df[df["dataset"] == dataset]
        return df if include_exploration else df[df["tag"].astype(str) != EXPLORATION]
    df = read_results(source).copy()
    for c in ("mode", "init", "dataset", "fingerprint", "peer", "peers", "model", "preset", "weight", "divergence",
              "protocol", "pretrained_test_auc", "pretrained_valid_auc", "ensemble_test_auc", "ensemble_valid_auc",
              "peer_index", "partners", "partners_pretrained_auc", "n_peers", "settings_key", "tag", "amp",
              "stopped_early", "epoch_cap_hit", "epochs", "valid_auc", "valid_logloss", "test_auc",
              "test_logloss", "seed", "config", *_CONFIG_FIELDS):
        if c not in df.columns:
            df[c] = None
    df["model"] = df["model"].where(df["model"].notna(), df["peer"])  # hand-made stores: model = label
    for col, key in _CONFIG_FIELDS.items():  # older records keep these inside `config` only
        df[col] = df[col].where(df[col].notna(), [_config_value(c, key) for c in df["config"]])
    df["amp"] = df["amp"].where(df["amp"].notna(), [(_config_value(_config_value(c, "train"), "amp")
                                                     if c is not None else None) for c in df["config"]])
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    if not include_exploration:
        df = df[df["tag"].astype(str) != EXPLORATION]
    df = df.copy()
    for c in ("weight", "finetune_lr_scale", "test_auc", "valid_auc", "pretrained_test_auc", "pretrained_valid_auc"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    fields = lambda r, names: [r.get(f) for f in names]  # noqa: E731
    rows = df.to_dict("records")
    df["setting_id"] = [_hash(fields(r, SETTING_FIELDS)) for r in rows]
    df["control_id"] = [_hash(fields(r, CONTROL_FIELDS)) for r in rows]
    computed = [_hash(fields(r, SETTING_FIELDS) + [r.get("peers")]) for r in rows]
    df["settings_key"] = df["settings_key"].where(df["settings_key"].notna(), computed)
    return df.reset_index(drop=True)


def _largest_peer_set(df: pd.DataFrame) -> str | None:
    """The main comparison's peer set: the one with most peers (then most records)."""
    if df.empty:
        return None
    sizes = df.groupby("peers").agg(n=("n_peers", "max"), rows=("peer", "size")).reset_index()
    return str(sizes.sort_values(["n", "rows", "peers"], ascending=[False, False, True]).iloc[0]["peers"])


def _control(df: pd.DataFrame, treat: pd.DataFrame) -> pd.DataFrame:
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


def _pairs(treat: pd.DataFrame, ctrl: pd.DataFrame) -> pd.DataFrame:
    """Treatment and control rows side by side per (peer, seed): `*_t` and `*_c` columns."""
    cols = ["peer", "seed", "test_auc", "test_logloss", "valid_auc", "pretrained_test_auc"]
    t = treat[cols + ["model"]].drop_duplicates(["peer", "seed"], keep="last")
    c = ctrl[cols].drop_duplicates(["peer", "seed"], keep="last")
    m = t.merge(c, on=["peer", "seed"], suffixes=("_t", "_c"))
    return m.assign(_r=_rank(m["peer"])).sort_values(["_r", "peer", "seed"]).drop(columns="_r")


def _rank(labels: pd.Series) -> pd.Series:
    """Sort key: the paper's models in the paper's order, anything else after them."""
    order = {m: i for i, m in enumerate(designs.PAPER_MODELS)}
    return labels.map(lambda v: order.get(v, len(order)))


def _setting_cols(g: pd.DataFrame) -> dict:
    r = g.iloc[0]
    return {"weight": r["weight"], "finetune_lr_scale": r["finetune_lr_scale"],
            "finetune_epochs": r["finetune_epochs"], "amp": r["amp"]}


def _versus_alone(df: pd.DataFrame, treat: pd.DataFrame) -> list[dict]:
    """One row per peer of one treatment settings key: mutual - alone (paired) and both arms' gains
    over the pretrained model they started from."""
    m = _pairs(treat, _control(df, treat))
    rows = []
    for peer, g in m.groupby("peer", sort=False):
        row = {"peer": peer, "model": g["model_t"].iloc[0] if "model_t" in g else g["model"].iloc[0],
               "pretrained_auc_mean": float(g["pretrained_test_auc_t"].mean()),
               "alone_auc_mean": float(g["test_auc_c"].mean()), "mutual_auc_mean": float(g["test_auc_t"].mean())}
        row.update(paired(g["test_auc_t"], g["test_auc_c"], logloss_new=g["test_logloss_t"],
                          logloss_ref=g["test_logloss_c"]))
        if g["pretrained_test_auc_t"].notna().all():
            row.update(_ci("mutual_gain_rel_pct", rel_pct(g["test_auc_t"], g["pretrained_test_auc_t"])))
            row.update(_ci("alone_gain_rel_pct", rel_pct(g["test_auc_c"], g["pretrained_test_auc_t"])))
        rows.append(row)
    return rows


# ---- tables ------------------------------------------------------------------------------------
def bars_reference() -> dict:
    """BARS published numbers shipped with ctrkit (`ctrkit/training/bars.json`), as
    {(model, dataset, protocol): {"auc", "logloss"}}; {} when they are not available."""
    try:
        from ctrkit.training import presets

        rows = presets.bars_results()
    except (ImportError, AttributeError, FileNotFoundError, KeyError, ValueError):
        return {}
    return {(r["model"], r["dataset"], r["protocol"]): {"auc": r.get("auc"), "logloss": r.get("logloss")}
            for r in rows}


def baselines(source, *, include_exploration: bool = False) -> pd.DataFrame:
    """Pretrained baselines (mode "baseline") per model and settings key: mean ± SD over seeds, the
    epochs run, and how many seeds stopped at the epoch cap (not converged: flagged in `flag`)."""
    df = records(source, include_exploration=include_exploration)
    b = df[df["mode"] == "baseline"]
    rows, ref = [], bars_reference()
    for (ds, peer, key), g in b.groupby(["dataset", "peer", "settings_key"], sort=True, dropna=False):
        cap = int((g["epoch_cap_hit"] == True).sum())  # noqa: E712 (None/NaN in older records: unknown)
        known = int(g["epoch_cap_hit"].notna().sum())
        epochs = pd.to_numeric(g["epochs"], errors="coerce")
        row = {"dataset": ds, "model": peer, "n_seeds": int(g["seed"].nunique()),
               "test_auc_mean": float(g["test_auc"].mean()), "test_auc_sd": float(g["test_auc"].std(ddof=1)),
               "test_logloss_mean": float(pd.to_numeric(g["test_logloss"]).mean()),
               "test_logloss_sd": float(pd.to_numeric(g["test_logloss"]).std(ddof=1)),
               "epochs_min": float(epochs.min()), "epochs_max": float(epochs.max()), "n_cap_hit": cap,
               "flag": (f"epoch cap hit in {cap}/{len(g)} seeds: not converged" if cap else
                        ("" if known else "convergence not recorded"))}
        proto = g["protocol"].dropna().iloc[0] if g["protocol"].notna().any() else None
        if ref:
            hit = ref.get((g["model"].iloc[0], ds, proto or "x4_001"))  # x4_001: ctrkit's default protocol
            row["bars_auc"] = hit["auc"] if hit else float("nan")
            row["bars_logloss"] = hit["logloss"] if hit and hit["logloss"] is not None else float("nan")
        rows.append({**row, "settings_key": key})
    out = pd.DataFrame(rows)
    return out.assign(_r=_rank(out["model"])).sort_values(["dataset", "_r", "model"]).drop(columns="_r") \
        .reset_index(drop=True) if len(out) else out


def _mutual_vs_alone(source, *, init: str, include_exploration: bool, peers: str | None,
                     settings: Sequence[str] | None) -> pd.DataFrame:
    df = records(source, include_exploration=include_exploration)
    mut = df[(df["mode"] == "mutual") & (df["init"] == init)]
    rows = []
    for ds, d in mut.groupby("dataset", sort=True):
        main = peers or _largest_peer_set(d)
        d = d[d["peers"] == main]
        # the precision actually used is part of a setting too: amp "auto" is bf16 on one CPU, fp32 on another
        for (key, _), treat in d.groupby(["settings_key", d["amp"].astype(str)], sort=False):
            if settings is not None and key not in settings:
                continue
            for r in _versus_alone(df, treat):
                rows.append({"dataset": ds, "peers": main, **_setting_cols(treat), **r, "settings_key": key})
    return _with_holm(pd.DataFrame(rows), ["dataset", "settings_key"])


def scratch(source, *, include_exploration: bool = False, peers: str | None = None) -> pd.DataFrame:
    """Mutual learning from scratch vs the same peers trained alone under the identical schedule and
    stopping (mode alone, init scratch), paired by seed, per model; one block per settings key."""
    out = _mutual_vs_alone(source, init="scratch", include_exploration=include_exploration, peers=peers,
                           settings=None)
    return out.drop(columns=[c for c in out.columns if c.startswith(("mutual_gain", "alone_gain", "pretrained_auc"))])


def sweep(source, *, include_exploration: bool = False, peers: str | None = None) -> pd.DataFrame:
    """Every finetuning setting of the main peer set (weight x lr scale): mutual - alone on test per
    model, and the selection score (the mean validation AUC of the mutual peers over models and seeds).
    `chosen` marks the setting with the best score per dataset: chosen on validation only."""
    df = records(source, include_exploration=include_exploration)
    out = _mutual_vs_alone(df, init="pretrained", include_exploration=include_exploration, peers=peers,
                           settings=None)
    if out.empty:
        return out
    mut = df[(df["mode"] == "mutual") & (df["init"] == "pretrained") & df["settings_key"].isin(out["settings_key"])]
    choice = designs.choose_on_validation(mut, keys=["settings_key"], by=["dataset"])
    score = mut.groupby("settings_key")["valid_auc"].mean()
    out.insert(out.columns.get_loc("peer"), "selection_valid_auc", out["settings_key"].map(score))
    out["chosen"] = out["settings_key"].isin(set(choice["settings_key"]))
    out = out.assign(_r=_rank(out["peer"])).sort_values(["dataset", "weight", "finetune_lr_scale", "_r", "peer"],
                                                        kind="mergesort")
    return out.drop(columns="_r").reset_index(drop=True)


def chosen_setting(source, *, dataset: str, include_exploration: bool = False) -> dict:
    """The finetuning setting the sweep chose on validation for `dataset`: {"weight",
    "finetune_lr_scale", "finetune_epochs", "settings_key"}; CtrkitError when there is no sweep."""
    s = sweep(source, include_exploration=include_exploration)
    s = s[(s["dataset"] == dataset) & s["chosen"]] if len(s) else s
    if s.empty:
        raise CtrkitError(f"no finetuning sweep of {dataset!r} in the store: run the sweep of 02 first")
    r = s.iloc[0]
    return {"weight": float(r["weight"]), "finetune_lr_scale": float(r["finetune_lr_scale"]),
            "finetune_epochs": None if pd.isna(r["finetune_epochs"]) else int(r["finetune_epochs"]),
            "settings_key": r["settings_key"]}


def finetune(source, *, include_exploration: bool = False, peers: str | None = None,
             choose: bool = True) -> pd.DataFrame:
    """Mutual finetuning vs finetuning alone (the same steps and batches at weight 0), paired by seed,
    per model, with both arms' gains over the pretrained checkpoint. With several settings of the main
    peer set (a sweep), `choose` keeps the one chosen on validation (`chosen_on` says so)."""
    if not choose:
        return _mutual_vs_alone(source, init="pretrained", include_exploration=include_exploration, peers=peers,
                                settings=None)
    s = sweep(source, include_exploration=include_exploration, peers=peers)
    if s.empty:
        return s
    keep = s[s["chosen"]].drop(columns=["chosen"])
    n = s.groupby("dataset")["settings_key"].nunique()
    keep.insert(keep.columns.get_loc("peer"), "chosen_on",
                ["validation" if n[d] > 1 else "only setting" for d in keep["dataset"]])
    return keep.reset_index(drop=True)


def partners(source, *, include_exploration: bool = False, pool: Sequence[str] = designs.PAPER_MODELS) -> pd.DataFrame:
    """Pairs (N = 2) of pretrained peers: mutual - alone of each target with each partner, paired by
    seed, with the partner's mean pretrained test AUC (`display` pivots it into the matrix)."""
    df = records(source, include_exploration=include_exploration)
    two = df[(df["mode"] == "mutual") & (df["init"] == "pretrained") & (df["n_peers"] == 2)]
    two = two[two["model"].isin(pool)]
    rows = []
    for key, treat in two.groupby("settings_key", sort=True):
        for r in _versus_alone(df, treat):
            partner = [p for p in treat["peer"].unique() if p != r["peer"]]
            if not partner:
                continue
            pre = treat[treat["peer"] == partner[0]]["pretrained_test_auc"]
            rows.append({"dataset": treat["dataset"].iloc[0], "setting_id": treat["setting_id"].iloc[0],
                         **_setting_cols(treat), "target": r.pop("peer"), "partner": partner[0],
                         "partner_auc_mean": float(pre.mean()), **r})
    out = _with_holm(pd.DataFrame(rows), ["dataset", "setting_id"])
    return out.sort_values(["dataset", "setting_id", "target", "partner"]).reset_index(drop=True) if len(out) else out


def partner_points(source, *, include_exploration: bool = False,
                   pool: Sequence[str] = designs.PAPER_MODELS) -> pd.DataFrame:
    """Per (target, partner, seed): rel % of mutual - alone and the partner's pretrained test AUC
    of that seed (the points behind `partner_slopes` and its figure)."""
    df = records(source, include_exploration=include_exploration)
    two = df[(df["mode"] == "mutual") & (df["init"] == "pretrained") & (df["n_peers"] == 2) & df["model"].isin(pool)]
    parts = []
    for key, treat in two.groupby("settings_key", sort=True):
        m = _pairs(treat, _control(df, treat))
        if m.empty:
            continue
        pre = treat[["peer", "seed", "pretrained_test_auc"]].rename(columns={"peer": "partner",
                                                                             "pretrained_test_auc": "partner_auc"})
        m = m.assign(partner=[next(p for p in treat["peer"].unique() if p != t) for t in m["peer"]])
        m = m.merge(pre, on=["partner", "seed"], how="left")
        parts.append(pd.DataFrame({"dataset": treat["dataset"].iloc[0], "setting_id": treat["setting_id"].iloc[0],
                                   "target": m["peer"], "partner": m["partner"], "seed": m["seed"],
                                   "partner_auc": m["partner_auc"],
                                   "rel_pct": rel_pct(m["test_auc_t"], m["test_auc_c"])}))
    cols = ["dataset", "setting_id", "target", "partner", "seed", "partner_auc", "rel_pct"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def partner_slopes(source, *, include_exploration: bool = False,
                   pool: Sequence[str] = designs.PAPER_MODELS) -> pd.DataFrame:
    """Per target model: the least-squares slope of its gain over the alone control (rel %) against
    the partner's pretrained test AUC, over its (partner, seed) points, with the slope's 95%
    t-interval (n - 2 degrees of freedom). One slope per model, no pooled line across models."""
    from scipy import stats

    pts = partner_points(source, include_exploration=include_exploration, pool=pool)
    rows = []
    for (ds, sid, target), g in pts.dropna(subset=["partner_auc", "rel_pct"]).groupby(
            ["dataset", "setting_id", "target"], sort=True):
        row = {"dataset": ds, "setting_id": sid, "target": target, "n_points": len(g),
               "n_partners": int(g["partner"].nunique())}
        if len(g) >= 3 and np.ptp(g["partner_auc"]) > 0:
            fit = stats.linregress(g["partner_auc"], g["rel_pct"])
            half = float(stats.t.ppf(0.5 + LEVEL / 2, len(g) - 2) * fit.stderr)
            row.update(slope_mean=float(fit.slope), slope_ci_low=fit.slope - half, slope_ci_high=fit.slope + half,
                       intercept=float(fit.intercept), r=float(fit.rvalue), p_slope=float(fit.pvalue), note="")
        else:
            row.update(slope_mean=np.nan, slope_ci_low=np.nan, slope_ci_high=np.nan, intercept=np.nan, r=np.nan,
                       p_slope=np.nan, note="<3 points or one partner AUC: no slope")
        rows.append(row)
    return pd.DataFrame(rows)


def _per_seed_design(df: pd.DataFrame, d: pd.DataFrame, *, target: str, n: int, pool: Sequence[str]) -> pd.DataFrame:
    """Per seed, for `target` in runs of `n` peers: mean over ALL partner subsets of size n - 1 of the
    mutual AUC, the matching alone AUC and the pretrained AUC; seeds missing a subset are dropped."""
    want = {"+".join(designs.peer_set(target=target, partners=s, pool=pool))
            for s in designs.partner_subsets(target=target, pool=pool, n_peers=n)}
    runs = d[(d["peer"] == target) & (d["n_peers"] == n) & d["peers"].isin(want)]
    parts = []
    for key, treat in runs.groupby("settings_key", sort=True):
        m = _pairs(treat, _control(df, treat))
        parts.append(m.assign(peers=treat["peers"].iloc[0]))
    if not parts:
        return pd.DataFrame()
    m = pd.concat(parts, ignore_index=True)
    per = m.groupby("seed").agg(auc=("test_auc_t", "mean"), alone=("test_auc_c", "mean"),
                                pre=("pretrained_test_auc_t", "mean"), n_sub=("peers", "nunique"))
    return per[per["n_sub"] == len(want)].assign(n_subsets=len(want))


def peer_count(source, *, include_exploration: bool = False, pool: Sequence[str] = designs.PAPER_MODELS) -> pd.DataFrame:
    """Gain vs the number of peers N = 1..len(pool) per target model: for N >= 2 the mean over all
    partner subsets of size N - 1 of the other pool models (so N is not confounded with who joins),
    as mutual - alone and as the gain over the pretrained model, paired by seed with 95% t-intervals;
    N = 1 is the alone control. Only measured (N, seed) points appear; one block per setting whose
    design was run (every N of 2..len(pool) measured: a sweep setting with only the full set is not one)."""
    df = records(source, include_exploration=include_exploration)
    mut = df[(df["mode"] == "mutual") & (df["init"] == "pretrained") & df["model"].isin(pool)]
    mut = mut[[all(p in pool for p in str(s).split("+")) for s in mut["peers"]]]
    rows = []
    for (ds, sid), d in mut.groupby(["dataset", "setting_id"], sort=True):
        if set(d["n_peers"]) != set(range(2, len(pool) + 1)):
            continue
        for target in [m for m in pool if m in set(d["peer"])]:
            for n in range(1, len(pool) + 1):
                if n == 1:  # the alone control, as paired with the smallest measured design
                    per = next((p for k in range(2, len(pool) + 1)
                                if len(p := _per_seed_design(df, d, target=target, n=k, pool=pool))), pd.DataFrame())
                    per = per.assign(auc=per["alone"], n_subsets=1) if len(per) else per
                else:
                    per = _per_seed_design(df, d, target=target, n=n, pool=pool)
                if per.empty:
                    continue
                row = {"dataset": ds, "setting_id": sid, **_setting_cols(d), "model": target, "n_peers": n,
                       "n_subsets": int(per["n_subsets"].iloc[0]), "n_seeds": len(per),
                       "test_auc_mean": float(per["auc"].mean()), **_ci("gain_rel_pct", rel_pct(per["auc"], per["pre"]))}
                st = paired(per["auc"], per["alone"])
                row.update({k: st[k] for k in ("rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high", "p_ttest", "note")})
                if n == 1:
                    row.update(rel_pct_ci_low=np.nan, rel_pct_ci_high=np.nan, p_ttest=np.nan,
                               note="N = 1 is the control")
                rows.append(row)
    out = pd.DataFrame(rows)
    return _with_holm(out, ["dataset", "setting_id"]) if len(out) else out


def _arm_values(frame: pd.DataFrame, *, auc: str = "test_auc", students_only: bool = False) -> pd.DataFrame:
    """[unit, seed, auc, logloss] of one arm: each peer (unit = its label) and the run's ensemble."""
    peers = frame[frame["peer_index"] != 0] if students_only else frame
    out = [pd.DataFrame({"unit": peers["peer"], "seed": peers["seed"], "auc": pd.to_numeric(peers[auc]),
                         "logloss": pd.to_numeric(peers["test_logloss"]) if auc == "test_auc" else np.nan})]
    if auc == "test_auc":
        ens = frame.drop_duplicates("seed", keep="last")
        out.append(pd.DataFrame({"unit": "ensemble", "seed": ens["seed"],
                                 "auc": pd.to_numeric(ens["ensemble_test_auc"]),
                                 "logloss": pd.to_numeric(ens.get("ensemble_test_logloss"))}))
    return pd.concat(out, ignore_index=True).dropna(subset=["auc"])


def _control_arms(df: pd.DataFrame, mut: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The arms of the controls table beside the chosen mutual run: pretrained peers and their
    ensemble, finetuned alone, mutual, and each KD run (students only) of the same peer set."""
    alone = _control(df, mut)
    main, ds = mut["peers"].iloc[0], mut["dataset"].iloc[0]
    same = df[(df["dataset"] == ds) & (df["peers"] == main) & (df["init"] == "pretrained")]
    pre = _arm_values(alone, auc="pretrained_test_auc")
    ens = same[same["mode"] == "ensemble"]
    if len(ens):  # the pretrained ensemble: no training, the peers' mean probability
        pre = pd.concat([pre, _arm_values(ens).query("unit == 'ensemble'")], ignore_index=True)
    arms = [("pretrained", pre), ("alone", _arm_values(alone)), ("mutual", _arm_values(mut))]
    kd = same[(same["mode"] == "kd") & (same["control_id"] == mut["control_id"].iloc[0])]
    kd_all = df[(df["dataset"] == ds) & (df["mode"] == "kd") & (df["init"] == "pretrained")
                & (df["control_id"] == mut["control_id"].iloc[0])]
    for key, g in (kd if len(kd) else kd_all).groupby("settings_key", sort=True):
        teacher = g[g["peer_index"] == 0]["peer"].iloc[0] if (g["peer_index"] == 0).any() else "?"
        arms.append((f"kd from {teacher} (weight {g['weight'].iloc[0]:g})", _arm_values(g, students_only=True)))
    return arms


def controls(source, *, include_exploration: bool = False, peers: str | None = None) -> pd.DataFrame:
    """Every arm next to finetuning alone, per model and for the ensemble (the peers' mean
    probability): the pretrained checkpoints and their ensemble, mutual finetuning at the setting
    chosen on validation, and knowledge distillation from the best model (students). Differences
    are paired by seed against the alone control of the same unit, 95% t-intervals, Holm per dataset."""
    df = records(source, include_exploration=include_exploration)
    fin = finetune(df, include_exploration=include_exploration, peers=peers)
    if fin.empty:
        return fin
    rows = []
    for (ds, key), _ in fin.groupby(["dataset", "settings_key"], sort=True):
        arms = _control_arms(df, df[df["settings_key"] == key])
        ctrl = arms[1][1]
        for arm, vals in arms:
            for unit, g in vals.groupby("unit", sort=False):
                g = g.merge(ctrl, on=["unit", "seed"], suffixes=("", "_alone")).dropna(subset=["auc", "auc_alone"])
                row = {"dataset": ds, "arm": arm, "unit": unit, "auc_mean": float(g["auc"].mean()),
                       "alone_auc_mean": float(g["auc_alone"].mean())}
                if arm == "alone":
                    row.update(n_pairs=len(g), note="the control")
                else:
                    row.update(paired(g["auc"], g["auc_alone"], logloss_new=g["logloss"],
                                      logloss_ref=g["logloss_alone"]))
                rows.append({**row, "settings_key": key})
    return _with_holm(pd.DataFrame(rows), ["dataset"])


HEADLINE_COLS = ["dataset", "model", "weight", "finetune_lr_scale", "n_pairs", "rel_pct_mean", "rel_pct_ci_low",
                 "rel_pct_ci_high", "relaimpr_pct_mean", "relaimpr_pct_ci_low", "relaimpr_pct_ci_high",
                 "logloss_diff_mean", "logloss_diff_ci_low", "logloss_diff_ci_high", "p_holm", "note"]


def headline(source, *, include_exploration: bool = False) -> pd.DataFrame:
    """The README's table: mutual - alone finetuning per model and dataset at the setting chosen on
    validation, relative % and RelaImpr with their 95% paired t-intervals, the logloss difference."""
    ft = finetune(source, include_exploration=include_exploration)
    return ft[[c for c in HEADLINE_COLS if c in ft.columns]].reset_index(drop=True) if len(ft) else ft


TABLES: dict[str, Callable] = {
    "baselines": baselines, "scratch": scratch, "finetune": finetune, "sweep": sweep, "partners": partners,
    "partner_slopes": partner_slopes, "peer_count": peer_count, "controls": controls, "headline": headline,
}
NAMES = tuple(TABLES)

CAPTIONS = {
    "baselines": "Pretrained baselines: test AUC and logloss, mean ± SD over seeds; epochs run (min-max); "
                 "`flag`: seeds that stopped at the epoch cap (not converged).",
    "scratch": f"Mutual learning from scratch minus the same peers trained alone under the identical schedule "
               f"and stopping, paired by seed: mean [{CI_NAME}]; rel % and RelaImpr (gain of AUC - 0.5) in %; "
               f"p: paired t-test, Holm-corrected across the models (p_holm); Wilcoxon only with >= {MIN_WILCOXON} pairs.",
    "finetune": f"Mutual finetuning minus finetuning alone (same steps, batches and stopping, weight 0), paired by "
                f"seed: mean [{CI_NAME}], at the setting chosen on validation; gains of both arms over the "
                f"pretrained model; p_holm: Holm across the models; Wilcoxon only with >= {MIN_WILCOXON} pairs.",
    "sweep": f"Finetuning sweep (weight x lr scale): mutual - alone on test per model [{CI_NAME}]; "
             "`selection_valid_auc`: mean validation AUC of the mutual peers, the only criterion of `chosen`.",
    "partners": f"Pairs (N = 2): mutual - alone of the target with each partner, paired by seed [{CI_NAME}]; "
                "p_holm: Holm across the cells.",
    "partner_slopes": "Per target: least-squares slope of (mutual - alone, rel %) against the partner's "
                      "pretrained test AUC over (partner, seed) points, 95% t-interval of the slope (n - 2 df).",
    "peer_count": f"N peers: per target, the mean over all partner subsets of size N - 1 of the other paper models; "
                  f"rel % = mutual - alone, gain = over the pretrained model, {CI_NAME} over seeds; N = 1: the control.",
    "headline": f"Mutual finetuning minus finetuning alone per model, paired by seed, at the setting chosen on "
                f"validation: relative % and RelaImpr of test AUC [{CI_NAME}], test logloss difference; "
                "p_holm: paired t-test, Holm across the models.",
    "controls": f"Every arm minus finetuning alone of the same unit (model or ensemble = mean probability of the "
                f"peers), paired by seed [{CI_NAME}]; KD: students of the best pretrained model; p_holm per dataset.",
}


def table(name: str, source, *, include_exploration: bool = False) -> pd.DataFrame:
    if name not in TABLES:
        raise CtrkitError(f"unknown table {name!r}; valid: {', '.join(NAMES)}")
    return TABLES[name](source, include_exploration=include_exploration)


# ---- figure data -------------------------------------------------------------------------------
FIGURE_FRAMES = ("gains", "partners", "partner_points", "partner_slopes", "peer_count", "sweep")
COMPARISONS = {"scratch": "from scratch: mutual - alone", "finetune_alone": "finetuning alone - pretrained",
               "finetune": "finetuning: mutual - alone"}


def _gains(source, *, include_exploration: bool) -> pd.DataFrame:
    """Per model and comparison: mean relative % with its 95% t-interval (the gains figure)."""
    parts = []
    source = records(source, include_exploration=include_exploration)
    sc = scratch(source, include_exploration=include_exploration)
    if len(sc):
        parts.append(sc.assign(comparison=COMPARISONS["scratch"])[
            ["dataset", "model", "comparison", "n_pairs", "rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high"]])
    ft = finetune(source, include_exploration=include_exploration)
    if len(ft):
        base = ["dataset", "model", "n_pairs"]
        if "alone_gain_rel_pct_mean" in ft:
            a = ft[base + [c for c in ft.columns if c.startswith("alone_gain_rel_pct")]]
            parts.append(a.rename(columns=lambda c: c.replace("alone_gain_", "")).assign(
                comparison=COMPARISONS["finetune_alone"]))
        parts.append(ft[base + ["rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high"]].assign(
            comparison=COMPARISONS["finetune"]))
    cols = ["dataset", "model", "comparison", "n_pairs", "rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


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


def precision(source, *, include_exploration: bool = False) -> str:
    """The precision of the trained runs ("fp32", "bf16", or "mixed: ..."; "unrecorded" for old records)."""
    df = records(source, include_exploration=include_exploration)
    amp = {("fp32" if str(a) in ("off", "fp32", "False") else str(a)) for a in df["amp"].dropna()}
    return "unrecorded" if not amp else (amp.pop() if len(amp) == 1 else "mixed: " + ", ".join(sorted(amp)))


# ---- display and export ------------------------------------------------------------------------
def _fmt(v, digits: int, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _digits(prefix: str) -> tuple[int, bool]:
    if "pct" in prefix:
        return 3, True
    if "diff" in prefix or prefix.startswith(("slope", "gain")):
        return 4, True
    return 4, False


def _interval(df: pd.DataFrame, p: str) -> list[str]:
    d, signed = _digits(p)
    lo, hi = df.get(f"{p}_ci_low"), df.get(f"{p}_ci_high")
    sd = df.get(f"{p}_sd")
    out = []
    for i, m in enumerate(df[f"{p}_mean"]):
        if lo is not None and not pd.isna(lo.iloc[i]):
            out.append(f"{_fmt(m, d, signed)} [{_fmt(lo.iloc[i], d, signed)}, {_fmt(hi.iloc[i], d, signed)}]")
        elif sd is not None and not pd.isna(sd.iloc[i]):
            out.append(f"{_fmt(m, d, signed)} ± {_fmt(sd.iloc[i], d)}")
        else:
            out.append(_fmt(m, d, signed))
    return out


_HIDDEN = ("settings_key", "setting_id", "intercept")
# Columns that describe the setting: when one value holds for every row, display moves it into one
# "settings" line under the table instead of repeating it in every row.
_SETTING_COLS = ("dataset", "peers", "weight", "finetune_lr_scale", "finetune_epochs", "amp", "chosen_on",
                 "selection_valid_auc")
_INT_COLS = ("finetune_epochs", "epochs_min", "epochs_max", "n_pairs", "n_seeds", "n_subsets", "n_points",
             "n_partners", "n_cap_hit", "n_peers")


def _value(c: str, v):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–" if c in _INT_COLS or c in ("weight", "finetune_lr_scale") else ""
    if c in _INT_COLS and isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer():
        return str(int(v))
    if c in ("weight", "finetune_lr_scale"):
        return f"{v:g}"
    if isinstance(v, (float, np.floating)):
        return _fmt(float(v), 4)
    return v


def _constant_settings(shown: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    same = [c for c in _SETTING_COLS if c in shown.columns and shown[c].astype(str).nunique() == 1]
    line = ", ".join(f"{c} {shown[c].iloc[0]}" for c in same if str(shown[c].iloc[0]) not in ("", "–"))
    return shown.drop(columns=same), line


def display(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Human form: mean with [95% CI] (or ± SD), p-values with 3 digits, partners as a matrix."""
    if name == "partners" and len(df):
        cell = {(r.dataset, r.weight, r.finetune_lr_scale, r.target, r.partner):
                f"{_fmt(r.rel_pct_mean, 3, True)}% [{_fmt(r.rel_pct_ci_low, 3, True)}, {_fmt(r.rel_pct_ci_high, 3, True)}]"
                for r in df.itertuples()}
        mat = pd.Series(cell).unstack(fill_value="")
        mat.index.names, mat.columns.name = ["dataset", "weight", "lr scale", "target \\ partner"], None
        return mat.reset_index()
    out = {}
    same_model = "model" in df and "peer" in df and (df["model"].astype(str) == df["peer"].astype(str)).all()
    for c in df.columns:
        if c in _HIDDEN or c.endswith(("_ci_low", "_ci_high")) or (c.endswith("_sd") and c[:-3] + "_mean" in df) \
                or (c == "model" and same_model):
            continue
        if c.endswith("_mean"):
            out[c[:-5]] = _interval(df, c[:-5])
        elif c.startswith("p_"):
            out[c] = [_fmt(v, 3) for v in df[c]]
        else:
            out[c] = [_value(c, v) for v in df[c]]
    return pd.DataFrame(out)


def to_markdown(name: str, df: pd.DataFrame, *, caption: str | None = None) -> str:
    if not len(df):
        return f"_(no `{name}` results in the store)_"
    shown, line = _constant_settings(display(name, df))
    text = shown.to_markdown(index=False, disable_numparse=True)
    cap = caption or CAPTIONS.get(name)
    return text + (f"\n\nSettings: {line}." if line else "") + (f"\n\n{cap}" if cap else "")


def to_latex(name: str, df: pd.DataFrame, *, caption: str | None = None) -> str:
    if not len(df):
        return f"% no {name} results in the store"
    shown, line = _constant_settings(display(name, df))
    cap = " ".join(t for t in (caption or CAPTIONS.get(name), f"Settings: {line}." if line else "") if t)
    return shown.to_latex(index=False, escape=True, caption=cap, label=f"tab:{name}")


def to_csv(name: str, df: pd.DataFrame, *, caption: str | None = None) -> str:
    return df.to_csv(index=False)


def render(name: str, df: pd.DataFrame, fmt: str = "md", *, caption: str | None = None) -> str:
    """The table as Markdown (human form + caption), LaTeX (same, with \\caption) or tidy numeric CSV."""
    if fmt not in FORMATS:
        raise CtrkitError(f"unknown table format {fmt!r}; valid: {', '.join(FORMATS)}")
    return {"md": to_markdown, "csv": to_csv, "tex": to_latex}[fmt](name, df, caption=caption)
