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


# ---------------------------------------------------------------- the predictions folder beside a store

SPEC = dict(peers=("DeepFM", "DCN"), mode="mutual", epochs=1, preset="smoke", device="cpu", progress=False, seed=3)


def _error_line(capsys) -> str:
    """The last stderr line of a failed `cli.main` (above it: progress bars), with no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.strip()][-1]


def _mutual_args(data, store, *extra):
    return ["mutual", "--data", str(data.path), "--peers", "DeepFM,DCN", "--init", "scratch", "--preset", "smoke",
            "--device", "cpu", "--seed", "3", "--epochs", "1", "--store", str(store), *extra]


def test_a_killed_predictions_writers_temp_files_are_removed_by_the_next_run_of_it(criteo_small, tmp_path):
    """A run killed while saving its predictions leaves `atomic_path`'s temp file in predictions/<key>;
    the run again (under its claim on the key) removes it, but not a temp file young enough to be a
    live writer's (a second store in the same folder shares predictions/, not its claims), nor files
    of other names or of other runs."""
    import os
    import time

    store = ResultsStore(tmp_path / "store.jsonl")
    spec = runs.RunSpec(**SPEC)
    run_dir = churn.predictions_dir(store.path) / spec.key(criteo_small.fingerprint)
    run_dir.mkdir(parents=True)
    other_run = run_dir.parent / "another_key"
    other_run.mkdir()
    stale = [run_dir / ".DCN.npy.7emaoupe.tmp", run_dir / ".DeepFM.npy.a_b0c1d2.tmp"]
    keep = [run_dir / ".DCN.npy.backup.tmp", run_dir / ".notes.txt.7emaoupe.tmp", run_dir / "DCN.npy.7emaoupe.tmp",
            other_run / ".DCN.npy.7emaoupe.tmp"]
    an_hour_ago = time.time() - 3600
    for p in stale + keep:
        p.write_bytes(b"\0" * 100)
        os.utime(p, (an_hour_ago, an_hour_ago))
    live = run_dir / ".DCN.npy.livewrit.tmp"  # being written right now by another store's identical run
    live.write_bytes(b"\0" * 10)
    runs.execute(spec, criteo_small, store=store)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep) and live.exists()
    assert (run_dir / "DCN.npy").is_file() and (run_dir / "DeepFM.npy").is_file()


def test_predictions_that_the_disk_cannot_take_are_one_line_naming_the_file(criteo_small, tmp_path, monkeypatch,
                                                                                capsys):
    """A full disk while the predictions are saved: `ctrkit: error:` naming the .npy (it said only
    "No space left on device"), no temp file left, nothing recorded in the store."""
    import errno

    from ctrkit import cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() raises it: no file name

    monkeypatch.setattr(np, "save", full)
    store = tmp_path / "store.jsonl"
    assert cli.main(_mutual_args(criteo_small, store)) == 2
    key = runs.RunSpec(**SPEC, init="scratch").key(criteo_small.fingerprint)
    path = churn.predictions_dir(store) / key / "DeepFM.npy"
    assert _error_line(capsys) == f"ctrkit: error: cannot write the test predictions {path}: No space left on device"
    assert not list(tmp_path.rglob("*.tmp")) and not store.exists()


def test_a_file_named_predictions_beside_the_store_is_refused_before_training(criteo_small, tmp_path, monkeypatch,
                                                                               capsys):
    """The predictions of a stored run go in <store folder>/predictions: a user's file of that name
    was found only after the whole training (and not named). Now one line naming it, before any
    run trains, from the CLI and from a grid, and the file is left as it was."""
    from ctrkit import cli, experiments
    from ctrkit.core.utils import CtrkitError

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the predictions could not be saved")

    monkeypatch.setattr(runs, "run", no_training)
    monkeypatch.setattr(runs, "run_many", no_training)
    mine = tmp_path / "predictions"
    mine.write_text("my predictions\n")
    store = tmp_path / "store.jsonl"
    want = (f"results store {store}: {mine} is not a folder (the test predictions of the runs recorded there go in "
            f"it): move it away, or use another store; nothing was trained")
    assert cli.main(_mutual_args(criteo_small, store)) == 2
    assert _error_line(capsys) == f"ctrkit: error: {want}"
    with pytest.raises(CtrkitError) as e:
        experiments.run(criteo_small, [["DeepFM", "DCN"]], modes=["mutual"], inits=["scratch"], seeds=[3],
                        preset="smoke", epochs=1, device="cpu", progress=False, store=store)
    assert str(e.value) == want
    assert mine.read_text() == "my predictions\n" and not store.exists()
