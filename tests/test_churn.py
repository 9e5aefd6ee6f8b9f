"""Prediction churn: the measures on hand numbers, a run's churn with itself, what a run records and saves."""
import json

import numpy as np
import pytest
import torch

from ctrkit.experiments import churn, runs
from ctrkit.experiments.store import ResultsStore


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread


def test_churn_of_predictions_with_themselves_is_zero():
    p = np.random.default_rng(0).random(101)
    assert churn.churn(p, p) == {"mean_abs": 0.0, "top_decile_flip": 0.0}
    assert churn.peer_churn(np.stack([p, p, p])) == [{"mean_abs": 0.0, "top_decile_flip": 0.0}] * 3


def test_churn_measures_on_hand_numbers():
    a = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55])  # 11 rows: top decile = 2
    b = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55])
    assert churn.top_decile(a).nonzero()[0].tolist() == [0, 1]
    assert churn.top_decile(b).nonzero()[0].tolist() == [0, 2]
    assert churn.top_decile_flip(a, b) == pytest.approx(2 / 11)   # rows 1 and 2 change membership
    assert churn.mean_abs(a, b) == pytest.approx(1.4 / 11)
    # ties: row order decides, so equal scores give the same decile
    assert churn.top_decile(np.zeros(20)).nonzero()[0].tolist() == [0, 1]


def test_peer_churn_averages_over_the_partners():
    p = np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    got = churn.peer_churn(p)
    assert [g["mean_abs"] for g in got] == pytest.approx([0.75, 0.75, 0.5])
    assert churn.peer_churn(p[:1]) == [None]


def test_a_run_records_its_peer_churn_and_saves_its_predictions(criteo_small, tmp_path):
    store = ResultsStore(tmp_path / "store.jsonl")
    spec = runs.RunSpec(peers=("DeepFM", "DCN"), mode="mutual", epochs=1, preset="smoke", device="cpu",
                        progress=False, seed=3)
    recs, _ = runs.execute(spec, criteo_small, store=store)
    key = recs[0]["run_key"]
    folder = churn.predictions_dir(store.path)
    saved = [churn.load_predictions(folder, key, label) for label in spec.peers]
    assert all(s is not None and s.dtype == np.float32 and len(s) == len(criteo_small.numpy("test")[1]) for s in saved)
    want = churn.churn(saved[0], saved[1])
    for r in recs:
        assert r["peer_churn_abs"] == pytest.approx(want["mean_abs"], rel=1e-5)
        assert r["peer_churn_top10"] == pytest.approx(want["top_decile_flip"], abs=1 / len(saved[0]))
    line = json.loads(store.path.read_text().splitlines()[0])
    assert "test_probs" not in line and "share_embedding" not in line and len(store.path.read_text()) < 10_000
    # the saved predictions are the run's: the recorded test AUC is theirs
    from ctrkit.training.metrics import auc
    _, y = criteo_small.numpy("test")
    assert auc(np.asarray(y), saved[0].astype(np.float64)) == pytest.approx(recs[0]["test_auc"], abs=1e-6)


def test_a_one_peer_run_records_no_peer_churn(criteo_small):
    result = runs.run(runs.RunSpec(peers=("DCN",), mode="alone", epochs=1, preset="smoke", device="cpu",
                                   progress=False), criteo_small)
    assert result["peers"][0]["peer_churn"] is None and result["test_probs"].shape[0] == 1
