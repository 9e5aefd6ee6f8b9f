"""Compiled training forwards (`ctrkit.training.compiled`): the `compile` setting, every model trained
through torch.compile of its reference maths on the CPU giving eager's results within float tolerance,
the one-line error of a compile that fails, and replicas refusing it."""
import dataclasses

import pytest
import torch

from ctrkit import cli, models
from ctrkit.core.utils import CtrkitError, seed_everything
from ctrkit.training import compiled, presets
from ctrkit.training import config as C
from ctrkit.training.loop import fit
from ctrkit.training.mutual import mutual_fit

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's


def _model(name, data, seed=7):
    seed_everything(seed)
    return models.build(name, data.field_sizes, **presets.get(name, "smoke").model)


def _config(**kw):
    base = dict(epochs=2, batch_size=512, lr=3e-3, patience=2, progress=False, device="cpu", amp="off", seed=7)
    return C.RunConfig.single({**base, **kw})


def test_compile_is_one_validated_setting_outside_keys():
    assert C.RunConfig(peers=({},), mode="alone").compile == "off"
    with pytest.raises(CtrkitError, match=r"^train config compile: expected one of off, on") as e:
        C.RunConfig(peers=({},), mode="alone", compile="max")
    assert "\n" not in str(e.value)
    run = C.RunConfig.single({"compile": "on", "epochs": 1})
    assert run.compile == "on" and "compile" not in run.train_dict(0) and "compile" not in run.run_dict()
    spec = C.RunSpec(peers=("DeepFM", "DCN"))
    assert spec.key("fp") == dataclasses.replace(spec, compile="on").key("fp")  # how, not what: same key
    assert C.RunSpec(peers=("DeepFM",), mode="alone", compile="on").run_config(
        [{"epochs": 1, "batch_size": 64}], "cpu").compile == "on"
    p = C.PretrainSpec(model="DeepFM", compile="on")
    assert p.base_train({})["compile"] == "on" and "compile" not in C.PretrainSpec(model="DeepFM").base_train({})
    parser = cli.build_parser()
    args = ["pretrain", "--data", "d", "--model", "DeepFM"]
    assert parser.parse_args(args).compile == "off" and parser.parse_args(args + ["--compile", "on"]).compile == "on"


def test_replicas_refuse_compile_in_one_line():
    assert not compiled.wanted("off", runs=4) and compiled.wanted("on", runs=1)
    with pytest.raises(CtrkitError, match=r"^compile=on is for one run at a time") as e:
        compiled.wanted("on", runs=2)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["DeepFM", "DCN", "PNN", "FiBiNET"])
def test_every_model_trains_compiled_to_the_eager_result_within_float_tolerance(criteo_small, name):
    eager = fit(_model(name, criteo_small), criteo_small, _config())
    comp = fit(_model(name, criteo_small), criteo_small, _config(compile="on"))
    assert comp["env"]["compile"] == "on" and "compile" not in eager["env"]
    assert len(comp["history"]) == len(eager["history"]) == 2
    for h_c, h_e in zip(comp["history"], eager["history"]):
        assert h_c["train_loss"] == pytest.approx(h_e["train_loss"], rel=1e-4)
    assert comp["test_auc"] == pytest.approx(eager["test_auc"], abs=1e-4)


def test_a_mutual_run_compiles_its_trained_peers(criteo_small):
    cfg = C.RunConfig(peers=({"lr": 3e-3}, {"lr": 3e-3}), mode="mutual", epochs=1, batch_size=512, seed=7,
                      device="cpu", amp="off", progress=False)
    eager = mutual_fit([_model("DeepFM", criteo_small), _model("DCN", criteo_small, 8)], criteo_small, cfg)
    comp = mutual_fit([_model("DeepFM", criteo_small), _model("DCN", criteo_small, 8)], criteo_small,
                      cfg.replace(compile="on"))
    for a, b in zip(comp["peers"], eager["peers"]):
        assert a["test_auc"] == pytest.approx(b["test_auc"], abs=1e-4)


def test_a_compile_that_fails_is_one_line_naming_the_model(criteo_small, monkeypatch):
    def broken(module, **kw):
        def fn(x):
            raise RuntimeError("backend exploded\nsecond line")
        return fn

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(CtrkitError, match=r"^compile=on: torch.compile of DeepFM failed: RuntimeError: "
                                          r"backend exploded$"):
        fit(_model("DeepFM", criteo_small), criteo_small, _config(compile="on", epochs=1))


@pytest.mark.gpu
@pytest.mark.parametrize("graph_mode", ["off", "on"])
def test_compiled_losses_equal_eager_on_cuda(criteo_small, graph_mode):
    """On CUDA the compiled forward (Triton), eager and inside the step's CUDA graph, trains to eager's losses."""
    cfg = dict(device="cuda", graph=graph_mode)
    eager = fit(_model("DeepFM", criteo_small).cuda(), criteo_small, _config(**cfg))
    comp = fit(_model("DeepFM", criteo_small).cuda(), criteo_small, _config(compile="on", **cfg))
    assert comp["env"]["compile"] == "on" and comp["env"]["graph"] == eager["env"]["graph"]
    for a, b in zip(eager["history"], comp["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-5)
        assert b["valid_auc"] == pytest.approx(a["valid_auc"], abs=2e-3)
