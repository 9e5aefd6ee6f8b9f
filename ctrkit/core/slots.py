"""Training slots shared by the processes of one reproduction: no more runs train at once than the cores hold.

`ctrkit reproduce` with several notebooks at once runs each notebook's grid on worker processes
(`workers="auto"`: one per core), so two notebooks on two cores would train in four processes, and
four training processes on two cores do less per second than two (cache and scheduler churn,
`bench/bench_concurrency.py`). The runner makes a folder with one lock file per slot (`create`) and
names it to its kernels in `CTRKIT_SLOTS`; a process holds one slot, an OS lock (flock, freed if the
process dies), while it trains a group of runs (`held`). The kernel of the notebook heading the
longest chain of work gets `CTRKIT_SLOTS_FIRST=1`: while one of its processes waits for a slot, the
others leave a freed slot to it (as `runner.BACKGROUND_NICENESS` leaves it the CPU).

A slot is held only around training: the store's run claims are taken before, the in-order append
(`workers.in_turn`) waits after, so no process waits for anything while it holds a slot and a slot
cannot deadlock. Slots decide when a run trains, never what it computes. Without `CTRKIT_SLOTS` (a
notebook in JupyterLab, `--jobs 1`, the CLI) `held` does nothing.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

from ctrkit.core.utils import CtrkitError

try:
    import fcntl
except ImportError:  # no flock (Windows): no slots, every process trains when it is ready
    fcntl = None

__all__ = ["ENV", "FIRST_ENV", "create", "held"]

ENV, FIRST_ENV = "CTRKIT_SLOTS", "CTRKIT_SLOTS_FIRST"
_GATE = "first-waiting"  # shared-locked by each waiting process of the first notebook
_POLL_S = 0.01  # a run trains for seconds; a 10 ms look for a freed slot costs nothing beside that
_depth = 0  # slots held by this process (a nested `held` takes none)


def create(folder: str | Path, n: int) -> Path:
    """A new slots folder with `n` slots; the caller names it in `ENV` to the processes it starts and
    removes it when they are done."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=False)
        for name in [_GATE, *(f"slot-{k}" for k in range(max(1, n)))]:
            (folder / name).touch()
    except OSError as e:
        raise CtrkitError(f"training slots {folder}: {e.strerror or e}") from None
    return folder


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold one training slot of `CTRKIT_SLOTS` for the block, waiting for a free one first (the
    first notebook's processes before the others); nothing without the variable or when this
    process holds one already."""
    global _depth
    folder = os.environ.get(ENV)
    if not folder or fcntl is None or _depth:
        yield
        return
    fd = _acquire(Path(folder), os.environ.get(FIRST_ENV) == "1")
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        os.close(fd)  # frees the slot


def _acquire(folder: Path, first: bool) -> int:
    """The descriptor of a slot this process now holds."""
    try:
        paths = sorted(folder.glob("slot-*"))
        gate = os.open(folder / _GATE, os.O_RDONLY)
    except OSError as e:
        raise CtrkitError(f"training slots {folder} (from ${ENV}): {e.strerror or e}") from None
    if not paths:
        os.close(gate)
        raise CtrkitError(f"training slots {folder} (from ${ENV}): no slot-* files")
    try:
        if first:
            fcntl.flock(gate, fcntl.LOCK_SH)  # waits at most while another process looks at the gate
        while True:
            if first or _none_first_waiting(gate):
                fd = _take_free(paths)
                if fd is not None:
                    return fd
            time.sleep(_POLL_S)
    finally:
        os.close(gate)  # a first process's shared lock goes with it


def _none_first_waiting(gate: int) -> bool:
    try:
        fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(gate, fcntl.LOCK_UN)
    return True


def _take_free(paths: list[Path]) -> int | None:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise CtrkitError(f"training slot {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
    return None
