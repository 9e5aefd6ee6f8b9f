"""The `study` profile's baseline search: candidates chosen on validation only (a planted test leak
fails the check), the tuning table, and a small real search end to end on synthetic rows."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

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


def test_study_profile_sizes():
    p = profiles.profile("study")
    assert len(p["seeds"]) == 10 and p["epochs"] >= 20 and p["patience"] >= 2 and p["tune"][0] == {}
    assert len(p["sweep_weights"]) * len(p["sweep_lr_scales"]) >= 10 and p["tune_seeds"]


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
    assert reproduce.tune(dataclasses.replace(cfg, tune=[]), data) == {}
