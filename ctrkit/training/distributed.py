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

This module is the transport only: `DistExchange` is the seam the one training loop
(`ctrkit.training.loop.train_peers`, via `ctrkit.training.mutual.mutual_fit(..., exchange=...)`) calls to shard a
batch, gather the peers' probabilities and agree on bookkeeping. Every rank draws the same batch
order from the same seed, takes its shard (`shard_of`) and scales its loss by |shard|*D/B so that
DDP's gradient average over the replicas is exactly the full-batch gradient. With D = 1 this is
the single process, step for step (tested to float tolerance), dropout included: every peer draws
its masks from its own stream (`ctrkit.training.rng.dropout_seed`).

Per step and rank the only traffic outside DDP is one all_gather of b = B/D floats per peer:
(P-1)*b*4 bytes received (`Comm.stats` counts what is actually gathered). Evaluation gathers
each peer's validation/test predictions once per epoch for the ensemble metrics.

Checkpoints: every rank writes its own `<out>/<k>_<Model>/last.rank<r>.pt` atomically after
each epoch, keeping the previous one as `.prev.pt`; a relaunch with the same `--out` (e.g. by
`torchrun --max-restarts`, or by hand after a rank died) resumes every rank from the newest epoch
that all ranks have (`--force` starts over). Rank 0 alone writes result.json and the results store
(`ctrkit.experiments.runs`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ctrkit.training.loop import Peer
from ctrkit.core.utils import CtrkitError

__all__ = ["Layout", "Comm", "DistExchange", "shard_of", "comm_bytes_per_step", "init_from_env", "shutdown",
           "TIMEOUT_ENV", "DEFAULT_TIMEOUT_S", "MAX_TIMEOUT_S"]

# Collective timeout: a rank that died or hangs turns into an error on the others after this long
# instead of a silent hang. The CLI has no flag for it (yet): set the environment variable.
TIMEOUT_ENV = "CTRKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
# Longer is no timeout at all, and far longer overflows: timedelta raises on inf/1e300, gloo's
# nanosecond count turns negative near 1e11 s. 30 days was checked to work with gloo.
MAX_TIMEOUT_S = 30 * 24 * 3600.0
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
    source = ""  # names the variable in the error when the value came from it
    if timeout_s is not None:
        value = timeout_s
    else:
        text = os.environ.get(TIMEOUT_ENV, "")
        source = f"{TIMEOUT_ENV}={text!r}: " if text else ""
        try:
            value = float(text) if text else DEFAULT_TIMEOUT_S
        except ValueError:
            raise CtrkitError(f"{TIMEOUT_ENV}={text!r}: expected seconds (a number > 0)") from None
    if not 0 < value <= MAX_TIMEOUT_S:  # also refuses nan and inf
        raise CtrkitError(f"{source}distributed timeout must be > 0 seconds and at most {MAX_TIMEOUT_S:.0f} "
                          f"(30 days), got {value!r}")
    return float(value)


def _env_int(name: str, default: str | None = None) -> int:
    text = os.environ.get(name, default)
    try:
        return int(text)
    except (TypeError, ValueError):
        raise CtrkitError(f"{name}={text!r}: expected an integer (torchrun sets it)") from None


def _ranks_from_env() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK), checked now: a rank outside the world would otherwise wait
    out the whole rendezvous timeout for ranks that never come."""
    rank, world, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK", "0")
    if world < 1:
        raise CtrkitError(f"WORLD_SIZE={world}: expected at least 1 process")
    if not 0 <= rank < world:
        raise CtrkitError(f"RANK={rank}: expected 0..{world - 1} (WORLD_SIZE={world})")
    if local_rank < 0:
        raise CtrkitError(f"LOCAL_RANK={local_rank}: expected an integer >= 0")
    return rank, world, local_rank


_CPP_FRAME_LINES = (b"Exception raised from ", b"frame #", b"<omitting python frames>")


@contextlib.contextmanager
def _without_cpp_frames():
    """Keep torch's C++ stack frames out of stderr for the block, every other line kept (written
    after it). c10d logs each failed rendezvous try (a rank up before the store, a timeout) with its
    exception's ~40 frames; TORCH_SHOW_CPP_STACKTRACES=0 does not reach those log lines, and
    TORCH_CPP_LOG_LEVEL is read once when torch loads and would silence every later C++ error too.
    A file, not a pipe: nothing can block on a full buffer."""
    try:
        tmp = tempfile.TemporaryFile()
    except OSError:  # no room for it: the frames are noise, not a reason to fail the join
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().splitlines(keepends=True)
                    if ln.strip() and not ln.startswith(_CPP_FRAME_LINES)]
            with os.fdopen(2, "wb", closefd=False) as err:
                err.write(b"".join(kept))


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
    rank, world, local_rank = _ranks_from_env()
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
            with _without_cpp_frames():
                dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout),
                                        **kwargs)
        except (RuntimeError, ValueError) as e:
            raise CtrkitError(f"rank {rank}: cannot join the process group at {os.environ['MASTER_ADDR']}:"
                              f"{os.environ['MASTER_PORT']} ({backend}): {str(e).strip().splitlines()[0][:300]}") from None
    return Comm(layout, rank, local_rank, dev, backend, timeout)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- the seam the training loop calls


class DistExchange:
    """The `ctrkit.training.exchange.Exchange` interface over a Comm: this rank trains one peer
    (`comm.peer`) on its shard of every batch and gathers the others' probabilities. The loop's
    `where` (epoch, step) goes into the Comm before each collective, for the error if a rank vanishes."""

    def __init__(self, comm: Comm):
        self.comm, self.device = comm, comm.device
        self.n_peers, self.replicas, self.replica = comm.layout.n_peers, comm.layout.replicas, comm.replica
        self.is_main = comm.is_main
        self.label = f" (rank {comm.rank})"

    @property
    def resume_label(self) -> str:
        return f"all {self.comm.layout.world_size} ranks"

    def local_indices(self) -> list[int]:
        return [self.comm.peer]

    def wrap(self, peer: Peer) -> None:
        """DDP over the peer's replicas (its gradient all-reduce); nothing to do with one replica."""
        if peer.trainable and self.replicas > 1:
            peer.train_forward = nn.parallel.DistributedDataParallel(
                peer.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                process_group=self.comm.peer_group)

    def shard(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        return shard_of(idx, self.replicas, self.replica)

    def _at(self, where: str) -> None:
        if where:  # what the rank is doing, for the error message if a peer vanishes
            self.comm.where = where

    def gather(self, local: torch.Tensor, *, training: bool = True, where: str = "") -> torch.Tensor:
        self._at(where)
        return self.comm.gather_peers(local[0], training=training)

    def gather_objects(self, items: list, *, where: str = "") -> list:
        self._at(where)
        # replicas of a peer hold identical weights and see the same validation set: replica 0
        # speaks for the peer
        return [g[0] for g in self.comm.gather_objects(items)[::self.replicas]]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        return self.comm.gather_objects(obj)[0]

    def agree(self, fn: Callable[[], Any], *, where: str = "") -> Any:
        self._at(where)
        return agree(self.comm, fn)

    def common_epochs(self, epochs: set[int]) -> set[int]:
        return set.intersection(*[set(e) for e in self.comm.gather_objects(sorted(epochs))])

    def step(self, peer: Peer, loss: torch.Tensor, *, where: str = "") -> None:
        self._at(where)
        try:  # with D > 1 the backward all-reduces gradients: a lost replica surfaces here
            peer.step(loss)
        except RuntimeError as e:
            if self.replicas > 1 and any(m in str(e).lower() for m in _LOST_MARKERS):
                raise self.comm._failed(e) from None
            raise

    def last_paths(self, out: Path, peers: Sequence[Peer]) -> list[Path]:
        d = out / f"{peers[0].index}_{peers[0].name}"
        return [d / f"last.rank{self.comm.rank}.pt", d / f"last.rank{self.comm.rank}.prev.pt"]

    def layout(self) -> dict:
        return {"world_size": self.comm.layout.world_size, "n_peers": self.n_peers, "peer": self.comm.peer}

    def result_extra(self, train_seconds: float, peers: Sequence[Peer], batch_size: int) -> dict:
        self._at("gathering the results")
        stats = self.comm.stats()
        per_rank = self.comm.gather_objects(stats)
        n_params = sum(p.numel() for p in peers[0].params)
        return {"distributed": {**stats, "train_seconds": train_seconds, "per_rank": per_rank,
                                "model_bytes_per_step": comm_bytes_per_step(self.n_peers, batch_size, self.replicas,
                                                                            n_params)}}


def agree(comm: Comm, fn):
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
