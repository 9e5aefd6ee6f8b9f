"""A process reads each pretrained checkpoint once and scores it once (ctrkit.experiments.pretrained):
the cached checkpoint and scores are the ones read and measured afresh, a rewritten file is read
again, other data is scored again, and a finetuning grid's records do not depend on the caches."""
import json
import shutil

import pytest
import torch

from ctrkit import data as ctrdata
from ctrkit import experiments
from ctrkit.experiments import pretrained, runs
from ctrkit.training import checkpoint
from ctrkit.training.evaluation import predict, scores

VOLATILE = {"seconds", "env_info", "append_id", "written_at", "checkpoint", "run_key"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained_cache")
    d = ctrdata.synthetic_dataset("criteo", 800, root / "data", seed=2021)
    experiments.pretrain_baselines(d, ["DeepFM", "FiBiNET"], root / "ck", preset="smoke", seeds=[1], epochs=1,
                                   device="cpu", threads=1, progress=False)
    return d, root


def test_a_checkpoint_is_read_once_until_it_is_rewritten(setup, monkeypatch):
    d, root = setup
    path = runs.checkpoint_path(runs.seed_dir(root / "ck", 1), "DeepFM")
    pretrained.clear()
    reads = []
    real = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda p: reads.append(p) or real(p))
    first = pretrained.read(path)
    assert pretrained.read(path) is first and len(reads) == 1
    fresh = real(path)
    assert all(torch.equal(first["state_dict"][k], v) for k, v in fresh["state_dict"].items())
    copy = path.with_name("copy.pt")
    shutil.copyfile(path, copy)
    copy.replace(path)  # what an atomic rewrite does: a new file at the same path
    assert pretrained.read(path) is not first and len(reads) == 2
    m1, meta1 = pretrained.load(path, "cpu", expect_fingerprint=d.fingerprint, expect_model="DeepFM")
    m2, _ = pretrained.load(path, "cpu", expect_fingerprint=d.fingerprint, expect_model="DeepFM")
    assert m1 is not m2 and meta1["path"] == str(path) and len(reads) == 2
    with torch.no_grad():
        next(m1.parameters()).add_(1.0)  # a run trains its own copy: the next model starts from the file
    m3, _ = pretrained.load(path, "cpu", expect_fingerprint=d.fingerprint, expect_model="DeepFM")
    assert all(torch.equal(a, b) for a, b in zip(m2.state_dict().values(), m3.state_dict().values()))


def test_scores_are_measured_once_per_file_and_data(setup, tmp_path):
    d, root = setup
    pretrained.clear()
    path = runs.checkpoint_path(runs.seed_dir(root / "ck", 1), "FiBiNET")
    model, _ = pretrained.load(path, "cpu")
    X, y = d.tensors("test", "cpu")
    want = scores(y, predict(model, X, 4096))
    got = pretrained.scores(model, path, d, "cpu", 4096)
    assert got["test"] == want
    assert pretrained.scores(None, path, d, "cpu", 4096) == got  # from memory: the model is not used
    other = ctrdata.synthetic_dataset("criteo", 600, tmp_path / "other", seed=7)
    with pytest.raises(AttributeError):  # another data object is scored again (here: with no model)
        pretrained.scores(None, path, other, "cpu", 4096)


def test_a_finetuning_grid_gives_the_same_records_with_and_without_the_caches(setup, tmp_path, monkeypatch):
    d, root = setup
    grid = dict(inits=["pretrained"], modes=["alone", "mutual"], weight=[1.0, 10.0], seeds=[1], preset="smoke",
                ckpt_dir=root / "ck", finetune_epochs=1, device="cpu", threads=1, progress=False)
    pretrained.clear()
    experiments.run(d, [["DeepFM", "FiBiNET"]], store=tmp_path / "cached.jsonl", **grid)
    calls = []

    def afresh(model, path, data, device, batch_size):  # every run scores its checkpoints again
        calls.append(path)
        return {s: scores(data.tensors(s, device)[1], predict(model, data.tensors(s, device)[0], batch_size))
                for s in ("valid", "test")}

    monkeypatch.setattr(pretrained, "read", checkpoint.load_checkpoint)  # every run reads its files again
    monkeypatch.setattr(pretrained, "scores", afresh)
    experiments.run(d, [["DeepFM", "FiBiNET"]], store=tmp_path / "fresh.jsonl", **grid)

    def stored(p):
        return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in p.read_text().splitlines()]

    cached, fresh = stored(tmp_path / "cached.jsonl"), stored(tmp_path / "fresh.jsonl")
    assert len(cached) == 6 and cached == fresh and len(calls) == 6  # 3 runs x 2 pretrained peers
    assert all(r["pretrained_test_auc"] is not None for r in cached)


def test_a_checkpoint_scored_by_its_own_run_here_is_not_measured_again(setup, tmp_path, monkeypatch):
    """A baseline's best.pt keeps the valid/test scores its run measured and how (`scored_by`); a
    process finetuning it on the same data, machine and code takes them as they are (they are the
    bits measuring gives), and measures them where anything differs."""
    d, root = setup
    path = runs.checkpoint_path(runs.seed_dir(root / "ck", 1), "FiBiNET")
    ck = checkpoint.load_checkpoint(path)
    bs = ck["train_config"]["eval_batch_size"]
    assert ck["scored_by"] == checkpoint.scored_by("cpu", bs) and ck["scored_by"]["eval_batch_size"] == bs
    model, _ = pretrained.load(path, "cpu")
    measured = {s: scores(d.tensors(s)[1], predict(model, d.tensors(s)[0], bs)) for s in ("valid", "test")}
    calls = []
    monkeypatch.setattr(pretrained, "predict", lambda *a, **k: calls.append(1) or predict(*a, **k))
    pretrained.clear()
    assert pretrained.scores(model, path, d, "cpu", bs) == measured and calls == []
    assert pretrained.scores(model, path, d, "cpu", bs // 2) == measured and len(calls) == 2  # another batch size
    # the same file scored under other maths (or machine, device, data): measured here
    other = tmp_path / "best.pt"
    checkpoint.save({**ck, "scored_by": {**ck["scored_by"], "maths": "0" * 16}}, other)
    assert pretrained.scores(model, other, d, "cpu", bs) == measured and len(calls) == 4
    checkpoint.save({k: v for k, v in ck.items() if k != "scored_by"}, other)  # written before scored_by existed
    assert pretrained.scores(model, other, d, "cpu", bs) == measured and len(calls) == 6


def test_a_stored_run_is_not_reused_once_its_checkpoint_was_pretrained_again(setup, tmp_path):
    """A finetuning run in the store came from the checkpoints then in ckpt_dir; after one of them is
    pretrained again (other settings, same folder) the stored run is not returned as this one's: a
    one-line error, and --force trains it from the new checkpoint."""
    from ctrkit.core.utils import CtrkitError

    d, _ = setup
    ck, store = tmp_path / "ck", tmp_path / "s.jsonl"
    base = dict(preset="smoke", seeds=[1], device="cpu", threads=1, progress=False)
    experiments.pretrain_baselines(d, ["DeepFM", "FiBiNET"], ck, epochs=1, **base)
    grid = dict(inits=["pretrained"], modes=["mutual"], ckpt_dir=ck, finetune_epochs=1, store=store, **base)
    first = experiments.run(d, [["DeepFM", "FiBiNET"]], **grid)
    assert first["checkpoint_key"].notna().all()
    experiments.run(d, [["DeepFM", "FiBiNET"]], **grid)  # the same checkpoints: reused, nothing appended
    assert len(store.read_text().splitlines()) == 2
    experiments.pretrain_baselines(d, ["DeepFM"], ck, epochs=2, **base)  # other weights in the same folder
    with pytest.raises(CtrkitError, match="finetuned from an earlier DeepFM checkpoint .* pretrained again since.*force=True; "
                                          "the widget.s re-run box"):
        experiments.run(d, [["DeepFM", "FiBiNET"]], **grid)
    again = experiments.run(d, [["DeepFM", "FiBiNET"]], force=True, **grid)
    assert len(store.read_text().splitlines()) == 4
    assert (again.set_index("peer").loc["DeepFM", "pretrained_test_auc"]
            != first.set_index("peer").loc["DeepFM", "pretrained_test_auc"])


def _strip_preset(ck) -> None:
    """result.json as written before it recorded the baseline's preset."""
    for rj in ck.rglob("result.json"):
        old = json.loads(rj.read_text())
        del old["preset"]
        rj.write_text(json.dumps(old))


def test_a_run_refuses_a_preset_other_than_its_checkpoints(setup, tmp_path):
    """A pretrained peer is its checkpoint's model and training settings, so a finetuning run records
    the preset the checkpoints were pretrained with or none: smoke checkpoints finetuned under
    preset "quick" were recorded as quick models. Refused before anything trains, in one line."""
    from ctrkit.core.utils import CtrkitError

    d, root = setup
    assert all(json.loads(rj.read_text())["preset"] == "smoke" for rj in (root / "ck").rglob("result.json"))
    grid = dict(inits=["pretrained"], modes=["mutual", "alone"], seeds=[1], ckpt_dir=root / "ck", finetune_epochs=1,
                device="cpu", threads=1, progress=False)
    store = tmp_path / "s.jsonl"
    with pytest.raises(CtrkitError) as e:
        experiments.run(d, [["DeepFM", "FiBiNET"]], preset="quick", store=store, **grid)
    path = runs.checkpoint_path(runs.seed_dir(root / "ck", 1), "DeepFM")
    assert str(e.value) == (f"checkpoint {path} was pretrained with preset 'smoke', but this run has preset 'quick' "
                            f"(a pretrained peer keeps its checkpoint's model and training settings, and the run "
                            f"records its preset): pass preset='smoke' (--preset smoke), or pretrain it again with "
                            f"preset 'quick'")
    assert not store.exists()  # nothing ran
    df = experiments.run(d, [["DeepFM", "FiBiNET"]], preset="smoke", store=store, **grid)
    assert len(df) == 4 and set(df["preset"]) == {"smoke"}


def test_a_checkpoint_without_a_recorded_preset_is_accepted_and_gets_it_when_reused(setup, tmp_path):
    """Checkpoints pretrained before result.json recorded the preset pass as before; pretrain_baselines
    reusing one (its run key holds the preset) records it, and from then on the check applies."""
    from ctrkit.core.utils import CtrkitError

    d, root = setup
    ck = tmp_path / "ck"
    shutil.copytree(root / "ck", ck)
    _strip_preset(ck)
    grid = dict(inits=["pretrained"], modes=["alone"], seeds=[1], ckpt_dir=ck, finetune_epochs=1, device="cpu",
                threads=1, progress=False)
    assert set(experiments.run(d, [["DeepFM", "FiBiNET"]], preset="quick", **grid)["preset"]) == {"quick"}
    best = runs.checkpoint_path(runs.seed_dir(ck, 1), "DeepFM")
    stamp = best.stat().st_mtime_ns
    experiments.pretrain_baselines(d, ["DeepFM", "FiBiNET"], ck, preset="smoke", seeds=[1], epochs=1, device="cpu",
                                   threads=1, progress=False)  # the setup's call: reused, not trained again
    assert best.stat().st_mtime_ns == stamp
    assert all(json.loads(rj.read_text())["preset"] == "smoke" for rj in ck.rglob("result.json"))
    with pytest.raises(CtrkitError, match="was pretrained with preset 'smoke', but this run has preset 'quick'"):
        experiments.run(d, [["DeepFM", "FiBiNET"]], preset="quick", **grid)


def test_a_finished_pretraining_is_reused_only_while_best_pt_is_the_file_it_wrote(setup, tmp_path, monkeypatch,
                                                                                   capsys):
    """result.json records best.pt's size and sha256; a finished pretraining is reused only while its
    best.pt is that file (it was reused truncated), and then reports where it is now, not where it
    was written (a copied or moved folder). A changed one is a one-line error and left as it is.
    A result.json from before it recorded them is taken as before."""
    import hashlib

    from ctrkit import cli
    from ctrkit.core.utils import CtrkitError

    d, root = setup
    ck = tmp_path / "moved"
    shutil.copytree(root / "ck", ck)
    best = runs.checkpoint_path(runs.seed_dir(ck, 1), "DeepFM")
    whole, result_json = best.read_bytes(), best.parent / "result.json"

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(runs, "fit", no_training)
    monkeypatch.setattr(runs, "fit_replicas", no_training)
    again = dict(preset="smoke", seeds=[1], epochs=1, device="cpu", threads=1, progress=False)
    df = experiments.pretrain_baselines(d, ["DeepFM"], ck, **again)
    assert df["checkpoint"].tolist() == [str(best)]  # not setup's folder, where it was written
    assert json.loads(result_json.read_text())["checkpoint_digest"] == {
        "bytes": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}
    cut = whole[:-1000]
    best.write_bytes(cut)
    with pytest.raises(CtrkitError) as e:
        experiments.pretrain_baselines(d, ["DeepFM"], ck, **again)
    assert str(e.value) == (f"checkpoint {best}: not the file its pretraining wrote ({len(cut)} bytes, not the "
                            f"{len(whole)} written; result.json beside it records its size and sha256): not reused "
                            f"and not overwritten (restore it, or remove it and run again to pretrain it again, or "
                            f"use another --out / out_dir)")
    args = ["pretrain", "--data", str(d.path), "--model", "DeepFM", "--preset", "smoke", "--seed", "1", "--epochs", "1",
            "--device", "cpu", "--threads", "1", "--out", str(best.parent), "--resume"]
    assert cli.main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"ctrkit: error: {e.value}"]
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF
    best.write_bytes(bytes(flipped))
    with pytest.raises(CtrkitError, match=r"not the file its pretraining wrote \(other bytes than written \(sha256 "
                                          r"differs, same size"):
        experiments.pretrain_baselines(d, ["DeepFM"], ck, **again)
    assert best.read_bytes() == bytes(flipped)  # left for the user to look at
    best.write_bytes(whole)
    old = json.loads(result_json.read_text())
    del old["checkpoint_digest"]
    result_json.write_text(json.dumps(old))  # as written before it held the digest
    assert experiments.pretrain_baselines(d, ["DeepFM"], ck, **again)["checkpoint"].tolist() == [str(best)]
