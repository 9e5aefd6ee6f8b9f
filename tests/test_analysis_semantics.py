"""Pins what the paired-comparison statistics mean, each against a computation by hand with numpy/scipy.

Direction of RelaImpr and logloss (treatment - control), the t-test from 2 pairs, NaN left out of an
interval, a re-run's newer record winning, pairs from two pretrained checkpoints left out (to 1e-9),
both arms' gains over their own checkpoint, best epoch 0 (only) as a kept checkpoint, the aggregate
bootstrap's 95% percentile interval and IQM point estimate, and a seed without an AUC left out of the
strength contrast.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ctrkit.analysis import aggregate, strength, tables
from ctrkit.analysis import stats as pstats
from ctrkit.experiments.store import ResultsStore
# the cluster bootstrap written one rep at a time, and the strength tests' two-size store: one reference each
from test_aggregate import _exact, _frame, _reference
from test_strength import _alone, _mutual, _store as _sizes_store


# ---- stats.paired / t_interval ------------------------------------------------------------------
NEW = np.array([0.7812, 0.7705, 0.7931, 0.7650])
REF = np.array([0.7790, 0.7712, 0.7880, 0.7641])


def test_relaimpr_is_the_new_auc_over_the_reference():
    st = pstats.paired(NEW, REF)
    by_hand = 100.0 * ((NEW - 0.5) / (REF - 0.5) - 1.0)
    assert st["relaimpr_pct_mean"] == pytest.approx(by_hand.mean(), rel=1e-12)
    lo, hi = stats.t.interval(0.95, len(NEW) - 1, loc=by_hand.mean(), scale=stats.sem(by_hand))
    assert (st["relaimpr_pct_ci_low"], st["relaimpr_pct_ci_high"]) == pytest.approx((lo, hi), rel=1e-9)


def test_two_pairs_already_get_a_t_test():
    st = pstats.paired(NEW[:2], REF[:2])
    assert st["n_pairs"] == 2 and st["p_ttest"] == pytest.approx(stats.ttest_rel(NEW[:2], REF[:2]).pvalue, rel=1e-12)


def test_t_interval_leaves_nan_out():
    m, lo, hi = pstats.t_interval([0.1, np.nan, 0.3])
    half = stats.t.ppf(0.975, 1) * np.std([0.1, 0.3], ddof=1) / np.sqrt(2)
    assert (m, lo, hi) == pytest.approx((0.2, 0.2 - half, 0.2 + half), rel=1e-12)


# ---- pairing, through tables.finetune --------------------------------------------------------------
PEERS = ["DeepFM", "DCN"]
SEEDS = [1, 2, 3, 4]
ALONE = {1: 0.0011, 2: -0.0004, 3: 0.0023, 4: 0.0007}  # alone's change from its checkpoint, per seed
MUTUAL = {1: 0.0019, 2: 0.0012, 3: 0.0020, 4: 0.0031}  # mutual's
LOSS = {"alone": {1: 0.4410, 2: 0.4452, 3: 0.4398, 4: 0.4431}, "mutual": {1: 0.4391, 2: 0.4460, 3: 0.4372, 4: 0.4402}}
BEST = {"alone": {1: 0, 2: 1, 3: 1, 4: 2}, "mutual": {1: 1, 2: 1, 3: 0, 4: 3}}  # best epoch 0 = kept the checkpoint


def pre(peer, seed):
    return {"DeepFM": 0.780, "DCN": 0.790}[peer] + 0.001 * seed


def auc(mode, peer, seed):
    return pre(peer, seed) + (MUTUAL if mode == "mutual" else ALONE)[seed] * (1 + PEERS.index(peer))


def rec(mode, i, seed, *, run="a", **extra):
    """One peer's record of a finetuning run (the shape of tests/test_tables.py's `rec`)."""
    w = 0.0 if mode == "alone" else 1.0
    r = dict(run_key=f"{mode}|{seed}|{run}", dataset="criteo", fingerprint="fp", mode=mode, init="pretrained",
             seed=seed, n_peers=2, peer_index=i, peer=PEERS[i], model=PEERS[i], peers="+".join(PEERS),
             partners=[PEERS[1 - i]], weight=w, finetune_lr_scale=0.1, finetune_epochs=3, preset="smoke", amp="off",
             tag=None, test_auc=auc(mode, PEERS[i], seed), test_logloss=LOSS[mode][seed] + 0.01 * i,
             valid_auc=0.7, valid_logloss=0.45, pretrained_test_auc=pre(PEERS[i], seed), ensemble_test_auc=None,
             epochs=3, best_epoch=BEST[mode][seed], epoch_cap_hit=False, stopped_early=True,
             settings_key=f"{mode}|{w}")
    r.update(extra)
    return r


def _finetune(tmp_path, *later):
    """The finetune rows (by peer) of every seed's alone and mutual run, then the records `later`."""
    s = ResultsStore(tmp_path / "r.jsonl")
    for seed in SEEDS:
        for mode in ("alone", "mutual"):
            s.append([rec(mode, i, seed) for i in range(2)])
    for records in later:
        s.append(records)
    return tables.finetune(s, choose=False).set_index("peer")


def test_logloss_and_both_gains_are_each_arm_against_its_own_reference(tmp_path):
    t = _finetune(tmp_path)
    for i, peer in enumerate(PEERS):
        row = t.loc[peer]
        assert row["n_pairs"] == 4
        ll = [LOSS["mutual"][s] - LOSS["alone"][s] for s in SEEDS]  # treatment - control (the 0.01 i cancels)
        assert row["logloss_diff_mean"] == pytest.approx(np.mean(ll), rel=1e-9)
        alone = [100 * (auc("alone", peer, s) - pre(peer, s)) / pre(peer, s) for s in SEEDS]
        mutual = [100 * (auc("mutual", peer, s) - pre(peer, s)) / pre(peer, s) for s in SEEDS]
        assert row["alone_gain_rel_pct_mean"] == pytest.approx(np.mean(alone), rel=1e-9)
        assert row["mutual_gain_rel_pct_mean"] == pytest.approx(np.mean(mutual), rel=1e-9)
        # only best epoch 0 is a kept checkpoint (epoch 1 trained past it)
        assert (row["n_kept_pretrained_alone"], row["n_kept_pretrained_mutual"]) == (1, 1)


def test_a_rerun_s_newer_record_replaces_the_older_one(tmp_path):
    """Seed 2 of both arms ran again elsewhere (another run key, appended later, other AUCs): each arm's
    pair takes the newer record."""
    again = {"mutual": 0.0050, "alone": -0.0030}
    later = [[rec(mode, i, 2, run="b", test_auc=pre(p, 2) + d) for i, p in enumerate(PEERS)] for mode, d in again.items()]
    t = _finetune(tmp_path, *later)
    for peer in PEERS:
        mut = [pre(peer, s) + again["mutual"] if s == 2 else auc("mutual", peer, s) for s in SEEDS]
        alo = [pre(peer, s) + again["alone"] if s == 2 else auc("alone", peer, s) for s in SEEDS]
        assert t.loc[peer, "n_pairs"] == 4
        assert t.loc[peer, "mutual_auc_mean"] == pytest.approx(np.mean(mut), rel=1e-12)
        assert t.loc[peer, "alone_auc_mean"] == pytest.approx(np.mean(alo), rel=1e-12)
        assert t.loc[peer, "auc_diff_mean"] == pytest.approx(np.mean(np.subtract(mut, alo)), rel=1e-9)


@pytest.mark.parametrize("mutual_start, alone_start", [(0.8000 + 0.004, 0.8000),  # another checkpoint
                                                       (0.80020, 0.80010)])  # 1e-4 apart: still another one
def test_a_pair_from_two_checkpoints_is_left_out(tmp_path, mutual_start, alone_start):
    """DCN's seed 3 arms record different pretrained starts (the same checkpoint scores the same AUC to 1e-9):
    that pair is left out of DCN's row; DeepFM keeps all four."""
    s = ResultsStore(tmp_path / "r.jsonl")
    for seed in SEEDS:
        for mode, start in (("alone", alone_start), ("mutual", mutual_start)):
            s.append([rec(mode, i, seed, **({"pretrained_test_auc": start} if (i, seed) == (1, 3) else {}))
                      for i in range(2)])
    t = tables.finetune(s, choose=False).set_index("peer")
    kept = [x for x in SEEDS if x != 3]
    assert t.loc["DeepFM", "n_pairs"] == 4 and t.loc["DCN", "n_pairs"] == 3
    assert t.loc["DCN", "auc_diff_mean"] == pytest.approx(
        np.mean([auc("mutual", "DCN", x) - auc("alone", "DCN", x) for x in kept]), rel=1e-9)


# ---- aggregate.summary ------------------------------------------------------------------------------
def test_summary_interval_is_the_2_5_and_97_5_percentiles_of_the_cluster_bootstrap():
    f = _frame(5, {"avazu": 5, "criteo": 4})
    r = aggregate.summary(f, reps=300).iloc[0]
    iqms, pois = _reference(f, np.random.default_rng(aggregate.SEED), 300)
    for draws, cols in ((iqms, ["iqm_ci_low", "iqm_ci_high"]), (pois, ["p_improve_ci_low", "p_improve_ci_high"])):
        want = np.nanpercentile(draws, [2.5, 97.5])
        assert r[cols].to_numpy(float) == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert not np.allclose(np.nanpercentile(iqms, [5, 95]), np.nanpercentile(iqms, [2.5, 97.5]))  # they differ


def test_summary_point_estimate_is_the_interquartile_mean_not_the_mean():
    """Eight pooled relative differences, one of them an outlier: the IQM is the mean of the middle four."""
    t = {("DeepFM", 1): 0.7010, ("DeepFM", 2): 0.6995, ("DeepFM", 3): 0.7004, ("DeepFM", 4): 0.7350,
         ("DCN", 1): 0.7003, ("DCN", 2): 0.6990, ("DCN", 3): 0.7012, ("DCN", 4): 0.7001}
    f = _exact([(p, s, x, 0.7) for (p, s), x in t.items()])
    rel = np.array([100 * (x - 0.7) / 0.7 for x in t.values()])
    by_hand = np.sort(rel)[2:6].mean()
    assert by_hand == pytest.approx(stats.trim_mean(rel, 0.25), rel=1e-12) and abs(by_hand - rel.mean()) > 0.5
    assert aggregate.summary(f, reps=20).iloc[0]["iqm_rel_pct"] == pytest.approx(by_hand, rel=1e-12)


# ---- strength.seed_gains / contrast ---------------------------------------------------------------
def test_a_pair_without_a_test_auc_is_left_out_of_the_seed_gains_and_the_contrast(tmp_path):
    """smoke's criteo DeepFM mutual run of seed 3 (at smoke's chosen weight 1) has no test AUC: smoke has
    seeds 2, 4, 5 and 6 of it, and full - smoke rests on seeds 2, 4, 5 (1, 3 and 6 left out)."""
    df = _sizes_store(tmp_path).to_frame()
    hole = ((df["preset"] == "smoke") & (df["dataset"] == "criteo") & (df["peer"] == "DeepFM")
            & (df["mode"] == "mutual") & (df["weight"] == 1.0) & (df["seed"] == 3))
    assert hole.sum() == 1
    df.loc[hole, "test_auc"] = np.nan
    sources = {"full": df, "smoke": df}
    g = strength.seed_gains(sources, dataset="criteo")
    one = g[(g["size"] == "smoke") & (g["peer"] == "DeepFM")]
    assert sorted(one["seed"]) == [2, 4, 5, 6] and g["gain_rel_pct"].notna().all()
    c = strength.contrast(sources, dataset="criteo").set_index("peer").loc["DeepFM"]
    both = [2, 4, 5]

    def gain(size, w, s):
        return 100 * (_mutual(size, "criteo", "DeepFM", s, w) - _alone(size, "criteo", "DeepFM", s)) \
            / _alone(size, "criteo", "DeepFM", s)
    a, b = np.array([gain("full", 10.0, s) for s in both]), np.array([gain("smoke", 1.0, s) for s in both])
    assert (c["n_pairs"], c["n_left_out"]) == (3, 3)
    assert (c["gain_a_mean"], c["gain_b_mean"], c["gain_diff_mean"]) == pytest.approx(
        (a.mean(), b.mean(), (a - b).mean()), rel=1e-9)
