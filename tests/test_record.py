"""The store record (ctrkit.experiments.record): its fields listed once, built by one function for
mutual runs and baselines with the keys stores have always held; the lists others keep are its names."""
import pytest

from ctrkit.analysis import records as analysis_records
from ctrkit.experiments import store
from ctrkit.experiments.record import CORE_FIELDS, FIELDS, Record, make_records
from ctrkit.training.config import RunSpec

# The keys (and their order) of a mutual run's record before Record existed.
MUTUAL_KEYS = ["run_key", "settings_key", "tag", "dataset", "protocol", "fingerprint", "mode", "init", "seed",
               "peer_seed", "n_peers", "peer_index", "peer", "model", "peers", "partners", "weight", "divergence",
               "warmup_steps", "preset", "amp", "epochs", "max_epochs", "stopped_early", "epoch_cap_hit",
               "finetune_lr_scale", "finetune_epochs", "trained", "valid_auc", "valid_logloss", "test_auc",
               "test_logloss", "best_epoch", "pretrained_valid_auc", "pretrained_valid_logloss", "pretrained_test_auc",
               "pretrained_test_logloss", "partners_pretrained_auc", "ensemble_valid_auc", "ensemble_test_auc",
               "ensemble_test_logloss", "seconds", "config", "env_info"]
BASELINE_KEYS = {"run_key", "settings_key", "tag", "dataset", "protocol", "fingerprint", "mode", "init", "seed",
                 "peer_seed", "n_peers", "peer_index", "peer", "model", "peers", "partners", "weight", "divergence",
                 "preset", "amp", "epochs", "max_epochs", "stopped_early", "epoch_cap_hit", "valid_auc", "valid_logloss",
                 "test_auc", "test_logloss", "pretrained_test_auc", "partners_pretrained_auc", "ensemble_test_auc",
                 "ensemble_test_logloss", "best_epoch", "seconds", "checkpoint", "config", "env_info"}
RUN = dict(run_key="k", settings_key="s", tag=None, dataset="criteo", protocol="x4_001", fingerprint="fp", init="scratch",
           seed=1, preset="smoke", amp="off", epochs=2, max_epochs=2, ensemble_test_auc=0.7, ensemble_test_logloss=0.5,
           seconds=1.0, env_info={})


def _peer(label, auc):
    return dict(peer_seed=1, peer=label, model=label, stopped_early=False, epoch_cap_hit=True, valid_auc=auc,
                valid_logloss=0.5, test_auc=auc, test_logloss=0.5, best_epoch=2, pretrained_test_auc=auc - 0.1,
                config={})


def test_a_mutual_record_keeps_its_keys_in_order_and_derives_the_peer_set():
    extra = dict(warmup_steps=0, finetune_lr_scale=None, finetune_epochs=None, ensemble_valid_auc=0.7)
    peer_extra = dict(trained=True, pretrained_valid_auc=None, pretrained_valid_logloss=None,
                      pretrained_test_logloss=None)
    recs = make_records({**RUN, **extra, "mode": "mutual", "weight": 1.0, "divergence": "mse"},
                        [{**_peer("DeepFM", 0.8), **peer_extra}, {**_peer("DCN", 0.75), **peer_extra}])
    assert [list(r) for r in recs] == [MUTUAL_KEYS, MUTUAL_KEYS]
    assert [r["peers"] for r in recs] == ["DeepFM+DCN"] * 2 and [r["peer_index"] for r in recs] == [0, 1]
    assert recs[0]["partners"] == ["DCN"] and recs[0]["partners_pretrained_auc"] == [pytest.approx(0.65)]


def test_a_baseline_record_has_the_baseline_keys():
    rec, = make_records({**RUN, "mode": "baseline", "init": None, "weight": None, "divergence": None},
                        [{**_peer("DeepFM", 0.8), "checkpoint": "ck/best.pt"}])
    assert set(rec) == BASELINE_KEYS and rec["n_peers"] == 1 and rec["partners"] == []
    with pytest.raises(TypeError):
        make_records({**RUN, "mode": "baseline", "bogus": 1}, [_peer("DeepFM", 0.8)])


def test_the_field_lists_elsewhere_are_record_fields():
    assert len(set(FIELDS)) == len(FIELDS) and set(MUTUAL_KEYS) | BASELINE_KEYS <= set(FIELDS)
    assert store.COLUMNS == [*CORE_FIELDS, "append_id", "append_size", "written_at"]
    assert [f for f in FIELDS if f in CORE_FIELDS] == list(CORE_FIELDS)
    # the tables name which fields define a setting / a control: Record fields, or RunSpec settings
    # read from a record's config (older records keep them there only)
    settings = set(RunSpec(peers=("DeepFM",), mode="alone").settings())
    config_fields = analysis_records._CONFIG_FIELDS
    assert set(config_fields.values()) <= settings
    for name in (*analysis_records.SETTING_FIELDS, *analysis_records.CONTROL_FIELDS):
        assert name in FIELDS or name in config_fields, name
    with pytest.raises(TypeError):
        Record(run_key="k")  # every field without a default is required, by keyword
