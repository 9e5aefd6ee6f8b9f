"""The typed settings (ctrkit.training.config): unknown keys rejected, each rule decided once, the
flat train dicts of checkpoints read and written as before, and the store's run keys unchanged."""
import dataclasses

import pytest
import torch

from ctrkit.core.utils import CtrkitError
from ctrkit.training import config as C


@pytest.mark.parametrize("cls, what", [(C.TrainConfig, "train config"), (C.RunConfig, "run config"),
                                       (C.RunSpec, "run setting"), (C.PretrainSpec, "pretrain setting")])
def test_unknown_keys_are_rejected_by_name(cls, what):
    with pytest.raises(CtrkitError, match=rf"unknown {what} key\(s\) bogus; valid: "):
        cls.from_dict({"bogus": 1})


def test_alone_means_weight_zero_and_the_peer_count_is_checked_once():
    peer = C.TrainConfig()
    assert C.RunConfig(mode="alone", weight=3.0, peers=(peer,)).weight == 0.0
    assert C.RunConfig(mode="mutual", weight=3.0, peers=(peer, peer)).weight == 3.0
    assert C.RunSpec(peers=("DeepFM",), mode="alone", weight=2.0).settings()["weight"] == 0.0
    # ensemble keeps the weight it was given (existing run keys depend on it), but the weight is moot there
    assert C.stored_weight("ensemble", 0.3) == 0.3 and not C.weight_matters("ensemble")
    assert C.weight_matters("mutual") and C.weight_matters("kd") and not C.weight_matters("alone")
    for mode in ("mutual", "kd", "ensemble"):
        with pytest.raises(CtrkitError, match=f"mode '{mode}' needs at least 2 peers, got 1"):
            C.RunConfig(mode=mode, peers=(peer,))
    with pytest.raises(CtrkitError, match="needs at least 2 peers"):
        C.RunSpec(peers=("DeepFM",), mode="mutual")


def test_the_device_is_resolved_once_and_not_written_back():
    c = C.RunConfig(mode="alone", peers=({},), device="cpu")
    assert c.torch_device == torch.device("cpu") and c.torch_device is c.torch_device
    assert C.RunConfig(mode="alone", peers=({},)).run_dict()["device"] == "auto"
    with pytest.raises(CtrkitError, match="device must be cpu, cuda, cuda:N or auto, got 'tpu'"):
        C.RunConfig(mode="alone", peers=({},), device="tpu").torch_device


def test_flat_train_dicts_round_trip_in_the_order_checkpoints_hold():
    old = {"epochs": 3, "batch_size": 512, "lr": 0.001, "embedding_regularizer": 1e-05, "net_regularizer": 0.0,
           "clip_grad_norm": 10.0, "monitor": "AUC", "patience": 1, "lr_decay": 0.1, "min_lr": 1e-06,
           "eval_batch_size": 65536, "amp": "off", "device": "cpu", "seed": 7, "progress": False,
           "check_every": 100, "threads": "auto"}  # a checkpoint's train_config as ctrkit has always written it
    run = C.RunConfig.single(old)
    assert run.mode == "alone" and run.batch_size == 512 and run.epochs == 3 and run.seed == 7
    assert run.peers[0] == C.TrainConfig(lr=0.001, embedding_regularizer=1e-5, patience=1)
    assert list(run.train_dict(0)) == list(C.TRAIN_DICT_KEYS) and run.train_dict(0) == old
    assert set(C.TrainConfig.keys()) | set(C.RUN_TRAIN_KEYS) == set(C.TRAIN_DICT_KEYS)
    assert not set(C.TrainConfig.keys()) & set(C.RUN_TRAIN_KEYS)
    assert set(C.RUN_TRAIN_KEYS) <= {f.name for f in dataclasses.fields(C.RunConfig)}
    with pytest.raises(CtrkitError, match="unknown train config key"):
        C.TrainConfig.from_dict({"batch_size": 512})  # a run-level key is not a peer's


def test_a_run_config_from_a_spec_takes_the_run_rules():
    peer = lambda **kw: C.normalize_train_dict({"epochs": 2, "batch_size": 256, "lr": 1e-3, **kw})  # noqa: E731
    trains = [peer(epochs=2, batch_size=256), peer(epochs=5, batch_size=1024, lr=0.01)]
    scratch = C.RunSpec(peers=("DeepFM", "DCN"), seed=3, amp="off").run_config(trains, "cpu")
    assert (scratch.epochs, scratch.batch_size, scratch.seed, scratch.amp) == (5, 256, 3, "off")
    assert [p.lr for p in scratch.peers] == [1e-3, 0.01]
    ens = C.RunSpec(peers=("DeepFM", "DCN"), init="pretrained", mode="ensemble", ckpt_dir="/ck",
                    batch_size=64).run_config(trains, "cpu")
    assert ens.epochs == 0 and ens.batch_size == 64 and ens.train_dict(1)["epochs"] == 1
    fine = C.RunSpec(peers=("DeepFM", "DCN"), init="pretrained", ckpt_dir="/ck", finetune_epochs=4)
    assert fine.run_config(trains, "cpu").epochs == 4


def test_run_keys_are_the_ones_existing_stores_hold():
    """Pinned from the code before this module existed: the store's skip-if-done depends on them."""
    cases = [(dict(peers=("DeepFM", "DCN")), "d8bd8e1771fa6285", "d00b5a46894ce7cd"),
             (dict(peers=("DeepFM", "DCN", "DeepFM"), init="pretrained", mode="alone", weight=3.0, ckpt_dir="/ck/seed1",
                   seed=1), "f9ea867ecedbdc0e", "38ea1361baee914e"),
             (dict(peers=("DeepFM", "DCN"), init="pretrained", mode="ensemble", weight=0.3, ckpt_dir="/ck",
                   overrides={"patience": 1}), "111b38f83bb7dc63", "d64ae25d458926ed"),
             (dict(peers=("FM", "DCN"), mode="kd", ckpt_dir="/ck", weight=0.5, warmup_steps=10, batch_size=256,
                   epochs=3, tag="exploration"), "ec198abb4f9723f0", "893b01b53acfe023")]
    for settings, key, settings_key in cases:
        spec = C.RunSpec(**settings)
        assert (spec.key("fp0"), spec.settings_key("fp0")) == (key, settings_key), settings


def test_pretrain_spec_keys_leave_out_what_does_not_change_the_result():
    spec = C.PretrainSpec(model="DeepFM_2", seed=5, device="cpu")
    assert spec.label == "DeepFM_2"
    train = C.normalize_train_dict({"epochs": 2, "batch_size": 256, "seed": 5})
    key, settings_key = spec.keys("fp", {"embedding_dim": 4}, train)
    quiet = C.normalize_train_dict({**train, "progress": False, "threads": 1, "eval_batch_size": 8})
    assert spec.keys("fp", {"embedding_dim": 4}, quiet) == (key, settings_key)
    other_seed = dataclasses.replace(spec, seed=6).keys("fp", {"embedding_dim": 4}, {**train, "seed": 6})
    assert other_seed[0] != key and other_seed[1] == settings_key
