"""The paper's mutual learning and its controls, as whom-learns-from-whom over the one loop
(`ctrkit.training.loop.train_peers`).

Modes (one code path, they differ only in whom each peer learns from):
- mutual:   every peer learns from all others;
- alone:    the control: nobody learns from anybody (weight 0), identical batches and schedule, so
            a gain of `mutual` over `alone` is the mutual term's, not the extra training's;
- kd:       peer 0 is a fixed pretrained teacher, every other peer a student learning from it;
- ensemble: no training; the pretrained peers and their average are evaluated.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import nn

from ctrkit.training.loop import MODES, LocalExchange, MutualConfig, Peer, train_peers
from ctrkit.core.utils import CtrkitError, resolve_device

__all__ = ["MODES", "MutualConfig", "mutual_fit", "teachers", "best_path"]


def teachers(mode: str, n_peers: int) -> list[list[int]]:
    """Whom each peer learns from: the only difference between the trained modes."""
    if mode == "mutual":
        return [[i for i in range(n_peers) if i != k] for k in range(n_peers)]
    if mode == "kd":
        return [[]] + [[0] for _ in range(1, n_peers)]
    return [[] for _ in range(n_peers)]


def best_path(out: Path, index: int, name: str) -> Path:
    """`<out>/<index>_<Model>/best.pt`: a trained peer of a run, in the `pretrain` format."""
    return out / f"{index}_{name}" / "best.pt"


def _check_peers(models: Sequence[nn.Module], mode: str, n_peers: int, data) -> None:
    need = 1 if mode == "alone" else 2
    if n_peers < need:
        raise CtrkitError(f"mode {mode!r} needs at least {need} peers, got {n_peers}")
    sizes = list(data.field_sizes)
    for i, m in enumerate(models):
        fs = getattr(m, "field_sizes", None)
        if fs is not None and list(fs) != sizes:
            raise CtrkitError(f"peer {i} ({getattr(m, 'name', type(m).__name__)}) was built for field sizes "
                              f"{list(fs)[:4]}..., the dataset {data.path} has {sizes[:4]}...: "
                              f"peers must share the dataset's feature map")


def mutual_fit(models: Sequence[nn.Module], data, config: MutualConfig | dict | None = None, *, exchange=None,
               out_dir: str | Path | None = None, resume: bool = False, callback=None, stop=None,
               starts: Sequence[dict | None] | None = None) -> dict:
    """Train `models` together on `data` (CTRData); seed each model's init before building it, the
    shared batch order is seeded with `config.seed`. Returns the result dict: `peers` (per-peer
    valid/test AUC and logloss, best epoch, whether it stopped early), `ensemble`, `history`,
    `seconds`, `env`. With `out_dir`: a last checkpoint every epoch, `<out_dir>/<i>_<Model>/best.pt`
    per trained peer and result.json; `resume`, `callback`, `stop` as in `train_peers`.

    `exchange`: None trains every model in this process; a `ctrkit.training.distributed.DistExchange`
    trains this rank's one model (`models` = [it]) with the others on their ranks. `starts`: per
    model, the validation metrics of its pretrained weights (epoch 0 of a finetuning run) or None."""
    config = config if isinstance(config, MutualConfig) else MutualConfig.from_dict(config or {})
    n_peers = exchange.n_peers if exchange is not None else len(models)
    _check_peers(models, config.mode, n_peers, data)
    exchange = exchange or LocalExchange(n_peers, resolve_device(config.device))
    local = exchange.local_indices()
    tcfg = config.train if isinstance(config.train, (list, tuple)) else [config.train] * n_peers
    if len(tcfg) != n_peers:
        raise CtrkitError(f"mutual config train: {len(tcfg)} peer configs for {n_peers} peers")
    learns = teachers(config.mode, n_peers)
    fixed = {0} if config.mode == "kd" else set()
    starts = list(starts) if starts is not None else [None] * len(models)
    peers = [Peer(m, config.peer_train_config(tcfg[k]), index=k, learns_from=learns[k],
                  trainable=config.mode != "ensemble" and k not in fixed, device=exchange.device,
                  replica=exchange.replica, start=start)
             for k, m, start in zip(local, models, starts)]
    for p in peers:
        exchange.wrap(p)
    out = Path(out_dir) if out_dir is not None else None
    return train_peers(peers, data, config, exchange=exchange, out_dir=out, resume=resume, callback=callback,
                       stop=stop, best_paths=[best_path(out, p.index, p.name) for p in peers] if out else None)
