"""The Python API's arguments: one rule for numbers (numpy's accepted and converted, bool refused
where a number is meant), grid axes given as one value or a list, a flat peer list refused with a
hint, one-line CtrkitErrors naming the parameter (not a CLI flag), and "did you mean" for typos."""
import json
import types

import numpy as np
import pytest

from ctrkit import experiments, models
from ctrkit.core import utils
from ctrkit.core.utils import CtrkitError, seed_everything
from ctrkit.experiments import designs, runs
from ctrkit.training import config as C, losses, presets

TWO = (C.TrainConfig(), C.TrainConfig())


# ---------------------------------------------------------------- the one rule of numbers


@pytest.mark.parametrize("value, expected", [(5, 5), (np.int64(5), 5), (np.int32(-3), -3), (np.uint8(7), 7)])
def test_integers_are_python_ints(value, expected):
    n = utils.as_int(value)
    assert n == expected and type(n) is int


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 5.0, np.float64(5), "5", None, [5]])
def test_non_integers_are_not_ints(value):
    assert utils.as_int(value) is None


def test_the_one_seed_rule():
    """Every seed (flags, notebook parameters, the widget, schemas, run settings) is checked by these two,
    so the same seed is taken or refused everywhere, in the same words."""
    assert utils.seed_problem(0) is None and utils.seed_problem(np.int64(2**63 - 1)) is None
    for bad in (-1, 2**63, True, 2021.0, "2021"):
        assert utils.seed_problem(bad) == f"expected an integer from 0 to 2**63-1, got {bad!r}"
    assert utils.seeds_problem([1, 2]) is None and utils.seeds_problem([7], at_least=2) == "expected at least 2 seeds, got 1"
    assert utils.seeds_problem([1, 2, 1]) == "1 is listed twice (each seed runs once)"
    assert utils.seeds_problem([1, -5, 1]) == "expected an integer from 0 to 2**63-1, got -5"
    with pytest.raises(CtrkitError, match=r"run setting seed: expected an integer from 0 to 2\*\*63-1, got -1"):
        C.RunSpec(peers=("DeepFM", "DCN"), init="scratch", seed=-1)


@pytest.mark.parametrize("value, expected", [(0.5, 0.5), (np.float32(0.5), 0.5), (np.float64(0.25), 0.25),
                                             (1, 1.0), (np.int64(2), 2.0)])
def test_reals_are_python_floats(value, expected):
    f = utils.as_float(value)
    assert f == expected and type(f) is float


@pytest.mark.parametrize("value", [True, np.bool_(False), "1", None, [1.0], 1j])
def test_non_reals_are_not_floats(value):
    assert utils.as_float(value) is None and utils.as_number(value) is None


def test_as_number_keeps_an_int_an_int():
    assert type(utils.as_number(np.int64(1))) is int and type(utils.as_number(np.float32(1))) is float


# ---------------------------------------------------------------- numpy values are accepted and converted


@pytest.mark.parametrize("kwargs, field, expected", [
    (dict(lr=np.float32(0.5)), "lr", 0.5),
    (dict(lr=np.float64(0.01)), "lr", 0.01),
    (dict(patience=np.int64(3)), "patience", 3),
    (dict(clip_grad_norm=np.float32(2.0)), "clip_grad_norm", 2.0),
    (dict(embedding_regularizer=np.float32(0.5)), "embedding_regularizer", 0.5),
])
def test_train_config_takes_numpy_numbers(kwargs, field, expected):
    v = getattr(C.TrainConfig(**kwargs), field)
    assert v == pytest.approx(expected) and type(v) in (int, float) and type(v) is type(expected)


@pytest.mark.parametrize("field, value", [("epochs", np.int64(3)), ("batch_size", np.int32(64)),
                                          ("seed", np.int64(2021)), ("warmup_steps", np.int64(0)),
                                          ("weight", np.float32(0.5)), ("threads", np.int64(1))])
def test_run_config_takes_numpy_numbers(field, value):
    c = C.RunConfig(peers=TWO, device="cpu", **{field: value})
    assert getattr(c, field) == value and type(getattr(c, field)) in (int, float)
    json.dumps(c.run_dict())  # what result.json records


@pytest.mark.parametrize("field, value, plain", [("seed", np.int64(2021), 2021), ("epochs", np.int64(2), 2),
                                                 ("batch_size", np.int64(256), 256),
                                                 ("finetune_lr_scale", np.float64(0.5), 0.5),
                                                 ("weight", np.float32(0.5), 0.5)])
def test_run_spec_takes_numpy_numbers_with_the_same_run_key(field, value, plain):
    base = dict(peers=("DeepFM", "DCN"), init="pretrained", ckpt_dir="ck")
    spec, same = C.RunSpec(**base, **{field: value}), C.RunSpec(**base, **{field: plain})
    assert type(getattr(spec, field)) is type(plain)
    assert spec.key("fp") == same.key("fp")


def test_run_spec_keeps_an_int_lr_scale_an_int():
    """Existing stores keyed finetune_lr_scale=1 as the int 1: converting it to 1.0 would rerun those runs."""
    spec = C.RunSpec(peers=("DeepFM", "DCN"), init="pretrained", ckpt_dir="ck", finetune_lr_scale=np.int64(1))
    assert type(spec.finetune_lr_scale) is int


def test_pretrain_spec_converts_its_seed_and_epochs():
    spec = C.PretrainSpec(model="LR", seed=np.int64(7), epochs=np.int64(2))
    assert (spec.seed, spec.epochs) == (7, 2) and type(spec.seed) is int and type(spec.epochs) is int


def test_models_take_numpy_numbers_and_record_plain_ones():
    m = models.build("DeepFM", np.array([10, 20]), embedding_dim=np.int64(4), hidden_units=np.array([8, 8]),
                     net_dropout=np.float32(0.25))
    assert m.field_sizes == [10, 20] and all(type(s) is int for s in m.field_sizes)
    assert m.hparams["embedding_dim"] == 4 and type(m.hparams["embedding_dim"]) is int
    assert m.hparams["hidden_units"] == [8, 8] and m.hparams["net_dropout"] == 0.25
    json.dumps(m.hparams)  # the checkpoint's record
    assert models.build("DCN", [np.int64(3), 4], num_cross_layers=np.int64(2)).hparams["num_cross_layers"] == 2


def test_seed_everything_takes_numpy_ints():
    a = seed_everything(np.int64(3)).initial_seed()
    assert a == seed_everything(3).initial_seed() == 3


# ---------------------------------------------------------------- bools, strings, floats where they do not belong


@pytest.mark.parametrize("make, says", [
    (lambda: C.RunSpec(peers=("LR", "FM"), weight=True), "mutual weight"),
    (lambda: C.RunSpec(peers=("LR", "FM"), init="pretrained", ckpt_dir="ck", finetune_lr_scale=True),
     "finetune_lr_scale"),
    (lambda: C.RunSpec(peers=("LR", "FM"), seed=True), "seed"),
    (lambda: C.RunConfig(peers=TWO, weight=True), "mutual weight"),
    (lambda: C.RunConfig(peers=TWO, epochs=True), "epochs"),
    (lambda: C.TrainConfig(lr=True), "lr"),
    (lambda: C.TrainConfig(monitor={"AUC": True}), "monitor"),
    (lambda: models.build("LR", [True, 3]), "vocab size"),
    (lambda: models.build("FM", [3, 4], embedding_dim=True), "embedding_dim"),
    (lambda: models.build("DeepFM", [3, 4], net_dropout=False), "net_dropout"),
    (lambda: seed_everything(True), "seed"),
    (lambda: C.PretrainSpec(model="LR", seed=True), "seed"),
])
def test_a_bool_is_not_a_number(make, says):
    with pytest.raises(CtrkitError, match=says):
        make()


@pytest.mark.parametrize("make, says", [
    (lambda: C.RunConfig(peers=TWO, weight="1"), "mutual weight must be a number"),
    (lambda: C.RunSpec(peers=("LR", "FM"), weight="1"), "mutual weight must be a number"),
    (lambda: C.RunConfig(peers=None), "peers"),
    (lambda: C.RunConfig(peers="ab"), "peers"),
    (lambda: C.RunConfig(peers=[None, None]), "peers"),
    (lambda: C.RunSpec(peers=["LR", None]), "peers"),
    (lambda: C.RunSpec(peers=None), "peers"),
    (lambda: C.RunSpec(peers=5), "peers"),
    (lambda: seed_everything("1"), "seed"),
    (lambda: seed_everything(1.5), "seed"),
    (lambda: seed_everything(-1), "seed"),
    (lambda: C.PretrainSpec(model="LR", seed="1"), "seed"),
    (lambda: C.RunConfig(peers=TWO, threads=2.0), "threads"),
    (lambda: models.build("LR", [10.0, 3]), "vocab size"),
    (lambda: models.build("LR", ["10", "3"]), "vocab size"),
    (lambda: runs.replica_groups([C.RunSpec(peers=("LR", "FM"))], max_replicas=1.5), "max_replicas"),
    (lambda: runs.replica_groups([C.RunSpec(peers=("LR", "FM"))], max_replicas=0), "max_replicas"),
])
def test_bad_values_are_one_line_ctrkit_errors_naming_the_parameter(make, says):
    with pytest.raises(CtrkitError, match=says) as e:
        make()
    assert "\n" not in str(e.value)


def test_python_api_errors_do_not_name_cli_flags():
    with pytest.raises(CtrkitError) as e:
        C.RunSpec(peers=("LR",), mode="mutual")
    assert "needs at least 2 peers" in str(e.value) and "--peers" not in str(e.value)


# ---------------------------------------------------------------- replace


def test_run_config_replace_rejects_unknown_keys_like_train_config():
    c = C.RunConfig(peers=TWO, epochs=3)
    for obj, typo in ((c, "epoch"), (C.TrainConfig(), "lrr")):
        with pytest.raises(CtrkitError, match=rf"unknown .* key\(s\) {typo}; valid: .*did you mean"):
            obj.replace(**{typo: 1})
    assert c.replace(epochs=np.int64(5)).epochs == 5 and c.replace(mode="alone").weight == 0.0
    with pytest.raises(CtrkitError, match="epochs"):
        c.replace(epochs=-1)


# ---------------------------------------------------------------- did you mean


@pytest.mark.parametrize("make, suggestion", [
    (lambda: models.build("DeepFn", [3, 4]), "DeepFM"),
    (lambda: models.canonical_name("fibinett"), "FiBiNET"),
    (lambda: C.RunSpec(peers=("DeepFM", "DCNN")), "DCN"),
    (lambda: C.RunConfig(peers=TWO, mode="mutal"), "mutual"),
    (lambda: C.RunSpec(peers=("LR", "FM"), mode="ektff"), "ektf"),
    (lambda: C.RunSpec(peers=("LR", "FM"), init="pretrianed", ckpt_dir="ck"), "pretrained"),
    (lambda: C.TrainConfig(monitor="AUCC"), "AUC"),
    (lambda: C.RunSpec(peers=("LR", "FM"), finetune_monitor="AUC-loglos"), "AUC-logloss"),
    (lambda: C.TrainConfig(monitor={"logloos": -1}), "logloss"),
    (lambda: C.RunConfig(peers=TWO, amp="bf61"), "bf16"),
    (lambda: C.RunSpec.from_dict({"peers": ("LR", "FM"), "wieght": 1}), "weight"),
    (lambda: C.RunConfig.single({"epoch": 1}), "epochs"),
    (lambda: presets.get("DeepFM", "quik"), "quick"),
    (lambda: losses.check_divergence("mes"), "mse"),
])
def test_typos_get_a_did_you_mean(make, suggestion):
    with pytest.raises(CtrkitError, match=f"did you mean '{suggestion}'\\?$"):
        make()


def test_no_suggestion_when_nothing_is_close():
    with pytest.raises(CtrkitError) as e:
        models.build("xyzzy", [3])
    assert "did you mean" not in str(e.value)


# ---------------------------------------------------------------- grid axes


@pytest.mark.parametrize("kwargs, axis, values", [
    (dict(modes="alone"), "mode", ["alone"]),
    (dict(inits="scratch"), "init", ["scratch"]),
    (dict(seeds=2021), "seed", [2021]),
    (dict(seeds=np.int64(7)), "seed", [7]),
    (dict(seeds=np.arange(2)), "seed", [0, 1]),
    (dict(weight=np.array([0.5, 2.0])), "weight", [0.5, 2.0]),
    (dict(finetune_lr_scale=1), "finetune_lr_scale", [1]),
])
def test_a_grid_axis_is_one_value_or_a_list(kwargs, axis, values):
    grid_kw = {"inits": ["scratch"], "modes": ["mutual"], **kwargs}
    got = [s[axis] for s in experiments.expand([["LR", "FM"]], **grid_kw)]
    assert got == values


@pytest.mark.parametrize("axis", ["seeds", "inits", "modes", "weight", "finetune_lr_scale"])
def test_an_empty_axis_is_an_error_naming_it(axis):
    with pytest.raises(CtrkitError, match=f"^{axis}: an empty list runs nothing"):
        experiments.expand([["LR", "FM"]], **{axis: []})


@pytest.mark.parametrize("peer_sets, hint", [(["LR", "FM"], "[['LR', 'FM']]"), (["DeepFM"], "[['DeepFM']]"),
                                             ("LR", "[['LR']]")])
def test_a_flat_peer_list_is_an_error_with_a_hint(peer_sets, hint):
    with pytest.raises(CtrkitError, match="^peer_sets: expected a list of peer sets") as e:
        experiments.expand(peer_sets, inits=["scratch"], modes=["ektf"])
    assert hint in str(e.value)


@pytest.mark.parametrize("peer_sets, expected", [([["LR", "FM"]], [["LR", "FM"]]), ("LR,FM", [["LR", "FM"]]),
                                                 (["LR,FM", "DeepFM,DCN"], [["LR", "FM"], ["DeepFM", "DCN"]]),
                                                 ([("LR",), ["FM"]], [["LR"], ["FM"]])])
def test_peer_sets_as_documented(peer_sets, expected):
    assert [s["peers"] for s in experiments.expand(peer_sets, inits=["scratch"], modes=["alone"])] == expected


def test_an_empty_peer_sets_is_an_error():
    with pytest.raises(CtrkitError, match="^peer_sets: an empty list"):
        experiments.expand([], inits=["scratch"])


class _Stop(Exception):
    """Raised by the stand-ins below: what a grid would run is known, nothing is trained."""


def test_run_wraps_single_values_before_anything_runs(monkeypatch):
    seen = {}

    def execute_many(specs, data, **kw):
        seen.update(specs=specs, **kw)
        raise _Stop

    monkeypatch.setattr(runs, "execute_many", execute_many)
    with pytest.raises(_Stop):
        experiments.run(None, [["LR", "FM"]], inits="scratch", modes="alone", seeds=np.int64(5),
                        max_replicas=np.int64(2))
    [spec] = seen["specs"]
    assert (spec.peers, spec.mode, spec.init, spec.seed, type(spec.seed)) == (("LR", "FM"), "alone", "scratch", 5, int)
    assert seen["max_replicas"] == 2
    for kw, says in ((dict(max_replicas=1.5), "max_replicas"), (dict(seeds=[]), "seeds: an empty list")):
        with pytest.raises(CtrkitError, match=says):
            experiments.run(None, [["LR", "FM"]], inits=["scratch"], **kw)
    with pytest.raises(CtrkitError, match="peer_sets: expected a list of peer sets"):
        experiments.run(None, ["LR", "FM"], inits=["scratch"], modes=["ektf"])


def test_pretrain_baselines_wraps_single_values(monkeypatch, tmp_path):
    seen = {}

    def pretrain_groups(groups, data, **kw):
        seen["groups"] = groups
        raise _Stop

    monkeypatch.setattr(runs, "pretrain_groups", pretrain_groups)
    with pytest.raises(_Stop):
        experiments.pretrain_baselines(None, "LR", tmp_path, seeds=np.int64(2021), device="cpu")
    assert [(s.model, s.seed, type(s.seed)) for g in seen["groups"] for s in g] == [("LR", 2021, int)]
    for kw, says in ((dict(seeds=[]), "^seeds: an empty list"), (dict(max_replicas=1.5), "max_replicas"),
                     (dict(seeds=["2021"]), "seed")):
        with pytest.raises(CtrkitError, match=says):
            experiments.pretrain_baselines(None, ["LR"], tmp_path, device="cpu", **kw)
    with pytest.raises(CtrkitError, match="^models: an empty list"):
        experiments.pretrain_baselines(None, [], tmp_path)
    with pytest.raises(CtrkitError, match="^ckpt_dir"):
        experiments.pretrain_baselines(None, ["LR"], None)


# ---------------------------------------------------------------- runs.pretrain's resume follows out_dir


@pytest.mark.parametrize("out_dir, resume, expected", [(False, None, False), (True, None, True),
                                                       (True, False, False), (False, True, True)])
def test_pretrain_resumes_by_default_only_where_there_is_an_out_dir(monkeypatch, tmp_path, out_dir, resume,
                                                                    expected):
    """resume None: as `execute`, resume when `out_dir` is given; resume=True without one reaches `fit`,
    whose error says that it needs out_dir."""
    seen = {}

    def fit(model, data, cfg, *, out_dir, resume):
        seen["resume"] = resume
        raise _Stop

    monkeypatch.setattr(runs, "fit", fit)
    data = types.SimpleNamespace(dataset="criteo", protocol="x4_001", fingerprint="fp", field_sizes=[5, 7], path="d")
    kw = {} if resume is None else {"resume": resume}
    with pytest.raises(_Stop):
        runs.pretrain(C.PretrainSpec(model="LR", device="cpu", progress=False), data,
                      out_dir=tmp_path / "LR" if out_dir else None, **kw)
    assert seen["resume"] is expected


def test_pretrain_with_its_defaults_trains(criteo_small, one_thread):
    result, rec = runs.pretrain(C.PretrainSpec(model="LR", preset="smoke", epochs=1, device="cpu", threads=1,
                                               progress=False), criteo_small)
    assert 0 < result["test_auc"] < 1 and rec["seed"] == 2021
    with pytest.raises(CtrkitError, match="resume=True needs out_dir"):
        runs.pretrain(C.PretrainSpec(model="LR", preset="smoke", epochs=1, device="cpu", threads=1, progress=False),
                      criteo_small, resume=True)


# ---------------------------------------------------------------- the same rule further out


def test_workers_take_numpy_ints_and_refuse_bools():
    from ctrkit.experiments.workers import check_workers

    assert check_workers(np.int64(2)) == 2 and type(check_workers(np.int64(2))) is int
    for bad in (True, 1.5, 0):
        with pytest.raises(CtrkitError, match="workers must be a positive int"):
            check_workers(bad)


@pytest.mark.parametrize("make, says", [
    (lambda: designs.partner_subsets(target="DCN", n_peers=True), "n_peers must be an integer"),
    (lambda: designs.peer_count_sets(max_peers=True), "max_peers must be an integer"),
    (lambda: designs.sweep_grid(weights=[float("nan")], lr_scales=[1]), "weight values must be non-negative"),
    (lambda: designs.sweep_grid(weights=[1], lr_scales=[True]), "finetune_lr_scale values must be non-negative"),
    (lambda: models.build("FiBiNET", [3, 4], reduction_ratio=float("nan")), "reduction_ratio must be a positive"),
])
def test_designs_and_models_refuse_bools_and_nan(make, says):
    with pytest.raises(CtrkitError, match=says):
        make()
    assert designs.partner_subsets(target="DCN", n_peers=np.int64(2))[0] == ("DeepFM",)


def test_a_numpy_seed_finds_the_synthetic_cache(tmp_path):
    from ctrkit.data import ingest

    first = ingest.synthetic_dataset("criteo", 300, tmp_path, seed=np.int64(5))
    stamp = (tmp_path / "raw" / "synth.json").stat().st_mtime_ns
    again = ingest.synthetic_dataset("criteo", 300, tmp_path, seed=5)  # was stored as "5": never matched
    assert again.fingerprint == first.fingerprint and (tmp_path / "raw" / "synth.json").stat().st_mtime_ns == stamp


def test_a_misspelt_device_for_a_split_is_one_line(criteo_small):
    with pytest.raises(CtrkitError, match=r"^device 'cdua': not a torch device"):
        criteo_small.tensors("valid", "cdua")


@pytest.mark.parametrize("device, says", [("gpu", "got 'gpu'"), ("cdua", "did you mean 'cuda'"), (None, "got None"),
                                          (3, "got 3")])
def test_a_bad_device_names_the_setting_not_a_flag(device, says):
    with pytest.raises(CtrkitError, match=says) as e:
        utils.resolve_device(device)
    assert str(e.value).startswith("device must be cpu, cuda, cuda:N or auto") and "--" not in str(e.value)


def test_one_rule_names_a_device_for_runs_and_notebooks():
    import torch

    from ctrkit.notebook import profiles

    for name in ("cuda:x", "cuda:", "tpu"):  # 'cuda:x' was a format error to one, "no CUDA" to the other
        for check in (utils.resolve_device, profiles.check_device):
            with pytest.raises(CtrkitError, match="device must be cpu, cuda, cuda:N or auto"):
                check(name)
    assert profiles.check_device(torch.device("cpu")) == torch.device("cpu")


# ---------------------------------------------------------------- a model registered by the user


def test_a_registered_model_without_a_preset_is_one_line(monkeypatch, criteo_small, tmp_path):
    """`models.MODELS["MyMLP"] = MyMLP` builds, but nothing that trains by name has a preset for it:
    one line naming the preset, the models that have one and the route left (was a bare KeyError)."""
    class MyMLP(models.MODELS["LR"]):
        name = "MyMLP"

    monkeypatch.setitem(models.MODELS, "MyMLP", MyMLP)
    assert models.build("MyMLP", [3, 4]).name == "MyMLP"  # registered: only the preset is missing
    for preset in ("smoke", "bars"):
        with pytest.raises(CtrkitError, match=f"^no '{preset}' preset for model 'MyMLP' \\(presets exist for: "
                                              f"LR, FM, DeepFM, DCN, PNN, FiBiNET\\)") as e:
            presets.get("MyMLP", preset, "criteo", "x1")
        assert "\n" not in str(e.value) and "loop.fit(models.build('MyMLP', data.field_sizes" in str(e.value)
    with pytest.raises(CtrkitError, match="^no 'smoke' preset for model 'MyMLP'"):
        experiments.pretrain_baselines(criteo_small, ["MyMLP"], tmp_path, preset="smoke", device="cpu", progress=False)
    assert not any(tmp_path.rglob("*.pt"))


# ---------------------------------------------------------------- messages the CLI and Python share


def test_shared_errors_name_the_python_form_and_the_runs_preset(tmp_path):
    """Messages that the CLI and the Python API both reach name both forms, and a missing checkpoint's
    pretrain hint carries the run's preset (it said `pretrain_baselines(data, ['FM'], ..., seeds=[7])`)."""
    with pytest.raises(CtrkitError) as e:
        runs.apply_overrides("LR", {}, {}, {"hiden": 1})
    assert str(e.value).startswith("--set hiden: unknown key") and "overrides={'hiden': ...} from Python" in str(e.value)
    with pytest.raises(CtrkitError) as e:  # experiments.run: its own check, before anything runs
        experiments.run(None, [["FM", "LR"]], ckpt_dir=tmp_path, seeds=[7], preset="smoke")
    assert f"experiments.pretrain_baselines(data, ['FM'], {str(tmp_path)!r}, seeds=[7], preset='smoke')" in str(e.value)
    data = types.SimpleNamespace(path="dd", fingerprint="fp")
    spec = C.RunSpec(peers=("FM", "LR"), init="pretrained", ckpt_dir=tmp_path, seed=7, preset="smoke", device="cpu")
    with pytest.raises(CtrkitError) as e:  # runs.execute: what `ctrkit mutual` reaches too
        runs.execute(spec, data)
    msg = str(e.value)
    assert "ctrkit pretrain --data dd --model FM --seed 7 --preset smoke --out " in msg and "\n" not in msg
    assert f"runs.pretrain(runs.PretrainSpec(model='FM', seed=7, preset='smoke'), data, out_dir=" in msg
    (tmp_path / "seed7" / "FM").mkdir(parents=True)
    (tmp_path / "seed7" / "FM" / "best.pt").touch()
    with pytest.raises(CtrkitError, match=r"holds seed7: pass --seeds, or --ckpt-dir one of them; from Python: "
                                          r"ckpt_dir one of them, or experiments.run\(\.\.\., ckpt_dir="):
        runs.execute(spec, data)


# ---------------------------------------------------------------- divergence: an axis, moot for the control


def test_a_divergence_axis_keeps_one_alone_control():
    """alone learns from nobody: one run (at the default divergence, the key it always had) for every
    divergence of the grid, as for every weight; the runs that learn get one per divergence."""
    grid = experiments.expand([["LR", "FM"]], inits=["scratch"], modes=["mutual", "alone", "kd"], weight=[1, 3],
                              divergence=["mse", "kl"])
    got = sorted((s["mode"], s["weight"], s["divergence"]) for s in grid)
    assert got == [("alone", 1, "mse"), ("kd", 1, "kl"), ("kd", 1, "mse"), ("kd", 3, "kl"), ("kd", 3, "mse"),
                   ("mutual", 1, "kl"), ("mutual", 1, "mse"), ("mutual", 3, "kl"), ("mutual", 3, "mse")]
    # the alone run of a KL grid is the same control run (and key) as the MSE grid's
    alone_kl, = experiments.expand([["LR", "FM"]], inits=["scratch"], modes=["alone"], divergence="kl")
    alone_mse, = experiments.expand([["LR", "FM"]], inits=["scratch"], modes=["alone"])
    assert C.RunSpec(**alone_kl).key("fp") == C.RunSpec(**alone_mse).key("fp")
    with pytest.raises(CtrkitError, match="unknown divergence 'kll'"):  # checked even where only alone would carry it
        experiments.expand([["LR", "FM"]], inits=["scratch"], modes=["alone"], divergence=["mse", "kll"])
    with pytest.raises(CtrkitError, match="^divergence: an empty list runs nothing"):
        experiments.expand([["LR", "FM"]], divergence=[])


def test_a_two_divergence_grid_trains_each_alone_run_once_and_pairs_both(criteo_small, tmp_path, one_thread):
    """The grid over MSE and KL trains the alone control once (one call, or one call per divergence),
    and the tables pair the mutual runs of both divergences with it."""
    from ctrkit.analysis import records, tables

    kw = dict(inits=["scratch"], modes=["mutual", "alone"], seeds=[1], preset="smoke", epochs=1, device="cpu",
              threads=1, progress=False)
    one = tmp_path / "one.jsonl"
    experiments.run(criteo_small, [["LR", "FM"]], divergence=["mse", "kl"], store=one, **kw)
    per_call = tmp_path / "per_call.jsonl"
    for div in ("mse", "kl"):
        experiments.run(criteo_small, [["LR", "FM"]], divergence=div, store=per_call, **kw)
    for store in (one, per_call):
        df = records.records(store)
        assert sorted(df.groupby("mode")["run_key"].nunique().items()) == [("alone", 1), ("mutual", 2)]
        assert (df["mode"] == "alone").sum() == 2  # one run of two peers, recorded once
        t = tables.scratch(store)
        div = df.drop_duplicates("settings_key").set_index("settings_key")["divergence"]
        assert sorted(div[t["settings_key"]].unique()) == ["kl", "mse"]
        assert (t["n_pairs"] == 1).all() and len(t) == 4  # each divergence x each model, paired with the control
