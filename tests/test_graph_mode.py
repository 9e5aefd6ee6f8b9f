"""Graph mode (`ctrkit.training.graph`): the `graph` setting, its CPU behaviour (eager, bit for bit),
the capture machinery driven on a CPU through an injected capture, the fallback and its one warning,
and on CUDA (`gpu` tests) graph losses equal to eager ones."""
import dataclasses
import warnings

import numpy as np
import pytest
import torch

from ctrkit import cli, models
from ctrkit.core.utils import CtrkitError, seed_everything
from ctrkit.training import config as C
from ctrkit.training import graph, metrics, presets
from ctrkit.training.loop import fit
from ctrkit.training.mutual import mutual_fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(name, data, seed=7, **hp):
    seed_everything(seed)
    return models.build(name, data.field_sizes, **{**presets.get(name, "smoke").model, **hp})


def _single(device="cpu", **kw):
    base = dict(epochs=2, batch_size=512, lr=3e-3, patience=2, progress=False, device=device, amp="off", seed=7)
    return C.RunConfig.single({**base, **kw})


def _mutual_cfg(device="cpu", peers=({"lr": 3e-3}, {"lr": 3e-3}), **kw):
    base = dict(mode="mutual", epochs=2, batch_size=512, seed=7, device=device, amp="off", progress=False)
    return C.RunConfig(peers=tuple(peers), **{**base, **kw})


def _same(a: dict, b: dict) -> bool:
    """Two results equal but for timings, and env (which says how the step ran); a mutual run's
    test probabilities (an array) element by element."""
    drop = {"seconds", "train_seconds", "samples_per_s", "env", "test_probs"}
    clean = lambda r: {k: ([{**h, "seconds": 0} for h in v] if k == "history" else v)  # noqa: E731
                       for k, v in r.items() if k not in drop}
    return clean(a) == clean(b) and np.array_equal(a.get("test_probs", []), b.get("test_probs", []))


def _fit(data, graph_mode, name="DeepFM", device="cpu", **kw):
    return fit(_model(name, data).to(device), data, _single(device, graph=graph_mode, **kw))


def _mutual(data, graph_mode, device="cpu", **kw):
    peers = [_model("DeepFM", data, seed=7), _model("DCN", data, seed=8)]
    return mutual_fit(peers, data, _mutual_cfg(device, graph=graph_mode, **kw))


# ---------------------------------------------------------------- the setting


def test_graph_is_one_validated_setting_outside_keys_and_signatures():
    assert C.RunConfig(peers=({},), mode="alone").graph == "auto"
    for bad in ("yes", True, None, "ON"):
        with pytest.raises(CtrkitError, match=r"^train config graph: expected one of auto, on, off") as e:
            C.RunConfig(peers=({},), mode="alone", graph=bad)
        assert "\n" not in str(e.value)
    run = C.RunConfig.single({"graph": "off", "epochs": 1})
    assert run.graph == "off" and "graph" not in run.train_dict(0) and "graph" not in run.run_dict()
    with pytest.raises(CtrkitError, match="unknown train config key.*graph"):
        C.RunConfig.single({"grahp": "off"})
    # how a run goes, not what it gives: the store's keys do not see it
    spec = C.RunSpec(peers=("DeepFM", "DCN"))
    assert spec.key("fp") == dataclasses.replace(spec, graph="off").key("fp")
    assert C.RunSpec(peers=("DeepFM", "DCN"), graph="on").run_config([{"epochs": 1, "batch_size": 64}] * 2,
                                                                       "cpu").graph == "on"
    with pytest.raises(CtrkitError, match="graph"):
        C.RunSpec(peers=("DeepFM", "DCN"), graph="fast")
    p = C.PretrainSpec(model="DeepFM", graph="off")
    assert p.base_train({"epochs": 1})["graph"] == "off" and "graph" not in C.PretrainSpec(model="DeepFM").base_train({})
    train = C.RunConfig.single(p.base_train({"epochs": 1})).train_dict(0)
    assert p.keys("fp", {}, train) == C.PretrainSpec(model="DeepFM").keys("fp", {}, train)
    with pytest.raises(CtrkitError, match="graph"):
        C.PretrainSpec(model="DeepFM", graph=1)


def test_cli_graph_flag(capsys):
    parser = cli.build_parser()
    for sub in (["pretrain", "--data", "d", "--model", "DeepFM"], ["mutual", "--data", "d", "--peers", "DeepFM,DCN", "--init", "scratch"]):
        assert parser.parse_args(sub).graph == "auto"
        assert parser.parse_args(sub + ["--graph", "off"]).graph == "off"
        with pytest.raises(SystemExit) as e:
            parser.parse_args(sub + ["--graph", "sometimes"])
        assert e.value.code == 2 and "--graph" in capsys.readouterr().err


def test_wanted_only_on_cuda_for_one_local_run():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not graph.wanted("auto", cpu, local=True) and not graph.wanted("off", cuda, local=True)
    assert graph.wanted("auto", cuda, local=True) and graph.wanted("on", cuda, local=True)
    assert not graph.wanted("auto", cuda, local=False) and not graph.wanted("auto", cuda, local=True, runs=2)
    for kw in (dict(device=cpu, local=True), dict(device=cuda, local=False), dict(device=cuda, local=True, runs=3)):
        with pytest.raises(CtrkitError, match=r"^graph=on ") as e:
            graph.wanted("on", **kw)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- on a CPU


def test_graph_on_a_cpu_is_a_one_line_error(criteo_small):
    with pytest.raises(CtrkitError, match=r"^graph=on needs a CUDA device; this run is on cpu") as e:
        _fit(criteo_small, "on", epochs=1)
    assert "\n" not in str(e.value)


def test_cli_graph_on_a_cpu_exits_2_with_one_line(criteo_small, tmp_path, capsys):
    argv = ["pretrain", "--data", str(criteo_small.path), "--model", "DeepFM", "--preset", "smoke", "--device", "cpu",
            "--epochs", "1", "--out", str(tmp_path / "p")]
    assert cli.main(argv + ["--graph", "on"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ctrkit: error: graph=on needs a CUDA device; this run is on cpu; use graph=auto or graph=off"
    assert cli.main(argv + ["--graph", "off"]) == 0


def test_auto_on_a_cpu_is_eager_bit_for_bit(criteo_small):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto on a CPU is silent
        a, b = _fit(criteo_small, "auto"), _fit(criteo_small, "off")
        ma, mb = _mutual(criteo_small, "auto"), _mutual(criteo_small, "off")
    assert _same(a, b) and a["test_auc"] == b["test_auc"]
    assert _same(ma, mb) and [p["test_auc"] for p in ma["peers"]] == [p["test_auc"] for p in mb["peers"]]
    for r in (a, ma):  # no speed share nor graph status on a CPU
        assert not {"mfu", "graph", "model_flops_per_sample"} & set(r["env"])


class _Replay:
    """A CPU stand-in for capture_cuda: warms up like it (real steps, to be undone), then 'replays'
    by running the step again on the static buffers. Counts captures."""

    def __init__(self, fail_after_warmup=False):
        self.captures, self.fail = 0, fail_after_warmup

    def __call__(self, step):
        step()  # a warm-up step: its updates must be rewound
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nsecond line")
        self.captures += 1
        return step


@pytest.fixture
def cpu_graph(monkeypatch):
    """Graph mode forced on a CPU with an injected capture."""
    replay = _Replay()
    monkeypatch.setattr(graph, "wanted", lambda mode, device, **kw: mode != "off")
    monkeypatch.setattr(graph, "capture_cuda", replay)
    return replay


def test_the_graph_machinery_gives_eager_results_bit_for_bit(criteo_small, cpu_graph):
    """Static index buffer, loss sums and non-finite records on the device, the last partial batch
    eager, the warm-up undone: the same result as the eager loop, single model and mutual."""
    eager = _fit(criteo_small, "off")
    assert cpu_graph.captures == 0
    replayed = _fit(criteo_small, "auto")
    assert cpu_graph.captures == 1 and _same(replayed, eager)
    m_eager, m_graph = _mutual(criteo_small, "off"), _mutual(criteo_small, "on")
    assert cpu_graph.captures == 2 and _same(m_graph, m_eager)


def test_a_resumed_graph_run_equals_the_uninterrupted_one(criteo_small, cpu_graph, tmp_path):
    whole = _fit(criteo_small, "auto", epochs=3)
    fit(_model("DeepFM", criteo_small), criteo_small, _single(graph="auto", epochs=1), out_dir=tmp_path)
    resumed = fit(_model("DeepFM", criteo_small), criteo_small, _single(graph="auto", epochs=3), out_dir=tmp_path,
                  resume=True)
    assert cpu_graph.captures == 3 and _same({**resumed, "checkpoint": None}, {**whole, "checkpoint": None})


def test_an_early_stop_selects_another_capture(criteo_small, cpu_graph):
    # peer 0 stops after epoch 1 (patience 0), then teaches frozen while peer 1 trains on
    peers = ({"lr": 3e-3, "patience": 0}, {"lr": 3e-3})
    runs = [mutual_fit([_model("DeepFM", criteo_small, 7), _model("PNN", criteo_small, 8)], criteo_small,
                       _mutual_cfg(peers=peers, epochs=3, graph=g)) for g in ("off", "auto")]
    assert runs[0]["peers"][0]["stopped_early"] and len(runs[0]["history"]) == 3
    assert cpu_graph.captures == 2 and _same(runs[0], runs[1])


def test_warmup_steps_run_eagerly_then_the_graph(criteo_small, cpu_graph):
    kw = dict(weight=2.0, warmup_steps=9)  # 7 steps per epoch: epoch 2 starts in the warm-up
    assert _same(_mutual(criteo_small, "auto", **kw), _mutual(criteo_small, "off", **kw))
    assert cpu_graph.captures == 1


@pytest.mark.parametrize("mode, divergence", [("alone", "mse"), ("ensemble_teacher", "kl"), ("ektf", "mse")])
def test_every_rule_replays_to_the_eager_result(criteo_small, cpu_graph, mode, divergence):
    kw = dict(mode=mode, divergence=divergence, weight=0.0 if mode == "alone" else 3.0, epochs=1)
    assert _same(_mutual(criteo_small, "auto", **kw), _mutual(criteo_small, "off", **kw))
    assert cpu_graph.captures == 1


def test_a_run_spec_with_one_shared_table_replays_to_the_eager_result(criteo_small, cpu_graph):
    from ctrkit.experiments import runs
    spec = dict(peers=("DeepFM", "DCN"), share_embedding=True, preset="smoke", epochs=2, device="cpu", progress=False)
    eager, replayed = (runs.run(runs.RunSpec(**spec, graph=g), criteo_small) for g in ("off", "auto"))
    keep = lambda r: {"peers": r["peers"], "ensemble": r["ensemble"], "history": r["history"]}  # noqa: E731
    assert cpu_graph.captures == 1 and _same(keep(replayed), keep(eager))


def test_lr_decay_fills_the_lr_tensor_the_graph_reads():
    from types import SimpleNamespace

    from ctrkit.training import optim
    model = torch.nn.Linear(3, 1)
    cfg = C.TrainConfig(lr=0.01, lr_decay=0.1, patience=5)
    opt = optim.make_optimizer(model, cfg)
    tracker = optim.Tracker(opt, cfg)
    graph._make_capturable(opt, torch.device("cpu"))
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and opt.param_groups[0]["capturable"]
    tracker.on_epoch_end(1, {"auc": 0.7, "logloss": 0.5}, model)
    tracker.on_epoch_end(2, {"auc": 0.6, "logloss": 0.5}, model)  # no better: the plateau decay
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.001) and tracker.lr == pytest.approx(0.001)
    # a schedule that writes a float instead: copied into the tensor before the next replay
    group = opt.param_groups[0]
    group["lr"] = 1e-4
    graph.GraphStep._sync_lr(SimpleNamespace(lrs=[(group, lr)]))
    assert group["lr"] is lr and float(lr) == pytest.approx(1e-4)
    # what a checkpoint keeps loads into a plain optimizer on any device and steps
    fresh = optim.make_optimizer(torch.nn.Linear(3, 1), cfg)
    fresh.load_state_dict(graph.portable_optimizer_state(opt.state_dict()))
    assert fresh.param_groups[0]["lr"] == pytest.approx(1e-4) and not fresh.param_groups[0]["capturable"]
    fresh.step()


def test_a_failed_capture_warns_once_and_trains_on_eagerly(criteo_small, monkeypatch):
    failing = _Replay(fail_after_warmup=True)
    monkeypatch.setattr(graph, "wanted", lambda mode, device, **kw: mode != "off")
    monkeypatch.setattr(graph, "capture_cuda", failing)
    eager = _mutual(criteo_small, "off")
    with pytest.warns(RuntimeWarning, match=r"graph=auto: capturing .* failed \(RuntimeError: operation not "
                                            r"permitted when stream is capturing\); this run trains eagerly") as w:
        fallback = _mutual(criteo_small, "auto")
    assert len([x for x in w if "graph=auto" in str(x.message)]) == 1
    assert _same(fallback, eager)  # the failed attempt's warm-up step was undone
    with pytest.raises(CtrkitError, match=r"^graph=on: capturing the training step failed: RuntimeError") as e:
        _mutual(criteo_small, "on")
    assert "\n" not in str(e.value)


def test_portable_optimizer_state_and_flops():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=torch.tensor(0.01))
    opt.param_groups[0]["capturable"] = True
    state = graph.portable_optimizer_state(opt.state_dict())
    assert state["param_groups"][0]["lr"] == pytest.approx(0.01) and not state["param_groups"][0]["capturable"]
    plain = torch.optim.Adam([p], lr=0.01).state_dict()
    assert graph.portable_optimizer_state(plain) == plain
    # matmul FLOPs of a forward per sample: 2 x the Linear layers' weights for an MLP-only count
    m = models.build("DeepFM", [10] * 5, embedding_dim=4, hidden_units=[8, 8])
    assert metrics.forward_flops_per_sample(m, torch.randint(0, 10, (16, 5))) == 2 * (20 * 8 + 8 * 8 + 8 * 1)
    assert metrics.throughput(1000.0, None, None) == {"samples_per_s": 1000.0}
    t = metrics.throughput(1000.0, 3e6, 1e12)
    assert t["mfu"] == pytest.approx(0.003) and t["matmul_peak_tflops"] == 1.0


# ---------------------------------------------------------------- on CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_graph_losses_equal_eager_on_cuda(criteo_small, amp):
    eager, replayed = (_fit(criteo_small, g, device="cuda", amp=amp) for g in ("off", "on"))
    assert replayed["env"]["graph"] == "on" and eager["env"]["graph"] == "off" and 0 < replayed["env"]["mfu"] < 1
    for a, b in zip(eager["history"], replayed["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-5)
        assert b["valid_auc"] == pytest.approx(a["valid_auc"], abs=2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("overlap", [True, False])
def test_graph_mutual_losses_equal_eager_on_cuda(criteo_small, monkeypatch, overlap):
    monkeypatch.setattr(graph, "OVERLAP_PEERS", overlap)
    eager, replayed = (_mutual(criteo_small, g, device="cuda") for g in ("off", "on"))
    assert replayed["env"]["graph"] == "on"
    for a, b in zip(eager["history"], replayed["history"]):
        for pa, pb in zip(a["peers"], b["peers"]):
            assert pb["train_loss"] == pytest.approx(pa["train_loss"], rel=1e-4, abs=1e-5)
            assert pb["valid_auc"] == pytest.approx(pa["valid_auc"], abs=2e-3)


def test_every_profile_sets_graph_and_reproduce_passes_it_wherever_it_passes_amp():
    """`graph` is a profile key like `amp`: each profile's is a valid choice, the notebooks' settings
    carry it, and every grid the notebooks or reproduce's helpers start gets it beside amp."""
    import re
    from pathlib import Path

    from ctrkit.notebook import profiles, reproduce

    for name, prof in profiles.PROFILES.items():
        assert prof["graph"] in C.GRAPH_CHOICES, name
        if not prof.get("rows") and name != "smoke":
            continue  # profiles on real data need --data to build their settings
        assert reproduce.settings(dataset="criteo", profile=name, out="unused").graph == prof["graph"]
    root = Path(reproduce.__file__).resolve().parents[2]
    sources = [root / "ctrkit" / "notebook" / "reproduce.py", root / "notebooks" / "make_notebooks.py",
               *sorted((root / "notebooks").glob("*.ipynb"))]
    for path in sources:
        text = path.read_text()
        assert len(re.findall(r"amp=cfg\.amp", text)) == len(re.findall(r"graph=cfg\.graph", text)), path.name
    assert sum("graph=cfg.graph" in p.read_text() for p in sources) >= 6
