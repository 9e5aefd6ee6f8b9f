"""The paper's mutual trainer and its controls.

`mutual_fit(peers, data, config)` trains N peer models on the SAME batches: each step every peer
predicts the batch, and peer n descends

    L_n = BCE(y, p_n) + w/(N-1) * sum_{i != n} (p_i - p_n)^2        (p_i detached)

with its own optimizer, plateau LR schedule, early stopping and best weights (the trainer's
`make_optimizer` / `Tracker` / `epoch_batches` / `evaluate`). Every epoch evaluates each peer and
the peers' average (the ensemble).

Modes (one code path, they differ only in whom each peer learns from):
- mutual:   every peer learns from all others;
- alone:    the control: nobody learns from anybody (weight 0), identical batches and schedule, so
            a gain of `mutual` over `alone` is the mutual term's, not the extra training's;
- kd:       peer 0 is a fixed pretrained teacher, every other peer a student learning from it;
- ensemble: no training; the pretrained peers and their average are evaluated.

`run_mutual(data, peers=["DeepFM", "DCN"], init="scratch"|"pretrained", ...)` builds or loads the
peers (each from its preset, or from `ckpt_dir/<Model>` and finetuned with `finetune_lr_scale` x
its pretraining lr for `finetune_epochs`), validates everything before training, and runs.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ctrkit import metrics, presets
from ctrkit.losses import check_divergence, check_weight, mutual_losses, peer_loss, warmup_weight
from ctrkit.models import build, canonical_name
from ctrkit.train import (NonFiniteCheck, TrainConfig, Tracker, amp_context, dropout_seed, epoch_batches,
                          load_checkpoint, load_pretrained, make_optimizer, predict, resolve_amp, rng_state,
                          set_rng_state, uses_dropout)
from ctrkit.utils import (CtrkitError, env_info, resolve_device, seed_everything, torch_save_atomic,
                          tune_cpu_allocator, write_json_atomic)

__all__ = ["MODES", "INITS", "MutualConfig", "mutual_fit", "run_mutual", "mutual_losses", "peer_loss",
           "checkpoint_path", "peer_labels", "check_run_args"]

MODES = ("mutual", "alone", "kd", "ensemble")
INITS = ("scratch", "pretrained")


@dataclasses.dataclass
class MutualConfig:
    """Run-level settings of `mutual_fit`; per-peer optimizer/schedule settings are in `train`.

    `train`: one TrainConfig (or dict) per peer (lr, regularizers, monitor, patience, lr_decay,
    clip_grad_norm); its batch_size/epochs/seed/device/amp are overridden by the run's, since one
    batch feeds every peer. A single TrainConfig/dict applies to every peer.
    """

    mode: str = "mutual"
    weight: float = 1.0
    divergence: str = "mse"
    warmup_steps: int = 0
    epochs: int = 2
    batch_size: int = 2048
    seed: int = 2021
    device: str = "auto"
    amp: str = "auto"
    eval_batch_size: int = 65536
    check_every: int = 100
    progress: bool = True
    train: Any = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise CtrkitError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        check_weight(self.weight)
        check_divergence(self.divergence)
        for name in ("warmup_steps", "epochs", "batch_size", "seed", "eval_batch_size", "check_every"):
            v = getattr(self, name)
            lo = 0 if name in ("warmup_steps", "seed") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise CtrkitError(f"mutual config {name}: expected an int >= {lo}, got {v!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "MutualConfig":
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise CtrkitError(f"unknown mutual config key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**d)

    def peer_train_config(self, base: TrainConfig | dict | None) -> TrainConfig:
        base = base if isinstance(base, TrainConfig) else TrainConfig.from_dict(base or {})
        return base.replace(epochs=self.epochs, batch_size=self.batch_size, seed=self.seed, device=self.device,
                            amp=self.amp, eval_batch_size=self.eval_batch_size, progress=self.progress,
                            check_every=self.check_every)


def _teachers(mode: str, n_peers: int) -> list[list[int]]:
    """Whom each peer learns from: the only difference between the trained modes."""
    if mode == "mutual":
        return [[i for i in range(n_peers) if i != n] for n in range(n_peers)]
    if mode == "kd":
        return [[]] + [[0] for _ in range(1, n_peers)]
    return [[] for _ in range(n_peers)]


def _check_peers(peers: Sequence[nn.Module], mode: str, data) -> None:
    need = 1 if mode == "alone" else 2
    if len(peers) < need:
        raise CtrkitError(f"mode {mode!r} needs at least {need} peers, got {len(peers)}")
    sizes = list(data.field_sizes)
    for i, m in enumerate(peers):
        fs = getattr(m, "field_sizes", None)
        if fs is not None and list(fs) != sizes:
            raise CtrkitError(f"peer {i} ({getattr(m, 'name', type(m).__name__)}) was built for field sizes "
                              f"{list(fs)[:4]}..., the dataset {data.path} has {sizes[:4]}...: "
                              f"peers must share the dataset's feature map")


class _Peer:
    """One peer's training state: its model, optimizer, plateau schedule and early stopping."""

    def __init__(self, model: nn.Module, config: TrainConfig, learns_from: list[int], trainable: bool, device,
                 index: int = 0, replica: int = 0):
        self.model, self.config, self.learns_from = model.to(device), config, learns_from
        self.forward = self.model  # the training forward (ctrkit.distributed wraps it in DDP)
        self.index, self.replica = index, replica  # which dropout stream is this peer's
        self.name = getattr(model, "name", type(model).__name__)
        self.trainable = trainable
        self.optimizer = make_optimizer(model, config) if trainable else None
        self.tracker = Tracker(self.optimizer, config) if trainable else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.teachers = torch.tensor(learns_from, dtype=torch.long, device=device)
        self.drops = uses_dropout(model)

    @property
    def training(self) -> bool:
        return self.trainable and not self.tracker.stopped

    def logits(self, xb: torch.Tensor, step: int | None = None) -> torch.Tensor:
        if self.training:
            if self.drops and step is not None:  # this peer's own mask stream (see train.dropout_seed)
                torch.manual_seed(dropout_seed(self.config.seed, step, self.index, self.replica))
            return self.forward(xb).float()
        with torch.no_grad():  # a fixed teacher or a peer that stopped early still teaches
            return self.model(xb).float()

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.params, self.config.clip_grad_norm)
        self.optimizer.step()

    def freeze(self) -> None:
        """Early-stopped: back to its best weights, eval mode, no more updates."""
        self.tracker.restore_best(self.model)
        self.model.eval()


def _scores(y: torch.Tensor, p: torch.Tensor) -> dict:
    return {"auc": metrics.auc(y, p), "logloss": metrics.logloss(y, p)}


def _evaluate_all(peers: list[_Peer], X, y, batch_size: int) -> tuple[list[dict], dict]:
    """Each peer's metrics and the ensemble's (mean of the peers' probabilities), one predict each."""
    probs = [predict(p.model, X, batch_size) for p in peers]
    return [_scores(y, p) for p in probs], _scores(y, torch.stack(probs).mean(0))


def mutual_fit(peers: Sequence[nn.Module], data, config: MutualConfig | dict | None = None,
               out_dir: str | Path | None = None, resume: bool = False, callback=None) -> dict:
    """Train `peers` together on `data` (CTRData). Seed each peer's init before building it; this
    function seeds the shared batch order with `config.seed`. Returns a result dict with `peers`
    (per-peer valid/test AUC and logloss, best epoch, history), `ensemble`, `history`, `seconds`, `env`.
    With `out_dir`: `last.pt` after every epoch (every peer's weights, optimizer, schedule, early
    stopping, the RNGs), and at the end `<out_dir>/<i>_<Model>/best.pt` per trained peer (the
    `pretrain` format) and result.json. `resume=True` continues from `out_dir/last.pt` to the same
    result as an uninterrupted run (`epochs` may be raised). `callback(row)` is called after every
    epoch with that epoch's history row (each peer's valid AUC/logloss, the ensemble's): live plots."""
    config = config if isinstance(config, MutualConfig) else MutualConfig.from_dict(config or {})
    _check_peers(peers, config.mode, data)
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    amp_dtype = resolve_amp(device, config.amp)
    tcfg = config.train if isinstance(config.train, (list, tuple)) else [config.train] * len(peers)
    if len(tcfg) != len(peers):
        raise CtrkitError(f"mutual config train: {len(tcfg)} peer configs for {len(peers)} peers")
    trains = config.mode != "ensemble"
    teachers = _teachers(config.mode, len(peers))
    fixed = {0} if config.mode == "kd" else set()
    P = [_Peer(m, config.peer_train_config(c), teachers[n], trains and n not in fixed, device, index=n)
         for n, (m, c) in enumerate(zip(peers, tcfg))]
    for p in P:
        p.model.train(p.training)

    generator = seed_everything(config.seed)
    tune_cpu_allocator(device)
    Xtr, ytr = data.tensors("train", device)
    Xva, yva = data.tensors("valid", device)
    n = Xtr.shape[0]
    steps = math.ceil(n / config.batch_size)
    history, global_step, done = [], 0, 0
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise CtrkitError("mutual_fit(resume=True) needs out_dir (where last.pt is)")
    if resume and (out / "last.pt").is_file():
        done, global_step, history = _load_last(out / "last.pt", P, config, data, generator)
    for epoch in range(done + 1, (config.epochs if trains else 0) + 1):
        if not any(p.training for p in P):
            break
        t_epoch = time.perf_counter()
        loss_sum = torch.zeros(len(P), dtype=torch.float64, device=device)
        checks = [NonFiniteCheck(device) for _ in P]
        bar = tqdm(total=steps, desc=f"{config.mode} epoch {epoch}/{config.epochs}", file=sys.stderr,
                   disable=not config.progress, leave=False, dynamic_ncols=True)
        for step, idx in enumerate(epoch_batches(n, config.batch_size, generator, device), 1):
            # ---- the mutual step: one batch, every peer; L_n = BCE + w/|T_n| sum_{i in T_n} (p_i - p_n)^2
            xb, yb = Xtr.index_select(0, idx), ytr.index_select(0, idx)
            with amp_context(device, amp_dtype):
                logits = [p.logits(xb, global_step) for p in P]
            probs = torch.stack([torch.sigmoid(z.detach()) for z in logits])  # targets: no gradient
            w = warmup_weight(config.weight, global_step, config.warmup_steps)
            for k, p in enumerate(P):
                if p.training:
                    loss = peer_loss(logits[k], yb, probs.index_select(0, p.teachers), w, config.divergence)
                    p.step(loss)
                    loss_sum[k] += loss.detach()
                    checks[k].update(loss, step)
            global_step += 1
            # ---- end of the mutual step; host syncs only every check_every steps
            if step % config.check_every == 0 or step == steps:
                for c, p in zip(checks, P):
                    c.check(epoch, f"loss of peer {p.name}")
                bar.set_postfix(loss=" ".join(f"{v:.4f}" for v in (loss_sum / step).tolist()), refresh=False)
                bar.update(step - bar.n)
        bar.close()

        valid, ens = _evaluate_all(P, Xva, yva, config.eval_batch_size)
        row = {"epoch": epoch, "seconds": time.perf_counter() - t_epoch, "ensemble_valid_auc": ens["auc"],
               "ensemble_valid_logloss": ens["logloss"], "peers": []}
        for k, (p, v) in enumerate(zip(P, valid)):
            entry = {"valid_auc": v["auc"], "valid_logloss": v["logloss"], "train_loss": float(loss_sum[k]) / steps,
                     "trained": p.training}
            if p.training:
                entry["lr"] = p.tracker.lr
                if p.tracker.on_epoch_end(epoch, v, p.model):
                    p.freeze()
                entry["improved"] = p.tracker.improved
            row["peers"].append(entry)
        history.append(row)
        if out is not None:
            _save_last(out / "last.pt", P, config, data, generator, epoch, global_step, history)
        if callback is not None:
            callback(row)
        if config.progress:
            tqdm.write(f"epoch {epoch}: valid AUC " + " ".join(f"{p.name} {v['auc']:.5f}" for p, v in zip(P, valid))
                       + f" | ensemble {ens['auc']:.5f}", file=sys.stderr)

    for p in P:
        if p.trainable and p.tracker.best_state is not None:
            p.tracker.restore_best(p.model)
        p.model.eval()
    valid, ens_valid = _evaluate_all(P, Xva, yva, config.eval_batch_size)
    Xte, yte = data.tensors("test", device)
    test, ens_test = _evaluate_all(P, Xte, yte, config.eval_batch_size)
    result = {
        "mode": config.mode, "weight": config.weight, "divergence": config.divergence,
        "epochs": len(history), "seconds": time.perf_counter() - t0,
        "peers": [{"model": p.name, "index": k, "trained": p.trainable, "learns_from": p.learns_from,
                   "valid_auc": v["auc"], "valid_logloss": v["logloss"],
                   "test_auc": t["auc"], "test_logloss": t["logloss"],
                   "best_epoch": p.tracker.best_epoch if p.trainable else None,
                   "hparams": dict(getattr(p.model, "hparams", {})), "train_config": p.config.to_dict()}
                  for k, (p, v, t) in enumerate(zip(P, valid, test))],
        "ensemble": {"valid_auc": ens_valid["auc"], "valid_logloss": ens_valid["logloss"],
                     "test_auc": ens_test["auc"], "test_logloss": ens_test["logloss"]},
        "history": history, "fingerprint": data.fingerprint, "dataset": data.dataset,
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "train"},
        "env": env_info(device, config.seed),
    }
    if out is not None:
        for k, p in enumerate(P):
            if p.trainable:
                torch_save_atomic({"model_name": p.name, "hparams": dict(p.model.hparams),
                                   "field_sizes": list(data.field_sizes), "fingerprint": data.fingerprint,
                                   "train_config": p.config.to_dict(), "state_dict": p.model.state_dict(),
                                   "epoch": p.tracker.best_epoch, "metrics": result["peers"][k]},
                                  out / f"{k}_{p.name}" / "best.pt")
        write_json_atomic(out / "result.json", result)
    return result


# ---------------------------------------------------------------- per-epoch state, resume

# Run settings that may differ between a run and its resumption.
_RESUMABLE = {"epochs", "progress", "device", "eval_batch_size", "check_every"}


def _save_last(path: Path, P: list[_Peer], config: MutualConfig, data, generator, epoch: int,
               global_step: int, history: list) -> None:
    torch_save_atomic({
        "format": "ctrkit-mutual-last-1", "epoch": epoch, "global_step": global_step, "history": history,
        "fingerprint": data.fingerprint, "rng": rng_state(generator),
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "train"},
        "peers": [{"model_name": p.name, "hparams": dict(getattr(p.model, "hparams", {})),
                   "train_config": p.config.to_dict(), "state_dict": p.model.state_dict(),
                   "optimizer": p.optimizer.state_dict() if p.trainable else None,
                   "tracker": p.tracker.state_dict() if p.trainable else None} for p in P],
    }, path)


def _load_last(path: Path, P: list[_Peer], config: MutualConfig, data, generator) -> tuple[int, int, list]:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn file raises one of several types
        raise CtrkitError(f"{path}: unreadable (truncated or corrupt): {type(e).__name__}: {e}") from None
    if not isinstance(ck, dict) or ck.get("format") != "ctrkit-mutual-last-1":
        raise CtrkitError(f"{path}: not a mutual-training checkpoint")
    if ck["fingerprint"] != data.fingerprint:
        raise CtrkitError(f"{path}: was trained on feature map {ck['fingerprint']!r}, this dataset has {data.fingerprint!r}")
    now = {k: v for k, v in dataclasses.asdict(config).items() if k != "train"}
    changed = sorted(k for k in now if k not in _RESUMABLE and ck["config"].get(k) != now[k])
    peers_then = [(q["model_name"], q["hparams"]) for q in ck["peers"]]
    peers_now = [(p.name, dict(getattr(p.model, "hparams", {}))) for p in P]
    if peers_then != peers_now:
        changed.append(f"peers {[n for n, _ in peers_then]} -> {[n for n, _ in peers_now]}")
    if changed:
        raise CtrkitError(f"{path}: cannot resume with different settings ({', '.join(map(str, changed))}); "
                          f"use another --out or --force to start over")
    for p, q in zip(P, ck["peers"]):
        p.model.load_state_dict(q["state_dict"])
        if p.trainable:
            p.optimizer.load_state_dict(q["optimizer"])
            p.tracker.load_state_dict(q["tracker"])
            if p.tracker.stopped:
                p.freeze()
    set_rng_state(ck["rng"], generator)
    return ck["epoch"], ck["global_step"], list(ck["history"])


# ---------------------------------------------------------------- building the peers


def peer_labels(models: Sequence[str]) -> list[str]:
    """Unique labels within a run: DeepFM, DCN, DeepFM_2 (a repeated model gets its occurrence)."""
    seen: Counter = Counter()
    out = []
    for m in models:
        seen[m] += 1
        out.append(m if seen[m] == 1 else f"{m}_{seen[m]}")
    return out


def checkpoint_path(ckpt_dir: str | Path, label: str) -> Path:
    """`ckpt_dir/<label>/best.pt`: one `pretrain --out` folder per model (DeepFM_2 for a repeat)."""
    return Path(ckpt_dir) / label / "best.pt"


def check_run_args(peers: Sequence[str] | str, init: str, mode: str, weight: float, divergence: str) -> list[str]:
    """Validate a run's arguments before anything is built; return the canonical peer names.
    Shared by `run_mutual` and the distributed runner, so both refuse the same bad input."""
    if init not in INITS:
        raise CtrkitError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    if mode not in MODES:
        raise CtrkitError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    check_weight(weight)
    check_divergence(divergence)
    if isinstance(peers, str):
        peers = [p for p in peers.split(",") if p.strip()]
    names = [canonical_name(p.strip()) for p in peers]
    need = 1 if mode == "alone" else 2
    if len(names) < need:
        raise CtrkitError(f"--peers: mode {mode!r} needs at least {need} peers, got {len(names)} ({','.join(names)})")
    if mode == "ensemble" and init != "pretrained":
        raise CtrkitError("mode 'ensemble' averages pretrained peers: use --init pretrained with --ckpt-dir")
    return names


def run_mutual(data, peers: Sequence[str], init: str = "scratch", mode: str = "mutual",
               ckpt_dir: str | Path | None = None, preset: str = "quick", epochs: int | None = None,
               weight: float = 1.0, divergence: str = "mse", warmup_steps: int = 0, seed: int = 2021,
               device: str = "auto", batch_size: int | None = None, finetune_lr_scale: float = 0.1,
               finetune_epochs: int = 2, progress: bool = True, out_dir: str | Path | None = None,
               resume: bool = False, callback=None) -> dict:
    """Build (scratch) or load (pretrained) the named peers, check everything, then `mutual_fit`.

    scratch: peer = preset model, init seeded with `seed` (+k for the k-th repeat of a model, so two
    DeepFMs differ), trained with its preset's train config for `epochs` (default: the preset's).
    pretrained: peer = `ckpt_dir/<Model>/best.pt`, finetuned at `finetune_lr_scale` x the lr it
    was pretrained with, other settings as pretrained, for `epochs` (default `finetune_epochs`).
    kd: the teacher (first peer) always comes from its checkpoint; the students follow `init`.
    With `out_dir` and `resume`, an interrupted run continues from `out_dir/last.pt`; `callback` as
    in `mutual_fit`.
    Returns mutual_fit's result plus `init`, `seed`, `preset`, each peer's `label`, `seed`, and
    `pretrained_valid_auc`/`pretrained_test_auc` (None from scratch).
    """
    names = check_run_args(peers, init, mode, weight, divergence)
    labels = peer_labels(names)
    from_ckpt = [init == "pretrained" or (mode == "kd" and k == 0) for k in range(len(names))]
    if any(from_ckpt):
        if ckpt_dir is None:
            raise CtrkitError(f"init {init!r} / mode {mode!r} needs --ckpt-dir (one `pretrain --out` folder per model)")
        # every checkpoint checked (exists, readable, same feature map) before any training starts
        for label, use in zip(labels, from_ckpt):
            if use:
                path = checkpoint_path(ckpt_dir, label)
                if not path.is_file():
                    raise CtrkitError(f"missing checkpoint {path} for peer {label} "
                                      f"(run `ctrkit pretrain --model {label.split('_')[0]} --out {path.parent}`)")
                ck = load_checkpoint(path)
                if ck.get("fingerprint") != data.fingerprint:
                    raise CtrkitError(f"checkpoint {path} was pretrained on feature map {ck.get('fingerprint')!r}, "
                                      f"the dataset {data.path} has {data.fingerprint!r}: peers must be prepared "
                                      f"on the same feature map")
    dev = resolve_device(device)
    models, trains, pre_meta = [], [], []
    occurrence: Counter = Counter()
    for name, label, use in zip(names, labels, from_ckpt):
        occurrence[name] += 1
        peer_seed = seed + occurrence[name] - 1
        if use:
            model, meta = load_pretrained(checkpoint_path(ckpt_dir, label), dev, expect_fingerprint=data.fingerprint)
            tc = TrainConfig.from_dict(meta["train_config"])
            tc = tc.replace(lr=tc.lr * finetune_lr_scale)
            pre_meta.append(meta)
        else:
            p = presets.get(name, preset, data.dataset, data.protocol)
            seed_everything(peer_seed)
            model = build(name, data.field_sizes, **p.model)
            tc = TrainConfig.from_dict({**p.train, "seed": seed})
            pre_meta.append(None)
        models.append(model)
        trains.append(tc)
    if epochs is None:
        epochs = finetune_epochs if init == "pretrained" else max(t.epochs for t in trains)
    cfg = MutualConfig(mode=mode, weight=0.0 if mode == "alone" else weight, divergence=divergence,
                       warmup_steps=warmup_steps, epochs=epochs, batch_size=batch_size or trains[0].batch_size,
                       seed=seed, device=str(dev), progress=progress, train=trains)
    # the pretrained AUCs, measured here on this data (not trusted from the checkpoint)
    Xva, yva = data.tensors("valid", dev)
    Xte, yte = data.tensors("test", dev)
    pre_scores = [(_scores(yva, predict(m, Xva, cfg.eval_batch_size)), _scores(yte, predict(m, Xte, cfg.eval_batch_size)))
                  if meta is not None else (None, None) for m, meta in zip(models, pre_meta)]
    result = mutual_fit(models, data, cfg, out_dir=out_dir, resume=resume, callback=callback)
    occurrence.clear()
    for k, (r, label, meta, (pv, pt)) in enumerate(zip(result["peers"], labels, pre_meta, pre_scores)):
        occurrence[r["model"]] += 1
        r.update(label=label, seed=seed + occurrence[r["model"]] - 1 if meta is None else seed,
                 init="pretrained" if meta is not None else "scratch",
                 checkpoint=meta["path"] if meta is not None else None,
                 pretrained_valid_auc=pv["auc"] if pv else None, pretrained_test_auc=pt["auc"] if pt else None,
                 pretrained_test_logloss=pt["logloss"] if pt else None)
    result.update(init=init, seed=seed, preset=preset, protocol=data.protocol, labels=labels,
                  finetune_lr_scale=finetune_lr_scale if any(from_ckpt) else None)
    return result
