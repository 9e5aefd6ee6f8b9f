"""Figures of the paper, drawn from tidy DataFrames (one row per observation, e.g. per peer per seed).

Every function takes the DataFrame (or nothing, for the two diagrams) and an output stem `out`
(`figures/fig_x` -> `fig_x.png` + `fig_x.svg`), saves both atomically, closes the figure and
returns the list of written paths. Column names are keyword arguments with the defaults of the
tidy CSVs that `ctrkit.experiments`/`ctrkit.reproduce` write, so any tidy frame can be plotted.
Error bars are the standard deviation over the rows that share a bar/point (the seeds).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

# No backend is forced: matplotlib falls back to Agg without a display, Jupyter picks inline.
import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from ctrkit.utils import CtrkitError, atomic_path

# Paper sizes in inches: one column of a two-column paper, and the full text width.
COLUMN = 3.4
TEXT = 7.0
FORMATS = ("png", "svg")
DPI = 200

__all__ = [
    "COLUMN", "TEXT", "style", "save", "show", "delta_auc_bar", "partner_heatmap", "gain_vs_partner_auc",
    "peer_count", "split_ctr", "rank_frequency", "figure_kd", "figure_mutual",
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
    """Write `fig` as `<out>.png` and `<out>.svg` (atomically: temp file, then rename) and close it."""
    stem = Path(out)
    if stem.suffix.lower() in (".png", ".svg", ".pdf"):
        stem = stem.with_suffix("")
    paths = []
    try:
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            # Same data, same bytes: no creation date, fixed SVG ids (so re-running `make reproduce`
            # only changes the figures whose content changed, and git diffs stay meaningful).
            metadata = {"Date": None} if fmt in ("svg", "pdf") else {}
            with atomic_path(path) as tmp, plt.rc_context({"svg.hashsalt": stem.name}):
                # The temp file's name ends in .tmp, so the format must be explicit.
                fig.savefig(tmp, format=fmt, metadata=metadata)
            paths.append(path)
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


def _need(df: pd.DataFrame, cols: Sequence[str | None], what: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise CtrkitError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c is not None and c not in df.columns]
    if missing:
        raise CtrkitError(f"{what}: missing column(s) {missing}; the frame has {list(df.columns)}")
    df = df.dropna(subset=[c for c in cols if c is not None])
    if df.empty:
        raise CtrkitError(f"{what}: no rows to plot (after dropping missing values)")
    return df


def _order(values: pd.Series, preferred: Sequence[str] | None) -> list:
    seen = list(dict.fromkeys(values.tolist()))
    if not preferred:
        return seen
    head = [p for p in preferred if p in seen]
    return head + [v for v in seen if v not in head]


# Canonical orders so every figure lists models and settings the same way.
MODEL_ORDER = ["DeepFM", "DCN", "PNN", "FiBiNET", "FM", "LR"]
SETTING_ORDER = ["baseline", "scratch_alone", "scratch_mutual", "finetune_alone", "finetune_mutual"]
# Legend text of the settings: what each bar is, in the paper's words.
SETTING_LABELS = {
    "scratch_mutual": "mutual from scratch (vs baseline)",
    "finetune_alone": "finetuned alone (control)",
    "finetune_mutual": "mutual finetuning",
    "scratch_alone": "trained alone from scratch",
    "baseline": "pretrained baseline",
}


def delta_auc_bar(
    df: pd.DataFrame, out: str | os.PathLike, *, x: str = "model", y: str = "rel_delta_auc_pct",
    hue: str | None = "setting", title: str = "Relative AUC change over the pretrained baseline",
    ylabel: str = "relative Δ test AUC (%)", xlabel: str = "model", order: Sequence[str] | None = None,
    hue_order: Sequence[str] | None = None, width: float = COLUMN * 1.6, height: float = 2.4,
) -> list[Path]:
    """Bars of the mean relative delta AUC per model (x) and setting (hue); error bars: SD over seeds."""
    df = _need(df, [x, y, hue], "delta_auc_bar")
    with style():
        fig, ax = plt.subplots(figsize=(width, height))
        sns.barplot(
            data=df, x=x, y=y, hue=hue, ax=ax, errorbar="sd", capsize=0.15, err_kws={"linewidth": 0.8},
            order=_order(df[x], order or MODEL_ORDER),
            hue_order=_order(df[hue], hue_order or SETTING_ORDER) if hue else None,
        )
        ax.axhline(0, color="black", linewidth=0.8)
        n = df.groupby([c for c in (x, hue) if c]).size()
        seeds = f"{int(n.min())}" if n.min() == n.max() else f"{int(n.min())}-{int(n.max())}"
        ax.set(title=title, xlabel=f"{xlabel} (error bars: SD over {seeds} seeds)", ylabel=ylabel)
        if hue:
            # Below the axes: inside, the legend hides bars once there are 4+ settings.
            sns.move_legend(ax, "upper center", bbox_to_anchor=(0.5, -0.22), ncol=min(3, df[hue].nunique()),
                            title=None, frameon=False)
            for text in ax.get_legend().get_texts():
                text.set_text(SETTING_LABELS.get(text.get_text(), text.get_text()))
        return save(fig, out)


def partner_heatmap(
    df: pd.DataFrame, out: str | os.PathLike, *, row: str = "model", col: str = "partner",
    value: str = "rel_delta_auc_pct",
    title: str = "Pairwise mutual finetuning: gain of the row model with each partner",
    cbar_label: str = "relative Δ test AUC (%)", xlabel: str = "partner", ylabel: str = "finetuned model",
    order: Sequence[str] | None = None, width: float = COLUMN * 1.2, height: float = COLUMN,
) -> list[Path]:
    """Heatmap of the mean `value` (over seeds) for each (row model, partner) pair, annotated."""
    df = _need(df, [row, col, value], "partner_heatmap")
    names = _order(pd.concat([df[row], df[col]]), order or MODEL_ORDER)
    mat = df.pivot_table(index=row, columns=col, values=value, aggfunc="mean")
    mat = mat.reindex(index=[n for n in names if n in mat.index], columns=[n for n in names if n in mat.columns])
    lim = float(np.nanmax(np.abs(mat.to_numpy()))) or 1.0
    with style():
        fig, ax = plt.subplots(figsize=(width, height))
        sns.heatmap(mat, ax=ax, annot=True, fmt=".2f", cmap="RdBu_r", center=0, vmin=-lim, vmax=lim,
                    linewidths=0.5, linecolor="white", cbar_kws={"label": cbar_label},
                    annot_kws={"fontsize": 7})
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(False)  # the style's grid would cross the empty diagonal cells
        ax.tick_params(axis="x", rotation=0)
        ax.tick_params(axis="y", rotation=0)
        return save(fig, out)


def gain_vs_partner_auc(
    df: pd.DataFrame, out: str | os.PathLike, *, x: str = "partner_auc", y: str = "rel_delta_auc_pct",
    hue: str | None = "model",
    title: str = "Finetuning gain vs the partner's pretrained AUC",
    xlabel: str = "partner's pretrained test AUC", ylabel: str = "relative Δ test AUC (%)",
    width: float = COLUMN * 1.3, height: float = 2.6,
) -> list[Path]:
    """Scatter of each pair's gain against the partner's AUC, with a least-squares line and Pearson r."""
    df = _need(df, [x, y, hue], "gain_vs_partner_auc")
    with style():
        fig, ax = plt.subplots(figsize=(width, height))
        sns.scatterplot(data=df, x=x, y=y, hue=hue, ax=ax, s=28,
                        hue_order=_order(df[hue], MODEL_ORDER) if hue else None)
        xs, ys = df[x].to_numpy(float), df[y].to_numpy(float)
        if len(df) >= 2 and np.ptp(xs) > 0:
            slope, intercept = np.polyfit(xs, ys, 1)
            grid = np.linspace(xs.min(), xs.max(), 50)
            r = float(np.corrcoef(xs, ys)[0, 1]) if np.ptp(ys) > 0 else float("nan")
            ax.plot(grid, slope * grid + intercept, color="black", linestyle="--", linewidth=1,
                    label=f"least-squares fit (r = {r:.2f})")
        ax.axhline(0, color="0.6", linewidth=0.6)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        # Outside the axes: inside, it hides points. Colour = the model being finetuned.
        ax.legend(title="finetuned model" if hue == "model" else hue, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False)
        return save(fig, out)


def peer_count(
    df: pd.DataFrame, out: str | os.PathLike, *, x: str = "n_peers", auc: str = "test_auc",
    delta: str = "rel_delta_auc_pct", hue: str | None = "model",
    title: str = "Mutual finetuning with N peers", width: float = TEXT, height: float = 2.5,
) -> list[Path]:
    """Two panels against the number of peers N: test AUC and relative delta AUC; error bars: SD over seeds."""
    df = _need(df, [x, auc, delta, hue], "peer_count")
    hue_order = _order(df[hue], MODEL_ORDER) if hue else None
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(width, height), layout="constrained")
        for ax, col, label in ((axes[0], auc, "test AUC"), (axes[1], delta, "relative Δ test AUC (%)")):
            sns.lineplot(data=df, x=x, y=col, hue=hue, hue_order=hue_order, ax=ax, marker="o",
                         errorbar="sd", err_style="bars", err_kws={"capsize": 2, "linewidth": 0.8})
            ax.set(xlabel="number of peers N", ylabel=label)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes[0].set_title("test AUC vs N")
        axes[1].set_title("gain over the pretrained model vs N")
        axes[1].axhline(0, color="black", linewidth=0.8)
        if hue:
            axes[0].get_legend().remove()
            axes[1].legend(title=hue, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.suptitle(f"{title} (error bars: SD over seeds)", fontsize=9)
        return save(fig, out)


def split_ctr(
    df: pd.DataFrame, out: str | os.PathLike, *, split: str = "split", ctr: str = "ctr",
    rows: str | None = "rows", hue: str | None = None, title: str = "Click-through rate per split",
    width: float = COLUMN, height: float = 2.3,
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
        return save(fig, out)


def rank_frequency(
    df: pd.DataFrame, out: str | os.PathLike, *, rank: str = "rank", count: str = "count",
    field: str = "field", title: str = "Categorical value frequency (rank-frequency, log-log)",
    width: float = COLUMN * 1.3, height: float = 2.6,
) -> list[Path]:
    """Log-log rank-frequency curves, one line per field (Zipf-like tails show as straight lines)."""
    df = _need(df, [rank, count, field], "rank_frequency")
    df = df[(df[rank] > 0) & (df[count] > 0)]
    with style():
        fig, ax = plt.subplots(figsize=(width, height))
        sns.lineplot(data=df, x=rank, y=count, hue=field, ax=ax, linewidth=1, estimator=None)
        ax.set(xscale="log", yscale="log", title=title, xlabel="rank of the value (1 = most frequent)",
               ylabel="occurrences in train")
        ax.legend(title=field, loc="upper right", frameon=True, ncol=2 if df[field].nunique() > 4 else 1)
        return save(fig, out)


# ---------------------------------------------------------------------------------------------------
# The two architecture diagrams of the paper, drawn with patches and arrows.

_COLORS = sns.color_palette("deep")


def _box(ax, xy, w, h, text, color, fontsize=7):
    x, y = xy
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.06",
                                facecolor=(*color, 0.25), edgecolor=color, linewidth=1.2))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, a, b, color="black", style="-|>", ls="-", rad=0.0, label=None, lpos=0.5, loff=(0, 0.04)):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=9, color=color, linewidth=1,
                                 linestyle=ls, connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))
    if label:
        mx, my = a[0] + (b[0] - a[0]) * lpos + loff[0], a[1] + (b[1] - a[1]) * lpos + loff[1]
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
                  width: float = COLUMN * 1.5, height: float = 2.9) -> list[Path]:
    """Figure 2: mutual learning, N peers on a ring, each pulled towards every other peer's prediction."""
    if not isinstance(n, int) or n < 2:
        raise CtrkitError(f"figure_mutual: n must be an integer >= 2, got {n!r}")
    names = list(names) if names else (MODEL_ORDER[:n] if n <= 4 else [f"peer {i + 1}" for i in range(n)])
    if len(names) != n:
        raise CtrkitError(f"figure_mutual: {len(names)} names given for n={n} peers")
    with style():
        fig, ax = _canvas(width, height)
        angles = np.pi / 2 + 2 * np.pi * np.arange(n) / n
        cx, cy, r = 0.5, 0.47, 0.32
        pos = [(cx + r * np.cos(a) * 0.95, cy + r * np.sin(a)) for a in angles]
        for i, (x, y) in enumerate(pos):
            _box(ax, (x, y), 0.2, 0.14, f"{names[i]}\n$p_{{{i + 1}}}$", _COLORS[i % len(_COLORS)])
        for i in range(n):
            for j in range(i + 1, n):
                a, b = np.array(pos[i]), np.array(pos[j])
                d = (b - a) / np.linalg.norm(b - a)
                # Shorten each edge so arrows start/stop at the box borders, double-headed: both learn.
                _arrow(ax, tuple(a + d * 0.1), tuple(b - d * 0.1), color="0.35", style="<|-|>", ls="--")
        ax.set_ylim(-0.1, 1)
        ax.text(0.5, -0.08, "$L_n = \\mathrm{BCE}(y, p_n) + \\frac{1}{N-1}\\sum_{i \\neq n}(p_i - p_n)^2$"
                "   ($p_i$ detached)", ha="center", va="bottom", fontsize=7)
        ax.set_title(f"Figure 2. Mutual learning among N = {n} peers (all trained, two-way)")
        return save(fig, out)
