"""A model of the user's own: `models.register`, the registry's checks, its embedding tables under the
regularizer, and finetuning it in a grid (seeds as replicas) into the paired tables."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from ctrkit import experiments, models
from ctrkit.analysis import tables
from ctrkit.core.utils import CtrkitError, seed_everything
from ctrkit.models.base import CTRModel
from ctrkit.models.layers import FeatureEmbedding
from ctrkit.training import loop
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
    # worker processes import ctrkit afresh and never saw `register`: one line before any run (it was
    # "no 'smoke' preset" from the work estimate, or an unknown model inside a worker)
    lines = store.read_text().count("\n")
    with pytest.raises(CtrkitError, match="^workers: WideDeep is registered in this process only .* workers=1$"):
        experiments.run(criteo_small, [["WideDeep", "DeepFM"]], inits=["pretrained"], modes=["mutual", "alone"],
                        seeds=seeds, ckpt_dir=ckpt, preset="smoke", epochs=1, device="cpu", store=store,
                        progress=False, force=True, workers=2, max_replicas=1)
    assert store.read_text().count("\n") == lines


def test_baselines_with_a_model_without_a_preset_fail_before_any_training(registry, criteo_small, tmp_path):
    """The preset is checked for every model first: the preset models before it trained for minutes
    and then the grid stopped at the model without one."""
    models.register(WideDeep)
    with pytest.raises(CtrkitError, match="^no 'smoke' preset for model 'WideDeep'"):
        experiments.pretrain_baselines(criteo_small, ["DeepFM", "WideDeep"], tmp_path / "runs", seeds=[1, 2],
                                       preset="smoke", epochs=1, device="cpu", progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_the_docs_page_runs_as_it_stands(registry, tmp_path, monkeypatch):
    """docs/custom-models.md's example, executed in a fresh folder: its table has the user's model, paired."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "custom-models.md").read_text()
    block = page.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "docs/custom-models.md", "exec"), namespace)  # noqa: S102 - our own page
    t = tables.table("finetune", tmp_path / "results" / "store.jsonl").set_index("peer")
    assert set(t.index) == {"WideDeep", "DeepFM", "DCN"} and (t["n_pairs"] == 2).all()
    assert models.MODELS["WideDeep"] is namespace["WideDeep"]
