"""The relatives of mutual learning: the group modes in the loop, one shared embedding table, the
variants table and the summary across datasets."""
import numpy as np
import pandas as pd
import pytest
import torch

from ctrkit import models
from ctrkit.analysis import aggregate, variants
from ctrkit.core.utils import CtrkitError, seed_everything
from ctrkit.experiments import churn, runs
from ctrkit.experiments.store import ResultsStore
from ctrkit.training import mutual, presets
from ctrkit.training.config import RunConfig, RunSpec, TrainConfig

FAST = dict(preset="smoke", device="cpu", progress=False, epochs=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread


def test_teachers_of_the_group_modes_are_everyone_own_first():
    assert mutual.teachers("ensemble_teacher", 3) == [[0, 1, 2], [1, 0, 2], [2, 0, 1]]
    assert mutual.teachers("ektf", 1) == [[0]]


@pytest.mark.parametrize("mode", ["ensemble_teacher", "ektf"])
def test_a_group_mode_with_one_peer_is_alone_bit_for_bit(criteo_small, mode):
    a = runs.run(RunSpec(peers=("DeepFM",), mode="alone", **FAST), criteo_small)
    b = runs.run(RunSpec(peers=("DeepFM",), mode=mode, **FAST), criteo_small)
    assert np.array_equal(a["test_probs"], b["test_probs"])
    assert [r["train_loss"] for r in a["history"][0]["peers"]] == [r["train_loss"] for r in b["history"][0]["peers"]]


@pytest.mark.parametrize("mode", ["ensemble_teacher", "ektf"])
def test_a_group_mode_trains_and_differs_from_alone(criteo_small, mode):
    a = runs.run(RunSpec(peers=("DeepFM", "DCN"), mode="alone", **FAST), criteo_small)
    b = runs.run(RunSpec(peers=("DeepFM", "DCN"), mode=mode, weight=3.0, **FAST), criteo_small)
    assert b["mode"] == mode and all(0.3 < p["test_auc"] < 1 for p in b["peers"])
    assert not np.array_equal(a["test_probs"], b["test_probs"])
    assert b["peers"][1]["learns_from"] == [1, 0]


def _two(data, dims=(4, 4)):
    out = []
    for name, d in zip(("DeepFM", "DCN"), dims):
        seed_everything(1)
        out.append(models.build(name, data.field_sizes, **{**presets.get(name, "smoke").model, "embedding_dim": d}))
    return out


def test_shared_embedding_peers_update_one_table(criteo_small):
    m0, m1 = _two(criteo_small)
    exchange = mutual.LocalExchange(2, torch.device("cpu"))
    runs._share_embedding([m0, m1], exchange)
    assert m0.embedding is m1.embedding
    before = m0.embedding.weight.detach().clone()
    # kd: peer 0 is a fixed teacher with no optimizer; only the student's gradient can move the table
    cfg = RunConfig(mode="kd", weight=1.0, epochs=1, batch_size=512, device="cpu", progress=False,
                    peers=(TrainConfig(), TrainConfig()))
    mutual.mutual_fit([m0, m1], criteo_small, cfg)
    assert m0.embedding is m1.embedding and not torch.equal(before, m0.embedding.weight)
    # and the trained table is what both peers read
    X = criteo_small.tensors("test", "cpu")[0][:8]
    assert torch.equal(m0.embedding(X), m1.embedding(X))


def test_shared_embedding_run_and_its_checks(criteo_small):
    r = runs.run(RunSpec(peers=("DeepFM", "DCN"), mode="mutual", share_embedding=True, **FAST), criteo_small)
    assert all(0.3 < p["test_auc"] < 1 for p in r["peers"])
    assert "share_embedding" not in RunSpec(peers=("DeepFM", "DCN")).settings()  # run keys of older runs stay
    assert RunSpec(peers=("DeepFM", "DCN"), share_embedding=True).settings()["share_embedding"] is True
    with pytest.raises(CtrkitError, match="share_embedding"):
        RunSpec(peers=("DeepFM", "DCN"), init="pretrained", ckpt_dir="x", share_embedding=True)
    with pytest.raises(CtrkitError, match="share_embedding"):
        RunSpec(peers=("DeepFM", "DCN"), share_embedding="yes")
    with pytest.raises(CtrkitError, match="differ in size"):
        runs._share_embedding(_two(criteo_small, dims=(4, 6)), mutual.LocalExchange(2, torch.device("cpu")))
    with pytest.raises(CtrkitError, match="LR has none"):
        runs.run(RunSpec(peers=("LR", "DCN"), share_embedding=True, **FAST), criteo_small)


@pytest.fixture(scope="module")
def variant_store(criteo_small, tmp_path_factory):
    store = ResultsStore(tmp_path_factory.mktemp("variants") / "store.jsonl")
    peers = ("DeepFM", "DCN")
    for seed in (1, 2, 3):
        for mode, extra in (("alone", {}), ("mutual", {}), ("ektf", {"tag": "variants"}),
                            ("alone", {"share_embedding": True, "tag": "variants"})):
            runs.execute(RunSpec(peers=peers, mode=mode, seed=seed, **FAST, **extra), criteo_small, store=store)
    return store


def test_variants_table_pairs_each_variant_with_its_alone_control(variant_store):
    p = variants.pairs(variant_store.path, dataset="criteo", models=["DCN", "DeepFM"],
                       finetune={"weight": 1.0, "finetune_lr_scale": 0.1})
    got = set(zip(p["init"], p["embedding"], p["variant"]))
    assert got == {("from scratch", "separate", "mutual (MSE)"), ("from scratch", "separate", "EKTF"),
                   ("from scratch", "shared", variants.SHARED_TABLE)}
    assert len(p) == 3 * 2 * 3  # 3 comparisons x 2 models x 3 seeds
    seeds = variants.seed_churn(p, churn.predictions_dir(variant_store.path))
    assert len(seeds) == 3 * 2 * 2 and (seeds[["seeds_abs_t", "seeds_abs_c"]] > 0).all().all()
    t = variants.table(p, seeds)
    assert len(t) == 6 and (t["n_pairs"] == 3).all() and t["p_holm"].notna().all()
    assert t["rel_pct_ci_low"].le(t["rel_pct_mean"]).all() and t["peers_abs_t"].gt(0).all()
    assert len(variants.display(t)) == 6 and len(variants.figure_frame(t)) == 6


@pytest.mark.parametrize("shared_cap", [3, 10])
def test_the_shared_table_row_needs_the_same_schedule_as_its_control(tmp_path, shared_cap):
    """Shared minus separate embedding tables (both alone) is a row only when nothing else differs:
    here the shared run's epoch cap (10 against 3) would be measured with it."""
    store = ResultsStore(tmp_path / "s.jsonl")
    for seed in (1, 2, 3):
        for share, cap in ((False, 3), (True, shared_cap)):
            store.append([dict(run_key=f"{share}{seed}", settings_key=f"k{share}", dataset="criteo", fingerprint="fp",
                               mode="alone", init="scratch", seed=seed, n_peers=2, peer_index=i, peer=m, model=m,
                               peers="DeepFM+DCN", weight=0.0, preset="smoke", amp="off", max_epochs=cap,
                               test_auc=0.7 + 0.01 * share + 0.001 * seed, test_logloss=0.5, valid_auc=0.7,
                               tag="variants" if share else None, **({"share_embedding": True} if share else {}))
                          for i, m in enumerate(("DeepFM", "DCN"))])
    p = variants.pairs(store.path, dataset="criteo", models=["DeepFM", "DCN"],
                       finetune={"weight": 1.0, "finetune_lr_scale": 0.1})
    assert (variants.SHARED_TABLE in set(p["variant"])) == (shared_cap == 3)


def test_a_variants_pair_must_start_from_one_checkpoint(tmp_path):
    """As every table's pairs: a finetuning treatment whose pretrained start differs from its control's
    (another checkpoint folder) compares checkpoints, not the method, and is no pair."""
    store = ResultsStore(tmp_path / "s.jsonl")
    for seed in (1, 2, 3):
        for mode, w in (("alone", 0.0), ("mutual", 1.0)):
            start = 0.70 + 0.001 * seed + (0.02 if (mode, seed) == ("mutual", 2) else 0)
            store.append([dict(run_key=f"{mode}{seed}", settings_key=mode, dataset="criteo", fingerprint="fp",
                               mode=mode, init="pretrained", seed=seed, n_peers=2, peer_index=i, peer=m, model=m,
                               peers="DeepFM+DCN", weight=w, divergence="mse" if w else None, finetune_lr_scale=0.1,
                               finetune_epochs=2, preset="smoke",
                               amp="off", max_epochs=3, test_auc=start + 0.001, test_logloss=0.5, valid_auc=0.7,
                               pretrained_test_auc=start) for i, m in enumerate(("DeepFM", "DCN"))])
    p = variants.pairs(store.path, dataset="criteo", models=["DeepFM", "DCN"],
                       finetune={"weight": 1.0, "finetune_lr_scale": 0.1})
    fin = p[p["init"] != "from scratch"]
    assert len(fin) and sorted(set(fin["seed"])) == [1, 3]


def test_seed_churn_of_a_run_with_itself_is_zero(variant_store):
    p = variants.pairs(variant_store.path, dataset="criteo", models=["DeepFM", "DCN"],
                       finetune={"weight": 1.0, "finetune_lr_scale": 0.1})
    same = p.assign(run_key_t=p["run_key_c"], seed=0)  # every "seed" the same run
    s = variants.seed_churn(same.drop_duplicates(["variant", "peer"]).pipe(
        lambda d: pd.concat([d, d.assign(seed=1)])), churn.predictions_dir(variant_store.path))
    assert (s[["seeds_abs_t", "seeds_abs_c", "seeds_top10_t", "seeds_top10_c"]] == 0).all().all()


def test_iqm_and_probability_of_improvement_on_hand_numbers():
    assert aggregate.iqm([1, 2, 3, 4, 100, -50, 5, 6]) == pytest.approx(np.mean([2, 3, 4, 5]))
    task = (np.array([3.0, 1.0]), np.array([2.0, 1.0]))   # pairs: 3>2, 3>1, 1<2, 1=1 -> (2 + 0.5) / 4
    assert aggregate.probability_of_improvement([task]) == pytest.approx(0.625)
    assert aggregate.probability_of_improvement([task, (np.array([5.0]), np.array([4.0]))]) == pytest.approx(0.8125)


def test_summary_across_datasets_has_bootstrap_intervals():
    rng = np.random.default_rng(0)
    rows = [{"dataset": ds, "init": "from scratch", "embedding": "separate", "variant": "EKTF", "peer": m,
             "seed": s, "test_auc_c": 0.7 + rng.normal(0, 0.01), "test_auc_t": 0.71 + rng.normal(0, 0.01)}
            for ds in ("criteo", "avazu") for m in ("DeepFM", "DCN") for s in range(5)]
    out = aggregate.summary(pd.DataFrame(rows), reps=200)
    r = out.iloc[0]
    assert (r["n_datasets"], r["n_tasks"], r["n_runs"]) == (2, 4, 20)
    assert r["iqm_ci_low"] <= r["iqm_rel_pct"] <= r["iqm_ci_high"] and r["iqm_rel_pct"] > 0
    assert 0.5 < r["p_improve"] <= 1 and r["p_improve_ci_low"] <= r["p_improve"] <= r["p_improve_ci_high"]
