"""Tables on hand-made stores: the statistics helpers against independent scipy/numpy computations, the
designs (mutual - alone paired by seed, one settings key per row, selection on validation, the peer-count
mean over partner subsets), and the flags (epoch cap, exploration runs)."""
import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ctrkit.experiments import designs
from ctrkit.analysis import frames, records, render, tables
from ctrkit.analysis import stats as pstats  # scipy's stats is the independent reference here
from ctrkit.experiments.store import ResultsStore
from ctrkit.core.utils import CtrkitError

POOL = list(designs.PAPER_MODELS)
PRE = {"DeepFM": 0.780, "DCN": 0.785, "PNN": 0.790, "FiBiNET": 0.795, "FM": 0.770}
SEEDS = [1, 2, 3, 4, 5, 6]
NOISE = dict(zip(SEEDS, [0.000, 0.002, -0.001, 0.001, -0.002, 0.003]))  # shared by all arms of a seed
JITTER = dict(zip(SEEDS, [0.0001, -0.0001, 0.0002, 0.0, -0.0002, 0.0001]))  # mutual only


def pre(model, seed):
    return PRE[model] + NOISE[seed]


def alone_auc(model, seed, lr=0.1):
    return pre(model, seed) + (0.0005 if lr == 0.1 else 0.001)


def mutual_auc(model, seed, n_peers, weight=1.0, lr=0.1):
    return alone_auc(model, seed, lr) + 0.0002 * (n_peers - 1) * weight + JITTER[seed]


def rec(mode, init, peers, i, seed, auc, *, weight=1.0, lr=0.1, valid=None, tag=None, key=True, **extra):
    peers = list(peers)
    w = 0.0 if mode == "alone" else weight
    r = dict(run_key=f"{mode}|{init}|{'+'.join(peers)}|{w}|{lr}|{seed}", dataset="criteo", fingerprint="fp",
             mode=mode, init=init, seed=seed, n_peers=len(peers), peer_index=i, peer=peers[i], model=peers[i],
             peers="+".join(peers), partners=[p for j, p in enumerate(peers) if j != i], weight=w,
             finetune_lr_scale=lr if init == "pretrained" else None, finetune_epochs=2 if init == "pretrained" else None,
             preset="smoke", amp="off", tag=tag, test_auc=auc, test_logloss=0.5 - auc / 10,
             valid_auc=auc if valid is None else valid, valid_logloss=0.5 - auc / 10,
             pretrained_test_auc=pre(peers[i], seed) if init == "pretrained" else None,
             ensemble_test_auc=None, epochs=3, epoch_cap_hit=False, stopped_early=True)
    r.update(extra)
    if key:  # the lead's engine: a hash of every setting except the seed (here readable)
        r["settings_key"] = f"{mode}|{init}|{'+'.join(peers)}|{w}|{lr}"
    return r


def run(mode, peers, seed, *, init="pretrained", **kw):
    f = {"alone": lambda m: alone_auc(m, seed, kw.get("lr", 0.1)),
         "mutual": lambda m: mutual_auc(m, seed, len(peers), kw.get("weight", 1.0), kw.get("lr", 0.1))}[mode]
    return [rec(mode, init, peers, i, seed, f(m), **kw) for i, m in enumerate(peers)]


@pytest.fixture
def store(tmp_path):
    """Baselines, the alone control (two lr scales), a 2x2 sweep of the 4-peer set and the whole
    peer-count design (every subset of the pool) at weight 1, lr 0.1, for 6 seeds."""
    s = ResultsStore(tmp_path / "results.jsonl")
    for seed in SEEDS:
        s.append([rec("baseline", None, [m], 0, seed, pre(m, seed)) for m in POOL])
        for lr in (0.1, 1.0):
            s.append(run("alone", POOL, seed, lr=lr))
            for w in (1.0, 10.0):
                if not (w == 1.0 and lr == 0.1):  # that one is in the design below
                    s.append(run("mutual", POOL, seed, weight=w, lr=lr))
        for peers in designs.peer_count_sets(pool=POOL):
            s.append(run("mutual", peers, seed))
    return s


def test_one_dataset_name_on_two_data_is_two_datasets(tmp_path, store):
    """Runs on another data of the same name (a 200-row real sample beside the synthetic `criteo`) get
    their own dataset label: one sweep would otherwise choose between the data on validation."""
    other = ResultsStore(tmp_path / "mixed.jsonl")
    other.append(store.records())
    for seed in SEEDS[:2]:
        for mode in ("alone", "mutual"):
            rows = run(mode, POOL, seed, weight=50.0 if mode == "mutual" else 1.0)
            other.append([{**r, "fingerprint": "realsample01", "valid_auc": 0.99, "run_key": r["run_key"] + "|real",
                           "settings_key": r["settings_key"] + "|real"} for r in rows])
    ft = tables.finetune(other)
    assert sorted(ft["dataset"].unique()) == ["criteo [fp]", "criteo [realsamp]"]
    # each data chooses its own setting: the sample's 0.99 validation AUC does not win the synthetic sweep
    assert set(ft.loc[ft["dataset"] == "criteo [fp]", "weight"]) != {50.0}
    assert set(ft.loc[ft["dataset"] == "criteo [realsamp]", "weight"]) == {50.0}
    assert "criteo [realsamp]: 4 runs, 2 seeds" in records.provenance(other)
    # a table of one of them is captioned with its runs only
    assert "realsamp" not in records.provenance(other, datasets=["criteo [fp]"])
    assert records.provenance(other, datasets=["criteo [realsamp]"]).startswith("criteo [realsamp]: 4 runs")
    assert set(tables.finetune(store)["dataset"]) == {"criteo"}  # one data: its plain name


def test_a_table_of_another_peer_set_and_what_the_main_one_leaves_out(store, capsys):
    """The paired tables show one peer set per dataset (the largest); `peers` picks another, and the CLI's
    caption says which sets it left out, so 2- and 3-peer runs are not dropped without a word."""
    assert tables.left_out_peer_sets("finetune", store) == ("Shown: one peer set per dataset; also in the store: "
                                                            "criteo: 10 peer sets of 2-3 peers (choose with --peers / peers=)")
    two = tables.table("finetune", store, peers="DeepFM+DCN")
    assert set(two["peers"]) == {"DeepFM+DCN"} and list(two["model"]) == ["DeepFM", "DCN"]
    # the pair's own mutual - alone: 0.0002 per partner at weight 1, against the four-model alone control
    assert two["auc_diff_mean"].to_numpy() == pytest.approx([0.0002 + np.mean(list(JITTER.values()))] * 2)
    assert "criteo: 10 peer sets of 2-4 peers" in tables.left_out_peer_sets("headline", store, peers="DeepFM+DCN")
    assert tables.left_out_peer_sets("baselines", store) == ""
    with pytest.raises(CtrkitError, match=r"peers 'DeepFM\+DNC': no mutual run \(pretrained\).*did you mean 'DeepFM\+DCN'"):
        tables.table("finetune", store, peers="DeepFM+DNC")
    with pytest.raises(CtrkitError, match="the baselines table has no peer-set choice"):
        tables.table("baselines", store, peers="DeepFM+DCN")
    from ctrkit import cli
    assert cli.main(["table", "headline", "--store", str(store.path), "--peers", "DCN+PNN"]) == 0
    out = capsys.readouterr().out
    assert "| DCN " in out and "| DeepFM " not in out and "also in the store: criteo: 10 peer sets" in out


def test_the_mutual_term_is_a_setting_the_tables_show(tmp_path, store):
    """KL runs beside the paper's squared difference at the same weight and lr scale are rows a reader can
    tell apart (a `divergence` column), not two rows with the same visible settings; the paper's own
    term alone says nothing (no "divergence mse" in every Settings line)."""
    for seed in SEEDS:
        store.append([{**r, "divergence": "kl", "run_key": r["run_key"] + "|kl"}
                      for r in run("mutual", POOL, seed, key=False)])
    sw = tables.sweep(store)
    assert set(sw["divergence"].fillna("mse")) == {"mse", "kl"}
    one = sw[(sw["weight"] == 1.0) & (sw["finetune_lr_scale"] == 0.1) & (sw["model"] == "DCN")]
    assert len(one) == 2 and one["divergence"].nunique(dropna=False) == 2
    assert "| divergence" in render.render("sweep", sw, "md")
    mse_only = render.render("sweep", tables.sweep(_mse_only(tmp_path, store)), "md")
    assert "divergence" not in mse_only.split("\n\n")[0] and "divergence mse" not in mse_only


def _mse_only(tmp_path, store):
    s = ResultsStore(tmp_path / "mse.jsonl")
    s.append([{**r, "divergence": "mse"} for r in store.records() if r.get("divergence") != "kl"])
    return s


def test_an_empty_table_says_what_it_needs(tmp_path, capsys):
    s = ResultsStore(tmp_path / "r.jsonl")
    s.append(run("mutual", POOL[:2], 1))  # mutual runs, but no alone control
    assert tables.table("finetune", s.path).empty and tables.table("peer_count", s.path).empty
    assert tables.why_empty("finetune", s.path).startswith("no mutual run (pretrained) has an alone control")
    assert tables.why_empty("scratch", s.path) == "the store has no mutual runs from scratch"
    assert "every subset of the paper's four models" in tables.why_empty("peer_count", s.path)
    from ctrkit import cli
    assert cli.main(["table", "finetune", "--store", str(s.path), "--format", "csv"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("ctrkit: no `finetune` rows: no mutual run (pretrained) has an alone control") and err.count("\n") == 1
    s.append(run("alone", POOL[:2], 1))
    assert not tables.table("finetune", s.path).empty


def test_power_lays_a_claim_beside_each_null_result(store):
    t = tables.power(store).set_index("model")
    ft = tables.finetune(store).set_index("model")
    # the interval's SD: the same as the per-seed rel % the finetune table's interval was made of
    rel = [100 * (mutual_auc("DCN", s, 4, 10.0, 1.0) - alone_auc("DCN", s, 1.0)) / alone_auc("DCN", s, 1.0) for s in SEEDS]
    assert t.loc["DCN", "sd_per_seed"] == pytest.approx(np.std(rel, ddof=1))
    assert t.loc["DCN", "rel_pct_mde"] == pytest.approx(ft.loc["DCN", "rel_pct_mde"])
    assert set(t["claimed_rel_pct"]) == {tables.PAPER_GAINS["criteo"]}
    assert t.loc["DCN", "seeds_for_claim"] == pstats.seeds_needed(rel, 0.37)
    assert t.loc["DCN", "claim_outside_ci"] == (not ft.loc["DCN", "rel_pct_ci_low"] <= 0.37 <= ft.loc["DCN", "rel_pct_ci_high"])
    inside = float(np.mean(rel))  # an effect inside the interval (the estimate itself), larger than 0.37 here
    other = tables.power(store, effect=inside).set_index("model")
    assert not other.loc["DCN", "claim_outside_ci"] and other.loc["DCN", "claimed_rel_pct"] == inside
    assert other.loc["DCN", "seeds_for_claim"] == pstats.seeds_needed(rel, inside) <= t.loc["DCN", "seeds_for_claim"]
    assert "seeds_for_claim" in render.render("power", tables.table("power", store), "md")
    # the MDE if the spread were as large as the seeds leave possible, and the pairs' note, come along
    assert t.loc["DCN", "rel_pct_mde_sd_upper"] == pytest.approx(
        pstats.mde_for_spread(pstats.sd_upper(np.std(rel, ddof=1), len(SEEDS)), len(SEEDS)))
    assert t.loc["DCN", "rel_pct_mde_sd_upper"] > 2 * t.loc["DCN", "rel_pct_mde"]
    assert (t["note"] == ft.loc[t.index, "note"]).all()


def test_the_sd_upper_bound_covers_the_true_sd_95_percent_of_the_time():
    """5 normal values, 40,000 times: the one-sided 95% bound is at least the true SD in 95% of draws."""
    rng = np.random.default_rng(7)
    sds = rng.normal(0.0, 0.3, size=(40_000, 5)).std(axis=1, ddof=1)
    cover = np.mean([pstats.sd_upper(v, 5) >= 0.3 for v in sds])
    assert cover == pytest.approx(0.95, abs=0.005)
    assert pstats.sd_upper(1.0, 5) == pytest.approx(2.3724, abs=1e-4)  # sqrt(4 / chi2.ppf(0.05, 4))
    assert np.isnan(pstats.sd_upper(1.0, 1))


# ---- statistics against independent computations -------------------------------------------------
def test_t_interval_matches_scipy():
    x = np.array([0.3, 0.1, 0.4, 0.15, 0.2])
    m, lo, hi = pstats.t_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert m == pytest.approx(x.mean()) and (lo, hi) == pytest.approx(ref)
    assert np.isnan(pstats.t_interval([0.2])[1]) and np.isnan(pstats.t_interval([])[0])


def test_holm_worked_example_and_definition():
    # sorted: .005*4 = .02, .01*3 = .03, .03*2 = .06, .04*1 = .04 -> monotone .06
    assert pstats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.3, 7)
    m, order = len(p), np.argsort(p)
    # the definition: adj p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)), 1-based
    expect = np.empty(m)
    for rank, idx in enumerate(order):
        expect[idx] = max(min(1.0, (m - j) * p[order[j]]) for j in range(rank + 1))
    assert pstats.holm(p) == pytest.approx(expect)
    out = pstats.holm([np.nan, 0.02, 0.5])
    assert np.isnan(out[0]) and out[1:] == pytest.approx([0.04, 0.5])


def test_relaimpr_and_rel_pct():
    # (0.81 - 0.5) / (0.80 - 0.5) - 1 = 0.31 / 0.30 - 1 = 3.333 %
    assert pstats.rela_impr(0.81, 0.80) == pytest.approx(100 / 30)
    assert pstats.rel_pct(0.81, 0.80) == pytest.approx(1.25)


def test_paired_ci_and_wilcoxon_only_from_six_pairs():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0.7, 0.8, 6)
    new = ref + rng.normal(0.002, 0.001, 6)
    st = pstats.paired(new, ref)
    d = new - ref
    lo, hi = stats.t.interval(0.95, 5, loc=d.mean(), scale=d.std(ddof=1) / np.sqrt(6))
    assert (st["auc_diff_ci_low"], st["auc_diff_ci_high"]) == pytest.approx((lo, hi))
    assert st["p_ttest"] == pytest.approx(stats.ttest_rel(new, ref).pvalue)
    assert st["p_wilcoxon"] == pytest.approx(stats.wilcoxon(new, ref).pvalue)
    rp = 100 * d / ref
    assert st["rel_pct_mean"] == pytest.approx(rp.mean())
    five = pstats.paired(new[:5], ref[:5])
    assert np.isnan(five["p_wilcoxon"]) and five["note"] == pstats.NOTE_NO_WILCOXON
    assert pstats.paired(new[:1], ref[:1])["note"] == pstats.NOTE_FEW
    # arms identical in every pair (both kept their checkpoints): a zero-width interval, said to be no evidence
    same = pstats.paired(ref, ref)
    assert same["auc_diff_ci_low"] == same["auc_diff_ci_high"] == 0 and pstats.NOTE_IDENTICAL in same["note"]
    assert pstats.NOTE_IDENTICAL not in st["note"]


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_mde_is_the_effect_the_t_test_finds_four_times_in_five(n):
    # the independent check: simulate the paired t-test at a true mean of mde and the same spread
    values = np.array([-1.0, 1.0, 0.5, -0.5, 0.0, 0.2, -0.2, 0.1])[:n]
    m, sd = pstats.mde(values), values.std(ddof=1)
    x = np.random.default_rng(n).normal(m, sd, size=(40_000, n))
    assert (stats.ttest_1samp(x, 0, axis=1).pvalue < 0.05).mean() == pytest.approx(0.80, abs=0.01)
    # many pairs: the normal approximation (z_0.975 + z_0.8) sd / sqrt(n)
    big = np.resize(values - values.mean(), 2000)
    assert pstats.mde(big) == pytest.approx(2.8016 * big.std(ddof=1) / np.sqrt(2000), rel=2e-3)
    assert pstats.seeds_needed(values, m) == n and pstats.seeds_needed(values, m * 0.98) == n + 1
    assert pstats.seeds_needed(values, -m) == n  # the sign of a claimed effect does not matter
    # the same from the interval a table prints, without the per-seed values
    _, lo, hi = pstats.t_interval(values + 0.3)
    assert pstats.mde_of_interval(lo, hi, n) == pytest.approx(m, rel=1e-9)


def test_mde_without_spread_and_in_the_paired_tables():
    assert np.isnan(pstats.mde([0.3])) and np.isnan(pstats.mde([0.3, 0.3, np.nan]))
    assert pstats.seeds_needed([0.3, 0.3], 0.1) == 0 and pstats.seeds_needed([1.0, -1.0], 1e-6, most=50) == 51
    ref = np.array([0.70, 0.71, 0.72, 0.73, 0.74])
    new = ref * (1 + np.array([0.1, -0.3, 0.4, 0.2, 0.05]) / 100)
    st = pstats.paired(new, ref)
    assert st["rel_pct_mde"] == pytest.approx(pstats.mde(100 * (new - ref) / ref))
    shown = render.display("headline", pd.DataFrame([{"model": "DeepFM", **st}]))
    assert shown["rel_pct_mde"].iloc[0] == f"{st['rel_pct_mde']:.3f}" and "80% power" in render.CAPTIONS["headline"]


def test_paired_says_when_few_pairs_carry_the_test():
    ref = np.array([0.70, 0.71, 0.72, 0.73, 0.74])
    # four arms kept their checkpoints: t = 1 and p = 0.374 whatever the fifth difference, so said
    for x in (1e-4, 0.1):
        st = pstats.paired(ref + np.array([0, 0, 0, 0, x]), ref)
        assert st["p_ttest"] == pytest.approx(0.3739, abs=1e-4) and "4/5 pairs identical" in st["note"]
    # one and the same non-zero difference in every pair: no spread, no test (scipy says p = 0)
    const = pstats.paired(ref + 0.25, ref)
    assert np.isnan(const["p_ttest"]) and pstats.NOTE_CONSTANT in const["note"]
    # a pair without an AUC is left out of the interval, the test and n_pairs alike
    new = np.array([0.705, 0.72, np.nan, 0.74, 0.741])
    st = pstats.paired(new, ref, logloss_new=ref, logloss_ref=ref + [0.01, 0.02, 0.03, 0.04, 0.06])
    keep = ~np.isnan(new)
    assert st["n_pairs"] == 4 and "pairs without an AUC left out: 1" in st["note"]
    assert st["p_ttest"] == pytest.approx(stats.ttest_rel(new[keep], ref[keep]).pvalue)
    assert st["logloss_diff_mean"] == pytest.approx(-np.mean([0.01, 0.02, 0.04, 0.06]))


# ---- tables ------------------------------------------------------------------------------------
def test_finetune_is_mutual_minus_alone_at_the_setting_chosen_on_validation(store):
    t = tables.finetune(store).set_index("peer")
    assert set(t.index) == set(POOL)
    # the validation AUC equals the test AUC here: weight 10, lr 1 is best on both
    assert (t["weight"] == 10.0).all() and (t["finetune_lr_scale"] == 1.0).all()
    assert (t["chosen_on"] == "validation").all()
    d = np.array([mutual_auc("DCN", s, 4, 10.0, 1.0) - alone_auc("DCN", s, 1.0) for s in SEEDS])
    row = t.loc["DCN"]
    assert row["n_pairs"] == 6 and row["auc_diff_mean"] == pytest.approx(d.mean())
    assert (row["auc_diff_ci_low"], row["auc_diff_ci_high"]) == pytest.approx(
        stats.t.interval(0.95, 5, loc=d.mean(), scale=stats.sem(d)))
    assert row["alone_auc_mean"] == pytest.approx(np.mean([alone_auc("DCN", s, 1.0) for s in SEEDS]))
    p = [stats.ttest_rel([mutual_auc(m, s, 4, 10.0, 1.0) for s in SEEDS], [alone_auc(m, s, 1.0) for s in SEEDS]).pvalue
         for m in POOL]
    assert t.loc[POOL, "p_holm"].to_numpy() == pytest.approx(pstats.holm(p))
    assert "logloss_diff_mean" in t and "relaimpr_pct_mean" in t
    # how firm the choice is: the runner-up's validation score, and both settings at the grid's edge
    sw = tables.sweep(store).drop_duplicates("settings_key").sort_values("selection_valid_auc")
    runner, best = sw["selection_valid_auc"].iloc[-2], sw["selection_valid_auc"].iloc[-1]
    assert set(t["choice"]) == {f"validation AUC {best:.4f} vs the runner-up's {runner:.4f}; weight 10 is the largest "
                                "tried; lr scale 1 is the largest tried"}
    assert "weight 10 is the largest tried" in render.render("headline", tables.headline(store), "md")


@pytest.mark.parametrize("runner, words", [
    (0.92508, "validation AUC 0.92514 vs the runner-up's 0.92508"),      # equal at 4 digits: 5 tell them apart
    (0.9240, "validation AUC 0.9251 vs the runner-up's 0.9240"),
    (0.9251400001, "validation AUC 0.925140 vs the runner-up's 0.925140 (tied at 6 digits)")])
def test_the_choice_shows_the_digits_that_tell_the_settings_apart(runner, words):
    s = pd.DataFrame({"settings_key": ["a", "b", "c"], "chosen": [True, False, False],
                      "selection_valid_auc": [0.92514, runner, 0.5], "weight": [1.0, 3.0, 10.0],
                      "finetune_lr_scale": [0.1, 0.1, 0.1]})
    assert tables._choice_words(s) == words + "; weight 1 is the smallest tried"


def test_selection_reads_validation_not_test(tmp_path):
    """Setting A is better on test, B on validation: B is chosen, and its test numbers are reported."""
    s = ResultsStore(tmp_path / "r.jsonl")
    for seed in SEEDS:
        s.append(run("alone", POOL[:2], seed))
        s.append([rec("mutual", "pretrained", POOL[:2], i, seed, 0.80, weight=1.0, valid=0.70) for i in range(2)])
        s.append([rec("mutual", "pretrained", POOL[:2], i, seed, 0.79, weight=30.0, valid=0.71) for i in range(2)])
    t = tables.finetune(s)
    assert (t["weight"] == 30.0).all() and t["mutual_auc_mean"].tolist() == pytest.approx([0.79, 0.79])
    sw = tables.sweep(s)
    assert sw.groupby("weight")["chosen"].all().to_dict() == {1.0: False, 30.0: True}
    assert tables.chosen_setting(s, dataset="criteo")["weight"] == 30.0
    with pytest.raises(CtrkitError, match="no finetuning sweep of 'avazu'"):
        tables.chosen_setting(s, dataset="avazu")


def test_tables_never_mix_settings(tmp_path):
    """Two from-scratch settings of the same peers (and one older record set without settings_key):
    each gets its own rows, paired with its own control only."""
    s = ResultsStore(tmp_path / "r.jsonl")
    for seed in SEEDS[:3]:
        s.append([rec("alone", "scratch", POOL[:2], i, seed, 0.70) for i in range(2)])
        s.append([rec("mutual", "scratch", POOL[:2], i, seed, 0.71, weight=1.0) for i in range(2)])
        s.append([rec("mutual", "scratch", POOL[:2], i, seed, 0.69, weight=5.0) for i in range(2)])
        s.append([rec("mutual", "scratch", POOL[:2], i, seed, 0.75, weight=9.0, key=False) for i in range(2)])
    t = tables.scratch(s)
    assert len(t) == 3 * 2 and t.groupby("weight")["settings_key"].nunique().tolist() == [1, 1, 1]
    diff = t.groupby("weight")["auc_diff_mean"].first()
    assert diff.to_dict() == pytest.approx({1.0: 0.01, 5.0: -0.01, 9.0: 0.05})
    assert (t["n_pairs"] == 3).all()
    # Holm runs within a settings block: two models per block
    assert t.groupby("settings_key").size().tolist() == [2, 2, 2]


def test_one_sweep_per_file_version_however_the_tables_ask_for_it(store, tmp_path):
    # the notebooks' cells each ask: finetune's sweep(src, peers=None) and sweep(src) were two entries, and
    # controls, alternatives and the gains figure passed a frame (never memoised): 7 sweeps where 1 is needed
    path = store.to_csv(tmp_path / "results.csv")
    first = tables.sweep(path)
    misses = tables.sweep.cache_info().misses
    tables.sweep(path, include_exploration=False, peers=None)
    tables.finetune(path)
    tables.controls(path)
    tables.alternatives(path)
    frames.figure_frame(path, "gains")
    assert tables.sweep.cache_info().misses == misses and len(first)
    tables.sweep(path, include_exploration=True)  # another question: computed
    assert tables.sweep.cache_info().misses == misses + 1


def test_exploration_runs_left_out_unless_asked(store):
    store.append([rec("mutual", "pretrained", POOL, i, 1, 0.99, weight=100.0, tag="exploration") for i in range(4)])
    assert 100.0 not in set(tables.sweep(store)["weight"])
    assert 100.0 in set(tables.sweep(store, include_exploration=True)["weight"])


def test_records_of_a_file_are_read_once_per_version_and_each_call_gets_its_own_copy(store, tmp_path):
    path = store.to_csv(tmp_path / "results.csv")
    first = records.records(path)
    n = len(first)
    first.loc[:, "test_auc"] = 0.0  # a caller's change stays in its copy
    again = records.records(path)
    assert again is not first and len(again) == n and (again["test_auc"] > 0.5).all()
    # a new version of the file (another export: an atomic replace) is read again
    store.append([rec("mutual", "pretrained", POOL, i, 1, 0.99, weight=100.0) for i in range(4)])
    store.to_csv(path)
    newer = records.records(path)
    assert len(newer) == n + 4 and 100.0 in set(newer["weight"])
    assert records.records.cache_info().currsize <= records._MEMO_SIZE
    # the store itself (appended in place, not replaced) is a file too: each append is a new version
    before = len(records.records(store.path))
    store.append([rec("mutual", "pretrained", POOL, i, 2, 0.98, weight=100.0) for i in range(4)])
    assert len(records.records(store.path)) == before + 4


def test_baselines_flag_the_epoch_cap(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    for seed in SEEDS[:3]:
        s.append([rec("baseline", None, ["DeepFM"], 0, seed, 0.78, epoch_cap_hit=seed == 2, epochs=10 if seed == 2 else 4)])
        s.append([rec("baseline", None, ["DCN"], 0, seed, 0.79)])
    t = tables.baselines(s).set_index("model")
    assert t.loc["DeepFM", "n_cap_hit"] == 1 and "epoch cap hit in 1/3 seeds" in t.loc["DeepFM", "flag"]
    assert (t.loc["DeepFM", "epochs_min"], t.loc["DeepFM", "epochs_max"]) == (4, 10)
    assert t.loc["DCN", "n_cap_hit"] == 0 and t.loc["DCN", "flag"] == ""
    assert "not converged" in render.render("baselines", tables.baselines(s), "md")
    # a seed whose record lacks its metrics (another version's layout) is said, not silently averaged away
    s.append([{k: v for k, v in rec("baseline", None, ["DCN"], 0, 9, 0.79).items() if k not in ("test_auc", "test_logloss")}])
    t = tables.baselines(s).set_index("model")
    assert t.loc["DCN", "n_seeds"] == 4 and t.loc["DCN", "flag"] == "test AUC missing in 1/4 seeds"


def test_two_baselines_of_one_model_say_how_they_differ(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    cfg = lambda lr, seed: {"model": {"embedding_dim": 4}, "train": {"lr": lr, "seed": seed, "threads": 1}}  # noqa: E731
    for seed in SEEDS[:3]:
        for lr, key in ((0.01, "k1"), (0.001, "k2")):
            s.append([rec("baseline", None, ["DeepFM"], 0, seed, 0.78, config=cfg(lr, seed), settings_key=key, key=False,
                          run_key=f"DeepFM|{lr}|{seed}")])
        s.append([rec("baseline", None, ["DCN"], 0, seed, 0.79, config=cfg(0.01, seed), settings_key="k1", key=False)])
    t = tables.baselines(s)
    # the seed and the thread count differ between records too, but they are not what sets the rows apart
    assert sorted(t.loc[t["model"] == "DeepFM", "differs"]) == ["lr 0.001", "lr 0.01"]
    assert t.loc[t["model"] == "DCN", "differs"].tolist() == [""]
    assert "| differs" in render.render("baselines", t, "md")
    # one setting per model: no such column (the committed tables stay as they were)
    assert "differs" not in tables.baselines(_only_dcn(tmp_path, cfg)).columns


def _only_dcn(tmp_path, cfg):
    s = ResultsStore(tmp_path / "dcn.jsonl")
    s.append([rec("baseline", None, ["DCN"], 0, seed, 0.79, config=cfg(0.01, seed)) for seed in SEEDS[:2]])
    return s


def test_peer_count_is_the_mean_over_partner_subsets(store):
    t = tables.peer_count(store)
    # the sweep's other settings measured N = 4 only: not a peer-count design, never mixed into this one
    assert set(zip(t["weight"], t["finetune_lr_scale"])) == {(1.0, 0.1)}
    t = t.set_index(["model", "n_peers"])
    assert sorted(t.loc["PNN"].index) == [1, 2, 3, 4]
    assert t.loc[("PNN", 3), "n_subsets"] == 3 and t.loc[("PNN", 4), "n_subsets"] == 1
    # every subset of size N-1 gains 0.0002 (N-1) over alone (+ the seed jitter): the mean over subsets too
    per_seed = [100 * (mutual_auc("PNN", s, 3) - alone_auc("PNN", s)) / alone_auc("PNN", s) for s in SEEDS]
    assert t.loc[("PNN", 3), "rel_pct_mean"] == pytest.approx(np.mean(per_seed))
    assert t.loc[("PNN", 1), "rel_pct_mean"] == 0 and t.loc[("PNN", 1), "note"] == "N = 1 is the control"
    gain1 = [100 * (alone_auc("PNN", s) - pre("PNN", s)) / pre("PNN", s) for s in SEEDS]
    assert t.loc[("PNN", 1), "gain_rel_pct_mean"] == pytest.approx(np.mean(gain1))
    assert (t["n_seeds"] == 6).all()


def test_peer_count_drops_a_seed_missing_a_subset(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    for seed in SEEDS[:3]:
        s.append(run("alone", POOL, seed))
        for peers in designs.peer_count_sets(pool=POOL):
            if not (seed == 3 and peers == ["DeepFM", "DCN"]):
                s.append(run("mutual", peers, seed))
    t = tables.peer_count(s).set_index(["model", "n_peers"])
    assert t.loc[("DeepFM", 2), "n_seeds"] == 2 and t.loc[("PNN", 2), "n_seeds"] == 3


def test_partner_slopes_one_per_model_from_the_points(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    bonus = {"DeepFM": 0.0004, "DCN": -0.0001, "PNN": 0.0006, "FiBiNET": 0.0}  # what a partner brings
    for seed in SEEDS[:3]:
        s.append(run("alone", POOL, seed))
        for a, b in itertools.combinations(POOL, 2):
            s.append([rec("mutual", "pretrained", [a, b], i, seed, mutual_auc(m, seed, 2) + bonus[(a, b)[1 - i]])
                      for i, m in enumerate((a, b))])
    pts = tables.partner_points(s)
    assert len(pts) == 12 * 3 and set(pts["target"]) == set(POOL)
    slopes = tables.partner_slopes(s).set_index("target")
    # one point per partner: the seeds of a partner are not independent evidence about its AUC
    g = pts[pts["target"] == "DCN"].groupby("partner")[["partner_auc", "rel_pct"]].mean()
    fit = stats.linregress(g["partner_auc"] / 0.01, g["rel_pct"])  # in rel % per AUC point
    assert slopes.loc["DCN", "slope_mean"] == pytest.approx(np.polyfit(g["partner_auc"], g["rel_pct"], 1)[0] / 100)
    half = stats.t.ppf(0.975, 3 - 2) * fit.stderr
    assert fit.stderr > 0 and slopes.loc["DCN", "slope_ci_high"] == pytest.approx(fit.slope + half)
    assert slopes.loc["DCN", "n_points"] == 9 and slopes.loc["DCN", "n_partners"] == 3
    # Holm across the dataset's targets, one family as in every other table of a dataset
    p = slopes["p_slope"].to_numpy()
    k = np.argsort(p)
    by_hand = np.minimum(np.maximum.accumulate(p[k] * (len(p) - np.arange(len(p)))), 1)[np.argsort(k)]
    assert np.allclose(slopes["p_holm"], by_hand) and (slopes["p_holm"] >= slopes["p_slope"]).all()
    part = tables.partners(s).set_index(["target", "partner"])
    assert len(part) == 12 and part.loc[("DCN", "PNN"), "n_pairs"] == 3
    assert part.loc[("DCN", "PNN"), "partner_auc_mean"] == pytest.approx(np.mean([pre("PNN", x) for x in SEEDS[:3]]))
    shown = render.display("partners", tables.partners(s)).set_index("target \\ partner")
    assert shown.loc["DCN", "DCN"] == "" and list(shown.index) == POOL and list(shown.columns[-4:]) == POOL  # paper order
    sig = tables.partners(s)
    sig.loc[(sig["target"] == "DCN") & (sig["partner"] == "PNN"), "p_holm"] = 0.01  # as if it were significant
    starred = render.display("partners", sig).set_index("target \\ partner")
    for (target, partner), p in sig.set_index(["target", "partner"])["p_holm"].items():  # a star as in the heatmap
        assert starred.loc[target, partner].endswith(" *") == (p < 0.05) and "]" in starred.loc[target, partner]
    assert starred.loc["DCN", "PNN"].endswith("] *") and shown.loc["DCN", "PNN"].endswith("]")


def test_partner_slope_interval_keeps_its_level_when_partners_differ_in_more_than_auc():
    """No true slope, but each partner brings its own effect: the 95% interval excludes 0 in about 5%
    of such data sets (a fit over the (partner, seed) points as if independent did in about half)."""
    rng = np.random.default_rng(0)
    misses, trials = 0, 400
    for _ in range(trials):
        auc = 0.78 + rng.normal(0, 0.005, 3)
        effect = rng.normal(0, 0.1, 3)  # what a partner brings apart from its AUC
        pts = pd.DataFrame([{"dataset": "criteo", "setting_id": "s", "target": "DCN", "partner": f"P{j}", "seed": s,
                             "partner_auc": auc[j] + rng.normal(0, 0.0005), "rel_pct": effect[j] + rng.normal(0, 0.05)}
                            for j in range(3) for s in range(5)])
        row = tables.slopes_of_points(pts).iloc[0]
        misses += not row["slope_ci_low"] <= 0 <= row["slope_ci_high"]
    assert misses / trials < 0.09


def test_controls_compare_mutual_with_alone_at_the_lr_scale_best_for_alone(tmp_path):
    """The sweep chose lr scale 0.1 for mutual; alone is better at 1 on validation (worse on test,
    which never chooses): the last arm is mutual (x0.1) minus alone (x1), paired by seed."""
    s = ResultsStore(tmp_path / "r.jsonl")
    for seed in SEEDS:
        s.append(run("alone", POOL[:2], seed, lr=0.1, valid=0.80))
        s.append([rec("alone", "pretrained", POOL[:2], i, seed, alone_auc(m, seed, 0.1) - 0.0007, lr=1.0, valid=0.90)
                  for i, m in enumerate(POOL[:2])])
        for w in (1.0, 10.0):
            s.append(run("mutual", POOL[:2], seed, weight=w, lr=0.1))
    t = tables.controls(s).set_index(["arm", "unit"])
    arm = "mutual vs alone at its own best lr scale (x1, on validation)"
    assert arm in t.index.get_level_values(0)
    for m in POOL[:2]:
        mut = [mutual_auc(m, x, 2, 10.0, 0.1) for x in SEEDS]
        assert t.loc[("mutual", m), "auc_diff_mean"] == pytest.approx(np.mean(mut) - np.mean(
            [alone_auc(m, x, 0.1) for x in SEEDS]))
        assert t.loc[(arm, m), "auc_diff_mean"] == pytest.approx(np.mean(mut) - np.mean(
            [alone_auc(m, x, 0.1) - 0.0007 for x in SEEDS]))
        assert t.loc[(arm, m), "n_pairs"] == len(SEEDS)
    # its own Holm family: the controls' correction is over the controls alone
    tuned = t.index.get_level_values(0) == arm
    for rows in (t[tuned], t[~tuned & t["p_ttest"].notna()]):
        assert rows["p_holm"].to_numpy() == pytest.approx(pstats.holm(rows["p_ttest"].to_numpy()))


def test_the_pretrained_arm_has_its_logloss_difference_too(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    for seed in SEEDS:
        s.append(run("alone", POOL[:2], seed, pretrained_test_logloss=0.45 + seed / 1000))
        s.append(run("mutual", POOL[:2], seed, weight=10.0))
    t = tables.controls(s).set_index(["arm", "unit"])
    alone_ll = np.array([0.5 - alone_auc("DCN", x) / 10 for x in SEEDS])  # rec()'s test logloss of that arm
    assert t.loc[("pretrained", "DCN"), "logloss_diff_mean"] == pytest.approx(
        np.mean([0.45 + x / 1000 for x in SEEDS] - alone_ll))


def test_controls_kd_and_ensemble_against_alone(store):
    for seed in SEEDS:
        kd = [rec("kd", "pretrained", ["FiBiNET", "DeepFM", "DCN", "PNN"], i, seed,
                  alone_auc(m, seed, 1.0) + (0 if i == 0 else 0.0003), ensemble_test_auc=0.81,
                  weight=10.0, lr=1.0)
              for i, m in enumerate(["FiBiNET", "DeepFM", "DCN", "PNN"])]
        store.append(kd)
        store.append([rec("ensemble", "pretrained", POOL, i, seed, pre(m, seed), ensemble_test_auc=0.80 + NOISE[seed])
                      for i, m in enumerate(POOL)])
    # the KD run (teacher first) has its own peer order: controls find it by dataset, lr scale, epochs
    t = tables.controls(store).set_index(["arm", "unit"])
    kd_arm = [a for a in t.index.get_level_values(0).unique() if a.startswith("kd from FiBiNET")]
    assert kd_arm and ("FiBiNET" not in t.loc[kd_arm[0]].index)  # the teacher is not a student
    assert t.loc[(kd_arm[0], "DCN"), "auc_diff_mean"] == pytest.approx(
        0.0003)
    # the chosen setting is lr scale 1: alone gains 0.001 over the pretrained model
    assert t.loc[("pretrained", "DCN"), "auc_diff_mean"] == pytest.approx(-0.001)
    assert ("pretrained", "ensemble") in t.index and t.loc[("alone", "DCN"), "note"] == "the control"


def test_figure_frames(store):
    g = frames.figure_frame(store, "gains", dataset="criteo")
    assert set(g["comparison"]) == {frames.COMPARISONS["finetune"], frames.COMPARISONS["finetune_alone"]}
    assert {"rel_pct_ci_low", "rel_pct_ci_high"} <= set(g.columns)
    assert frames.figure_frame(store, "gains", dataset="avazu").empty
    with pytest.raises(CtrkitError, match="unknown figure data"):
        frames.figure_frame(store, "nope")
    assert records.precision(store) == "fp32"


@pytest.mark.parametrize("name", tables.NAMES)
@pytest.mark.parametrize("fmt", render.FORMATS)
def test_render_every_table_and_format(store, tmp_path, name, fmt):
    for seed in SEEDS[:2]:
        store.append([rec("alone", "scratch", POOL[:2], i, seed, 0.70) for i in range(2)])
        store.append([rec("mutual", "scratch", POOL[:2], i, seed, 0.71) for i in range(2)])
    df = tables.table(name, store.path)
    text = render.render(name, df, fmt)
    assert len(df) and len(text) > 50
    if fmt == "md":
        assert text.splitlines()[1].startswith("|") and render.CAPTIONS[name] in text
    if fmt == "csv":
        assert pd.read_csv(pd.io.common.StringIO(text)).shape == df.shape
    if fmt == "tex":
        assert "\\begin{tabular}" in text and "\\caption{" in text
    csv = store.to_csv(tmp_path / "r.csv")  # tables read the tidy CSV export as they read the store
    pd.testing.assert_frame_equal(tables.table(name, csv).reset_index(drop=True), df.reset_index(drop=True),
                                  check_dtype=False)


def test_empty_store_and_bad_names(tmp_path):
    empty = ResultsStore(tmp_path / "none.jsonl")
    assert "no `finetune` results" in render.render("finetune", tables.finetune(empty.to_frame()), "md")
    with pytest.raises(CtrkitError, match="valid: baselines"):
        tables.table("nope", empty.to_frame())
    with pytest.raises(CtrkitError, match="format"):
        render.render("scratch", pd.DataFrame(), "html")
    # every table of an empty store, and of one with only baselines, says it has no results
    (tmp_path / "empty.jsonl").write_text("")
    only = ResultsStore(tmp_path / "baselines.jsonl")
    only.append([rec("baseline", None, [m], 0, 1, pre(m, 1)) for m in POOL])
    for source in (tmp_path / "empty.jsonl", only.path):
        for name in tables.NAMES:
            if name in ("baselines", "tuning") and source == only.path:
                continue
            assert f"no `{name}` results" in render.render(name, tables.table(name, source), "md"), (source, name)


def test_runs_of_one_setting_at_two_precisions_stay_apart(tmp_path):
    """amp "auto" ran bf16 on one CPU and fp32 on another: the same settings_key, two table blocks."""
    s = ResultsStore(tmp_path / "r.jsonl")
    for seed in SEEDS[:3]:
        for amp, gain in (("off", 0.001), ("bf16", 0.003)):
            # two machines' stores merged: the run keys differ by where they ran
            s.append([rec("alone", "pretrained", POOL[:2], i, seed, 0.70, amp=amp, run_key=f"a{amp}{seed}")
                      for i in range(2)])
            s.append([rec("mutual", "pretrained", POOL[:2], i, seed, 0.70 + gain + (i + 1) * JITTER[seed], amp=amp,
                          run_key=f"m{amp}{seed}") for i in range(2)])
    t = tables.finetune(s, choose=False)
    jitter = np.mean([JITTER[x] for x in SEEDS[:3]])
    assert sorted(t.groupby("amp")["auc_diff_mean"].first().to_dict().items()) == [
        ("bf16", pytest.approx(0.003 + jitter)), ("off", pytest.approx(0.001 + jitter))]
    assert (t["n_pairs"] == 3).all()
    # one Holm family per precision: each block's two models, not the four rows together
    assert t["p_ttest"].notna().all()
    for _, g in t.groupby("amp"):
        assert g["p_holm"].to_numpy() == pytest.approx(pstats.holm(g["p_ttest"].to_numpy()))


def test_control_shares_the_embedding_table_the_batch_and_the_pretrained_start(tmp_path):
    """Three alone runs cover every seed but are not the treatment's control: one shared one embedding
    table, one ran another batch, one started from other checkpoints. The control is the alone run
    that differs only in the mutual term, even though it misses seed 3, and only its pairs count."""
    s = ResultsStore(tmp_path / "r.jsonl")
    peers = POOL[:2]
    for seed in SEEDS[:3]:
        if seed != 3:
            s.append(run("alone", peers, seed, run_batch_size=512))
        s.append(run("mutual", peers, seed, run_batch_size=512))
        for tag, extra, auc in (("shared", {"share_embedding": True}, 0.6), ("batch", {"run_batch_size": 256}, 0.61),
                                ("start", {}, 0.62)):
            s.append([rec("alone", "pretrained", peers, i, seed, auc, key=False, run_key=f"{tag}{seed}",
                          settings_key=tag, run_batch_size=extra.get("run_batch_size", 512),
                          **{k: v for k, v in extra.items() if k != "run_batch_size"},
                          **({"pretrained_test_auc": pre(peers[i], seed) + 0.004} if tag == "start" else {}))
                      for i in range(2)])
    t = tables.finetune(s, choose=False).set_index("peer")
    assert (t["n_pairs"] == 2).all()
    for m in peers:
        want = np.mean([mutual_auc(m, x, 2) - alone_auc(m, x) for x in (1, 2)])
        assert t.loc[m, "auc_diff_mean"] == pytest.approx(want)
        assert t.loc[m, "alone_auc_mean"] == pytest.approx(np.mean([alone_auc(m, x) for x in (1, 2)]))


# ---- what a reviewer asks for (issue 22) ------------------------------------------------------------
def _with_ensemble(store):
    for seed in SEEDS:  # the pretrained ensemble: the peers' mean probability, no training
        store.append([rec("ensemble", "pretrained", POOL, i, seed, pre(m, seed), ensemble_test_auc=0.7885 + NOISE[seed],
                          ensemble_test_logloss=0.42) for i, m in enumerate(POOL)])
    return store


def test_alternatives_mutual_against_the_pretrained_ensemble(store):
    t = tables.alternatives(_with_ensemble(store)).set_index("unit")
    # chosen: weight 10, lr 1 (the best validation); DCN mutual = pre + 0.001 + 0.0002*3*10 + jitter
    dcn = [mutual_auc("DCN", s, 4, 10.0, 1.0) for s in SEEDS]
    ens = [0.7885 + NOISE[s] for s in SEEDS]
    assert t.loc["DCN", "auc_diff_mean"] == pytest.approx(np.mean(np.subtract(dcn, ens)))
    assert t.loc["DCN", "n_ensemble_better"] == sum(e > d for d, e in zip(dcn, ens))
    gain = np.mean([d - pre("DCN", s) for d, s in zip(dcn, SEEDS)])
    assert t.loc["DCN", "share_of_ensemble_gain_pct"] == pytest.approx(100 * gain / (0.7885 - PRE["DCN"]))
    # the best mutual model of each seed is chosen on validation (here FiBiNET, the best pretrained)
    assert t.loc["best mutual model (on validation)", "mutual_auc_mean"] == pytest.approx(
        np.mean([mutual_auc("FiBiNET", s, 4, 10.0, 1.0) for s in SEEDS]))
    assert "pretrained ensemble" in render.render("alternatives", tables.alternatives(store), "md")


def test_no_share_of_an_ensemble_gain_that_is_not_above_zero(store):
    wobble = dict(zip(SEEDS, [0.001, -0.001, 0.0005, -0.0005, 0.0002, -0.0003]))  # ensemble = DCN's checkpoint + noise
    for seed in SEEDS:
        store.append([rec("ensemble", "pretrained", POOL, i, seed, pre(m, seed),
                          ensemble_test_auc=pre("DCN", seed) + wobble[seed], ensemble_test_logloss=0.42)
                      for i, m in enumerate(POOL)])
    t = tables.alternatives(store).set_index("unit")
    assert np.isnan(t.loc["DCN", "share_of_ensemble_gain_pct"]) and tables.NOTE_NO_SHARE in t.loc["DCN", "note"]
    assert t.loc["DCN", "n_pairs"] == len(SEEDS)  # the comparison itself stands


def test_alternatives_without_an_ensemble_run_still_give_mutual_minus_pretrained(store):
    t = tables.alternatives(store).set_index("unit")
    assert t.loc["DCN", "n_pairs"] == 0 and "no pretrained ensemble" in t.loc["DCN", "note"]
    assert t.loc["DCN", "vs_pretrained_rel_pct_mean"] > 0


def test_finetune_and_scratch_report_epochs_caps_and_runs_that_kept_epoch_0(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    for seed in SEEDS[:3]:
        s.append([rec("alone", "pretrained", POOL[:2], i, seed, alone_auc(m, seed), best_epoch=0, epochs=2,
                      epoch_cap_hit=True) for i, m in enumerate(POOL[:2])])
        s.append([rec("mutual", "pretrained", POOL[:2], i, seed, mutual_auc(m, seed, 2), best_epoch=0 if seed == 1 else 2,
                      epochs=2, epoch_cap_hit=True) for i, m in enumerate(POOL[:2])])
        s.append([rec("alone", "scratch", POOL[:2], i, seed, 0.7, epochs=5, epoch_cap_hit=seed == 2) for i in range(2)])
        s.append([rec("mutual", "scratch", POOL[:2], i, seed, 0.71, epochs=4) for i in range(2)])
    ft = tables.finetune(s).set_index("peer")
    assert (ft.loc["DCN", "n_kept_pretrained_alone"], ft.loc["DCN", "n_kept_pretrained_mutual"]) == (3, 1)
    assert ft.loc["DCN", "n_cap_hit_alone"] == 3 and ft.loc["DCN", "alone_epochs_max"] == 2
    assert "kept the pretrained weights (best epoch 0): mutual 1/3, alone 3/3" in ft.loc["DCN", "flag"]
    assert ft.loc["DCN", "flag"].startswith("finetuning epoch cap hit: mutual 3/3, alone 3/3;")
    sc = tables.scratch(s).set_index("peer")
    assert (sc.loc["DeepFM", "mutual_epochs_max"], sc.loc["DeepFM", "alone_epochs_max"]) == (4, 5)
    assert sc.loc["DeepFM", "flag"] == "epoch cap hit: alone 1/3"
    md = render.render("scratch", tables.scratch(s), "md")
    assert "epochs (mutual/alone)" in md and "4/5" in md
    # the headline has no `flag`: it says in a column how many arms are in effect the pretrained model
    head = render.display("headline", tables.headline(s)).set_index("model")
    assert head.loc["DCN", "kept pretrained (m/a)"] == "1/3 of 3"
    assert "kept pretrained (m/a)" in render.CAPTIONS["headline"]


def _tex_specials_escaped(tex: str) -> list[str]:
    """A small LaTeX lexer: the text of the caption and of every cell must have no unescaped
    special character (& only as the column separator, \\\\ only as the row end)."""
    import re

    bad = []
    cap = re.search(r"\\caption\{(.*)\}\n\\label", tex, re.S).group(1)
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    header = tex.split("\\toprule", 1)[1].split("\\midrule", 1)[0]
    cells = [c for row in (header + body).split("\\\\") for c in row.split(" & ")]
    for text in [cap] + cells:
        stripped = re.sub(r"\\(textbackslash|textasciitilde|textasciicircum|textless|textgreater)\{\}", "", text)
        stripped = re.sub(r"\\texttt\{", "{", stripped)
        stripped = re.sub(r"\\[&%$#_{}]", "", stripped)
        found = [ch for ch in "&%$#_^~<>\\" if ch in stripped]
        if found or stripped.count("{") != stripped.count("}"):
            bad.append(f"{found} in {text.strip()[:80]!r}")
    return bad


@pytest.mark.parametrize("name", tables.NAMES)
def test_latex_of_every_table_is_escaped(store, name):
    _with_ensemble(store)
    for seed in SEEDS[:2]:
        store.append([rec("alone", "scratch", POOL[:2], i, seed, 0.70) for i in range(2)])
        store.append([rec("mutual", "scratch", POOL[:2], i, seed, 0.71) for i in range(2)])
    cap = f"{render.CAPTIONS[name]} (real data: ml_100k · 100% of rows · `code` · <6 & #1 ~ ^ $)"
    tex = render.render(name, tables.table(name, store.path), "tex", caption=cap)
    assert _tex_specials_escaped(tex) == []
    assert "ml\\_100k" in tex and "100\\%" in tex and "\\texttt{code}" in tex


def test_index_opens_with_the_data_statement_and_the_headline(store, tmp_path):
    from ctrkit.notebook import runner

    out = tmp_path / "out"
    (out / "tables").mkdir(parents=True)
    (out / "data" / "criteo" / "raw").mkdir(parents=True)
    (out / "data" / "criteo" / "raw" / "synth.json").write_text("{}")
    head_df = tables.headline(store)
    head_df.to_csv(out / "tables" / "criteo_headline.csv", index=False)
    cap = "Mutual minus alone (synthetic Criteo-shaped data · 100 rows · 2 seeds · fp32 · profile quick)"
    (out / "tables" / "criteo_headline.md").write_text(render.render("headline", head_df, "md", caption=cap))
    pd.DataFrame({"dataset": "criteo", "split": ["train", "valid", "test"], "rows": [80, 10, 10],
                  "clicks": [20, 2, 3], "ctr": [0.25, 0.2, 0.3]}).to_csv(out / "tables" / "criteo_data_splits.csv",
                                                                        index=False)
    runner.write_index(out, profile="quick")
    page = (out / "index.html").read_text()
    head = page[:page.index("<h2>Notebooks</h2>")]
    assert "<h2>Headline</h2>" in head and "criteo: synthetic" in head and "100 rows as loaded" in head
    assert "train 80 / valid 10 / test 10" in head and "<table" in head and "DeepFM" in head
    assert (out / "index.md").read_text().index("## Headline") < (out / "index.md").read_text().index("## Notebooks")
    # the headline, in the lead and among the tables, is its human form with its caption (data, seeds,
    # precision, profile), not the tidy CSV
    assert page.count("2 seeds · fp32") == 2 and page.count("<table") == 2
    assert "_ci_low" not in page and "nan" not in page.lower() and "[" in head


def test_index_follows_the_reading_order(tmp_path):
    """Criteo before Avazu, the data and baselines before the claims, the executed notebooks by dataset and
    number (05 and 06 after them), the CSVs behind the figures listed once, and ctrkit's version."""
    import ctrkit
    from ctrkit.notebook import runner

    out = tmp_path / "out"
    for d in ("tables", "figures", "notebooks/avazu", "notebooks/criteo"):
        (out / d).mkdir(parents=True)
    for ds in ("avazu", "criteo"):
        for name in ("headline", "baselines", "data_vocab"):
            (out / "tables" / f"{ds}_{name}.csv").write_text("a\n1\n")
            (out / "tables" / f"{ds}_{name}.md").write_text(f"| a |\n|:--|\n| {ds} {name} |\n")
        (out / "tables" / f"{ds}_fig_gains.csv").write_text("a\n1\n")
        for nb in ("07_variants", "00_data"):
            (out / "notebooks" / ds / f"{nb}.ipynb").write_text("{}")
        for fig in ("peer_count", "data_ctr"):
            (out / "figures" / f"{ds}_{fig}.png").write_bytes(b"")
    (out / "notebooks" / "05_architectures.ipynb").write_text("{}")
    runner.write_index(out, profile="quick")
    md = (out / "index.md").read_text()
    order = lambda *names: [md.index(n) for n in names] == sorted(md.index(n) for n in names)  # noqa: E731
    assert order("criteo headline", "avazu headline", "## Notebooks")  # the lead: Criteo first
    assert order("notebooks/criteo/00_data", "notebooks/criteo/07_variants", "notebooks/avazu/00_data",
                 "notebooks/05_architectures")
    assert order("[criteo_data_vocab]", "[criteo_baselines]", "[criteo_headline]", "[avazu_data_vocab]")
    assert order("### criteo_data_ctr", "### criteo_peer_count", "### avazu_data_ctr")
    assert "The numbers behind the figures (CSV): [avazu_fig_gains]" in md and "### criteo_fig_gains" not in md
    assert f"by ctrkit {ctrkit.__version__}" in md and f"by ctrkit {ctrkit.__version__}" in (out / "index.html").read_text()


def test_the_file_memo_takes_any_keywords(tmp_path):
    calls = []

    @records.per_file_version
    def f(source, *, peers=None, **more):
        calls.append((peers, more))
        return pd.DataFrame({"peers": [peers], "more": [json.dumps(more)]})

    path = tmp_path / "r.csv"
    path.write_text("a\n1\n")
    assert f(path)["more"][0] == "{}" and f(path, peers=None)["peers"][0] is None
    assert f(path, peers="A", x=1)["more"][0] == '{"x": 1}' and len(calls) == 2


@pytest.mark.parametrize("name", ["controls", "alternatives"])
def test_a_table_never_mixes_two_versions_of_the_results_file(store, tmp_path, monkeypatch, name):
    # it reads the records and the (memoised) finetune table: an export landing between the two reads
    # must not pair one version's records with the other's chosen setting
    import shutil

    path = store.to_csv(tmp_path / "results.csv")
    shutil.copy(path, tmp_path / "before.csv")
    expected = getattr(tables, name)(tmp_path / "before.csv")
    real = tables.records

    def then_an_export_lands(source, **kw):
        df = real(source, **kw)
        for seed in SEEDS:  # a setting the sweep would choose now (valid AUC 0.99)
            store.append([rec("mutual", "pretrained", POOL, i, seed, 0.99, weight=100.0) for i in range(4)])
        store.to_csv(path)
        return df

    monkeypatch.setattr(tables, "records", then_an_export_lands)
    got = getattr(tables, name)(path)
    assert len(expected) and got.equals(expected)
