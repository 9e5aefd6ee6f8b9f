"""The one training loop. N peers train on the SAME batches; each step peer n descends

    L_n = BCE(y, p_n) + w/|T_n| * sum_{i in T_n} D(p_i, p_n)        (p_i detached)

with its own optimizer, plateau LR schedule, early stopping and best weights (`ctrkit.training.optim`).
T_n is whom peer n learns from: everybody else (mutual), nobody (alone, and plain pretraining:
`fit` is the one-peer case), a fixed teacher (kd). Every epoch evaluates every peer and the
peers' average (the ensemble).

Where the peers live is the `exchange`'s business, not the loop's (`ctrkit.training.exchange.Exchange`):
`LocalExchange` holds them all in this process; `ctrkit.training.distributed.DistExchange` one peer per rank (group of data-parallel
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
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ctrkit.core.utils import CtrkitError, probe_writable, seed_everything, tune_cpu_allocator
from ctrkit.kernels import apply_threads, env_info, for_device
from ctrkit.training import checkpoint, compiled, graph, metrics, replicas
from ctrkit.training.checkpoint import model_identity
from ctrkit.training.config import MODES, RunConfig, TrainConfig
from ctrkit.training.evaluation import (NonFiniteCheck, NonFiniteLossError, looks_like_probabilities, predict,
                                        scores)
from ctrkit.training.exchange import Exchange, LocalExchange
from ctrkit.training.losses import peer_loss, warmup_weight
from ctrkit.training.optim import Tracker, count_parameters, make_optimizer
from ctrkit.training.precision import amp_context, resolve_amp
from ctrkit.training.rng import dropout_seed, dropout_stream, epoch_batches, rng_state, set_rng_state, uses_dropout

__all__ = ["MODES", "RunConfig", "TrainConfig", "Peer", "LocalExchange", "RunStopped", "train_peers", "train_replicas", "fit",
           "fit_replicas"]


class RunStopped(CtrkitError):
    """The user asked the run to stop (`stop` was set); nothing of it was recorded."""


class Peer:
    """One peer's training state: its model, optimizer, plateau schedule and early stopping.

    `index` is the peer's place in the run (its dropout stream, its row of the gathered
    probabilities), `learns_from` the indices of its teachers; `start` the validation metrics of
    a pretrained model, which then counts as epoch 0 (finetuning keeps it unless beaten).
    `best_path`: where its best.pt goes when the run writes files (set by the caller)."""

    def __init__(self, model: nn.Module, config: TrainConfig, *, index: int, learns_from: Sequence[int],
                 trainable: bool, device, replica: int = 0, start: dict | None = None):
        _check_built(model, index)  # here, where every trainer (fit, mutual_fit, replicas) first touches it
        self.model, self.config, self.index, self.replica = model.to(device), config, index, replica
        for_device(self.model, device)  # CPU: the layers' fast kernels (ctrkit.kernels.cpu), else the reference maths
        self.learns_from, self.trainable, self.start = list(learns_from), trainable, start
        self.name, self.hparams = model_identity(model)
        who = f"peer {index} ({self.name})"
        self.train_forward: nn.Module = self.model  # DDP wraps it when the peer has replicas
        self.optimizer = make_optimizer(model, config, who) if trainable else None
        self.tracker = Tracker(self.optimizer, config, who=who) if trainable else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.teachers = torch.tensor(self.learns_from, dtype=torch.long, device=device)
        self.drops = uses_dropout(model)
        # by name, not position (rng.dropout_stream); the first model of its name unless `make_peers` says
        self.dropout_stream = dropout_stream(self.name)
        self.best_path: Path | None = None
        # (validation probabilities, the best_state they were predicted with): see `kept_valid_probs`
        self.kept_valid: tuple[torch.Tensor, dict] | None = None

    @property
    def training(self) -> bool:
        return self.trainable and not self.tracker.stopped

    def logits(self, xb: torch.Tensor, step: int | None = None, seed: int | None = None) -> torch.Tensor:
        """The peer's logits of a batch at global step `step` of a run seeded with `seed` (None: no
        reseeding, the caller owns the random stream, as a captured graph does)."""
        if self.training:
            if self.drops and step is not None:  # this peer's own mask stream (see rng.dropout_seed)
                torch.manual_seed(dropout_seed(seed, step, self.dropout_stream, self.replica))
            return self.train_forward(xb).float()
        with torch.no_grad():  # a fixed teacher or a peer that stopped early still teaches
            return self.model(xb).float()

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.params, self.config.clip_grad_norm)
        self.optimizer.step()

    def keep_valid_probs(self, probs: torch.Tensor) -> None:
        """After an epoch that improved it: its validation probabilities at its new best weights."""
        self.kept_valid = (probs, self.tracker.best_state)

    def kept_valid_probs(self) -> torch.Tensor | None:
        """Its kept validation probabilities while its weights are still the best ones they were
        predicted with (back after `freeze` or the final restore), else None: a stopped peer's
        epochs and the final evaluation then need not predict the same weights again. Checked
        tensor by tensor, not assumed (peers that share a table move each other's weights; they
        keep nothing: `_end_epoch`)."""
        if self.kept_valid is None or self.tracker is None or self.kept_valid[1] is not self.tracker.best_state:
            return None
        probs, best = self.kept_valid
        state = self.model.state_dict()
        same = state.keys() == best.keys() and all(torch.equal(v.detach().cpu(), best[k]) for k, v in state.items())
        return probs if same else None

    def freeze(self) -> None:
        """Early-stopped: back to its best weights, eval mode, no more updates."""
        self.tracker.restore_best(self.model)
        self.model.eval()

    def state(self) -> dict:
        return {"state_dict": self.model.state_dict(),
                "optimizer": graph.portable_optimizer_state(self.optimizer.state_dict()) if self.trainable else None,
                "tracker": self.tracker.state_dict() if self.trainable else None}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["state_dict"])
        if self.trainable:
            self.optimizer.load_state_dict(state["optimizer"])
            self.tracker.load_state_dict(state["tracker"])
            if self.tracker.stopped:
                self.freeze()


def _check_built(model, index: int) -> None:
    """A built model (an nn.Module instance), not its class or anything else: else torch's
    `'torch.device' object has no attribute '_apply'` from `model.to(device)`."""
    if isinstance(model, nn.Module):
        return
    what = "expected a built model (an nn.Module instance)"
    if isinstance(model, type):
        raise CtrkitError(f"peer {index}: {what}, got the class {model.__name__}: build it first "
                          f"(ctrkit.models.build or {model.__name__}(...))")
    raise CtrkitError(f"peer {index}: {what}, got {type(model).__name__} {str(model)[:40]!r}: build it first "
                      f"(ctrkit.models.build(name, data.field_sizes, ...))")


@dataclasses.dataclass
class _State:
    """Where a run is: what last.pt holds besides the peers."""

    epoch: int = 0
    global_step: int = 0
    history: list = dataclasses.field(default_factory=list)
    training: list = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    train_samples: int = 0


@dataclasses.dataclass(kw_only=True)
class _Run:
    """One call of `train_peers`: what every step of it needs, in one place."""

    peers: list[Peer]
    config: RunConfig
    exchange: Exchange
    data: Any
    out: Path | None
    generator: torch.Generator
    amp_dtype: torch.dtype | None
    stop: Any = None
    callback: Any = None
    gathers: bool = False
    shares: bool = False  # whether peers share weights (`share_embedding`): see `_end_epoch`
    # CUDA only: the step's model FLOPs per sample and the chip's matrix rate (progress and env's mfu)
    flops: float | None = None
    peak: float | None = None
    graph: str | None = None  # CUDA only: on, off or fallback (env's `graph`)
    probs_checked: bool = False  # whether the first validation was checked for probability forwards
    st: _State = dataclasses.field(default_factory=_State)
    sig: dict = dataclasses.field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.exchange.device

    def log(self, msg: str) -> None:
        if self.config.progress and self.exchange.is_main:
            tqdm.write(msg, file=sys.stderr)

    def stop_requested(self) -> bool:
        if self.stop is None:
            return False
        return bool(self.stop.is_set() if hasattr(self.stop, "is_set") else self.stop())


def _forward(runs: list[_Run], idx: tuple, Xtr: torch.Tensor, ytr: torch.Tensor, stacks: list | None):
    """Every run's every peer's logits of its batch (`idx[k]`: run k's rows): (logits[run][peer],
    labels[run], the loss scale of this process's shard)."""
    device, exchange = Xtr.device, runs[0].exchange
    if stacks is None:
        run = runs[0]
        part, scale = exchange.shard(idx[0])
        xb, yb = Xtr.index_select(0, part), ytr.index_select(0, part)
        with amp_context(device, run.amp_dtype):
            return [[p.logits(xb, run.st.global_step, run.config.seed) for p in run.peers]], [yb], scale
    # replicas: run k's batch is row k of [K, b, F]; each peer position is one batched forward
    part = torch.cat(idx)
    xb = Xtr.index_select(0, part).view(len(runs), -1, Xtr.shape[1])
    with amp_context(device, runs[0].amp_dtype):
        out = [s.logits([r.peers[n] for r in runs], xb, [r.st.global_step for r in runs],
                        [r.config.seed for r in runs]) for n, s in enumerate(stacks)]
    return [[z[k] for z in out] for k in range(len(runs))], ytr.index_select(0, part).view(len(runs), -1), 1.0


def _eager_step(runs: list[_Run], idx: tuple, data: tuple, stacks: list | None, acc: tuple, pos: tuple) -> None:
    """One eager step of each run (`data` = (Xtr, ytr); `acc` = each run's loss sums and non-finite
    checks, updated; `pos` = (epoch, step)): one batch per run, every peer, each trained peer's
    L_n = BCE + w/|T_n| sum_{i in T_n} D(p_i, p_n) and update."""
    (Xtr, ytr), (loss_sums, checks), (epoch, step) = data, acc, pos
    exchange = runs[0].exchange
    where = f"epoch {epoch} step {step}"
    logits, ybs, scale = _forward(runs, idx, Xtr, ytr, stacks)
    pending = []
    for r, run in enumerate(runs):
        w = warmup_weight(run.config.weight, run.st.global_step, run.config.warmup_steps)
        # the targets, detached: [P, b]; skipped (by every process alike) when nobody learns from anybody
        probs = (exchange.gather(torch.stack([torch.sigmoid(z.detach()) for z in logits[r]]), where=where)
                 if run.gathers and w > 0 else None)
        b = len(ybs[r])
        for k, p in enumerate(run.peers):
            if p.training:
                targets = probs.index_select(0, p.teachers) if probs is not None else logits[r][k].new_empty(0, b)
                # an empty shard (last batch < replicas rows) still joins DDP's all-reduce, with zero grads
                loss = peer_loss(logits[r][k], ybs[r], targets, w, run.config.divergence, run.config.mode) if b else logits[r][k].sum()
                if stacks is None:
                    exchange.step(p, loss * scale if scale != 1 else loss, where=where)
                else:
                    pending.append((p, loss))
                loss_sums[r][k] += loss.detach()
                checks[r][k].update(loss, step)
        run.st.global_step += 1
    if pending:  # replicas: one backward, then each replica's own clip and optimizer step
        replicas.step([p for p, _ in pending], [loss for _, loss in pending])


def _train_epoch(runs: list[_Run], epoch: int, Xtr: torch.Tensor, ytr: torch.Tensor,
                 stacks: list | None, graphed: graph.GraphStep | None = None) -> list[torch.Tensor]:
    """One epoch of the mutual step for each of `runs` (one run, or replicas: `stacks` holds their
    batched forward per peer position); returns each run's per-local-peer mean training loss.
    `graphed`: the one run's steps replayed as a CUDA graph where it can (`ctrkit.training.graph`)."""
    config, exchange = runs[0].config, runs[0].exchange
    device, rows = Xtr.device, Xtr.shape[0]
    steps = math.ceil(rows / config.batch_size)
    loss_sums = [torch.zeros(len(r.peers), dtype=torch.float64, device=device) for r in runs]
    checks = [[NonFiniteCheck(device) for _ in r.peers] for r in runs]
    what = [f"loss of peer {p.name}{exchange.label}" if exchange.n_peers > 1 else "loss" for p in runs[0].peers]
    bar = tqdm(total=steps, desc=f"{runs[0].peers[0].name if exchange.n_peers == 1 else config.mode} epoch {epoch}/"
               f"{config.epochs}{f' x{len(runs)}' if stacks else ''}", file=sys.stderr,
               disable=not (config.progress and exchange.is_main), leave=False, dynamic_ncols=True)
    orders = [epoch_batches(rows, config.batch_size, r.generator, device) for r in runs]
    t0 = time.perf_counter()
    for step, idx in enumerate(zip(*orders), 1):
        if graphed is not None and graphed.try_step(idx[0], step):
            runs[0].st.global_step += 1
        else:
            _eager_step(runs, idx, (Xtr, ytr), stacks, (loss_sums, checks), (epoch, step))
        if runs[0].stop_requested():
            raise RunStopped(f"stopped by request in epoch {epoch} after step {step}; nothing was recorded")
        if step % config.check_every == 0 or step == steps:  # host syncs only every check_every steps
            if graphed is not None:
                graphed.drain(loss_sums[0], checks[0])
            for run_checks in checks:
                for c, w_ in zip(run_checks, what):
                    c.check(epoch, w_)
            bar.set_postfix(loss=" ".join(f"{v:.4f}" for v in (loss_sums[0] / step).tolist()),
                            **_speed(runs[0], min(rows, step * config.batch_size), time.perf_counter() - t0),
                            refresh=False)
            bar.update(step - bar.n)
    bar.close()
    return [s / steps for s in loss_sums]


def _speed(run: _Run, samples: int, seconds: float) -> dict:
    """The progress bar's speed on CUDA: samples/s and the share of the chip's matrix rate (CPU: none)."""
    if run.flops is None or seconds <= 0:
        return {}
    t = metrics.throughput(samples / seconds, run.flops, run.peak)
    return {"samples_s": f"{t['samples_per_s']:,.0f}", **({"mfu": f"{t['mfu']:.1%}"} if "mfu" in t else {})}


def _end_epoch(run: _Run, epoch: int, losses: torch.Tensor, t_epoch: float) -> tuple[dict, list[bool]]:
    """Validate every peer and the ensemble, step the trackers, append the history row; also
    which local peers improved (their best.pt is due)."""
    peers, exchange = run.peers, run.exchange
    where = f"evaluation after epoch {epoch}"
    probs, yva = _split_probs(run, "valid", where)
    _warn_probabilities(run, probs, yva, f"epoch {epoch}")
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
            stopped = p.tracker.on_epoch_end(epoch, v, p.model)
            # shared weights: an earlier peer's freeze just now moved them, after `probs` was predicted
            if p.tracker.improved and not run.shares:
                p.keep_valid_probs(probs[p.index])
            if stopped:
                p.freeze()
                run.log(f"{p.name}: early stop after epoch {epoch} (best epoch {p.tracker.best_epoch})")
            entry["improved"] = improved[-1] = p.tracker.improved
        mine.append((entry, p.training))
    gathered = exchange.gather_objects(mine, where=where)
    run.st.training = [t for _, t in gathered]
    row = {"epoch": epoch, "seconds": time.perf_counter() - t_epoch, "ensemble_valid_auc": ens["auc"],
           "ensemble_valid_logloss": ens["logloss"], "peers": [e for e, _ in gathered]}
    run.st.history.append(row)
    run.log(f"epoch {epoch}: valid " + ", ".join(
        f"{e['model']} AUC {e['valid_auc']:.5f} logloss {e['valid_logloss']:.5f}{' *' if e.get('improved') else ''}"
        for e in row["peers"]) + (f" | ensemble AUC {ens['auc']:.5f}" if exchange.n_peers > 1 else ""))
    return row, improved


def _prepare_out(run: _Run) -> list[Path]:
    """The output folders made (an unwritable --out fails now, not after an epoch), stale temp files gone;
    returns this process's last-checkpoint paths."""
    paths = run.exchange.last_paths(run.out, run.peers)
    best = [p.best_path for p in run.peers if p.best_path is not None]
    folders = {path.parent for path in [*paths, *best]}
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CtrkitError(f"cannot create the output folder {folder}: {e.strerror or e}") from None
        names = ["last.pt", "best.pt", "result.json", *[path.name for path in paths]]
        checkpoint.refuse_foreign(folder, names)
        _probe_writable(folder)
        checkpoint.clean_stale_temp(folder, names)
    if run.exchange.is_main and run.out not in folders:  # result.json (distributed: checkpoints are in subfolders)
        _probe_writable(run.out)
    return paths


def _probe_writable(folder: Path) -> None:
    """Create and remove a file of our own in `folder`: every checkpoint is written as a temp file
    there and renamed, so a folder that takes this one takes them (a read-only --out, a read-only
    disk), and one that does not fails before the first epoch instead of after it."""
    try:
        probe_writable(folder)
    except OSError as e:
        raise CtrkitError(f"cannot write in the output folder {folder}: {e.strerror or e}") from None


def _start(run: _Run, resume: bool) -> None:
    """A fresh state (clearing an older run's files in `out`) or the one a killed run left."""
    peers, exchange, out = run.peers, run.exchange, run.out
    run.sig = checkpoint.signature(run.config.run_dict(), [(p.name, p.hparams, run.config.train_dict(p.index))
                                                           for p in peers], run.data.fingerprint, exchange.layout())
    run.st = _State(training=exchange.gather_objects([p.training for p in peers], where="start-up"))
    if out is None:
        return
    paths = _prepare_out(run)
    found = exchange.agree(lambda: checkpoint.read_resume(paths, run.sig), where="resume agreement") if resume else {}
    common = exchange.common_epochs(set(found))
    if not common:
        if resume and exchange.is_main:
            run.log(f"nothing to resume in {out} (no last checkpoint), starting from epoch 1")
        # a fresh run must not leave an older run's files looking like its own if it dies early
        best = [p.best_path for p in peers if p.best_path is not None]
        for stale in [*paths, *best, *([out / "result.json"] if exchange.is_main else [])]:
            stale.unlink(missing_ok=True)
        return
    ck = found[max(common)]
    for p, state in zip(peers, ck["peers"]):
        p.load_state(state)
    set_rng_state(ck["rng"], run.generator)
    run.st = _State(epoch=ck["epoch"], global_step=ck["global_step"], history=list(ck["history"]),
                    training=list(ck["training"]), train_seconds=ck["train_seconds"],
                    train_samples=ck["train_samples"])
    if exchange.is_main:  # always said, also without progress: a resumed run must not pass for a fresh one
        tqdm.write(f"resuming {exchange.resume_label} after epoch {run.st.epoch} from {out}", file=sys.stderr)


def _save_epoch(run: _Run, improved: list[bool]) -> None:
    """After an epoch: the improved peers' best.pt, then the last checkpoint."""
    st = run.st
    for p, better in zip(run.peers, improved):
        if better and p.best_path is not None and run.exchange.replica == 0:
            checkpoint.write_best(p.best_path, p.model, p.tracker.best_state, data=run.data,
                                  train_config=run.config.train_dict(p.index), epoch=st.epoch,
                                  metrics={"valid_auc": p.tracker.best_metrics["auc"],
                                           "valid_logloss": p.tracker.best_metrics["logloss"]})
    paths = run.exchange.last_paths(run.out, run.peers)
    if len(paths) > 1 and paths[0].exists():
        # keep the previous epoch: a process killed now may leave the others one epoch ahead
        os.replace(paths[0], paths[1])
    checkpoint.save({"format": checkpoint.LAST_FORMAT, "signature": run.sig, "epoch": st.epoch,
                     "global_step": st.global_step, "history": st.history, "training": st.training,
                     "rng": rng_state(run.generator), "train_seconds": st.train_seconds,
                     "train_samples": st.train_samples, "peers": [p.state() for p in run.peers]}, paths[0])


def train_peers(peers: list[Peer], data, config: RunConfig, *, exchange: Exchange | None = None,
                out_dir: str | Path | None = None, resume: bool = False, callback=None, stop=None) -> dict:
    """Train `peers` (this process's; all of them with the default LocalExchange) on `data` (CTRData).

    With `out_dir`: a last-checkpoint after every epoch (weights, optimizers, schedules, early
    stopping, RNGs), each trained peer's best.pt at its `best_path` on every improvement and at the
    end, and result.json. `resume=True` continues from the last checkpoint to the same result as an
    uninterrupted run (`epochs` may be raised). `callback(row)` gets every epoch's history row;
    `stop` (a threading.Event or a callable) ends the run after the current step with RunStopped."""
    return train_replicas([peers], data, [config], exchange=exchange, out_dirs=[out_dir], resume=resume,
                          callback=callback, stop=stop)[0]


def train_replicas(groups: list[list[Peer]], data, configs: list[RunConfig], *, exchange: Exchange | None = None,
                   out_dirs: Sequence[str | Path | None] | None = None, resume: bool = False, callback=None,
                   stop=None) -> list[dict]:
    """Train K runs of the same peers (`groups[k]`, `configs[k]`: seed, weight, lrs may differ) as
    replicas, one batched step for all (`ctrkit.training.replicas`); returns each run's result, as
    `train_peers` would alone (within the float tolerance that module states). Each run keeps its own
    batch order, dropout masks, optimizers, schedules, early stopping, `out_dirs[k]` files and resume;
    K = 1 is `train_peers`, bit for bit. The runs share `batch_size` and `epochs` (the loop's bounds)."""
    t0 = time.perf_counter()
    out_dirs = list(out_dirs) if out_dirs is not None else [None] * len(groups)
    if not (len(groups) == len(configs) == len(out_dirs)) or not groups:
        raise CtrkitError(f"train_replicas: {len(groups)} peer groups, {len(configs)} configs, {len(out_dirs)} out dirs")
    if len(groups) > 1:
        replicas.check_replicas(groups, exchange)
        if len({(c.batch_size, c.epochs, c.mode, c.amp, str(c.torch_device)) for c in configs}) > 1:
            raise CtrkitError("replicas must share batch_size, epochs, mode, amp and device")
    _check_models(groups, data)
    config = configs[0]
    exchange = exchange or LocalExchange(len(groups[0]), config.torch_device)
    device = exchange.device
    # results do not depend on the count (tested), so 'auto' may follow the machine's load
    threads = apply_threads(config.threads) if config.threads is not None else torch.get_num_threads()
    runs = [_Run(peers=g, config=c, exchange=exchange, data=data, generator=seed_everything(c.seed),
                 amp_dtype=resolve_amp(device, c.amp), out=Path(o) if o is not None else None, stop=stop,
                 callback=callback) for g, c, o in zip(groups, configs, out_dirs)]
    if compiled.wanted(config.compile, runs=len(runs)):
        compiled.switch_in(runs[0].peers)
    tune_cpu_allocator(device)
    Xtr, ytr = data.tensors("train", device)
    _check_scorable(data, device)  # valid and test loaded (indices checked) now: a bad split fails before an epoch
    _probe_models(groups, Xtr[:config.batch_size])
    for run in runs:
        _open(run, resume)
    stacks = [replicas.Stack(p.model) for p in groups[0]] if len(groups) > 1 else None
    graphed = (graph.GraphStep(runs[0], Xtr, ytr)
               if graph.wanted(config.graph, device, local=isinstance(exchange, LocalExchange), runs=len(runs)) else None)
    if device.type == "cuda":
        for run in runs:
            _measure(run, Xtr)
    for epoch in range(min(r.st.epoch for r in runs) + 1, config.epochs + 1):
        # a run that ended (every peer stopped) draws no more batches; one resumed an epoch ahead waits
        if not any(any(r.st.training) for r in runs):
            break  # every run ended: not a walk through the remaining epoch numbers (--epochs 1e9)
        active = [r for r in runs if r.st.epoch < epoch and any(r.st.training)]
        if not active:
            continue
        t_epoch = time.perf_counter()
        losses = _train_epoch(active, epoch, Xtr, ytr, stacks, graphed)
        for run, run_losses in zip(active, losses):
            run.st.train_seconds += time.perf_counter() - t_epoch
            run.st.train_samples += Xtr.shape[0]
            row, improved = _end_epoch(run, epoch, run_losses, t_epoch)
            run.st.epoch = epoch
            if run.out is not None:
                _save_epoch(run, improved)
            if callback is not None:
                callback(row)
    if graphed is not None:
        runs[0].graph = graphed.status
    return [_finish(run, threads, t0) for run in runs]


def _check_models(groups: list[list[Peer]], data) -> None:
    """Every model built for `data`'s feature map (else an index out of range, or a best.pt that
    fits no model of the data), and no model given twice (it would get two optimizers and learn
    from itself; peers of `share_embedding` are distinct models sharing one table)."""
    sizes = list(data.field_sizes)
    owner: dict[int, str] = {}
    for k, group in enumerate(groups):
        for peer in group:
            where = _where(peer, k, groups)
            fs = getattr(peer.model, "field_sizes", None)
            if fs is not None and list(fs) != sizes:
                raise CtrkitError(f"{where} was built for field sizes {list(fs)[:4]}..., the data "
                                  f"{getattr(data, 'path', '')} has {sizes[:4]}...: build it with data.field_sizes")
            if owner.setdefault(id(peer.model), where) != where:
                raise CtrkitError(f"{where} is the same model object as {owner[id(peer.model)]}: "
                                  f"each peer needs a model of its own")


def _where(peer: Peer, k: int, groups: list[list[Peer]]) -> str:
    """A peer in messages: "peer 0 (DeepFM)", "... of run k" among replicas."""
    return f"peer {peer.index} ({peer.name})" + (f" of run {k}" if len(groups) > 1 else "")


@torch.no_grad()
def _probe_models(groups: list[list[Peer]], X: torch.Tensor) -> None:
    """One forward of every model on the first training rows, in eval mode (no dropout draw, no
    BatchNorm update, no graph), once before the first step: a forward that does not return finite
    floating logits of shape [B] fails here in one line naming the peer, not as a torch error deep in
    the step (a [B, 1] output: BCE's size error, or the peers' `torch.stack`)."""
    for k, group in enumerate(groups):
        for peer in group:
            was = peer.model.training
            peer.model.eval()
            try:
                out = peer.model(X)
            finally:
                peer.model.train(was)
            _check_logits(out, X.shape[0], _where(peer, k, groups))


def _check_logits(out, rows: int, where: str) -> None:
    """`_probe_models`' verdict on one forward's output of `rows` rows."""
    what = f"{where}: forward must return logits of shape [B] (one per row)"
    if not isinstance(out, torch.Tensor):
        raise CtrkitError(f"{what}, got a {type(out).__name__}")
    if tuple(out.shape) != (rows,):
        hint = ": squeeze the last dimension (.squeeze(-1))" if tuple(out.shape) == (rows, 1) else ""
        raise CtrkitError(f"{what}, got {list(out.shape)}{hint}")
    if not out.is_floating_point():
        raise CtrkitError(f"{where}: forward must return floating-point logits, got {out.dtype}")
    if not bool(torch.isfinite(out).all()):
        raise NonFiniteLossError(f"{where}: the model's output is non-finite from the start (inf or nan logits on "
                                 f"the first training rows, before any update): check the model's forward")


def _check_scorable(data, device: torch.device) -> None:
    """Rows of both labels in every split: valid and test are scored by AUC (early stopping, the
    result), undefined otherwise; train has nothing to learn. `data.load` refuses only a one-label
    train split (`info` shows any prepared folder)."""
    for split in ("train", "valid", "test"):
        y = data.tensors(split, device)[1]
        ones = int(torch.count_nonzero(y == 1))
        where = f"{getattr(data, 'path', 'the data')}: split {split!r}"
        if not len(y):
            raise CtrkitError(f"{where}: no rows; training needs rows of both labels in every split "
                              f"(check the split ratios)")
        if ones in (0, len(y)):
            raise CtrkitError(f"{where}: all {len(y)} labels are {int(ones > 0)}: "
                              f"{'nothing to learn' if split == 'train' else 'its AUC is undefined'} "
                              f"(a larger split, or a stratified one, has both labels)")


def _measure(run: _Run, Xtr: torch.Tensor) -> None:
    """On CUDA: the step's model FLOPs per sample (a trained peer ~3x its forward, a teacher 1x) and
    the chip's matrix rate in the run's precision, for the progress bar and env's `mfu`."""
    run.flops = sum(metrics.forward_flops_per_sample(p.model, Xtr) * (3 if p.trainable else 1) for p in run.peers)
    run.peak = metrics.matmul_peak(str(Xtr.device), "bf16" if run.amp_dtype is torch.bfloat16 else "fp32")
    run.graph = "off"


def _open(run: _Run, resume: bool) -> None:
    """A run's start: fresh or resumed, pretrained peers' epoch 0, train/eval modes, whether it gathers."""
    if resume and run.out is None:
        raise CtrkitError("resume=True needs out_dir (where the last checkpoint is)")
    _start(run, resume)
    if run.st.epoch == 0:
        for p in run.peers:
            if p.trainable and p.start is not None:
                p.tracker.start_from(p.start, p.model)
    for p in run.peers:
        p.model.train(p.training)
    tensors = [{t.data_ptr() for t in p.model.state_dict().values()} for p in run.peers]
    run.shares = len(set().union(*tensors)) < sum(map(len, tensors))
    # whether any peer learns from another: the same answer in every process, so all gather alike
    run.gathers = any(run.exchange.gather_objects([bool(p.learns_from) for p in run.peers], where="start-up"))


def _finish(run: _Run, threads: int, t0: float) -> dict:
    """Best weights back, one validation and test pass, the result (and its files)."""
    peers, config, exchange, st, data = run.peers, run.config, run.exchange, run.st, run.data
    for p in peers:
        if p.trainable and p.tracker.best_state is not None:
            p.tracker.restore_best(p.model)
        p.model.eval()
    (valid, ens_v), _ = _evaluate_split(run, "valid")
    (test, ens_t), test_probs = _evaluate_split(run, "test")
    mine = [{"model": p.name, "index": p.index, "trained": p.trainable, "learns_from": p.learns_from,
             "best_epoch": p.tracker.best_epoch if p.trainable else None,
             "stopped_early": bool(p.trainable and p.tracker.stopped),
             "hparams": p.hparams, "train_config": config.train_dict(p.index)} for p in peers]
    extra = exchange.result_extra(st.train_seconds, peers, config.batch_size)
    sps = st.train_samples / st.train_seconds if st.train_seconds > 0 else None
    result = {
        "mode": config.mode, "weight": config.weight, "divergence": config.divergence,
        "epochs": len(st.history), "seconds": time.perf_counter() - t0,
        "peers": [{**m, "valid_auc": valid[j]["auc"], "valid_logloss": valid[j]["logloss"],
                   "test_auc": test[j]["auc"], "test_logloss": test[j]["logloss"]}
                  for j, m in enumerate(exchange.gather_objects(mine, where="final evaluation"))],
        "ensemble": {"valid_auc": ens_v["auc"], "valid_logloss": ens_v["logloss"],
                     "test_auc": ens_t["auc"], "test_logloss": ens_t["logloss"]},
        "history": st.history, "fingerprint": data.fingerprint, "dataset": data.dataset,
        "config": config.run_dict(), "amp": "bf16" if run.amp_dtype is torch.bfloat16 else "off",
        "train_seconds": st.train_seconds,
        "samples_per_s": sps,
        "env": {**env_info(exchange.device, config.seed), "torch_threads": threads, **_env_speed(run, sps),
                **({"compile": "on"} if config.compile == "on" else {})}, **extra,
    }
    if run.out is not None:
        for p in peers:
            if p.trainable and p.tracker.best_state is not None and p.best_path is not None and exchange.replica == 0:
                checkpoint.write_best(p.best_path, p.model, p.model.state_dict(), data=data,
                                      train_config=config.train_dict(p.index), epoch=p.tracker.best_epoch,
                                      metrics=result["peers"][p.index],
                                      scored=checkpoint.scored_by(run.device, config.eval_batch_size))
        if exchange.is_main:
            checkpoint.save_json(run.out / "result.json", result)
    # every peer's test probabilities [N, rows] (numpy, not JSON: not in result.json), e.g. for churn
    result["test_probs"] = test_probs.float().cpu().numpy()
    return result


def _env_speed(run: _Run, sps: float | None) -> dict:
    """CUDA only (nothing on a CPU): whether the graph ran, samples/s, FLOPs per sample, peak, mfu."""
    if run.flops is None:
        return {}
    return {"graph": run.graph, **metrics.throughput(sps, run.flops, run.peak)}


def _split_probs(run: _Run, split: str, where: str, final: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Every peer's probabilities on a split [P, rows] (gathered) and its labels. On "valid", a
    stopped peer (or any, in the `final` evaluation) whose weights are those of its kept
    probabilities is not predicted again: the same weights, rows and batch size give the same
    probabilities (a peer still training has moved on: not even checked)."""
    X, y = run.data.tensors(split, run.device)
    local = []
    for p in run.peers:
        kept = p.kept_valid_probs() if split == "valid" and (final or not p.training) else None
        local.append(kept if kept is not None else predict(p.model, X, run.config.eval_batch_size))
    return run.exchange.gather(torch.stack(local), training=False, where=where), y


def _evaluate_split(run: _Run, split: str) -> tuple[tuple[list[dict], dict], torch.Tensor]:
    """(Every peer's scores on a split, the ensemble's: the mean of the peers' probabilities), and
    the probabilities [P, rows]."""
    probs, y = _split_probs(run, split, "final evaluation", final=True)
    if split == "valid":
        _warn_probabilities(run, probs, y, "the final evaluation")  # a run of no epoch (ensemble mode)
    peers = [scores(y, q) for q in probs]
    for j, s in enumerate(peers):
        # the tracker refuses a non-finite monitor each epoch; this also covers teachers and the test split
        if not all(math.isfinite(v) for v in s.values()):
            raise NonFiniteLossError(f"{_peer_label(run, j)}, final evaluation: the {split} metrics are not finite "
                                     f"(metrics {s}): its {split} logits include inf or nan (check the model's forward)")
    return (peers, scores(y, probs.mean(0))), probs


def _peer_label(run: _Run, j: int) -> str:
    """Peer j in messages: "peer j (Model)", or "peer j" for another process's peer (distributed)."""
    names = {p.index: p.name for p in run.peers}
    return f"peer {j}" + (f" ({names[j]})" if j in names else "")


def _warn_probabilities(run: _Run, probs: torch.Tensor, y: torch.Tensor, when: str) -> None:
    """At the run's first validation (once per peer and run; by the process that trains the peer), a
    warning for each peer whose validation logits look like probabilities (`looks_like_probabilities`):
    such a model trains without an error to an AUC near 0.5."""
    if run.probs_checked:
        return
    run.probs_checked = True
    if run.exchange.replica != 0:
        return
    for p in run.peers:
        if looks_like_probabilities(y, probs[p.index]):
            warnings.warn(f"peer {p.index} ({p.name}): every validation logit of {when} is in [0, 1]: does forward "
                          f"return probabilities? It must return logits (ctrkit applies the sigmoid)")


# ---------------------------------------------------------------- fit: the one-peer case


def fit(model: nn.Module, data, config: RunConfig | dict | None = None, out_dir: str | Path | None = None,
        resume: bool = False, *, start: dict | None = None, stop=None) -> dict:
    """Train one model on `data` (CTRData) per `config` (a one-peer RunConfig, or a flat train dict:
    `RunConfig.single`); return the result dict (also `out_dir/result.json`).

    Seed before building the model (`seed_everything(config.seed)`) for a reproducible init; `fit`
    reseeds for the batch order and dropout. With `out_dir`: `last.pt` every epoch, `best.pt` on
    every improvement, `result.json`. `resume=True` continues from `out_dir/last.pt` (if present)
    to the same result as an uninterrupted run; it may raise `epochs` to train further.
    """
    return fit_replicas([model], data, [config], [out_dir], resume, starts=[start], stop=stop)[0]


def fit_replicas(models: Sequence[nn.Module], data, configs: Sequence[RunConfig | dict | None],
                 out_dirs: Sequence[str | Path | None] | None = None, resume: bool = False, *,
                 starts: Sequence[dict | None] | None = None, stop=None) -> list[dict]:
    """`fit` of K models of one architecture (e.g. one per seed, each built after its own
    `seed_everything`) as replicas in one batched step (`train_replicas`); each result is what
    `fit` gives for that model and config alone (K = 1: bit for bit)."""
    configs = [c if isinstance(c, RunConfig) else RunConfig.single(c) for c in configs]
    out_dirs = list(out_dirs) if out_dirs is not None else [None] * len(models)
    starts = list(starts) if starts is not None else [None] * len(models)
    for config in configs:
        if len(config.peers) != 1:
            raise CtrkitError(f"fit trains one model; the config has {len(config.peers)} peers")
    outs = [Path(o) if o is not None else None for o in out_dirs]
    peers = [Peer(m, c.peers[0], index=0, learns_from=[], trainable=True, device=c.torch_device, start=s)
             for m, c, s in zip(models, configs, starts)]
    for peer, out in zip(peers, outs):
        peer.best_path = out / "best.pt" if out is not None else None
    results = train_replicas([[p] for p in peers], data, configs, out_dirs=outs, resume=resume, stop=stop)
    return [_fit_result(p, data, c, r, o) for p, c, r, o in zip(peers, configs, results, outs)]


def _fit_result(peer: Peer, data, config: RunConfig, r: dict, out: Path | None) -> dict:
    """`fit`'s result (and result.json) from the one-peer run's."""
    if peer.tracker.best_state is None:
        raise CtrkitError(f"{peer.name}: no epoch was trained (epochs={config.epochs})")
    p = r["peers"][0]
    history = [{"epoch": row["epoch"], "train_loss": e["train_loss"], "valid_auc": e["valid_auc"],
                "valid_logloss": e["valid_logloss"], "lr": e.get("lr"), "improved": e.get("improved"),
                "seconds": row["seconds"]} for row in r["history"] for e in row["peers"]]
    result = {"model": peer.name, "dataset": data.dataset, "params": count_parameters(peer.model),
              **{k: p[k] for k in ("valid_auc", "valid_logloss", "test_auc", "test_logloss", "best_epoch",
                                   "stopped_early")},
              "epochs": len(history), "epoch_cap_hit": not p["stopped_early"] and len(history) >= config.epochs,
              "seconds": r["seconds"], "samples_per_s": r["samples_per_s"],
              "checkpoint": str(out / "best.pt") if out is not None else None, "amp": r["amp"],
              "hparams": peer.hparams, "train_config": config.train_dict(0), "fingerprint": data.fingerprint,
              "history": history, "env": r["env"]}
    if out is not None:
        checkpoint.save_json(out / "result.json", result)
    if config.progress:
        tqdm.write(f"{peer.name}: test AUC {p['test_auc']:.6f} logloss {p['test_logloss']:.6f} "
                   f"({result['samples_per_s'] or 0:,.0f} samples/s, amp {result['amp']})", file=sys.stderr)
    return result
