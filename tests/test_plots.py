"""ctrkit.analysis.plots: each figure function writes a real PNG + SVG from a tidy frame, with its title, labels
and values, and rejects frames that lack the columns it needs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import pytest

from ctrkit.analysis import plots
from ctrkit.core.utils import CtrkitError

MODELS = ["DeepFM", "DCN", "PNN", "FiBiNET"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check(paths, *texts):
    assert [p.suffix for p in paths] == [".png", ".svg"]
    png, svg = paths
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    text = svg.read_text()
    for t in texts:
        assert t in text, f"{t!r} not drawn in {svg.name}"
    # nothing temporary left next to the figures
    assert not [p for p in png.parent.iterdir() if p.name.endswith(".tmp")]
    return text


CAP = plots.provenance(data="synthetic Criteo-shaped", rows=8000, seeds=5, precision="fp32", profile="quick")


def _ci_frame(rows):
    df = pd.DataFrame(rows)
    return df.assign(rel_pct_ci_low=df["rel_pct_mean"] - 0.05, rel_pct_ci_high=df["rel_pct_mean"] + 0.05)


def test_provenance_names_data_rows_seeds_precision_profile():
    assert CAP.startswith("synthetic Criteo-shaped · 8,000 rows · 5 seeds · fp32 · profile quick")
    assert "95% paired t-interval" in CAP


def test_paired_gains_draws_each_comparison_with_its_interval(tmp_path):
    rows = [{"model": m, "comparison": c, "rel_pct_mean": v} for m in MODELS
            for c, v in (("finetuning: mutual - alone", 0.1), ("from scratch: mutual - alone", -0.2))]
    svg = _check(plots.paired_gains(_ci_frame(rows), tmp_path / "gains", caption=CAP, title="Paired gains (criteo)"),
                 "Paired gains (criteo)", "finetuning: mutual - alone", "from scratch: mutual - alone", "FiBiNET",
                 "8,000 rows", "profile quick")
    assert "<svg" in svg


def test_a_point_without_an_interval_is_drawn_hollow_and_said_so(tmp_path, drawn):
    rows = [{"model": m, "comparison": "finetuning: mutual - alone", "rel_pct_mean": 0.1} for m in MODELS]
    df = _ci_frame(rows)
    df.loc[df["model"] == "PNN", ["rel_pct_ci_low", "rel_pct_ci_high"]] = np.nan  # one seed: no interval
    _check(plots.paired_gains(df, tmp_path / "gains", caption=CAP), "hollow: no interval (one seed)")
    hollow = [ln for ax in drawn[-1].axes for ln in ax.lines if ln.get_markerfacecolor() == "white"]
    assert len(hollow) == 1 and len(hollow[0].get_xdata()) == 1
    plots.paired_gains(_ci_frame(rows), tmp_path / "all", caption=CAP)
    assert "hollow" not in " ".join(t.get_text() for ax in drawn[-1].axes for t in ax.texts)


def test_partner_heatmap_annotates_means_and_holm_stars(tmp_path):
    rows = [{"target": m, "partner": p, "rel_pct_mean": 0.5 if (m, p) == ("DCN", "PNN") else 0.1,
             "p_holm": 0.01 if (m, p) == ("DCN", "PNN") else 0.5} for m in MODELS for p in MODELS if m != p]
    _check(plots.partner_heatmap(pd.DataFrame(rows), tmp_path / "heat", caption=CAP), "Pairs: mutual - alone",
           "0.50*", "0.10", "Holm p &lt; 0.05")


def test_partner_slopes_one_line_per_model(tmp_path):
    rng = np.random.default_rng(0)
    pts = pd.DataFrame([{"target": t, "partner": p, "seed": s, "partner_auc": 0.7 + 0.01 * MODELS.index(p) + 0.001 * s,
                         "rel_pct": 0.1 + rng.normal(0, 0.01)} for t in MODELS for p in MODELS if p != t for s in range(3)])
    slopes = pd.DataFrame({"target": MODELS, "slope_mean": [1.5, -2.0, 0.5, 3.0], "slope_ci_low": [0.5, -4, -1, 1],
                           "slope_ci_high": [2.5, 0, 2, 5], "intercept": [-1.0, 1.5, -0.3, -2.0]})
    _check(plots.partner_slopes(pts, slopes, tmp_path / "slopes", caption=CAP), "slope +1.500 [+0.500, +2.500]",
           "slope -2.000 [-4.000, +0.000]", "partner's pretrained AUC", "per 0.01 of AUC")


def test_partner_slopes_draw_each_line_in_its_unit(tmp_path, monkeypatch):
    # the slope is in rel % per AUC point (0.01): drawn against AUC itself, y = intercept + slope * x / 0.01
    drawn = {}
    real = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, out, **kw: drawn.setdefault("fig", fig) and real(fig, out, **kw))
    pts = pd.DataFrame([{"target": t, "partner": p, "seed": 0, "partner_auc": 0.70 + 0.01 * MODELS.index(p),
                         "rel_pct": 0.1} for t in MODELS for p in MODELS if p != t])
    slopes = pd.DataFrame({"target": MODELS, "slope_mean": 0.5, "slope_ci_low": 0.0, "slope_ci_high": 1.0,
                           "intercept": -35.0})
    plots.partner_slopes(pts, slopes, tmp_path / "slopes", caption=CAP)
    dashed = [ln for ax in drawn["fig"].axes for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == len(MODELS)
    for ln in dashed:
        x, y = ln.get_xdata(), ln.get_ydata()
        assert np.allclose(y, -35.0 + 0.5 * x / 0.01)  # at AUC 0.70: +0.0; at 0.73: +1.5


def test_peer_count_measured_points_with_intervals(tmp_path):
    rows = [{"model": m, "n_peers": n, "gain_rel_pct_mean": 0.1 * n, "gain_rel_pct_ci_low": 0.1 * n - 0.05,
             "gain_rel_pct_ci_high": 0.1 * n + 0.05, "rel_pct_mean": 0.0 if n == 1 else 0.05 * n,
             "rel_pct_ci_low": np.nan if n == 1 else 0.05 * n - 0.02, "rel_pct_ci_high": np.nan if n == 1 else 0.05 * n + 0.02}
            for m in MODELS for n in (1, 2, 4)]  # N = 3 not measured: no tick, no point
    svg = _check(plots.peer_count(pd.DataFrame(rows), tmp_path / "peers", caption=CAP), "number of peers N",
                 "gain over finetuning alone vs N", "gain over the pretrained model vs N",
                 "the control itself (0 by definition)")  # N = 1's missing interval is not "one seed"
    assert ">3<" not in svg.replace(" ", "") and "one seed" not in svg


def test_sweep_gain_marks_the_setting_chosen_on_validation(tmp_path):
    rows = [{"model": m, "weight": w, "finetune_lr_scale": s, "rel_pct_mean": 0.01 * w, "chosen": (w, s) == (10, 1)}
            for m in MODELS for w in (1, 10, 30) for s in (0.1, 1)]
    _check(plots.sweep_gain(_ci_frame(rows), tmp_path / "sweep", caption=CAP), "chosen on validation",
           "finetuning lr x0.1", "finetuning lr x1", "mutual weight w")


def test_data_figures(tmp_path):
    ctr = pd.DataFrame({"split": ["test", "train", "valid"], "ctr": [0.2, 0.25, 0.22], "rows": [10, 80, 10]})
    _check(plots.split_ctr(ctr, tmp_path / "ctr"), "Click-through rate per split", "80 rows")
    counts = np.sort(np.random.default_rng(0).zipf(2.0, 500))[::-1]
    freq = pd.DataFrame({"field": "C1", "rank": np.arange(1, 501), "count": counts})
    _check(plots.rank_frequency(freq, tmp_path / "freq"), "rank-frequency", "C1")


def test_architecture_diagrams(tmp_path):
    _check(plots.figure_kd(tmp_path / "fig1"), "Knowledge distillation", "teacher", "student")
    _check(plots.figure_mutual(tmp_path / "fig2", n=5), "N = 5 peers", "peer 5")
    # the method: pretrain alone, then finetune together with the detached squared difference
    _check(plots.figure_mutual(tmp_path / "fig2b.png"), "DeepFM", "FiBiNET", "1. pretrain each model alone",
           "2. finetune them together", "detached")  # suffix given: same stem
    assert (tmp_path / "fig2b.svg").exists()
    with pytest.raises(CtrkitError, match="n must be an integer >= 2"):
        plots.figure_mutual(tmp_path / "bad", n=1)


def test_missing_columns_and_empty_frames_are_clear_errors(tmp_path):
    with pytest.raises(CtrkitError, match=r"paired_gains: missing column\(s\) comparison, rel_pct_ci_low, .*the frame has \['model'"):
        plots.paired_gains(pd.DataFrame({"model": ["DCN"], "rel_pct_mean": [0.1]}), tmp_path / "x")
    # a whole table passed for the figure's frame: the frame's recipe, not a list of 40 column names
    table = pd.DataFrame({f"c{i}": [1] for i in range(40)})
    with pytest.raises(CtrkitError, match=r"the frame has 40 others \(c0, c1, c2, c3, c4, c5, \.\.\.\); draw the "
                                          r"figure's frame: ctrkit.analysis.frames.figure_frame\(store, 'gains'\)$"):
        plots.paired_gains(table, tmp_path / "x")
    with pytest.raises(CtrkitError, match="no rows to plot"):
        plots.peer_count(pd.DataFrame(columns=["n_peers", "model", "gain_rel_pct_mean", "rel_pct_mean"]), tmp_path / "y")
    assert not list(tmp_path.iterdir())


def test_same_figure_same_bytes(tmp_path):
    """No date and fixed SVG ids: re-drawing a figure rewrites identical files (clean git diffs)."""
    first = [p.read_bytes() for p in plots.figure_kd(tmp_path / "a" / "fig1")]
    second = [p.read_bytes() for p in plots.figure_kd(tmp_path / "b" / "fig1")]
    assert first == second
    assert b"<dc:date>" not in first[1]


# ---- every figure whose caption promises intervals draws them (issue 22) ----------------------------
@pytest.fixture
def drawn(monkeypatch):
    """The figure each call drew, kept before `save` closes it."""
    figs = []
    real = plots.save

    def keep(fig, out, formats=plots.FORMATS):
        figs.append(fig)
        return real(fig, out, formats)

    monkeypatch.setattr(plots, "save", keep)
    return figs


def _error_bars(fig) -> int:
    from matplotlib.container import ErrorbarContainer

    return sum(isinstance(c, ErrorbarContainer) and len(c.lines[2]) for ax in fig.axes for c in ax.containers)


def test_every_figure_with_a_ci_caption_draws_intervals(tmp_path, drawn):
    assert plots.CI_NOTE in CAP
    rows = [{"target": m, "partner": p, "rel_pct_mean": 0.1, "rel_pct_ci_low": -0.2, "rel_pct_ci_high": 0.4,
             "p_holm": 0.5} for m in MODELS for p in MODELS if m != p]
    plots.partner_heatmap(pd.DataFrame(rows), tmp_path / "heat", caption=CAP)
    assert sum("[-0.20, +0.40]" in t.get_text() for t in drawn[-1].axes[0].texts) == 12
    rng = np.random.default_rng(0)
    pts = pd.DataFrame([{"target": t, "partner": p, "seed": s, "partner_auc": 0.7 + 0.01 * MODELS.index(p),
                         "rel_pct": rng.normal(0.1, 0.05)} for t in MODELS for p in MODELS if p != t for s in range(3)])
    slopes = pd.DataFrame({"target": MODELS, "slope_mean": 1.0, "slope_ci_low": 0.0, "slope_ci_high": 2.0,
                           "intercept": -0.6})
    plots.partner_slopes(pts, slopes, tmp_path / "slopes", caption=CAP)
    assert _error_bars(drawn[-1]) == 12  # one mean [95% interval] per (model, partner)
    gains = _ci_frame([{"model": m, "comparison": c, "setting": st, "rel_pct_mean": 0.1} for m in MODELS
                       for c, st in (("from scratch: mutual - alone", "weight 1"),
                                     ("finetuning: mutual - alone", "weight 10, lr x0.1"))])
    svg = _check(plots.paired_gains(gains, tmp_path / "gains", caption=CAP), "(weight 1)", "(weight 10, lr x0.1)")
    assert _error_bars(drawn[-1]) == 2 and "<svg" in svg
    plots.sweep_gain(_ci_frame([{"model": m, "weight": w, "finetune_lr_scale": 1.0, "rel_pct_mean": 0.1}
                                for m in MODELS for w in (1, 10)]), tmp_path / "sweep", caption=CAP)
    assert _error_bars(drawn[-1]) == 4
    pc = [{"model": m, "n_peers": n, "gain_rel_pct_mean": 0.1, "gain_rel_pct_ci_low": 0.0, "gain_rel_pct_ci_high": 0.2,
           "rel_pct_mean": 0.1, "rel_pct_ci_low": 0.0, "rel_pct_ci_high": 0.2} for m in MODELS for n in (2, 3)]
    plots.peer_count(pd.DataFrame(pc), tmp_path / "pc", caption=CAP)
    assert _error_bars(drawn[-1]) == 8


def test_provenance_gives_the_rows_of_each_split_as_loaded():
    text = plots.provenance(data="real data: ml100k", splits={"train": 70_000, "valid": 10_000, "test": 20_000},
                            seeds=10, precision="fp32", profile="paper", error_bars=False)
    assert text == "real data: ml100k · 100,000 rows (train 70,000 / valid 10,000 / test 20,000) · 10 seeds · fp32 · " \
                   "profile paper"


def test_caption_reads_the_loaded_data_not_the_profile(tmp_path):
    """A real table of 100,000 rows under a profile whose synthetic count is 200,000: the caption says
    100,000 and the dataset's own name, as loaded (the issue's "200,000 rows" and "Ml100k")."""
    import json

    from ctrkit.notebook import reproduce

    data = tmp_path / "prepared"
    data.mkdir()
    (data / "feature_map.json").write_text(json.dumps({"dataset": "ml100k", "rows": {"train": 80_000, "valid": 10_000,
                                                                                     "test": 10_000}}))
    cfg = reproduce.settings(dataset="criteo", profile="paper", out=str(tmp_path / "out"), data_dir=str(data))
    cfg = __import__("dataclasses").replace(cfg, dataset="ml100k")
    text = reproduce.caption(cfg)
    assert "real data: ml100k · 100,000 rows (train 80,000 / valid 10,000 / test 10,000)" in text
    assert "200,000" not in text and "Ml100k" not in text and plots.CI_NOTE in text
    assert "ml100k" in reproduce.caption(cfg, figure=False) and plots.CI_NOTE not in reproduce.caption(cfg, figure=False)
    # the data statistics state the data alone: no seeds or precision of runs that are not theirs
    assert reproduce.caption(cfg, figure=False, runs=False) == \
        "real data: ml100k · 100,000 rows (train 80,000 / valid 10,000 / test 10,000) · profile paper"


def test_panels_give_each_group_its_own_scale(tmp_path, drawn):
    """07's figure: one interval from scratch at -9% must not flatten the finetuning ones beside it."""
    rows = ([{"model": m, "comparison": f"{v}\nFT", "init": "finetune", "rel_pct_mean": 0.2} for m in MODELS
             for v in ("MSE", "KL")]
            + [{"model": m, "comparison": "MSE\nscratch", "init": "from scratch", "rel_pct_mean": -9.0} for m in MODELS])
    _check(plots.paired_gains(_ci_frame(rows), tmp_path / "v", caption=CAP, x="comparison", hue="model", panel="init",
                              title="Relatives"), "finetune", "from scratch", "Relatives")
    ft, scratch = drawn[-1].axes[:2]
    assert ft.get_title() == "finetune" and scratch.get_title() == "from scratch"
    assert ft.get_ylim()[0] > -1 and scratch.get_ylim()[0] < -9  # each panel scaled to its own points
    assert len(drawn[-1].axes) == 2 and ft.get_legend() is None and scratch.get_legend() is not None


def test_a_figure_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    (tmp_path / "afile").write_text("")
    for stem, shown in ((Path("/proc/ctrkit-none/fig"), "ctrkit-none/fig.png"), (tmp_path / "afile" / "fig", "afile/fig.png")):
        fig = plt.figure()
        with pytest.raises(CtrkitError, match=f"{shown}: cannot write the figure") as e:
            plots.save(fig, stem)
        assert "\n" not in str(e.value) and not plt.get_fignums()  # closed all the same


# ---- review of the committed figures: fit range, one relative unit, the variants' key, the sweep's mark --------
def test_partner_slopes_line_spans_the_partner_means_it_was_fitted_to(tmp_path, drawn):
    """The fit rests on the partner means (`tables.slopes_of_points`): its line must not run across
    the seeds' wider spread, which would look like support the fit does not have; the seeds light."""
    spread = (-0.015, 0.0, 0.015)  # each partner's seeds 0.03 wide around a mean
    pts = pd.DataFrame([{"target": t, "partner": p, "seed": s, "partner_auc": 0.70 + 0.001 * MODELS.index(p) + d,
                         "rel_pct": 0.1 * s} for t in MODELS for p in MODELS if p != t for s, d in enumerate(spread)])
    slopes = pd.DataFrame({"target": MODELS, "slope_mean": 0.5, "slope_ci_low": -1.0, "slope_ci_high": 2.0,
                           "intercept": -35.0})
    plots.partner_slopes(pts, slopes, tmp_path / "slopes", caption=CAP)
    for ax, t in zip(drawn[-1].axes, MODELS):
        means = pts[pts["target"] == t].groupby("partner")["partner_auc"].mean()
        (line,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        x = line.get_xdata()
        assert np.isclose(x.min(), means.min()) and np.isclose(x.max(), means.max())
        assert np.allclose(line.get_ydata(), -35.0 + 0.5 * x / 0.01)  # still the fit, in its unit
        assert all(c.get_alpha() < 0.45 for c in ax.collections if c.get_label() in MODELS)  # seeds lighter


def _rel_labels(fig) -> list[str]:
    return [label for ax in fig.axes for label in (ax.get_ylabel(),) if "%" in label]


def test_every_relative_auc_axis_says_the_same_unit(tmp_path, drawn):
    """peer_count's left panel said "(%)" where every other relative-AUC axis said "(rel. %)"."""
    pc = [{"model": m, "n_peers": n, "gain_rel_pct_mean": 0.1, "gain_rel_pct_ci_low": 0.0, "gain_rel_pct_ci_high": 0.2,
           "rel_pct_mean": 0.1, "rel_pct_ci_low": 0.0, "rel_pct_ci_high": 0.2} for m in MODELS for n in (2, 3)]
    plots.peer_count(pd.DataFrame(pc), tmp_path / "pc", caption=CAP)
    gains = _ci_frame([{"model": m, "comparison": "c", "rel_pct_mean": 0.1} for m in MODELS])
    plots.paired_gains(gains, tmp_path / "g")
    plots.sweep_gain(_ci_frame([{"model": m, "weight": w, "finetune_lr_scale": 1.0, "rel_pct_mean": 0.1}
                                for m in MODELS for w in (1, 10)]), tmp_path / "sweep")
    plots.partner_heatmap(pd.DataFrame([{"target": m, "partner": p, "rel_pct_mean": 0.1} for m in MODELS
                                        for p in MODELS if m != p]), tmp_path / "heat")
    plots.gain_vs_strength(_ci_frame([{"size": s, "peer": m, "pretrained_auc_mean": 0.7, "rel_pct_mean": 0.1}
                                      for m in MODELS for s in ("smoke", "full")]), tmp_path / "strength")
    plots.compared(pd.DataFrame([{"dataset": "criteo", "table": "headline", "row": m, "estimate": "rel_pct",
                                  "same": True, **{f"{r}_{k}": v for r in ("a", "b") for k, v in
                                                   (("mean", 0.1), ("ci_low", 0.0), ("ci_high", 0.2))}}
                                 for m in MODELS]), tmp_path / "cmp", labels=("a", "b"))
    labels = [label for fig in drawn for label in _rel_labels(fig)]
    assert len(labels) == 7  # two of peer_count, the heatmap's colour bar, one each of the rest
    assert all(label.endswith("(rel. %)") for label in labels), labels
    assert drawn[0].axes[0].get_ylabel() == "gain over the pretrained model (rel. %)"


VARIANT_TICKS = ["MSE\nFT", "ens\nFT", "EKTF\nscratch\nshared", "KD\nscratch", "KL\nscratch", "table\nscratch\nshared"]


def test_the_variants_abbreviations_are_explained_on_the_figure(tmp_path, drawn):
    rows = [{"model": m, "comparison": c, "init": "finetune" if "FT" in c else "from scratch", "rel_pct_mean": 0.1}
            for m in MODELS for c in VARIANT_TICKS]
    plots.paired_gains(_ci_frame(rows), tmp_path / "v", caption=CAP, x="comparison", hue="model", panel="init",
                       width=9.0, height=3.2)
    texts = [t.get_text() for t in drawn[-1].texts]
    key = next(t for t in texts if t.startswith("tick labels:"))
    for word in ("MSE", "KL", "ens", "EKTF", "KD", "FT", "shared", "table"):
        assert f"{word} = {plots.TICK_KEY[word]}" in key  # every abbreviation on the axis, spelled out
    assert all(len(line) <= 9.0 * 20 for line in key.split("\n"))  # broken into lines that fit the width
    assert any(CAP in t for t in texts)  # the provenance line stays
    # a figure without abbreviations on its axis (the gains figure, x = model) gets no key; key={} turns it off
    plots.paired_gains(_ci_frame([{"model": m, "comparison": "c", "rel_pct_mean": 0.1} for m in MODELS]),
                       tmp_path / "g", caption=CAP)
    plots.paired_gains(_ci_frame(rows), tmp_path / "v2", x="comparison", hue="model", panel="init", key={})
    assert not [t for fig in drawn[-2:] for t in fig.texts if "tick labels" in t.get_text()]


def test_the_sweep_mark_cannot_run_into_the_legend(tmp_path, drawn):
    """The study's case (figures/study-criteo/criteo_sweep_gain.png): the setting chosen at the largest
    weight of the last panel, whose "chosen on validation" text ran into the legend beside it."""
    rows = [{"model": m, "weight": w, "finetune_lr_scale": s, "rel_pct_mean": 0.01 * w, "chosen": (w, s) == (30, 1)}
            for m in MODELS for w in (1, 10, 30) for s in (0.1, 1)]
    plots.sweep_gain(_ci_frame(rows), tmp_path / "sweep", caption=CAP, title="Finetuning sweep (criteo)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = drawn[-1]
    FigureCanvasAgg(fig).draw()  # `save` closed it: lay it out again, as it was saved
    renderer = fig.canvas.get_renderer()
    legend = fig.axes[-1].get_legend()
    box = legend.get_window_extent(renderer)
    others = [t for t in [*fig.texts, *(t for ax in fig.axes for t in ax.texts)] if t.get_text().strip()]
    assert not [t.get_text() for t in others if t.get_window_extent(renderer).overlaps(box)]
    marked = [t.get_text() for t in legend.get_texts() if t.get_text().startswith("chosen on validation")]
    assert marked == ["chosen on validation (w 30, lr x1)"]  # named, with its setting
    (line,) = [ln for ln in fig.axes[-1].get_lines() if ln.get_linestyle() == ":"]
    assert np.allclose(line.get_xdata(), np.log10(30))  # at the chosen weight, in the chosen lr's panel
    assert not [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == ":"]


def test_data_figures_carry_the_provenance_line(tmp_path, drawn):
    """The data figures take the provenance as `caption` (00_data passes `reproduce.caption(cfg,
    figure=False, runs=False)`): synthetic or real, and rows per split, under the figure."""
    about = plots.provenance(data="synthetic Criteo-shaped data", splits={"train": 80, "valid": 10, "test": 10},
                             seeds=None, precision=None, profile="quick", error_bars=False)
    ctr = pd.DataFrame({"split": ["train", "valid", "test"], "ctr": [0.25, 0.22, 0.2], "rows": [80, 10, 10]})
    plots.split_ctr(ctr, tmp_path / "ctr", caption=about)
    freq = pd.DataFrame({"field": "C1", "rank": np.arange(1, 51), "count": np.arange(50, 0, -1)})
    plots.rank_frequency(freq, tmp_path / "freq", caption=about)
    for fig in drawn[-2:]:
        assert [t.get_text() for t in fig.texts] == ["synthetic Criteo-shaped data · 100 rows (train 80 / valid 10 / "
                                                     "test 10) · profile quick"]
