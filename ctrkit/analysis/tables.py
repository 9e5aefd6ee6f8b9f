"""The paper's result tables, each a function of the results store returning a numeric tidy DataFrame.

Every table function takes a store path / ResultsStore / tidy DataFrame (`ctrkit.analysis.records`);
`ctrkit.analysis.render` turns a table into its human form and writes Markdown, LaTeX or CSV.

How the numbers are made (the same in every table):
- Runs are grouped by `settings_key` (every setting that changes a result except the seed): a table
  row never mixes settings. Runs tagged "exploration" (the widget) are left out unless asked for.
- Every headline number is a paired difference against its control, by seed (`ctrkit.analysis.pairing`):
  mutual - alone (the same peers, batches, schedule and stopping with weight 0), from scratch and when
  finetuning.
- 95% confidence intervals, p-values, Holm, relative % and RelaImpr: `ctrkit.analysis.stats`; the
  logloss difference sits beside the AUC difference.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ctrkit.analysis.pairing import (control_runs, largest_peer_set, paper_order, seed_pairs, setting_columns,
                                     versus_alone)
from ctrkit.analysis.records import CONTROL_FIELDS, file_version, flat_settings, per_file_version, records
from ctrkit.analysis.stats import (AUC_POINT, LEVEL, ci_columns, holm, mde_for_spread, paired, rel_pct, sd_of_interval,
                                   sd_upper, seeds_for_spread, t_interval, with_holm)
from ctrkit.core.utils import CtrkitError, did_you_mean
from ctrkit.experiments import designs


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
    epochs run, and how many seeds stopped at the epoch cap (not converged: flagged in `flag`). A model
    with baselines under several settings gets a row each, and a `differs` column names what differs."""
    df = records(source, include_exploration=include_exploration)
    b = df[df["mode"] == "baseline"]
    rows, ref, differs = [], bars_reference(), _differs(b)
    for (ds, peer, key), g in b.groupby(["dataset", "peer", "settings_key"], sort=True, dropna=False):
        cap = int((g["epoch_cap_hit"] == True).sum())  # noqa: E712 (None/NaN in older records: unknown)
        known = int(g["epoch_cap_hit"].notna().sum())
        epochs = pd.to_numeric(g["epochs"], errors="coerce")
        row = {"dataset": ds, "model": peer, "n_seeds": int(g["seed"].nunique()),
               "test_auc_mean": float(g["test_auc"].mean()), "test_auc_sd": float(g["test_auc"].std(ddof=1)),
               "test_logloss_mean": float(pd.to_numeric(g["test_logloss"]).mean()),
               "test_logloss_sd": float(pd.to_numeric(g["test_logloss"]).std(ddof=1)),
               "epochs_min": float(epochs.min()), "epochs_max": float(epochs.max()), "n_cap_hit": cap,
               "flag": "; ".join(filter(None, [
                   f"epoch cap hit in {cap}/{len(g)} seeds: not converged" if cap else
                   ("" if known else "convergence not recorded"),
                   # a record without its metrics (diverged, or another version's layout): the mean
                   # and SD stand on fewer seeds than n_seeds, which a reader must be told
                   f"test AUC missing in {n_gone}/{len(g)} seeds" if (n_gone := int(g["test_auc"].isna().sum())) else ""]))}
        proto = g["protocol"].dropna().iloc[0] if g["protocol"].notna().any() else None
        if ref:
            hit = ref.get((g["model"].iloc[0], ds, proto or "x4_001"))  # x4_001: ctrkit's default protocol
            row["bars_auc"] = hit["auc"] if hit else float("nan")
            row["bars_logloss"] = hit["logloss"] if hit and hit["logloss"] is not None else float("nan")
        rows.append({**row, **({"differs": differs.get((ds, peer, key), "")} if differs else {}), "settings_key": key})
    out = pd.DataFrame(rows)
    if "differs" in out:  # beside the model it qualifies
        out.insert(2, "differs", out.pop("differs"))
    return out.assign(_r=paper_order(out["model"])).sort_values(["dataset", "_r", "model"]).drop(columns="_r") \
        .reset_index(drop=True) if len(out) else out


def _differs(b: pd.DataFrame) -> dict:
    """{(dataset, peer, settings key): "name value, ..."} for a model with baselines under more than one
    setting: the settings its groups do not share, so two rows of one model say how they differ."""
    out = {}
    for (ds, peer), d in b.groupby(["dataset", "peer"], sort=False, dropna=False):
        firsts = d.drop_duplicates("settings_key")
        if len(firsts) < 2:
            continue
        flat = {r["settings_key"]: flat_settings(r) for _, r in firsts.iterrows()}
        names = list(dict.fromkeys(n for f in flat.values() for n in f))
        apart = [n for n in names if len({_shown_value(f.get(n)) for f in flat.values()}) > 1]
        for key, f in flat.items():
            out[(ds, peer, key)] = (", ".join(f"{n} {_shown_value(f.get(n))}" for n in apart)
                                    or f"settings key {key}")
    return out


def _shown_value(v) -> str:
    if isinstance(v, float):
        return "–" if np.isnan(v) else f"{v:g}"
    return "–" if v is None else str(v)


def _mutual_vs_alone(source, *, init: str, include_exploration: bool, peers: str | None,
                     settings: Sequence[str] | None) -> pd.DataFrame:
    df = records(source, include_exploration=include_exploration)
    mut = df[(df["mode"] == "mutual") & (df["init"] == init)]
    _check_peers(mut, peers, init)
    rows = []
    for ds, d in mut.groupby("dataset", sort=True):
        main = peers or largest_peer_set(d)
        d = d[d["peers"] == main]
        # the precision actually used is part of a setting too: amp "auto" is bf16 on one CPU, fp32 on another
        for (key, _), treat in d.groupby(["settings_key", d["amp"].astype(str)], sort=False):
            if settings is not None and key not in settings:
                continue
            for r in versus_alone(df, treat):
                rows.append({"dataset": ds, "peers": main, **setting_columns(treat), **r, "settings_key": key})
    return with_holm(pd.DataFrame(rows), ["dataset", "settings_key", "amp"])


def _check_peers(mut: pd.DataFrame, peers: str | None, init: str) -> None:
    """A peer set asked for by name that no mutual run of `init` has: one line, not an empty table."""
    have = sorted(set(mut["peers"].dropna().astype(str)))
    if peers is not None and peers not in have:
        raise CtrkitError(f"peers {peers!r}: no mutual run ({init}) of that peer set in the store; it has "
                          f"{', '.join(have) or 'none'}{did_you_mean(peers, have)}")


def left_out_peer_sets(name: str, source, *, include_exploration: bool = False, peers: str | None = None) -> str:
    """The mutual peer sets in the store that table `name` leaves out (it shows one per dataset: `peers`,
    else the largest), in words for its caption; '' when it leaves none out or has no peer set."""
    if name not in PEER_TABLES:
        return ""
    df = records(source, include_exploration=include_exploration)
    mut = df[(df["mode"] == "mutual") & (df["init"] == PEER_TABLES[name])]
    said = []
    for ds, d in mut.groupby("dataset", sort=True):
        main = peers or largest_peer_set(d)
        rest = sorted(set(d["peers"].dropna().astype(str)) - {main}, key=lambda p: (-p.count("+"), p))
        if rest:
            sizes = sorted({p.count("+") + 1 for p in rest})
            what = ", ".join(rest) if len(rest) <= 3 else \
                f"{len(rest)} peer sets of {sizes[0]}{'' if len(sizes) == 1 else f'-{sizes[-1]}'} peers"
            said.append(f"{ds}: {what}")
    return (f"Shown: one peer set per dataset; also in the store: {'; '.join(said)} (choose with --peers / peers=)"
            if said else "")


def scratch(source, *, include_exploration: bool = False, peers: str | None = None) -> pd.DataFrame:
    """Mutual learning from scratch vs the same peers trained alone under the identical schedule and
    stopping (mode alone, init scratch), paired by seed, per model; one block per settings key."""
    out = _mutual_vs_alone(source, init="scratch", include_exploration=include_exploration, peers=peers,
                           settings=None)
    return out.drop(columns=[c for c in out.columns if c.startswith(("mutual_gain", "alone_gain", "pretrained_auc"))])


@per_file_version  # the notebooks' sweep, headline, finetune and figure cells and `chosen` all read it
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
    out = out.assign(_r=paper_order(out["peer"])).sort_values(["dataset", "weight", "finetune_lr_scale", "_r", "peer"],
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
    words = {d: _choice_words(s[s["dataset"] == d]) for d in keep["dataset"].unique()}
    keep.insert(keep.columns.get_loc("peer"), "choice", keep["dataset"].map(words))
    return keep.reset_index(drop=True)


def _choice_words(s: pd.DataFrame) -> str:
    """How firm one dataset's choice is: its validation score against the runner-up's, and whether it
    lies at the edge of the grid (the best setting may then lie outside what was tried)."""
    g = s.drop_duplicates("settings_key")
    if len(g) < 2:
        return ""
    best, rest = g[g["chosen"]].iloc[0], g[~g["chosen"]]
    runner = rest.loc[rest["selection_valid_auc"].idxmax()]
    a, b = best["selection_valid_auc"], runner["selection_valid_auc"]
    # as many digits as tell the two apart (0.92514 vs 0.92508, not 0.9251 vs 0.9251), from 4 up to 6
    d = next((k for k in (4, 5, 6) if f"{a:.{k}f}" != f"{b:.{k}f}"), 6)
    said = [f"validation AUC {a:.{d}f} vs the runner-up's {b:.{d}f}" + (" (tied at 6 digits)" if f"{a:.6f}" == f"{b:.6f}" else "")]
    for col, name in (("weight", "weight"), ("finetune_lr_scale", "lr scale")):
        tried = sorted(g[col].dropna().unique())
        if len(tried) > 1 and best[col] in (tried[0], tried[-1]):
            said.append(f"{name} {best[col]:g} is the {'largest' if best[col] == tried[-1] else 'smallest'} tried")
    return "; ".join(said)


def partners(source, *, include_exploration: bool = False, pool: Sequence[str] = designs.PAPER_MODELS) -> pd.DataFrame:
    """Pairs (N = 2) of pretrained peers: mutual - alone of each target with each partner, paired by
    seed, with the partner's mean pretrained test AUC (`display` pivots it into the matrix)."""
    df = records(source, include_exploration=include_exploration)
    two = df[(df["mode"] == "mutual") & (df["init"] == "pretrained") & (df["n_peers"] == 2)]
    two = two[two["model"].isin(pool)]
    rows = []
    for key, treat in two.groupby("settings_key", sort=True):
        for r in versus_alone(df, treat):
            partner = [p for p in treat["peer"].unique() if p != r["peer"]]
            if not partner:
                continue
            pre = treat[treat["peer"] == partner[0]]["pretrained_test_auc"]
            rows.append({"dataset": treat["dataset"].iloc[0], "setting_id": treat["setting_id"].iloc[0],
                         **setting_columns(treat), "target": r.pop("peer"), "partner": partner[0],
                         "partner_auc_mean": float(pre.mean()), **r})
    out = with_holm(pd.DataFrame(rows), ["dataset", "setting_id"])
    return out.sort_values(["dataset", "setting_id", "target", "partner"]).reset_index(drop=True) if len(out) else out


def partner_points(source, *, include_exploration: bool = False,
                   pool: Sequence[str] = designs.PAPER_MODELS) -> pd.DataFrame:
    """Per (target, partner, seed): rel % of mutual - alone and the partner's pretrained test AUC
    of that seed (the points behind `partner_slopes` and its figure)."""
    df = records(source, include_exploration=include_exploration)
    two = df[(df["mode"] == "mutual") & (df["init"] == "pretrained") & (df["n_peers"] == 2) & df["model"].isin(pool)]
    parts = []
    for key, treat in two.groupby("settings_key", sort=True):
        m = seed_pairs(treat, control_runs(df, treat))
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
    the partner's pretrained test AUC, fitted to one point per partner (its means over seeds), with
    the slope's 95% t-interval on n_partners - 2 degrees of freedom. Not over the (partner, seed)
    points: a partner's seeds share whatever else that partner brings, so they are not independent
    evidence about its AUC, and treating them so makes the interval far too narrow (with 3
    partners and a partner effect unrelated to AUC, a 15-point fit excluded 0 about half the time).
    With the paper's pool each model has 3 partners: 1 degree of freedom, an honest, wide interval.
    One slope per model, no pooled line across models."""
    return slopes_of_points(partner_points(source, include_exploration=include_exploration, pool=pool))


def slopes_of_points(pts: pd.DataFrame) -> pd.DataFrame:
    """`partner_slopes` of a `partner_points` frame: slope and interval in rel % per AUC point
    (`stats.AUC_POINT`), the intercept at a partner AUC of 0; p_holm: p_slope Holm-corrected across
    the targets of one dataset and setting."""
    from scipy import stats

    rows = []
    for (ds, sid, target), g in pts.dropna(subset=["partner_auc", "rel_pct"]).groupby(
            ["dataset", "setting_id", "target"], sort=True):
        means = g.groupby("partner")[["partner_auc", "rel_pct"]].mean()
        row = {"dataset": ds, "setting_id": sid, "target": target, "n_points": len(g), "n_partners": len(means)}
        if len(means) >= 3 and np.ptp(means["partner_auc"]) > 0:
            fit = stats.linregress(means["partner_auc"] / AUC_POINT, means["rel_pct"])
            half = float(stats.t.ppf(0.5 + LEVEL / 2, len(means) - 2) * fit.stderr)
            row.update(slope_mean=float(fit.slope), slope_ci_low=fit.slope - half, slope_ci_high=fit.slope + half,
                       intercept=float(fit.intercept), r=float(fit.rvalue), p_slope=float(fit.pvalue), note="")
        else:
            row.update(slope_mean=np.nan, slope_ci_low=np.nan, slope_ci_high=np.nan, intercept=np.nan, r=np.nan,
                       p_slope=np.nan, note="<3 partners or one partner AUC: no slope")
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    # one family per dataset and setting (its targets), as every other table of the dataset corrects
    out.insert(out.columns.get_loc("p_slope") + 1, "p_holm", np.nan)
    for _, g in out.groupby(["dataset", "setting_id"], sort=False):
        out.loc[g.index, "p_holm"] = holm(g["p_slope"].to_numpy())
    return out


def _per_seed_design(df: pd.DataFrame, d: pd.DataFrame, *, target: str, n: int, pool: Sequence[str]) -> pd.DataFrame:
    """Per seed, for `target` in runs of `n` peers: mean over ALL partner subsets of size n - 1 of the
    mutual AUC, the matching alone AUC and the pretrained AUC; seeds missing a subset are dropped."""
    want = {"+".join(designs.peer_set(target=target, partners=s, pool=pool))
            for s in designs.partner_subsets(target=target, pool=pool, n_peers=n)}
    runs = d[(d["peer"] == target) & (d["n_peers"] == n) & d["peers"].isin(want)]
    parts = []
    for key, treat in runs.groupby("settings_key", sort=True):
        m = seed_pairs(treat, control_runs(df, treat))
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
    # a boolean Series, not a list: an empty list would select columns (none), not rows
    mut = mut[mut["peers"].map(lambda s: all(p in pool for p in str(s).split("+"))).astype(bool)]
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
                row = {"dataset": ds, "setting_id": sid, **setting_columns(d), "model": target, "n_peers": n,
                       "n_subsets": int(per["n_subsets"].iloc[0]), "n_seeds": len(per),
                       "test_auc_mean": float(per["auc"].mean()), **ci_columns("gain_rel_pct", rel_pct(per["auc"], per["pre"]))}
                st = paired(per["auc"], per["alone"])
                row.update({k: st[k] for k in ("rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high", "p_ttest", "note")})
                if n == 1:
                    row.update(rel_pct_ci_low=np.nan, rel_pct_ci_high=np.nan, p_ttest=np.nan,
                               note="N = 1 is the control")
                rows.append(row)
    out = pd.DataFrame(rows)
    return with_holm(out, ["dataset", "setting_id"]) if len(out) else out


def _arm_values(frame: pd.DataFrame, *, auc: str = "test_auc", students_only: bool = False) -> pd.DataFrame:
    """[unit, seed, auc, logloss] of one arm: each peer (unit = its label) and the run's ensemble."""
    peers = frame[frame["peer_index"] != 0] if students_only else frame
    ll = {"test_auc": "test_logloss", "pretrained_test_auc": "pretrained_test_logloss"}[auc]
    out = [pd.DataFrame({"unit": peers["peer"], "seed": peers["seed"], "auc": pd.to_numeric(peers[auc]),
                         "logloss": pd.to_numeric(peers[ll]) if ll in peers else np.nan})]
    if auc == "test_auc":
        ens = frame.drop_duplicates("seed", keep="last")
        out.append(pd.DataFrame({"unit": "ensemble", "seed": ens["seed"],
                                 "auc": pd.to_numeric(ens["ensemble_test_auc"]),
                                 "logloss": pd.to_numeric(ens.get("ensemble_test_logloss"))}))
    return pd.concat(out, ignore_index=True).dropna(subset=["auc"])


def _control_arms(df: pd.DataFrame, mut: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The arms of the controls table beside the chosen mutual run: pretrained peers and their
    ensemble, finetuned alone, mutual, and each KD run (students only) of the same peer set."""
    alone = control_runs(df, mut)
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


def tuned_alone(df: pd.DataFrame, ctrl: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """(lr scale, records) of finetuning alone at the lr scale that is best for ALONE on validation,
    among the alone runs that differ from the control `ctrl` (the mutual run's, at the mutual run's
    lr scale) in that scale only: the baseline tuned for itself, not for mutual learning."""
    same = [f for f in CONTROL_FIELDS if f != "finetune_lr_scale"]
    if ctrl.empty:
        return float("nan"), ctrl
    want = [str(v) for v in ctrl[same].iloc[0]]
    cand = df[(df["mode"] == "alone") & (df["peers"] == ctrl["peers"].iloc[0])]
    cand = cand[[[str(v) for v in r] == want for r in cand[same].itertuples(index=False)]]
    groups = [max((g for _, g in c.groupby("settings_key")), key=lambda g: (len(g), g["settings_key"].iloc[0]))
              for _, c in cand.groupby("finetune_lr_scale")]
    if not groups:
        return float(ctrl["finetune_lr_scale"].iloc[0]), ctrl
    best = designs.choose_on_validation(pd.concat(groups), keys=["finetune_lr_scale"])
    lr = float(best["finetune_lr_scale"].iloc[0])
    return lr, next(g for g in groups if np.isclose(float(g["finetune_lr_scale"].iloc[0]), lr))


def _with_finetune(source, *, include_exploration: bool, peers: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(records, finetune) of one version of `source`: a results file's finetune table is memoised
    (its sweep with it), and a file replaced between the two reads (an export landing) falls back to
    the finetune of the records read, so the two never mix versions."""
    version = file_version(source)
    df = records(source, include_exploration=include_exploration)
    same = version is not None and file_version(source) == version
    fin = finetune(source if same else df, include_exploration=include_exploration, peers=peers)
    if same and file_version(source) != version:
        fin = finetune(df, include_exploration=include_exploration, peers=peers)
    return df, fin


def controls(source, *, include_exploration: bool = False, peers: str | None = None) -> pd.DataFrame:
    """Every arm next to finetuning alone, per model and for the ensemble (the peers' mean
    probability): the pretrained checkpoints and their ensemble, mutual finetuning at the setting
    chosen on validation, and knowledge distillation from the best model (students). Differences
    are paired by seed against the alone control of the same unit, 95% t-intervals, Holm per dataset.
    The last arm compares mutual with finetuning alone at the lr scale best for alone on validation
    (`tuned_alone`; its `alone_auc_mean` is that baseline's): the gain over a baseline tuned for
    itself, Holm-corrected within its own rows."""
    df, fin = _with_finetune(source, include_exploration=include_exploration, peers=peers)
    if fin.empty:
        return fin
    rows = []
    for (ds, key), _ in fin.groupby(["dataset", "settings_key"], sort=True):
        mut = df[df["settings_key"] == key]
        arms = _control_arms(df, mut)
        lr, tuned = tuned_alone(df, control_runs(df, mut))
        versus_tuned = f"mutual vs alone at its own best lr scale (x{lr:g}, on validation)"
        arms.append((versus_tuned, arms[2][1]))
        for arm, vals in arms:
            ref = _arm_values(tuned) if arm == versus_tuned else arms[1][1]
            for unit, g in vals.groupby("unit", sort=False):
                g = g.merge(ref, on=["unit", "seed"], suffixes=("", "_alone")).dropna(subset=["auc", "auc_alone"])
                row = {"dataset": ds, "arm": arm, "unit": unit, "auc_mean": float(g["auc"].mean()),
                       "alone_auc_mean": float(g["auc_alone"].mean())}
                if arm == "alone":
                    row.update(n_pairs=len(g), note="the control")
                else:
                    row.update(paired(g["auc"], g["auc_alone"], logloss_new=g["logloss"],
                                      logloss_ref=g["logloss_alone"]))
                rows.append({**row, "settings_key": key, "_family": arm == versus_tuned})
    # the headline against another baseline is its own family (Holm across the units, as the
    # headline's across the models), not more tests of the controls: it would weaken their correction
    return with_holm(pd.DataFrame(rows), ["dataset", "_family"]).drop(columns="_family")


def _alternative_units(mut: pd.DataFrame, ens: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per unit, one row per seed: the mutual AUC/logloss, the pretrained AUC it started from, the
    pretrained ensemble's AUC/logloss; units: each model, the best mutual model of each seed chosen on
    validation, and the mutual run's own ensemble."""
    m = mut.drop_duplicates(["peer", "seed"], keep="last")
    m = m.assign(auc=pd.to_numeric(m["test_auc"]), logloss=pd.to_numeric(m["test_logloss"]),
                 pre=pd.to_numeric(m["pretrained_test_auc"]))
    m = m.merge(ens, on="seed", how="left")
    units = [(peer, g) for peer, g in m.groupby("peer", sort=False)]
    best = m.sort_values(["seed", "valid_auc"], ascending=[True, False]).drop_duplicates("seed")
    units.append(("best mutual model (on validation)", best))
    own = m.drop_duplicates("seed", keep="last").assign(
        auc=lambda t: pd.to_numeric(t["ensemble_test_auc"]), logloss=lambda t: pd.to_numeric(t.get("ensemble_test_logloss")),
        pre=lambda t: t["ens_auc"])
    if own["auc"].notna().any():
        units.append(("mutual ensemble", own))
    return units


def alternatives(source, *, include_exploration: bool = False, peers: str | None = None) -> pd.DataFrame:
    """The practical question beside mutual - alone, at the setting chosen on validation: is one
    mutually finetuned model better than the plain mean of the pretrained peers' probabilities (the
    pretrained ensemble, no training)? Per model, for the best mutual model of each seed (chosen on
    validation) and for the mutual run's own ensemble: mutual - pretrained ensemble, paired by seed
    (the main columns, Holm per dataset), mutual - its pretrained checkpoint, the share of the
    ensemble's gain over the pretrained model that the single model keeps (100 * mean(mutual -
    pretrained) / mean(ensemble - pretrained)), and in how many seeds the pretrained ensemble wins."""
    df, fin = _with_finetune(source, include_exploration=include_exploration, peers=peers)
    rows = []
    for (ds, key), f in (fin.groupby(["dataset", "settings_key"], sort=True) if len(fin) else []):
        mut = df[df["settings_key"] == key]
        e = df[(df["dataset"] == ds) & (df["mode"] == "ensemble") & (df["init"] == "pretrained")
               & (df["peers"] == mut["peers"].iloc[0])].drop_duplicates("seed", keep="last")
        ens = pd.DataFrame({"seed": e["seed"], "ens_auc": pd.to_numeric(e["ensemble_test_auc"]),
                            "ens_logloss": pd.to_numeric(e.get("ensemble_test_logloss"))})
        for unit, g in _alternative_units(mut, ens):
            row = {"dataset": ds, **setting_columns(mut), "unit": unit, "mutual_auc_mean": float(g["auc"].mean()),
                   "pretrained_auc_mean": float(g["pre"].mean()), "ensemble_auc_mean": float(g["ens_auc"].mean())}
            h = g.dropna(subset=["auc", "ens_auc"])
            if len(h):
                row.update(paired(h["auc"], h["ens_auc"], logloss_new=h["logloss"], logloss_ref=h["ens_logloss"]))
                gain, (ens_gain, ens_low, _) = (h["auc"] - h["pre"]).mean(), t_interval(h["ens_auc"] - h["pre"])
                # a share of a gain indistinguishable from 0 is a ratio of noise (it ran to 16,000%)
                row["share_of_ensemble_gain_pct"] = 100 * gain / ens_gain if ens_low > 0 else np.nan
                if not ens_low > 0:
                    row["note"] = "; ".join(filter(None, [row.get("note"), NOTE_NO_SHARE]))
                row["n_ensemble_better"] = int((h["ens_auc"] > h["auc"]).sum())
            else:
                row.update(n_pairs=0, note="no pretrained ensemble run: only mutual - pretrained")
            row.update(ci_columns("vs_pretrained_rel_pct", rel_pct(g["auc"], g["pre"])))
            rows.append({**row, "settings_key": key})
    return with_holm(pd.DataFrame(rows), ["dataset"])


NOTE_NO_SHARE = "ensemble gain over pretrained not above 0 (95% CI): no share"

_NOT_HYPER = ("seed", "device", "progress", "threads", "check_every", "eval_batch_size")


def _varying(b: pd.DataFrame) -> list[dict[str, str]]:
    """Each baseline's hyperparameters that differ between its model's runs (the model and train
    settings of its config, values as JSON text): {} where none differ."""
    import json

    flat = []
    for cfg in b["config"]:
        c = json.loads(cfg) if isinstance(cfg, str) else (cfg if isinstance(cfg, dict) else {})
        flat.append({k: json.dumps(v, sort_keys=True) for part in ("model", "train")
                     for k, v in (c.get(part) or {}).items() if k not in _NOT_HYPER})
    out: list[dict[str, str]] = [{} for _ in flat]
    for _, idx in pd.Series(range(len(flat))).groupby([b["dataset"].to_numpy(), b["model"].to_numpy()]):
        rows = [flat[i] for i in idx]
        vary = sorted(k for k in set().union(*rows) if len({r.get(k) for r in rows}) > 1)
        for i in idx:
            out[i] = {k: flat[i].get(k, "-") for k in vary}
    return out


def _edge(chosen: dict[str, str], tried: list[dict[str, str]]) -> str:
    """The hyperparameters whose chosen value is the largest or the smallest number the search tried
    (`designs.edges`, on the values' JSON text): the best on validation may lie beyond it."""
    import json

    def number(text: str | None) -> float | None:
        try:
            v = json.loads(text) if text is not None else None
        except ValueError:  # "-": the candidate does not set it
            return None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    found = designs.edges({k: number(v) for k, v in chosen.items()},
                          [{k: number(v) for k, v in t.items()} for t in tried])
    return "; ".join(f"{side} tried: {', '.join(k for k, s in found.items() if s == side)}"
                     for side in ("largest", "smallest") if side in found.values())


def tuning(source, *, include_exploration: bool = False) -> pd.DataFrame:
    """The baselines' hyperparameter search: per model, every candidate (the hyperparameters in which
    its runs differ) with its mean validation AUC and logloss over seeds, and `chosen`: the best on validation
    (`designs.choose_on_validation`, which reads validation columns only). The test AUC is shown
    beside it and never chooses. `edge`, on the chosen row: the hyperparameters it took at the end
    of the range tried (`_edge`)."""
    df = records(source, include_exploration=include_exploration)
    b = df[df["mode"] == "baseline"]
    if b.empty:
        return pd.DataFrame()
    varying = _varying(b)
    b = b.assign(candidate=[", ".join(f"{k}={v}" for k, v in row.items()) or "preset" for row in varying])
    b = b.assign(valid_logloss=pd.to_numeric(b["valid_logloss"]), test_logloss=pd.to_numeric(b["test_logloss"]))
    choice = designs.choose_on_validation(b, keys=["candidate"], by=["dataset", "model"])
    chosen = set(zip(choice["dataset"], choice["model"], choice["candidate"]))
    values = dict(zip(zip(b["dataset"], b["model"], b["candidate"]), varying))
    out = b.groupby(["dataset", "model", "candidate"], sort=True).agg(
        n_seeds=("seed", "nunique"), valid_auc_mean=("valid_auc", "mean"), valid_auc_sd=("valid_auc", "std"),
        valid_logloss_mean=("valid_logloss", "mean"), test_auc_mean=("test_auc", "mean"),
        test_auc_sd=("test_auc", "std"), epochs_max=("epochs", "max")).reset_index()
    keys = list(zip(out["dataset"], out["model"], out["candidate"]))
    out["chosen"] = [k in chosen for k in keys]
    out["edge"] = [_edge(values[k], [v for (d, m, _), v in values.items() if (d, m) == k[:2]]) if k in chosen
                   else "" for k in keys]
    out = out.assign(_r=paper_order(out["model"])).sort_values(["dataset", "_r", "model", "candidate"])
    return out.drop(columns="_r").reset_index(drop=True)


HEADLINE_COLS = ["dataset", "model", "weight", "finetune_lr_scale", "n_pairs", "rel_pct_mean", "rel_pct_ci_low",
                 "rel_pct_ci_high", "rel_pct_mde", "relaimpr_pct_mean", "relaimpr_pct_ci_low", "relaimpr_pct_ci_high",
                 "logloss_diff_mean", "logloss_diff_ci_low", "logloss_diff_ci_high", "p_holm", "note",
                 "n_kept_pretrained_mutual", "n_kept_pretrained_alone", "choice"]


def headline(source, *, include_exploration: bool = False, peers: str | None = None) -> pd.DataFrame:
    """The README's table: mutual - alone finetuning per model and dataset at the setting chosen on
    validation, relative % and RelaImpr with their 95% paired t-intervals, the logloss difference."""
    ft = finetune(source, include_exploration=include_exploration, peers=peers)
    return ft[[c for c in HEADLINE_COLS if c in ft.columns]].reset_index(drop=True) if len(ft) else ft


# The paper's largest relative test-AUC gains of mutual finetuning over finetuning alone (Yilmaz &
# Aldemir): the effect sizes `power` asks the finetune table's pairs about
PAPER_GAINS = {"criteo": 0.37, "avazu": 0.66}


def power(source, *, include_exploration: bool = False, peers: str | None = None,
          effect: float | None = None) -> pd.DataFrame:
    """What the headline's null results rule out: per model, the finetune table's interval and
    `rel_pct_mde` beside a claimed gain (`effect`, else the paper's for the dataset: PAPER_GAINS),
    whether the interval excludes it, and how many seeds the paired t-test would need to find it with
    80% power at the spread seen (the per-seed SD, from the interval). The spread of a few seeds is
    itself uncertain: `rel_pct_mde_sd_upper` is the MDE at the SD's one-sided 95% upper bound, and the
    finetune table's `note` (pairs identical to the last bit leave the SD to the others) comes along."""
    ft = finetune(source, include_exploration=include_exploration, peers=peers)
    if ft.empty:
        return ft
    sd = [sd_of_interval(lo, hi, int(k)) for lo, hi, k in zip(ft["rel_pct_ci_low"], ft["rel_pct_ci_high"], ft["n_pairs"])]
    claim = [effect if effect is not None else PAPER_GAINS.get(str(d).split(" [")[0], np.nan) for d in ft["dataset"]]
    out = ft[["dataset", "model", "n_pairs", "rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high", "rel_pct_mde"]].copy()
    out["rel_pct_mde_sd_upper"] = [mde_for_spread(sd_upper(v, int(k)), int(k)) for v, k in zip(sd, ft["n_pairs"])]
    out["sd_per_seed"] = sd
    out["claimed_rel_pct"] = claim
    out["claim_outside_ci"] = [bool(c > hi or c < lo) if not (np.isnan(c) or np.isnan(lo)) else None
                               for c, lo, hi in zip(claim, out["rel_pct_ci_low"], out["rel_pct_ci_high"])]
    out["seeds_for_claim"] = [seeds_for_spread(s, c) if not (np.isnan(c) or np.isnan(s)) else np.nan
                              for s, c in zip(sd, claim)]
    out["note"] = ft["note"].to_numpy() if "note" in ft.columns else ""
    return out.reset_index(drop=True)


TABLES: dict[str, Callable] = {
    "baselines": baselines, "scratch": scratch, "finetune": finetune, "sweep": sweep, "partners": partners,
    "partner_slopes": partner_slopes, "peer_count": peer_count, "controls": controls, "headline": headline,
    "alternatives": alternatives, "tuning": tuning, "power": power,
}
NAMES = tuple(TABLES)
# The tables of one peer set per dataset (the largest unless `peers` names one), and the init they read
PEER_TABLES = {"scratch": "scratch", "finetune": "pretrained", "sweep": "pretrained", "controls": "pretrained",
               "alternatives": "pretrained", "headline": "pretrained", "power": "pretrained"}


# What a table needs from the store, said when it comes out empty
_NEEDS = {
    "baselines": "pretrained baselines (`ctrkit pretrain`, experiments.pretrain_baselines)",
    "tuning": "pretrained baselines (`ctrkit pretrain`, experiments.pretrain_baselines)",
    "partners": "mutual runs of pairs (N = 2) of the paper's models from pretrained peers, with their alone control",
    "partner_slopes": "mutual runs of pairs (N = 2) of the paper's models from pretrained peers, with their alone "
                      "control, for 3 or more partners of a model",
    "peer_count": "for a model, mutual runs of every subset of the paper's four models that holds it "
                  "(designs.peer_count_sets) from pretrained peers, with their alone control",
}


def why_empty(name: str, source, *, include_exploration: bool = False) -> str:
    """Why table `name` of `source` has no rows, in words: what it needs and what the store lacks."""
    df = records(source, include_exploration=include_exploration)
    if df.empty:
        return "the store has no runs" + ("" if include_exploration else " (exploration runs left out)")
    if name not in PEER_TABLES:
        return f"it needs {_NEEDS.get(name, 'other runs')}"
    init = PEER_TABLES[name]
    if not ((df["mode"] == "mutual") & (df["init"] == init)).any():
        return f"the store has no mutual runs from {'scratch' if init == 'scratch' else 'pretrained peers'}"
    return (f"no mutual run ({init}) has an alone control of the same settings (data, preset, batch, epochs, lr "
            f"scale and the same pretrained peers, seed by seed): run modes=['mutual', 'alone'] "
            f"(`ctrkit mutual --mode alone`) with the same settings")


def table(name: str, source, *, include_exploration: bool = False, peers: str | None = None) -> pd.DataFrame:
    """Table `name` of `source`; `peers` ("DeepFM+DCN") picks the peer set of the PEER_TABLES."""
    if name not in TABLES:
        raise CtrkitError(f"unknown table {name!r}; valid: {', '.join(NAMES)}{did_you_mean(name, NAMES)}")
    if peers is None:
        return TABLES[name](source, include_exploration=include_exploration)
    if name not in PEER_TABLES:
        raise CtrkitError(f"peers: the {name} table has no peer-set choice (these have: {', '.join(PEER_TABLES)})")
    return TABLES[name](source, include_exploration=include_exploration, peers=peers)
