"""The one training loop. N peers train on the SAME batches; each step peer n descends

    L_n = BCE(y, p_n) + w/|T_n| * sum_{i in T_n} D(p_i, p_n)        (p_i detached)

with its own optimizer, plateau LR schedule, early stopping and best weights (`ctrkit.training.protocol`).
T_n is whom peer n learns from: everybody else (mutual), nobody (alone, and plain pretraining:
`fit` is the one-peer case), a fixed teacher (kd). Every epoch evaluates every peer and the
peers' average (the ensemble).

Where the peers live is the `exchange`'s business, not the loop's: `LocalExchange` holds them all
in this process; `ctrkit.training.distributed.DistExchange` one peer per rank (group of data-parallel
ranks), gathering the batch's probabilities with all_gather. The loop is the same.

Speed: a whole split lives in one tensor on the training device; a batch is an `index_select` of
a per-epoch permutation drawn from a seeded torch.Generator (no DataLoader, no per-sample Python);
losses are accumulated on the device and read only every `check_every` steps.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ctrkit.training import checkpoint
from ctrkit.training.checkpoint import load_checkpoint, load_pretrained, model_identity
from ctrkit.training.losses import check_divergence, check_weight, peer_loss, warmup_weight
from ctrkit.training.protocol import (AMP_CHOICES, NonFiniteCheck, NonFiniteLossError, TrainConfig, Tracker, amp_context,
                             as_train_config, count_parameters, dropout_seed, epoch_batches, evaluate,
                             make_optimizer, monitor_score, predict, resolve_amp, rng_state, scores, set_rng_state,
                             uses_dropout)
from ctrkit.kernels import apply_threads, env_info, for_device
from ctrkit.core.utils import (CtrkitError, resolve_device, seed_everything,
                          tune_cpu_allocator)

__all__ = ["MODES", "MutualConfig", "Peer", "LocalExchange", "RunStopped", "train_peers", "fit",
           # the protocol's pieces, importable from here as before
           "TrainConfig", "make_optimizer", "Tracker", "monitor_score", "epoch_batches", "NonFiniteCheck",
           "NonFiniteLossError", "resolve_amp", "amp_context", "predict", "evaluate", "scores", "rng_state",
           "set_rng_state", "count_parameters", "dropout_seed", "uses_dropout", "load_checkpoint",
           "load_pretrained", "AMP_CHOICES"]

MODES = ("mutual", "alone", "kd", "ensemble")


class RunStopped(CtrkitError):
    """The user asked the run to stop (`stop` was set); nothing of it was recorded."""


@dataclasses.dataclass(kw_only=True)
class MutualConfig:
    """Run-level settings of the loop; per-peer optimizer/schedule settings are in `train`.

    `train`: one TrainConfig (or dict) per peer (lr, regularizers, monitor, patience, lr_decay,
    clip_grad_norm); its batch_size/epochs/seed/device/amp are overridden by the run's, since one
    batch feeds every peer. A single TrainConfig/dict applies to every peer. `threads`: intra-op
    CPU threads, a number or "auto" (`ctrkit.core.utils.resolve_threads`: the cores other processes
    leave free); None leaves torch's setting.
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
    threads: Any = "auto"
    train: Any = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise CtrkitError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        check_weight(self.weight)
        check_divergence(self.divergence)
        for name in ("warmup_steps", "epochs", "batch_size", "seed", "eval_batch_size", "check_every"):
            v = getattr(self, name)
            lo = 0 if name in ("warmup_steps", "seed", "epochs") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise CtrkitError(f"mutual config {name}: expected an int >= {lo}, got {v!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "MutualConfig":
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise CtrkitError(f"unknown mutual config key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**d)

    def run_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "train"}

    def peer_train_config(self, base: TrainConfig | dict | None) -> TrainConfig:
        return as_train_config(base).replace(
            epochs=max(self.epochs, 1), batch_size=self.batch_size, seed=self.seed, device=self.device, amp=self.amp,
            eval_batch_size=self.eval_batch_size, progress=self.progress, check_every=self.check_every)


class Peer:
    """One peer's training state: its model, optimizer, plateau schedule and early stopping.

    `index` is the peer's place in the run (its dropout stream, its row of the gathered
    probabilities), `learns_from` the indices of its teachers; `start` the validation metrics of
    a pretrained model, which then counts as epoch 0 (finetuning keeps it unless beaten)."""

    def __init__(self, model: nn.Module, config: TrainConfig, *, index: int, learns_from: Sequence[int],
                 trainable: bool, device, replica: int = 0, start: dict | None = None):
        self.model, self.config, self.index, self.replica = model.to(device), config, index, replica
        for_device(self.model, device)  # CPU: the layers' fast kernels (ctrkit.kernels.cpu), else the reference maths
        self.learns_from, self.trainable, self.start = list(learns_from), trainable, start
        self.name, self.hparams = model_identity(model)
        self.train_forward: nn.Module = self.model  # DDP wraps it when the peer has replicas
        self.optimizer = make_optimizer(model, config) if trainable else None
        self.tracker = Tracker(self.optimizer, config) if trainable else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.teachers = torch.tensor(self.learns_from, dtype=torch.long, device=device)
        self.drops = uses_dropout(model)

    @property
    def training(self) -> bool:
        return self.trainable and not self.tracker.stopped

    def logits(self, xb: torch.Tensor, step: int) -> torch.Tensor:
        if self.training:
            if self.drops:  # this peer's own mask stream (see protocol.dropout_seed)
                torch.manual_seed(dropout_seed(self.config.seed, step, self.index, self.replica))
            return self.train_forward(xb).float()
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

    def state(self) -> dict:
        return {"state_dict": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.trainable else None,
                "tracker": self.tracker.state_dict() if self.trainable else None}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["state_dict"])
        if self.trainable:
            self.optimizer.load_state_dict(state["optimizer"])
            self.tracker.load_state_dict(state["tracker"])
            if self.tracker.stopped:
                self.freeze()


class LocalExchange:
    """Every peer in this process: the batch is whole, gathering is stacking."""

    replicas, replica, is_main, label, resume_label = 1, 0, True, "", "the run"
    where = ""  # what the loop is doing (a transport names it in its errors)

    def __init__(self, n_peers: int, device: torch.device):
        self.n_peers, self.device = n_peers, device

    def shard(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        return idx, 1.0

    def gather(self, local: torch.Tensor, *, training: bool = True) -> torch.Tensor:
        return local  # [P, b] already

    def gather_objects(self, items: list) -> list:
        return list(items)

    def broadcast(self, obj: Any) -> Any:
        return obj

    def agree(self, fn: Callable[[], Any]) -> Any:
        return fn()

    def common_epochs(self, epochs: set[int]) -> set[int]:
        return epochs

    def local_indices(self) -> list[int]:
        return list(range(self.n_peers))

    def wrap(self, peer: Peer) -> None:
        """Nothing to wrap: the peer has no replicas."""

    def step(self, peer: Peer, loss: torch.Tensor) -> None:
        peer.step(loss)

    def last_paths(self, out: Path, peers: Sequence[Peer]) -> list[Path]:
        return [out / "last.pt"]

    def layout(self) -> dict:
        return {}

    def result_extra(self, train_seconds: float, peers: Sequence[Peer], batch_size: int) -> dict:
        return {}


@dataclasses.dataclass
class _State:
    """Where a run is: what last.pt holds besides the peers."""

    epoch: int = 0
    global_step: int = 0
    history: list = dataclasses.field(default_factory=list)
    training: list = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    train_samples: int = 0


def _log(config: MutualConfig, exchange, msg: str) -> None:
    if config.progress and exchange.is_main:
        tqdm.write(msg, file=sys.stderr)


def _check_stop(stop) -> bool:
    if stop is None:
        return False
    return bool(stop.is_set() if hasattr(stop, "is_set") else stop())


def _train_epoch(peers: list[Peer], config: MutualConfig, exchange, st: _State, epoch: int, Xtr, ytr, generator,
                 amp_dtype, gathers: bool, stop) -> torch.Tensor:
    """One epoch of the mutual step; returns each local peer's mean training loss."""
    device, rows = Xtr.device, Xtr.shape[0]
    steps = math.ceil(rows / config.batch_size)
    loss_sum = torch.zeros(len(peers), dtype=torch.float64, device=device)
    checks = [NonFiniteCheck(device) for _ in peers]
    what = [f"loss of peer {p.name}{exchange.label}" if exchange.n_peers > 1 else "loss" for p in peers]
    bar = tqdm(total=steps, desc=f"{peers[0].name if exchange.n_peers == 1 else config.mode} epoch {epoch}/"
               f"{config.epochs}", file=sys.stderr, disable=not (config.progress and exchange.is_main), leave=False,
               dynamic_ncols=True)
    for step, idx in enumerate(epoch_batches(rows, config.batch_size, generator, device), 1):
        # ---- the mutual step: one batch, every peer; L_n = BCE + w/|T_n| sum_{i in T_n} D(p_i, p_n)
        exchange.where = f"epoch {epoch} step {step}"
        part, scale = exchange.shard(idx)
        xb, yb = Xtr.index_select(0, part), ytr.index_select(0, part)
        with amp_context(device, amp_dtype):
            logits = [p.logits(xb, st.global_step) for p in peers]
        w = warmup_weight(config.weight, st.global_step, config.warmup_steps)
        # the targets, detached: [P, b]; skipped (by every process alike) when nobody learns from anybody
        probs = exchange.gather(torch.stack([torch.sigmoid(z.detach()) for z in logits])) if gathers and w > 0 else None
        for k, p in enumerate(peers):
            if p.training:
                targets = probs.index_select(0, p.teachers) if probs is not None else logits[k].new_empty(0, len(part))
                # an empty shard (last batch < replicas rows) still joins DDP's all-reduce, with zero grads
                loss = peer_loss(logits[k], yb, targets, w, config.divergence) if len(part) else logits[k].sum()
                exchange.step(p, loss * scale if scale != 1 else loss)
                loss_sum[k] += loss.detach()
                checks[k].update(loss, step)
        st.global_step += 1
        # ---- end of the mutual step; host syncs only every check_every steps
        if _check_stop(stop):
            raise RunStopped(f"stopped by request in epoch {epoch} after step {step}; nothing was recorded")
        if step % config.check_every == 0 or step == steps:
            for c, w_ in zip(checks, what):
                c.check(epoch, w_)
            bar.set_postfix(loss=" ".join(f"{v:.4f}" for v in (loss_sum / step).tolist()), refresh=False)
            bar.update(step - bar.n)
    bar.close()
    return loss_sum / steps


def _end_epoch(peers: list[Peer], config: MutualConfig, exchange, st: _State, epoch: int, losses, Xva, yva,
               t_epoch: float) -> tuple[dict, list[bool]]:
    """Validate every peer and the ensemble, step the trackers, append the history row; also
    which local peers improved (their best.pt is due)."""
    exchange.where = f"evaluation after epoch {epoch}"
    probs = exchange.gather(torch.stack([predict(p.model, Xva, config.eval_batch_size) for p in peers]),
                            training=False)
    valid = [scores(yva, q) for q in probs]
    ens = scores(yva, probs.mean(0))
    mine, improved = [], []
    for p, loss in zip(peers, losses.tolist()):
        v = valid[p.index]
        entry = {"model": p.name, "valid_auc": v["auc"], "valid_logloss": v["logloss"], "train_loss": loss,
                 "trained": p.training}
        improved.append(False)
        if p.training:
            entry["lr"] = p.tracker.lr
            if p.tracker.on_epoch_end(epoch, v, p.model):
                p.freeze()
                _log(config, exchange, f"{p.name}: early stop after epoch {epoch} (best epoch {p.tracker.best_epoch})")
            entry["improved"] = improved[-1] = p.tracker.improved
        mine.append((entry, p.training))
    gathered = exchange.gather_objects(mine)
    st.training = [t for _, t in gathered]
    row = {"epoch": epoch, "seconds": time.perf_counter() - t_epoch, "ensemble_valid_auc": ens["auc"],
           "ensemble_valid_logloss": ens["logloss"], "peers": [e for e, _ in gathered]}
    st.history.append(row)
    _log(config, exchange, f"epoch {epoch}: valid " + ", ".join(
        f"{e['model']} AUC {e['valid_auc']:.5f} logloss {e['valid_logloss']:.5f}{' *' if e.get('improved') else ''}"
        for e in row["peers"]) + (f" | ensemble AUC {ens['auc']:.5f}" if exchange.n_peers > 1 else ""))
    return row, improved


def _start(peers: list[Peer], config: MutualConfig, exchange, data, out: Path | None, resume: bool,
           best_paths: Sequence[Path] | None, generator) -> tuple[_State, dict]:
    """A fresh state (clearing an older run's files in `out`) or the one a killed run left."""
    sig = checkpoint.signature(config.run_dict(), [(p.name, p.hparams, p.config.to_dict()) for p in peers],
                               data.fingerprint, exchange.layout())
    st = _State(training=exchange.gather_objects([p.training for p in peers]))
    if out is None:
        return st, sig
    paths = exchange.last_paths(out, peers)
    for folder in {path.parent for path in [*paths, *(best_paths or [])]}:
        try:  # before any training: an --out through a file or on a read-only disk fails now, not after an epoch
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CtrkitError(f"cannot create the output folder {folder}: {e.strerror or e}") from None
        checkpoint.clean_stale_temp(folder, ["last.pt", "best.pt", "result.json", *[path.name for path in paths]])
    exchange.where = "resume agreement"
    found = exchange.agree(lambda: checkpoint.read_resume(paths, sig)) if resume else {}
    common = exchange.common_epochs(set(found))
    if not common:
        if resume and exchange.is_main:
            _log(config, exchange, f"nothing to resume in {out} (no last checkpoint), starting from epoch 1")
        # a fresh run must not leave an older run's files looking like its own if it dies early
        for stale in [*paths, *(best_paths or []), *([out / "result.json"] if exchange.is_main else [])]:
            stale.unlink(missing_ok=True)
        return st, sig
    ck = found[max(common)]
    for p, state in zip(peers, ck["peers"]):
        p.load_state(state)
    set_rng_state(ck["rng"], generator)
    st = _State(epoch=ck["epoch"], global_step=ck["global_step"], history=list(ck["history"]),
                training=list(ck["training"]), train_seconds=ck["train_seconds"], train_samples=ck["train_samples"])
    if exchange.is_main:  # always said, also without progress: a resumed run must not pass for a fresh one
        tqdm.write(f"resuming {exchange.resume_label} after epoch {st.epoch} from {out}", file=sys.stderr)
    return st, sig


def _save_last(peers: list[Peer], exchange, out: Path, st: _State, sig: dict, generator) -> None:
    exchange.where = f"checkpoint after epoch {st.epoch}"
    paths = exchange.last_paths(out, peers)
    if len(paths) > 1 and paths[0].exists():
        # keep the previous epoch: a process killed now may leave the others one epoch ahead
        os.replace(paths[0], paths[1])
    checkpoint.save({"format": checkpoint.LAST_FORMAT, "signature": sig, "epoch": st.epoch,
                     "global_step": st.global_step, "history": st.history, "training": st.training,
                     "rng": rng_state(generator), "train_seconds": st.train_seconds,
                     "train_samples": st.train_samples, "peers": [p.state() for p in peers]}, paths[0])


def train_peers(peers: list[Peer], data, config: MutualConfig, *, exchange=None, out_dir: str | Path | None = None,
                best_paths: Sequence[Path] | None = None, resume: bool = False, callback=None,
                stop=None) -> dict:
    """Train `peers` (this process's; all of them with the default LocalExchange) on `data` (CTRData).

    With `out_dir`: a last-checkpoint after every epoch (weights, optimizers, schedules, early
    stopping, RNGs), each trained peer's best.pt at `best_paths[k]` on every improvement and at the
    end, and result.json. `resume=True` continues from the last checkpoint to the same result as an
    uninterrupted run (`epochs` may be raised). `callback(row)` gets every epoch's history row;
    `stop` (a threading.Event or a callable) ends the run after the current step with RunStopped."""
    t0 = time.perf_counter()
    exchange = exchange or LocalExchange(len(peers), resolve_device(config.device))
    device = exchange.device
    amp_dtype = resolve_amp(device, config.amp)
    # results do not depend on the count (tested), so 'auto' may follow the machine's load
    threads = apply_threads(config.threads) if config.threads is not None else torch.get_num_threads()
    generator = seed_everything(config.seed)
    tune_cpu_allocator(device)
    Xtr, ytr = data.tensors("train", device)
    Xva, yva = data.tensors("valid", device)
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise CtrkitError("resume=True needs out_dir (where the last checkpoint is)")
    st, sig = _start(peers, config, exchange, data, out, resume, best_paths, generator)
    if st.epoch == 0:
        for p in peers:
            if p.trainable and p.start is not None:
                p.tracker.start_from(p.start, p.model)
    for p in peers:
        p.model.train(p.training)
    # whether any peer learns from another: the same answer in every process, so all gather alike
    gathers = any(exchange.gather_objects([bool(p.learns_from) for p in peers]))
    for epoch in range(st.epoch + 1, config.epochs + 1):
        if not any(st.training):
            break
        t_epoch = time.perf_counter()
        losses = _train_epoch(peers, config, exchange, st, epoch, Xtr, ytr, generator, amp_dtype, gathers, stop)
        st.train_seconds += time.perf_counter() - t_epoch
        st.train_samples += Xtr.shape[0]
        row, improved = _end_epoch(peers, config, exchange, st, epoch, losses, Xva, yva, t_epoch)
        st.epoch = epoch
        if out is not None:
            for p, path, better in zip(peers, best_paths or [], improved):
                if better and exchange.replica == 0:
                    checkpoint.write_best(path, p.model, p.tracker.best_state, data=data,
                                          train_config=p.config.to_dict(), epoch=epoch,
                                          metrics={"valid_auc": p.tracker.best_metrics["auc"],
                                                   "valid_logloss": p.tracker.best_metrics["logloss"]})
            _save_last(peers, exchange, out, st, sig, generator)
        if callback is not None:
            callback(row)
    return _finish(peers, config, exchange, data, st, out, best_paths, amp_dtype, threads, t0)


def _finish(peers: list[Peer], config: MutualConfig, exchange, data, st: _State, out: Path | None,
            best_paths, amp_dtype, threads: int, t0: float) -> dict:
    """Best weights back, one validation and test pass, the result (and its files)."""
    exchange.where = "final evaluation"
    for p in peers:
        if p.trainable and p.tracker.best_state is not None:
            p.tracker.restore_best(p.model)
        p.model.eval()
    valid, ens_v = _evaluate_split(peers, config, exchange, data, "valid")
    test, ens_t = _evaluate_split(peers, config, exchange, data, "test")
    mine = [{"model": p.name, "index": p.index, "trained": p.trainable, "learns_from": p.learns_from,
             "best_epoch": p.tracker.best_epoch if p.trainable else None,
             "stopped_early": bool(p.trainable and p.tracker.stopped),
             "hparams": p.hparams, "train_config": p.config.to_dict()} for p in peers]
    extra = exchange.result_extra(st.train_seconds, peers, config.batch_size)
    result = {
        "mode": config.mode, "weight": config.weight, "divergence": config.divergence,
        "epochs": len(st.history), "seconds": time.perf_counter() - t0,
        "peers": [{**m, "valid_auc": valid[j]["auc"], "valid_logloss": valid[j]["logloss"],
                   "test_auc": test[j]["auc"], "test_logloss": test[j]["logloss"]}
                  for j, m in enumerate(exchange.gather_objects(mine))],
        "ensemble": {"valid_auc": ens_v["auc"], "valid_logloss": ens_v["logloss"],
                     "test_auc": ens_t["auc"], "test_logloss": ens_t["logloss"]},
        "history": st.history, "fingerprint": data.fingerprint, "dataset": data.dataset,
        "config": config.run_dict(), "amp": "bf16" if amp_dtype is torch.bfloat16 else "off",
        "train_seconds": st.train_seconds,
        "samples_per_s": st.train_samples / st.train_seconds if st.train_seconds > 0 else None,
        "env": {**env_info(exchange.device, config.seed), "torch_threads": threads}, **extra,
    }
    if out is not None:
        exchange.where = "writing the results"
        for p, path in zip(peers, best_paths or []):
            if p.trainable and p.tracker.best_state is not None and exchange.replica == 0:
                checkpoint.write_best(path, p.model, p.model.state_dict(), data=data, train_config=p.config.to_dict(),
                                      epoch=p.tracker.best_epoch, metrics=result["peers"][p.index])
        if exchange.is_main:
            checkpoint.save_json(out / "result.json", result)
    return result


def _evaluate_split(peers: list[Peer], config: MutualConfig, exchange, data, split: str) -> tuple[list[dict], dict]:
    """Every peer's scores on a split and the ensemble's (mean of the peers' probabilities)."""
    X, y = data.tensors(split, exchange.device)
    probs = exchange.gather(torch.stack([predict(p.model, X, config.eval_batch_size) for p in peers]), training=False)
    return [scores(y, q) for q in probs], scores(y, probs.mean(0))


# ---------------------------------------------------------------- fit: the one-peer case


def fit(model: nn.Module, data, config: TrainConfig | dict | None = None, out_dir: str | Path | None = None,
        resume: bool = False, *, start: dict | None = None, stop=None) -> dict:
    """Train one model on `data` (CTRData) per `config`; return the result dict (also `out_dir/result.json`).

    Seed before building the model (`seed_everything(config.seed)`) for a reproducible init; `fit`
    reseeds for the batch order and dropout. With `out_dir`: `last.pt` every epoch, `best.pt` on
    every improvement, `result.json`. `resume=True` continues from `out_dir/last.pt` (if present)
    to the same result as an uninterrupted run; it may raise `epochs` to train further.
    """
    config = as_train_config(config)
    out = Path(out_dir) if out_dir is not None else None
    run = MutualConfig(mode="alone", weight=0.0, epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                       device=config.device, amp=config.amp, eval_batch_size=config.eval_batch_size,
                       check_every=config.check_every, progress=config.progress, threads=config.threads)
    device = resolve_device(config.device)
    peer = Peer(model, run.peer_train_config(config), index=0, learns_from=[], trainable=True, device=device,
                start=start)
    r = train_peers([peer], data, run, out_dir=out, best_paths=[out / "best.pt"] if out else None, resume=resume,
                    stop=stop)
    if peer.tracker.best_state is None:
        raise CtrkitError(f"{peer.name}: no epoch was trained (epochs={config.epochs})")
    p = r["peers"][0]
    history = [{"epoch": row["epoch"], "train_loss": e["train_loss"], "valid_auc": e["valid_auc"],
                "valid_logloss": e["valid_logloss"], "lr": e.get("lr"), "improved": e.get("improved"),
                "seconds": row["seconds"]} for row in r["history"] for e in row["peers"]]
    result = {"model": peer.name, "dataset": data.dataset, "params": count_parameters(model),
              **{k: p[k] for k in ("valid_auc", "valid_logloss", "test_auc", "test_logloss", "best_epoch",
                                   "stopped_early")},
              "epochs": len(history), "epoch_cap_hit": not p["stopped_early"] and len(history) >= config.epochs,
              "seconds": r["seconds"], "samples_per_s": r["samples_per_s"],
              "checkpoint": str(out / "best.pt") if out is not None else None, "amp": r["amp"],
              "hparams": peer.hparams, "train_config": config.to_dict(), "fingerprint": data.fingerprint,
              "history": history, "env": r["env"]}
    if out is not None:
        checkpoint.save_json(out / "result.json", result)
    if config.progress:
        tqdm.write(f"{peer.name}: test AUC {p['test_auc']:.6f} logloss {p['test_logloss']:.6f} "
                   f"({result['samples_per_s'] or 0:,.0f} samples/s, amp {result['amp']})", file=sys.stderr)
    return result
