"""The paired test of whether the finetuning gain changes with the baseline's strength (`strength.contrast`):
its per-seed pairs and numbers against an independent computation on a small synthetic store, seeds of
one size only left out, the size's own chosen setting, Holm across the models of each dataset, the figure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ctrkit.analysis import strength
from ctrkit.core.utils import CtrkitError
from ctrkit.experiments.store import ResultsStore

MODELS = ("DeepFM", "DCN", "PNN")
# per size: its seeds (2-5 are in both; 1 only in full, 6 only in smoke) and, per weight of its sweep,
# the validation AUC of the mutual peers (the choice: weight 10 for full, weight 1 for smoke)
SIZES = {"full": ([1, 2, 3, 4, 5], {1.0: 0.70, 10.0: 0.75}), "smoke": ([2, 3, 4, 5, 6], {1.0: 0.75, 10.0: 0.70})}
SHARED = [2, 3, 4, 5]
DATASETS = ("criteo", "avazu")


def _pre(size, ds, model, seed):
    """The pretrained test AUC: size, dataset, model and seed all move it."""
    return (0.80 if size == "full" else 0.74) + 0.01 * MODELS.index(model) + 0.003 * seed + (0.02 if ds == "avazu" else 0)


def _alone(size, ds, model, seed):
    return _pre(size, ds, model, seed) + 0.0005 * ((seed * 7 + MODELS.index(model)) % 3)


def _mutual(size, ds, model, seed, weight):
    """Irregular per seed (so a pairing by position, not seed, gives other numbers), per weight, model and
    dataset: the sizes' gains differ clearly for some models, so Holm's p-values are below 1 and distinct."""
    bump = {1: 0.006, 2: 0.0030, 3: 0.0042, 4: 0.0036, 5: 0.0049, 6: 0.001}[seed] * (1 + 2 * MODELS.index(model)) \
        * (1.5 if ds == "avazu" else 1)
    return _alone(size, ds, model, seed) + bump * (1.0 if weight == 1.0 else 0.3) + (0.002 if size == "smoke" else 0)


def _rec(size, ds, mode, model, seed, weight, auc, valid):
    return {"run_key": f"{size}|{ds}|{mode}|{weight}|{seed}|{model}", "dataset": ds, "fingerprint": "fp",
            "mode": mode, "init": "pretrained", "seed": seed, "n_peers": 3, "peer_index": MODELS.index(model),
            "peer": model, "model": model, "peers": "+".join(MODELS), "weight": weight, "finetune_lr_scale": 0.1,
            "finetune_epochs": 1, "preset": size, "amp": "off", "test_auc": auc, "test_logloss": 0.5 - auc / 10,
            "valid_auc": valid, "valid_logloss": 0.4, "pretrained_test_auc": _pre(size, ds, model, seed),
            "epochs": 1, "best_epoch": 1, "epoch_cap_hit": False, "settings_key": f"{size}|{ds}|{mode}|{weight}"}


def _store(tmp_path) -> ResultsStore:
    """ONE store holding both sizes and datasets; each size's sweep at weights 1 and 10 (alone: weight 0)."""
    s = ResultsStore(tmp_path / "sizes.jsonl")
    for size, (seeds, valid) in SIZES.items():
        for ds in DATASETS:
            for seed in seeds:
                s.append([_rec(size, ds, "alone", m, seed, 0.0, _alone(size, ds, m, seed), 0.7) for m in MODELS])
                for w, v in valid.items():
                    s.append([_rec(size, ds, "mutual", m, seed, w, _mutual(size, ds, m, seed, w), v) for m in MODELS])
    return s


def _holm(p):
    """Holm by hand: the k-th smallest times (m - k + 1), running maximum, capped at 1."""
    order = np.argsort(p)
    adj, run = np.empty(len(p)), 0.0
    for k, i in enumerate(order):
        run = max(run, min(1.0, (len(p) - k) * p[i]))
        adj[i] = run
    return adj


def _expected(ds, model):
    """gain_s(full) - gain_s(smoke) over the shared seeds, each size at its own chosen weight, by hand."""
    seeds = SHARED
    gain = {size: {s: 100 * (_mutual(size, ds, model, s, w) - _alone(size, ds, model, s)) / _alone(size, ds, model, s)
                   for s in seeds} for size, w in (("full", 10.0), ("smoke", 1.0))}
    d = np.array([gain["full"][s] - gain["smoke"][s] for s in seeds])
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    auc = np.array([_pre("full", ds, model, s) - _pre("smoke", ds, model, s) for s in seeds])
    return {"gain_diff_mean": d.mean(), "gain_diff_ci_low": d.mean() - half, "gain_diff_ci_high": d.mean() + half,
            "p_ttest": sps.ttest_1samp(d, 0).pvalue, "pretrained_auc_diff_mean": auc.mean(),
            "gain_a_mean": np.mean(list(gain["full"].values())), "gain_b_mean": np.mean(list(gain["smoke"].values()))}


def test_contrast_pairs_by_seed_at_each_sizes_choice_against_a_computation_by_hand(tmp_path):
    s = _store(tmp_path)
    c = strength.contrast({"full": s, "smoke": s.path})
    assert list(c.columns) == strength.CONTRAST_COLUMNS and len(c) == len(DATASETS) * len(MODELS)
    assert set(c["size_a"]) == {"full"} and set(c["size_b"]) == {"smoke"}
    # seeds 1 (full only) and 6 (smoke only) are left out: 4 pairs remain
    assert (c["n_pairs"] == 4).all() and (c["n_left_out"] == 2).all()
    for ds in DATASETS:
        rows = c[c["dataset"] == ds].set_index("peer")
        assert list(rows.index) == list(MODELS)
        for model in MODELS:
            want = _expected(ds, model)
            for k, v in want.items():
                assert rows.loc[model, k] == pytest.approx(v, rel=1e-9, abs=1e-12), (ds, model, k)
        # Holm across the models of this dataset only (not 1 everywhere, not the raw p, not across datasets)
        assert rows["p_holm"].to_numpy() == pytest.approx(_holm(rows["p_ttest"].to_numpy()))
        assert (rows["p_holm"] > rows["p_ttest"]).any() and (rows["p_holm"] < 0.5).any()
    assert c["p_holm"].to_numpy() != pytest.approx(_holm(c["p_ttest"].to_numpy()))


def test_contrast_rests_on_the_pairs_of_the_strength_table(tmp_path):
    """`seed_gains` holds exactly the pairs behind each `table` row: their count and mean are the row's."""
    s = _store(tmp_path)
    sources = {"full": s, "smoke": s.path}
    t, g = strength.table(sources), strength.seed_gains(sources)
    assert list(g.columns) == strength.SEED_COLUMNS
    for r in t.itertuples(index=False):
        one = g[(g["size"] == r.size) & (g["dataset"] == r.dataset) & (g["peer"] == r.peer)]
        assert sorted(one["seed"]) == SIZES[r.size][0] and len(one) == r.n_pairs
        assert one["gain_rel_pct"].mean() == pytest.approx(r.rel_pct_mean)
        assert one["pretrained_auc"].mean() == pytest.approx(r.pretrained_auc_mean)
    assert set(t[t["size"] == "full"]["weight"]) == {10.0} and set(t[t["size"] == "smoke"]["weight"]) == {1.0}


def test_a_model_of_one_size_only_and_no_shared_seed(tmp_path):
    s = _store(tmp_path)
    df = s.to_frame()
    # PNN ran only at full; at smoke the seeds are renamed so that none is shared with full
    df = df[~((df["preset"] == "smoke") & (df["peer"] == "PNN"))]
    c = strength.contrast({"full": df, "smoke": df}, dataset="criteo")
    assert list(c["peer"]) == ["DeepFM", "DCN"]  # no row for a model with no second size
    shifted = df.assign(seed=np.where(df["preset"] == "smoke", df["seed"] + 100, df["seed"]))
    c = strength.contrast({"full": shifted, "smoke": shifted}, dataset="criteo")
    assert (c["n_pairs"] == 0).all() and (c["n_left_out"] == 10).all() and c["gain_diff_mean"].isna().all()
    assert c["p_holm"].isna().all() and strength.contrast({"full": df}, dataset="criteo").empty


def test_the_figure_says_each_models_contrast(tmp_path, monkeypatch):
    from ctrkit.analysis import plots

    s = _store(tmp_path)
    sources = {"full": s, "smoke": s.path}
    t, c = strength.table(sources, dataset="criteo"), strength.contrast(sources, dataset="criteo")
    seen = {}
    real_save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, out: seen.setdefault("fig", fig) and real_save(fig, out))
    plots.gain_vs_strength(t, tmp_path / "g", caption="cap", contrast=c)
    texts = [x.get_text() for x in seen["fig"].axes[0].get_legend().get_texts()]
    for m in MODELS:
        r = c[c["peer"] == m].iloc[0]
        label = strength.contrast_label(c, m)
        assert f"{m}\n{label}" in texts and f"{r.gain_diff_mean:+.2f}" in label and f"{r.p_holm:.2f}" in label
    shown = strength.display_contrast(c)
    assert list(shown["sizes (A - B)"]) == ["full - smoke"] * 3 and set(shown["pairs"]) == {"4 (2 left out)"}


def test_the_tables_say_which_arm_kept_its_pretrained_weights(tmp_path):
    """A size where mutual kept the pretrained weights (best epoch 0) and alone finetuned has a 'gain'
    that is only minus alone's finetuning: the side-by-side table counts the kept runs per arm beside
    each size's Holm p, and the contrast's note names the size and arm; the setting and the
    baselines at the epoch cap of each size are what `sizes_note` says."""
    s = _store(tmp_path)
    lines = [__import__("json").loads(x) for x in s.path.read_text().splitlines()]
    for r in lines:  # smoke's DCN mutual runs at the chosen weight 1 kept their pretrained weights
        if r["preset"] == "smoke" and r["peer"] == "DCN" and r["mode"] == "mutual" and r["weight"] == 1.0 \
                and r["dataset"] == "criteo" and r["seed"] in (2, 3, 4):
            r["best_epoch"] = 0
    s.path.write_text("".join(__import__("json").dumps(r) + "\n" for r in lines))
    drop = ("append_id", "append_size", "written_at")
    ResultsStore(s.path).append([{**{k: v for k, v in lines[0].items() if k not in drop}, "run_key": f"b{i}",
                                  "mode": "baseline", "init": None, "epoch_cap_hit": i < 2} for i in range(3)])
    sources = {"full": s.path, "smoke": s.path}
    t = strength.table(sources)
    human = strength.display(t).set_index(["dataset", "model"])
    assert human.loc[("criteo", "DCN"), f"smoke: {strength.PAIRS}"] == "5 (3/0)"
    assert human.loc[("criteo", "DeepFM"), f"smoke: {strength.PAIRS}"] == "5 (0/0)"
    p = t.set_index(["size", "dataset", "peer"]).loc[("full", "avazu", "PNN"), "p_holm"]
    assert human.loc[("avazu", "PNN"), "full: p (Holm)"] == f"{p:.3f}"
    c = strength.contrast(sources).set_index(["dataset", "peer"])
    assert c.loc[("criteo", "DCN"), "note"] == "kept the pretrained weights (best epoch 0): smoke mutual 3/4"
    assert c.loc[("criteo", "DeepFM"), "note"] == ""
    assert strength.sizes_note(sources, t, dataset="criteo") == (
        "full: weight 10, lr scale 0.1, baselines at the epoch cap 2/3; "
        "smoke: weight 1, lr scale 0.1, baselines at the epoch cap 0/0")


@pytest.mark.parametrize("size, parts", [("smoke", ("smoke", 1.0)), ("smoke@25%", ("smoke", 0.25)),
                                         ("full@1%", ("full", 0.01)), ("my-net_2@99%", ("my-net_2", 0.99))])
def test_a_size_is_a_preset_and_a_share_of_the_training_rows(size, parts):
    assert strength.size_parts(size) == parts


@pytest.mark.parametrize("size", ["smoke@100%", "smoke@0%", "smoke@25", "smoke@2.5%", "@25%", "smoke@25%x", "", 3])
def test_a_size_of_another_form_is_one_line_naming_it(size):
    with pytest.raises(CtrkitError, match=r"size .*expected a model preset, or a preset at a share"):
        strength.size_parts(size)


def test_a_share_size_reads_its_presets_records_from_its_own_source(tmp_path):
    """A size "smoke@50%" is the smoke preset's records of its source (a share's own store holds its runs
    only): the same rows as the size "smoke" of that source, under its own name."""
    s = _store(tmp_path)
    plain = strength.table({"full": s, "smoke": s})
    share = strength.table({"full": s, "smoke@50%": s})
    assert list(share["size"]) == [z if z == "full" else "smoke@50%" for z in plain["size"]]
    pd.testing.assert_frame_equal(share.drop(columns="size"), plain.drop(columns="size"))
    c = strength.contrast({"full": s, "smoke@50%": s})
    assert set(c["size_b"]) == {"smoke@50%"} and (c["n_pairs"] == 4).all()
    assert "smoke@50%: weight 1" in strength.sizes_note({"full": s, "smoke@50%": s}, share)
