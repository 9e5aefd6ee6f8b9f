"""Tables on a hand-made store: every expected number below is worked out by hand in the comments."""
import math

import numpy as np
import pandas as pd
import pytest

from ctrkit import tables
from ctrkit.store import ResultsStore
from ctrkit.utils import CtrkitError

BASE = {"DeepFM": [0.800, 0.802, 0.801], "DCN": [0.790, 0.792, 0.791]}
SEEDS = [1, 2, 3]


def _rec(mode, init, peers, i, seed, auc, pre=None, ens=None, weight=1.0):
    peer = peers[i]
    return dict(run_key=f"{mode}|{init}|{'+'.join(peers)}|{seed}|{weight}", dataset="criteo", mode=mode,
                init=init, seed=seed, n_peers=len(peers), peer_index=i, peer=peer, model=peer,
                peers="+".join(peers), partners=[p for j, p in enumerate(peers) if j != i], weight=weight,
                test_auc=auc, test_logloss=0.45, pretrained_test_auc=pre, ensemble_test_auc=ens)


@pytest.fixture
def store(tmp_path):
    s = ResultsStore(tmp_path / "results.jsonl")
    pair = ["DeepFM", "DCN"]
    for k, seed in enumerate(SEEDS):
        s.append([_rec("baseline", None, [m], 0, seed, BASE[m][k]) for m in pair])
        # from scratch: DeepFM -0.001 each seed, DCN +0.001 each seed
        s.append([_rec("mutual", "scratch", pair, 0, seed, BASE["DeepFM"][k] - 0.001),
                  _rec("mutual", "scratch", pair, 1, seed, BASE["DCN"][k] + 0.001)])
        # finetuned: DeepFM +0.004,+0.003,+0.005 ; DCN +0.002,+0.003,+0.002
        ft = {"DeepFM": [0.804, 0.805, 0.806], "DCN": [0.792, 0.795, 0.793]}
        s.append([_rec("mutual", "pretrained", pair, i, seed, ft[m][k], BASE[m][k], ens=0.81) for i, m in enumerate(pair)])
        # alone control: DeepFM +0.001 each ; DCN 0, 0, +0.001
        al = {"DeepFM": [0.801, 0.803, 0.802], "DCN": [0.790, 0.792, 0.792]}
        s.append([_rec("alone", "pretrained", pair, i, seed, al[m][k], BASE[m][k], weight=0.0) for i, m in enumerate(pair)])
    # one 3-peer run, one seed: gains +0.006, +0.003, +0.000 over pretrained 0.80, 0.79, 0.78
    trio = ["DeepFM", "DCN", "PNN"]
    s.append([_rec("mutual", "pretrained", trio, i, 1, a, p)
              for i, (a, p) in enumerate([(0.806, 0.800), (0.793, 0.790), (0.780, 0.780)])])
    return s


def test_baselines_mean_std(store):
    t = tables.baselines(store).set_index("model")
    assert t.loc["DeepFM", "test_auc_mean"] == pytest.approx(0.801)
    assert t.loc["DeepFM", "test_auc_std"] == pytest.approx(0.001)  # sample std of .800,.802,.801
    assert t.loc["DCN", "n_seeds"] == 3


def test_scratch_vs_baseline(store):
    t = tables.scratch(store).set_index("peer")
    assert t.loc["DeepFM", "delta_auc_mean"] == pytest.approx(-0.001)
    assert t.loc["DeepFM", "delta_auc_std"] == pytest.approx(0.0, abs=1e-12)
    assert t.loc["DCN", "delta_auc_mean"] == pytest.approx(0.001)
    assert t.loc["DCN", "rel_pct_mean"] == pytest.approx(np.mean([0.1 / 0.790, 0.1 / 0.792, 0.1 / 0.791]))
    assert t.loc["DCN", "baseline_auc_mean"] == pytest.approx(0.791)
    assert t.loc["DCN", "n_paired"] == 3


def test_finetune_vs_baseline_and_alone(store):
    t = tables.finetune(store)
    t = t[t["peers"] == "DeepFM+DCN"].set_index("peer")
    d = t.loc["DeepFM"]
    assert d["mutual_auc_mean"] == pytest.approx(0.805)
    assert d["delta_auc_mean"] == pytest.approx(0.004)
    assert d["delta_auc_std"] == pytest.approx(0.001)
    # rel % per seed: 0.4/0.800 = 0.5, 0.3/0.802 = 0.374065, 0.5/0.801 = 0.624220
    assert d["rel_pct_mean"] == pytest.approx((0.5 + 0.3740648 + 0.6242197) / 3, abs=1e-6)
    # paired t: diffs mean .004, sd .001, t = 4*sqrt(3) = 6.9282, df 2:
    # p = 2 * (1 - (1/2 + t / (2 sqrt(2 + t^2)))) = 1 - t/sqrt(50) = 0.020204
    assert d["p_ttest"] == pytest.approx(1 - 4 * math.sqrt(3) / math.sqrt(50), rel=1e-6)
    assert d["p_wilcoxon"] == pytest.approx(0.25)  # exact, n=3, all positive: 2 * 1/8
    # vs alone: mutual - alone = .003, .002, .004
    assert d["alone_auc_mean"] == pytest.approx(0.802)
    assert d["vs_alone_delta_auc_mean"] == pytest.approx(0.003)
    assert d["vs_alone_delta_auc_std"] == pytest.approx(0.001)
    assert d["alone_rel_pct_mean"] == pytest.approx((0.1 / 0.800 + 0.1 / 0.802 + 0.1 / 0.801) / 3)
    trio = tables.finetune(store).query("peers == 'DeepFM+DCN+PNN'").set_index("peer")
    assert trio.loc["DeepFM", "delta_auc_mean"] == pytest.approx(0.006)
    assert np.isnan(trio.loc["DeepFM", "p_ttest"]) and trio.loc["DeepFM", "note"] == tables.NOTE_FEW_SEEDS


def test_partners_matrix(store):
    t = tables.partners(store).set_index(["target", "partner"])
    assert len(t) == 2  # only N = 2 runs count
    assert t.loc[("DCN", "DeepFM"), "delta_auc_mean"] == pytest.approx((0.002 + 0.003 + 0.002) / 3)
    assert t.loc[("DeepFM", "DCN"), "rel_pct_mean"] == pytest.approx(0.4994282, abs=1e-6)
    shown = tables.display("partners", tables.partners(store)).set_index("target \\ partner")
    assert shown.loc["DeepFM", "DCN"].startswith("+0.0040 ± 0.0010 (+0.50%)")
    assert shown.loc["DeepFM", "DeepFM"] == ""


def test_peer_count(store):
    t = tables.peer_count(store).set_index("n_peers")
    # N = 1: the 6 alone peers' gains: .001 x3 and 0, 0, .001  -> mean .004/6
    assert t.loc[1, "n_runs"] == 6
    assert t.loc[1, "delta_auc_mean"] == pytest.approx(0.004 / 6)
    # N = 2: per-run mean gains .003, .003, .0035
    assert t.loc[2, "delta_auc_mean"] == pytest.approx((0.003 + 0.003 + 0.0035) / 3)
    assert t.loc[2, "n_runs"] == 3
    # N = 3: one run, (.006 + .003 + 0) / 3 ; no test with one seed
    assert t.loc[3, "delta_auc_mean"] == pytest.approx(0.003)
    assert np.isnan(t.loc[3, "delta_auc_std"]) and t.loc[3, "note"] == tables.NOTE_FEW_SEEDS


def test_controls_table(store):
    t = tables.controls(store).set_index(["peers", "init", "mode"])
    assert t.loc[("DeepFM+DCN", "pretrained", "alone"), "peer_auc_mean"] == pytest.approx(
        np.mean([(0.801 + 0.790) / 2, (0.803 + 0.792) / 2, (0.802 + 0.792) / 2]))
    assert t.loc[("DeepFM+DCN", "pretrained", "mutual"), "ensemble_auc_mean"] == pytest.approx(0.81)


@pytest.mark.parametrize("name", tables.NAMES)
@pytest.mark.parametrize("fmt", tables.FORMATS)
def test_render_every_table_and_format(store, tmp_path, name, fmt):
    df = tables.table(name, store.path)
    text = tables.render(name, df, fmt)
    assert len(df) and len(text) > 50
    if fmt == "md":
        assert text.splitlines()[1].startswith("|")
    if fmt == "csv":
        back = pd.read_csv(pd.io.common.StringIO(text))
        assert back.shape == df.shape
    if fmt == "tex":
        assert "\\begin{tabular}" in text
    # tables read a tidy CSV export exactly as they read the store
    csv = store.to_csv(tmp_path / "r.csv")
    pd.testing.assert_frame_equal(tables.table(name, csv).reset_index(drop=True), df.reset_index(drop=True),
                                  check_dtype=False)


def test_display_mean_pm_std(store):
    shown = tables.display("finetune", tables.finetune(store)).set_index("peer")
    assert shown.loc["DeepFM", "delta_auc"].iloc[0] == "+0.0040 ± 0.0010"


def test_empty_store_and_bad_names(tmp_path):
    empty = ResultsStore(tmp_path / "none.jsonl")
    assert "no `finetune` results" in tables.render("finetune", tables.finetune(empty.to_frame()), "md")
    with pytest.raises(CtrkitError, match="valid: baselines"):
        tables.table("nope", empty.to_frame())
    with pytest.raises(CtrkitError, match="format"):
        tables.render("scratch", pd.DataFrame(), "html")
