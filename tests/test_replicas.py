"""Replicas (ctrkit.training.replicas): K runs of one architecture in one batched step give what each
run gives alone: a step's gradients to float rounding (the batched reference maths rounds differently
from the sequential CPU kernels), whole runs' history, best epoch and AUCs within the tolerance the
module states (Adam turns that rounding into small weight differences), the same batch order and
dropout masks, per-replica early stopping and LR decay, resume; K = 1, and replicas of a model whose
every CPU kernel has a vmap rule (FM), are bit for bit."""
import copy
import json
import statistics
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ctrkit import cli, models
from ctrkit.core.utils import CtrkitError, seed_everything
from ctrkit.experiments import runs
from ctrkit.experiments.store import ResultsStore
from ctrkit.kernels import for_device
from ctrkit.training import loop, presets, replicas
from ctrkit.training.config import RunConfig

# Whole runs (ctrkit.training.replicas, "Numerics"): a step's gradients agree to ~1e-6 of their largest
# entry, but Adam scales every entry by its own running size, so the rounding of near-zero entries
# becomes updates of up to the lr; after a few epochs the runs differ like runs on two CPUs. Measured
# on an AVX-512 Xeon: train losses up to 2e-4 apart, test AUCs up to 7e-4 (20 of the 30,000 pairs of
# criteo_small's 399 test rows); other seeds' runs are 5e-3 and more apart (test_the_tolerance_tells_seeds_apart).
AUC_TOL = 2e-3
LOSS_TOL = 1e-3
GRAD_TOL = 1e-5     # one step, relative to each gradient's largest entry: rounding only


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread


def _model(name, data, seed, **hp):
    seed_everything(seed)
    return models.build(name, data.field_sizes, **{**presets.get(name, "smoke").model, **hp})


def _cfg(name, seed, **changes):
    return RunConfig.single({**presets.get(name, "smoke").train, "device": "cpu", "progress": False, "seed": seed,
                             **changes})


def _same(a, b):
    assert a["best_epoch"] == b["best_epoch"] and a["epochs"] == b["epochs"]
    assert a["stopped_early"] == b["stopped_early"]
    for ha, hb in zip(a["history"], b["history"]):
        assert ha["lr"] == hb["lr"] and ha["improved"] == hb["improved"]
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], abs=LOSS_TOL)
        assert ha["valid_auc"] == pytest.approx(hb["valid_auc"], abs=AUC_TOL)
    for k in ("valid_auc", "test_auc", "test_logloss"):
        assert a[k] == pytest.approx(b[k], abs=AUC_TOL), k


@pytest.mark.parametrize("name,hp", [("DeepFM", {"net_dropout": 0.2}), ("FiBiNET", {}), ("DCN", {}), ("FM", {})])
def test_replicas_equal_sequential_runs(criteo_small, name, hp):
    seeds = [2021, 2022, 2023]
    changes = dict(epochs=3, patience=2, lr_decay=0.5)
    alone = [loop.fit(_model(name, criteo_small, s, **hp), criteo_small, _cfg(name, s, **changes)) for s in seeds]
    together = loop.fit_replicas([_model(name, criteo_small, s, **hp) for s in seeds], criteo_small,
                                 [_cfg(name, s, **changes) for s in seeds])
    for a, b in zip(together, alone):
        _same(a, b)
    assert len({r["test_auc"] for r in together}) == len(seeds)  # different seeds, different runs


def test_replicas_of_a_model_whose_every_kernel_vmaps_are_its_runs_bit_for_bit(criteo_small):
    """FM's layers (embedding gather, first-order term, FM) all run their CPU kernel under vmap
    (``ctrkit.kernels.cpu.for_vmap``): no batched matmul rounds differently, so replicas are the
    sequential runs exactly."""
    seeds, changes = [2021, 2022], dict(epochs=3, patience=2, lr_decay=0.5)
    alone = [loop.fit(_model("FM", criteo_small, s), criteo_small, _cfg("FM", s, **changes)) for s in seeds]
    together = loop.fit_replicas([_model("FM", criteo_small, s) for s in seeds], criteo_small,
                                 [_cfg("FM", s, **changes) for s in seeds])
    for a, b in zip(together, alone):
        assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
        assert (a["best_epoch"], a["test_auc"], a["test_logloss"]) == (b["best_epoch"], b["test_auc"], b["test_logloss"])


@pytest.mark.parametrize("name", ["DeepFM", "DCN", "PNN", "FiBiNET", "FM"])
def test_a_batched_step_has_the_sequential_gradients(criteo_small, name):
    """The replicas' step (the reference maths under vmap) against the sequential run's step (the CPU
    kernels) on one batch: each replica's gradients are its own run's to float rounding, for replicas
    of different weights and batches."""
    X, y = criteo_small.tensors("train")
    xs, ys = [X[k * 256:(k + 1) * 256] for k in range(3)], [y[k * 256:(k + 1) * 256].float() for k in range(3)]
    alone = [for_device(_model(name, criteo_small, s), "cpu") for s in (1, 2, 3)]
    for m, xb, yb in zip(alone, xs, ys):
        F.binary_cross_entropy_with_logits(m(xb).float(), yb).backward()
    together = [copy.deepcopy(m) for m in alone]
    for m in together:
        m.zero_grad(set_to_none=True)
    # the trainer's replica step itself (Stack.logits): the stacked parameters' gradients land on each copy
    peers = [SimpleNamespace(model=m, training=True, drops=False) for m in together]
    out = replicas.Stack(alone[0]).logits(peers, torch.stack(xs), steps=[0] * 3, seeds=[1, 2, 3])
    sum(F.binary_cross_entropy_with_logits(out[k], ys[k]) for k in range(3)).backward()
    for k, (m, t) in enumerate(zip(alone, together)):
        for (n, p), q in zip(m.named_parameters(), t.parameters()):
            scale = p.grad.abs().max().item()
            assert (q.grad - p.grad).abs().max().item() <= GRAD_TOL * scale, (k, n)


def test_the_tolerance_tells_seeds_apart(criteo_small):
    """AUC_TOL is far below what another seed (another initialization and batch order) changes: the
    median of the three seeds' pairwise gaps (measured on the Xeon: 0.0070, 0.0115, 0.0185)."""
    aucs = [loop.fit(_model("DeepFM", criteo_small, s), criteo_small, _cfg("DeepFM", s, epochs=2))["test_auc"]
            for s in (2021, 2022, 2023)]
    assert statistics.median(abs(a - b) for i, a in enumerate(aucs) for b in aucs[i + 1:]) > 2 * AUC_TOL


def test_one_replica_is_fit_bit_for_bit(criteo_small):
    a = loop.fit(_model("DeepFM", criteo_small, 7), criteo_small, _cfg("DeepFM", 7, epochs=2))
    b = loop.fit_replicas([_model("DeepFM", criteo_small, 7)], criteo_small, [_cfg("DeepFM", 7, epochs=2)])[0]
    assert a["test_auc"] == b["test_auc"] and a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]


def test_per_replica_lr_decay_early_stopping_and_settings(criteo_small):
    """Replicas with different lrs and patience: each decays and stops on its own, a stopped replica
    stops changing (its best weights are kept), the others train on."""
    cfgs = [_cfg("DeepFM", 5, epochs=4, patience=0, lr=0.05), _cfg("DeepFM", 6, epochs=4, patience=3, lr=0.003)]
    alone = [loop.fit(_model("DeepFM", criteo_small, s), criteo_small, c) for s, c in zip((5, 6), cfgs)]
    together = loop.fit_replicas([_model("DeepFM", criteo_small, s) for s in (5, 6)], criteo_small, cfgs)
    for a, b in zip(together, alone):
        _same(a, b)
    assert together[0]["epochs"] < together[1]["epochs"]  # the first stopped, the second went on
    assert len({h["lr"] for h in together[1]["history"]}) > 1 or together[1]["epochs"] == 4


def test_mutual_replicas_equal_sequential_mutual_runs(criteo_small, tmp_path):
    specs = [runs.RunSpec(peers=("DeepFM", "DCN"), mode="mutual", seed=s, weight=w, device="cpu", progress=False,
                          preset="smoke", epochs=2) for s, w in ((1, 1.0), (2, 3.0))]
    alone = [runs.run(s, criteo_small) for s in specs]
    together = runs.run_many(specs, criteo_small)
    for a, b in zip(together, alone):
        assert a["ensemble"]["test_auc"] == pytest.approx(b["ensemble"]["test_auc"], abs=AUC_TOL)
        for pa, pb in zip(a["peers"], b["peers"]):
            assert pa["best_epoch"] == pb["best_epoch"]
            assert pa["test_auc"] == pytest.approx(pb["test_auc"], abs=AUC_TOL)


def test_execute_many_records_skips_and_resumes(criteo_small, tmp_path, monkeypatch):
    store = ResultsStore(tmp_path / "store.jsonl")
    specs = [runs.RunSpec(peers=("DeepFM",), mode="alone", seed=s, device="cpu", progress=False, preset="smoke",
                          epochs=2) for s in (1, 2, 3)]
    runs.execute_many(specs[:1], criteo_small, store=store)
    recs, skipped = runs.execute_many(specs, criteo_small, store=store, max_replicas=3)
    assert skipped == [True, False, False] and len(store.run_keys()) == 3
    assert [r[0]["run_key"] for r in recs] == [s.key(criteo_small.fingerprint) for s in specs]
    ref = runs.run(specs[2], criteo_small)
    assert recs[2][0]["test_auc"] == pytest.approx(ref["peers"][0]["test_auc"], abs=AUC_TOL)
    # a group killed after epoch 1 resumes from each run's last checkpoint to the uninterrupted result
    outs = [tmp_path / f"r{s.seed}" for s in specs]
    calls = {"n": 0}

    def die(row):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2: runs 1 and 2 saved it, run 3 did not
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runs.run_many(specs, criteo_small, out_dirs=outs, callback=die)
    resumed = runs.run_many(specs, criteo_small, out_dirs=outs, resume=True)
    whole = runs.run_many(specs, criteo_small)
    # run 3 trains its epoch 2 alone in the resumed group (a batch of one replica): within the tolerance
    for a, b in zip(resumed, whole):
        assert a["peers"][0]["test_auc"] == pytest.approx(b["peers"][0]["test_auc"], abs=AUC_TOL)
        assert [row["peers"][0]["train_loss"] for row in a["history"]] == pytest.approx(
            [row["peers"][0]["train_loss"] for row in b["history"]], abs=LOSS_TOL)


def test_replicas_reject_mixed_architectures(criteo_small):
    with pytest.raises(CtrkitError, match="architecture"):
        loop.fit_replicas([_model("DeepFM", criteo_small, 1), _model("DeepFM", criteo_small, 2, hidden_units=[8])],
                          criteo_small, [_cfg("DeepFM", 1), _cfg("DeepFM", 2)])


def test_grouping_default_is_one_run_at_a_time_on_the_cpu():
    """On the CPU replicas measured slower (bench/bench_replicas.py): the grid keeps one run at a time
    in the specs' order (bit for bit as before) unless max_replicas asks for more."""
    specs = [runs.RunSpec(peers=("DeepFM", "DCN"), mode=m, seed=s, device="cpu", preset="smoke")
             for s in (1, 2) for m in ("mutual", "alone")]
    assert runs.replica_groups(specs) == [[0], [1], [2], [3]]
    assert runs.replica_groups(specs, 8) == [[0, 2], [1, 3]]


# ---------------------------------------------------------------- the CLI's --seeds and --replicas


def _cli_json(argv, capsys):
    assert cli.main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _trajectory(r):
    return ([(h["train_loss"], h["valid_auc"], h["lr"]) for h in r["history"]],
            r["best_epoch"], r["valid_auc"], r["test_auc"], r["test_logloss"])


def test_cli_seeds_on_the_cpu_are_their_seed_runs_and_replicas_on_request(criteo_small, tmp_path, capsys, monkeypatch):
    """`pretrain --seeds` follows the library's rule (`runs.default_max_replicas`): on the CPU one run
    at a time, each seed's result its `--seed` run's bit for bit; `--replicas 2` batches them (within
    the tolerance above)."""
    base = ["pretrain", "--data", str(criteo_small.path), "--model", "DeepFM", "--preset", "smoke",
            "--device", "cpu", "--threads", "1", "--amp", "off", "--epochs", "2"]
    alone = [_cli_json(base + ["--seed", str(s), "--out", str(tmp_path / f"seed{s}")], capsys) for s in (1, 2)]
    batched = []
    real = runs.fit_replicas
    monkeypatch.setattr(runs, "fit_replicas",
                        lambda models, *a, **k: batched.append(len(models)) or real(models, *a, **k))
    auto = _cli_json(base + ["--seeds", "1,2", "--out", str(tmp_path / "auto")], capsys)
    assert batched == [1, 1] and [_trajectory(r) for r in auto] == [_trajectory(r) for r in alone]
    batched.clear()
    together = _cli_json(base + ["--seeds", "1,2", "--replicas", "2", "--out", str(tmp_path / "together")], capsys)
    assert batched == [2]
    for a, b in zip(alone, together):
        _same(a, b)


@pytest.mark.parametrize("command", ["pretrain", "mutual"])
@pytest.mark.parametrize("flag,value", [("--seeds", "1,1"), ("--seeds", "a,b"), ("--replicas", "0"),
                                        ("--replicas", "x")])
def test_cli_bad_seeds_or_replicas_are_one_line_and_exit_2(criteo_small, capsys, command, flag, value):
    argv = [command, "--data", str(criteo_small.path)] + (
        ["--model", "DeepFM"] if command == "pretrain" else ["--peers", "DeepFM,DCN", "--init", "scratch"])
    assert cli.main(argv + [flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ctrkit: error: {flag}") and err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------- bench/bench_replicas.py --old


def test_the_replica_ab_interleaves_old_and_new_and_rates_each_side_against_its_own_one_run(monkeypatch):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "bench_replicas", Path(__file__).resolve().parent.parent / "bench" / "bench_replicas.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []

    def fake(job):  # old runs K x 100 samples/s, new K x 150; a repeat's second job of each pair is 10% off
        calls.append((job["k"], job["tree"]))
        return {"samples_per_s": job["k"] * (100 if job["tree"] == "old" else 150) * (0.9 if len(calls) % 2 == 0 else 1.0)}

    monkeypatch.setattr(bench, "_run_job", fake)
    rows = bench.ab_sweep(["smoke"], ["DeepFM"], [4], {"old": "old", "new": "new"}, repeats=3)
    assert calls[:6] == [(1, "old"), (1, "new"), (1, "new"), (1, "old"), (1, "old"), (1, "new")]
    assert [r["k"] for r in rows] == [1, 4] and len(calls) == 12
    one, four = rows
    assert one["old_runs"] == [100, 90, 100] and one["old"] == 100 and one["new"] == 135
    assert four["new_vs_old"] == pytest.approx(1.35) and four["new_vs_sequential"] == pytest.approx(4.0)
    assert "| smoke | DeepFM | 4 | 512 | 400 | 540 | 1.35x | 4.00x | 4.00x |" in bench.ab_markdown(
        {"old": "REV", "date": "d", "machine": "m", "command": "c", "rows": rows})
