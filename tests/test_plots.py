"""ctrkit.plots: each figure function writes a real PNG + SVG from a tidy frame, with its title, labels
and values, and rejects frames that lack the columns it needs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctrkit import plots
from ctrkit.utils import CtrkitError

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


def test_delta_auc_bar_means_and_seed_note(tmp_path):
    rows = [{"model": m, "setting": s, "seed": seed, "rel_delta_auc_pct": v + 0.01 * seed}
            for m in MODELS for s, v in (("finetune_alone", -0.1), ("finetune_mutual", 0.3)) for seed in range(3)]
    svg = _check(plots.delta_auc_bar(pd.DataFrame(rows), tmp_path / "bar"),
                 "Relative AUC change", "relative Δ test AUC (%)", "SD over 3 seeds", "mutual finetuning",
                 "finetuned alone (control)", "FiBiNET")
    assert "<svg" in svg


def test_partner_heatmap_annotates_the_mean_over_seeds(tmp_path):
    rows = [{"model": m, "partner": p, "seed": s, "rel_delta_auc_pct": (0.5 if (m, p) == ("DCN", "PNN") else 0.1) + s}
            for m in MODELS for p in MODELS if m != p for s in (0, 1)]
    # mean over seeds 0 and 1 of 0.5+s is 1.00; 0.1+s gives 0.60
    _check(plots.partner_heatmap(pd.DataFrame(rows), tmp_path / "heat"), "Pairwise mutual finetuning", "1.00", "0.60",
           "partner")


def test_gain_scatter_fit_reports_correlation(tmp_path):
    x = np.linspace(0.7, 0.8, 12)
    df = pd.DataFrame({"partner_auc": x, "rel_delta_auc_pct": 10 * x - 7, "model": MODELS * 3})
    _check(plots.gain_vs_partner_auc(df, tmp_path / "scatter"), "least-squares fit (r = 1.00)",
           "partner's pretrained test AUC")


def test_peer_count_two_panels(tmp_path):
    rows = [{"model": m, "n_peers": n, "seed": s, "test_auc": 0.7 + 0.01 * n, "rel_delta_auc_pct": 0.1 * n + s / 100}
            for m in MODELS for n in range(1, 6) for s in range(3)]
    _check(plots.peer_count(pd.DataFrame(rows), tmp_path / "peers"), "number of peers N", "test AUC vs N",
           "gain over the pretrained model vs N")


def test_data_figures(tmp_path):
    ctr = pd.DataFrame({"split": ["test", "train", "valid"], "ctr": [0.2, 0.25, 0.22], "rows": [10, 80, 10]})
    _check(plots.split_ctr(ctr, tmp_path / "ctr"), "Click-through rate per split", "80 rows")
    counts = np.sort(np.random.default_rng(0).zipf(2.0, 500))[::-1]
    freq = pd.DataFrame({"field": "C1", "rank": np.arange(1, 501), "count": counts})
    _check(plots.rank_frequency(freq, tmp_path / "freq"), "rank-frequency", "C1")


def test_architecture_diagrams(tmp_path):
    _check(plots.figure_kd(tmp_path / "fig1"), "Knowledge distillation", "teacher", "student")
    _check(plots.figure_mutual(tmp_path / "fig2", n=5), "N = 5 peers", "peer 5")
    _check(plots.figure_mutual(tmp_path / "fig2b.png"), "DeepFM", "FiBiNET")  # suffix given: same stem
    assert (tmp_path / "fig2b.svg").exists()
    with pytest.raises(CtrkitError, match="n must be an integer >= 2"):
        plots.figure_mutual(tmp_path / "bad", n=1)


def test_missing_columns_and_empty_frames_are_clear_errors(tmp_path):
    with pytest.raises(CtrkitError, match=r"delta_auc_bar: missing column\(s\) \['setting'\]"):
        plots.delta_auc_bar(pd.DataFrame({"model": ["DCN"], "rel_delta_auc_pct": [0.1]}), tmp_path / "x")
    with pytest.raises(CtrkitError, match="no rows to plot"):
        plots.peer_count(pd.DataFrame(columns=["n_peers", "test_auc", "rel_delta_auc_pct", "model"]), tmp_path / "y")
    assert not list(tmp_path.iterdir())


def test_same_figure_same_bytes(tmp_path):
    """No date and fixed SVG ids: re-drawing a figure rewrites identical files (clean git diffs)."""
    first = [p.read_bytes() for p in plots.figure_kd(tmp_path / "a" / "fig1")]
    second = [p.read_bytes() for p in plots.figure_kd(tmp_path / "b" / "fig1")]
    assert first == second
    assert b"<dc:date>" not in first[1]
