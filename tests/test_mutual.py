import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from ctrkit import cli, experiments, models
from ctrkit.training import checkpoint, evaluation, metrics, mutual, optim, presets, rng, loop as train
from ctrkit.training.config import RunConfig
from ctrkit.experiments import runs
from ctrkit.analysis import tables
from ctrkit.training.losses import mutual_losses
from ctrkit.training.mutual import mutual_fit
from ctrkit.experiments.store import ResultsStore
from ctrkit.core.utils import CtrkitError, seed_everything

FOUR = ["DeepFM", "DCN", "PNN", "FiBiNET"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread
FAST = dict(preset="smoke", device="cpu", progress=False)


def run_mutual(data, peers, *, out_dir=None, resume=False, callback=None, **settings):
    """One run of these settings through the orchestration (`runs.run`: no store)."""
    return runs.run(runs.RunSpec(peers=tuple(peers), **settings), data, out_dir=out_dir, resume=resume,
                    callback=callback)


def _smoke_model(name, data, seed):
    seed_everything(seed)
    return models.build(name, data.field_sizes, **presets.get(name, "smoke").model)


def _smoke_train(name, **changes):
    return RunConfig.single({**presets.get(name, "smoke").train, "device": "cpu", "progress": False, **changes})


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, criteo_small, avazu_small):
    """Smoke baselines of the four paper models on both datasets, seed 1 (1 epoch each)."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for d in (criteo_small, avazu_small):
        experiments.pretrain_baselines(d, FOUR, root / d.dataset, preset="smoke", seeds=[1], device="cpu",
                                       progress=False)
        out[d.dataset] = experiments.seed_dir(root / d.dataset, 1)
    return out


# ---------------------------------------------------------------- the trainer


def test_weight_zero_is_bit_identical_to_independent_fit(criteo_small):
    """alone (and mutual with weight 0): each peer = ctrkit.training.loop.fit of the same model and seed."""
    d = criteo_small
    alone = run_mutual(d, ["DeepFM", "DCN"], init="scratch", mode="alone", epochs=2, seed=7, **FAST)
    zero = run_mutual(d, ["DeepFM", "DCN"], init="scratch", mode="mutual", weight=0.0, epochs=2, seed=7, **FAST)
    for k, name in enumerate(["DeepFM", "DCN"]):
        ref = train.fit(_smoke_model(name, d, 7), d, _smoke_train(name, seed=7, epochs=2))
        for r in (alone, zero):
            assert r["peers"][k]["test_auc"] == ref["test_auc"]
            assert r["peers"][k]["test_logloss"] == ref["test_logloss"]
            assert r["peers"][k]["valid_auc"] == ref["valid_auc"]
    # and the mutual term does change the result
    one = run_mutual(d, ["DeepFM", "DCN"], init="scratch", mode="mutual", weight=1.0, epochs=2, seed=7, **FAST)
    assert one["peers"][0]["test_auc"] != alone["peers"][0]["test_auc"]


def test_dropout_masks_are_per_peer_streams_so_alone_peers_equal_fit(criteo_small):
    """With dropout every peer draws its own mask stream (rng.dropout_seed): in `alone` mode each
    dropout peer equals `fit` of that model, whatever model shares the run with it (one shared
    stream would interleave the peers' draws) and at whatever position (the stream is the model's
    name, not its index: the tables pair a pair run's peer with the four-model alone run)."""
    d = criteo_small
    hp = {**presets.get("DeepFM", "smoke").model, "net_dropout": 0.3}
    def model(seed):
        seed_everything(seed)
        return models.build("DeepFM", d.field_sizes, **hp)
    assert rng.uses_dropout(model(0)) and not rng.uses_dropout(_smoke_model("DeepFM", d, 0))
    cfg = _smoke_train("DeepFM", seed=9, epochs=2, amp="off")
    ref = train.fit(model(3), d, cfg)
    for partner, first in (("dropout", True), ("plain", True), ("plain", False)):
        other = model(4) if partner == "dropout" else _smoke_model("DCN", d, 4)
        pair, confs = [model(3), other], [cfg.peers[0], _smoke_train("DCN").peers[0]]
        k = 0 if first else 1
        res = mutual_fit(pair if first else pair[::-1], d, RunConfig(
            mode="alone", epochs=2, batch_size=cfg.batch_size, seed=9, device="cpu", amp="off", progress=False,
            peers=tuple(confs if first else confs[::-1])))
        assert res["peers"][k]["valid_auc"] == ref["valid_auc"], (partner, first)
    # the masks do change with the step and the model (its name and which of the run's models of that name)
    streams = [rng.dropout_stream("DeepFM"), rng.dropout_stream("DeepFM", 2), rng.dropout_stream("DCN")]
    assert len({rng.dropout_seed(9, s, p) for s in range(3) for p in streams}) == 9


def test_one_mutual_step_is_the_papers_equation(criteo_small):
    """A one-step run (batch = whole train split) equals a hand-written step: forward both peers,
    mutual_losses, backward, clip, Adam, per peer."""
    d = criteo_small
    names = ["DeepFM", "PNN"]
    peers = [_smoke_model(n, d, 3 + k) for k, n in enumerate(names)]
    manual = copy.deepcopy(peers)
    n = d.rows["train"]
    cfg = RunConfig(mode="mutual", weight=0.7, epochs=1, batch_size=n, seed=5, device="cpu", amp="off",
                    progress=False, peers=tuple(_smoke_train(x, lr=0.01).peers[0] for x in names))
    res = mutual_fit(peers, d, cfg)

    Xtr, ytr = d.tensors("train")
    perm = torch.randperm(n, generator=seed_everything(5))
    xb, yb = Xtr[perm], ytr[perm]
    opts = [optim.make_optimizer(m, _smoke_train(x, lr=0.01).peers[0]) for m, x in zip(manual, names)]
    losses = mutual_losses([m(xb).float() for m in manual], yb, weight=0.7)
    for m, opt, loss in zip(manual, opts, losses):
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(list(m.parameters()), 10.0)
        opt.step()
    for got, want in zip(peers, manual):
        for (k, a), b in zip(got.state_dict().items(), want.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
    # the reported test AUC is that of the trained weights
    Xte, yte = d.tensors("test")
    p = evaluation.predict(manual[1], Xte)
    assert res["peers"][1]["test_auc"] == pytest.approx(metrics.auc(yte, p), abs=1e-12)


def test_repeated_model_peers_get_different_seeds(criteo_small):
    r = run_mutual(criteo_small, ["DeepFM", "DeepFM"], init="scratch", epochs=1, seed=3, **FAST)
    assert [p["label"] for p in r["peers"]] == ["DeepFM", "DeepFM_2"]
    assert [p["seed"] for p in r["peers"]] == [3, 4]
    assert r["peers"][0]["test_auc"] != r["peers"][1]["test_auc"]


def test_finetune_kd_and_ensemble_semantics(criteo_small, ckpts):
    d, ck = criteo_small, ckpts["criteo"]
    ft = run_mutual(d, ["DeepFM", "DCN"], init="pretrained", ckpt_dir=ck, epochs=1, seed=1, **FAST)
    pre_lr = checkpoint.load_checkpoint(ck / "DeepFM" / "best.pt")["train_config"]["lr"]
    assert ft["peers"][0]["train_config"]["lr"] == pytest.approx(pre_lr * 0.1)
    base = json.loads((ck / "DeepFM" / "result.json").read_text())
    assert ft["peers"][0]["pretrained_test_auc"] == pytest.approx(base["test_auc"], abs=1e-9)

    kd = run_mutual(d, ["DeepFM", "DCN"], init="pretrained", mode="kd", ckpt_dir=ck, epochs=1, seed=1, **FAST)
    teacher, student = kd["peers"]
    assert not teacher["trained"] and teacher["test_auc"] == teacher["pretrained_test_auc"]
    assert student["trained"] and student["learns_from"] == [0]
    assert student["test_auc"] != student["pretrained_test_auc"]

    # kd into a student from scratch: the teacher still comes from its checkpoint
    kd0 = run_mutual(d, ["DeepFM", "DCN"], init="scratch", mode="kd", ckpt_dir=ck, epochs=1, seed=1, **FAST)
    assert kd0["peers"][0]["init"] == "pretrained" and kd0["peers"][1]["pretrained_test_auc"] is None
    assert kd0["peers"][0]["test_auc"] == teacher["test_auc"]

    ens = run_mutual(d, ["DeepFM", "DCN", "PNN"], init="pretrained", mode="ensemble", ckpt_dir=ck, **FAST)
    assert ens["epochs"] == 0
    assert all(p["test_auc"] == p["pretrained_test_auc"] for p in ens["peers"])
    Xte, yte = d.tensors("test")
    probs = [evaluation.predict(checkpoint.load_pretrained(ck / m)[0], Xte) for m in ["DeepFM", "DCN", "PNN"]]
    assert ens["ensemble"]["test_auc"] == pytest.approx(metrics.auc(yte, torch.stack(probs).mean(0)), abs=1e-12)


def test_kl_divergence_and_warmup_run(criteo_small):
    r = run_mutual(criteo_small, ["DeepFM", "DCN"], init="scratch", divergence="kl", warmup_steps=5,
                   epochs=1, seed=2, **FAST)
    assert r["divergence"] == "kl" and r["config"]["warmup_steps"] == 5
    assert all(0.0 < p["test_auc"] < 1.0 for p in r["peers"])


# ---------------------------------------------------------------- bad input, before any training


def _no_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("training started before the input was checked")
    monkeypatch.setattr(runs, "mutual_fit", boom)


@pytest.mark.parametrize("kwargs, match", [
    (dict(peers=["DeepFM"], init="scratch"), "at least 2 peers"),
    (dict(peers=["DeepFM", "DCN"], init="scratch", weight=-1.0), "weight must be >= 0"),
    (dict(peers=["DeepFM", "Nope"], init="scratch"), "unknown model 'Nope'"),
    (dict(peers=["DeepFM", "DCN"], init="pretrained"), "needs --ckpt-dir / ckpt_dir="),
    (dict(peers=["DeepFM", "DCN"], init="scratch", mode="ensemble"),
     r"use --init pretrained with --ckpt-dir \(init='pretrained', ckpt_dir=\.\.\. from Python\)"),
    (dict(peers=["DeepFM", "DCN"], init="warm"), "unknown init 'warm'"),
    (dict(peers=["DeepFM", "DCN"], init="scratch", mode="kd"), "needs --ckpt-dir"),
    (dict(peers=["DeepFM", "DCN"], init="scratch", mode="mean"), "unknown mode 'mean'"),
])
def test_bad_input_is_a_clear_error(criteo_small, monkeypatch, kwargs, match):
    _no_training(monkeypatch)
    with pytest.raises(CtrkitError, match=match):
        run_mutual(criteo_small, **kwargs, **FAST)


def test_missing_checkpoint_and_foreign_feature_map(criteo_small, ckpts, tmp_path, monkeypatch):
    _no_training(monkeypatch)
    with pytest.raises(CtrkitError, match=r"missing checkpoint .*DeepFM_2/best.pt"):
        run_mutual(criteo_small, ["DeepFM", "DeepFM"], init="pretrained", ckpt_dir=ckpts["criteo"], **FAST)
    # a ckpt dir whose second model was pretrained on the Avazu feature map
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "DeepFM").symlink_to(ckpts["criteo"] / "DeepFM")
    (mixed / "DCN").symlink_to(ckpts["avazu"] / "DCN")
    with pytest.raises(CtrkitError, match="DCN/best.pt was pretrained on feature map"):
        run_mutual(criteo_small, ["DeepFM", "DCN"], init="pretrained", ckpt_dir=mixed, **FAST)
    with pytest.raises(CtrkitError, match="field sizes"):
        mutual_fit([_smoke_model("DeepFM", criteo_small, 0), checkpoint.load_pretrained(ckpts["avazu"] / "DCN")[0]],
                   criteo_small, {"device": "cpu", "progress": False, "peers": ({}, {})})


# ---------------------------------------------------------------- experiments and store


def test_experiments_grid_records_and_skip(criteo_small, ckpts, tmp_path, monkeypatch):
    d = criteo_small
    store = ResultsStore(tmp_path / "r.jsonl")
    root = ckpts["criteo"].parent
    monkeypatch.setattr(runs, "fit", lambda *a, **k: pytest.fail("retrained a finished baseline"))
    base = experiments.pretrain_baselines(d, ["DeepFM", "DCN"], root, preset="smoke", seeds=[1], store=store,
                                          device="cpu", progress=False)  # reuses the fixture's checkpoints
    assert set(base["mode"]) == {"baseline"} and len(store.records()) == 2
    df = experiments.run(d, [["DeepFM", "DCN"]], inits=["scratch", "pretrained"], modes=["mutual", "alone", "ensemble"],
                         seeds=[1], store=store, ckpt_dir=root, preset="smoke", epochs=1, device="cpu", progress=False)
    assert len(df) == 2 * 5  # ensemble from scratch is not a run
    rec = store.records()[-1]
    for key in ("config", "fingerprint", "dataset", "peer", "partners", "init", "mode", "seed", "n_peers",
                "valid_auc", "test_auc", "test_logloss", "pretrained_test_auc", "partners_pretrained_auc",
                "seconds", "env_info"):
        assert key in rec, key
    assert rec["partners"] == ["DeepFM"] and rec["partners_pretrained_auc"][0] is not None
    # a second call re-runs nothing: the store already has every run key
    monkeypatch.setattr(runs, "run", lambda *a, **k: pytest.fail("re-ran a finished run"))
    again = experiments.run(d, [["DeepFM", "DCN"]], inits=["scratch", "pretrained"], modes=["mutual", "alone", "ensemble"],
                            seeds=[1], store=store, ckpt_dir=root, preset="smoke", epochs=1, device="cpu", progress=False)
    assert again["test_auc"].tolist() == df["test_auc"].tolist()
    assert len(store.records()) == 12
    fin = tables.finetune(store)
    assert set(fin["peer"]) == {"DeepFM", "DCN"} and fin["alone_auc_mean"].notna().all()


# ---------------------------------------------------------------- CLI end to end


def _cli_json(capsys, argv):
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("dataset", ["criteo", "avazu"])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_cli_every_mode_for_2_3_4_peers(request, ckpts, tmp_path, capsys, dataset, n):
    d = request.getfixturevalue(f"{dataset}_small")
    peers = ",".join(FOUR[:n])
    store = tmp_path / "r.jsonl"
    common = ["--data", str(d.path), "--peers", peers, "--preset", "smoke", "--epochs", "1", "--device", "cpu",
              "--seed", "1", "--store", str(store), "--json"]
    out = {}
    for init, mode in [("scratch", "mutual"), ("pretrained", "mutual"), ("pretrained", "alone"),
                       ("pretrained", "kd"), ("pretrained", "ensemble")]:
        extra = ["--ckpt-dir", str(ckpts[dataset])] if init == "pretrained" else []
        j = _cli_json(capsys, ["mutual", "--init", init, "--mode", mode] + common + extra)
        assert j["init"] == init and j["mode"] == mode and 0.0 < j["ensemble_test_auc"] < 1.0
        assert [p["model"] for p in j["peers"]] == FOUR[:n]
        for p in j["peers"]:
            assert set(p) >= {"model", "seed", "pretrained_test_auc", "valid_auc", "test_auc", "test_logloss"}
            assert (p["pretrained_test_auc"] is None) == (init == "scratch")
        out[(init, mode)] = j
    assert len(ResultsStore(store).records()) == 5 * n
    # the same command again is skipped: the store has it
    again = _cli_json(capsys, ["mutual", "--init", "scratch", "--mode", "mutual"] + common)
    assert again["skipped"] and again["peers"] == out[("scratch", "mutual")]["peers"]


def test_cli_errors_and_table_command(criteo_small, ckpts, tmp_path, capsys):
    base = ["mutual", "--data", str(criteo_small.path), "--preset", "smoke", "--device", "cpu", "--json"]
    assert cli.main(base + ["--peers", "DeepFM", "--init", "scratch"]) == 2
    assert "at least 2 peers" in capsys.readouterr().err
    assert cli.main(base + ["--peers", "DeepFM,DCN", "--init", "scratch", "--weight", "-1"]) == 2
    assert "weight must be >= 0" in capsys.readouterr().err
    assert cli.main(base + ["--peers", "DeepFM,DCN", "--init", "pretrained", "--ckpt-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err  # the hint is a command that runs as pasted
    assert "missing checkpoint" in err and f"ctrkit pretrain --data {criteo_small.path} --model DeepFM --seed 2021" in err
    # a --ckpt-dir above `pretrain --seeds`'s seed<S> folders: told so, not to pretrain again
    root = ckpts["criteo"].parent
    assert cli.main(base + ["--peers", "DeepFM,DCN", "--init", "pretrained", "--ckpt-dir", str(root)]) == 2
    assert f"({root} holds seed1: pass --seeds" in capsys.readouterr().err
    # --seeds: every seed's checkpoints are checked before the first seed trains (seed 2 was never pretrained)
    partial = tmp_path / "partial.jsonl"
    assert cli.main(base + ["--peers", "DeepFM,DCN", "--init", "pretrained", "--ckpt-dir", str(root), "--seeds", "1,2",
                            "--store", str(partial)]) == 2
    assert "seed2/DeepFM/best.pt" in capsys.readouterr().err and not partial.exists()
    seeded = base + ["--peers", "DeepFM,DCN", "--init", "pretrained", "--ckpt-dir", str(root), "--seeds", "1",
                     "--epochs", "1", "--store", str(partial)]
    assert cli.main(seeded) == 0 and "already in" not in capsys.readouterr().err
    assert cli.main(seeded) == 0 and f"seed 1: already in {partial}" in capsys.readouterr().err  # said, per seed
    # a typo in --set is an unknown key (with the valid ones), a real hyperparameter a pretrained peer's architecture
    pre = base + ["--peers", "DeepFM,DCN", "--init", "pretrained", "--ckpt-dir", str(ckpts["criteo"]), "--seed", "1"]
    assert cli.main(pre + ["--set", "wieght=3"]) == 2
    assert "--set wieght: unknown key; valid: train config" in capsys.readouterr().err
    assert cli.main(pre + ["--set", "hidden_units=[8]"]) == 2
    assert "a pretrained peer's architecture is its checkpoint's" in capsys.readouterr().err
    assert cli.main(["table", "finetune", "--store", str(tmp_path / "none.jsonl")]) == 2
    # a real store through the installed console script: the table prints
    store = tmp_path / "r.jsonl"
    for mode in ("mutual", "alone"):  # the finetune table pairs mutual with its alone control
        cli.main(base + ["--peers", "DeepFM,DCN", "--init", "pretrained", "--ckpt-dir", str(ckpts["criteo"]),
                         "--epochs", "1", "--seed", "1", "--store", str(store), "--mode", mode])
    capsys.readouterr()
    p = subprocess.run([sys.executable, "-m", "ctrkit.cli", "table", "finetune", "--store", str(store)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "criteo" in p.stdout and "| DeepFM" in p.stdout
    # what the table rests on: the store's runs, seeds, preset, precision and data
    assert "(criteo: 2 runs, 1 seeds (1), preset smoke, fp32, data fingerprint " in p.stdout
    for fmt, marker in [("csv", "rel_pct_mean"), ("tex", "\\begin{tabular}")]:
        assert cli.main(["table", "finetune", "--store", str(store), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert marker in out and "DeepFM" in out


def test_resume_after_an_interrupted_run_gives_the_same_result(criteo_small, tmp_path):
    """A run stopped after epoch 1 (its last.pt is all that a killed run leaves) and resumed to
    epoch 3 ends exactly where an uninterrupted 3-epoch run does."""
    kw = dict(peers=["DeepFM", "DCN"], init="scratch", seed=4, weight=0.5, **FAST)
    rows = []
    whole = run_mutual(criteo_small, epochs=3, callback=rows.append, **kw)
    assert rows == whole["history"] and [len(r["peers"]) for r in rows] == [2, 2, 2]
    out = tmp_path / "run"
    first = run_mutual(criteo_small, epochs=1, out_dir=out, **kw)
    assert first["epochs"] == 1 and (out / "last.pt").is_file()
    resumed = run_mutual(criteo_small, epochs=3, out_dir=out, resume=True, **kw)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for a, b in zip(whole["peers"], resumed["peers"]):
        assert (a["test_auc"], a["valid_logloss"], a["best_epoch"]) == (b["test_auc"], b["valid_logloss"], b["best_epoch"])
    assert checkpoint.load_pretrained(out / "0_DeepFM")[1]["model_name"] == "DeepFM"
    with pytest.raises(CtrkitError, match="cannot resume with different settings.*weight"):
        run_mutual(criteo_small, epochs=3, out_dir=out, resume=True, **{**kw, "weight": 0.9})


def test_finetuning_counts_the_checkpoint_as_epoch_0(criteo_small, ckpts):
    """An lr that wrecks the model: no finetuning epoch beats the pretrained weights on validation,
    so each peer keeps them (best epoch 0) and scores exactly as pretrained; a sane lr may improve."""
    kw = dict(init="pretrained", ckpt_dir=ckpts["criteo"], epochs=2, seed=1, **FAST)
    wrecked = run_mutual(criteo_small, ["DeepFM", "DCN"], mode="alone", finetune_lr_scale=3e3, **kw)
    for p in wrecked["peers"]:
        assert p["best_epoch"] == 0, p
        assert p["test_auc"] == p["pretrained_test_auc"] and p["test_logloss"] == p["pretrained_test_logloss"]
        assert p["valid_auc"] == p["pretrained_valid_auc"]
    # the pretrained model is epoch 0 of the monitor (AUC - logloss): every later best beats it
    sane = run_mutual(criteo_small, ["DeepFM", "DCN"], mode="mutual", **kw)
    for p in sane["peers"]:
        assert p["valid_auc"] - p["valid_logloss"] >= p["pretrained_valid_auc"] - p["pretrained_valid_logloss"] - 1e-12


def test_cli_variant_modes_and_shared_embedding(criteo_small, tmp_path, capsys):
    """The group rules and the shared table from the command line; a mode nobody defined is one line
    naming the valid ones (checked where the modes are defined, not in a copy of the list)."""
    base = ["mutual", "--data", str(criteo_small.path), "--preset", "smoke", "--device", "cpu", "--epochs", "1",
            "--peers", "DeepFM,PNN", "--init", "scratch", "--seed", "3"]
    assert cli.main(base + ["--mode", "bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown mode 'bogus'" in err[0] and "ektf" in err[0] and "ensemble_teacher" in err[0]
    store = tmp_path / "r.jsonl"
    for mode in ("ensemble_teacher", "ektf"):
        j = _cli_json(capsys, base + ["--mode", mode, "--share-embedding", "--store", str(store), "--json"])
        assert j["mode"] == mode and 0.0 < j["ensemble_test_auc"] < 1.0
    recs = ResultsStore(store).records()
    assert {r["mode"] for r in recs} == {"ensemble_teacher", "ektf"} and len(recs) == 4
    # shared and separate tables are different runs (the flag is part of the run key)
    j = _cli_json(capsys, base + ["--mode", "ektf", "--store", str(store), "--json"])
    assert not j["skipped"] and len(ResultsStore(store).records()) == 6


def _counting_predict(monkeypatch, data):
    """Count the loop's predictions per split (its valid and test tensors are cached: identity)."""
    calls = {"valid": 0, "test": 0}
    Xva, Xte = data.tensors("valid")[0], data.tensors("test")[0]
    real = train.predict

    def counted(model, X, *a, **k):
        split = "valid" if X is Xva else "test" if X is Xte else "other"
        calls[split] = calls.get(split, 0) + 1
        return real(model, X, *a, **k)

    monkeypatch.setattr(train, "predict", counted)
    return calls


@pytest.mark.parametrize("share, seed", [(False, 8), (True, 2)])
def test_kept_validation_probabilities_give_the_result_of_predicting_again(criteo_small, monkeypatch, share, seed):
    """The final evaluation (and a stopped peer's epochs) reuse each peer's best epoch's validation
    probabilities: the same result bit for bit as predicting everything again, and fewer
    predictions. Peers that share a table move each other's weights (a freeze restores it after
    the others' predictions): they keep none (keeping them changed the result here)."""
    # these seeds at lr 0.03: DeepFM's best is epoch 1, it stops after epoch 3 and sits out epoch 4
    kw = dict(peers=["DeepFM", "PNN"], init="scratch", mode="mutual", weight=0.5, epochs=4, seed=seed,
              share_embedding=share, **FAST, overrides={"patience": 2, "lr": 0.03})
    with monkeypatch.context() as m:
        m.setattr(train.Peer, "kept_valid_probs", lambda self: None)
        every = _counting_predict(m, criteo_small)
        ref = run_mutual(criteo_small, **kw)
    kept = _counting_predict(monkeypatch, criteo_small)
    got = run_mutual(criteo_small, **kw)
    timeless = [[{k: v for k, v in row.items() if k != "seconds"} for row in r["history"]] for r in (got, ref)]
    assert timeless[0] == timeless[1] and got["ensemble"] == ref["ensemble"] and got["peers"] == ref["peers"]
    assert (got["test_probs"] == ref["test_probs"]).all()
    epochs, trained = len(ref["history"]), [e["trained"] for row in ref["history"] for e in row["peers"]]
    assert epochs == 4 and not all(trained)
    assert every == {"valid": 2 * epochs + 2, "test": 2}  # each epoch, the final valid and test; no second test pass
    assert kept["test"] == 2
    if not share:  # predicted: a training peer's epochs; reused: a stopped peer's and the final valid
        assert kept["valid"] == sum(trained)
    else:  # a stopped peer's freeze moves the others' table after their predictions: nothing kept
        assert kept == every


def test_a_runs_test_probabilities_are_its_models_predictions(criteo_small, tmp_path):
    """`test_probs` of a run (churn's input) are what its trained models predict on test, and stay
    out of result.json."""
    d = criteo_small
    ms = [_smoke_model(name, d, 3 + k) for k, name in enumerate(["DeepFM", "DCN"])]
    cfg = RunConfig(peers=({"lr": 3e-3}, {"lr": 3e-3}), mode="mutual", weight=0.5, epochs=2, batch_size=512, seed=3,
                    device="cpu", progress=False)
    r = mutual_fit(ms, d, cfg, out_dir=tmp_path / "run")
    Xte = d.tensors("test")[0]
    want = torch.stack([evaluation.predict(m, Xte, cfg.eval_batch_size) for m in ms]).numpy()
    assert r["test_probs"].shape == want.shape and (r["test_probs"] == want).all()
    assert "test_probs" not in json.loads((tmp_path / "run" / "result.json").read_text())
