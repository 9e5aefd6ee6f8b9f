"""Pins what the training loop computes against independent paths: hand steps, hand metrics, sequential runs.

Each test is small (smoke models, criteo_small, one or two steps or a few epochs) and targets one
behaviour a mutation audit found unguarded: kd's teacher term, the ensemble teacher's peer order
(ektf), the warm-up of the mutual weight, the epoch's mean loss, the ensemble's history AUC, the
final restore of the best weights, the epoch cap flag, consecutive-epoch patience, a finetuning
run's epoch 0, and the replicas' per-replica clipping and a stopped replica's dropout.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ctrkit import models
from ctrkit.core.utils import seed_everything
from ctrkit.kernels import for_device
from ctrkit.training import checkpoint, evaluation, loop, metrics, mutual, optim, presets, replicas
from ctrkit.training.config import RunConfig, TrainConfig
from ctrkit.training.losses import mutual_losses
from ctrkit.training.rng import dropout_seed

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread
CPU = torch.device("cpu")


def _model(name, data, seed, **hp):
    seed_everything(seed)
    return models.build(name, data.field_sizes, **{**presets.get(name, "smoke").model, **hp})


def _cfg(**kw) -> RunConfig:
    """A one-model run (`fit`)."""
    base = dict(epochs=1, batch_size=512, lr=0.01, patience=2, progress=False, device="cpu", amp="off", seed=7)
    return RunConfig.single({**base, **kw})


def _run_cfg(mode, n_peers, data, **kw) -> RunConfig:
    """A run of `n_peers` whose one epoch is two steps (half the train split each)."""
    base = dict(mode=mode, epochs=1, batch_size=math.ceil(data.rows["train"] / 2), seed=5, device="cpu", amp="off",
                progress=False, peers=tuple(TrainConfig(lr=0.01) for _ in range(n_peers)))
    return RunConfig(**{**base, **kw})


def _hand_steps(models_, data, config: RunConfig, step_weights, trained, rule="mutual"):
    """The loop's epoch 1 written out on copies of `models_`: the seeded batch order, every peer's
    forward (an untrained peer: eval, no grad), `mutual_losses` with step s's weight, then backward,
    clip and Adam per trained peer. Returns the copies and each peer's per-step losses."""
    X, y = data.tensors("train")
    batches = torch.randperm(len(y), generator=seed_everything(config.seed)).split(config.batch_size)
    assert len(batches) == len(step_weights)
    copies = [for_device(copy.deepcopy(m), "cpu").train(t) for m, t in zip(models_, trained)]
    opts = [optim.make_optimizer(m, c) if t else None for m, c, t in zip(copies, config.peers, trained)]
    per_step = [[] for _ in copies]
    for idx, w in zip(batches, step_weights):
        xb, yb = X[idx], y[idx]
        logits = []
        for m, t in zip(copies, trained):
            with torch.set_grad_enabled(t):
                logits.append(m(xb).float())
        losses = mutual_losses(logits, yb, weight=w, divergence=config.divergence, rule=rule)
        for k, (m, opt, loss) in enumerate(zip(copies, opts, losses)):
            if opt is None:
                continue
            per_step[k].append(loss.item())
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(list(m.parameters()), config.peers[k].clip_grad_norm)
            opt.step()
    return copies, per_step


def _assert_same_weights(got, want):
    for a, b in zip(got, want):
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=k)


def _differ(a, b) -> bool:
    return any(not torch.allclose(x, y, rtol=1e-6, atol=1e-7)
               for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------- whom a peer learns from, and how much


def test_a_kd_student_learns_from_the_fixed_teachers_probabilities(criteo_small):
    """kd: peer 0 is fixed, peer 1 descends BCE + w * D(p_teacher, p_student): two steps of the loop
    equal the hand-written steps (not the teacher-less BCE steps of `alone`)."""
    d = criteo_small
    pair = [_model("DCN", d, 1), _model("DeepFM", d, 2)]
    config = _run_cfg("kd", 2, d, weight=2.0)
    hand, losses = _hand_steps(pair, d, config, [2.0, 2.0], trained=[False, True])
    teacherless, _ = _hand_steps(pair, d, config, [0.0, 0.0], trained=[False, True])
    assert _differ(hand[1], teacherless[1])  # the teacher term moves the student
    r = mutual.mutual_fit(pair, d, config)
    assert [p["trained"] for p in r["peers"]] == [False, True]
    _assert_same_weights(pair, hand)
    assert r["history"][0]["peers"][1]["train_loss"] == pytest.approx(sum(losses[1]) / 2, rel=1e-6)


def test_ektf_puts_each_peers_own_probabilities_first(criteo_small):
    """ektf's rule reads its targets as [own, others...] (examination weights: the own score is s_0).
    Two steps of the loop equal hand steps of `mutual_losses(rule="ektf")`, which orders them so."""
    d = criteo_small
    pair = [_model("DeepFM", d, 3), _model("FM", d, 4)]
    config = _run_cfg("ektf", 2, d, weight=3.0)
    hand, _ = _hand_steps(pair, d, config, [3.0, 3.0], trained=[True, True], rule="ektf")
    mutual.mutual_fit(pair, d, config)
    _assert_same_weights(pair, hand)


def test_the_mutual_weight_warms_up_linearly_from_zero(criteo_small):
    """warmup_steps=4, weight 1: step 0 uses weight 0 (plain BCE), step 1 weight 1 * 1/4."""
    d = criteo_small
    pair = [_model("DeepFM", d, 5), _model("PNN", d, 6)]
    config = _run_cfg("mutual", 2, d, weight=1.0, warmup_steps=4)
    hand, _ = _hand_steps(pair, d, config, [0.0, 1.0 * 1 / 4], trained=[True, True])
    full, _ = _hand_steps(pair, d, config, [1.0, 1.0], trained=[True, True])
    assert _differ(hand[0], full[0])
    mutual.mutual_fit(pair, d, config)
    _assert_same_weights(pair, hand)


# ---------------------------------------------------------------- what an epoch records


def test_an_epochs_train_loss_is_the_mean_of_its_steps_losses(criteo_small):
    d = criteo_small
    model = _model("DeepFM", d, 8)
    config = _cfg(batch_size=math.ceil(d.rows["train"] / 2), seed=9)
    _, losses = _hand_steps([model], d, config, [0.0, 0.0], trained=[True])
    r = loop.fit(model, d, config)
    assert len(losses[0]) == 2
    assert r["history"][0]["train_loss"] == pytest.approx((losses[0][0] + losses[0][1]) / 2, rel=1e-6)


def test_the_history_ensemble_auc_is_that_of_the_peers_mean_probability(criteo_small):
    d = criteo_small
    pair = [_model("DeepFM", d, 1), _model("FM", d, 2)]
    r = mutual.mutual_fit(pair, d, _run_cfg("mutual", 2, d, batch_size=512))
    # one epoch: the final weights are epoch 1's (its best)
    Xva, yva = d.tensors("valid")
    probs = torch.stack([evaluation.predict(m, Xva) for m in pair])
    row = r["history"][-1]
    assert row["ensemble_valid_auc"] == pytest.approx(metrics.auc(yva, probs.mean(0)), abs=1e-12)
    assert row["ensemble_valid_logloss"] == pytest.approx(metrics.logloss(yva, probs.mean(0)), abs=1e-9)
    assert metrics.auc(yva, probs[0]) != pytest.approx(row["ensemble_valid_auc"], abs=1e-6)  # not peer 0's


def test_the_result_and_best_pt_are_the_best_epochs_not_the_last(criteo_small, tmp_path):
    """patience above the epoch count (no early stop, so no freeze restores anything): the final
    restore gives the best epoch's weights to the result and to best.pt."""
    d = criteo_small
    r = loop.fit(_model("DeepFM", d, 7), d, _cfg(epochs=3, patience=5, lr=0.03), out_dir=tmp_path)
    aucs = [h["valid_auc"] for h in r["history"]]
    best = r["best_epoch"]
    assert len(aucs) == 3 and not r["stopped_early"]
    assert best < 3 and aucs[-1] < aucs[best - 1] - 1e-4, aucs  # the setting: the last epoch is worse
    assert r["valid_auc"] == aucs[best - 1] == max(aucs)
    model, _ = checkpoint.load_pretrained(tmp_path)
    Xva, yva = d.tensors("valid")
    Xte, yte = d.tensors("test")
    assert evaluation.evaluate(model, Xva, yva)["auc"] == pytest.approx(aucs[best - 1], abs=1e-12)
    assert evaluation.evaluate(model, Xte, yte)["auc"] == pytest.approx(r["test_auc"], abs=1e-12)


def test_epoch_cap_hit_is_reported_when_the_cap_ends_the_run(criteo_small):
    d = criteo_small
    capped = loop.fit(_model("LR", d, 1), d, _cfg(epochs=1, patience=2))
    assert capped["epochs"] == 1 and not capped["stopped_early"] and capped["epoch_cap_hit"] is True
    # patience 0 stops after every epoch (FuxiCTR: bad epochs >= patience): early stop, not the cap
    stopped = loop.fit(_model("LR", d, 1), d, _cfg(epochs=3, patience=0))
    assert stopped["epochs"] == 1 and stopped["stopped_early"] and stopped["epoch_cap_hit"] is False


# ---------------------------------------------------------------- early stopping


def _feed(patience, aucs):
    model = nn.Linear(2, 1)
    tr = optim.Tracker(torch.optim.Adam(model.parameters(), lr=1e-3), TrainConfig(patience=patience))
    return [tr.on_epoch_end(e, {"auc": a, "logloss": 0.5}, model) for e, a in enumerate(aucs, 1)]


def test_patience_counts_consecutive_bad_epochs_only():
    """An improvement resets the count: bad, better, bad is one bad epoch in a row, not two."""
    assert _feed(2, [0.70, 0.69, 0.71, 0.70]) == [False] * 4
    assert _feed(2, [0.70, 0.69, 0.68]) == [False, False, True]


def test_finetuning_with_patience_0_trains_its_one_epoch(criteo_small):
    """patience 0 ends a run after every epoch, but the pretrained weights' epoch 0 does not end it:
    the finetuning run trains epoch 1 exactly as the run without a starting point does."""
    d = criteo_small
    Xva, yva = d.tensors("valid")
    start = evaluation.evaluate(_model("DeepFM", d, 4), Xva, yva)
    config = _cfg(epochs=3, patience=0)
    plain = loop.fit(_model("DeepFM", d, 4), d, config)
    tuned = loop.fit(_model("DeepFM", d, 4), d, config, start=start)
    assert plain["valid_auc"] > start["auc"]  # epoch 1 beats the start: best epoch 1 in both
    assert tuned["epochs"] == plain["epochs"] == 1 and tuned["stopped_early"]
    assert tuned["history"][0]["train_loss"] == plain["history"][0]["train_loss"] > 0
    assert tuned["best_epoch"] == plain["best_epoch"] == 1 and tuned["test_auc"] == plain["test_auc"]


# ---------------------------------------------------------------- replicas


def test_replicas_clip_each_gradient_like_the_sequential_runs(criteo_small):
    """FM's replicas are its sequential runs bit for bit (every kernel vmaps: tests/test_replicas.py),
    also with a clip norm small enough to bind (it changes the sequential run)."""
    d = criteo_small
    seeds = (1, 2)
    cfg = lambda s, clip: _cfg(seed=s, clip_grad_norm=clip)  # noqa: E731
    alone = [loop.fit(_model("FM", d, s), d, cfg(s, 1e-3)) for s in seeds]
    unclipped = loop.fit(_model("FM", d, seeds[0]), d, cfg(seeds[0], None))
    assert unclipped["history"][0]["train_loss"] != alone[0]["history"][0]["train_loss"]  # the clip binds
    together = loop.fit_replicas([_model("FM", d, s) for s in seeds], d, [cfg(s, 1e-3) for s in seeds])
    for a, b in zip(together, alone):
        assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
        assert (a["valid_auc"], a["test_auc"], a["test_logloss"]) == (b["valid_auc"], b["test_auc"], b["test_logloss"])


def test_a_stopped_replica_forwards_without_dropout(criteo_small):
    """The replicas' batched forward of one peer position: a training replica draws its sequential
    run's dropout masks, a replica that stopped early (frozen, eval mode, still a teacher in mutual
    runs) draws none: each equals its Peer's own forward."""
    d = criteo_small
    X, _ = d.tensors("train")
    xs = [X[:256], X[256:512]]
    peers = [loop.Peer(_model("DeepFM", d, s, net_dropout=0.5), TrainConfig(lr=0.01), index=0, learns_from=[1],
                       trainable=True, device=CPU) for s in (1, 2)]
    peers[1].tracker.stopped = True
    peers[1].freeze()  # what an early stop does (no best weights yet: only eval mode)
    assert peers[0].training and not peers[1].training and peers[1].drops
    step, seeds = 3, [11, 12]
    seq = [p.logits(x, step, s).detach() for p, x, s in zip(peers, xs, seeds)]
    # dropout matters for the stopped one: its train-mode forward differs from its eval forward
    peers[1].model.train()
    torch.manual_seed(dropout_seed(seeds[1], step, peers[1].dropout_stream, peers[1].replica))
    with torch.no_grad():
        noisy = peers[1].model(xs[1]).float()
    peers[1].model.eval()
    scale = seq[1].abs().max().item()
    assert (noisy - seq[1]).abs().max().item() > 0.1 * scale
    out = replicas.Stack(peers[0].model).logits(peers, torch.stack(xs), [step, step], seeds).detach()
    for k in range(2):
        assert (out[k] - seq[k]).abs().max().item() <= 1e-5 * seq[k].abs().max().item(), k
