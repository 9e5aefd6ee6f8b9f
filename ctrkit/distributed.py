"""Mutual learning on torch.distributed: one peer per rank (or per group of data-parallel ranks).

Launched by torchrun (`torchrun --nproc_per_node=N -m ctrkit.cli mutual --distributed ...` or
`ctrkit mutual --distributed` under torchrun), rendezvous through `env://` (MASTER_ADDR/PORT,
RANK, WORLD_SIZE, LOCAL_RANK), NCCL on GPUs, gloo on CPUs. No home-made transport.

Layout: P peers x D data-parallel replicas on W = P*D ranks. Rank r owns peer `r // D` (its
parameters, optimizer, schedule, early stopping, checkpoint) and is replica `r % D` of it.
- peer group p = ranks {p*D .. p*D+D-1}: a DistributedDataParallel module averages the peer's
  gradients over its D replicas (nothing to do when D = 1);
- shard group d = ranks {d, D+d, 2D+d, ...}: one rank per peer, all holding shard d of the batch;
  each step they `all_gather` their predictions (b floats each) to form every peer's mutual term.

Every rank draws the same batch order from the same seed (the trainer's `epoch_batches`), cuts
the batch into D near-equal shards (`shard_of`), and computes

    L_n = BCE(y, p_n) + w/|T_n| * sum_{i in T_n} D(p_i, p_n)        (p_i gathered, detached)

with `ctrkit.losses.peer_loss` on its shard, scaled by |shard|*D/B so that DDP's gradient
average over the replicas is exactly the full-batch gradient. With D = 1 this is the
single-process `ctrkit.mutual.mutual_fit`, step for step (tested to float tolerance), dropout
included: every peer draws its masks from its own stream (`ctrkit.train.dropout_seed`),
in one process or on its own rank alike.

Per step and rank the only traffic outside DDP is one all_gather of b = B/D floats per peer:
(P-1)*b*4 bytes received (`Comm.stats` counts what is actually gathered). Evaluation gathers
each peer's validation/test predictions once per epoch for the ensemble metrics.

Checkpoints: every rank writes its own `<out>/<k>_<Model>/last.rank<r>.pt` atomically after
each epoch, keeping the previous one as `.prev.pt`; a relaunch with the same `--out` (e.g. by
`torchrun --max-restarts`, or by hand after a rank died) resumes every rank from the newest epoch
that all ranks have (`--force` starts over). Rank 0 alone writes result.json and the results store.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ctrkit import experiments, presets
from ctrkit.losses import peer_loss, warmup_weight
from ctrkit.models import build
from ctrkit.mutual import (MutualConfig, _Peer, _scores, _teachers, check_run_args, checkpoint_path, peer_labels)
from ctrkit.train import (NonFiniteCheck, TrainConfig, amp_context, epoch_batches, load_checkpoint, load_pretrained,
                          predict, resolve_amp, rng_state, set_rng_state)
from ctrkit.utils import (CtrkitError, env_info, seed_everything, torch_save_atomic, tune_cpu_allocator,
                          write_json_atomic)

__all__ = ["Layout", "Comm", "shard_of", "comm_bytes_per_step", "init_from_env", "shutdown",
           "mutual_fit_distributed", "run_mutual_distributed", "run_one_distributed", "cli_mutual",
           "TIMEOUT_ENV", "DEFAULT_TIMEOUT_S"]

# Collective timeout: a rank that died or hangs turns into an error on the others after this long
# instead of a silent hang. The CLI has no flag for it (yet): set the environment variable.
TIMEOUT_ENV = "CTRKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
# Phrases of gloo/NCCL errors that mean "another rank is gone", not a local mistake.
_LOST_MARKERS = ("connection", "closed", "reset by peer", "timed out", "timeout", "broken pipe", "nccl",
                 "remote", "aborted", "socket")
_RENDEZVOUS_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------- layout (pure, no processes)


@dataclasses.dataclass(frozen=True)
class Layout:
    """P peers x D replicas on `world_size` ranks: rank r is replica r % D of peer r // D."""

    world_size: int
    n_peers: int

    def __post_init__(self):
        if self.n_peers < 1 or self.world_size < 1:
            raise CtrkitError(f"distributed layout: need >= 1 peer and >= 1 rank, got {self.n_peers} peers, "
                              f"{self.world_size} ranks")
        if self.world_size % self.n_peers:
            raise CtrkitError(f"distributed: {self.world_size} ranks (WORLD_SIZE) cannot host {self.n_peers} peers; "
                              f"launch a multiple of {self.n_peers} processes (peers x data-parallel replicas)")

    @property
    def replicas(self) -> int:
        return self.world_size // self.n_peers

    def peer_of(self, rank: int) -> int:
        return rank // self.replicas

    def replica_of(self, rank: int) -> int:
        return rank % self.replicas

    def peer_ranks(self, peer: int) -> list[int]:
        """The D ranks that train `peer` data-parallel (its DDP process group)."""
        return list(range(peer * self.replicas, (peer + 1) * self.replicas))

    def shard_ranks(self, replica: int) -> list[int]:
        """One rank per peer, all holding shard `replica` of each batch (the all_gather group), in
        peer order, so gathered row k is peer k's prediction."""
        return [p * self.replicas + replica for p in range(self.n_peers)]


def shard_of(idx: torch.Tensor, replicas: int, replica: int) -> tuple[torch.Tensor, float]:
    """Replica `replica`'s part of the batch `idx` and the loss scale |shard|*D/B that makes DDP's
    mean over replicas of the shard-mean gradients equal the full-batch mean gradient (shards of a
    batch not divisible by D differ by one row)."""
    part = torch.tensor_split(idx, replicas)[replica]
    return part, part.numel() * replicas / idx.numel()


def comm_bytes_per_step(n_peers: int, batch_size: int, replicas: int = 1, n_params: int = 0,
                        bytes_per_float: int = 4) -> dict:
    """Model of the traffic one rank receives per training step (ring algorithms).

    all_gather of predictions in its shard group: (P-1) * b floats, b = B/D; DDP gradient
    all-reduce in its peer group: 2*(D-1)/D * params floats (ring reduce-scatter + all-gather)."""
    b = batch_size / replicas
    gather = (n_peers - 1) * b * bytes_per_float
    allreduce = 2 * (replicas - 1) / replicas * n_params * bytes_per_float if replicas > 1 else 0.0
    return {"allgather_bytes": gather, "ddp_allreduce_bytes": allreduce, "total_bytes": gather + allreduce}


# ---------------------------------------------------------------- process groups


def _timeout_s(timeout_s: float | None) -> float:
    if timeout_s is not None:
        value = timeout_s
    else:
        text = os.environ.get(TIMEOUT_ENV, "")
        try:
            value = float(text) if text else DEFAULT_TIMEOUT_S
        except ValueError:
            raise CtrkitError(f"{TIMEOUT_ENV}={text!r}: expected seconds (a number > 0)") from None
    if not value > 0:
        raise CtrkitError(f"distributed timeout must be > 0 seconds, got {value!r}")
    return float(value)


class Comm:
    """This rank's view of the run: its peer/replica, the device, the groups, and byte counters."""

    def __init__(self, layout: Layout, rank: int, local_rank: int, device: torch.device, backend: str,
                 timeout_s: float):
        self.layout, self.rank, self.local_rank = layout, rank, local_rank
        self.device, self.backend, self.timeout_s = device, backend, timeout_s
        self.peer, self.replica = layout.peer_of(rank), layout.replica_of(rank)
        # new_group is collective: every rank creates every group, in the same order.
        self.peer_group = self.shard_group = None
        for p in range(layout.n_peers):
            g = dist.new_group(layout.peer_ranks(p), timeout=datetime.timedelta(seconds=timeout_s))
            if p == self.peer:
                self.peer_group = g
        for d in range(layout.replicas):
            g = dist.new_group(layout.shard_ranks(d), timeout=datetime.timedelta(seconds=timeout_s))
            if d == self.replica:
                self.shard_group = g
        self.where = "start-up"  # what the rank is doing, for the error message if a peer vanishes
        self.steps = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.eval_bytes_received = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _failed(self, e: Exception) -> CtrkitError:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not any(m in str(e).lower() for m in _LOST_MARKERS):
            return CtrkitError(f"rank {self.rank} (peer {self.peer}, replica {self.replica}): a collective failed during "
                               f"{self.where}: {first[:300]}")
        return CtrkitError(f"rank {self.rank} (peer {self.peer}, replica {self.replica}): lost the other ranks during "
                           f"{self.where}: {first[:300]} -- another rank died or stopped answering (collective timeout "
                           f"{self.timeout_s:g} s, {TIMEOUT_ENV}); rerun the same command to resume from the checkpoints")

    def gather_peers(self, x: torch.Tensor, training: bool = True) -> torch.Tensor:
        """[P, *x.shape]: every peer's `x` for this rank's shard (row k = peer k). Training calls
        are counted as the per-step traffic."""
        x = x.contiguous()
        # one flat buffer (the form gloo accepts), viewed as [P, ...] afterwards
        out = torch.empty(self.layout.n_peers * x.numel(), dtype=x.dtype, device=x.device)
        try:
            # all_gather_single is the torch >= 2.9 name of all_gather_into_tensor
            fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            fn(out, x.reshape(-1), group=self.shard_group)
        except RuntimeError as e:  # DistBackendError / gloo connection errors are RuntimeErrors
            raise self._failed(e) from None
        received = (out.numel() - x.numel()) * x.element_size()
        if training:
            self.steps += 1
            self.bytes_sent += x.numel() * x.element_size()
            self.bytes_received += received
        else:
            self.eval_bytes_received += received
        return out.view(self.layout.n_peers, *x.shape)

    def gather_objects(self, obj: Any) -> list:
        """Small picklable objects from every rank (world order): epoch bookkeeping, results."""
        out = [None] * self.layout.world_size
        try:
            dist.all_gather_object(out, obj)
        except RuntimeError as e:
            raise self._failed(e) from None
        return out

    def stats(self) -> dict:
        per_step = self.bytes_received / self.steps if self.steps else 0.0
        return {"world_size": self.layout.world_size, "n_peers": self.layout.n_peers,
                "replicas": self.layout.replicas, "backend": self.backend, "timeout_s": self.timeout_s,
                "gather_steps": self.steps, "allgather_bytes_sent": self.bytes_sent,
                "allgather_bytes_received": self.bytes_received, "allgather_bytes_per_step": per_step,
                "eval_bytes_received": self.eval_bytes_received}


def init_from_env(n_peers: int, device: str = "auto", backend: str = "auto",
                  timeout_s: float | None = None) -> Comm:
    """Join the process group torchrun set up (env://) and build the peer/shard groups.

    device auto: cuda:LOCAL_RANK when CUDA is present (NCCL), else cpu (gloo)."""
    missing = [k for k in _RENDEZVOUS_ENV if k not in os.environ]
    if missing:
        raise CtrkitError(f"--distributed: {', '.join(missing)} not set; launch with torchrun, e.g. "
                          f"`torchrun --nproc_per_node={max(n_peers, 2)} -m ctrkit.cli mutual --distributed ...`")
    timeout = _timeout_s(timeout_s)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    layout = Layout(world, n_peers)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CtrkitError(f"--device {device}: no CUDA device is available on this machine")
        # one GPU per local rank: torchrun's LOCAL_RANK picks it (an explicit cuda:i is ignored)
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise CtrkitError(f"--device must be cpu, cuda or auto, got {device!r}")
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise CtrkitError(f"distributed backend must be nccl, gloo or auto, got {backend!r}")
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        try:
            dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout),
                                    **kwargs)
        except (RuntimeError, ValueError) as e:
            raise CtrkitError(f"rank {rank}: cannot join the process group at {os.environ['MASTER_ADDR']}:"
                              f"{os.environ['MASTER_PORT']} ({backend}): {str(e).strip().splitlines()[0][:300]}") from None
    return Comm(layout, rank, local_rank, dev, backend, timeout)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- the distributed mutual trainer


class _RankPeer(_Peer):
    """The mutual trainer's peer, whose training forward goes through DDP when it has replicas."""

    def __init__(self, model, config, learns_from, trainable, device, comm: Comm):
        # replicas of one peer see different rows: each draws its own dropout masks (D = 1: replica 0)
        super().__init__(model, config, learns_from, trainable, device, index=comm.peer, replica=comm.replica)
        if trainable and comm.layout.replicas > 1:
            self.forward = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device] if device.type == "cuda" else None, process_group=comm.peer_group)


def _ckpt_dir(out: Path, k: int, name: str) -> Path:
    return out / f"{k}_{name}"


def _last_paths(out: Path, k: int, name: str, rank: int) -> tuple[Path, Path]:
    d = _ckpt_dir(out, k, name)
    return d / f"last.rank{rank}.pt", d / f"last.rank{rank}.prev.pt"


def _signature(config: MutualConfig, comm: Comm, peer: _Peer, data) -> dict:
    """What must not change between a run and its resumption."""
    # a resumed run may train longer, show progress differently or run on another device
    free = ("train", "progress", "epochs", "eval_batch_size", "check_every", "device")
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k not in free}
    train = {k: v for k, v in peer.config.to_dict().items() if k not in free}
    return {"config": cfg, "world_size": comm.layout.world_size, "n_peers": comm.layout.n_peers,
            "peer": comm.peer, "model": peer.name, "hparams": dict(getattr(peer.model, "hparams", {})),
            "train_config": train, "fingerprint": data.fingerprint}


def _read_last(paths: Sequence[Path], signature: dict) -> dict[int, Path]:
    """{epoch: path} of this rank's readable checkpoints of this very run."""
    found = {}
    for path in paths:
        if not path.is_file():
            continue
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn file is simply not a candidate; the other one may be fine
            continue
        if ck.get("signature") != signature:
            raise CtrkitError(f"{path}: a checkpoint of a different run (peers, layout or settings differ); "
                              f"use --force to start over or another --out")
        found[int(ck["epoch"])] = path
    return found


def mutual_fit_distributed(model: nn.Module, data, config: MutualConfig | dict | None = None, comm: Comm | None = None,
                           out_dir: str | Path | None = None, resume: bool = True) -> dict:
    """This rank's share of `ctrkit.mutual.mutual_fit`: train peer `comm.peer` (`model`, built and
    seeded exactly as the single-process run builds it) with the others on their ranks.

    `config.train` is this peer's TrainConfig (or a list of all peers', indexed by the peer).
    Returns the same result dict as `mutual_fit` (all peers, ensemble, history) on every rank,
    plus `distributed` (layout and the bytes actually gathered). With `out_dir` each rank keeps its
    resume checkpoint (see the module doc), replica 0 of each peer writes its `best.pt`, rank 0
    writes result.json."""
    if comm is None:
        raise CtrkitError("mutual_fit_distributed needs a Comm (see init_from_env)")
    config = config if isinstance(config, MutualConfig) else MutualConfig.from_dict(config or {})
    P, k = comm.layout.n_peers, comm.peer
    if config.mode != "alone" and P < 2:
        raise CtrkitError(f"mode {config.mode!r} needs at least 2 peers, got {P}")
    D = comm.layout.replicas
    if D > 1 and config.batch_size < D:
        raise CtrkitError(f"batch size {config.batch_size} < {D} data-parallel replicas per peer")
    t0 = time.perf_counter()
    device = comm.device
    amp_dtype = resolve_amp(device, config.amp)
    tcfg = config.train[k] if isinstance(config.train, (list, tuple)) else config.train
    trains = config.mode != "ensemble"
    teachers = _teachers(config.mode, P)
    fixed = {0} if config.mode == "kd" else set()
    peer = _RankPeer(model, config.peer_train_config(tcfg), teachers[k], trains and k not in fixed, device, comm)
    peer.model.train(peer.training)
    main = comm.is_main and config.progress
    # every rank knows which peers still train (identical bookkeeping everywhere)
    training = [trains and j not in fixed for j in range(P)]
    names = comm.gather_objects(peer.name)[::D]
    gathers = any(teachers)

    generator = seed_everything(config.seed)
    tune_cpu_allocator(device)
    Xtr, ytr = data.tensors("train", device)
    Xva, yva = data.tensors("valid", device)
    n = Xtr.shape[0]
    steps = math.ceil(n / config.batch_size)
    history, global_step, epoch_done, train_seconds = [], 0, 0, 0.0

    out = Path(out_dir) if out_dir is not None else None
    signature = _signature(config, comm, peer, data)
    if out is not None and trains:
        last, prev = _last_paths(out, k, peer.name, comm.rank)
        comm.where = "resume agreement"
        if not resume:  # starting over: an old run's checkpoints must not be resumed later either
            last.unlink(missing_ok=True)
            prev.unlink(missing_ok=True)
        mine = _agree(comm, lambda: _read_last((last, prev), signature))
        common = set.intersection(*[set(e) for e in comm.gather_objects(sorted(mine))])
        if common:
            epoch_done = max(common)
            ck = torch.load(mine[epoch_done], map_location="cpu", weights_only=True)
            peer.model.load_state_dict(ck["state_dict"])
            if peer.trainable:
                peer.optimizer.load_state_dict(ck["optimizer"])
                peer.tracker.load_state_dict(ck["tracker"])
            set_rng_state(ck["rng"], generator)
            history, global_step, training = list(ck["history"]), ck["global_step"], list(ck["training"])
            train_seconds = ck["train_seconds"]
            if peer.trainable and not peer.training:  # stopped early before the interruption
                peer.model.eval()
            if comm.is_main:  # always said, also with --json: a resumed run must not pass for a fresh one
                tqdm.write(f"resuming all {comm.layout.world_size} ranks after epoch {epoch_done} from {out}",
                           file=sys.stderr)

    for epoch in range(epoch_done + 1, (config.epochs if trains else 0) + 1):
        if not any(training):
            break
        t_epoch = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        check = NonFiniteCheck(device)
        bar = tqdm(total=steps, desc=f"{config.mode} epoch {epoch}/{config.epochs} (rank 0)", file=sys.stderr,
                   disable=not main, leave=False, dynamic_ncols=True)
        for step, idx in enumerate(epoch_batches(n, config.batch_size, generator, device), 1):
            comm.where = f"epoch {epoch} step {step}"
            part, scale = shard_of(idx, D, comm.replica)
            xb, yb = Xtr.index_select(0, part), ytr.index_select(0, part)
            with amp_context(device, amp_dtype):
                logits = peer.logits(xb, global_step)
            w = warmup_weight(config.weight, global_step, config.warmup_steps)
            # the only per-step traffic, [P, b]; skipped (by every rank alike) when no peer learns
            # from another this step: `alone`, or a warm-up weight of 0 (peer_loss is then the BCE)
            others = None
            if gathers and w > 0:
                others = comm.gather_peers(torch.sigmoid(logits.detach())).index_select(0, peer.teachers)
            if peer.training:
                if part.numel():
                    loss = peer_loss(logits, yb, others if others is not None else logits.new_empty(0, part.numel()),
                                     w, config.divergence)
                else:  # an empty shard (last batch < D rows) still joins DDP's all-reduce, with zero grads
                    loss = logits.sum()
                try:  # with D > 1 the backward all-reduces gradients: a lost replica surfaces here
                    peer.step(loss * scale if scale != 1 else loss)
                except RuntimeError as e:
                    if D > 1 and any(m in str(e).lower() for m in _LOST_MARKERS):
                        raise comm._failed(e) from None
                    raise
                # the history's train_loss is this shard's (replica 0's for the peer when D > 1)
                loss_sum += loss.detach()
                check.update(loss, step)
            global_step += 1
            if step % config.check_every == 0 or step == steps:
                check.check(epoch, f"loss of peer {peer.name} (rank {comm.rank})")
                bar.update(step - bar.n)
        bar.close()
        train_seconds += time.perf_counter() - t_epoch

        comm.where = f"evaluation after epoch {epoch}"
        probs = comm.gather_peers(predict(peer.model, Xva, config.eval_batch_size), training=False)
        valid = [_scores(yva, p) for p in probs]
        ens = _scores(yva, probs.mean(0))
        entry = {"valid_auc": valid[k]["auc"], "valid_logloss": valid[k]["logloss"],
                 "train_loss": float(loss_sum) / steps, "trained": peer.training}
        if peer.training:
            entry["lr"] = peer.tracker.lr
            if peer.tracker.on_epoch_end(epoch, valid[k], peer.model):
                peer.freeze()
            entry["improved"] = peer.tracker.improved
        # replicas of a peer hold identical weights and see the same validation set: replica 0's
        # entry speaks for the peer, and its tracker decides whether the peer trains on
        gathered = comm.gather_objects((entry, peer.training))[::D]
        entries, training = [e for e, _ in gathered], [bool(t) for _, t in gathered]
        history.append({"epoch": epoch, "seconds": time.perf_counter() - t_epoch, "ensemble_valid_auc": ens["auc"],
                        "ensemble_valid_logloss": ens["logloss"], "peers": entries})
        if main:
            tqdm.write(f"epoch {epoch}: valid AUC " + " ".join(f"{m} {v['auc']:.5f}" for m, v in zip(names, valid))
                       + f" | ensemble {ens['auc']:.5f}", file=sys.stderr)
        if out is not None:
            comm.where = f"checkpoint after epoch {epoch}"
            state = {"signature": signature, "epoch": epoch, "state_dict": peer.model.state_dict(),
                     "optimizer": peer.optimizer.state_dict() if peer.trainable else None,
                     "tracker": peer.tracker.state_dict() if peer.trainable else None,
                     "rng": rng_state(generator), "history": history, "global_step": global_step,
                     "training": training, "train_seconds": train_seconds}
            last, prev = _last_paths(out, k, peer.name, comm.rank)
            if last.exists():
                # keep the previous epoch: a rank killed now may leave the others one epoch ahead
                os.replace(last, prev)
            torch_save_atomic(state, last)

    comm.where = "final evaluation"
    if peer.trainable and peer.tracker.best_state is not None:
        peer.tracker.restore_best(peer.model)
    peer.model.eval()
    vprobs = comm.gather_peers(predict(peer.model, Xva, config.eval_batch_size), training=False)
    Xte, yte = data.tensors("test", device)
    tprobs = comm.gather_peers(predict(peer.model, Xte, config.eval_batch_size), training=False)
    valid, test = [_scores(yva, p) for p in vprobs], [_scores(yte, p) for p in tprobs]
    ens_valid, ens_test = _scores(yva, vprobs.mean(0)), _scores(yte, tprobs.mean(0))
    mine = {"model": peer.name, "index": k, "trained": peer.trainable, "learns_from": peer.learns_from,
            "best_epoch": peer.tracker.best_epoch if peer.trainable else None,
            "hparams": dict(getattr(peer.model, "hparams", {})), "train_config": peer.config.to_dict()}
    comm.where = "gathering the results"
    stats = comm.stats()
    gathered = comm.gather_objects({"peer": mine, "stats": stats})
    result = {
        "mode": config.mode, "weight": config.weight, "divergence": config.divergence,
        "epochs": len(history), "seconds": time.perf_counter() - t0,
        "peers": [{**g["peer"], "valid_auc": valid[j]["auc"], "valid_logloss": valid[j]["logloss"],
                   "test_auc": test[j]["auc"], "test_logloss": test[j]["logloss"]}
                  for j, g in enumerate(gathered[::D])],
        "ensemble": {"valid_auc": ens_valid["auc"], "valid_logloss": ens_valid["logloss"],
                     "test_auc": ens_test["auc"], "test_logloss": ens_test["logloss"]},
        "history": history, "fingerprint": data.fingerprint, "dataset": data.dataset,
        "config": {kk: v for kk, v in dataclasses.asdict(config).items() if kk != "train"},
        "env": env_info(device, config.seed),
        "distributed": {**stats, "train_seconds": train_seconds,
                        "model_bytes_per_step": comm_bytes_per_step(P, config.batch_size, D,
                                                                    sum(p.numel() for p in peer.params)),
                        "per_rank": [g["stats"] for g in gathered]},
    }
    if out is not None:
        comm.where = "writing the results"
        if peer.trainable and comm.replica == 0:
            torch_save_atomic({"model_name": peer.name, "hparams": dict(peer.model.hparams),
                               "field_sizes": list(data.field_sizes), "fingerprint": data.fingerprint,
                               "train_config": peer.config.to_dict(), "state_dict": peer.model.state_dict(),
                               "epoch": peer.tracker.best_epoch, "metrics": result["peers"][k]},
                              _ckpt_dir(out, k, peer.name) / "best.pt")
        if comm.is_main:
            write_json_atomic(out / "result.json", result)
    return result


# ---------------------------------------------------------------- building this rank's peer


def _agree(comm: Comm, fn):
    """Run `fn` on every rank; if any rank raised a CtrkitError, every rank raises the first one
    (so a bad checkpoint on one host stops all ranks with the same message instead of a hang)."""
    try:
        value, err = fn(), None
    except CtrkitError as e:
        value, err = None, f"rank {comm.rank}: {e}"
    errors = [e for e in comm.gather_objects(err) if e]
    if errors:
        raise CtrkitError(errors[0])
    return value


def run_mutual_distributed(data, peers: Sequence[str] | str, init: str = "scratch", mode: str = "mutual",
                           ckpt_dir: str | Path | None = None, preset: str = "quick", epochs: int | None = None,
                           weight: float = 1.0, divergence: str = "mse", warmup_steps: int = 0, seed: int = 2021,
                           device: str = "auto", batch_size: int | None = None, finetune_lr_scale: float = 0.1,
                           finetune_epochs: int = 2, progress: bool = True, out_dir: str | Path | None = None,
                           comm: Comm | None = None, resume: bool = True) -> dict:
    """`ctrkit.mutual.run_mutual` with one peer per rank (group of ranks): same arguments, same
    result dict (plus `distributed`), on every rank. Each rank builds or loads only its own peer,
    with the seed the single-process run gives it (seed + k-1 for the k-th copy of a model)."""
    if comm is None:
        raise CtrkitError("run_mutual_distributed needs a Comm (see init_from_env)")
    names = check_run_args(peers, init, mode, weight, divergence)
    if len(names) != comm.layout.n_peers:
        raise CtrkitError(f"--peers lists {len(names)} models but the process layout has {comm.layout.n_peers}")
    fingerprints = comm.gather_objects(data.fingerprint)
    if len(set(fingerprints)) > 1:
        raise CtrkitError("the ranks read different datasets (feature-map fingerprints by rank: "
                          + ", ".join(f"{r}: {f}" for r, f in enumerate(fingerprints))
                          + "); every host needs the same processed --data")
    labels = peer_labels(names)
    k = comm.peer
    name, label = names[k], labels[k]
    from_ckpt = init == "pretrained" or (mode == "kd" and k == 0)
    peer_seed = seed + names[:k + 1].count(name) - 1
    dev = comm.device

    def build_mine():
        if from_ckpt:
            if ckpt_dir is None:
                raise CtrkitError(f"init {init!r} / mode {mode!r} needs --ckpt-dir (one `pretrain --out` folder per model)")
            path = checkpoint_path(ckpt_dir, label)
            if not path.is_file():
                raise CtrkitError(f"missing checkpoint {path} for peer {label} "
                                  f"(run `ctrkit pretrain --model {name} --out {path.parent}`)")
            load_checkpoint(path)  # readable, a ctrkit checkpoint
            model, meta = load_pretrained(path, dev, expect_fingerprint=data.fingerprint)
            tc = TrainConfig.from_dict(meta["train_config"])
            return model, tc.replace(lr=tc.lr * finetune_lr_scale), meta
        p = presets.get(name, preset, data.dataset, data.protocol)
        seed_everything(peer_seed)
        model = build(name, data.field_sizes, **p.model)
        return model, TrainConfig.from_dict({**p.train, "seed": seed}), None

    model, tc, meta = _agree(comm, build_mine)
    # every peer's train config on every rank: the run's batch size is peer 0's, its default
    # epochs the longest preset's, as in the single-process run
    trains = [TrainConfig.from_dict(t) for t in comm.gather_objects(tc.to_dict())[::comm.layout.replicas]]
    if epochs is None:
        epochs = finetune_epochs if init == "pretrained" else max(t.epochs for t in trains)
    cfg = MutualConfig(mode=mode, weight=0.0 if mode == "alone" else weight, divergence=divergence,
                       warmup_steps=warmup_steps, epochs=epochs, batch_size=batch_size or trains[0].batch_size,
                       seed=seed, device=str(dev), progress=progress, train=trains)
    pre = None
    if meta is not None:
        Xva, yva = data.tensors("valid", dev)
        Xte, yte = data.tensors("test", dev)
        pre = (_scores(yva, predict(model, Xva, cfg.eval_batch_size)), _scores(yte, predict(model, Xte, cfg.eval_batch_size)))
    mine = {"seed": peer_seed if meta is None else seed, "meta_path": meta["path"] if meta is not None else None,
            "pre": pre}
    everyone = comm.gather_objects(mine)[::comm.layout.replicas]
    result = mutual_fit_distributed(model, data, cfg, comm, out_dir=out_dir, resume=resume)
    for r, lab, e in zip(result["peers"], labels, everyone):
        pv, pt = e["pre"] if e["pre"] is not None else (None, None)
        r.update(label=lab, seed=e["seed"], init="pretrained" if e["meta_path"] else "scratch",
                 checkpoint=e["meta_path"], pretrained_valid_auc=pv["auc"] if pv else None,
                 pretrained_test_auc=pt["auc"] if pt else None, pretrained_test_logloss=pt["logloss"] if pt else None)
    result.update(init=init, seed=seed, preset=preset, protocol=data.protocol, labels=labels,
                  finetune_lr_scale=finetune_lr_scale if any(e["meta_path"] for e in everyone) else None)
    return result


def run_one_distributed(data, peers, init: str = "scratch", mode: str = "mutual", seed: int = 2021, store=None,
                        ckpt_dir: str | Path | None = None, preset: str = "quick", epochs: int | None = None,
                        device: str = "auto", weight: float = 1.0, divergence: str = "mse", warmup_steps: int = 0,
                        finetune_lr_scale: float = 0.1, finetune_epochs: int = 2, force: bool = False,
                        progress: bool = True, out_dir: str | Path | None = None,
                        comm: Comm | None = None) -> tuple[list[dict], bool]:
    """`ctrkit.experiments.run_one` across ranks: the same run key and store records; rank 0
    alone reads/appends the store (it decides "already done" for everyone). Returns (records,
    skipped) on every rank."""
    if comm is None:
        raise CtrkitError("run_one_distributed needs a Comm (see init_from_env)")
    names = experiments._peer_list(peers)
    config = dict(peers=peer_labels(names), init=init, mode=mode, seed=seed, preset=preset, epochs=epochs,
                  weight=0.0 if mode == "alone" else weight, divergence=divergence, warmup_steps=warmup_steps,
                  finetune_lr_scale=finetune_lr_scale if init == "pretrained" or mode == "kd" else None,
                  finetune_epochs=finetune_epochs if init == "pretrained" else None,
                  ckpt_dir=str(Path(ckpt_dir).resolve()) if ckpt_dir is not None and (init == "pretrained" or mode == "kd") else None)
    key = experiments.run_key(fingerprint=data.fingerprint, **config)
    st = experiments._store(store) if comm.is_main else None

    def done_records():
        if st is None or force:
            return None
        done = [r for r in st.records() if r.get("run_key") == key]
        return sorted(done, key=lambda r: r["peer_index"]) if done else None

    done = _agree(comm, done_records)
    done = comm.gather_objects(done)[0]  # rank 0's answer for everyone
    if done:
        return done, True
    # --force starts over: the resume checkpoints of an earlier attempt are not reused
    result = run_mutual_distributed(data, names, init=init, mode=mode, ckpt_dir=ckpt_dir, preset=preset,
                                    epochs=epochs, weight=weight, divergence=divergence, warmup_steps=warmup_steps,
                                    seed=seed, device=device, finetune_lr_scale=finetune_lr_scale,
                                    finetune_epochs=finetune_epochs, progress=progress, out_dir=out_dir, comm=comm,
                                    resume=not force)
    recs = experiments._records(result, key, config)
    for r in recs:
        r["distributed"] = {kk: v for kk, v in result["distributed"].items() if kk != "per_rank"}
    if st is not None:
        comm.where = "writing the results store"
        st.append(recs)
    return recs, False


def cli_mutual(args) -> dict | None:
    """`ctrkit mutual --distributed` under torchrun: the `--json` summary on rank 0, None elsewhere
    (only rank 0 prints)."""
    from ctrkit import data as data_mod

    peers = [p for p in str(args.peers).split(",") if p.strip()]
    comm = init_from_env(len(peers), device=args.device)
    try:
        d = _agree(comm, lambda: data_mod.load(args.data))  # a host without the data stops every rank
        records, skipped = run_one_distributed(
            d, peers, init=args.init, mode=args.mode, seed=args.seed, store=args.store, ckpt_dir=args.ckpt_dir,
            preset=args.preset, epochs=args.epochs, device=args.device, weight=args.weight,
            divergence=args.divergence, warmup_steps=args.warmup_steps, force=args.force,
            progress=not args.json, out_dir=args.out, comm=comm)
        if not comm.is_main:
            return None
        summary = experiments.summary(records)
        summary.update(skipped=skipped, store=args.store, distributed=records[0].get("distributed"))
        if skipped:
            print(f"already in {args.store} (run {summary['run_key']}); --force re-runs it", file=sys.stderr)
        if not args.json:
            for p in summary["peers"]:
                print(f"{p['label']:<10} test AUC {p['test_auc']:.6f} logloss {p['test_logloss']:.6f}")
            dd = summary["distributed"] or {}
            print(f"{'ensemble':<10} test AUC {summary['ensemble_test_auc']:.6f}  ({args.mode}, {args.init}, "
                  f"{summary['seconds']:.1f} s, {dd.get('world_size')} ranks, "
                  f"{dd.get('allgather_bytes_per_step', 0):,.0f} B gathered per step and rank)")
            return None
        return summary
    finally:
        shutdown()
