"""The exchange is a declared interface: LocalExchange and DistExchange both satisfy
`ctrkit.training.exchange.Exchange`, and the loop keeps its status itself, handing it to the
transport's calls (`where=`) instead of writing it into the transport."""
import inspect
from types import SimpleNamespace

import torch

from ctrkit import models
from ctrkit.core.utils import seed_everything
from ctrkit.training import presets
from ctrkit.training.config import RunConfig
from ctrkit.training.distributed import DistExchange, Layout
from ctrkit.training.exchange import Exchange, LocalExchange
from ctrkit.training.mutual import mutual_fit

METHODS = [n for n, v in vars(Exchange).items() if callable(v) and not n.startswith("_")]


def _fake_comm():
    return SimpleNamespace(device=torch.device("cpu"), layout=Layout(4, 2), replica=1, is_main=False, rank=3, peer=1,
                           where="start-up")


def test_both_transports_satisfy_the_protocol_with_its_signatures():
    assert {"shard", "gather", "gather_objects", "agree", "step", "broadcast", "common_epochs"} <= set(METHODS)
    local, dist = LocalExchange(2, torch.device("cpu")), DistExchange(_fake_comm())
    for ex in (local, dist):
        assert isinstance(ex, Exchange)
        for name in METHODS:  # same parameters as declared (where= included), not just the same names
            declared = list(inspect.signature(getattr(Exchange, name)).parameters)
            assert list(inspect.signature(getattr(type(ex), name)).parameters) == declared, (type(ex), name)
    assert (dist.n_peers, dist.replicas, dist.replica) == (2, 2, 1)
    assert not isinstance(SimpleNamespace(shard=None), Exchange)


def test_dist_exchange_names_the_loops_status_in_its_comm():
    comm = _fake_comm()
    comm.gather_objects = lambda obj: [obj] * 4
    ex = DistExchange(comm)
    assert ex.gather_objects(["x"], where="evaluation after epoch 2") == ["x", "x"]
    assert comm.where == "evaluation after epoch 2"
    assert not hasattr(ex, "where")


class _Strict(LocalExchange):
    """A transport that refuses attribute writes after construction and records the loop's status."""

    def __init__(self, *a):
        super().__init__(*a)
        object.__setattr__(self, "seen", [])
        object.__setattr__(self, "_ready", True)

    def __setattr__(self, name, value):
        if getattr(self, "_ready", False):
            raise AssertionError(f"the loop wrote exchange.{name} = {value!r}")
        object.__setattr__(self, name, value)

    def gather(self, local, *, training=True, where=""):
        self.seen.append(where)
        return local

    def gather_objects(self, items, *, where=""):
        self.seen.append(where)
        return list(items)


def test_the_loop_hands_its_status_to_the_transport(criteo_small, tmp_path):
    d = criteo_small
    peers = []
    for k, name in enumerate(["LR", "FM"]):
        seed_everything(k)
        peers.append(models.build(name, d.field_sizes, **presets.get(name, "smoke").model))
    ex = _Strict(2, torch.device("cpu"))
    cfg = RunConfig(mode="mutual", epochs=1, batch_size=1600, device="cpu", amp="off", progress=False,
                    threads=None, peers=({}, {}))
    res = mutual_fit(peers, d, cfg, exchange=ex, out_dir=tmp_path)
    assert res["epochs"] == 1
    assert "epoch 1 step 1" in ex.seen and "epoch 1 step 2" in ex.seen
    assert "evaluation after epoch 1" in ex.seen and "final evaluation" in ex.seen
