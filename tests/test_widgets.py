"""The peer selector, driven headless: set the controls, click Train, find the run in the store."""
from __future__ import annotations

import pytest

from ctrkit import experiments, widgets
from ctrkit.store import ResultsStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pretrained(criteo_small, tmp_path_factory):
    """Tiny real checkpoints of FM and DeepFM (smoke preset, 1 epoch) in the experiments layout."""
    ckpt = tmp_path_factory.mktemp("ckpt")
    experiments.pretrain_baselines(criteo_small, ["FM", "DeepFM"], ckpt, preset="smoke", seeds=[2021], epochs=1,
                                   device="cpu", progress=False)
    return ckpt


def test_train_button_runs_real_peers_and_records_them(criteo_small, pretrained, tmp_path):
    store = tmp_path / "store.jsonl"
    sel = widgets.PeerSelector(criteo_small, store=store, ckpt_dir=pretrained, preset="smoke", device="cpu")
    # the checkpoint folder is found and the pretrained models are marked
    assert sel.checkpoints.value == str(pretrained / "seed2021")
    assert ("FM  ✓ pretrained", "FM") in sel.peers.options and ("DCN", "DCN") in sel.peers.options

    sel.peers.value = ("FM", "DeepFM")
    sel.init.value, sel.mode.value = "pretrained", "mutual"
    sel.weight.value, sel.epochs.value, sel.seed.value = 0.5, 1, 7
    sel.train_button.click()

    assert sel.last_error is None, sel.last_error
    recs = [r for r in ResultsStore(store).records() if r["seed"] == 7]
    assert sorted(r["peer"] for r in recs) == ["DeepFM", "FM"]
    assert {(r["mode"], r["init"], r["weight"], r["n_peers"]) for r in recs} == {("mutual", "pretrained", 0.5, 2)}
    for r in recs:
        assert 0.0 < r["test_auc"] < 1.0 and 0.0 < r["pretrained_test_auc"] < 1.0
    # the curve (per-peer validation AUC per epoch) and the result table are shown
    assert sel.curve.value[:8] == PNG_MAGIC and len(sel.history) == 1
    assert "DeepFM" in sel.result.value and "test_auc" in sel.result.value and "delta_auc" in sel.result.value
    assert "2 records appended" in sel.status.value
    assert set(sel.table()["peer"]) == {"FM", "DeepFM"}

    # the same run again is found in the store, not repeated
    sel.train_button.click()
    assert sel.skipped and "already in the store" in sel.status.value
    assert len(ResultsStore(store).records()) == 2

    # from scratch, alone: one peer is enough
    sel.peers.value, sel.init.value, sel.mode.value = ("DCN",), "scratch", "alone"
    sel.train_button.click()
    assert sel.last_error is None, sel.last_error
    assert [r["peer"] for r in ResultsStore(store).records() if r["init"] == "scratch"] == ["DCN"]


def test_errors_are_shown_inside_the_widget(criteo_small, pretrained, tmp_path):
    store = tmp_path / "store.jsonl"
    sel = widgets.PeerSelector(criteo_small, store=store, ckpt_dir=pretrained, preset="smoke", device="cpu")
    sel.peers.value, sel.init.value, sel.mode.value = ("FM", "PNN"), "pretrained", "mutual"
    sel.train_button.click()
    assert "missing checkpoint(s) for PNN" in sel.last_error
    assert "Error:" in sel.error.value and "missing checkpoint(s) for PNN" in sel.error.value
    assert not store.exists()

    sel.peers.value, sel.mode.value = ("FM",), "mutual"
    sel.train_button.click()
    assert "needs at least 2 peers; 1 selected" in sel.error.value

    # a failure inside the run (not a CtrkitError) is shown with its traceback
    sel.peers.value, sel.init.value = ("FM", "DeepFM"), "scratch"
    sel.preset = "no-such-preset"
    sel.train_button.click()
    assert sel.last_error and "no-such-preset" in sel.last_error
    assert "no-such-preset" in sel.error.value
    assert not sel.train_button.disabled

    # no checkpoints at all: pretrained is refused with a pointer to 01_baselines
    empty = widgets.PeerSelector(criteo_small, store=store, ckpt_dir=tmp_path / "none", preset="smoke", device="cpu")
    assert empty.init.value == "scratch"
    empty.init.value = "pretrained"
    empty.train_button.click()
    assert "run 01_baselines first" in empty.error.value
