"""The across-dataset bootstrap resamples (dataset, seed) clusters: all reps at once equals the one-rep-at-a-time
reference bit for bit, and a drawn seed brings every model of its run and both arms together."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctrkit.analysis import aggregate


def _reference(frame: pd.DataFrame, rng, reps):
    """The cluster bootstrap written plainly, one rep at a time through `iqm` and `probability_of_improvement`:
    per dataset one draw of its seeds; each task takes its rows of the drawn seeds it has, both arms."""
    rows = {(d, p): dict(zip(t["seed"], zip(t["test_auc_t"], t["test_auc_c"])))
            for (d, p), t in frame.groupby(["dataset", "peer"], sort=True)}
    iqms, pois = np.empty(reps), np.empty(reps)
    for r in range(reps):
        diffs, pairs = [], []
        for d, t in frame.groupby("dataset", sort=True):
            seeds = sorted(t["seed"].unique())
            drawn = [seeds[i] for i in rng.integers(0, len(seeds), len(seeds))]
            for p in sorted(t["peer"].unique()):
                xy = np.array([rows[d, p][s] for s in drawn if s in rows[d, p]], float).reshape(-1, 2)
                diffs.append(100.0 * (xy[:, 0] - xy[:, 1]) / xy[:, 1])
                pairs.append((xy[:, 0], xy[:, 1]))
        iqms[r] = aggregate.iqm(np.concatenate(diffs))
        pois[r] = aggregate.probability_of_improvement(pairs)
    return iqms, pois


def _frame(seed: int, seeds: dict, peers=("DCN", "DeepFM", "PNN"), ties=False, drop=()):
    """A pairs frame: `seeds` maps each dataset to its number of seeds; `drop` lists (dataset, peer, seed)
    rows a task lacks; `ties` rounds the AUCs so that the P(X = Y) / 2 term counts."""
    g = np.random.default_rng(seed)
    rows = [{"dataset": d, "init": "from scratch", "embedding": "separate", "variant": "EKTF", "peer": p, "seed": s,
             "test_auc_t": 0.7 + 0.01 * g.standard_normal(), "test_auc_c": 0.7 + 0.01 * g.standard_normal()}
            for d, n in seeds.items() for p in peers for s in range(2021, 2021 + n) if (d, p, s) not in drop]
    f = pd.DataFrame(rows)
    return f.round({"test_auc_t": 2, "test_auc_c": 2}) if ties else f


def _same(a, b) -> bool:
    return np.array_equal(a[0], b[0], equal_nan=True) and np.array_equal(a[1], b[1], equal_nan=True)


@pytest.mark.parametrize("seeds", [{"criteo": 3}, {"avazu": 5, "criteo": 5}, {"a": 2, "b": 7, "c": 1, "d": 4}])
@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_equals_the_one_rep_cluster_reference_bit_for_bit(seeds, ties):
    f = _frame(len(seeds) + 7 * ties, seeds, ties=ties)
    want = _reference(f, np.random.default_rng(2021), 300)
    assert _same(aggregate._bootstrap(aggregate._strata(f), np.random.default_rng(2021), 300), want)


def test_bootstrap_with_seeds_missing_from_some_tasks_matches_the_reference():
    """PNN of criteo lacks two seeds; DCN of avazu has one seed only, so some reps draw none of its seeds
    (it leaves the probability's mean over tasks then); every such hole is a NaN in the fast path."""
    drop = {("criteo", "PNN", 2022), ("criteo", "PNN", 2025)} | {("avazu", "DCN", s) for s in range(2022, 2026)}
    f = _frame(3, {"avazu": 5, "criteo": 5}, drop=drop)
    want = _reference(f, np.random.default_rng(7), 400)
    assert _same(aggregate._bootstrap(aggregate._strata(f), np.random.default_rng(7), 400), want)


def test_bootstrap_with_a_missing_auc_matches_the_reference():
    f = _frame(3, {"avazu": 5, "criteo": 4})
    f.loc[0, "test_auc_t"] = np.nan
    want = _reference(f, np.random.default_rng(7), 200)
    assert _same(aggregate._bootstrap(aggregate._strata(f), np.random.default_rng(7), 200), want)


@pytest.mark.parametrize("sizes", [[5, 5, 5], [1, 3, 8, 2], [7]])
def test_draws_at_once_are_the_one_call_at_a_time_draws(sizes):
    """The fast path itself (not its fallback) gives each `integers(0, n, n)` call's indices."""
    want = np.random.default_rng(5)
    got = aggregate._draw_at_once(sizes, np.random.default_rng(5), 400)
    assert got is not None
    for r in range(400):
        for c, n in zip(got, sizes):
            assert np.array_equal(c[r], want.integers(0, n, n))


@pytest.mark.parametrize("fast", [lambda sizes, rng, reps: None,  # a draw that numpy would have redrawn
                                  lambda sizes, rng, reps: [np.zeros((reps, n), np.int64) for n in sizes]])
def test_bootstrap_falls_back_to_one_call_at_a_time_when_the_fast_draws_cannot_be_trusted(monkeypatch, fast):
    f = _frame(4, {"avazu": 5, "criteo": 4})
    want = _reference(f, np.random.default_rng(2021), 100)
    monkeypatch.setattr(aggregate, "_draw_at_once", fast)
    assert _same(aggregate._bootstrap(aggregate._strata(f), np.random.default_rng(2021), 100), want)


def _interval(frame: pd.DataFrame) -> np.ndarray:
    r = aggregate.summary(frame).iloc[0]
    return r[["iqm_ci_low", "iqm_ci_high", "p_improve_ci_low", "p_improve_ci_high"]].to_numpy(float)


def test_peers_sharing_a_seed_effect_count_as_one_run_not_as_independent_evidence():
    """Three models whose AUCs are the same in each seed (the seed's effect is all there is) add nothing
    to one model: with 4 seeds (a quarter of 4 k values is k of them) the pooled IQM of k copies of a
    draw is the draw's IQM, so the interval is the one model's. The same rows declared independent (each
    model its own dataset, what per-task resampling assumed) give narrower intervals."""
    one = _frame(11, {"criteo": 4}, peers=("DeepFM",))
    copies = pd.concat([one.assign(peer=p) for p in ("DeepFM", "DCN", "PNN")], ignore_index=True)
    assert _interval(copies) == pytest.approx(_interval(one), rel=1e-12, abs=1e-12)
    apart = _interval(copies.assign(dataset=copies["peer"]))
    cluster = _interval(copies)
    assert apart[1] - apart[0] < cluster[1] - cluster[0] and apart[3] - apart[2] < cluster[3] - cluster[2]


def _exact(rows) -> pd.DataFrame:
    """A pairs frame of one dataset from (peer, seed, test AUC of the treatment, of the control) rows."""
    return pd.DataFrame([{"dataset": "criteo", "init": "finetune", "embedding": "separate", "variant": "EKTF",
                          "peer": p, "seed": s, "test_auc_t": t, "test_auc_c": c} for p, s, t, c in rows])


def _mirrored(lacks=()) -> pd.DataFrame:
    """DeepFM gains k 25/8 % in seed 2021 + k where DCN loses as much (exact in binary): a draw that keeps
    a seed's models together pools a multiset symmetric about 0, whose IQM is exactly 0; models drawn
    apart do not. `lacks`: DCN's missing seeds."""
    return _exact([r for k, s in enumerate(range(2021, 2025))
                   for r in (("DeepFM", s, 0.5 + k / 64, 0.5), ("DCN", s, 0.5 - k / 64, 0.5)) if r[:2] not in lacks])


def _unchanged(seeds: dict) -> pd.DataFrame:
    """Treatment equal to control in every row, the AUCs varying over seeds (`seeds`: each model's): a
    draw that keeps a seed's arms together puts the same multiset on both sides, so P(X > Y) + P(X = Y)/2
    is exactly 1/2; arms drawn apart do not."""
    return _exact([(p, s, 0.7 + (s - 2021) / 64, 0.7 + (s - 2021) / 64) for p, ss in seeds.items() for s in ss])


def _draws(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return aggregate._bootstrap(aggregate._strata(frame), np.random.default_rng(3), 500)


def test_a_drawn_seed_brings_every_model_of_its_run():
    assert _interval(_mirrored())[:2].tolist() == [0.0, 0.0]
    assert (_draws(_mirrored())[0] == 0).all()


def test_a_drawn_seed_brings_both_arms_of_its_run():
    f = _unchanged({"DeepFM": range(2021, 2026), "DCN": range(2021, 2026)})
    assert _interval(f)[2:].tolist() == [0.5, 0.5]
    assert (_draws(f)[1] == 0.5).all()


def test_a_drawn_seed_a_task_lacks_gives_that_task_nothing():
    """DCN lacks seed 2021 (where DeepFM's difference is 0): a drawn 2021 adds DeepFM's 0 alone and the pool
    stays symmetric. PNN has seed 2021 only: over the drawn seeds it has, its arms stay equal (1/2), and a
    draw without 2021 leaves it out of the mean over tasks (neither 0 nor NaN)."""
    f = _mirrored(lacks={("DCN", 2021)})
    assert len(f) == 7 and _interval(f)[:2].tolist() == [0.0, 0.0] and (_draws(f)[0] == 0).all()
    g = _unchanged({"DeepFM": range(2021, 2025), "PNN": [2021]})
    assert _interval(g)[2:].tolist() == [0.5, 0.5]
    pois = _draws(g)[1]
    assert (pois == 0.5).all()
    out = aggregate.summary(g, reps=50).iloc[0]
    assert (out["n_tasks"], out["n_runs"]) == (2, 5)


def test_two_rows_for_one_seed_of_a_task_are_refused():
    f = _frame(1, {"criteo": 3})
    with pytest.raises(ValueError, match="two rows for one"):
        aggregate.summary(pd.concat([f, f.iloc[:1]], ignore_index=True))
