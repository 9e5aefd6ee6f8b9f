"""The mutual-finetuning gain against the baseline's strength: the headline at several model sizes side by side.

Each size is a model preset (`ctrkit.training.presets`), or a preset on a share of the training rows
(`"smoke@25%"`: `size_parts`; a baseline weaker for less data, not for less training), with its own
records (a store, a results CSV or a frame): `table()` keeps each source's records of that preset only,
so mutual and alone finetuning are paired by seed within one size (never a full-size mutual run against
a small alone run of the same seed), at the setting the size's own sweep chose on validation (its only
setting when it has none).
`display()` is the side-by-side form; `table()` is also what `ctrkit.analysis.plots.gain_vs_strength` draws
(gain with its 95% paired t-interval against the pretrained test AUC, per model and size).

Whether the gain changes with strength is `contrast()`: per model and pair of sizes A, B, the per-seed
difference gain_s(A) - gain_s(B) over the seeds both sizes ran (`seed_gains`: the very pairs the
`table()` rows rest on), its mean [95% t-interval], one-sample t-test and Holm across the models of a
dataset, beside how much stronger A's pretrained model is than B's (A - B, the same seeds).
"""
from __future__ import annotations

import re
from itertools import combinations
from typing import Mapping

import pandas as pd

from ctrkit.analysis import pairing, records, tables
from ctrkit.analysis.stats import ci_columns, differences, rel_pct, with_holm
from ctrkit.core.utils import CtrkitError

COLUMNS = ["size", "dataset", "model", "peer", "n_pairs", "pretrained_auc_mean", "alone_auc_mean",
           "mutual_auc_mean", "auc_diff_mean", "auc_diff_ci_low", "auc_diff_ci_high", "rel_pct_mean",
           "rel_pct_ci_low", "rel_pct_ci_high", "p_holm", "n_kept_pretrained_mutual", "n_kept_pretrained_alone",
           "weight", "finetune_lr_scale", "chosen_on", "flag"]


_SIZE = re.compile(r"([A-Za-z0-9_-]+)(?:@([1-9][0-9]?)%)?")


def size_parts(size: str) -> tuple[str, float]:
    """A size's (model preset, share of the training rows): "smoke" -> ("smoke", 1.0), "smoke@25%" ->
    ("smoke", 0.25); anything else is one line naming the size and the form."""
    m = _SIZE.fullmatch(size) if isinstance(size, str) else None
    if m is None:
        raise CtrkitError(f"size {size!r}: expected a model preset, or a preset at a share of the training rows "
                          f"in whole percent from 1 to 99, e.g. 'smoke' or 'smoke@25%'")
    return m[1], (int(m[2]) / 100 if m[2] else 1.0)


def _of_size(df: pd.DataFrame, size: str) -> pd.Series:
    """The records of a size's preset (a size's own store holds only its share's runs)."""
    return df["preset"].astype(str) == size_parts(str(size))[0]


def table(sources: Mapping[str, object], *, dataset: str | None = None) -> pd.DataFrame:
    """One row per size and model: mutual - alone finetuning (paired by seed within the size) and the
    pretrained test AUC both arms started from. `sources`: {preset name: store, CSV or frame}, in the
    order the sizes are shown; a source may hold other presets' records too (they are left out)."""
    if not sources:
        raise CtrkitError("strength table: no sizes given")
    out = [ft.assign(size=size)[[c for c in COLUMNS if c in ft.columns or c == "size"]]
           for size, _, ft in _finetuned(sources, dataset)]
    if not out:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(out, ignore_index=True).reindex(columns=COLUMNS)


def _finetuned(sources: Mapping[str, object], dataset: str | None):
    """(size, its records, its finetune table) of every size with finetuning rows, in `sources`' order:
    each size's records are its preset's only (exploration left out)."""
    for size, source in sources.items():
        df = records.records(source, dataset=dataset)
        df = df[_of_size(df, size)]
        ft = tables.finetune(df) if len(df) else pd.DataFrame()
        if not ft.empty:
            yield size, df, ft


def sizes_note(sources: Mapping[str, object], t: pd.DataFrame, *, dataset: str | None = None) -> str:
    """Per size, the finetuning setting its rows ran at and how many of its baselines stopped at the
    epoch cap (an undertrained baseline is a weaker one): what a caption owes the strength table."""
    parts = []
    for size, source in sources.items():
        df = records.records(source, dataset=dataset)
        base = df[_of_size(df, size) & (df["mode"] == "baseline")]
        rows = t[t["size"] == size].drop_duplicates(["weight", "finetune_lr_scale"])
        setting = ", ".join(f"weight {r.weight:g}, lr scale {r.finetune_lr_scale:g}" for r in rows.itertuples())
        cap = f"{int((base['epoch_cap_hit'] == True).sum())}/{len(base)}" if "epoch_cap_hit" in base else "?"  # noqa: E712
        parts.append(f"{size}: {setting or 'no finetuning rows'}, baselines at the epoch cap {cap}")
    return "; ".join(parts)


SEED_COLUMNS = ["size", "dataset", "peer", "seed", "pretrained_auc", "gain_rel_pct", "kept_mutual", "kept_alone"]


def seed_gains(sources: Mapping[str, object], *, dataset: str | None = None) -> pd.DataFrame:
    """One row per size, model and seed: the mutual/alone pair a `table()` row rests on (the setting
    `tables.finetune` chose, its control and seed pairing from `ctrkit.analysis.pairing`), its gain
    (mutual - alone, rel %), the pretrained test AUC both arms started from and whether each arm kept
    its pretrained weights (best epoch 0). A pair missing either AUC is left out, as `stats.paired`
    leaves it out of the row's interval."""
    out = []
    for size, df, ft in _finetuned(sources, dataset):
        mut = df[(df["mode"] == "mutual") & (df["init"] == "pretrained")]
        # the treatment of each chosen row group: its dataset's main peer set at the chosen settings key, split
        # by precision as tables.finetune splits it (as text: None and NaN are one value there)
        for r in ft.drop_duplicates(["dataset", "peers", "settings_key", "amp"]).itertuples(index=False):
            treat = mut[(mut["dataset"] == r.dataset) & (mut["peers"] == r.peers)
                        & (mut["settings_key"] == r.settings_key) & (mut["amp"].astype(str) == str(r.amp))]
            m = pairing.seed_pairs(treat, pairing.control_runs(df, treat)).dropna(subset=["test_auc_t", "test_auc_c"])
            out.append(pd.DataFrame({"size": size, "dataset": r.dataset, "peer": m["peer"], "seed": m["seed"],
                                     "pretrained_auc": pd.to_numeric(m["pretrained_test_auc_t"]),
                                     "gain_rel_pct": rel_pct(m["test_auc_t"], m["test_auc_c"]),
                                     **{f"kept_{arm}": _kept(m, s) for arm, s in (("mutual", "_t"), ("alone", "_c"))}}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=SEED_COLUMNS)


def _kept(m: pd.DataFrame, suffix: str) -> pd.Series:
    """Per pair, whether that arm kept its pretrained weights (best epoch 0: no epoch beat the checkpoint)."""
    col = f"best_epoch{suffix}"
    return pd.to_numeric(m[col], errors="coerce").eq(0) if col in m else pd.Series(False, index=m.index)


CONTRAST_COLUMNS = ["dataset", "peer", "size_a", "size_b", "n_pairs", "n_left_out", "gain_a_mean", "gain_b_mean",
                    "pretrained_auc_diff_mean", "pretrained_auc_diff_ci_low", "pretrained_auc_diff_ci_high",
                    "gain_diff_mean", "gain_diff_ci_low", "gain_diff_ci_high", "gain_diff_mde", "p_ttest", "p_holm",
                    "note"]


def contrast(sources: Mapping[str, object], *, dataset: str | None = None) -> pd.DataFrame:
    """Does the gain change with the baseline's strength? One row per dataset, model and pair of sizes
    (A before B in `sources`' order): the per-seed difference gain_s(A) - gain_s(B) of `seed_gains`
    over the seeds both sizes have (`n_left_out`: seeds of one size only), its mean [95% paired
    t-interval], MDE and one-sample t-test (p_holm: Holm across every row of a dataset), beside the
    pretrained test AUC difference A - B of the same seeds [95% t-interval] and both sizes' mean gains."""
    g = seed_gains(sources, dataset=dataset)
    rows = []
    for (ds, peer), one in g.groupby(["dataset", "peer"], sort=False):
        for a, b in combinations(list(sources), 2):
            ga = one[one["size"] == a].set_index("seed")
            gb = one[one["size"] == b].set_index("seed")
            if ga.empty or gb.empty:
                continue  # the model ran at one size only: nothing to contrast
            both = ga.index.intersection(gb.index).sort_values()
            d = ga.loc[both, "gain_rel_pct"] - gb.loc[both, "gain_rel_pct"]
            rows.append({"dataset": ds, "peer": peer, "size_a": a, "size_b": b,
                         "n_left_out": len(ga.index.symmetric_difference(gb.index)),
                         "gain_a_mean": float(ga.loc[both, "gain_rel_pct"].mean()),
                         "gain_b_mean": float(gb.loc[both, "gain_rel_pct"].mean()),
                         **ci_columns("pretrained_auc_diff", ga.loc[both, "pretrained_auc"] - gb.loc[both, "pretrained_auc"]),
                         **_with_kept(differences(d, prefix="gain_diff"), {a: ga.loc[both], b: gb.loc[both]})})
    if not rows:
        return pd.DataFrame(columns=CONTRAST_COLUMNS)
    return with_holm(pd.DataFrame(rows), ["dataset"]).reindex(columns=CONTRAST_COLUMNS)


def _with_kept(row: dict, by_size: dict[str, pd.DataFrame]) -> dict:
    """`row` with its note saying, per size, how many of the pairs' arms kept the pretrained weights:
    a size where mutual kept them and alone did not has a gain that is only minus alone's finetuning."""
    words = [f"{size} {arm} {int(g[f'kept_{arm}'].sum())}/{len(g)}" for size, g in by_size.items()
             for arm in ("mutual", "alone") if g[f"kept_{arm}"].sum()]
    kept = f"kept the pretrained weights (best epoch 0): {', '.join(words)}" if words else ""
    return {**row, "note": "; ".join(n for n in (row["note"], kept) if n)}


def _interval(r, prefix: str, fmt: str) -> str:
    m, lo, hi = r[f"{prefix}_mean"], r[f"{prefix}_ci_low"], r[f"{prefix}_ci_high"]
    return "" if pd.isna(m) else f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def display(df: pd.DataFrame) -> pd.DataFrame:
    """The side-by-side form: one row per model, per size its pretrained AUC, its gain (relative %
    with the 95% paired t-interval), its Holm p and the pairs it rests on with how many of each arm
    kept the pretrained weights (mutual/alone: a gain where only mutual kept them is minus alone's
    finetuning, not a mutual effect)."""
    if df.empty:
        return pd.DataFrame()
    sizes = list(dict.fromkeys(df["size"]))
    rows = {}
    for r in df.itertuples(index=False):
        r = r._asdict()
        row = rows.setdefault((r["dataset"], r["peer"]), {"dataset": r["dataset"], "model": r["peer"]})
        row[f"{r['size']}: pretrained AUC"] = f"{r['pretrained_auc_mean']:.4f}"
        row[f"{r['size']}: mutual - alone (rel. %)"] = _interval(r, "rel_pct", "+.3f")
        row[f"{r['size']}: p (Holm)"] = "–" if pd.isna(r["p_holm"]) else f"{r['p_holm']:.3f}"
        row[f"{r['size']}: {PAIRS}"] = f"{int(r['n_pairs'])} ({_count(r['n_kept_pretrained_mutual'])}/" \
                                       f"{_count(r['n_kept_pretrained_alone'])})"
    cols = ["dataset", "model"] + [f"{s}: {c}" for s in sizes
                                   for c in ("pretrained AUC", "mutual - alone (rel. %)", "p (Holm)", PAIRS)]
    return pd.DataFrame(list(rows.values())).reindex(columns=cols).fillna("")


PAIRS = "pairs (kept pretrained: mutual/alone)"


def _count(v) -> str:
    return "?" if pd.isna(v) else str(int(v))


def display_contrast(df: pd.DataFrame) -> pd.DataFrame:
    """The human form of `contrast`: one row per model and pair of sizes, intervals in brackets."""
    if df.empty:
        return pd.DataFrame()
    p = lambda v, f=".3f": "–" if pd.isna(v) else f"{v:{f}}"  # noqa: E731
    rows = []
    for r in df.itertuples(index=False):
        r = r._asdict()
        a, b = r["size_a"], r["size_b"]
        rows.append({"dataset": r["dataset"], "model": r["peer"], "sizes (A - B)": f"{a} - {b}",
                     "pairs": f"{int(r['n_pairs'])}" + (f" ({int(r['n_left_out'])} left out)" if r["n_left_out"] else ""),
                     "pretrained AUC, A - B": _interval(r, "pretrained_auc_diff", "+.4f"),
                     "gain A (rel. %)": p(r["gain_a_mean"], "+.3f"), "gain B (rel. %)": p(r["gain_b_mean"], "+.3f"),
                     "gain A - gain B (rel. % points)": _interval(r, "gain_diff", "+.3f"),
                     "MDE": p(r["gain_diff_mde"]), "p": p(r["p_ttest"]), "p (Holm)": p(r["p_holm"]),
                     "note": r["note"]})
    return pd.DataFrame(rows)


def contrast_label(df: pd.DataFrame, peer: str) -> str:
    """One model's contrast in a few words for a figure's legend ('' without one): the gain
    difference [95% CI] and Holm p of each pair of sizes."""
    rows = df[df["peer"] == peer] if len(df) else df
    return "; ".join(f"{r.size_a} - {r.size_b}: {_interval(r._asdict(), 'gain_diff', '+.2f') or '–'}, "
                     f"p_holm {'–' if pd.isna(r.p_holm) else f'{r.p_holm:.2f}'}" for r in rows.itertuples(index=False))


__all__ = ["COLUMNS", "CONTRAST_COLUMNS", "SEED_COLUMNS", "size_parts", "table", "display", "seed_gains", "contrast",
           "display_contrast", "contrast_label", "sizes_note"]
