"""`ctrkit reproduce`: run the notebooks with papermill (in order, or `jobs` at a time as a dependency
graph), collect tables and figures, index them.

A notebook already run with the same parameters, profile sizes and notebook file (its `.done` marker
holds their hash) is skipped; a failing one stops the run with one line naming the notebook and cell.

Output layout (everything under OUT):
    data/<dataset>/            processed data (synthetic for smoke/quick, prepared from --data for full)
    <dataset>/pretrained/      pretrained checkpoints from 01, reused by 02-04, 07 and the widget
    <dataset>/store.jsonl      the results store (one record per peer per run); results.csv its export
    tables/<dataset>_*.csv|md  every table          figures/<dataset>_*.png|svg   every figure
    notebooks/<dataset>/<nb>.ipynb  the executed notebooks 00-04 and 07; notebooks/<nb>.ipynb  05 and 06 (run once)
    notebooks/.../<nb>.kernel.log   what its kernel (and the processes it started) printed
    .done/<job>.json           marker of a finished notebook with the hash of its parameters
    index.md, index.html       links to all of the above
"""
from __future__ import annotations

import hashlib
import html
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ctrkit.core import owned
from ctrkit.core.owned import owned_path
from ctrkit.core.utils import CtrkitError, atomic_path, die_with_parent, sha256_file, write_json_atomic
from ctrkit.notebook import profiles
from ctrkit.notebook.outputs import WRITTEN, adopt_legacy, outputs
from ctrkit.notebook.profiles import (DATASETS, NOTEBOOK_DIR, NOTEBOOKS, ONCE, PER_DATASET, PROFILES,
                                      SCHEMA_SUFFIXES, SMALL_DATASETS)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Job:
    notebook: str
    dataset: str
    parameters: dict

    @property
    def name(self) -> str:
        return f"{self.dataset}_{self.notebook}" if self.notebook in PER_DATASET else self.notebook

    def executed(self, out: Path) -> Path:
        """Where the executed notebook lands: OUT/notebooks/<dataset>/<nb>.ipynb for 00-04 and 07, and
        OUT/notebooks/<nb>.ipynb for 05/06, which run once (on the first dataset)."""
        folder = out / "notebooks" / self.dataset if self.notebook in PER_DATASET else out / "notebooks"
        return folder / f"{self.notebook}.ipynb"

    def kernel_log(self, out: Path) -> Path:
        """Where its kernel's stdout and stderr go: beside the executed notebook, `<nb>.kernel.log`."""
        return self.executed(out).with_name(f"{self.notebook}.kernel.log")


def plan(*, dataset: str = "both", profile: str = "quick", data: str | None = None, out: str = "results",
         device: str = "auto", amp: str | None = None, seeds: Sequence[int] | None = None) -> list[Job]:
    """The notebook runs of a reproduction, in order, each with its papermill parameters (`amp` and
    `seeds` only when they override the profile's, so outputs made without them still count as done)."""
    profiles.profile(profile)
    if dataset not in (*DATASETS, *SMALL_DATASETS, "both") and not str(dataset).endswith(SCHEMA_SUFFIXES):
        raise CtrkitError(f"--dataset {dataset!r}; valid: {', '.join(DATASETS + SMALL_DATASETS)}, both, "
                          f"or a schema file (.yaml)")
    if str(dataset).endswith(SCHEMA_SUFFIXES):
        if not data:
            raise CtrkitError(f"--dataset {dataset}: a schema file describes your own data: --data FILE_OR_DIR is required")
        dataset = str(Path(dataset).resolve())
    datasets = list(DATASETS) if dataset == "both" else [dataset]
    if profile == "full" and not data:
        raise CtrkitError("--profile full is the BARS protocol on real data: --data DIR is required "
                          "(a processed dataset dir or raw files; with --dataset both, DIR/criteo and DIR/avazu)")
    out = str(Path(out).resolve())
    jobs, skip = [], set(PROFILES[profile].get("skip") or [])  # notebooks the profile leaves out
    for ds in datasets:
        data_dir = None
        if data:
            data_dir = Path(data).resolve()
            if len(datasets) > 1:
                data_dir = data_dir / ds
            if not data_dir.exists():
                raise CtrkitError(f"--data: {data_dir} does not exist"
                                  + (" (with --dataset both, --data DIR needs DIR/criteo and DIR/avazu)"
                                     if len(datasets) > 1 else ""))
            data_dir = str(data_dir)
        params = {"dataset": ds, "data_dir": data_dir, "profile": profile, "device": device, "out": out,
                  **({"amp": amp} if amp is not None else {}), **({"seeds": list(seeds)} if seeds else {})}
        name = _schema_name(ds) if ds.endswith(SCHEMA_SUFFIXES) else ds
        jobs += [Job(nb, name, dict(params)) for nb in PER_DATASET if nb not in skip]
    # Dataset-independent notebooks run once, on the first dataset (06 needs its data and checkpoints).
    first = jobs[0].parameters
    jobs += [Job(nb, first["dataset"], dict(first)) for nb in ONCE]
    return jobs


def _schema_name(path: str) -> str:
    from ctrkit.data import load_schema

    return load_schema(path).name


def _notebook_path(name: str, notebooks_dir: Path) -> Path:
    path = notebooks_dir / f"{name}.ipynb"
    if not path.exists():
        raise CtrkitError(f"notebook {path} is missing (run from a full clone of ctrkit)")
    return path


@dataclass(frozen=True, kw_only=True)
class Reproduction:
    """What `ctrkit reproduce` is asked for: the notebooks' parameters and what to do with the results."""

    dataset: str = "both"
    profile: str = "quick"
    data: str | None = None
    out: str = "results"
    device: str = "auto"
    amp: str | None = None  # the runs' precision (None: the profile's; `reproduce.settings` checks it)
    seeds: Sequence[int] | None = None  # every run's seeds (None: the profile's)
    figures: str | None = None  # also copy the figures (and the Markdown tables) here
    force: bool = False  # re-run the notebooks already done with the same parameters
    only: Sequence[str] | None = None  # run only these notebooks of the plan
    jobs: int | str = "auto"  # notebooks run at once (their dependencies allowing): see `parallel_jobs`; 1: in order


def run(request: Reproduction, *, progress: bool = True, notebooks_dir: str | Path | None = None,
        log=print, progress_every: float | None = 60.0) -> dict:
    """Run the notebooks of `plan()` with papermill; skip those already done with the same parameters.

    With `request.jobs` 1 they run one after another in plan order; with more, as a dependency graph
    (`NEEDS`), up to that many at once, each in a worker process (papermill's progress bar
    off: two would garble each other).
    Before a dataset's first training notebook it logs the estimated time of the ones left to run
    (`estimate_line`), and every `progress_every` seconds of a notebook the runs recorded of those
    planned (None: no progress lines).
    A failing notebook raises CtrkitError naming the notebook, the cell and the error (with jobs > 1:
    the first failure, after the notebooks still running finished; nothing new starts); the partly
    executed notebook is kept as <name>.failed.ipynb and finished notebooks stay done.
    Returns {"out", "index", "tables", "figures", "notebooks", "ran", "skipped", "seconds"}.
    """
    from ctrkit.core.extras import check
    from ctrkit.core.utils import resolve_device

    # the notebooks run in papermill and draw with seaborn; 06 builds the widget: one line before anything
    check("notebooks", "papermill", "ipywidgets", "seaborn", "markdown", what="`ctrkit reproduce`")
    device = resolve_device(request.device)  # fail early on --device cuda without CUDA
    nb_dir = Path(notebooks_dir) if notebooks_dir else NOTEBOOK_DIR
    out_dir = Path(request.out).resolve()
    sizes = PROFILES[request.profile]
    jobs = parallel_jobs(request.jobs, sizes, device.type)
    planned = _jobs(request)  # a bad plan (an unknown dataset) fails before the folder is made
    if request.figures and Path(request.figures).exists() and not Path(request.figures).is_dir():
        raise CtrkitError(f"--figures {request.figures}: is a file, not a folder")  # now, not after the notebooks
    _claim_out(out_dir)
    _remove_killed_writers_temp(out_dir)
    _check_outputs(out_dir)
    todo = _todo(planned, nb_dir, out_dir, sizes, force=request.force)
    t0, steps = time.perf_counter(), _Steps(todo, out_dir, sizes, log, progress_every)
    if jobs == 1:
        ran, skipped = _run_in_order(steps, progress=progress)
    else:
        ran, skipped = _run_graph(steps, jobs)
        _variants_summary_again([todo[i][0] for i in ran])
    result = write_index(out_dir, profile=request.profile)
    if request.figures:
        result["copied_figures"] = copy_figures(out_dir / "figures", request.figures, tables_src=out_dir / "tables")
    result.update(ran=[todo[i][0].name for i in ran], skipped=skipped, seconds=round(time.perf_counter() - t0, 1))
    return result


@dataclass
class _Steps:
    """What both schedules share: the plan's jobs with their hashes, and the lines and marker of a
    notebook's start and end."""

    todo: list[tuple]
    out_dir: Path
    sizes: dict
    log: object
    progress_every: float | None

    def __post_init__(self):
        self.estimated: set[str] = set()

    def step(self, i: int) -> str:
        return f"[{i + 1}/{len(self.todo)}] {self.todo[i][0].name}"

    def skip(self, i: int) -> str:
        self.log(f"{self.step(i)}: done before with the same parameters, skipped")
        return self.todo[i][0].name

    def begin(self, i: int):
        """Log the estimate (before a dataset's first training notebook) and the start line, drop the
        old marker; returns the progress watcher (a context manager) of the notebook's runs."""
        job = self.todo[i][0]
        planned = workload(self.sizes).get(job.notebook, (0, 0.0))[0]
        if planned and job.dataset not in self.estimated:
            self.estimated.add(job.dataset)
            _log_estimate(job, [j.notebook for j, _, _, p in self.todo if p and j.dataset == job.dataset],
                          self.sizes, self.log)
        self.log(f"{self.step(i)} ...")
        (self.out_dir / ".done" / f"{job.name}.json").unlink(missing_ok=True)
        return _watch(self.step(i), self.out_dir / job.dataset, planned, self.log, self.progress_every)

    def execute(self, i: int, progress: bool, submit=None, niceness: int = 0):
        """`_execute` of notebook i here, or handed to `submit` (a pool's) for a worker process."""
        args = (*self.todo[i][:2], self.out_dir)
        kw = {"timeout": self.sizes["execution_timeout"], "progress": progress, "niceness": niceness}
        return submit(_execute, *args, **kw) if submit is not None else _execute(*args, **kw)

    def finish(self, i: int, dest: Path, seconds: float) -> None:
        job, _, digest, _ = self.todo[i]
        write_json_atomic(self.out_dir / ".done" / f"{job.name}.json",
                          {"hash": digest, "parameters": job.parameters, "seconds": round(seconds, 1),
                           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self.log(f"{self.step(i)}: {seconds:.0f} s -> {dest}")


def _run_in_order(steps: _Steps, *, progress: bool) -> tuple[list[int], list[str]]:
    """jobs = 1: every notebook in plan order, in this process."""
    ran, skipped = [], []
    for i, (_, _, _, pending) in enumerate(steps.todo):
        if not pending:
            skipped.append(steps.skip(i))
            continue
        watch = steps.begin(i)
        start = time.perf_counter()
        with watch:
            dest = steps.execute(i, progress)
        steps.finish(i, dest, time.perf_counter() - start)
        ran.append(i)
    return ran, skipped


def _run_graph(steps: _Steps, jobs: int) -> tuple[list[int], list[str]]:
    """jobs > 1: a notebook starts once the notebooks it needs (`depends_on`) are done, the longest
    chain of work first among those ready (`_chains`; then plan order); each runs in a worker process
    (papermill's kernel client is asyncio- and zmq-based: a process keeps each one apart). The first
    failure stops new starts; the running ones finish, then it is raised."""
    todo = steps.todo
    ran, skipped = [], [steps.skip(i) for i, t in enumerate(todo) if not t[3]]
    waiting = {i: {k for k, other in enumerate(todo) if other[3] and depends_on(todo[i][0], other[0])}
               for i, t in enumerate(todo) if t[3]}
    running, failure, chain = {}, None, _chains(todo, steps.sizes)
    # spawn: a fresh interpreter per worker (forking a process with threads running is unsafe)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_notebook_worker,
                             initargs=(os.getpid(),)) as pool:
        while True:
            ready = [i for i in waiting if failure is None and not waiting[i]]
            for i in sorted(ready, key=lambda i: (-chain[i], i)):
                if len(running) < jobs:
                    del waiting[i]
                    watch = ExitStack()
                    watch.enter_context(steps.begin(i))
                    unfinished = {*waiting, *(r[0] for r in running.values())}
                    nice = 0 if _heads_longest_chain(i, chain, unfinished) else BACKGROUND_NICENESS
                    running[steps.execute(i, False, pool.submit, nice)] = (i, time.perf_counter(), watch)
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: running[f][0]):
                i, start, watch = running.pop(fut)
                watch.close()
                try:
                    dest = _outcome(fut, todo[i][0])
                except CtrkitError as e:
                    if failure is None and running:
                        steps.log(f"{steps.step(i)}: failed; starting nothing new, waiting for the "
                                  f"{len(running)} still running")
                    elif failure is not None:
                        steps.log(f"{steps.step(i)}: failed too: {e}")
                    failure = failure or e
                    continue
                steps.finish(i, dest, time.perf_counter() - start)
                ran.append(i)
                for needs in waiting.values():
                    needs.discard(i)
    if failure is not None:
        raise failure
    return ran, skipped


def _notebook_worker(parent: int) -> None:
    """A `_run_graph` worker: it dies with `parent`, and a Ctrl-C or SIGTERM (which reach the whole
    process group) ends its notebook as a KeyboardInterrupt and silences it (`_interrupted`); the
    parent prints the one `ctrkit: interrupted` line."""
    import signal

    die_with_parent(parent)
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)


def _interrupted(signum, frame) -> None:
    """From an interrupt on, the worker logs nothing: the kernel gets the signal too and may die, and
    nbclient then logs "Kernel died while waiting for execute reply" and asyncio an unretrieved task's
    DeadKernelError (or the interrupted cell's KeyboardInterrupt) as a traceback; none of it is news."""
    import logging

    logging.disable(logging.CRITICAL)
    raise KeyboardInterrupt


def _outcome(fut, job: Job) -> Path:
    """A worker's executed notebook, or a one-line CtrkitError naming it (also when the worker
    process itself died: killed, out of memory)."""
    try:
        return fut.result()
    except CtrkitError:
        raise
    except Exception as e:  # noqa: BLE001 - BrokenProcessPool and the like: still one line naming the notebook
        msg = " ".join(str(e).split())[:300]
        raise CtrkitError(f"notebook {job.notebook} ({job.dataset}) did not run: {type(e).__name__}: {msg}") from None


# ---------------------------------------------------------------- the dependency graph of jobs > 1

# What each notebook needs finished first (of its own dataset), from what it reads:
#   01: the prepared data of 00; 02: 01's checkpoints and baselines (records of the store);
#   03, 04, 07: the setting 02's sweep chose (`reproduce.chosen`), 02's runs (07's controls, 04's
#   4-model run) and the checkpoints; 04 also needs 03: its pairs are 03's runs, and they must reach
#   the store in 03's order, as one after the other writes them (tables average rows in store order);
#   05: nothing (draws from code); 06: its dataset's data and 01's checkpoints.
# Needs are transitive (`depends_on`): a notebook missing from the plan (profile `skip`, --only) or
# done before is satisfied, and what it needed is still needed.
NEEDS: dict[str, tuple[str, ...]] = {
    "00_data": (), "01_baselines": ("00_data",), "02_scratch_vs_finetune": ("01_baselines",),
    "03_partners": ("02_scratch_vs_finetune",), "04_peer_count": ("03_partners",),
    "07_variants": ("02_scratch_vs_finetune",), "05_architectures": (), "06_explore": ("01_baselines",),
}
# 01-04 and 07 each rewrite their dataset's results.csv and read it back: notebooks of one dataset
# may still overlap, since the export runs under the store's lock (`ResultsStore.to_csv`), so the
# CSV a notebook reads is its own export or a later one, never an older snapshot.


# The niceness of a notebook started while another heads a longer chain of work (`_heads_longest_chain`):
# on a busy machine its kernel and worker processes get ~10% of a core beside that one's (Linux's
# weights, nice 10 against 0; for its kernel's whole session where the scheduler groups by session),
# so the chain that decides when the reproduction ends is not slowed by notebooks that have time to
# spare; they still take whatever the chain leaves idle.
BACKGROUND_NICENESS = 10


def _heads_longest_chain(i: int, chain: dict[int, float], unfinished: set[int]) -> bool:
    """Whether job i heads the longest chain of estimated work among the unfinished jobs (a tie goes
    to the job first in plan order)."""
    return max(unfinished | {i}, key=lambda j: (chain[j], -j)) == i


def _chains(todo: list[tuple], sizes: dict) -> dict[int, float]:
    """Per pending job: its estimated work (`workload`'s cost, in epochs) plus the longest chain of the
    pending jobs that need it, so a long 07 starts before a short 03 and the last notebooks to end
    are short ones, not a 07 started late."""
    work = workload(sizes)
    cost = {i: work.get(t[0].notebook, (0, 0.0))[1] for i, t in enumerate(todo) if t[3]}
    out: dict[int, float] = {}

    def chain(i: int) -> float:
        if i not in out:
            after = [chain(j) for j in cost if depends_on(todo[j][0], todo[i][0])]
            out[i] = cost[i] + max(after, default=0.0)
        return out[i]

    for i in cost:
        chain(i)
    return out


def _needed(notebook: str) -> set[str]:
    out, stack = set(), list(NEEDS[notebook])
    while stack:
        nb = stack.pop()
        if nb not in out:
            out.add(nb)
            stack += NEEDS[nb]
    return out


def depends_on(job: Job, other: Job) -> bool:
    """`job` may start only after `other` finished (when both are to run)."""
    return other.dataset == job.dataset and other.notebook in _needed(job.notebook)


def parallel_jobs(jobs: int | str, sizes: dict, device: str = "cpu") -> int:
    """Notebooks run at once: `jobs`, or for "auto" the CPU cores available divided by the profile's
    torch threads per run (at least 1; threads "auto" takes every core: 1), and 1 on CUDA (one GPU:
    runs would compete for its memory)."""
    if jobs == "auto":
        if device == "cuda":
            return 1
        from ctrkit.core.utils import cpu_slots

        return cpu_slots(sizes.get("threads"))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise CtrkitError(f"jobs {jobs!r}: an integer >= 1 or 'auto'")
    return jobs


def _variants_summary_again(ran: list[Job]) -> None:
    """07's summary across datasets reads every dataset's variants pairs table: 07s that overlapped
    may have read another's before it was rewritten, so it is written once more after the last one
    (from the same tables as when the last 07 of a sequential run writes it)."""
    variants = [job for job in ran if job.notebook == "07_variants"]
    if len(variants) > 1:
        from ctrkit.notebook import reproduce

        reproduce.variants_summary(reproduce.settings(**variants[-1].parameters))


def _todo(jobs: list[Job], nb_dir: Path, out_dir: Path, sizes: dict, *, force: bool) -> list[tuple]:
    """(job, notebook file, hash, still to run) per job: done before = its marker holds the same hash."""
    out = []
    for job in jobs:
        src = _notebook_path(job.notebook, nb_dir)
        # The profile's sizes are part of the hash: editing PROFILES re-runs the notebooks it changes.
        digest = _sha({"parameters": job.parameters, "profile": sizes,
                       "notebook": hashlib.sha256(src.read_bytes()).hexdigest()})
        marker = out_dir / ".done" / f"{job.name}.json"
        out.append((job, src, digest, force or not _done_before(marker, job.executed(out_dir), digest)))
    return out


def _jobs(request: Reproduction) -> list[Job]:
    """The plan's jobs, only the notebooks named in `request.only` when given."""
    jobs = plan(dataset=request.dataset, profile=request.profile, data=request.data, out=request.out,
                device=request.device, amp=request.amp, seeds=request.seeds)
    if request.only:
        unknown = sorted(set(request.only) - set(NOTEBOOKS))
        if unknown:
            raise CtrkitError(f"unknown notebook(s) {unknown}; valid: {', '.join(NOTEBOOKS)}")
        jobs = [j for j in jobs if j.notebook in request.only]
    return jobs


# What marks a folder as ctrkit's own output: a reproduction's `.done`, or what the notebooks write
# when run by hand in JupyterLab (synthetic or prepared data with their markers, a results store).
# Only markers ctrkit alone writes: a results store is no such proof (a user's project folder holds the
# store of its own API runs beside its own figures and tables, which a reproduction would replace)
_OURS = (".done", "data/*/raw/.ctrkit-synth.json", "data/*/*/.ctrkit-prepare.json")


def _claim_out(out_dir: Path) -> None:
    """--out is new, empty or ctrkit's (`_OURS`; its `.done` is made here before anything else is
    written, so an interrupted first run's folder is one too): reproduce writes its index, tables,
    figures and notebooks there and replaces its own; a folder of other files is refused, not written
    into (it replaced a user's index.md and tables before)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CtrkitError(f"--out {out_dir}: is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not any(any(out_dir.glob(p)) for p in _OURS):
        raise CtrkitError(f"--out {out_dir}: holds files that ctrkit did not write (no earlier reproduction or "
                          f"data of ctrkit's in it); not writing into it: give a new or empty folder")
    try:
        (out_dir / ".done").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CtrkitError(f"--out {out_dir}: cannot create: {e.strerror or e}") from None


def _check_outputs(out_dir: Path) -> None:
    """Refuse, before any notebook runs, a reproduction's output edited since ctrkit wrote it (its
    record, `owned`, no longer matches, or it became a link): the run may replace it. The outputs of
    a reproduction made before records existed are recorded as ctrkit's first (`adopt_legacy`)."""
    try:
        adopt_legacy(out_dir)
        edited = owned.changed(outputs(out_dir))
    except OSError as e:
        raise CtrkitError(f"--out {out_dir}: cannot read {e.filename or 'it'}: {e.strerror or e}") from None
    if edited:
        names = ", ".join(p.relative_to(out_dir).as_posix() for p in edited[:3])
        more = f" and {len(edited) - 3} more" if len(edited) > 3 else ""
        one = len(edited) == 1
        it = "it" if one else "them"
        raise CtrkitError(f"--out {out_dir}: {names}{more} {'was' if one else 'were'} changed (or made a link) after "
                          f"ctrkit wrote {it}, and a reproduction may replace {it}: move {it} away (a notebook "
                          f"already done writes {it} again only with --force), or give another --out")


def _remove_killed_writers_temp(out_dir: Path) -> None:
    """Remove the temp files a killed reproduction left in `out_dir` (`_claim_out` has made sure it is
    ctrkit's), of the names `WRITTEN` lists only. Only those unmodified for `LIVE_TEMP_S`: nothing
    stops a notebook run by hand, or a second reproduction, from writing a table there right now,
    and a live writer's temp file is seconds old."""
    from ctrkit.core.utils import LIVE_TEMP_S, remove_stale_temp

    for sub, names, ends in WRITTEN:
        remove_stale_temp(out_dir / sub, names, suffixes=ends, older_than=LIVE_TEMP_S)
        remove_stale_temp(out_dir / sub / owned.RECORDS, (), suffixes=(".json",), older_than=LIVE_TEMP_S)


def _done_before(marker: Path, dest: Path, digest: str) -> bool:
    """The job's executed notebook is there and its .done marker holds the same hash."""
    if not (marker.exists() and dest.exists()):
        return False
    try:
        return json.loads(marker.read_text()).get("hash") == digest
    except (OSError, json.JSONDecodeError):
        return False


def _execute(job: Job, src: Path, out_dir: Path, *, timeout: int | None, progress: bool, niceness: int = 0) -> Path:
    """Execute one notebook with papermill into its place under OUT (via a hidden partial file, so a
    notebook is there only when it finished), its kernel (and the processes it starts) at `niceness`;
    a failure keeps <name>.failed.ipynb and raises CtrkitError."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    dest = job.executed(out_dir)
    if owned.foreign(dest):  # before the work, not after it
        raise owned.refuse(dest, ", or give another --out")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.stem}.partial.ipynb")
    failed = dest.with_name(f"{dest.stem}.failed.ipynb")
    kernel_log = job.kernel_log(out_dir)
    try:
        with _socket_folder() as sockets:
            papermill.execute_notebook(
                str(src), str(partial), parameters=job.parameters, kernel_name="python3",
                cwd=str(out_dir), progress_bar=progress, log_output=False, execution_timeout=timeout,
                kernel_manager_class=_kernels(niceness, kernel_log, sockets),
            )
    except PapermillExecutionError as e:
        partial.replace(failed) if partial.exists() else None
        evalue = " ".join(str(e.evalue).split())[:300]
        first = next((ln.strip() for ln in str(getattr(e, "source", "")).splitlines() if ln.strip()), "")
        first = first if len(first) <= 60 else first[:57] + "..."
        # cell_index counts the cells of the executed notebook (papermill adds the injected
        # parameters cell), the one kept as .failed.ipynb; the code line identifies it anyway.
        raise CtrkitError(f"notebook {job.notebook} ({job.dataset}) failed in cell {e.cell_index} "
                          f"[{first}]: {e.ename}: {evalue} (executed notebook: {failed}; "
                          f"kernel log: {kernel_log})") from None
    except Exception as e:  # kernel died, timeout, missing kernel: still name the notebook
        partial.replace(failed) if partial.exists() else None
        msg = " ".join(str(e).split())[:300]
        if isinstance(e, OSError) and not e.filename:  # papermill's own write (a full disk): where it wrote
            msg += f" (writing {partial} and the kernel log under {out_dir})"
        raise CtrkitError(f"notebook {job.notebook} ({job.dataset}) did not run: {type(e).__name__}: {msg} "
                          f"(kernel log: {kernel_log}{_last_words(kernel_log)})") from None
    owned.move_into(partial, dest, where=f" (this run's notebook is {partial}), or give another --out")
    failed.unlink(missing_ok=True)
    return dest


def _last_words(log: Path) -> str:
    """'; its last line: ...' of a kernel log (why a kernel died, where the error is all one sees: CI)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f"; its last line: {lines[-1][:200]}" if lines else ""


@contextmanager
def _socket_folder():
    """A private folder for one kernel's ZMQ sockets (removed after), or None where unix sockets are
    unavailable or their path would be too long (then the kernel talks TCP on localhost)."""
    if os.name != "posix":
        yield None
        return
    try:
        folder = Path(tempfile.mkdtemp(prefix="ctrkit-kernel-"))
    except OSError as e:
        raise CtrkitError(f"cannot create a folder for a kernel's sockets in {tempfile.gettempdir()}: "
                          f"{e.strerror or e}") from None
    try:
        # a unix socket's path holds ~104-108 bytes, the port number and its dash included
        yield folder / "kernel" if len(os.fsencode(folder / "kernel")) <= 96 else None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _kernels(niceness: int, log: Path, sockets: Path | None = None):
    """nbclient's kernel manager, its kernel's stdout and stderr going to `log` (what ipykernel and
    the processes it starts print there: transport warnings, the interrupt it logs at shutdown, a
    worker's dying words), not into reproduce's progress lines; the kernel started at `niceness`:
    the process (`nice`) and, on Linux with autogrouping, its session's group (jupyter starts each
    kernel in a session of its own, and the scheduler shares the CPU between such groups by the
    group's niceness, not the processes'). An unprivileged process may lower its own priority only,
    so the kernel starts that way. With `sockets` (a path prefix in a private folder) the kernel's
    channels are unix sockets there, not TCP ports: jupyter picks free ports, closes them and the
    kernel binds them later, so two kernels starting at once (or any other process) can take one in
    between and the kernel dies before it replies ("Address already in use")."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    wrap = f"{{ echo {niceness} > /proc/self/autogroup; }} 2>/dev/null; exec nice -n {niceness} \"$@\""
    niced = bool(niceness) and shutil.which("nice") is not None and shutil.which("sh") is not None

    class Kernels(AsyncKernelManager):
        @default("transport")
        def _transport_default(self):
            return "tcp" if sockets is None else "ipc"

        @default("ip")
        def _ip_here(self):
            # jupyter's ipc default is "kernel-ipc" in the working directory, shared by every kernel there
            return super()._ip_default() if sockets is None else str(sockets)

        def format_kernel_cmd(self, extra_arguments=None):
            cmd = super().format_kernel_cmd(extra_arguments)
            return ["sh", "-c", wrap, "sh", *cmd] if niced else cmd

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            try:
                f = open(log, "wb")
            except OSError as e:
                raise CtrkitError(f"cannot write the kernel log {log}: {e.strerror or e}") from None
            with f:  # the kernel keeps its own copy of the descriptor
                await super()._async_launch_kernel(kernel_cmd, **{**kw, "stdout": f, "stderr": f})

    return Kernels


# What copy_figures wrote into a --figures folder, {path relative to it: sha256}: a file there is
# replaced only if it is still what ctrkit wrote (or already what it would write).
FIGURES_MANIFEST = ".ctrkit-figures.json"


def copy_figures(src: str | Path, dest: str | Path, *, tables_src: str | Path | None = None) -> list[str]:
    """Copy every PNG/SVG figure from `src` into `dest`, and with `tables_src` its Markdown tables
    into `dest/tables` (what the repository commits beside the figures), atomically per file. A file
    in the way that ctrkit did not write (not in `dest`'s manifest as it is now, and not the same
    bytes) stops the copy before anything is replaced. The manifest lists the old and the new hash
    of each file while they are copied, so a copy cut short leaves every file known as ctrkit's."""
    dest = Path(dest)
    pairs = [(p, dest / p.name) for p in sorted(Path(src).glob("*")) if p.suffix in (".png", ".svg")]
    if tables_src is not None:
        pairs += [(p, dest / "tables" / p.name) for p in sorted(Path(tables_src).glob("*.md"))]
    name = lambda t: t.relative_to(dest).as_posix()  # noqa: E731
    try:
        written = _figures_manifest(dest)
        now = {name(t): sha256_file(t) for _, t in pairs if t.exists()}
        new = {name(t): sha256_file(p) for p, t in pairs}
        foreign = [t for p, t in pairs if name(t) in now and now[name(t)] not in written.get(name(t), ())
                   and now[name(t)] != new[name(t)]]
    except OSError as e:
        raise CtrkitError(f"--figures {dest}: cannot read it: {e.strerror or e}") from None
    if foreign:
        raise CtrkitError(f"--figures {dest}: {foreign[0]} exists and was not written by ctrkit"
                          f"{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''}: nothing copied "
                          f"(the figures are in {src}; move those files, or give another --figures)")
    try:
        both = {n: sorted({h, now[n]} if n in now else {h}) for n, h in new.items()}
        _write_figures_manifest(dest, {**written, **both})
        for path, target in pairs:
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
        _write_figures_manifest(dest, {**written, **{n: [h] for n, h in new.items()}})
    except OSError as e:
        raise CtrkitError(f"--figures {dest}: cannot copy the figures there: {e.strerror or e}") from None
    return [str(t) for _, t in pairs]


def _figures_manifest(dest: Path) -> dict[str, list[str]]:
    """{file: its hashes} of what copy_figures wrote into `dest`; {} without one (or a damaged one,
    which proves nothing). A single hash per file is the settled form, a list the one mid-copy."""
    path = dest / FIGURES_MANIFEST
    try:
        m = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}
    m = m if isinstance(m, dict) else {}
    return {k: [v] if isinstance(v, str) else list(v) for k, v in m.items() if isinstance(v, (str, list))}


def _write_figures_manifest(dest: Path, files: dict[str, list[str]]) -> None:
    settled = {k: v[0] if len(v) == 1 else v for k, v in sorted(files.items())}
    with atomic_path(dest / FIGURES_MANIFEST) as tmp:
        tmp.write_text(json.dumps(settled, indent=1) + "\n")


def _data_statement(out: Path, dataset: str) -> str:
    """One sentence on one dataset as loaded: its name, synthetic or real, rows per split and CTR."""
    kind = "synthetic (ctrkit's hidden click model)" if (out / "data" / dataset / "raw" / "synth.json").exists() \
        else "real"
    try:
        s = pd.read_csv(out / "tables" / f"{dataset}_data_splits.csv")
        rows = " / ".join(f"{r.split} {int(r.rows):,}" for r in s.itertuples())
        ctr = " / ".join(f"{r.ctr:.3f}" for r in s.itertuples())
        return f"{dataset}: {kind} data, {int(s['rows'].sum()):,} rows as loaded ({rows}), CTR {ctr}."
    except (OSError, KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return f"{dataset}: {kind} data (no data table: 00_data did not run)."


def _lead(out: Path) -> tuple[list[str], list[str]]:
    """What index.md/index.html open with: the data statement and the headline table of each dataset
    (mutual - alone at the setting chosen on validation), before the lists of everything else."""
    md, h = ["## Headline", ""], ["<h2>Headline</h2>"]
    for csv in sorted((out / "tables").glob("*_headline.csv"), key=lambda p: _dataset_rank(p.name[: -len("_headline.csv")])):
        dataset = csv.name[: -len("_headline.csv")]
        statement = _data_statement(out, dataset)
        md += [statement, ""]
        h.append(f"<p>{html.escape(statement)}</p>")
        mdp = csv.with_suffix(".md")
        if mdp.exists():
            md += [mdp.read_text().strip(), ""]
            h.append(_md_html(mdp))
    return (md, h) if len(md) > 2 else ([], [])


def _md_html(mdp: Path) -> str:
    """A table's Markdown twin as HTML: the human form ctrkit wrote (intervals, 3-digit p-values, the
    constant settings and the caption naming the data, seeds, precision and profile), not its tidy CSV."""
    import markdown

    return markdown.markdown(mdp.read_text(), extensions=["tables"], output_format="html")


# The order a reader follows, per dataset: the data, the baselines, the paper's claims, then beyond it.
_READING = ("data_splits", "data_vocab", "data_ctr", "data_frequency", "tuning", "baselines", "scratch", "sweep",
            "sweep_gain", "finetune", "headline", "paired_gains", "power", "controls", "alternatives", "strength",
            "strength_contrast", "gain_vs_strength", "partners", "partner_matrix", "partner_slopes", "peer_count", "variants",
            "variants_summary")


def _dataset_rank(name: str) -> tuple:
    return (DATASETS.index(name), "") if name in DATASETS else (len(DATASETS), name)


def _in_reading_order(paths: list[Path], out: Path) -> list[Path]:
    """Tables and figures by dataset (Criteo, Avazu, then others; the paper's Figures 1-2 first) and
    within one in `_READING` order; executed notebooks by dataset and number, 05 and 06 after them."""
    def key(p: Path):
        if p.suffix == ".ipynb":
            folder = p.parent.relative_to(out / "notebooks").as_posix()
            return (_dataset_rank(folder) if folder != "." else (len(DATASETS) + 1, ""), p.name)
        kind = next((k for k in _READING if p.stem == k or p.stem.endswith("_" + k)), None)
        if kind is None:
            return ((-1, "") if p.stem.startswith("fig") else (len(DATASETS) + 1, ""), 0, p.stem)
        dataset = p.stem[: -len(kind) - 1]
        return (_dataset_rank(dataset) if dataset else (len(DATASETS), ""), _READING.index(kind), p.stem)
    return sorted(paths, key=key)


def write_index(out: str | Path, *, profile: str | None = None) -> dict:
    """OUT/index.md and OUT/index.html linking the executed notebooks, tables and figures in reading
    order (`_in_reading_order`); index.html inlines each table's Markdown form. The CSVs without a
    Markdown form (the numbers behind each figure) are listed once, as links."""
    from ctrkit import __version__

    out = Path(out)
    notebooks = _in_reading_order([p for p in (out / "notebooks").rglob("*.ipynb") if not p.name.startswith(".")], out)
    tables = _in_reading_order(list((out / "tables").glob("*.csv")), out)
    shown = [p for p in tables if p.with_suffix(".md").exists()]
    data = sorted(p for p in tables if p not in shown)
    figures = _in_reading_order(list((out / "figures").glob("*.png")), out)
    rel = lambda p: p.relative_to(out).as_posix()  # noqa: E731
    title = f"ctrkit reproduction{f' (profile {profile})' if profile else ''}"
    made = f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by ctrkit {__version__}."
    lead_md, lead_html = _lead(out)
    md = [f"# {title}", "", made, "", *lead_md, "## Notebooks", ""]
    md += [f"- [{rel(p)}]({rel(p)})" + (" (FAILED)" if p.stem.endswith(".failed") else "") for p in notebooks]
    md += ["", "## Tables", ""] + [f"- [{p.stem}]({rel(p)}) (CSV), [Markdown]({rel(p.with_suffix('.md'))})"
                                   for p in shown]
    md += ["", "The numbers behind the figures (CSV): " + ", ".join(f"[{p.stem}]({rel(p)})" for p in data), ""]
    md += ["## Figures", ""]
    for p in figures:
        svg = p.with_suffix(".svg")
        md += [f"### {p.stem}", "", f"![{p.stem}]({rel(p)})", "",
               f"[PNG]({rel(p)})" + (f" · [SVG]({rel(svg)})" if svg.exists() else ""), ""]
    with owned_path(out / "index.md", where=", or give another --out") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    with owned_path(out / "index.html", where=", or give another --out") as tmp:
        tmp.write_text(_index_html(title, made, lead_html, notebooks, shown, data, figures, rel))
    return {"out": str(out), "index": str(out / "index.md"), "html": str(out / "index.html"),
            "notebooks": [str(p) for p in notebooks], "tables": [str(p) for p in tables],
            "figures": [str(p) for p in figures]}


def _index_html(title, made, lead, notebooks, shown, data, figures, rel) -> str:
    """index.html: index.md's content, each table inlined in its Markdown form, figures as <img>."""
    link = lambda p, text=None: f"<a href='{html.escape(rel(p))}'>{html.escape(text or rel(p))}</a>"  # noqa: E731
    h = ["<!doctype html><meta charset='utf-8'><title>ctrkit reproduction</title>",
         "<style>body{font-family:sans-serif;max-width:960px;margin:auto}img{max-width:100%}"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
         f"<h1>{html.escape(title)}</h1><p>{html.escape(made)}</p>", *lead, "<h2>Notebooks</h2><ul>"]
    h += [f"<li>{link(p)}</li>" for p in notebooks]
    h.append("</ul><h2>Tables</h2>")
    for p in shown:
        h += [f"<h3>{link(p, p.stem)}</h3>", _md_html(p.with_suffix(".md"))]
    h.append(f"<p>The numbers behind the figures (CSV): {', '.join(link(p, p.stem) for p in data)}</p>")
    h.append("<h2>Figures</h2>")
    for p in figures:
        svg = p.with_suffix(".svg")
        h.append(f"<h3>{html.escape(p.stem)}</h3><img src='{html.escape(rel(p))}' alt='{html.escape(p.stem)}'>"
                 f"<p>{link(p, 'PNG')}" + (f" · {link(svg, 'SVG')}" if svg.exists() else "") + "</p>")
    return "\n".join(h) + "\n"


# ---------------------------------------------------------------- cost shown first: the estimate and progress


def workload(sizes: dict, n_models: int | None = None) -> dict[str, tuple[int, float]]:
    """Per notebook of one dataset: (training runs, cost in epochs of all the profile's models, i.e. in
    units of the sum of the models' one-epoch times), from a profile's sizes, every run at its epoch cap
    (baselines and runs from scratch: `epochs`; finetuning: `finetune_epochs`). A run of some of the
    models costs their share: the pairs of 03 cost N-1 such epochs per seed, the peer sets of 04
    2^(N-1)-1. 00, 05 and 06 train nothing here (06's widget trains what its user asks)."""
    n = n_models if n_models is not None else len(sizes["models"])
    s, e, f = len(sizes["seeds"]), sizes["epochs"] or 100, sizes["finetune_epochs"] or 1
    v = len(sizes.get("variant_seeds") or sizes["seeds"])
    w, lr = len(sizes["sweep_weights"]), len(sizes["sweep_lr_scales"])
    # the search's candidates and, at most, one more per searched key in each round past an edge
    axes = len({k for c in sizes.get("tune") or [] for k in c})
    tune = (len(sizes.get("tune") or []) + (sizes.get("tune_widen") or 0) * axes) * len(
        sizes.get("tune_seeds") or sizes["seeds"][:2])
    extra = len([z for z in sizes.get("sizes") or [] if z != sizes["preset"]])
    sweep = lr + w * lr  # the alone control per lr scale (weight 0), mutual per weight and scale
    return {
        "01_baselines": (n * (s + tune), float(e * (s + tune))),
        # scratch (mutual, alone), the sweep, KD, the ensemble (no training); each extra size: its
        # baselines and its own sweep (counted at the profile preset's epoch time: an upper bound; a size
        # on a share of the rows runs 1/share the epochs of share x the rows, the same cost)
        "02_scratch_vs_finetune": (s * (2 + sweep + 2) + extra * s * (n + sweep),
                                   float(s * (2 * e + sweep * f + f) + extra * s * (e + sweep * f))),
        "03_partners": (s * n * (n - 1) // 2, float(s * f * (n - 1))),
        "04_peer_count": (s * (2 ** n - 1 - n), float(s * f * (2 ** (n - 1) - 1))),
        "07_variants": (v * 12, float(v * (3 * f + 9 * e))),
    }


def estimate(sizes: dict, epoch_seconds: dict[str, float], notebooks: Sequence[str] | None = None) -> dict[str, float]:
    """Seconds per notebook of one dataset (only `notebooks` when given): `workload`'s cost times the sum
    of the profile's models' one-epoch seconds. At the epoch caps: runs that stop early take less."""
    one = sum(epoch_seconds[m] for m in sizes["models"])
    return {nb: cost * one for nb, (_, cost) in workload(sizes, len(sizes["models"])).items()
            if (notebooks is None or nb in notebooks) and nb not in (sizes.get("skip") or [])}


def epoch_seconds(field_sizes: Sequence[int], rows: int, sizes: dict, *, device: str = "auto",
                  steps: int = 3, bars_data: tuple[str, str] | None = None) -> dict[str, float]:
    """One training epoch of each of the profile's models on `rows` rows, in seconds: `steps` Adam steps
    on random indices at the preset's batch size (after one untimed warm-up step), times the steps per
    epoch; the profile's thread count; the caller's RNG and thread state are left as they were.
    The `bars` preset is the one of `bars_data` (dataset, protocol), else the `full` preset's sizes."""
    import torch

    from ctrkit.core.utils import resolve_device
    from ctrkit.models import build
    from ctrkit.training import presets

    dev, threads = resolve_device(device), torch.get_num_threads()
    out = {}
    with torch.random.fork_rng(devices=[]):
        try:
            if isinstance(sizes.get("threads"), int):
                torch.set_num_threads(sizes["threads"])
            for name in sizes["models"]:
                p = (presets.get(name, "bars", *bars_data) if sizes["preset"] == "bars" and bars_data
                     else presets.get(name, "full" if sizes["preset"] == "bars" else sizes["preset"]))
                batch = min(profiles.batch_size(sizes, p.train["batch_size"], int(rows)) or int(p.train["batch_size"]),
                            max(int(rows), 1))
                model = build(name, list(field_sizes), **p.model).to(dev)
                opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                X = torch.stack([torch.randint(0, int(v), (batch,)) for v in field_sizes], 1).to(dev)
                y = torch.randint(0, 2, (batch,), device=dev).float()
                t0 = 0.0
                for i in range(steps + 1):
                    if i == 1:  # step 0 warms up (allocations, kernels), untimed
                        torch.cuda.synchronize() if dev.type == "cuda" else None
                        t0 = time.perf_counter()
                    opt.zero_grad()
                    torch.nn.functional.binary_cross_entropy_with_logits(model(X), y).backward()
                    opt.step()
                torch.cuda.synchronize() if dev.type == "cuda" else None
                out[name] = (time.perf_counter() - t0) / steps * -(-int(rows) // batch)
        finally:
            torch.set_num_threads(threads)
    return out


def _duration(seconds: float) -> str:
    m = int(round(seconds / 60))
    return f"{seconds:.0f} s" if seconds < 60 else f"{m} min" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def estimate_line(job: Job, notebooks: Sequence[str], sizes: dict) -> str | None:
    """The line `ctrkit reproduce` prints before a dataset's training notebooks: the estimated time of
    `notebooks` from the data as loaded (train rows, field sizes) and a few timed steps of each model;
    None when the data is not prepared yet or nothing of them trains."""
    from ctrkit.notebook import reproduce

    cfg = reproduce.settings(**job.parameters)
    fm = reproduce.prepared_feature_map(cfg)
    if fm is None or "fields" not in fm or "rows" not in fm:
        return None
    bars_data = (fm.get("dataset"), fm.get("protocol")) if fm.get("dataset") and fm.get("protocol") else None
    secs = estimate(sizes, epoch_seconds([int(f["vocab_size"]) for f in fm["fields"]], int(fm["rows"]["train"]),
                                         sizes, device=cfg.device, bars_data=bars_data), notebooks)
    if not any(secs.values()):
        return None
    parts = ", ".join(f"{nb[:2]} {_duration(s)}" for nb, s in secs.items())
    return (f"estimated {job.dataset}: at most ~{_duration(sum(secs.values()))} at the epoch caps ({parts}; "
            f"{int(fm['rows']['train']):,} train rows, one epoch of {' + '.join(sizes['models'])} timed from "
            f"a few steps); runs that stop early take less")


def _log_estimate(job: Job, notebooks: Sequence[str], sizes: dict, log) -> None:
    try:
        line = estimate_line(job, notebooks, sizes)
    except Exception as e:  # noqa: BLE001 -- an estimate that cannot be made must not stop the reproduction
        line = f"estimated {job.dataset}: not available ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    if line:
        log(line)


def count_runs(run_dir: Path) -> int:
    """Runs recorded under a dataset's folder: its results store and the tuning and size stores
    (one record per peer: a run is its peer 0)."""
    n = 0
    for store in Path(run_dir).rglob("store.jsonl"):
        try:
            lines = store.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                n += json.loads(line).get("peer_index", 0) in (0, None)
            except (json.JSONDecodeError, AttributeError):
                continue  # a line being written
    return n


@contextmanager
def _watch(step: str, run_dir: Path, planned: int, log, every: float | None):
    """While a notebook runs: every `every` seconds, the runs it recorded of the ~`planned`."""
    if not planned or not every:
        yield
        return
    stop, start = threading.Event(), count_runs(run_dir)

    def watch():
        while not stop.wait(every):
            log(f"{step}: {count_runs(run_dir) - start} of ~{planned} runs recorded")

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
