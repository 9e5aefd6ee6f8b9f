"""Where the peers live, as a declared interface: `Exchange` (what the training loop calls to shard a
batch, gather the peers' probabilities and agree on bookkeeping) and `LocalExchange` (every peer in
this process). `ctrkit.training.distributed.DistExchange` is the other one: a peer per rank.

The loop keeps its own status ("epoch 3 step 120") and hands it to the calls that may fail for a
reason another process caused (`where=`), so a transport can name it in its error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

__all__ = ["Exchange", "LocalExchange"]


@runtime_checkable
class Exchange(Protocol):
    """The seam between the one training loop and where its peers live."""

    n_peers: int            # peers of the whole run
    replicas: int           # data-parallel replicas of each peer
    replica: int            # this process's replica index
    is_main: bool           # the process that logs and writes result.json / the store
    label: str              # appended to a peer's name in messages (" (rank 3)")
    resume_label: str       # what "resuming ..." names
    device: torch.device

    def shard(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This process's rows of a batch and the loss scale that keeps the full-batch gradient."""

    def gather(self, local: torch.Tensor, *, training: bool = True, where: str = "") -> torch.Tensor:
        """[P, b]: every peer's row from this process's [local peers, b]."""

    def gather_objects(self, items: list, *, where: str = "") -> list:
        """Every peer's item (peer order) from this process's local peers' items."""

    def broadcast(self, obj: Any) -> Any:
        """The main process's `obj` everywhere."""

    def agree(self, fn: Callable[[], Any], *, where: str = "") -> Any:
        """`fn()` everywhere; a CtrkitError in any process is raised in all."""

    def common_epochs(self, epochs: set[int]) -> set[int]:
        """The resumable epochs every process has."""

    def local_indices(self) -> list[int]:
        """The run indices of this process's peers."""

    def wrap(self, peer) -> None:
        """Prepare a peer for training here (DDP over its replicas)."""

    def step(self, peer, loss: torch.Tensor, *, where: str = "") -> None:
        """Backward and optimizer step of one peer."""

    def last_paths(self, out: Path, peers: Sequence) -> list[Path]:
        """Where this process's last checkpoint goes (the newest first)."""

    def layout(self) -> dict:
        """What must match on resume besides the settings."""

    def result_extra(self, train_seconds: float, peers: Sequence, batch_size: int) -> dict:
        """Extra result fields of this transport."""


class LocalExchange:
    """Every peer in this process: the batch is whole, gathering is stacking."""

    replicas, replica, is_main, label, resume_label = 1, 0, True, "", "the run"

    def __init__(self, n_peers: int, device: torch.device):
        self.n_peers, self.device = n_peers, device

    def shard(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        return idx, 1.0

    def gather(self, local: torch.Tensor, *, training: bool = True, where: str = "") -> torch.Tensor:
        return local  # [P, b] already

    def gather_objects(self, items: list, *, where: str = "") -> list:
        return list(items)

    def broadcast(self, obj: Any) -> Any:
        return obj

    def agree(self, fn: Callable[[], Any], *, where: str = "") -> Any:
        return fn()

    def common_epochs(self, epochs: set[int]) -> set[int]:
        return epochs

    def local_indices(self) -> list[int]:
        return list(range(self.n_peers))

    def wrap(self, peer) -> None:
        """Nothing to wrap: the peer has no replicas."""

    def step(self, peer, loss: torch.Tensor, *, where: str = "") -> None:
        peer.step(loss)

    def last_paths(self, out: Path, peers: Sequence) -> list[Path]:
        return [out / "last.pt"]

    def layout(self) -> dict:
        return {}

    def result_extra(self, train_seconds: float, peers: Sequence, batch_size: int) -> dict:
        return {}
