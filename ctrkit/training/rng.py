"""Randomness of a training run: every RNG's state (for resume), the per-peer dropout streams and
the seeded batch order."""
from __future__ import annotations

import random
import zlib

import numpy as np
import torch
from torch import nn

__all__ = ["dropout_seed", "dropout_stream", "uses_dropout", "epoch_batches", "rng_state", "set_rng_state"]


def dropout_stream(name: str, occurrence: int = 1) -> tuple[int, int]:
    """The dropout stream of a peer: its model's name and which of the run's models of that name it
    is (1: the first; a run's labels say it, "DeepFM_2" -> 2). Not its position: DeepFM draws the same
    masks alone in DeepFM+DCN, in DCN+DeepFM and in the four-model run, so an alone control from any
    peer set is the same training as the one in the treatment's own set (`ctrkit.analysis.pairing`
    pairs across peer sets). A stable checksum of the name, not `hash()` (salted per process)."""
    return zlib.crc32(name.encode()), int(occurrence)


def dropout_seed(seed: int, step: int, stream: tuple[int, int] = (0, 1), replica: int = 0) -> int:
    """Seed of the dropout masks a model draws at global training step `step` (0-based, counted
    over epochs). Every model of a mutual run (`stream`: `dropout_stream`) and every DDP replica gets its
    own stream, so masks don't depend on how many models share a process, in which order they run or
    which other models they train with: `alone` DeepFM equals `fit` of it, and
    `ctrkit.training.distributed` (one peer per rank) equals the single process step for step, dropout
    included. The trainers reseed before each forward of a model that has dropout."""
    return int(np.random.SeedSequence([seed, *stream, replica, step]).generate_state(1, np.uint64)[0] >> 1)


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
