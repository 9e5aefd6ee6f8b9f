"""The `study` profile's baseline search: candidates chosen on validation only (a planted test leak
fails the check), the tuning table, and a small real search end to end on synthetic rows."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ctrkit import data as data_module
from ctrkit.analysis import render, tables
from ctrkit.experiments import designs
from ctrkit.experiments.store import ResultsStore
from ctrkit.notebook import profiles, reproduce

SEEDS = [1, 2, 3]


def _store(tmp_path) -> ResultsStore:
    """Two candidates per model: lr 0.001 wins on validation, lr 0.0003 on test by far (the plant)."""
    s = ResultsStore(tmp_path / "tuning.jsonl")
    for seed in SEEDS:
        for model, base in (("DeepFM", 0.78), ("DCN", 0.79)):
            for lr, valid, test in ((0.001, base + 0.004, base), (0.0003, base, base + 0.02)):
                s.append([{"run_key": f"b|{model}|{lr}|{seed}", "dataset": "criteo", "fingerprint": "fp",
                           "mode": "baseline", "init": None, "seed": seed, "n_peers": 1, "peer_index": 0,
                           "peer": model, "model": model, "peers": model, "preset": "quick", "amp": "off",
                           "valid_auc": valid + 0.0001 * seed, "valid_logloss": 0.45, "test_auc": test,
                           "test_logloss": 0.45, "epochs": 3, "epoch_cap_hit": False, "weight": 0.0,
                           "settings_key": f"b|{model}|{lr}",
                           "config": json.dumps({"model": {"embedding_dim": 10},
                                                 "train": {"lr": lr, "seed": seed, "device": "cpu"}})}])
    return s


def _check_chosen_on_validation(table: pd.DataFrame) -> None:
    chosen = table[table["chosen"]].set_index("model")["candidate"].to_dict()
    assert chosen == {"DeepFM": "lr=0.001", "DCN": "lr=0.001"}, chosen


def test_tuning_chooses_on_validation_only(tmp_path):
    s = _store(tmp_path)
    t = tables.tuning(s)
    _check_chosen_on_validation(t)
    # the test columns play no part: without them the same candidates are chosen
    blind = s.to_frame().assign(test_auc=np.nan, test_logloss=np.nan)
    _check_chosen_on_validation(tables.tuning(blind))
    text = render.render("tuning", t, "md")
    assert "lr=0.0003" in text and "chosen on validation only" in text
    assert t.set_index(["model", "candidate"]).loc[("DCN", "lr=0.0003"), "test_auc_mean"] == pytest.approx(0.81)


def test_a_planted_test_leak_fails_the_check(tmp_path, monkeypatch):
    """The check above is not vacuous: a chooser that peeks at test picks lr 0.0003 and fails it."""
    real = designs.choose_on_validation

    def leaky(frame, *, keys, by=(), **kw):
        return real(frame.assign(valid_auc=frame["test_auc"]), keys=keys, by=by, **kw)

    monkeypatch.setattr(designs, "choose_on_validation", leaky)
    with pytest.raises(AssertionError):
        _check_chosen_on_validation(tables.tuning(_store(tmp_path)))


def _grid(tmp_path, best_lr: float, lrs=(0.0003, 0.001, 0.003), units=None) -> pd.DataFrame:
    """DeepFM over `lrs` (and hidden `units` lists when given), validation best at `best_lr`."""
    s = ResultsStore(tmp_path / "grid.jsonl")
    for seed in SEEDS:
        for i, lr in enumerate(lrs):
            model = {"embedding_dim": 10, **({"hidden_units": units[i]} if units else {})}
            s.append([{"run_key": f"b|{lr}|{seed}", "dataset": "criteo", "fingerprint": "fp", "mode": "baseline",
                       "init": None, "seed": seed, "n_peers": 1, "peer_index": 0, "peer": "DeepFM", "model": "DeepFM",
                       "peers": "DeepFM", "preset": "quick", "amp": "off", "valid_auc": 0.8 - abs(lr - best_lr),
                       "valid_logloss": 0.45, "test_auc": 0.79, "test_logloss": 0.45, "epochs": 3,
                       "epoch_cap_hit": False, "weight": 0.0, "settings_key": f"b|{lr}",
                       "config": json.dumps({"model": model, "train": {"lr": lr, "seed": seed}})}])
    return tables.tuning(s)


@pytest.mark.parametrize("best_lr, edge", [(0.001, ""), (0.003, "largest tried: lr"), (0.0003, "smallest tried: lr")])
def test_the_tuning_table_says_when_the_choice_is_at_the_end_of_the_range(tmp_path, best_lr, edge):
    """A choice at the largest or smallest value tried is flagged on its row (the best may lie beyond);
    one inside the range is not, and the rows not chosen never are."""
    t = _grid(tmp_path, best_lr)
    assert t.loc[t["chosen"], "edge"].tolist() == [edge]
    assert set(t.loc[~t["chosen"], "edge"]) == {""}
    assert "`edge`" in render.render("tuning", t, "md")


def test_the_tuning_edge_is_per_hyperparameter_and_numbers_only(tmp_path):
    """Two hyperparameters vary: each is judged on its own values; a list (hidden units) is not a number."""
    t = _grid(tmp_path, 0.003, units=[[400, 400], [200, 200], [100, 100]])
    assert t.loc[t["chosen"], "edge"].tolist() == ["largest tried: lr"]
    assert _grid(tmp_path / "two", 0.001, lrs=(0.0003, 0.001)).loc[lambda d: d["chosen"], "edge"].tolist() == [
        "largest tried: lr"]


def test_study_profile_sizes():
    p = profiles.profile("study")
    assert len(p["seeds"]) >= 5 and p["epochs"] >= 20 and p["patience"] >= 2 and p["tune"][0] == {}
    assert len(p["sweep_weights"]) * len(p["sweep_lr_scales"]) >= 6 and p["tune_seeds"]
    assert set(p["variant_seeds"]) <= set(p["seeds"]) and p["min_steps"] >= 32


def test_the_batch_rule_halves_the_preset_batch_on_small_data_only():
    study = profiles.profile("study")
    assert profiles.batch_size(study, 4096, 39_072) == 512  # UCI Adult's train rows: 76 steps an epoch
    assert profiles.batch_size(study, 4096, 36_672_493) == 4096  # Criteo x4: the preset's batch stays
    assert profiles.batch_size(study, 4096, 100_000) == 1024  # 97 steps an epoch (>= 64); 2048 would give 48
    assert profiles.batch_size(study, 4096, 300) == profiles.MIN_BATCH  # never below the floor
    assert profiles.batch_size(profiles.profile("quick"), 512, 300) is None  # no rule: the preset's batch


def test_study_overrides_carry_the_batch_of_the_prepared_data(tmp_path):
    f, raw = _schema_data(tmp_path, rows=300)
    cfg = reproduce.settings(dataset=str(f), profile="study", data_dir=str(raw), out=str(tmp_path / "o"))
    with pytest.raises(reproduce.CtrkitError, match="not prepared yet"):
        cfg.overrides
    reproduce.dataset(cfg)
    assert cfg.overrides == {"patience": cfg.patience, "batch_size": profiles.MIN_BATCH}
    quick = reproduce.settings(dataset="criteo", profile="quick", out=str(tmp_path / "q"))
    assert quick.overrides == {"patience": quick.patience}  # the other profiles: no rule, no file read


def test_the_variants_table_and_figure_are_captioned_with_the_variant_seeds(tmp_path):
    study = reproduce.settings(dataset="criteo", profile="study", out=str(tmp_path / "s"))
    assert reproduce.for_variants(study).seeds == study.variant_seeds != study.seeds
    quick = reproduce.settings(dataset="criteo", profile="quick", out=str(tmp_path / "q"))
    assert reproduce.for_variants(quick) == quick
    mine = reproduce.settings(dataset="criteo", profile="study", out=str(tmp_path / "s"), seeds=[7, 8, 9, 10, 11])
    assert mine.variant_seeds == [7, 8, 9]  # a subset of the seeds given, as many as the profile's


def test_study_plan_leaves_out_the_profile_skips():
    from ctrkit.notebook import runner

    study = [j.notebook for j in runner.plan(dataset="criteo", profile="study")]
    assert "03_partners" not in study and "04_peer_count" not in study and "07_variants" in study
    assert "03_partners" in [j.notebook for j in runner.plan(dataset="criteo", profile="quick")]


def test_tune_runs_a_small_search_and_returns_the_validation_choice(tmp_path):
    """End to end on 1,000 synthetic rows, the smoke preset, one epoch: two candidates per model."""
    import dataclasses

    cfg = reproduce.settings(dataset="criteo", profile="smoke", out=str(tmp_path / "out"))
    cfg = dataclasses.replace(cfg, models=["DeepFM", "DCN"], tune=[{}, {"lr": 0.001}], tune_seeds=[2021], epochs=1)
    data = reproduce.dataset(cfg)
    chosen = reproduce.tune(cfg, data)
    assert set(chosen) == {"DeepFM", "DCN"} and all(c in cfg.tune for c in [
        {k: v for k, v in c.items() if k not in cfg.overrides} for c in chosen.values()])
    t = pd.read_csv(cfg.table("tuning").with_name("criteo_tuning.csv"))
    assert len(t) == 4 and t.groupby("model")["chosen"].sum().tolist() == [1, 1]
    best = t.loc[t.groupby("model")["valid_auc_mean"].idxmax()]
    assert best["chosen"].all()  # the highest validation AUC, whatever test says
    assert "1,000 rows (train" in (md := cfg.table("tuning").with_name("criteo_tuning.md").read_text()) and "1 seeds" in md
    assert "fp32" in md and "unrecorded" not in md  # the tuning store's precision (before any results CSV)
    assert reproduce.tune(dataclasses.replace(cfg, tune=[]), data) == {}


def test_tune_widen_steps_past_the_edge_and_resumes_without_training(tmp_path):
    """Two lr values tried: the choice is one of them, an edge, so one round past it tries lr x3 (or
    /3) of the chosen; the answer is the best of all three on validation. Run again, nothing trains."""
    import dataclasses

    cfg = reproduce.settings(dataset="criteo", profile="smoke", out=str(tmp_path / "out"))
    cfg = dataclasses.replace(cfg, models=["DeepFM", "DCN"], tune=[{}, {"lr": 0.001}], tune_seeds=[2021], epochs=1,
                              tune_widen=1)
    data = reproduce.dataset(cfg)
    chosen = reproduce.tune(cfg, data)
    t = pd.read_csv(cfg.table("tuning").with_name("criteo_tuning.csv"))
    assert t.groupby("model").size().tolist() == [3, 3]
    for model, rows in t.groupby("model"):
        lrs = [float(c.split("lr=")[1]) for c in rows["candidate"]]
        assert {0.001, 0.01} < set(lrs) and (0.03 in lrs or 0.000333 in lrs)  # smoke's lr is 0.01
        best = rows.loc[rows["valid_auc_mean"].idxmax()]
        assert best["chosen"] and chosen[model]["lr"] == pytest.approx(float(best["candidate"].split("lr=")[1]))
    assert sorted(p.name for p in (cfg.run_dir / "tuning").iterdir() if p.is_dir()) == [
        "candidate0", "candidate1", "widen1_0"]
    assert "| search | 2 candidates per model, then up to 1 round(s) x3 past an edge |" in cfg._repr_markdown_()
    store = (cfg.run_dir / "tuning" / "store.jsonl").read_text()
    assert reproduce.tune(cfg, data) == chosen and (cfg.run_dir / "tuning" / "store.jsonl").read_text() == store
    # the workload counts the rounds past an edge: at most one candidate per searched key each
    from ctrkit.notebook import runner

    sizes = {**profiles.profile("study"), "tune": [{}, {"lr": 0.1}], "tune_seeds": [1]}
    assert (runner.workload({**sizes, "tune_widen": 2})["01_baselines"][0]
            == runner.workload({**sizes, "tune_widen": 0})["01_baselines"][0] + 2 * 4)


# ---------------------------------------------------------------- issue 22, items 1, 3 and 7


def _schema_data(tmp_path, rows=300):
    """A schema dataset of your own (not a BARS one): 3 categorical fields, a label that depends on one."""
    f = tmp_path / "logs.yaml"
    f.write_text("name: mylogs\nlabel: y\ncategorical: [a, b, c]\n")
    rng = np.random.default_rng(0)
    lines = ["y,a,b,c"] + [f"{int(a % 3 == 0 or rng.random() < 0.2)},{a},{rng.integers(7)},{rng.integers(4)}"
                           for a in rng.integers(0, 12, rows)]
    (tmp_path / "raw.csv").write_text("\n".join(lines) + "\n")
    return f, tmp_path / "raw.csv"


def test_study_resolves_to_the_full_preset_and_it_trains_every_model_on_a_schema_dataset(tmp_path):
    from ctrkit import experiments

    f, raw = _schema_data(tmp_path)
    cfg = reproduce.settings(dataset=str(f), profile="study", data_dir=str(raw), out=str(tmp_path / "o"))
    assert cfg.dataset == "mylogs" and cfg.preset == "full" and cfg.patience >= 3 and cfg.sizes == ["full", "smoke"]
    # quick and study compare baseline strengths, the profile's own preset first; smoke (CI) and paper do not
    assert {p for p in profiles.PROFILES if profiles.profile(p).get("sizes")} == {"quick", "study"}
    quick = profiles.profile("quick")
    assert quick["sizes"] == ["smoke", "smoke@25%"] and quick["sizes"][0] == quick["preset"]
    data = reproduce.dataset(cfg)
    base = experiments.pretrain_baselines(data, cfg.models, tmp_path / "ckpt", preset=cfg.preset, seeds=[2021],
                                          epochs=1, overrides=cfg.overrides, device="cpu", threads=1, amp="off",
                                          progress=False)
    assert sorted(base["model"]) == sorted(cfg.models) and base["test_auc"].between(0, 1).all()
    for c in base["config"]:
        c = json.loads(c) if isinstance(c, str) else c
        assert c["model"]["embedding_dim"] == 16 and c["model"]["hidden_units"] == [400, 400, 400]
        assert c["train"]["lr_decay"] == 0.5 and c["train"]["patience"] == cfg.patience


def _rec(preset, mode, model, seed, auc, pre):
    w = 0.0 if mode == "alone" else 1.0
    return {"run_key": f"{preset}|{mode}|{seed}|{model}", "dataset": "criteo", "fingerprint": "fp", "mode": mode,
            "init": "pretrained", "seed": seed, "n_peers": 2, "peer_index": ["DeepFM", "DCN"].index(model),
            "peer": model, "model": model, "peers": "DeepFM+DCN", "weight": w, "finetune_lr_scale": 0.1,
            "finetune_epochs": 1, "preset": preset, "amp": "off", "test_auc": auc, "test_logloss": 0.5 - auc / 10,
            "valid_auc": auc, "valid_logloss": 0.4, "pretrained_test_auc": pre, "epochs": 1, "best_epoch": 1,
            "epoch_cap_hit": False, "settings_key": f"{preset}|{mode}|{w}"}


# per size: pretrained AUC, the alone gain over it, the mutual gain over alone per seed (seed-dependent)
SIZES = {"full": (0.80, 0.001, {1: 0.002, 2: 0.003, 3: 0.004}), "smoke": (0.70, 0.004, {1: 0.010, 2: 0.0, 3: 0.005})}


def _strength_store(tmp_path):
    """ONE store holding both sizes, the same seeds and peers: only the preset tells them apart."""
    s = ResultsStore(tmp_path / "sizes.jsonl")
    for size, (pre, alone, gain) in SIZES.items():
        for seed in (1, 2, 3):
            p = pre + 0.001 * seed
            for mode, auc in (("alone", p + alone), ("mutual", p + alone + gain[seed])):
                s.append([_rec(size, mode, m, seed, auc + (0.01 if m == "DCN" else 0.0),
                               p + (0.01 if m == "DCN" else 0.0)) for m in ("DeepFM", "DCN")])
    return s


def test_strength_table_pairs_by_seed_within_each_size(tmp_path):
    from ctrkit.analysis import stats, strength

    s = _strength_store(tmp_path)
    t = strength.table({"full": s, "smoke": s.path}, dataset="criteo")
    assert list(t["size"]) == ["full", "full", "smoke", "smoke"] and list(t["peer"][:2]) == ["DeepFM", "DCN"]
    for size, (pre, alone, gain) in SIZES.items():
        for model, off in (("DeepFM", 0.0), ("DCN", 0.01)):
            r = t[(t["size"] == size) & (t["peer"] == model)].iloc[0]
            a = np.array([pre + 0.001 * sd + off + alone for sd in (1, 2, 3)])
            mut = a + np.array([gain[sd] for sd in (1, 2, 3)])
            ref = stats.paired(mut, a)  # by seed, within this size only
            assert r["n_pairs"] == 3 and r["pretrained_auc_mean"] == pytest.approx(pre + 0.002 + off)
            for k in ("auc_diff_mean", "rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high"):
                assert r[k] == pytest.approx(ref[k]), (size, model, k)
    shown = strength.display(t)
    assert list(shown.columns[:3]) == ["dataset", "model", "full: pretrained AUC"] and len(shown) == 2
    assert shown.iloc[0][f"smoke: {strength.PAIRS}"].startswith("3 (") and "[" in shown.iloc[0]["full: mutual - alone (rel. %)"]
    assert strength.table({"bars": s}).empty  # no records of that preset: no rows, not another size's


def test_gain_vs_strength_draws_each_interval(tmp_path, monkeypatch):
    from matplotlib.container import ErrorbarContainer

    from ctrkit.analysis import plots, strength

    t = strength.table({"full": _strength_store(tmp_path).path, "smoke": tmp_path / "sizes.jsonl"})
    seen = {}
    real_save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, out: seen.setdefault("fig", fig) and real_save(fig, out))
    paths = plots.gain_vs_strength(t, tmp_path / "fig" / "g", caption="cap")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.exists() for p in paths)
    bars = [c for c in seen["fig"].axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(t) == 4
    drawn = sorted((float(c.lines[0].get_xdata()[0]), float(c.lines[0].get_ydata()[0]),
                    *sorted(float(v) for v in c.lines[2][0].get_segments()[0][:, 1])) for c in bars)
    want = sorted(zip(t["pretrained_auc_mean"], t["rel_pct_mean"], t["rel_pct_ci_low"], t["rel_pct_ci_high"]))
    assert np.allclose(drawn, want)


def test_strength_runs_nothing_without_sizes(tmp_path):
    cfg = reproduce.settings(dataset="criteo", profile="paper", out=str(tmp_path / "o"))
    shown, paths = reproduce.strength(cfg, None)
    assert len(shown) == 0 and "Not run under profile `paper`" in shown._repr_markdown_()
    assert paths == [] and not (tmp_path / "o").exists()


def test_estimate_from_a_fake_timing():
    from ctrkit.notebook import runner

    sizes = profiles.profile("study")
    secs = runner.estimate(sizes, {"DeepFM": 1.0, "DCN": 1.0, "PNN": 1.0, "FiBiNET": 2.0})
    # 01: 5 seeds + (3 candidates + 4 rounds past an edge x 2 searched keys) x 2 tuning seeds, 30 epochs
    # each, 5 s per epoch of the four models
    assert secs["01_baselines"] == 5.0 * 30 * (5 + (3 + 4 * 2) * 2)
    # 07: 3 variant seeds, 3 finetuning runs (at the finetuning cap, 10) and 9 from scratch (30) each;
    # 03/04 skipped
    assert sizes["finetune_epochs"] == 10
    assert secs["07_variants"] == 5.0 * 3 * (3 * 10 + 9 * 30) and "03_partners" not in secs
    runs = runner.workload(sizes)
    assert runs["03_partners"][0] == 5 * 6 and runs["04_peer_count"][0] == 5 * 11 and runs["07_variants"][0] == 36
    assert set(runner.estimate(sizes, {m: 1.0 for m in sizes["models"]}, ["01_baselines"])) == {"01_baselines"}
    assert runner.workload(profiles.profile("quick"))["02_scratch_vs_finetune"][1] < runs["02_scratch_vs_finetune"][1]
    # 02 under quick: per seed 2 from scratch, the sweep (2 alone + 5 x 2 mutual), KD and the ensemble; its
    # other size (smoke@25%) per seed 4 baselines and its own sweep
    assert runner.workload(profiles.profile("quick"))["02_scratch_vs_finetune"][0] == 5 * (2 + 12 + 2) + 5 * (4 + 12)
    # the timing itself: positive, per model, scaled by the steps of an epoch; `bars` needs the BARS data's name
    full = profiles.profile("full")
    one = runner.epoch_seconds([5, 7, 3], 8192, full, device="cpu", steps=1, bars_data=("criteo", "x1"))
    assert set(one) == set(full["models"]) and all(v > 0 for v in one.values())


def test_reproduce_prints_the_estimate_first_and_progress(tmp_path, monkeypatch):
    """The runner (papermill replaced by a stand-in that records two runs): a line starting "estimated"
    before the first training notebook, then the runs recorded of those planned."""
    import time

    from ctrkit.notebook import runner

    out = tmp_path / "out"
    reproduce.dataset(reproduce.settings(dataset="criteo", profile="smoke", out=str(out)))

    def fake(job, src, out_dir, *, timeout, progress, niceness=0):
        store = ResultsStore(out_dir / job.dataset / "store.jsonl")
        for seed in (1, 2):
            store.append([{"run_key": f"{job.notebook}{seed}", "peer_index": 0, "dataset": "criteo"}])
            time.sleep(0.3)
        dest = job.executed(out_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("{}")
        return dest

    monkeypatch.setattr(runner, "_execute", fake)
    logs = []
    runner.run(runner.Reproduction(dataset="criteo", profile="smoke", out=str(out), only=["00_data", "01_baselines"],
                                   jobs=1), progress=False, log=logs.append, progress_every=0.1)  # _execute patched here
    est = [i for i, line in enumerate(logs) if line.startswith("estimated criteo: at most ~")]
    start = logs.index("[2/2] criteo_01_baselines ...")
    assert est == [start - 1], logs  # once, right before the first training notebook
    assert "01 " in logs[est[0]] and "train rows" in logs[est[0]]
    assert any(line.startswith("[2/2] criteo_01_baselines: ") and "of ~8 runs recorded" in line for line in logs), logs
    assert runner.count_runs(out / "criteo") == 4


def test_strength_end_to_end_under_quick_writes_the_table_and_the_contrast(tmp_path):
    """The quick profile's own sizes at smoke-like scale (1,000 rows, 2 seeds, 2 models, 1 epoch): its
    preset from the main store, the same preset on 25% of the training rows pretrained and finetuned at
    the chosen setting under OUT/<dataset>/sizes/smoke@25%/ with 4x the epochs and patience; the
    strength table, its contrast (paired by seed), and the figure written."""
    import dataclasses

    from ctrkit import experiments

    cfg = reproduce.settings(dataset="criteo", profile="quick", out=str(tmp_path / "o"), rows=1000,
                             seeds=[2021, 2022], epochs=1)
    assert cfg.sizes == ["smoke", "smoke@25%"]  # the profile's, not set here
    cfg = dataclasses.replace(cfg, models=["DeepFM", "DCN"], threads=1, device="cpu")
    data = reproduce.dataset(cfg)
    common = dict(seeds=cfg.seeds, store=cfg.store, preset=cfg.preset, device="cpu", threads=1, amp="off",
                  progress=False)
    experiments.pretrain_baselines(data, cfg.models, cfg.ckpt_dir, epochs=1, **common)
    experiments.run(data, [cfg.models], inits=["pretrained"], modes=["alone", "mutual"], ckpt_dir=cfg.ckpt_dir,
                    weight=[1.0, 10.0], finetune_lr_scale=[1.0], finetune_epochs=1, **common)
    reproduce.export_results(cfg)
    shown, paths = reproduce.strength(cfg, data)
    t = pd.read_csv(cfg.table("strength").with_name("criteo_strength.csv"))
    assert list(t["size"]) == ["smoke", "smoke", "smoke@25%", "smoke@25%"] and (t["n_pairs"] == 2).all()
    other = ResultsStore(cfg.run_dir / "sizes" / "smoke@25%" / "store.jsonl").to_frame()  # read_json: 0.3 != 0.3
    assert set(other["preset"]) == {"smoke"} and set(other["mode"]) == {"baseline", "alone", "mutual"}
    # finetuned over the whole sweep, at the setting its own validation scores chose (not the main size's)
    mutual = other[other["mode"] == "mutual"]
    assert set(zip(mutual["weight"], mutual["finetune_lr_scale"])) == {
        (w, x) for w in cfg.sweep_weights for x in cfg.sweep_lr_scales}
    own = tables.finetune(cfg.run_dir / "sizes" / "smoke@25%" / "store.jsonl")
    row = t[t["size"] == "smoke@25%"]
    assert set(row["weight"]) == set(own["weight"]) and set(row["finetune_lr_scale"]) == set(own["finetune_lr_scale"])
    assert set(row["chosen_on"]) == {"validation"}
    # trained on its share's own data (never the full data's fingerprint), at 4x the epochs and patience
    share = data_module.load(cfg.run_dir / "sizes" / "smoke@25%" / "data")
    assert share.rows["train"] == round(0.25 * data.rows["train"]) and set(other["fingerprint"]) == {share.fingerprint}
    base = other[other["mode"] == "baseline"]
    configs = [json.loads(c) if isinstance(c, str) else c for c in base["config"]]
    assert {c["train"]["patience"] for c in configs} == {4 * cfg.patience}
    assert set(base["max_epochs"]) == {4} and (base["epochs"] > 1).any()  # cap 1 x 4: more than the full data's 1
    assert "smoke@25%: mutual - alone (rel. %)" in shown.frame.columns and len(shown) == 2
    # the contrast: one row per model, smoke - smoke@25% over the 2 shared seeds; with the same seeds in
    # both sizes its means are the strength table's differences
    c = pd.read_csv(cfg.table("strength_contrast").with_name("criteo_strength_contrast.csv"))
    assert list(c["peer"]) == ["DeepFM", "DCN"] and set(c["size_a"]) == {"smoke"} and set(c["size_b"]) == {"smoke@25%"}
    assert (c["n_pairs"] == 2).all() and (c["n_left_out"] == 0).all() and c["p_holm"].notna().all()
    by = t.set_index(["size", "peer"])
    for r in c.itertuples():
        for col, of in (("gain_diff_mean", "rel_pct_mean"), ("pretrained_auc_diff_mean", "pretrained_auc_mean")):
            assert getattr(r, col) == pytest.approx(by.loc[("smoke", r.peer), of] - by.loc[("smoke@25%", r.peer), of])
    contrast_md = cfg.table("strength_contrast").with_name("criteo_strength_contrast.md").read_text()
    assert "one-sample t-test of the per-seed differences" in contrast_md and "Holm across the rows" in contrast_md
    assert "synthetic Criteo-shaped data" in contrast_md and "profile quick" in contrast_md
    written = cfg.table("strength").with_name("criteo_strength.md").read_text()
    assert "paired by seed within each size" in written and written.endswith(contrast_md)
    assert f"smoke@25%: the smoke preset on a fixed 25% of the training rows ({share.rows['train']:,} of " \
           f"{data.rows['train']:,}; the same validation and test rows), epoch cap 4, patience {4 * cfg.patience}" in written
    assert shown._repr_markdown_() == written  # the cell shows the file: both tables
    assert all(p.exists() for p in paths) and paths[0].name == "criteo_gain_vs_strength.png"


@pytest.mark.parametrize("share, k", [(0.25, 4), (0.5, 2), (0.3, 4), (0.99, 2)])
def test_a_share_size_gets_the_steps_of_all_the_rows(tmp_path, share, k):
    """Epoch cap, patience and finetuning epochs times ceil(1 / share): at least the optimizer steps of
    the full data at the same batch; with no cap or patience of the profile's own, the preset's (a
    `bars` preset: the data's dataset and protocol)."""
    import dataclasses

    cfg = reproduce.settings(dataset="criteo", profile="quick", out=str(tmp_path / "o"))
    fm = {"dataset": "criteo", "protocol": "x4_001"}
    epochs, overrides, ft = reproduce._share_budget(cfg, "smoke", share, fm)
    assert (epochs, overrides["patience"], ft) == (cfg.epochs * k, cfg.patience * k, cfg.finetune_epochs * k)
    bare = dataclasses.replace(cfg, epochs=None, patience=None)
    epochs, overrides, _ = reproduce._share_budget(bare, "bars", share, fm)
    assert (epochs, overrides["patience"]) == (100 * k, 2 * k)  # DeepFM's BARS criteo x4_001 run: 100 epochs, patience 2
