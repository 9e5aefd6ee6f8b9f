"""Figures of the paper, drawn from tidy DataFrames (one row per observation, e.g. per peer per seed).

Every function takes the DataFrame (or nothing, for the two diagrams) and an output stem `out`
(`figures/fig_x` -> `fig_x.png` + `fig_x.svg`), saves both atomically, closes the figure and
returns the list of written paths. Column names are keyword arguments with the defaults of the
tidy CSVs that `ctrkit.experiments`/`ctrkit.notebook.reproduce` write, so any tidy frame can be plotted.
Result figures draw paired differences (e.g. mutual - alone, by seed) with their 95% t-intervals,
as `ctrkit.analysis.tables` computes them, and carry a provenance line (`provenance()`: data, rows, seeds,
precision, profile).
"""
from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import Iterator, Sequence

# No backend is forced: matplotlib falls back to Agg without a display, Jupyter picks inline.
import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from ctrkit.analysis.stats import AUC_POINT, t_interval
from ctrkit.core.extras import require
from ctrkit.core import owned
from ctrkit.core.owned import owned_path
from ctrkit.core.utils import CtrkitError

sns = require("notebooks", "seaborn", what="ctrkit.analysis.plots (the figures)")

# Paper sizes in inches: one column of a two-column paper, and the full text width.
COLUMN = 3.4
TEXT = 7.0
FORMATS = ("png", "svg")
DPI = 200

__all__ = [
    "COLUMN", "TEXT", "REL_PCT", "REL_LABEL", "GAIN_LABEL", "TICK_KEY", "style", "save", "show", "provenance",
    "paired_gains", "partner_heatmap", "partner_slopes", "peer_count", "compared", "sweep_gain", "gain_vs_strength",
    "split_ctr", "rank_frequency", "figure_kd", "figure_mutual",
]


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Paper style: white grid, 8-9 pt text, so a 3.4-inch-wide figure stays readable when printed."""
    rc = {
        "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7,
        "ytick.labelsize": 7, "legend.fontsize": 7, "legend.title_fontsize": 7,
        "figure.dpi": 100, "savefig.dpi": DPI, "savefig.bbox": "tight",
        "svg.fonttype": "none",  # keep text as text in SVG (searchable, editable)
        "axes.spines.top": False, "axes.spines.right": False,
    }
    with sns.axes_style("whitegrid"), plt.rc_context(rc):
        yield


def save(fig: plt.Figure, out: str | os.PathLike, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write `fig` as `<out>.png` and `<out>.svg` (atomically: temp file, then rename) and close it.
    A file of either name that ctrkit did not write stops it before either is written (`owned`)."""
    stem = Path(out)
    if stem.suffix.lower() in (".png", ".svg", ".pdf"):
        stem = stem.with_suffix("")
    paths = []
    try:
        taken = [p for p in (stem.with_name(f"{stem.name}.{fmt}") for fmt in formats) if owned.foreign(p)]
        if taken:
            raise owned.refuse(taken[0], ", or save under another name")
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            # Same data, same bytes: no creation date, fixed SVG ids (so re-running `make reproduce`
            # only changes the figures whose content changed, and git diffs stay meaningful).
            metadata = {"Date": None} if fmt in ("svg", "pdf") else {}
            with owned_path(path) as tmp, plt.rc_context({"svg.hashsalt": stem.name}):
                # The temp file's name ends in .tmp, so the format must be explicit.
                fig.savefig(tmp, format=fmt, metadata=metadata)
            paths.append(path)
    except OSError as e:  # a missing or unwritable folder, a full disk: the figure's path, not a temp name
        raise CtrkitError(f"{stem.with_name(stem.name + '.' + formats[len(paths)])}: cannot write the figure "
                          f"({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return paths


def show(paths: Sequence[str | os.PathLike], width: int | None = None):
    """The PNG of a saved figure as an IPython image, so a notebook cell displays what was written."""
    from IPython.display import Image

    png = next((Path(p) for p in paths if str(p).endswith(".png")), None)
    if png is None or not png.exists():
        raise CtrkitError(f"show: no PNG among {[str(p) for p in paths]}")
    return Image(filename=str(png), width=width)


# The figure frame (`ctrkit.analysis.frames.figure_frame` kind) each plot draws: a table is not one
_FRAME_OF = {"paired_gains": "gains", "partner_heatmap": "partners", "peer_count": "peer_count", "sweep_gain": "sweep"}


def _need(df: pd.DataFrame, cols: Sequence[str | None], what: str, may_lack: Sequence[str] = ()) -> pd.DataFrame:
    """`df` with `cols`, rows missing a value left out, except in `may_lack` (an interval of one seed)."""
    if not isinstance(df, pd.DataFrame):
        raise CtrkitError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c is not None and c not in df.columns]
    if missing:
        has = list(df.columns) if len(df.columns) <= 12 else f"{len(df.columns)} others ({', '.join(map(str, df.columns[:6]))}, ...)"
        frame = _FRAME_OF.get(what)
        hint = f"; draw the figure's frame: ctrkit.analysis.frames.figure_frame(store, {frame!r})" if frame else ""
        raise CtrkitError(f"{what}: missing column(s) {', '.join(missing)}; the frame has {has}{hint}")
    df = df.dropna(subset=[c for c in cols if c is not None and c not in may_lack])
    if df.empty:
        raise CtrkitError(f"{what}: no rows to plot (after dropping missing values)")
    return df


def _order(values: pd.Series, preferred: Sequence[str] | None) -> list:
    seen = list(dict.fromkeys(values.tolist()))
    if not preferred:
        return seen
    head = [p for p in preferred if p in seen]
    return head + [v for v in seen if v not in head]


# Canonical order so every figure lists models the same way.
MODEL_ORDER = ["DeepFM", "DCN", "PNN", "FiBiNET", "FM", "LR"]
CI_NOTE = "error bars: 95% paired t-interval over seeds"
# One unit for every relative test-AUC difference (100 * (treatment - control) / control), so axes
# of different figures that show the same quantity read the same (as the tables' "(rel. %)" columns).
REL_PCT = "rel. %"
REL_LABEL = f"Δ test AUC ({REL_PCT})"
GAIN_LABEL = f"mutual - alone ({REL_PCT})"


def provenance(*, data: str, rows: int | None = None, seeds: int | None, precision: str | None, profile: str,
               error_bars: bool = True, splits: dict | None = None) -> str:
    """The provenance line every result figure (and table) carries: data (synthetic or real), rows
    (per split as loaded when `splits` is given), seeds, precision and profile, and for a figure
    what its error bars are. Seeds and precision None: a statement of the data alone (no runs)."""
    if splits:
        parts = " / ".join(f"{k} {int(v):,}" for k, v in splits.items())
        rows_text = f"{sum(int(v) for v in splits.values()):,} rows ({parts})"
    else:
        rows_text = f"{rows:,} rows" if rows else "all rows"
    runs = "" if seeds is None and precision is None else f" · {seeds} seeds · {precision}"
    text = f"{data} · {rows_text}{runs} · profile {profile}"
    return f"{text} · {CI_NOTE}" if error_bars else text


def _caption(fig: plt.Figure, text: str | None) -> None:
    """The provenance line under the figure: below the axes' lowest label (multi-line tick labels push
    the axis label under the figure's bottom edge, where a fixed position would overlap it)."""
    if text:
        renderer = fig.canvas.get_renderer()
        lowest = min(ax.get_tightbbox(renderer).y0 for ax in fig.axes) / fig.bbox.height
        fig.text(0.5, min(-0.02, lowest - 0.01), text, ha="center", va="top", fontsize=6, color="0.3", wrap=True)


def _dodge(ax, df: pd.DataFrame, *, x: str, hue: str, y: str, lo: str, hi: str, order: list, hue_order: list,
           labels: dict | None = None, connect: bool = False, numeric_x: bool = False,
           no_interval: str = "hollow: no interval (one seed)") -> None:
    """Points with asymmetric CI bars, hues side by side around each x (only rows present are drawn).
    A point without an interval is hollow, and the panel says why (`no_interval`): no bar must not
    read as a very narrow one."""
    width = 0.6 if not numeric_x else 0.3
    step = width / max(len(hue_order), 1)
    pos = {v: (float(v) if numeric_x else i) for i, v in enumerate(order)}
    hollow = False
    for k, h in enumerate(hue_order):
        g = df[df[hue] == h]
        g = g.assign(_x=g[x].map(pos)).dropna(subset=["_x", y]).sort_values("_x")
        xs = g["_x"] + (k - (len(hue_order) - 1) / 2) * step
        err = np.vstack([(g[y] - g[lo]).fillna(0).to_numpy(), (g[hi] - g[y]).fillna(0).to_numpy()])
        color, bare = _COLORS[k % len(_COLORS)], (g[lo].isna() | g[hi].isna()).to_numpy()
        ax.errorbar(xs, g[y], yerr=np.clip(err, 0, None), fmt="o-" if connect else "o", markersize=4, capsize=2,
                    linewidth=0.8 if connect else 0, elinewidth=0.9, color=color, label=(labels or {}).get(h, h))
        if bare.any():
            ax.plot(xs[bare], g[y][bare], "o", markersize=4, markerfacecolor="white", color=color, zorder=3)
            hollow = True
    if hollow:
        ax.text(0.01, 0.01, no_interval, transform=ax.transAxes, fontsize=5, color="0.3", va="bottom")
    if not numeric_x:
        ax.set_xticks(range(len(order)), order)
    ax.axhline(0, color="black", linewidth=0.8)


# The short words of the variants figure's tick labels (`ctrkit.analysis.variants.SHORT`, stacked
# so 14 comparisons fit side by side), explained under the figure: a reader has nothing else.
TICK_KEY = {
    "MSE": "mutual learning, squared-difference pull (the paper)", "KL": "mutual learning, KL pull",
    "ens": "the peers' ensemble as teacher", "EKTF": "ensemble teacher + examination-weighted peers",
    "KD": "distillation from the best pretrained model", "FT": "finetuned from the pretrained models",
    "shared": "the peers share one embedding table",
    "table": "one shared embedding table vs separate ones, both trained alone",
}


def _tick_key(labels, key: dict[str, str], width: float) -> str | None:
    """'word = meaning' for each word of `key` among the tick `labels`, in `key`'s order, packed into
    lines that fit `width` inches at the caption's 6 pt (broken between entries, never inside one)."""
    words = {w for label in labels for w in str(label).split()}
    used = [f"{w} = {meaning}" for w, meaning in key.items() if w in words]
    lines, fit = [[]], int(width * 20) - 15  # ~20 characters per inch at 6 pt, less the "tick labels: "
    for entry in used:
        if lines[-1] and len(" · ".join(lines[-1] + [entry])) > fit:
            lines.append([])
        lines[-1].append(entry)
    return "tick labels: " + "\n".join(" · ".join(line) for line in lines) if used else None


def paired_gains(
    df: pd.DataFrame, out: str | os.PathLike, *, caption: str | None = None,
    title: str = "Paired gains per model", x: str = "model", hue: str = "comparison", y: str = "rel_pct_mean",
    lo: str = "rel_pct_ci_low", hi: str = "rel_pct_ci_high", ylabel: str = REL_LABEL,
    width: float = COLUMN * 1.6, height: float = 2.5, panel: str | None = None, key: dict[str, str] | None = None,
) -> list[Path]:
    """Each model's paired differences (e.g. mutual - alone, by seed) as points with 95% CI bars, one
    colour per comparison: the numbers the tables report, not the seed spread of each arm. `panel`: a
    column whose values get a panel each, with its own y scale (one wide interval from scratch must
    not flatten the finetuning ones beside it). `key`: abbreviation -> meaning, each one found in the
    x tick labels explained under the axes (default `TICK_KEY`; {} for none)."""
    df = _need(df, [x, hue, y, lo, hi] + ([panel] if panel else []), "paired_gains", may_lack=[lo, hi])
    groups = list(df.groupby(panel, sort=False)) if panel and df[panel].nunique() > 1 else [(None, df)]
    hue_order = list(dict.fromkeys(df[hue]))
    # comparisons at different settings (scratch at its weight, finetuning at the chosen one) say so
    labels = ({h: f"{h} ({g['setting'].iloc[0]})" for h, g in df.groupby(hue) if g["setting"].nunique() == 1
               and str(g["setting"].iloc[0])} if "setting" in df.columns else None)
    with style():
        fig, axes = plt.subplots(1, len(groups), figsize=(width, height), squeeze=False, layout="constrained",
                                 width_ratios=[g[x].nunique() for _, g in groups])
        for ax, (name, g) in zip(axes[0], groups):
            _dodge(ax, g, x=x, hue=hue, y=y, lo=lo, hi=hi, order=_order(g[x], MODEL_ORDER), hue_order=hue_order,
                   labels=labels)
            ax.set(title=str(name) if name is not None else title, xlabel=x, ylabel=ylabel if ax is axes[0][0] else "")
        if len(groups) > 1:
            fig.suptitle(title, fontsize=9)
        axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # outside: it would hide points
        note = _tick_key(df[x].unique(), TICK_KEY if key is None else key, width)
        _caption(fig, "\n".join(t for t in (note, caption) if t))
        return save(fig, out)


def partner_heatmap(
    df: pd.DataFrame, out: str | os.PathLike, *, caption: str | None = None, row: str = "target",
    col: str = "partner", value: str = "rel_pct_mean", p: str | None = "p_holm",
    title: str = "Pairs: mutual - alone of the row model with each partner",
    cbar_label: str = GAIN_LABEL, order: Sequence[str] | None = None,
    width: float = COLUMN * 1.25, height: float = COLUMN,
) -> list[Path]:
    """Heatmap of the mean paired gain of each (row model, partner) pair; * marks Holm p < 0.05."""
    df = _need(df, [row, col, value], "partner_heatmap")
    names = _order(pd.concat([df[row], df[col]]), order or MODEL_ORDER)
    mat = df.pivot_table(index=row, columns=col, values=value, aggfunc="mean")
    mat = mat.reindex(index=[n for n in names if n in mat.index], columns=[n for n in names if n in mat.columns])
    star = pd.Series("", index=pd.MultiIndex.from_frame(df[[row, col]]))
    if p and p in df.columns:
        star = pd.Series(np.where(df[p] < 0.05, "*", ""), index=pd.MultiIndex.from_frame(df[[row, col]]))
    ci = {}
    lo, hi = value.replace("_mean", "_ci_low"), value.replace("_mean", "_ci_high")
    if value.endswith("_mean") and {lo, hi} <= set(df.columns):  # each cell's 95% interval, drawn under its mean
        ci = {(r[row], r[col]): f"\n[{r[lo]:+.2f}, {r[hi]:+.2f}]" for _, r in df.iterrows()
              if not (pd.isna(r[lo]) or pd.isna(r[hi]))}
    annot = [[("" if np.isnan(v) else f"{v:.2f}{star.get((r, c), '')}{ci.get((r, c), '')}")
              for c, v in zip(mat.columns, vals)] for r, vals in zip(mat.index, mat.to_numpy())]
    lim = float(np.nanmax(np.abs(mat.to_numpy()))) or 1.0
    with style():
        fig, ax = plt.subplots(figsize=(width, height))
        sns.heatmap(mat, ax=ax, annot=np.array(annot, dtype=object), fmt="", cmap="RdBu_r", center=0, vmin=-lim,
                    vmax=lim, linewidths=0.5, linecolor="white", cbar_kws={"label": cbar_label},
                    annot_kws={"fontsize": 6 if ci else 7})
        ax.set(title=title, xlabel="partner (* Holm p < 0.05" + ("; [95% paired t-interval]" if ci else "") + ")",
               ylabel="finetuned model")
        ax.grid(False)  # the style's grid would cross the empty diagonal cells
        ax.tick_params(axis="x", rotation=0)
        ax.tick_params(axis="y", rotation=0)
        _caption(fig, caption)
        return save(fig, out)


def partner_slopes(
    points: pd.DataFrame, slopes: pd.DataFrame, out: str | os.PathLike, *, caption: str | None = None,
    title: str = "Gain over the alone control vs the partner's pretrained AUC, per model",
    width: float = TEXT, height: float = 2.2,
) -> list[Path]:
    """One panel per finetuned model: its (partner, seed) points (light), each partner's mean with its
    95% interval, and its own least-squares line through those means, drawn only over the range of
    the means it was fitted to; the slope with its 95% CI in the panel title. No line pooled across
    models (they differ in offset)."""
    points = _need(points, ["target", "partner", "partner_auc", "rel_pct"], "partner_slopes")
    slopes = _need(slopes, ["target", "slope_mean", "slope_ci_low", "slope_ci_high", "intercept"], "partner_slopes")
    targets = _order(points["target"], MODEL_ORDER)
    partners = _order(points["partner"], MODEL_ORDER)
    with style():
        fig, axes = plt.subplots(1, len(targets), figsize=(width, height), sharey=True, layout="constrained",
                                 squeeze=False)
        for ax, t in zip(axes[0], targets):
            g = points[points["target"] == t]
            for k, pname in enumerate(partners):
                h = g[g["partner"] == pname]
                if len(h):
                    color = _COLORS[MODEL_ORDER.index(pname) % 10] if pname in MODEL_ORDER else _COLORS[k]
                    # light: the seeds are not what the line is fitted to, the means are
                    ax.scatter(h["partner_auc"], h["rel_pct"], s=6, alpha=0.35, linewidths=0, color=color, label=pname)
                    if len(h) >= 2:  # the pair's mean over seeds with its 95% paired t-interval
                        m, lo, hi = t_interval(h["rel_pct"])
                        ax.errorbar([h["partner_auc"].mean()], [m], yerr=[[m - lo], [hi - m]], fmt="D",
                                    markersize=4, capsize=2, elinewidth=1, color=color)
            s = slopes[slopes["target"] == t]
            head = t if not len(s) else _slope_line(ax, g, s.iloc[0])
            ax.set_title(head, fontsize=7)
            ax.axhline(0, color="0.6", linewidth=0.6)
            ax.set_xlabel("partner's pretrained AUC")
            ax.tick_params(axis="x", labelrotation=30)
        axes[0][0].set_ylabel(GAIN_LABEL)
        # one legend for all panels (each lacks its own model among the partners), in full colour:
        # the light seed dots would make faint keys
        drawn = {h.get_label() for ax in axes[0] for h in ax.get_legend_handles_labels()[0]}
        keys = [plt.Line2D([], [], marker="D", markersize=4, linestyle="", label=p,
                           color=_COLORS[MODEL_ORDER.index(p) % 10] if p in MODEL_ORDER else _COLORS[k % 10])
                for k, p in enumerate(partners) if p in drawn]
        fig.legend(handles=keys, title="partner", loc="upper left", bbox_to_anchor=(1.0, 0.9), frameon=False)
        fig.suptitle(f"{title}\n(dots: seeds; diamonds: mean over seeds [95% paired t-interval]; dashed: fit to "
                     f"the means, over their range; slope: {REL_PCT} per {AUC_POINT:g} of AUC, 95% t-interval)",
                     fontsize=8)
        _caption(fig, caption)
        return save(fig, out)


def _slope_line(ax, g: pd.DataFrame, s: pd.Series) -> str:
    """Draw a model's fitted line over the x range of its partner means, as `tables.slopes_of_points`
    fits it (the seeds spread wider: a line across them would claim support the fit does not have);
    return the panel title with the slope and its interval."""
    means = g.groupby("partner")["partner_auc"].mean()
    xs = np.linspace(means.min(), means.max(), 20)
    ax.plot(xs, s["intercept"] + s["slope_mean"] * xs / AUC_POINT, color="black", linewidth=1, linestyle="--",
            zorder=3)  # over the diamonds: a short line must not vanish under them
    return f"{g['target'].iloc[0]}\nslope {s['slope_mean']:+.3f} [{s['slope_ci_low']:+.3f}, {s['slope_ci_high']:+.3f}]"


def peer_count(
    df: pd.DataFrame, out: str | os.PathLike, *, caption: str | None = None, x: str = "n_peers",
    hue: str = "model", title: str = "Mutual finetuning with N peers (mean over all partner subsets)",
    width: float = TEXT, height: float = 2.5,
) -> list[Path]:
    """Two panels against N, measured points only, with 95% CIs: the gain over the pretrained model,
    and mutual - alone (N = 1 is the control: zero by definition)."""
    df = _need(df, [x, hue, "gain_rel_pct_mean", "rel_pct_mean"], "peer_count")
    hue_order = _order(df[hue], MODEL_ORDER)
    order = sorted(df[x].unique())
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(width, height), layout="constrained")
        for ax, p, label in ((axes[0], "gain_rel_pct", f"gain over the pretrained model ({REL_PCT})"),
                             (axes[1], "rel_pct", GAIN_LABEL)):
            bare = df[df[f"{p}_ci_low"].isna() | df[f"{p}_ci_high"].isna()]
            control = p == "rel_pct" and len(bare) and (bare[x] == 1).all()  # N = 1 is alone minus itself
            _dodge(ax, df, x=x, hue=hue, y=f"{p}_mean", lo=f"{p}_ci_low", hi=f"{p}_ci_high", order=order,
                   hue_order=hue_order, connect=True, numeric_x=True,
                   no_interval="hollow: N = 1, the control itself (0 by definition)" if control
                   else "hollow: no interval (one seed)")
            ax.set(xlabel="number of peers N", ylabel=label, xticks=order)
        axes[0].set_title("gain over the pretrained model vs N")
        axes[1].set_title("gain over finetuning alone vs N")
        axes[1].legend(title=hue, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.suptitle(title, fontsize=9)
        _caption(fig, caption)
        return save(fig, out)


_CLAIM_TITLES = {"scratch": "mutual - alone, from scratch", "headline": "mutual - alone, finetuned"}


def compared(
    df: pd.DataFrame, out: str | os.PathLike, *, labels: Sequence[str], tables: Sequence[str] = ("scratch", "headline"),
    caption: str | None = None, title: str = "The same claims under two runs", width: float = TEXT,
) -> list[Path]:
    """Two reproductions' intervals side by side (`ctrkit.analysis.compare.conclusions`): a row of
    panels per dataset, a column per claim table, one colour per run; a row whose verdict moved is
    marked * on its axis."""
    la, lb = labels
    df = _need(df, ["dataset", "table", "row", f"{la}_mean", f"{lb}_mean", "same"], "compared")
    df = df[df["table"].isin(tables)]
    datasets, names = list(dict.fromkeys(df["dataset"])), [t for t in tables if t in set(df["table"])]
    if df.empty:
        raise CtrkitError(f"compared: no rows of the tables {', '.join(tables)} to draw")
    long = pd.concat([df.assign(run=lab, mean=df[f"{lab}_mean"], low=df[f"{lab}_ci_low"], high=df[f"{lab}_ci_high"])
                      for lab in (la, lb)], ignore_index=True)
    with style():
        fig, axes = plt.subplots(len(datasets), len(names), figsize=(width, 2.2 * len(datasets)),
                                 layout="constrained", squeeze=False)
        for (i, dataset), (j, table) in itertools.product(enumerate(datasets), enumerate(names)):
            ax, g = axes[i][j], long[(long["dataset"] == dataset) & (long["table"] == table)]
            order, moved = list(dict.fromkeys(g["row"])), set(g.loc[~g["same"], "row"])
            _dodge(ax, g, x="row", hue="run", y="mean", lo="low", hi="high", order=order, hue_order=[la, lb])
            ax.set_xticks(range(len(order)), [f"{r}*" if r in moved else r for r in order], rotation=25, ha="right")
            est = g["estimate"].iloc[0] if "estimate" in g.columns and len(g) else "rel_pct"
            ax.set(title=f"{dataset}: {_CLAIM_TITLES.get(table, table)}", xlabel="",
                   ylabel=(REL_LABEL if est == "rel_pct" else est) if j == 0 else "")
        axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.suptitle(title + " (* the verdict moved)", fontsize=9)
        _caption(fig, caption)
        return save(fig, out)


def sweep_gain(
    df: pd.DataFrame, out: str | os.PathLike, *, caption: str | None = None, hue: str = "model",
    title: str = "Finetuning sweep: mutual - alone vs the mutual weight", width: float = TEXT, height: float = 2.4,
) -> list[Path]:
    """Gain over the alone control against the weight (log axis), one panel per lr scale, 95% CIs;
    the setting chosen on validation is marked."""
    df = _need(df, ["weight", "finetune_lr_scale", hue, "rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high"],
               "sweep_gain", may_lack=["rel_pct_ci_low", "rel_pct_ci_high"])
    scales = sorted(df["finetune_lr_scale"].unique())
    hue_order = _order(df[hue], MODEL_ORDER)
    marks = []  # the dotted line at the chosen setting (one panel)
    with style():
        fig, axes = plt.subplots(1, len(scales), figsize=(width, height), sharey=True, layout="constrained",
                                 squeeze=False)
        for ax, s in zip(axes[0], scales):
            g = df[df["finetune_lr_scale"] == s].assign(logw=lambda t: np.log10(t["weight"].clip(lower=1e-3)))
            _dodge(ax, g, x="logw", hue=hue, y="rel_pct_mean", lo="rel_pct_ci_low", hi="rel_pct_ci_high",
                   order=sorted(g["logw"].unique()), hue_order=hue_order, connect=True, numeric_x=True)
            ws = sorted(g["weight"].unique())
            ax.set_xticks(np.log10(np.clip(ws, 1e-3, None)), [f"{w:g}" for w in ws])
            chosen = g[g["chosen"] == True] if "chosen" in g else g.iloc[:0]  # noqa: E712
            if len(chosen):
                # named in the legend, not by a text at the line: beside the last weight of the last
                # panel such a text ran into the legend, and at the top it would cover interval caps
                marks.append(ax.axvline(chosen["logw"].iloc[0], color="0.5", linestyle=":", linewidth=1,
                                        label=f"chosen on validation (w {chosen['weight'].iloc[0]:g}, lr x{s:g})"))
            ax.set(title=f"finetuning lr x{s:g}", xlabel="mutual weight w")
        axes[0][0].set_ylabel(GAIN_LABEL)
        handles = [h for h in axes[0][-1].get_legend_handles_labels()[0] if h not in marks] + marks[:1]
        axes[0][-1].legend(handles=handles, labels=[h.get_label() for h in handles], title=hue, loc="upper left",
                           bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.suptitle(title, fontsize=9)
        _caption(fig, caption)
        return save(fig, out)


def gain_vs_strength(
    df: pd.DataFrame, out: str | os.PathLike, *, caption: str | None = None,
    title: str = "Mutual finetuning gain vs the baseline's strength", width: float = COLUMN * 1.6,
    height: float = 2.6, contrast: pd.DataFrame | None = None,
) -> list[Path]:
    """Each model's mutual - alone gain (95% paired t-interval) against the pretrained test AUC it
    started from, one colour per model, one marker per model size; a thin line joins a model's sizes
    (does the gain shrink as the baseline gets stronger?). Columns: `ctrkit.analysis.strength.COLUMNS`.
    `contrast` (`strength.contrast`): each model's legend entry also says its paired test of that,
    the per-seed gain difference between the sizes [95% CI] and its Holm p."""
    from ctrkit.analysis.strength import contrast_label

    size, x, y, lo, hi = "size", "pretrained_auc_mean", "rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high"
    df = _need(df, [size, "peer", x, y, lo, hi], "gain_vs_strength")
    sizes, models = list(dict.fromkeys(df[size])), _order(df["peer"], MODEL_ORDER)
    markers = ["o", "s", "^", "D", "v", "P"]
    with style():
        fig, ax = plt.subplots(figsize=(width, height))
        for k, m in enumerate(models):
            color = _COLORS[MODEL_ORDER.index(m) % 10] if m in MODEL_ORDER else _COLORS[k % 10]
            g = df[df["peer"] == m].assign(_s=lambda t: t[size].map(sizes.index)).sort_values("_s")
            ax.plot(g[x], g[y], color=color, linewidth=0.6, alpha=0.6)
            for _, r in g.iterrows():
                err = [[max(r[y] - r[lo], 0)], [max(r[hi] - r[y], 0)]]
                ax.errorbar([r[x]], [r[y]], yerr=err, fmt=markers[sizes.index(r[size]) % len(markers)],
                            markersize=4, capsize=2, elinewidth=0.9, color=color)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set(title=title, xlabel="baseline's pretrained test AUC", ylabel=GAIN_LABEL)
        said = {m: contrast_label(contrast, m) if contrast is not None else "" for m in models}
        handles = [plt.Line2D([], [], color=_COLORS[MODEL_ORDER.index(m) % 10] if m in MODEL_ORDER
                              else _COLORS[k % 10], marker="o", linestyle="",
                              label=f"{m}\n{said[m]}" if said[m] else m) for k, m in enumerate(models)]
        handles += [plt.Line2D([], [], color="0.3", marker=markers[i % len(markers)], linestyle="",
                               label=f"size {s}") for i, s in enumerate(sizes)]
        if any(said.values()):  # what the second line of each model's entry is
            handles.append(plt.Line2D([], [], linestyle="", label="2nd line: gain A - gain B (rel. % pts,\n"
                                                                   "paired by seed) [95% CI], Holm p"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  fontsize=6 if any(said.values()) else None)
        _caption(fig, caption)
        return save(fig, out)


def split_ctr(
    df: pd.DataFrame, out: str | os.PathLike, *, split: str = "split", ctr: str = "ctr",
    rows: str | None = "rows", hue: str | None = None, title: str = "Click-through rate per split",
    width: float = COLUMN, height: float = 2.3, caption: str | None = None,
) -> list[Path]:
    """Bar of the CTR (positive rate) of each split, the row count written on each bar."""
    df = _need(df, [split, ctr, rows, hue], "split_ctr")
    with style():
        fig, ax = plt.subplots(figsize=(width, height))
        sns.barplot(data=df, x=split, y=ctr, hue=hue, ax=ax, errorbar=None,
                    order=_order(df[split], ["train", "valid", "test"]))
        if rows and not hue:
            for patch, (_, r) in zip(ax.patches, df.set_index(split).reindex(
                    _order(df[split], ["train", "valid", "test"])).iterrows()):
                ax.annotate(f"{int(r[rows]):,} rows", (patch.get_x() + patch.get_width() / 2, patch.get_height()),
                            ha="center", va="bottom", fontsize=6)
        ax.set(title=title, xlabel="split", ylabel="CTR (fraction of clicks)")
        ax.set_ylim(0, float(df[ctr].max()) * 1.2)
        _caption(fig, caption)
        return save(fig, out)


def rank_frequency(
    df: pd.DataFrame, out: str | os.PathLike, *, field: str = "field",
    title: str = "Categorical value frequency (rank-frequency, log-log)",
    width: float = COLUMN * 1.3, height: float = 2.6, caption: str | None = None,
) -> list[Path]:
    """Log-log rank-frequency curves, one line per field (Zipf-like tails show as straight lines):
    `data_tables`' tidy columns `rank` and `count`."""
    rank, count = "rank", "count"
    df = _need(df, [rank, count, field], "rank_frequency")
    df = df[(df[rank] > 0) & (df[count] > 0)]
    with style():
        fig, ax = plt.subplots(figsize=(width, height))
        sns.lineplot(data=df, x=rank, y=count, hue=field, ax=ax, linewidth=1, estimator=None)
        ax.set(xscale="log", yscale="log", title=title, xlabel="rank of the value (1 = most frequent)",
               ylabel="occurrences in train")
        ax.legend(title=field, loc="upper right", frameon=True, ncol=2 if df[field].nunique() > 4 else 1)
        _caption(fig, caption)
        return save(fig, out)


# ---------------------------------------------------------------------------------------------------
# The two architecture diagrams of the paper, drawn with patches and arrows.

_COLORS = sns.color_palette("deep")


_BOX_PAD = 0.02


def _box(ax, xy, w, h, text, color, fontsize=7):
    x, y = xy
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle=f"round,pad={_BOX_PAD},rounding_size=0.06",
                                facecolor=(*color, 0.25), edgecolor=color, linewidth=1.2))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _edge(column: tuple[float, float], side: int) -> float:
    """The x of a `_box` column's right (side 1) or left (-1) edge: half its width plus the rounding pad."""
    return column[0] + side * (column[1] / 2 + _BOX_PAD)


def _arrow(ax, a, b, *, color="black", ls="-", label=None, loff=(0, 0.04)):
    """A straight arrow from a to b, with `label` at its middle shifted by `loff`."""
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=9, color=color, linewidth=1,
                                 linestyle=ls, connectionstyle="arc3,rad=0.0", shrinkA=2, shrinkB=2))
    if label:
        mx, my = a[0] + (b[0] - a[0]) * 0.5 + loff[0], a[1] + (b[1] - a[1]) * 0.5 + loff[1]
        ax.text(mx, my, label, ha="center", va="center", fontsize=6, color=color,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})


def _canvas(width, height):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    return fig, ax


def figure_kd(out: str | os.PathLike, *, width: float = COLUMN * 1.5, height: float = 2.2) -> list[Path]:
    """Figure 1: knowledge distillation, a frozen pretrained teacher guides one student (one-way)."""
    with style():
        fig, ax = _canvas(width, height)
        _box(ax, (0.12, 0.5), 0.18, 0.22, "input\nfeatures x", _COLORS[7])
        _box(ax, (0.45, 0.78), 0.22, 0.2, "teacher\n(pretrained, frozen)", _COLORS[0])
        _box(ax, (0.45, 0.22), 0.22, 0.2, "student\n(trained)", _COLORS[1])
        _box(ax, (0.74, 0.78), 0.1, 0.14, "$p_T$", _COLORS[0])
        _box(ax, (0.74, 0.22), 0.1, 0.14, "$p_S$", _COLORS[1])
        _box(ax, (0.92, 0.22), 0.1, 0.14, "label y", _COLORS[7])
        _arrow(ax, (0.21, 0.55), (0.34, 0.76))
        _arrow(ax, (0.21, 0.45), (0.34, 0.24))
        _arrow(ax, (0.56, 0.78), (0.69, 0.78))
        _arrow(ax, (0.56, 0.22), (0.69, 0.22))
        _arrow(ax, (0.74, 0.71), (0.74, 0.29), color=_COLORS[3], ls="--",
               label="$(p_T - p_S)^2$\n(teacher detached)", loff=(0.0, 0.0))
        _arrow(ax, (0.87, 0.22), (0.79, 0.22), color=_COLORS[2], label="BCE", loff=(0.0, 0.09))
        ax.set_title("Figure 1. Knowledge distillation: teacher → student (one-way)")
        return save(fig, out)


def figure_mutual(out: str | os.PathLike, *, n: int = 4, names: Sequence[str] | None = None,
                  width: float = TEXT, height: float = 2.8) -> list[Path]:
    """Figure 2 as the paper's method: (1) pretrain each model alone on BCE; (2) finetune the N
    pretrained models together, peer n minimising BCE(y, p_n) + w/(N-1) sum_{i != n} (p_i - p_n)^2
    with the other peers' predictions p_i detached (no gradient flows into them)."""
    if not isinstance(n, int) or n < 2:
        raise CtrkitError(f"figure_mutual: n must be an integer >= 2, got {n!r}")
    names = list(names) if names else (MODEL_ORDER[:n] if n <= 4 else [f"peer {i + 1}" for i in range(n)])
    if len(names) != n:
        raise CtrkitError(f"figure_mutual: {len(names)} names given for n={n} peers")
    with style():
        fig, ax = _canvas(width, height)
        ys = np.linspace(0.8, 0.2, n) if n > 1 else [0.5]
        ax.text(0.14, 0.97, "1. pretrain each model alone", ha="center", va="top", fontsize=8, weight="bold")
        ax.text(0.66, 0.97, "2. finetune them together (mutual learning)", ha="center", va="top", fontsize=8,
                weight="bold")
        h = min(0.12, 0.5 / n)
        # (centre, width) of each column of boxes; arrows run from one box's edge to the next one's
        model, bce, peer, loss = (0.07, 0.1), (0.24, 0.08), (0.46, 0.1), (0.70, 0.165)
        for i, (name, y) in enumerate(zip(names, ys)):
            c = _COLORS[i % len(_COLORS)]
            _box(ax, (model[0], y), model[1], h, name, c, fontsize=6)
            _arrow(ax, (_edge(model, 1), y), (_edge(bce, -1), y), color="0.3")
            _box(ax, (bce[0], y), bce[1], h, "BCE", _COLORS[7], fontsize=6)
            _arrow(ax, (_edge(bce, 1), y), (_edge(peer, -1), y), color="0.3", label="checkpoint" if i == 0 else None,
                   loff=(0, 0.06))
            _box(ax, (peer[0], y), peer[1], h, f"{name}\n$p_{{{i + 1}}}$", c, fontsize=6)
            _arrow(ax, (_edge(peer, 1), y), (_edge(loss, -1), y), color="0.3")
            _box(ax, (loss[0], y), loss[1], h, f"$L_{{{i + 1}}}$ = BCE$(y, p_{{{i + 1}}})$ + mutual", c, fontsize=6)
        # the pull of every other peer's detached prediction on peer n's loss, box edge to box edge
        for i, yi in enumerate(ys):
            for j, yj in enumerate(ys):
                if i != j:
                    _arrow(ax, (_edge(peer, 1), yj - 0.01 * (i - j)), (_edge(loss, -1), yi + 0.01 * (i - j)),
                           color="0.55", ls=":")
        ax.text(0.905, 0.62, "$L_n = \\mathrm{BCE}(y, p_n)$\n$+ \\frac{w}{N-1}\\sum_{i \\neq n}"
                "(\\bar p_i - p_n)^2$", ha="center", va="center", fontsize=7)
        ax.text(0.905, 0.36, "$\\bar p_i$: peer i's prediction,\ndetached (no gradient);\n"
                "every peer is trained\n(two-way, unlike KD)", ha="center", va="center", fontsize=6, color="0.25")
        ax.set_title(f"Figure 2. Mutual learning for finetuning among N = {n} peers")
        return save(fig, out)
