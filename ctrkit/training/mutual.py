"""The paper's mutual learning and its controls, as whom-learns-from-whom over the one loop
(`ctrkit.training.loop.train_peers`).

Modes (one code path, they differ only in whom each peer learns from):
- mutual:   every peer learns from all others;
- alone:    the control: nobody learns from anybody (weight 0), identical batches and schedule, so
            a gain of `mutual` over `alone` is the mutual term's, not the extra training's;
- kd:       peer 0 is a fixed pretrained teacher, every other peer a student learning from it;
- ensemble: no training; the pretrained peers and their average are evaluated;
- ensemble_teacher: every peer learns from the detached mean of all peers' probabilities;
- ektf:     the ensemble teacher plus the other peers, weighted by the peers' examination scores
            (EKTF, `ctrkit.training.losses.ektf_loss`).
The two group modes learn from everyone, themselves included (their own row first): the loss
rule (`ctrkit.training.losses.peer_loss`, `rule` = the mode) needs the whole group.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from torch import nn

from ctrkit.core.utils import CtrkitError
from ctrkit.training.checkpoint import model_identity
from ctrkit.training.config import MODES, RunConfig
from ctrkit.training.exchange import Exchange, LocalExchange
from ctrkit.training.loop import Peer, train_peers
from ctrkit.training.losses import GROUP_RULES
from ctrkit.training.rng import dropout_stream

__all__ = ["MODES", "RunConfig", "mutual_fit", "make_peers", "teachers", "best_path"]


def teachers(mode: str, n_peers: int) -> list[list[int]]:
    """Whom each peer learns from: the only difference between the trained modes."""
    if mode == "mutual":
        return [[i for i in range(n_peers) if i != k] for k in range(n_peers)]
    if mode == "kd":
        return [[]] + [[0] for _ in range(1, n_peers)]
    if mode in GROUP_RULES:
        return [[k] + [i for i in range(n_peers) if i != k] for k in range(n_peers)]
    return [[] for _ in range(n_peers)]


def best_path(out: Path, index: int, name: str) -> Path:
    """`<out>/<index>_<Model>/best.pt`: a trained peer of a run, in the `pretrain` format."""
    return out / f"{index}_{name}" / "best.pt"


def mutual_fit(models: Sequence[nn.Module], data, config: RunConfig | dict, *, exchange: Exchange | None = None,
               out_dir: str | Path | None = None, starts: Sequence[dict | None] | None = None,
               occurrences: Sequence[int] | None = None, **loop) -> dict:
    """Train `models` together on `data` (CTRData); seed each model's init before building it, the
    shared batch order is seeded with `config.seed`. Returns the result dict: `peers` (per-peer
    valid/test AUC and logloss, best epoch, whether it stopped early), `ensemble`, `history`,
    `seconds`, `env`, `test_probs` (every peer's test probabilities, numpy [N, rows]; not in
    result.json). With `out_dir`: a last checkpoint every epoch, `<out_dir>/<i>_<Model>/best.pt`
    per trained peer and result.json; `loop`: `resume`, `callback`, `stop` as in `train_peers`.

    `config.peers`: one TrainConfig per peer of the run (all ranks' under an exchange).
    `exchange`: None trains every model in this process; a `ctrkit.training.distributed.DistExchange`
    trains this rank's one model (`models` = [it]) with the others on their ranks. `starts`: per
    model, the validation metrics of its pretrained weights (epoch 0 of a finetuning run) or None.
    `occurrences`: see `make_peers`."""
    config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    n_peers = exchange.n_peers if exchange is not None else len(models)
    if len(config.peers) != n_peers:
        raise CtrkitError(f"run config: {len(config.peers)} peer configs for {n_peers} peers")
    exchange = exchange or LocalExchange(n_peers, config.torch_device)
    out = Path(out_dir) if out_dir is not None else None
    return train_peers(make_peers(models, config, exchange, out, starts, occurrences), data, config,
                       exchange=exchange, out_dir=out, **loop)


def make_peers(models: Sequence[nn.Module], config: RunConfig, exchange: Exchange, out: Path | None,
               starts: Sequence[dict | None] | None = None, occurrences: Sequence[int] | None = None) -> list[Peer]:
    """This process's Peers of a run: whom each learns from, which are trainable, where their best.pt
    goes, their dropout streams. `occurrences[k]` (every peer of the run, k its index): which of the
    run's models of its name peer k is (`rng.dropout_stream`); None counts them over `models`, right
    when every peer is in this process (a rank of a distributed run is told: `experiments.runs`)."""
    n_peers = exchange.n_peers
    if occurrences is None:
        seen: Counter = Counter()
        occurrences = {}
        for k, name in zip(exchange.local_indices(), (model_identity(m)[0] for m in models)):
            seen[name] += 1
            occurrences[k] = seen[name]
    learns = teachers(config.mode, n_peers)
    fixed = {0} if config.mode == "kd" else set()
    starts = list(starts) if starts is not None else [None] * len(models)
    peers = []
    for k, m, start in zip(exchange.local_indices(), models, starts):
        p = Peer(m, config.peers[k], index=k, learns_from=learns[k], trainable=config.mode != "ensemble" and k not in fixed,
                 device=exchange.device, replica=exchange.replica, start=start)
        p.dropout_stream = dropout_stream(p.name, occurrences[k])
        p.best_path = best_path(out, p.index, p.name) if out is not None else None
        exchange.wrap(p)
        peers.append(p)
    return peers
