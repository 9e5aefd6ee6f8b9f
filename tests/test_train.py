import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctrkit import cli, data
from ctrkit.training import checkpoint, evaluation, optim, precision, presets, rng
from ctrkit.training import config as C
from ctrkit.training import loop as T
from ctrkit.models import MODELS, build, embedding_parameters
from ctrkit.core.utils import CtrkitError, seed_everything


@pytest.fixture(autouse=True)
def one_thread():
    # Other processes share the 2 cores: OpenMP with 2 threads then spins at barriers (up to ~40x
    # slower per step). One thread keeps these small runs fast; results are deterministic either way.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cfg(**kw) -> C.RunConfig:
    base = dict(epochs=2, batch_size=512, lr=3e-3, patience=2, progress=False, device="cpu", amp="off", seed=7)
    return C.RunConfig.single({**base, **kw})


def smoke_model(name, d, seed=7, **hp):
    seed_everything(seed)
    return build(name, d, **{**presets.get(name, "smoke").model, **hp})


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def strip_times(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


# ---------------------------------------------------------------- config and building blocks


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(CtrkitError, match=r"unknown train config key\(s\) lrate; valid: epochs, batch_size, lr"):
        C.RunConfig.single({"lrate": 0.1})
    for bad in ({"lr": 0}, {"batch_size": 0}, {"amp": "fp16"}, {"monitor": "gauc"}, {"embedding_regularizer": -1},
                {"clip_grad_norm": 0}, {"epochs": 1.5}, {"net_regularizer": "l1(3)"}):
        with pytest.raises(CtrkitError, match=next(iter(bad))):
            C.RunConfig.single(bad)
    c = C.TrainConfig.from_dict({"embedding_regularizer": "l2(1.e-5)", "net_regularizer": "1e-04",
                                 "monitor": {"AUC": 1, "logloss": -1}})
    assert c.embedding_regularizer == 1e-5 and c.net_regularizer == 1e-4
    assert optim.monitor_score(c.monitor, {"auc": 0.8, "logloss": 0.45}) == pytest.approx(0.35)
    assert optim.monitor_score("AUC-logloss", {"auc": 0.8, "logloss": 0.45}) == pytest.approx(0.35)
    assert optim.monitor_score("logloss", {"auc": 0.8, "logloss": 0.45}) == pytest.approx(-0.45)
    assert C.TrainConfig.from_dict(c.to_dict()) == c


def test_epoch_batches_is_a_seeded_permutation():
    b1 = rng.epoch_batches(1000, 300, torch.Generator().manual_seed(1))
    assert [len(b) for b in b1] == [300, 300, 300, 100]
    assert torch.equal(torch.cat(b1).sort().values, torch.arange(1000))
    b2 = rng.epoch_batches(1000, 300, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(b1, b2))
    g = torch.Generator().manual_seed(1)
    first, second = rng.epoch_batches(1000, 1000, g), rng.epoch_batches(1000, 1000, g)
    assert not torch.equal(first[0], second[0])  # a new order every epoch


def test_weight_decay_equals_fuxictr_regularizer_in_the_loss(criteo_small):
    """FuxiCTR adds (lambda/2)*||W||^2 per group to the loss; make_optimizer's weight decay must give
    the same trajectory (clipping inactive), and differ from no regularization."""
    X, y = criteo_small.tensors("train", "cpu")
    emb_reg, net_reg = 0.05, 0.02
    config = cfg(embedding_regularizer=emb_reg, net_regularizer=net_reg, lr=1e-2, clip_grad_norm=None).peers[0]

    def run(mode):
        model = smoke_model("DeepFM", criteo_small, seed=3)
        if mode == "decay":
            opt = optim.make_optimizer(model, config)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        emb = {id(p) for p in embedding_parameters(model)}
        for step in range(6):
            xb, yb = X[step * 256:(step + 1) * 256], y[step * 256:(step + 1) * 256]
            loss = F.binary_cross_entropy_with_logits(model(xb), yb)
            if mode == "loss":  # FuxiCTR's regularization_loss: (lambda / p) * ||W||_p^p, p = 2
                for p in model.parameters():
                    lam = emb_reg if id(p) in emb else net_reg
                    loss = loss + lam / 2 * torch.norm(p, 2) ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.state_dict()

    decay, in_loss, plain = run("decay"), run("loss"), run("none")
    for k in decay:
        torch.testing.assert_close(decay[k], in_loss[k], rtol=1e-5, atol=1e-6)
    assert max((decay[k] - plain[k]).abs().max().item() for k in decay) > 1e-3
    groups = optim.make_optimizer(smoke_model("DeepFM", criteo_small), config).param_groups
    assert [(g["name"], g["weight_decay"]) for g in groups] == [("embedding", emb_reg), ("net", net_reg)]


def test_tracker_decays_lr_on_plateau_stops_with_patience_and_keeps_best():
    model = nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tr = optim.Tracker(opt, cfg(patience=2, monitor="AUC").peers[0])
    lrs, stops = [], []
    for epoch, auc in enumerate([0.70, 0.71, 0.7100005, 0.705], 1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        stops.append(tr.on_epoch_end(epoch, {"auc": auc, "logloss": 0.5}, model))
        lrs.append(opt.param_groups[0]["lr"])
    # epoch 3 is within min_delta 1e-6 of the best: no improvement -> lr x0.1; epoch 4 -> stop
    assert stops == [False, False, False, True]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])
    assert tr.best_epoch == 2 and tr.best_metrics["auc"] == 0.71
    tr.restore_best(model)
    assert torch.all(model.weight == 2)
    # the state round-trips (resume)
    tr2 = optim.Tracker(torch.optim.Adam(model.parameters(), lr=1e-3), cfg(patience=2).peers[0])
    tr2.load_state_dict(tr.state_dict())
    assert tr2.best_epoch == 2 and tr2.stopped and tr2.scheduler.state_dict() == tr.scheduler.state_dict()


def test_amp_resolution():
    assert precision.resolve_amp("cpu", "off") is None
    assert precision.resolve_amp("cpu", "bf16") is torch.bfloat16
    assert precision.resolve_amp("cpu", "auto") is (torch.bfloat16 if precision._cpu_has_amx_bf16() else None)
    with pytest.raises(CtrkitError, match="amp"):
        precision.resolve_amp("cpu", "fp8")


@pytest.mark.parametrize("flags, warns", [(set(), True), ({"avx512_bf16"}, False), ({"amx_bf16"}, False)])
def test_forced_bf16_on_a_cpu_without_bf16_instructions_warns_once(monkeypatch, flags, warns):
    monkeypatch.setattr(precision, "_cpu_bf16_flags", lambda: flags)
    monkeypatch.setattr(precision, "_WARNED_EMULATED_BF16", False)
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert precision.resolve_amp("cpu", "bf16") is torch.bfloat16
        assert precision.resolve_amp("cpu", "bf16") is torch.bfloat16
        assert precision.resolve_amp("cpu", "auto") is (torch.bfloat16 if "amx_bf16" in flags else None)
    msgs = [str(w.message) for w in seen if "bf16" in str(w.message)]
    assert len(msgs) == (1 if warns else 0)
    assert not warns or "without bf16 instructions" in msgs[0]


# ---------------------------------------------------------------- fit


@pytest.fixture(scope="module")
def avazu_40k(tmp_path_factory):
    """Enough rows that the interaction signal of the synthetic generator shows over LR."""
    return data.synthetic_dataset("avazu", 40_000, tmp_path_factory.mktemp("avazu_40k"), seed=2021)


@pytest.fixture(scope="module")
def learned(avazu_40k):
    out = {}
    for name in MODELS:
        p = presets.get(name, "smoke")
        config = cfg(**{**p.train, "epochs": 2, "batch_size": 512, "lr": 3e-3, "patience": 2, "seed": 11})
        out[name] = T.fit(smoke_model(name, avazu_40k, seed=11), avazu_40k, config)
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_each_model_learns_the_synthetic_data(learned, avazu_40k, name):
    r = learned[name]
    _, y = avazu_40k.numpy("train")
    ctr = float(y.mean())
    base_logloss = -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))  # predicting the CTR alone
    assert r["test_auc"] > 0.62, r
    assert r["test_logloss"] < base_logloss - 0.01, (r["test_logloss"], base_logloss)
    assert r["epochs"] == len(r["history"]) and r["best_epoch"] in (1, 2)
    assert r["valid_auc"] == max(h["valid_auc"] for h in r["history"])


class PairData:
    """In-memory stand-in for CTRData whose labels come from one FM-form pairwise interaction
    <u[x0], u[x1]> with zero-mean latents: no main effect, so LR cannot learn it."""

    def __init__(self, rows=24_000, fields=6, vocab=20, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.field_sizes, self.fingerprint, self.dataset = [vocab] * fields, f"pairs-{seed}", "pairs"
        u = torch.randn(vocab, 3, generator=g)
        X = torch.randint(0, vocab, (rows, fields), generator=g, dtype=torch.int32)
        logit = 2.0 * (u[X[:, 0].long()] * u[X[:, 1].long()]).sum(1)
        y = (torch.rand(rows, generator=g) < torch.sigmoid(logit)).float()
        n_tr, n_va = int(rows * 0.8), int(rows * 0.1)
        self.splits = {"train": (X[:n_tr], y[:n_tr]), "valid": (X[n_tr:n_tr + n_va], y[n_tr:n_tr + n_va]),
                       "test": (X[n_tr + n_va:], y[n_tr + n_va:])}

    def tensors(self, split, device):
        X, y = self.splits[split]
        return X.to(device), y.to(device)


def test_interaction_models_learn_what_lr_cannot():
    d = PairData()
    auc = {name: T.fit(smoke_model(name, d, seed=3), d, cfg(epochs=3, lr=1e-2, patience=3))["test_auc"]
           for name in MODELS}
    assert auc["LR"] < 0.65, auc  # only the finite-sample imbalance of the pairs is visible to LR
    for name in ("FM", "DeepFM", "DCN", "PNN", "FiBiNET"):
        assert auc[name] > auc["LR"] + 0.1, auc


@pytest.mark.timeout(120)
def test_a_run_that_stopped_early_ends_at_once_whatever_its_epoch_cap(criteo_small):
    """Patience 1 on a tiny lr stops after a few epochs; an epoch cap of a billion must not then walk
    the remaining epoch numbers (it did: `ctrkit pretrain --epochs 1000000000` hung)."""
    r = T.fit(smoke_model("LR", criteo_small), criteo_small, cfg(epochs=10**9, lr=1e-9, patience=1))
    assert r["stopped_early"] and len(r["history"]) <= 3


def test_fit_is_deterministic_and_writes_the_contract_files(criteo_small, tmp_path):
    runs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        r = T.fit(smoke_model("DeepFM", criteo_small, net_dropout=0.2), criteo_small, cfg(), out_dir=out)
        runs.append((r, checkpoint.load_checkpoint(out / "best.pt")))
    (r1, b1), (r2, b2) = runs
    assert strip_times(r1["history"]) == strip_times(r2["history"])
    assert (r1["test_auc"], r1["test_logloss"]) == (r2["test_auc"], r2["test_logloss"])
    assert same_state(b1["state_dict"], b2["state_dict"])
    # best.pt per the contract, result.json = the returned dict
    assert {"model_name", "hparams", "field_sizes", "fingerprint", "state_dict", "metrics", "train_config"} <= set(b1)
    assert b1["fingerprint"] == criteo_small.fingerprint and b1["field_sizes"] == criteo_small.field_sizes
    assert b1["metrics"]["test_auc"] == r1["test_auc"]
    saved = json.loads((tmp_path / "run0" / "result.json").read_text())
    assert saved["test_auc"] == r1["test_auc"] and saved["checkpoint"] == str(tmp_path / "run0" / "best.pt")
    keys = {"model", "params", "valid_auc", "valid_logloss", "test_auc", "test_logloss", "epochs", "seconds",
            "samples_per_s", "checkpoint", "history", "env"}
    assert keys <= set(r1) and r1["env"]["seed"] == 7 and r1["amp"] == "off"
    # load_pretrained rebuilds the best model: same predictions and the same test metrics
    model, meta = checkpoint.load_pretrained(tmp_path / "run0", expect_fingerprint=criteo_small.fingerprint)
    X, y = criteo_small.tensors("test", "cpu")
    assert evaluation.evaluate(model, X, y) == {"auc": r1["test_auc"], "logloss": r1["test_logloss"]}
    assert meta["model_name"] == "DeepFM" and "state_dict" not in meta


def test_killed_run_resumes_to_the_uninterrupted_result(criteo_small, tmp_path, monkeypatch):
    config = cfg(epochs=3, patience=3)
    full = T.fit(smoke_model("DeepFM", criteo_small, net_dropout=0.2), criteo_small, config, out_dir=tmp_path / "full")

    # Kill the second run in epoch 2, after its training steps, before its checkpoint.
    real_evaluate, calls = evaluation.predict, []

    def killed(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(T, "predict", killed)
    with pytest.raises(KeyboardInterrupt):
        T.fit(smoke_model("DeepFM", criteo_small, net_dropout=0.2), criteo_small, config, out_dir=tmp_path / "cut")
    monkeypatch.setattr(T, "predict", real_evaluate)
    assert checkpoint.load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1

    # A differently initialised model: every weight must come from last.pt.
    resumed = T.fit(smoke_model("DeepFM", criteo_small, seed=99, net_dropout=0.2), criteo_small, config,
                    out_dir=tmp_path / "cut", resume=True)
    assert strip_times(resumed["history"]) == strip_times(full["history"])
    assert (resumed["test_auc"], resumed["test_logloss"]) == (full["test_auc"], full["test_logloss"])
    weights = lambda ck: ck["peers"][0]["state_dict"] if "peers" in ck else ck["state_dict"]  # noqa: E731
    for f in ("best.pt", "last.pt"):
        assert same_state(weights(checkpoint.load_checkpoint(tmp_path / "cut" / f)),
                          weights(checkpoint.load_checkpoint(tmp_path / "full" / f)))

    # Training further: 1 epoch, then resume with epochs=2 == 2 epochs at once.
    two = T.fit(smoke_model("FM", criteo_small), criteo_small, cfg(epochs=2), out_dir=tmp_path / "two")
    T.fit(smoke_model("FM", criteo_small), criteo_small, cfg(epochs=1), out_dir=tmp_path / "more")
    more = T.fit(smoke_model("FM", criteo_small), criteo_small, cfg(epochs=2), out_dir=tmp_path / "more", resume=True)
    assert strip_times(more["history"]) == strip_times(two["history"]) and more["test_auc"] == two["test_auc"]

    # Resuming with other settings is refused, naming what changed.
    with pytest.raises(CtrkitError, match=r"lr: 0.003 -> 0.1"):
        T.fit(smoke_model("FM", criteo_small), criteo_small, cfg(epochs=3, lr=0.1), out_dir=tmp_path / "more",
              resume=True)


def test_truncated_checkpoints_are_clear_errors(criteo_small, tmp_path):
    out = tmp_path / "run"
    T.fit(smoke_model("LR", criteo_small), criteo_small, cfg(epochs=1), out_dir=out)
    for f in ("best.pt", "last.pt"):
        raw = (out / f).read_bytes()
        (out / f).write_bytes(raw[: len(raw) // 2])
        with pytest.raises(CtrkitError, match=rf"{f}: unreadable \(truncated or corrupt\)"):
            checkpoint.load_checkpoint(out / f)
    with pytest.raises(CtrkitError, match="truncated"):
        checkpoint.load_pretrained(out)
    with pytest.raises(CtrkitError, match="last.pt: unreadable"):
        T.fit(smoke_model("LR", criteo_small), criteo_small, cfg(epochs=2), out_dir=out, resume=True)
    (out / "best.pt").write_bytes(b"")
    with pytest.raises(CtrkitError, match="truncated"):
        checkpoint.load_checkpoint(out / "best.pt")
    with pytest.raises(CtrkitError, match="no such file"):
        checkpoint.load_checkpoint(out / "nothing.pt")


def test_checkpoint_of_another_feature_map_is_refused(criteo_small, avazu_small, tmp_path):
    out = tmp_path / "criteo"
    T.fit(smoke_model("LR", criteo_small), criteo_small, cfg(epochs=1), out_dir=out)
    with pytest.raises(CtrkitError, match="fingerprint"):
        checkpoint.load_pretrained(out, expect_fingerprint=avazu_small.fingerprint)
    with pytest.raises(CtrkitError, match="fingerprint"):
        T.fit(smoke_model("LR", avazu_small), avazu_small, cfg(epochs=2), out_dir=out, resume=True)


class NaNAfter(nn.Module):
    """Wraps a model; its `at`-th training forward returns NaN logits (a diverged step)."""

    def __init__(self, inner, at):
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0
        self.name, self.hparams = inner.name, inner.hparams

    def forward(self, X):
        out = self.inner(X)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                out = out * float("nan")
        return out


def test_non_finite_loss_names_epoch_and_step_and_keeps_the_last_good_checkpoint(criteo_small, tmp_path):
    steps = math.ceil(criteo_small.rows["train"] / 512)
    (tmp_path / "result.json").write_text('{"test_auc": 0.99, "history": [], "env": {}}')  # an older run's result
    model = NaNAfter(smoke_model("DeepFM", criteo_small), at=steps + 3)  # epoch 2, step 3
    with pytest.raises(evaluation.NonFiniteLossError, match=r"at epoch 2, step 3\b"):
        T.fit(model, criteo_small, cfg(epochs=3), out_dir=tmp_path)
    assert not (tmp_path / "result.json").exists()  # the failed run does not look finished
    last = checkpoint.load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["peers"][0]["state_dict"].values())
    assert checkpoint.load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    # a real divergence, no wrapper
    with pytest.raises(evaluation.NonFiniteLossError, match=r"epoch 1, step \d+"):
        T.fit(smoke_model("DeepFM", criteo_small), criteo_small, cfg(epochs=1, lr=1e30, clip_grad_norm=None))


def test_bf16_autocast_trains_and_is_recorded(criteo_small):
    runs = {amp: T.fit(smoke_model("DCN", criteo_small), criteo_small, cfg(amp=amp, epochs=1, lr=1e-2))
            for amp in ("bf16", "off")}
    assert runs["bf16"]["amp"] == "bf16" and runs["off"]["amp"] == "off"
    assert runs["bf16"]["test_auc"] != runs["off"]["test_auc"]  # autocast really ran
    assert abs(runs["bf16"]["test_auc"] - runs["off"]["test_auc"]) < 0.03, runs  # and did not hurt learning


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("dataset", ["criteo", "avazu"])
@pytest.mark.parametrize("name", ["DeepFM", "DCN", "PNN", "FiBiNET", "LR", "FM"])
def test_cli_pretrain_json(name, dataset, criteo_small, avazu_small, tmp_path, capsys):
    d = criteo_small if dataset == "criteo" else avazu_small
    rc = cli.main(["pretrain", "--data", str(d.path), "--model", name, "--preset", "smoke", "--device", "cpu",
                   "--out", str(tmp_path / name), "--set", "lr=1e-2", "--json"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    r = json.loads(lines[-1])
    assert {"model", "params", "valid_auc", "valid_logloss", "test_auc", "test_logloss", "epochs", "seconds",
            "samples_per_s", "checkpoint"} <= set(r)
    assert r["model"] == name and r["params"] > 0 and r["epochs"] == 1 and r["train_config"]["lr"] == 0.01
    assert 0 <= r["test_auc"] <= 1 and 0 < r["test_logloss"] < 1 and r["samples_per_s"] > 0
    model, meta = checkpoint.load_pretrained(r["checkpoint"], expect_fingerprint=d.fingerprint)
    assert meta["model_name"] == name and meta["metrics"]["test_auc"] == r["test_auc"]


def test_cli_set_overrides_resume_and_errors(criteo_small, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["pretrain", "--data", str(criteo_small.path), "--model", "deepfm", "--preset", "smoke",
            "--device", "cpu", "--seed", "5", "--json", "--set", "hidden_units=[8, 4]", "--set", "lr=1e-2",
            "--set", "monitor=AUC-logloss", "--set", "embedding_regularizer=1e-5", "--set", "amp=off"]
    assert cli.main(argv) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["hparams"]["hidden_units"] == [8, 4] and r["train_config"]["monitor"] == "AUC-logloss"
    assert r["train_config"]["lr"] == 0.01 and r["train_config"]["embedding_regularizer"] == 1e-5
    assert r["train_config"]["amp"] == "off" == r["amp"]
    assert r["checkpoint"] == "runs/criteo/seed5/DeepFM/best.pt" and (tmp_path / r["checkpoint"]).is_file()
    assert cli.main(argv + ["--epochs", "2", "--resume"]) == 0  # train one more epoch from last.pt
    r2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r2["epochs"] == 2 and r2["history"][0] == r["history"][0]

    assert cli.main(argv + ["--set", "hiden_units=[8]"]) == 2
    err = capsys.readouterr().err
    assert "ctrkit: error: --set hiden_units: unknown key" in err and "hidden_units" in err and "batch_size" in err
    assert cli.main(argv + ["--set", "lr=-1"]) == 2
    assert "lr" in capsys.readouterr().err


@pytest.mark.parametrize("setting, expected", [("", "tuned"), ("default", "default")])
def test_cpu_allocator_tuning_is_recorded_and_can_be_switched_off(setting, expected, tmp_path):
    """fit on CPU tunes glibc malloc once per process (unless CTRKIT_CPU_ALLOCATOR=default) and
    records which allocator the result was measured with; run in a fresh process (it is global)."""
    if sys.platform != "linux":
        pytest.skip("mallopt tuning is Linux/glibc only")
    code = (
        "import torch; from ctrkit import data, models; from ctrkit.core import utils; from ctrkit.training.loop import fit\n"
        "assert utils.env_info()['cpu_allocator'] == 'default'\n"
        f"d = data.synthetic_dataset('criteo', 400, {str(tmp_path)!r}, seed=1)\n"
        "m = models.build('LR', d.field_sizes)\n"
        "r = fit(m, d, dict(epochs=1, batch_size=200, device='cpu', progress=False))\n"
        "print(r['env']['cpu_allocator'])\n")
    env = {**os.environ, "CTRKIT_CPU_ALLOCATOR": setting}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == expected


def test_importing_ctrkit_makes_mkl_products_the_same_bits_at_any_thread_count():
    """MKL splits a thin product's sums over its threads (other bits at 2 threads than at 1, seen on an
    AVX-512 Xeon) unless its strict reproducibility mode is on: importing ctrkit turns it on before any
    product, and keeps a mode the user chose."""
    code = ("import os, torch, ctrkit; torch.manual_seed(0); a, b = torch.randn(64, 5000), torch.randn(5000, 20); "
            "outs = [(torch.set_num_threads(t), a @ b)[1] for t in (1, 2, 1)]; "
            "print(os.environ['MKL_CBWR'], all(torch.equal(outs[0], o) for o in outs[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["AUTO,STRICT", "True"]
    mine = subprocess.run([sys.executable, "-c", code], env={**env, "MKL_CBWR": "COMPATIBLE"}, capture_output=True,
                          text=True, check=True)
    assert mine.stdout.split()[0] == "COMPATIBLE"


def test_results_do_not_depend_on_the_thread_count(criteo_small):
    """Why `threads="auto"` may follow the machine's load: 1 and 2 threads train to the same result
    (fp32 and bf16), and the count used is recorded with the result."""
    for amp in ("off", "bf16"):
        runs = [T.fit(smoke_model("DeepFM", criteo_small, net_dropout=0.1), criteo_small,
                      cfg(epochs=1, amp=amp, threads=t)) for t in (1, 2)]
        assert [r["env"]["torch_threads"] for r in runs] == [1, 2]
        assert strip_times(runs[0]["history"]) == strip_times(runs[1]["history"])
        assert (runs[0]["test_auc"], runs[0]["test_logloss"]) == (runs[1]["test_auc"], runs[1]["test_logloss"])
    with pytest.raises(CtrkitError, match="threads must be a positive int or 'auto'"):
        C.RunConfig.single({"threads": 0})
