"""Run-level worker processes: independent jobs of one grid (runs, baselines) spread over processes.

On the CPU a run trains on `threads` cores (1 in the synthetic profiles), so on a machine with more
cores the others idle while a grid's runs go one after another; replicas (`ctrkit.training.replicas`)
do not help there (measured slower). Each worker process trains whole runs with the sequential code,
so a run's result is the one it gives alone (same seed, same threads: the same numbers) and the
grid's tables do not depend on `workers`. Jobs start in a given order (the longest first: no long
job is left to run alone at the end) and the parent appends their records to the results store in
the jobs' order (`run_jobs(first=..., record=...)`), as the sequential path writes them, so a worker
that finishes early goes on to its next job instead of waiting for its turn. A run claimed in the
store while it trains stays claimed, by the worker, until the parent has recorded it
(`hold_until_recorded`): another notebook that wants the same run waits, then finds it done.

`default_workers` is the one rule for `workers="auto"`. Processes start from a forkserver, not by
fork: the parent is often a Jupyter kernel with threads of its own, and a fork copies their locks in
whatever state they are in. The dataset is sent to each worker once (the pool's initializer); a
worker reads its splits from disk itself. A model the parent `register`ed goes with every job as the
reference a worker imports it by (`run_jobs(models=...)`, `ctrkit.models.reference`); a package's
entry points each worker loads itself. The pool outlives a grid: the next grid on the same dataset
object and worker count (a notebook runs several) reuses its warm workers instead of starting new
ones and loading the splits again (`shutdown` ends it; a failure or an interrupt ends it at once;
idle, it holds the workers' copies of the splits until then). As with any spawn/forkserver process,
a worker imports the parent's main module first: a script (not a notebook) that runs a grid with
workers > 1 needs the `if __name__ == "__main__":` guard.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Sequence

from ctrkit.core.utils import CtrkitError, as_int, cpu_slots, die_with_parent, resolve_device

__all__ = ["InOrder", "check_workers", "default_workers", "hold_until_recorded", "resolve_workers", "run_jobs",
           "shutdown"]

# Imported once by the forkserver, so each worker forks from a process that has torch and ctrkit loaded
# (a bare spawn re-imports torch per worker); torch._dynamo too: torch.optim imports it on a process's
# first optimizer, which made every worker's first run ~1.3 s slower.
_PRELOAD = ["ctrkit.experiments.runs", "torch._dynamo"]
_DATA: Any = None  # the dataset of this worker process, set by `_init`
# The pool's shared (Condition, Value): how many of the pool's jobs, numbered over all its calls, the
# parent has recorded. In a worker: the number of the job it runs now, and the claims it holds until
# the parent has recorded their job (number -> ExitStack). None / empty outside a worker.
_ORDER: Any = None
_SERIAL: int | None = None
_HELD: dict[int, contextlib.ExitStack] = {}
_RELEASER: threading.Thread | None = None
# In the parent: the warm pool of the last grid, (key, pool, order, data); the data is held so that the
# key's id() cannot be reused by another object while the pool lives.
_WARM: tuple | None = None


def check_workers(workers) -> int | str:
    """`workers` as given when valid (a positive int or "auto"); one-line CtrkitError otherwise."""
    if isinstance(workers, str) and workers.strip().lower() == "auto":
        return "auto"
    n = as_int(workers)
    if n is None or n < 1:
        raise CtrkitError(f"workers must be a positive int or 'auto', got {workers!r}")
    return n


def default_workers(device: str, threads) -> int:
    """`workers="auto"`: 1 on CUDA (there a grid's seeds batch as replicas instead); on the CPU the
    usable cores (affinity, cgroup quota) divided by each run's `threads`, at least 1. `threads`
    "auto"/None means one run takes the free cores itself (`ctrkit.core.utils.resolve_threads`), so
    it leaves nothing to spread: 1 worker (several workers each taking "all free cores" would
    oversubscribe the machine)."""
    return 1 if resolve_device(device).type == "cuda" else cpu_slots(threads)


def resolve_workers(workers, device: str, threads, jobs: int) -> int:
    """The number of processes for `jobs` independent jobs: `workers` (or `default_workers` for
    "auto"), never more than the jobs."""
    workers = check_workers(workers)
    n = default_workers(device, threads) if workers == "auto" else workers
    return max(1, min(n, jobs))


def _portable(data):
    """The dataset without its cache of loaded tensors (a worker loads its own)."""
    return dataclasses.replace(data) if dataclasses.is_dataclass(data) else data


def _init(data, order) -> None:
    global _DATA, _ORDER
    _release_forkserver()
    die_with_parent()  # the forkserver, which ends with the process that started it
    # Ctrl-C / a kernel's interrupt or shutdown signals the whole process group: the parent ends the
    # pool (`run_jobs` terminates its workers), while an idle warm worker would print a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a broken installed model: the parent said so once when it looked its models up; N workers would repeat it
    warnings.filterwarnings("ignore", message="models: entry point ")
    _DATA, _ORDER = data, order


def _release_forkserver() -> None:
    """Close this worker's copy of the forkserver's keep-alive pipe. The forkserver exits when every
    holder of that pipe has closed it, and multiprocessing gives one to each process it forks: with
    the copies held, a killed parent (kill -9 of a run, a kernel that died) left the forkserver waiting
    on its idle workers and the workers waiting on it (`die_with_parent`) for good. Released, the
    forkserver ends with the parent and its end ends the workers. (A worker starts no processes.)"""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        os.close(fd)
        server._forkserver_alive_fd = None


def hold_until_recorded(claims: contextlib.ExitStack) -> None:
    """In a worker: keep `claims` (the job's runs' claims in the store, taken off their `with` by
    `ExitStack.pop_all`) until the parent has recorded the job (`run_jobs`), then close them, from a
    thread of the worker, while it runs its next jobs: a run stays claimed until its records are in
    the store, so an identical run elsewhere waits and then finds it done. Anywhere else: close them now."""
    global _RELEASER
    if _ORDER is None or _SERIAL is None:
        claims.close()
        return
    with _ORDER[0]:
        _HELD[_SERIAL] = claims
    if _RELEASER is None:
        _RELEASER = threading.Thread(target=_release_recorded, name="ctrkit-claims", daemon=True)
        _RELEASER.start()


def _release_recorded() -> None:
    """The worker's thread that closes held claims once the parent has recorded their jobs."""
    cond, recorded = _ORDER
    while True:
        with cond:
            cond.wait_for(lambda: any(n < recorded.value for n in _HELD))
            due = [_HELD.pop(n) for n in sorted(_HELD) if n < recorded.value]
        for claims in due:
            claims.close()


def _call(fn: Callable, args: tuple, serial: int, models: tuple = (), paths: tuple = ()) -> tuple[bool, Any]:
    """`fn(data, *args)`, the pool's job number `serial`, in a worker, after registering `models`
    (`ctrkit.models.reference`s) with the parent's import path `paths`: (True, its result) or (False,
    the error in one line)."""
    global _SERIAL
    _SERIAL = serial
    try:
        _know(models, paths)
        return True, fn(_DATA, *args)
    except Exception as e:  # noqa: BLE001 - any failure comes back as one line; the parent raises it
        line = (str(e).strip().splitlines() or [""])[0]
        return False, f"{type(e).__name__}: {line}" if not isinstance(e, CtrkitError) else line


def _know(models: tuple, paths: tuple) -> None:
    """Register the parent's models in this worker. They come with each job, not once with the pool:
    a warm pool serves the next grid, which may hold a model registered since. The parent's import
    path comes with them (appended, the worker's own first): a folder it added since the pool
    started (a notebook's `sys.path.append`) holds the module as much as the one it had then."""
    if not models:
        return
    from ctrkit.models import register_reference

    sys.path.extend(p for p in paths if p not in sys.path)
    for ref in models:
        register_reference(ref)


def _context():
    import torch.multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # only before the forkserver's first start; harmless after
    return ctx


def _pool(data, workers: int) -> tuple[ProcessPoolExecutor, Any]:
    """The warm pool for (`data`, `workers`), or a new one (ending a warm pool of other data)."""
    global _WARM
    key = (id(data), getattr(data, "path", None), getattr(data, "fingerprint", None), workers)
    if _WARM is not None and _WARM[0] == key:
        return _WARM[1], _WARM[2]
    shutdown()
    ctx = _context()
    order = (ctx.Condition(), ctx.Value("q", 0, lock=False))  # the Value is guarded by the Condition
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init,
                               initargs=(_portable(data), order))
    _WARM = (key, pool, order, data)
    return pool, order


def shutdown(terminate: bool = False) -> None:
    """End the warm pool, if any (`terminate`: without waiting for its running jobs)."""
    global _WARM
    if _WARM is None:
        return
    pool, _WARM = _WARM[1], None
    if terminate:
        _terminate(pool)
    pool.shutdown(wait=True, cancel_futures=True)


def run_jobs(fn: Callable, jobs: Sequence[tuple], data, workers: int, *, names: Sequence[str],
             first: Sequence[int] | None = None, record: Callable[[int, Any], None] | None = None,
             models: Sequence[tuple] = ()) -> Iterator[tuple[int, Any]]:
    """`fn(data, *jobs[i])` for every job on `workers` processes, started in the order `first` (every
    index once; None: the jobs' order; e.g. the longest first, so that no long job is left to run
    alone at the end), yielded as (i, result) as each finishes. `record(i, result)` is called here in
    the jobs' order (`InOrder`: job i's as soon as every earlier one's is in), so a store gets the
    records as the sequential path writes them (some tables sum over the store's rows in order: their
    last float digit would otherwise follow which worker finished first) while no worker waits for
    its turn; after it, the claims job i's worker holds are freed (`hold_until_recorded`). `models`:
    the `ctrkit.models.reference`s of the models registered here that the jobs build. A failed
    job: the jobs not started are cancelled, those running finish, then CtrkitError naming
    `names[i]` and the error. Interrupted (KeyboardInterrupt, or the caller stops iterating): the
    workers are terminated. The pool stays warm for the next call on the same `data` object
    (`shutdown`)."""
    order = list(range(len(jobs))) if first is None else list(first)
    if sorted(order) != list(range(len(jobs))):
        raise ValueError(f"first must list every job index once, got {order!r}")
    pool, (cond, recorded) = _pool(data, workers)
    with cond:
        base = recorded.value  # every job of an earlier call was recorded (or its pool ended)
    due, clean = InOrder(), False
    try:
        known = (tuple(models), tuple(sys.path) if models else ())
        futures = {pool.submit(_call, fn, tuple(jobs[i]), base + i, *known): i for i in order}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=futures.get):
                i = futures[fut]
                ok, value = _outcome(fut)
                if not ok:
                    shutdown()
                    clean = True
                    raise CtrkitError(f"{names[i]} failed in a worker process: {value}")
                ready = due.put(i, value)
                _record_due(ready, record, cond, recorded, base + due.next)
                yield i, value
        clean = True
    finally:
        if not clean:
            shutdown(terminate=True)


def _record_due(ready: list[tuple[int, Any]], record: Callable | None, cond, recorded, upto: int) -> None:
    """`record` the jobs now due, then tell the workers which are recorded (their held claims close)."""
    for j, value in ready:
        if record is not None:
            record(j, value)
    if ready:
        with cond:
            recorded.value = upto
            cond.notify_all()


class InOrder:
    """Results that arrive in any order, handed on in their jobs' order: `put(i, value)` returns the
    (index, value) pairs now due, i.e. job i's and any held ones that it unblocks."""

    def __init__(self) -> None:
        self.next, self.held = 0, {}

    def put(self, i: int, value: Any) -> list[tuple[int, Any]]:
        self.held[i] = value
        due = []
        while self.next in self.held:
            due.append((self.next, self.held.pop(self.next)))
            self.next += 1
        return due


def _outcome(fut) -> tuple[bool, Any]:
    try:
        return fut.result()
    except BrokenProcessPool:
        return False, ("a worker process died (killed, out of memory, or started from a script without the "
                       "`if __name__ == \"__main__\":` guard that processes started by spawn/forkserver need)")
    except Exception as e:  # noqa: BLE001 - e.g. a result that cannot be sent back
        return False, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now (their runs' claims are flocks, freed when they die; nothing is recorded)."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        if p.is_alive():
            p.terminate()
