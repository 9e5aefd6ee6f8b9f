"""A model of the user's own: `models.register`, the registry's checks, its embedding tables under the
regularizer, finetuning it in a grid (seeds as replicas) into the paired tables, training it by name
from the presets its class declares (`CTRModel.presets`), an installed package's models (the
`ctrkit.models` entry points: the CLI knows them) and worker processes importing a registered model's
module."""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

from ctrkit import experiments, models
from ctrkit.analysis import tables
from ctrkit import cli
from ctrkit.core.utils import CtrkitError, seed_everything
from ctrkit.experiments import workers
from ctrkit.models.base import CTRModel
from ctrkit.models.layers import FeatureEmbedding
from ctrkit.training import loop, presets
from ctrkit.training.config import RunConfig


class WideDeep(CTRModel):
    name = "WideDeep"

    def __init__(self, fields, embedding_dim: int = 4, hidden: int = 8):
        super().__init__(fields, dict(embedding_dim=embedding_dim, hidden=hidden))
        self.embedding = FeatureEmbedding(self.field_sizes, embedding_dim)
        self.wide = nn.Embedding(sum(self.field_sizes), 1)  # torch's own table: still an embedding
        self.deep = nn.Sequential(nn.Linear(self.num_fields * embedding_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, X):
        e = self.embedding(X)
        wide = self.wide(self.embedding.rows(X)).sum(dim=(1, 2))
        return wide + self.deep(e.flatten(1)).squeeze(-1)


class PresetNet(WideDeep):
    """WideDeep with a preset of its own: it trains by name (scratch runs, baselines, the CLI)."""
    name = "PresetNet"
    presets = {"smoke": {"model": {"embedding_dim": 2, "hidden": 4},
                         "train": {**presets.get("DeepFM", "smoke").train, "batch_size": 256}}}


@pytest.fixture
def registry(monkeypatch):
    """`models.MODELS` as it was after the test, whatever the test registered."""
    saved = dict(models.MODELS)
    yield models.MODELS
    models.MODELS.clear()
    models.MODELS.update(saved)


def test_register_adds_a_model_that_builds_and_a_rerun_cell_replaces_it(registry):
    assert models.register(WideDeep) is WideDeep
    m = models.build("widedeep", [3, 4], hidden=5)  # names are case-insensitive, as the built-ins'
    assert type(m) is WideDeep and m.hparams == {"embedding_dim": 4, "hidden": 5}

    class WideDeepAgain(WideDeep):  # the notebook cell defining it, run a second time
        name = "WideDeep"

    models.register(WideDeepAgain)
    assert type(models.build("WideDeep", [3, 4])) is WideDeepAgain


@pytest.mark.parametrize("make, says", [
    (lambda: type("Fake", (WideDeep,), {"name": "DeepFM"}), "'DeepFM' is the built-in DeepFM's name"),
    (lambda: type("Fake", (WideDeep,), {"name": "deepfm"}), "'deepfm' is the built-in DeepFM's name"),
    (lambda: type("Fake", (WideDeep,), {"name": "ipnn"}), "'ipnn' is the built-in PNN's name"),
    (lambda: type("Sub", (models.DeepFM,), {}), "'DeepFM' is the built-in DeepFM's name"),  # inherited name
    (lambda: WideDeep([3, 4]), "the class, not an instance), got the instance WideDeep"),
    (lambda: type("Plain", (nn.Module,), {"name": "Plain"}), "got the class Plain, a plain nn.Module"),
    (lambda: type("Fake", (WideDeep,), {"name": ""}), "Fake.name = '': set a class attribute `name`"),
    (lambda: type("Fake", (WideDeep,), {"name": "Wide+Deep"}), "Fake.name = 'Wide+Deep'"),
    (lambda: type("Fake", (WideDeep,), {"name": "Wide_2"}), "not ending in _<digits>"),
])
def test_register_refuses_what_would_hijack_or_break_names(registry, make, says):
    with pytest.raises(CtrkitError, match=f"^models.register: .*{re.escape(says)}") as e:
        models.register(make())
    assert "\n" not in str(e.value)
    assert registry == {c.name: c for c in (models.LR, models.FM, models.DeepFM, models.DCN, models.PNN,
                                            models.FiBiNET)}


@pytest.mark.parametrize("key, value, says", [
    ("DeepFM", type("Fake", (WideDeep,), {"name": "DeepFM"}), "'DeepFM' is the built-in DeepFM's name"),
    ("deepfm", WideDeep, "registered as 'deepfm' but its name is 'WideDeep'"),
    ("MyDeepFM", type("Fake", (WideDeep,), {"name": "DeepFM"}), "registered as 'MyDeepFM' but its name is 'DeepFM'"),
    ("WideDeep", WideDeep([3]), "got the instance WideDeep"),
])
def test_a_registry_edited_by_hand_is_checked_at_the_next_lookup(registry, key, value, says):
    """`MODELS[key] = ...` bypasses `register`: the next name lookup refuses it, so a built-in's
    checkpoint is never loaded into someone else's class under its name (it was, silently)."""
    registry[key] = value
    with pytest.raises(CtrkitError, match=f"^models.MODELS\\[{key!r}\\]: .*{re.escape(says)}.*models.register"):
        models.build("DCN", [3, 4])


def test_an_unknown_model_names_register(registry):
    with pytest.raises(CtrkitError, match="unknown model 'WideDeep'; .*ctrkit.models.register\\(cls\\) first"):
        models.build("WideDeep", [3, 4])


def test_torch_embedding_tables_of_a_model_of_ones_own_are_regularized_as_embeddings():
    m = WideDeep([3, 4])
    emb = {id(p) for p in models.embedding_parameters(m)}
    assert emb == {id(m.embedding.weight), id(m.wide.weight)}
    assert {id(p) for p in models.net_parameters(m)} == {id(p) for p in m.deep.parameters()}
    # the built-ins are unchanged: only their FeatureEmbedding tables
    d = models.build("DeepFM", [3, 4])
    assert {id(p) for p in models.embedding_parameters(d)} == {id(t.weight) for t in d.modules()
                                                              if isinstance(t, FeatureEmbedding)}


def test_a_model_of_ones_own_finetunes_in_a_grid_into_the_paired_tables(registry, criteo_small, tmp_path):
    """Pretrained by `loop.fit` into the checkpoint layout, it finetunes beside a preset model in a
    grid of two seeds (replicas): the grid sized its replicas from the checkpoint, not a preset (it
    failed with "no 'smoke' preset for model 'WideDeep'"), and the finetune table has its row."""
    models.register(WideDeep)
    ckpt, store = tmp_path / "runs", tmp_path / "store.jsonl"
    seeds = [1, 2]
    experiments.pretrain_baselines(criteo_small, ["DeepFM"], ckpt, seeds=seeds, preset="smoke", epochs=1,
                                   device="cpu", progress=False)
    for s in seeds:
        seed_everything(s)
        loop.fit(models.build("WideDeep", criteo_small), criteo_small,
                 RunConfig.single(dict(epochs=1, batch_size=256, progress=False, device="cpu", amp="off", seed=s)),
                 out_dir=ckpt / f"seed{s}" / "WideDeep")
    df = experiments.run(criteo_small, [["WideDeep", "DeepFM"]], inits=["pretrained"], modes=["mutual", "alone"],
                         seeds=seeds, ckpt_dir=ckpt, preset="smoke", epochs=1, device="cpu", store=store,
                         progress=False)
    assert sorted(df.groupby(["peer", "mode"]).size().items()) == [
        (("DeepFM", "alone"), 2), (("DeepFM", "mutual"), 2), (("WideDeep", "alone"), 2), (("WideDeep", "mutual"), 2)]
    t = tables.table("finetune", store)
    assert set(t["peer"]) == {"WideDeep", "DeepFM"} and (t["n_pairs"] == 2).all()


def test_baselines_with_a_model_without_a_preset_fail_before_any_training(registry, criteo_small, tmp_path):
    """The preset is checked for every model first: the preset models before it trained for minutes
    and then the grid stopped at the model without one."""
    models.register(WideDeep)
    with pytest.raises(CtrkitError, match="^no 'smoke' preset for model 'WideDeep' .* give the class WideDeep a "
                                          "class attribute `presets` = {'smoke': {'model': "):
        experiments.pretrain_baselines(criteo_small, ["DeepFM", "WideDeep"], tmp_path / "runs", seeds=[1, 2],
                                       preset="smoke", epochs=1, device="cpu", progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_a_model_with_presets_trains_from_scratch_and_as_a_baseline_by_name(registry, criteo_small, tmp_path):
    """A class declaring `presets` trains by name as a built-in does: a scratch run beside DeepFM, and
    its baselines, each recording the preset and what the class declared (both were "no 'smoke'
    preset for model 'PresetNet'")."""
    models.register(PresetNet)
    declared = PresetNet.presets["smoke"]
    df = experiments.run(criteo_small, [["PresetNet", "DeepFM"]], inits=["scratch"], modes=["mutual"], seeds=[1],
                         preset="smoke", device="cpu", store=tmp_path / "store.jsonl", progress=False)
    own = df.set_index("peer").loc["PresetNet"]
    config = json.loads(own["config"])
    assert own["preset"] == "smoke" and own["run_batch_size"] == 256  # the first peer's batch: its own preset's
    assert config["hparams"] == {**models.hparam_defaults("PresetNet"), **declared["model"]}
    assert {k: config["train"][k] for k in declared["train"]} == declared["train"]
    base = experiments.pretrain_baselines(criteo_small, ["PresetNet"], tmp_path / "runs", seeds=[1], preset="smoke",
                                          device="cpu", progress=False)
    assert (tmp_path / "runs" / "seed1" / "PresetNet" / "best.pt").is_file()
    config = json.loads(base["config"][0])
    assert base["preset"].tolist() == ["smoke"] and config["model"] == declared["model"]
    assert {k: config["train"][k] for k in declared["train"]} == declared["train"]
    assert PresetNet.presets["smoke"] is declared and declared["train"]["batch_size"] == 256  # read, not edited


SMOKE = {"model": {"hidden": 4}, "train": {"epochs": 1}}


@pytest.mark.parametrize("declared, says", [
    ([("smoke", SMOKE)], "PresetNet.presets: expected a dict {preset: {'model': {...}, 'train': {...}}}, got list"),
    ({"bars": SMOKE}, "PresetNet.presets: unknown preset 'bars'; valid: smoke, quick, full ('bars' is the BARS "
                      "leaderboard's table of the built-in models)"),
    ({"smoke": SMOKE, "quik": SMOKE}, "PresetNet.presets: unknown preset 'quik'; valid: smoke, quick, full ('bars' "
                                      "is the BARS leaderboard's table of the built-in models); did you mean 'quick'?"),
    ({"smoke": {"model": {}}}, "PresetNet.presets['smoke']: missing 'train'; expected {'model': {hyperparameters}, "
                               "'train': {training settings}}"),
    ({"smoke": {"train": {}}}, "PresetNet.presets['smoke']: missing 'model'"),
    ({"smoke": {**SMOKE, "optimizer": "adam"}}, "PresetNet.presets['smoke']: unknown key 'optimizer'"),
    ({"smoke": {**SMOKE, "model": [4]}}, "PresetNet.presets['smoke']['model']: expected a dict, got list"),
    ({"smoke": {**SMOKE, "model": {"hiden": 4}}},
     "PresetNet.presets['smoke']['model']: PresetNet.__init__ takes no hyperparameter 'hiden'; valid: embedding_dim, "
     "hidden; did you mean 'hidden'?"),
    ({"smoke": {**SMOKE, "train": {"learning_rate": 0.01}}},
     "PresetNet.presets['smoke']['train']: unknown train config key(s) learning_rate; valid: epochs, batch_size, lr,"),
    ({"smoke": {**SMOKE, "train": {"lr": 0}}},
     "PresetNet.presets['smoke']['train']: train config lr: expected a finite number > 0, got 0"),
    # a slip in a preset not asked for fails too: at the first read, not the day `quick` is run
    ({"smoke": SMOKE, "quick": {**SMOKE, "train": {"epoch": 1}}},
     "PresetNet.presets['quick']['train']: unknown train config key(s) epoch; valid:"),
])
def test_malformed_presets_are_one_line_naming_the_class_preset_and_key(registry, criteo_small, tmp_path, monkeypatch,
                                                                        declared, says):
    monkeypatch.setattr(PresetNet, "presets", declared)
    models.register(PresetNet)
    with pytest.raises(CtrkitError, match=f"^{re.escape(says)}") as e:
        experiments.pretrain_baselines(criteo_small, ["PresetNet"], tmp_path / "runs", seeds=[1], preset="smoke",
                                       epochs=1, device="cpu", progress=False)
    assert "\n" not in str(e.value) and not any(tmp_path.rglob("*.pt"))


def test_bars_and_an_undeclared_preset_are_refused_for_a_model_of_ones_own(registry, criteo_small, tmp_path):
    """'bars' is the leaderboard's per-dataset table of the built-in models: a class's `presets` does
    not reach it, and the message says which presets a class may declare."""
    models.register(PresetNet)
    grid = dict(inits=["scratch"], modes=["alone"], seeds=[1], device="cpu", store=tmp_path / "s.jsonl", progress=False)
    assert presets.get("DeepFM", "bars", criteo_small.dataset, criteo_small.protocol).model  # the built-in has one
    with pytest.raises(CtrkitError, match="^no 'bars' preset for model 'PresetNet': 'bars' is the BARS leaderboard's "
                                          "table of the built-in models; PresetNet.presets declares 'smoke': pass one "
                                          "of them \\(--preset, preset=\\)$") as e:
        experiments.run(criteo_small, [["PresetNet"]], preset="bars", **grid)
    assert "\n" not in str(e.value)
    with pytest.raises(CtrkitError, match="^no 'quick' preset for model 'PresetNet': PresetNet.presets declares "
                                          "'smoke': pass one of them \\(--preset, preset=\\), or add 'quick' to it$"):
        experiments.run(criteo_small, [["PresetNet"]], preset="quick", **grid)
    bare = type("BareNet", (PresetNet,), {"name": "BareNet", "presets": {}})  # none declared: how to have one
    models.register(bare)
    with pytest.raises(CtrkitError, match="^no 'quick' preset for model 'BareNet' .*give the class BareNet a "
                                          "class attribute `presets` = {'quick': "):
        experiments.run(criteo_small, [["BareNet"]], preset="quick", **grid)
    assert not (tmp_path / "s.jsonl").exists()


def test_the_docs_page_runs_as_it_stands(registry, tmp_path, monkeypatch):
    """docs/custom-models.md's example, executed in a fresh folder: its tables (finetuned, from scratch)
    have the user's model, paired."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "custom-models.md").read_text()
    block = page.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "docs/custom-models.md", "exec"), namespace)  # noqa: S102 - our own page
    for name in ("finetune", "scratch"):  # WideDeep pretrained and trained from scratch by name: its `presets`
        t = tables.table(name, tmp_path / "results" / "store.jsonl").set_index("peer")
        assert set(t.index) == {"WideDeep", "DeepFM", "DCN"} and (t["n_pairs"] == 2).all()
    assert models.MODELS["WideDeep"] is namespace["WideDeep"]


# ---------------------------------------------------------------- installed packages, worker processes

NET = """
from torch import nn
from ctrkit.models import CTRModel
from ctrkit.models.layers import FeatureEmbedding


class {cls}(CTRModel):
    name = "{name}"

    def __init__(self, fields, embedding_dim: int = 4):
        super().__init__(fields, dict(embedding_dim=embedding_dim))
        self.embedding = FeatureEmbedding(self.field_sizes, embedding_dim)
        self.out = nn.Linear(self.num_fields * embedding_dim, 1)

    def forward(self, X):
        return self.out(self.embedding(X).flatten(1)).squeeze(-1)
"""
VOLATILE = {"seconds", "env_info", "append_id", "written_at", "checkpoint"}
# NET's preset of its own (appended to its module, after the class)
NET_PRESETS = """
{cls}.presets = {{"smoke": {{"model": {{"embedding_dim": 2}},
                            "train": {{"epochs": 1, "batch_size": 256, "lr": 0.01, "patience": 1}}}}}}
"""


@pytest.fixture
def site(tmp_path, monkeypatch, registry):
    """install(dist, {entry: "module:Class"}, {module: source}) -> a folder on sys.path holding the
    modules and `<dist>-1.0.dist-info/entry_points.txt`, as pip leaves a package (importlib.metadata
    finds it there); the registry loads its entry points afresh at the next lookup, and forgets them
    and the modules after the test."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(models, "_PLUGINS", None, raising=False)
    monkeypatch.setattr(models, "_BROKEN", {}, raising=False)
    added: list[str] = []

    def install(dist: str, entries: dict, modules: dict):
        for module, source in modules.items():
            (root / f"{module}.py").write_text(source)
            added.append(module)
        info = root / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "".join(f"{k} = {v}\n" for k, v in entries.items())
        (info / "entry_points.txt").write_text(f"[ctrkit.models]\n{lines}")
        importlib.invalidate_caches()
        return root

    yield install
    for module in added:
        sys.modules.pop(module, None)


@pytest.fixture
def pool():
    """The worker pool the test started, ended after it."""
    yield
    workers.shutdown()


def _stored(path):
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in path.read_text().splitlines()]


def _pretrain_own(name: str, d, ckpt, seeds) -> None:
    """Your own pretraining of model `name` into the checkpoint layout (as docs/custom-models.md)."""
    for s in seeds:
        seed_everything(s)
        loop.fit(models.build(name, d), d, RunConfig.single(dict(epochs=1, batch_size=256, progress=False,
                                                                device="cpu", amp="off", seed=s, threads=1)),
                 out_dir=ckpt / f"seed{s}" / name)


def test_an_installed_packages_model_is_registered_at_the_first_lookup(site):
    site("ctrkit_test_nets", {"MyNet": "mynets:MyNet"}, {"mynets": NET.format(cls="MyNet", name="MyNet")})
    assert "MyNet" not in models.MODELS  # not at import: at the first lookup
    m = models.build("mynet", [3, 4], embedding_dim=2)
    assert type(m).__name__ == "MyNet" and type(m).__module__ == "mynets" and m.hparams == {"embedding_dim": 2}
    assert list(models.MODELS)[-1] == "MyNet" and not models.is_built_in("MyNet")
    assert models.reference("MyNet") is None  # a worker finds it itself
    assert "MyNet" in cli._model_names().split(", ")[-1]  # `ctrkit pretrain --help` lists it


@pytest.mark.parametrize("entries, modules, says", [
    ({"MyNet": "missing_nets:MyNet"}, {}, "MyNet = missing_nets:MyNet of distribution broken 1.0: cannot load it: "
                                          "ModuleNotFoundError: No module named 'missing_nets'"),
    ({"MyNet": "bad_nets:MyNet"}, {"bad_nets": "raise RuntimeError('no GPU here\\nsecond line')"},
     "MyNet = bad_nets:MyNet of distribution broken 1.0: cannot load it: RuntimeError: no GPU here"),
    ({"MyNet": "bad_nets:helper"}, {"bad_nets": "def helper():\n    pass\n"},
     "expected a subclass of ctrkit.models.CTRModel"),
    ({"Net": "bad_nets:MyNet"}, {"bad_nets": NET.format(cls="MyNet", name="MyNet")},
     "registered as 'Net' but its name is 'MyNet'"),
    ({"DeepFM": "bad_nets:MyNet"}, {"bad_nets": NET.format(cls="MyNet", name="DeepFM")},
     "'DeepFM' is the built-in DeepFM's name"),
    ({"MyNet": "bad_nets:MyNet", "mynet": "bad_nets:Other"},
     {"bad_nets": NET.format(cls="MyNet", name="MyNet") + NET.format(cls="Other", name="mynet")},
     "mynet = bad_nets:Other of distribution broken 1.0: 'mynet' is claimed by entry point MyNet = bad_nets:MyNet"),
])
def test_a_broken_entry_point_is_one_line_naming_it_and_its_distribution(site, entries, modules, says):
    """It costs its own name only: one warning line, every other model still builds (one stale package
    must not stop `reproduce`), and a lookup of its name is the same line as an error, every time."""
    site("broken", entries, modules)
    with pytest.warns(UserWarning, match=f"^models: entry point .*{re.escape(says)}") as seen:
        assert type(models.build("DCN", [3, 4])) is models.DCN
    assert all("\n" not in str(w.message) and "of distribution broken 1.0" in str(w.message) for w in seen)
    for name in entries:
        if name == "DeepFM":  # a built-in's name stays the built-in's
            assert type(models.build(name, [3, 4])) is models.DeepFM
            continue
        assert name not in models.names()
        for _ in range(2):  # at every lookup until it is fixed, not once and then silently gone
            with pytest.raises(CtrkitError, match=f"^models: entry point .*{re.escape(says)}") as e:
                models.build(name, [3, 4])
            assert "\n" not in str(e.value) and "of distribution broken 1.0" in str(e.value)


def test_a_broken_entry_point_leaves_the_other_packages_models_working(site):
    site("good", {"MyNet": "mynets:MyNet"}, {"mynets": NET.format(cls="MyNet", name="MyNet")})
    site("broken", {"Stale": "missing_nets:Stale"}, {})
    with pytest.warns(UserWarning, match="entry point Stale = missing_nets:Stale of distribution broken 1.0"):
        assert type(models.build("mynet", [3, 4])).__module__ == "mynets"
    assert "MyNet" in models.names() and "Stale" not in models.names()
    with pytest.raises(CtrkitError, match="Stale = missing_nets:Stale .*ModuleNotFoundError"):
        models.canonical_name("stale")


def test_the_cli_finetunes_an_installed_packages_model_with_no_extra_step(site, criteo_small, tmp_path, capsys):
    """A fresh `ctrkit` process finds the package's model by its entry point: `mutual` finetunes it from
    a checkpoint of your own pretraining (the message was "unknown model 'MyNet'"); `pretrain` knows it
    and asks for what it lacks, a preset."""
    root = site("ctrkit_test_nets", {"MyNet": "mynets:MyNet"}, {"mynets": NET.format(cls="MyNet", name="MyNet")})
    _pretrain_own("MyNet", criteo_small, tmp_path / "runs", [1])
    env = _env_with(root)
    done = subprocess.run([sys.executable, "-m", "ctrkit.cli", "mutual", "--data", str(criteo_small.path),
                           "--peers", "mynet", "--init", "pretrained", "--mode", "alone",
                           "--ckpt-dir", str(tmp_path / "runs" / "seed1"), "--preset", "smoke", "--epochs", "1",
                           "--device", "cpu", "--threads", "1", "--seed", "1", "--json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert [p["model"] for p in summary["peers"]] == ["MyNet"] and 0 < summary["peers"][0]["test_auc"] < 1
    assert cli.main(["pretrain", "--data", str(criteo_small.path), "--model", "mynet", "--preset", "smoke"]) == 2
    assert capsys.readouterr().err.startswith("ctrkit: error: no 'smoke' preset for model 'MyNet'")


def _env_with(root) -> dict:
    """The environment of a fresh process that finds the package installed in `root` (the `site` fixture's)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_the_cli_pretrains_an_installed_packages_model_from_its_presets(site, criteo_small, tmp_path):
    """`ctrkit pretrain --model MyNet` in a fresh process: the entry point's class declares a 'smoke'
    preset, so it pretrains by name into best.pt with what it declared (it was "no 'smoke' preset")."""
    net = NET.format(cls="MyNet", name="MyNet") + NET_PRESETS.format(cls="MyNet")
    root = site("ctrkit_test_nets", {"MyNet": "mynets:MyNet"}, {"mynets": net})
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "ctrkit.cli", "pretrain", "--data", str(criteo_small.path),
                           "--model", "mynet", "--preset", "smoke", "--out", str(out), "--device", "cpu",
                           "--threads", "1", "--seed", "1", "--json"],
                          env=_env_with(root), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "best.pt").is_file()
    result = json.loads((out / "result.json").read_text())
    assert result["hparams"] == {"embedding_dim": 2} and result["preset"] == "smoke"
    assert {k: result["train_config"][k] for k in ("epochs", "batch_size", "lr", "patience")} == {
        "epochs": 1, "batch_size": 256, "lr": 0.01, "patience": 1}


def test_the_cli_trains_a_built_in_beside_a_broken_package_and_says_so_in_one_line(site, criteo_small, tmp_path):
    """A stale package's entry point (its module gone) does not stop `ctrkit pretrain --model DeepFM`: one
    warning line names it; asking for that model is the same line as an error, exit 2, no traceback."""
    root = site("stale_nets", {"Stale": "missing_nets:Stale"}, {})
    base = [sys.executable, "-m", "ctrkit.cli", "pretrain", "--data", str(criteo_small.path), "--preset", "smoke",
            "--device", "cpu", "--threads", "1", "--seed", "1", "--epochs", "1"]
    done = subprocess.run([*base, "--model", "DeepFM", "--out", str(tmp_path / "out")], env=_env_with(root),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "best.pt").is_file()
    said = [line for line in done.stderr.splitlines() if "Stale" in line]
    assert said == ["ctrkit: warning: models: entry point Stale = missing_nets:Stale of distribution stale_nets "
                    "1.0: cannot load it: ModuleNotFoundError: No module named 'missing_nets'"], done.stderr[-2000:]
    failed = subprocess.run([*base, "--model", "stale", "--out", str(tmp_path / "stale")], env=_env_with(root),
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith("ctrkit: error: models: entry point Stale = "), failed.stderr


def test_a_grid_with_workers_imports_a_registered_model_from_its_module(registry, criteo_small, tmp_path,
                                                                        monkeypatch, pool):
    """A class registered in this process from a .py module (a file next to the notebook) trains on
    worker processes, which import its module: the store equals the one-process grid's (it was a
    refusal). Its module gone when the workers start: one line naming the model and the module."""
    root = tmp_path / "nets"
    root.mkdir()
    (root / "usernets.py").write_text(NET.format(cls="UserNet", name="UserNet"))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "usernets", raising=False)
    models.register(importlib.import_module("usernets").UserNet)
    ckpt, seeds = tmp_path / "runs", [1, 2]
    experiments.pretrain_baselines(criteo_small, ["DeepFM"], ckpt, seeds=seeds, preset="smoke", epochs=1,
                                   device="cpu", threads=1, progress=False)
    _pretrain_own("UserNet", criteo_small, ckpt, seeds)
    grid = dict(inits=["pretrained"], modes=["mutual"], seeds=seeds, ckpt_dir=ckpt, preset="smoke", epochs=1,
                device="cpu", threads=1, progress=False)
    experiments.run(criteo_small, [["UserNet", "DeepFM"]], store=tmp_path / "one.jsonl", **grid)
    experiments.run(criteo_small, [["UserNet", "DeepFM"]], store=tmp_path / "two.jsonl", workers=2, **grid)
    one = _stored(tmp_path / "one.jsonl")
    assert _stored(tmp_path / "two.jsonl") == one and {r["peer"] for r in one} == {"UserNet", "DeepFM"}
    assert len({r["test_auc"] for r in one}) == 4
    workers.shutdown()
    (root / "usernets.py").unlink()
    sys.path.remove(str(root))  # the workers start without the folder (the parent sends its sys.path: not there)
    with pytest.raises(CtrkitError) as e:
        experiments.run(criteo_small, [["UserNet", "DeepFM"]], store=tmp_path / "three.jsonl", workers=2, **grid)
    assert "\n" not in str(e.value) and re.search(
        "failed in a worker process: model UserNet: cannot import its class UserNet from module usernets: "
        "ModuleNotFoundError", str(e.value))


def _notebook_class(monkeypatch):
    """A class as a notebook cell makes it: in a `__main__` with no file to import."""
    main = types.ModuleType("__main__")
    main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", main)
    main.CellNet = type("CellNet", (WideDeep,), {"name": "CellNet", "__module__": "__main__"})
    return main.CellNet, "is defined in a notebook cell or an interactive session (__main__)"


def _local_class(monkeypatch):
    class LocalNet(WideDeep):
        name = "LocalNet"

    return LocalNet, f"is defined inside a function ({__name__}._local_class.<locals>.LocalNet)"


@pytest.mark.parametrize("make", [_notebook_class, _local_class])
def test_a_class_workers_cannot_import_is_one_line_before_any_work(registry, criteo_small, tmp_path, monkeypatch,
                                                                     pool, make):
    cls, says = make(monkeypatch)
    models.register(cls)
    for s in (1, 2):  # (checked for presence only before the refusal)
        (tmp_path / "runs" / f"seed{s}" / cls.name).mkdir(parents=True)
        (tmp_path / "runs" / f"seed{s}" / cls.name / "best.pt").write_bytes(b"")
    workers.shutdown()
    with pytest.raises(CtrkitError) as e:
        experiments.run(criteo_small, [[cls.name]], inits=["pretrained"], modes=["alone"], seeds=[1, 2],
                        ckpt_dir=tmp_path / "runs", preset="smoke", epochs=1, device="cpu", store=tmp_path / "s.jsonl",
                        progress=False, workers=2)
    assert str(e.value) == (f"workers: {cls.name} is registered in this process only and its class {says}, so another "
                            f"process cannot import it: put the class in a .py module (importable, e.g. a file next to "
                            f"the notebook) and import it from there, or run this grid with workers=1")
    assert workers._WARM is None and not (tmp_path / "s.jsonl").exists()


def test_the_peer_selector_offers_an_installed_packages_model(site, criteo_small, tmp_path):
    """The widget's model list is the registry's, entry points loaded: an installed package's model is
    offered though no lookup has loaded it yet (it read `MODELS` as it stood)."""
    pytest.importorskip("ipywidgets")
    from ctrkit.notebook import widgets

    site("ctrkit_test_nets", {"MyNet": "mynets:MyNet"}, {"mynets": NET.format(cls="MyNet", name="MyNet")})
    assert "MyNet" not in models.MODELS
    sel = widgets.PeerSelector(criteo_small, store=tmp_path / "store.jsonl", background=False)
    offered = [value for _, value in sel.peers.options]
    assert "MyNet" in offered and "DeepFM" in offered and "LR" not in offered


def test_a_hyperparameter_of_the_wrong_kind_is_one_line_naming_the_call(registry, criteo_small, tmp_path):
    """A class's constructor failing on a value (a string for a width) is the user's input, not a
    traceback: one line naming the model and the call, whether from `build` or from declared presets."""
    models.register(PresetNet)
    with pytest.raises(CtrkitError, match=r"^PresetNet\(hidden='big'\): cannot build it: TypeError: ") as e:
        models.build("PresetNet", [3, 4], hidden="big")
    assert "\n" not in str(e.value)
    bad = type("BigNet", (PresetNet,), {"name": "BigNet", "presets": {"smoke": {
        "model": {"hidden": "big"}, "train": dict(PresetNet.presets["smoke"]["train"])}}})
    models.register(bad)
    with pytest.raises(CtrkitError, match=r"^BigNet\(.*hidden='big'.*\): cannot build it"):
        experiments.run(criteo_small, [["BigNet"]], inits=["scratch"], modes=["alone"], seeds=[1], device="cpu",
                        store=tmp_path / "s.jsonl", progress=False, preset="smoke")
