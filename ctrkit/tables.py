"""The paper's result tables, computed from the results store (or its tidy CSV) only.

Every table function takes a store path / ResultsStore / tidy DataFrame and returns a NUMERIC tidy
DataFrame (`<metric>_mean`, `<metric>_std` over seeds, paired-test p-values, a `note`);
`display(name, df)` turns it into the human form ("0.8012 ± 0.0003", the partner matrix), and
`render(name, df, fmt)` writes Markdown, LaTeX or CSV (CSV stays numeric and tidy).

Deltas and relative improvements are computed per seed (paired: same seed, same model), then
averaged: rel % = 100 * (AUC_method - AUC_reference) / AUC_reference.
"""
from __future__ import annotations

import json
import warnings
from typing import Callable

import numpy as np
import pandas as pd

from ctrkit.store import read_results
from ctrkit.utils import CtrkitError

FORMATS = ("md", "csv", "tex")
NOTE_FEW_SEEDS = "<2 paired seeds: no test"


# ---- helpers -----------------------------------------------------------------------------------
def _gain_stats(auc: pd.Series, ref: pd.Series) -> dict:
    """Delta and relative % of `auc` over `ref` (mean, std) and the paired tests between them."""
    p_t, p_w, note = paired_test(auc, ref)
    return {**_mean_std("delta_auc", auc - ref), **_mean_std("rel_pct", _rel(auc, ref)),
            "p_ttest": p_t, "p_wilcoxon": p_w, "note": note}


def paired_test(a, b) -> tuple[float, float, str]:
    """p-values of a paired t-test and a Wilcoxon signed-rank test of a vs b (paired by seed)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2:
        return float("nan"), float("nan"), NOTE_FEW_SEEDS
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-variance differences: NaN is the honest answer
        p_t = float(stats.ttest_rel(a, b).pvalue)
        try:
            p_w = float(stats.wilcoxon(a, b).pvalue)
        except ValueError:  # all differences zero
            p_w = float("nan")
    return p_t, p_w, ""


def _mean_std(prefix: str, values) -> dict:
    v = np.asarray(values, dtype=float)
    return {f"{prefix}_mean": float(v.mean()) if len(v) else float("nan"),
            f"{prefix}_std": float(v.std(ddof=1)) if len(v) > 1 else float("nan")}


def _rel(new, ref):
    return 100.0 * (np.asarray(new, dtype=float) - np.asarray(ref, dtype=float)) / np.asarray(ref, dtype=float)


def _frame(source) -> pd.DataFrame:
    df = read_results(source).copy()
    for c in ("mode", "init", "dataset", "peer", "peers", "model", "preset", "weight", "run_key", "protocol",
              "pretrained_test_auc", "ensemble_test_auc", "peer_index", "partners", "n_peers"):
        if c not in df.columns:
            df[c] = None
    # older/hand-made stores: a peer's model defaults to its label
    df["model"] = df["model"].where(df["model"].notna(), df["peer"])
    return df


def _partners_list(v) -> list:
    if isinstance(v, list):
        return v
    if isinstance(v, str):
        try:
            out = json.loads(v)
            return out if isinstance(out, list) else [out]
        except ValueError:
            return [p for p in v.split("+") if p]
    return []


def bars_reference() -> dict:
    """BARS published numbers shipped by the models package (`ctrkit/bars.json`), as
    {(model, dataset, protocol): {"auc", "logloss"}}; {} when they are not available."""
    try:
        from ctrkit import presets

        rows = presets.bars_results()
    except (ImportError, AttributeError, FileNotFoundError, KeyError, ValueError):
        return {}
    return {(r["model"], r["dataset"], r["protocol"]): {"auc": r.get("auc"), "logloss": r.get("logloss")}
            for r in rows}


# ---- tables ------------------------------------------------------------------------------------
def baselines(source) -> pd.DataFrame:
    """Our pretrained baselines (mode "baseline"), next to BARS's published numbers when known."""
    df = _frame(source)
    b = df[df["mode"] == "baseline"]
    rows = []
    ref = bars_reference()
    for (ds, peer), g in b.groupby(["dataset", "peer"], sort=True, dropna=False):
        model = g["model"].iloc[0]
        row = {"dataset": ds, "model": peer, "n_seeds": int(g["seed"].nunique())}
        row.update(_mean_std("test_auc", g["test_auc"]))
        row.update(_mean_std("test_logloss", g["test_logloss"]))
        proto = g["protocol"].dropna().iloc[0] if "protocol" in g and g["protocol"].notna().any() else None
        hit = ref.get((model, ds, proto or "x4_001"))  # x4_001: ctrkit's default protocol
        if ref:
            row["bars_auc"] = hit["auc"] if hit else float("nan")
            row["bars_logloss"] = hit["logloss"] if hit and hit["logloss"] is not None else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _versus(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], a_col: str, b_col: str,
            name_a: str, name_b: str, prefix: str = "") -> dict:
    """Pair rows of a and b on keys+seed, return mean/std of both, delta, rel % and the tests."""
    m = a[keys + ["seed", a_col]].merge(b[keys + ["seed", b_col]].rename(columns={b_col: "__ref"}),
                                         on=keys + ["seed"], how="inner")
    out = {f"{prefix}n_paired": len(m)}
    if prefix == "":
        out.update(_mean_std(f"{name_a}_auc", m[a_col]))
    out.update(_mean_std(f"{name_b}_auc", m["__ref"]))
    out.update(_mean_std(f"{prefix}delta_auc", m[a_col] - m["__ref"]))
    out.update(_mean_std(f"{prefix}rel_pct", _rel(m[a_col], m["__ref"])))
    p_t, p_w, note = paired_test(m[a_col], m["__ref"])
    out.update({f"{prefix}p_ttest": p_t, f"{prefix}p_wilcoxon": p_w, f"{prefix}note": note})
    return out


def scratch(source) -> pd.DataFrame:
    """Mutual learning from scratch vs the baseline of the same model and seed."""
    df = _frame(source)
    mut = df[(df["mode"] == "mutual") & (df["init"] == "scratch")]
    base = df[df["mode"] == "baseline"].drop_duplicates(["dataset", "peer", "seed"], keep="last")
    rows = []
    for (ds, peers, w, peer), g in mut.groupby(["dataset", "peers", "weight", "peer"], sort=True, dropna=False):
        row = {"dataset": ds, "peers": peers, "weight": w, "peer": peer}
        row.update(_versus(g, base, ["dataset", "peer"], "test_auc", "test_auc", "mutual", "baseline"))
        rows.append(row)
    return pd.DataFrame(rows)


def finetune(source) -> pd.DataFrame:
    """Mutual finetuning of pretrained peers vs their pretrained AUC (the baseline) and vs the
    `alone` control (each peer finetuned by itself with the same steps and batches)."""
    df = _frame(source)
    pre = df[df["init"] == "pretrained"]
    mut = pre[pre["mode"] == "mutual"]
    # the alone result of a model does not depend on who else was in the run: pair by model+seed
    alone = pre[pre["mode"] == "alone"].groupby(["dataset", "peer", "seed"], as_index=False, dropna=False)["test_auc"].mean()
    rows = []
    for (ds, peers, w, peer), g in mut.groupby(["dataset", "peers", "weight", "peer"], sort=True, dropna=False):
        row = {"dataset": ds, "peers": peers, "weight": w, "peer": peer}
        base = g[["dataset", "peer", "seed", "pretrained_test_auc"]]
        row.update(_versus(g, base, ["dataset", "peer"], "test_auc", "pretrained_test_auc", "mutual", "baseline"))
        if len(alone):
            row.update(_versus(g, alone, ["dataset", "peer"], "test_auc", "test_auc", "mutual", "alone", prefix="vs_alone_"))
            a = alone[(alone["dataset"] == ds) & (alone["peer"] == peer)].merge(base, on=["dataset", "peer", "seed"])
            row.update(_mean_std("alone_rel_pct", _rel(a["test_auc"], a["pretrained_test_auc"])))
        rows.append(row)
    df = pd.DataFrame(rows)
    # reading order: the three AUCs, the gains (mutual, alone, mutual over alone), then the tests
    first = [c for c in _FINETUNE_ORDER if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


_FINETUNE_ORDER = [
    "dataset", "peers", "weight", "peer", "n_paired",
    "baseline_auc_mean", "baseline_auc_std", "alone_auc_mean", "alone_auc_std", "mutual_auc_mean", "mutual_auc_std",
    "delta_auc_mean", "delta_auc_std", "rel_pct_mean", "rel_pct_std", "alone_rel_pct_mean", "alone_rel_pct_std",
    "vs_alone_delta_auc_mean", "vs_alone_delta_auc_std", "vs_alone_rel_pct_mean", "vs_alone_rel_pct_std",
    "p_ttest", "p_wilcoxon", "vs_alone_p_ttest", "vs_alone_p_wilcoxon", "note",
]


def partners(source) -> pd.DataFrame:
    """Pairs (N = 2) of pretrained peers: how much each target gains from each partner (tidy;
    `display` pivots it into the target x partner matrix)."""
    df = _frame(source)
    two = df[(df["mode"] == "mutual") & (df["init"] == "pretrained") & (df["n_peers"] == 2)].copy()
    two["partner"] = [(_partners_list(p) or [None])[0] for p in two["partners"]]
    rows = []
    for (ds, w, target, partner), g in two.groupby(["dataset", "weight", "peer", "partner"], sort=True, dropna=False):
        row = {"dataset": ds, "weight": w, "target": target, "partner": partner, "n_seeds": len(g)}
        row.update(_gain_stats(g["test_auc"], g["pretrained_test_auc"]))
        rows.append(row)
    return pd.DataFrame(rows)


def peer_count(source, init: str = "pretrained") -> pd.DataFrame:
    """Gain vs the number of peers N: per run, the peers' mean AUC gain over their pretrained AUC
    (from scratch: over their baseline); N = 1 is the `alone` control. Mean ± std over runs."""
    df = _frame(source)
    sel = df[(df["init"] == init) & df["mode"].isin(["mutual", "alone"])].copy()
    if init == "scratch":
        base = df[df["mode"] == "baseline"].drop_duplicates(["dataset", "peer", "seed"], keep="last")
        sel = sel.drop(columns=["pretrained_test_auc"]).merge(
            base[["dataset", "peer", "seed", "test_auc"]].rename(columns={"test_auc": "pretrained_test_auc"}),
            on=["dataset", "peer", "seed"], how="inner")
    # alone runs are N = 1 whatever the size of the run that produced them
    sel["N"] = np.where(sel["mode"] == "alone", 1, sel["n_peers"])
    if "run_key" not in sel or sel["run_key"].isna().all():
        sel["run_key"] = sel["peers"].astype(str) + "|" + sel["seed"].astype(str) + "|" + sel["mode"].astype(str)
    # one point per run for N >= 2, one per peer for N = 1 (each alone peer is its own 1-model run)
    sel["unit"] = np.where(sel["N"] == 1, sel["run_key"].astype(str) + "|" + sel["peer"].astype(str), sel["run_key"].astype(str))
    runs = sel.groupby(["dataset", "weight", "N", "unit"], as_index=False, dropna=False).agg(
        auc=("test_auc", "mean"), ref=("pretrained_test_auc", "mean"), seed=("seed", "first"))
    rows = []
    for (ds, n, w), g in runs.groupby(["dataset", "N", "weight"], sort=True, dropna=False):
        row = {"dataset": ds, "n_peers": int(n), "weight": w, "n_runs": len(g)}
        row.update(_mean_std("test_auc", g["auc"]))
        row.update(_gain_stats(g["auc"], g["ref"]))
        rows.append(row)
    return pd.DataFrame(rows)


def controls(source) -> pd.DataFrame:
    """Every mode side by side per peer set: the peers' mean test AUC and the ensemble's."""
    df = _frame(source)
    sel = df[df["mode"].isin(["mutual", "alone", "kd", "ensemble"])]
    rows = []
    for (ds, peers, init, mode), g in sel.groupby(["dataset", "peers", "init", "mode"], sort=True, dropna=False):
        per_seed = g.groupby("seed").agg(auc=("test_auc", "mean"), ens=("ensemble_test_auc", "mean"))
        if mode == "kd":  # only the student learns; the teacher (peer 0) is fixed
            per_seed = g[g["peer_index"] != 0].groupby("seed").agg(auc=("test_auc", "mean"), ens=("ensemble_test_auc", "mean"))
        row = {"dataset": ds, "peers": peers, "init": init, "mode": mode, "n_seeds": len(per_seed)}
        row.update(_mean_std("peer_auc", per_seed["auc"]))
        row.update(_mean_std("ensemble_auc", per_seed["ens"]))
        rows.append(row)
    return pd.DataFrame(rows)


TABLES: dict[str, Callable] = {
    "baselines": baselines, "scratch": scratch, "finetune": finetune,
    "partners": partners, "peer_count": peer_count, "controls": controls,
}
NAMES = tuple(TABLES)


def table(name: str, source) -> pd.DataFrame:
    if name not in TABLES:
        raise CtrkitError(f"unknown table {name!r}; valid: {', '.join(NAMES)}")
    return TABLES[name](source)


# ---- display and export ------------------------------------------------------------------------
def _fmt(v, digits: int, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _digits(prefix: str) -> tuple[int, bool]:
    if "rel_pct" in prefix:
        return 2, True
    if "delta" in prefix:
        return 4, True
    return 4, False


def display(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Human form: `X_mean`/`X_std` pairs become "m ± s"; p-values 3 digits; partners as a matrix."""
    if name == "partners" and len(df):
        cell = {(r.dataset, r.weight, r.target, r.partner):
                f"{_fmt(r.delta_auc_mean, 4, True)} ± {_fmt(r.delta_auc_std, 4)} ({_fmt(r.rel_pct_mean, 2, True)}%)"
                for r in df.itertuples()}
        mat = pd.Series(cell).unstack(fill_value="")
        mat.index.names, mat.columns.name = ["dataset", "weight", "target \\ partner"], None
        return mat.reset_index()
    out = {}
    for c in df.columns:
        if c.endswith("_std") and c[:-4] + "_mean" in df.columns:
            continue
        if c.endswith("_mean"):
            p = c[:-5]
            d, signed = _digits(p)
            std = df[p + "_std"] if p + "_std" in df.columns else [float("nan")] * len(df)
            out[p] = [f"{_fmt(m, d, signed)} ± {_fmt(s, d)}" if not np.isnan(s) else _fmt(m, d, signed)
                      for m, s in zip(df[c], std)]
        elif c.startswith("p_") or "_p_" in c:
            out[c] = [_fmt(v, 3) for v in df[c]]
        elif c == "weight":
            out[c] = ["–" if v is None or v != v else f"{v:g}" for v in df[c]]
        elif df[c].dtype.kind == "f":
            out[c] = [_fmt(v, 4) for v in df[c]]
        else:
            out[c] = df[c].tolist()
    return pd.DataFrame(out)


def to_markdown(name: str, df: pd.DataFrame) -> str:
    if not len(df):
        return f"_(no `{name}` results in the store)_"
    return display(name, df).to_markdown(index=False, disable_numparse=True)


def to_latex(name: str, df: pd.DataFrame) -> str:
    if not len(df):
        return f"% no {name} results in the store"
    return display(name, df).to_latex(index=False, escape=True)


def to_csv(name: str, df: pd.DataFrame) -> str:
    return df.to_csv(index=False)


def render(name: str, df: pd.DataFrame, fmt: str = "md") -> str:
    if fmt not in FORMATS:
        raise CtrkitError(f"unknown table format {fmt!r}; valid: {', '.join(FORMATS)}")
    return {"md": to_markdown, "csv": to_csv, "tex": to_latex}[fmt](name, df)
