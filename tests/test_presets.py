"""Preset tests: every preset builds its model and carries exactly the TrainConfig keys; BARS values
match the run configs (hand-read spot checks, and the anchors file when /work/shared is present)."""
import ast
import csv
import json
import re
from pathlib import Path

import pytest

import ctrkit.models as M
from ctrkit.training import presets
from ctrkit.core.utils import CtrkitError

ANCHORS = Path(__file__).resolve().parents[1] / ".." / "shared" / "anchors"
DATASETS = [(d, p) for d in presets.DATASETS for p in presets.PROTOCOLS]
TRAIN_TYPES = {"batch_size": int, "lr": float, "embedding_regularizer": float, "net_regularizer": float,
               "epochs": int, "patience": int, "monitor": str}


def _check_train(train):
    assert set(train) == set(presets.TRAIN_KEYS)
    for k, t in TRAIN_TYPES.items():
        assert type(train[k]) is t, (k, train[k])
    assert train["monitor"] in ("AUC", "AUC-logloss")
    assert train["batch_size"] > 0 and train["lr"] > 0 and train["epochs"] >= 1


def test_names():
    assert presets.names() == ["smoke", "quick", "bars", "full"]


@pytest.mark.parametrize("name", list(M.MODELS))
def test_full_preset_is_bars_like_for_any_dataset(name):
    """`full`: no dataset or protocol needed; the BARS-like sizes; the softer plateau schedule."""
    p = presets.get(name, "full")
    other = presets.get(name, "full", dataset="adult")  # any dataset (a schema's): the same sizes
    assert p.dataset is None and (other.model, other.train) == (p.model, p.train)
    assert set(p.train) == set(presets.TRAIN_KEYS) | {"lr_decay"}
    assert p.train["batch_size"] == 4096 and p.train["lr"] == 0.001 and p.train["lr_decay"] == 0.5
    assert p.train["patience"] == 3 and p.train["embedding_regularizer"] == 1e-05
    if "hidden_units" in p.model:
        assert p.model["hidden_units"] == [400, 400, 400] and p.model["net_dropout"] == 0.2
        assert p.model["embedding_dim"] == 16 and p.model["hidden_activations"] == "ReLU"
    m = M.build(name, [4, 6, 3], **p.model)
    assert m.hparams == {**M.hparam_defaults(name), **p.model}
    from ctrkit.training.config import TrainConfig, RUN_TRAIN_KEYS
    assert TrainConfig.from_dict({k: v for k, v in p.train.items() if k not in RUN_TRAIN_KEYS}).lr_decay == 0.5


def test_full_preset_interaction_settings_are_the_bars_winners_majority():
    assert presets.get("DCN", "full").model["num_cross_layers"] == 3
    fib = presets.get("FiBiNET", "full").model
    assert fib["reduction_ratio"] == 3 and fib["bilinear_type"] == "field_interaction"
    wins = [presets.get("FiBiNET", "bars", dataset=d, protocol=p).model for d in presets.DATASETS
            for p in presets.PROTOCOLS]
    assert sum(w["bilinear_type"] == "field_interaction" and w["reduction_ratio"] == 3 for w in wins) >= 4
    assert "full" in json.loads((Path(presets.__file__).parent / "presets.json").read_text())["sources"]


@pytest.mark.parametrize("name", list(M.MODELS))
@pytest.mark.parametrize("preset", ["smoke", "quick"])
def test_small_presets_build(name, preset):
    p = presets.get(name, preset)
    _check_train(p.train)
    m = M.build(name, [4, 6, 3], **p.model)
    assert m.hparams == {**M.hparam_defaults(name), **p.model}


def test_smoke_and_quick_sizes():
    s, q = presets.get("DeepFM", "smoke"), presets.get("DeepFM", "quick")
    assert s.model["embedding_dim"] == 4 and s.model["hidden_units"] == [16]
    assert s.train["batch_size"] == 512 and s.train["epochs"] == 1
    assert 8 <= q.model["embedding_dim"] <= 16 and 1024 <= q.train["batch_size"] <= 4096
    assert presets.get("FiBiNET", "quick").model["bilinear_type"] == "field_interaction"


@pytest.mark.parametrize("name", list(M.MODELS))
def test_bars_presets_are_valid_hparams(name):
    for dataset, protocol in DATASETS:
        p = presets.get(name, "bars", dataset=dataset, protocol=protocol)
        _check_train(p.train)
        assert p.source["source"].startswith("reczoo/BARS ") and p.dataset == dataset
        hp = dict(p.model)
        if "hidden_units" in hp:  # keep the test fast: same depth, tiny widths
            hp["hidden_units"] = [2] * len(hp["hidden_units"])
        M.build(name, [4, 6, 3], **hp)


def test_bars_spot_values_hand_read_from_the_run_configs():
    p = presets.get("DeepFM", "bars", dataset="criteo", protocol="x4_001")
    assert p.model == {"embedding_dim": 16, "hidden_units": [1000] * 5, "hidden_activations": "relu",
                       "net_dropout": 0.2, "batch_norm": False}
    assert p.train == {"batch_size": 10000, "lr": 0.001, "embedding_regularizer": 1e-05, "net_regularizer": 0.0,
                       "epochs": 100, "patience": 2, "monitor": "AUC-logloss"}
    dcn = presets.get("DCN", "bars", dataset="criteo", protocol="x4_002")
    assert dcn.model["num_cross_layers"] == 6 and dcn.train["embedding_regularizer"] == 1e-5  # 'l2(1.e-5)'
    fib = presets.get("FiBiNET", "bars", "avazu_x1")  # "<dataset>_<protocol>" form
    assert fib.model["bilinear_type"] == "field_all" and fib.model["batch_norm"] is True
    assert fib.train["monitor"] == "AUC" and fib.train["batch_size"] == 4096
    fm = presets.get("FM", "bars", "criteo", "x4_002")
    assert fm.model == {"embedding_dim": 40} and fm.train["embedding_regularizer"] == 1e-6 == fm.train["net_regularizer"]
    assert presets.get("IPNN", "bars", "avazu", "x4_001").model["hidden_units"] == [1000, 1000, 1000]


@pytest.mark.skipif(not (ANCHORS / "bars-configs" / "bars_winning_configs.json").exists(),
                    reason="../shared/anchors (beside the repository) not present")
def test_bars_presets_equal_the_anchor_configs():
    raw = json.loads((ANCHORS / "bars-configs" / "bars_winning_configs.json").read_text())
    for key, entry in raw.items():
        name, ds = key.split("/")
        cfg = entry["params"]
        p = presets.get(name, "bars", ds)
        units = cfg.get("hidden_units", cfg.get("dnn_hidden_units"))
        assert p.model["hidden_units"] == ast.literal_eval(units), key
        assert p.model["embedding_dim"] == int(cfg["embedding_dim"]), key
        assert p.model["net_dropout"] == float(cfg["net_dropout"]), key
        assert p.model["batch_norm"] == (cfg["batch_norm"] == "True"), key
        assert p.train["batch_size"] == int(cfg["batch_size"]) and p.train["lr"] == float(cfg["learning_rate"])
        reg = re.sub(r"^l2\((.*)\)$", r"\1", cfg["embedding_regularizer"])
        assert p.train["embedding_regularizer"] == float(reg), key
        assert p.train["patience"] == int(cfg["patience"]), key
        assert p.train["monitor"] == ("AUC" if cfg["monitor"] == "AUC" else "AUC-logloss"), key
        if name == "DCN":
            assert p.model["num_cross_layers"] == int(cfg["crossing_layers"]), key
        if name == "FiBiNET":
            assert p.model["reduction_ratio"] == int(cfg["reduction_ratio"])
            assert p.model["bilinear_type"] == cfg["bilinear_type"]
        assert p.source["source"] == entry["source"]


def test_bars_preset_errors():
    with pytest.raises(CtrkitError, match="preset 'bars' needs dataset"):
        presets.get("DeepFM", "bars")
    with pytest.raises(CtrkitError, match="unknown dataset 'kdd12'; valid: criteo, avazu"):
        presets.get("DeepFM", "bars", dataset="kdd12", protocol="x1")
    with pytest.raises(CtrkitError, match="unknown protocol 'x2'"):
        presets.get("DeepFM", "bars", dataset="criteo", protocol="x2")
    with pytest.raises(CtrkitError, match="unknown preset 'fast'; valid: smoke, quick, bars"):
        presets.get("DeepFM", "fast")
    with pytest.raises(CtrkitError, match="unknown model 'Wide'"):
        presets.get("Wide", "smoke")


def test_returned_presets_are_copies():
    p = presets.get("DCN", "quick")
    p.model["hidden_units"].append(7)
    p.train["lr"] = 1.0
    again = presets.get("DCN", "quick")
    assert again.model["hidden_units"] == [64, 64] and again.train["lr"] == 0.001


def test_bars_results_cover_models_and_datasets():
    rows = presets.bars_results()
    assert {(r["model"], r["dataset"], r["protocol"]) for r in rows} == \
        {(m, d, p) for m in M.MODELS for d, p in DATASETS} | {(m, d, "x1") for m in M.MODELS for d in presets.SMALL_DATASETS}
    assert len(rows) == 48 and "reczoo/BARS" in presets.bars_source()
    (deepfm,) = presets.bars_results("DeepFM", "criteo", "x4_001")
    assert (deepfm["auc"], deepfm["logloss"]) == (0.8143, 0.4376)  # hand-read from the BARS leaderboard
    (ipnn,) = presets.bars_results("PNN", "avazu", "x4_002")
    assert ipnn["bars_name"] == "IPNN" and ipnn["auc"] == 0.7988
    for bad in ({"dataset": "critieo"}, {"protocol": "x4-001"}):  # read as "no leaderboard row" before
        with pytest.raises(CtrkitError, match=f"unknown {next(iter(bad))} '{next(iter(bad.values()))}'; the "
                                              f"leaderboard has .*(criteo|x4_001)"):
            presets.bars_results(**bad)


@pytest.mark.skipif(not ANCHORS.exists(), reason="../shared/anchors (beside the repository) not present")
def test_bars_results_equal_the_anchor_leaderboards():
    for d, p in DATASETS:
        with open(ANCHORS / f"leaderboard_{d}_{p}.csv") as fh:
            board = {r["Model"]: r for r in csv.DictReader(fh)}
        for r in presets.bars_results(dataset=d, protocol=p):
            src = board[r["bars_name"]]
            assert (r["auc"], r["logloss"]) == (float(src["AUC"]), float(src["Logloss"]))
