"""Shared helpers of every layer: atomic writes, seeding, devices, CPU facts and thread counts, provenance."""
from __future__ import annotations

import contextlib
import ctypes
import difflib
import hashlib
import json
import numbers
import os
import platform
import random
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ctrkit.core.errors import CtrkitError  # noqa: F401  (re-exported: ctrkit.core.utils.CtrkitError)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    Readers never see a half-written file: os.replace is atomic on POSIX within one filesystem.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates 0600; give the result the mode a plain open() would (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def probe_writable(folder: str | os.PathLike) -> None:
    """Create and remove a file of our own in `folder` (OSError, named by the folder, when it cannot
    be): what atomic writes there need, checked before the work that leads to them."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".ctrkit-probe.", suffix=".tmp", dir=folder)
    except OSError as e:  # the probe's random name would mean nothing to a user
        raise OSError(e.errno, e.strerror, str(folder)) from None
    os.close(fd)
    os.unlink(probe)  # only the file mkstemp just made for us


def sha256_file(path: str | os.PathLike) -> str:
    """A file's SHA-256, hex: what ctrkit's manifests record of a file it wrote. Read in chunks: a
    checkpoint of real data is hundreds of MB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# The temp file `atomic_path` writes: mkstemp's "." + the final name + "." + 8 characters of
# "abcdefghijklmnopqrstuvwxyz0123456789_" + ".tmp". Only names of this form are ever cleaned.
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
# How long a live writer's temp file can go unmodified: `atomic_path`'s callers write a table, a
# figure or a predictions file within seconds of making it. In a folder other processes may write
# to at the same time, only temp files older than this are a killed writer's for sure.
LIVE_TEMP_S = 60.0


def remove_stale_temp(folder: str | os.PathLike, names: Sequence[str] = (), *, suffixes: Sequence[str] = (),
                      older_than: float = 0.0) -> list[Path]:
    """Remove the temp files a killed `atomic_path` writer left in `folder` (not below it) for a final
    name in `names` or ending in one of `suffixes`, not modified for `older_than` seconds (0: any:
    for a folder no other process writes in meanwhile). Returns the files removed. A folder that is
    not there or cannot be listed, or a file that cannot be removed, is left: this run's own writes
    there fail with a one-line error naming the file if the folder is unusable."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    now, removed = time.time(), []
    for entry in entries:
        m = _TEMP_NAME.fullmatch(entry.name)
        if m is None or not (m["name"] in names or any(m["name"].endswith(s) for s in suffixes)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= older_than:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone meanwhile (another run cleaned it), or not ours to remove here
            continue
    return removed


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            # torch's zip writer reports a failed write as "unexpected pos": say what the OS would
            import errno
            import shutil

            code = errno.ENOSPC if shutil.disk_usage(tmp.parent).free < (16 << 20) else errno.EIO
            raise OSError(code, os.strerror(code), str(path)) from e


# torch.manual_seed takes a signed 64-bit seed: every seed ctrkit takes (runs, synth, splits) is in 0..MAX_SEED
MAX_SEED = 2**63 - 1


def seed_problem(value: Any) -> str | None:
    """What is wrong with `value` as a seed, or None: the one seed rule (an integer, `as_int`, from 0 to
    MAX_SEED), in the words every caller (CLI flag, notebook parameter, widget, schema) prefixes with its name."""
    s = as_int(value)
    return None if s is not None and 0 <= s <= MAX_SEED else f"expected an integer from 0 to 2**63-1, got {value!r}"


def seeds_problem(seeds: Any, *, at_least: int = 1) -> str | None:
    """What is wrong with a list of seeds, or None: at least `at_least` (a paired interval needs 2),
    each a seed (`seed_problem`), each once (a seed twice would run one run twice and count it twice)."""
    seeds = list(seeds)
    if len(seeds) < at_least:
        return f"expected at least {at_least} seed{'s' if at_least > 1 else ''}, got {len(seeds)}"
    bad = next((p for p in map(seed_problem, seeds) if p), None)
    if bad:
        return bad
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    return f"{twice[0]} is listed twice (each seed runs once)" if twice else None


def file_stamp(st: os.stat_result) -> tuple:
    """What tells two versions of a file apart without reading it: device, inode, size, mtime and
    ctime (a copy with its mtime kept, `cp -p` or `shutil.copy2`, still changes the ctime)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


# ---------------------------------------------------------------- the one rule of numbers and names


def as_int(value: Any) -> int | None:
    """`value` as a Python int when it is an integer (`numbers.Integral`: int and NumPy's integers, so
    `seeds=list(np.arange(3))` works), else None. Every integer setting of ctrkit goes through here.
    A bool is refused although Python counts it an int: `True` where a count is expected is a slip,
    not a 1. A float is refused even when whole: 2.0 epochs says the value came from arithmetic."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def as_number(value: Any) -> int | float | None:
    """`value` as a Python number when it is a real number (`numbers.Real`: int, float, NumPy's
    scalars; not bool, as in `as_int`), else None: an integer as int, anything else as float. An int
    stays an int because run keys record the value as given (1 and 1.0 key apart). NaN and inf come
    back as they are: each setting states its own bounds."""
    n = as_int(value)
    if n is not None:
        return n
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def as_float(value: Any) -> float | None:
    """`as_number` as a float: the rule of every setting that is a float."""
    n = as_number(value)
    return None if n is None else float(n)


def did_you_mean(value: Any, choices: Sequence[str]) -> str:
    """"; did you mean 'X'?" when one of `choices` is close to `value` (case-insensitive, difflib),
    else "": appended to the one-line error of a name looked up in a fixed list."""
    if not isinstance(value, str):
        return ""
    lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(value.lower(), list(lower), n=1)
    return f"; did you mean {lower[close[0]]!r}?" if close else ""


# torch.Generator.manual_seed's range (unsigned 64-bit): a run's seed is at most MAX_SEED, and the
# k-th copy of a model is seeded seed + k - 1
_MAX_TORCH_SEED = 2**64 - 1


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator for explicit draws (permutations)."""
    n = as_int(seed)
    if n is None or not 0 <= n <= _MAX_TORCH_SEED:
        raise CtrkitError(f"seed: expected an int >= 0 and <= {_MAX_TORCH_SEED}, got {seed!r}")
    seed = n
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def check_device(device: str | torch.device) -> str | torch.device:
    """`device` when it names one (auto, cpu, cuda, cuda:N or a torch.device), without asking the
    machine whether it has it (`resolve_device` does): the one rule of a device's name."""
    if isinstance(device, torch.device) or (isinstance(device, str) and (
            device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device))):
        return device
    # "device" names the setting and the CLI's --device alike
    raise CtrkitError(f"device must be cpu, cuda, cuda:N or auto, got {device!r}"
                      f"{did_you_mean(device, ('cpu', 'cuda', 'auto'))}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(check_device(device), torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CtrkitError(f"device {device}: no CUDA device is available on this machine")
    return torch.device(device)


_ALLOCATOR_TUNED: bool | None = None


def tune_cpu_allocator(device: str | torch.device = "cpu") -> bool:
    """Keep freed CPU tensor memory inside the process: glibc ``mallopt`` with no ``mmap`` for big
    blocks and a 1 GB trim threshold. By default glibc serves every block over 32 MB with a fresh
    ``mmap`` and unmaps it on free, so a training step's big temporaries (``[B, 1521]`` inner
    products, ``[B, F*d]`` activations at B=10,000) are page-faulted in again on every step (the
    A/B is in bench/results/, the ``malloc`` variants). The cost: the process keeps its peak heap
    instead of returning it to the OS between steps.

    Called by the trainers with their device (a no-op off CPU); once per process, Linux/glibc only.
    ``CTRKIT_CPU_ALLOCATOR=default`` leaves malloc alone. Returns whether the allocator is tuned.
    """
    global _ALLOCATOR_TUNED
    if torch.device(device).type != "cpu":
        return False
    if _ALLOCATOR_TUNED is not None:
        return _ALLOCATOR_TUNED
    _ALLOCATOR_TUNED = False
    if os.environ.get("CTRKIT_CPU_ALLOCATOR", "tuned").lower() == "default" or platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    _ALLOCATOR_TUNED = mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1
    return _ALLOCATOR_TUNED


def env_info(device: str | torch.device | None = None, seed: int | None = None) -> dict:
    """Versions, machine and device, recorded with every result."""
    import importlib.metadata as md


    def ver(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    info = {
        "ctrkit": ver("ctrkit"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device) if device is not None else None,
        "seed": seed,
        "cpu_allocator": "tuned" if _ALLOCATOR_TUNED else "default",
    }
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def cpuinfo(field: str) -> str | None:
    """The first value of `field` in /proc/cpuinfo ("model name", "vendor_id", "flags"), or None
    (no such field, or no /proc)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == field:
                return value.strip()
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or "unknown"


_THREAD_SAMPLE_S = 0.2  # how long "auto" watches /proc/stat: long enough to see a busy core, short at start-up
_FREE_CORE_MIN = 0.75  # a core counts as free when at least this share of it was idle over the sample


def resolve_threads(threads: int | str | None = "auto", *, sample_s: float = _THREAD_SAMPLE_S) -> int:
    """The number of intra-op CPU threads to use: an int (or its string) as given, or ``"auto"``/None.

    ``"auto"``: ``OMP_NUM_THREADS`` when set (the user's choice, held to the same cap as a given count;
    of an OpenMP list "4,2" the first, outer count); otherwise the cores this process may
    run on (``os.sched_getaffinity``, capped by a cgroup CPU quota) minus those other processes keep
    busy right now (``/proc/stat`` sampled for ``sample_s`` seconds, this process's own CPU time taken
    out), at least 1. Why not all cores: a PyTorch op splits its work evenly over its threads and waits
    for the slowest, so one thread sharing its core with another busy process stalls every op; on the
    2-core machine, with one CPU-bound process beside it, DeepFM ran faster with 1 thread than with 2
    (``bench/bench_threads.py``; the numbers are in ``bench/results/``). The count is taken once, at
    the start of a run: load that starts later is not followed.
    """
    if threads is None or (isinstance(threads, str) and threads.strip().lower() == "auto"):
        return _auto_threads(sample_s)
    n = as_int(threads)
    if isinstance(threads, str):  # a count typed as text (--threads, a config file)
        with contextlib.suppress(ValueError):
            n = int(threads.strip())
    if n is None or n < 1:
        raise CtrkitError(f"threads must be a positive int or 'auto', got {threads!r}")
    if n > _most_threads():
        raise CtrkitError(f"threads: {n} is more than this machine can use (at most {_most_threads()}: 4 per core, "
                          f"64 at least)")
    return n


def _most_threads() -> int:
    return max(64, 4 * (os.cpu_count() or 1))  # beyond, OpenMP's thread start can crash the process


def _omp_num_threads() -> int | None:
    """OMP_NUM_THREADS as "auto" takes it, or None when unset/empty. Checked like an explicit count:
    torch.set_num_threads(999999) crashes the process in libgomp at the first parallel op."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not text:
        return None
    try:
        n = int(text.split(",")[0])  # an OpenMP list "4,2": the outer count is the one torch uses
    except ValueError:
        n = 0
    if n < 1:
        raise CtrkitError(f"OMP_NUM_THREADS={text!r}: expected a positive int (threads 'auto' follows it)")
    if n > _most_threads():
        raise CtrkitError(f"OMP_NUM_THREADS={text!r}: more threads than this machine can use (at most "
                          f"{_most_threads()}: 4 per core, 64 at least)")
    return n


def _auto_threads(sample_s: float) -> int:
    env = _omp_num_threads()
    if env is not None:
        return env
    cores = _usable_cores()
    busy = _busy_cores_of_others(sample_s)
    if busy is None:  # no /proc/stat (not Linux): all usable cores
        return cores
    free = min(cores, (os.cpu_count() or cores) - busy)  # busy counts every CPU of the machine
    return max(1, int(free + 1 - _FREE_CORE_MIN))


def cpu_slots(threads) -> int:
    """How many runs of `threads` CPU threads each fit the usable cores side by side: the one rule
    behind `workers="auto"` (processes of one grid) and `reproduce --jobs auto` (notebooks at once).
    `threads` "auto"/None: a run takes the free cores itself (`resolve_threads`), so 1."""
    if threads is None or (isinstance(threads, str) and threads.strip().lower() == "auto"):
        return 1
    return max(1, _usable_cores() // max(1, int(threads)))


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`, a container's shutdown), raised where Ctrl-C raises
    KeyboardInterrupt: the same clean stop (claims released, workers ended, nothing half-written
    kept), so that one tested path serves both; the CLI tells them apart in its last line."""


def stop_on_sigterm(error: type[BaseException] = Terminated) -> None:
    """Make SIGTERM raise `error` in this process's main thread (a no-op elsewhere: only the main
    thread may set a handler). Without it SIGTERM ends Python at once, without its cleanup."""
    import signal
    import threading

    def _raise(signum, frame):
        raise error()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)


def die_with_parent(parent: int | None = None) -> None:
    """In a worker process: on Linux, ask the kernel to SIGTERM this process when its parent dies
    (prctl PR_SET_PDEATHSIG), so the workers of a killed run stop instead of going on writing into
    its output beside the rerun; exits now if `parent` (its pid) is already gone. Elsewhere nothing."""
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _usable_cores() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # cgroup v2 quota: "max 100000" or "200000 100000" (= 2 cores)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(-(-int(quota) // int(period)))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _busy_cores_of_others(sample_s: float) -> float | None:
    """Cores kept busy by other processes over `sample_s` seconds (all CPUs of the machine), or None."""
    import time

    try:
        busy0, total0 = _proc_stat_ticks()
        own0 = sum(os.times()[:2])  # this process's user + system seconds
        time.sleep(sample_s)
        busy1, total1 = _proc_stat_ticks()
        own1 = sum(os.times()[:2])
    except (OSError, ValueError, IndexError):
        return None
    ticks = total1 - total0
    if ticks <= 0:
        return None
    others = (busy1 - busy0) - (own1 - own0) * os.sysconf("SC_CLK_TCK")  # /proc/stat counts USER_HZ ticks
    return max(0.0, others / ticks * (os.cpu_count() or 1))


def _proc_stat_ticks() -> tuple[float, float]:
    """(busy, total) clock ticks of all CPUs since boot, from the first line of /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return sum(fields) - fields[3] - fields[4], sum(fields)  # idle and iowait are not busy
