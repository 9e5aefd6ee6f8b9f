"""Randomness of a training run: every RNG's state (for resume), the per-peer dropout streams and
the seeded batch order."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

__all__ = ["dropout_seed", "uses_dropout", "epoch_batches", "rng_state", "set_rng_state"]


def dropout_seed(seed: int, step: int, peer: int = 0, replica: int = 0) -> int:
    """Seed of the dropout masks a model draws at global training step `step` (0-based, counted
    over epochs). Every model of a mutual run (`peer`) and every DDP replica gets its own stream, so
    masks don't depend on how many models share a process or in which order they run: `alone` peer
    0 equals `fit`, and `ctrkit.training.distributed` (one peer per rank) equals the single process step for
    step, dropout included. The trainers reseed before each forward of a model that has dropout."""
    return int(np.random.SeedSequence([seed, peer, replica, step]).generate_state(1, np.uint64)[0] >> 1)


def uses_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def epoch_batches(n: int, batch_size: int, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """One epoch of shuffled row indices, as views of one permutation drawn on the CPU generator
    (same order on every device), moved to `device` once. The last batch may be smaller."""
    perm = torch.randperm(n, generator=generator)
    return perm.to(device).split(batch_size)


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every RNG a training run draws from, in a form `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])],
             "generator": generator.get_state() if generator is not None else None,
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x
