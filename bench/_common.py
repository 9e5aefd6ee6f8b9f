"""Shared by every benchmark worker (ctrkit, FuxiCTR, DeepCTR-Torch, the bare reference loop).

Imports only numpy/torch/stdlib: workers run in two different venvs (the project's and
bench/.venv-competitors) and the competitor venv has no ctrkit. A worker reads one JSON job spec
(`--spec`), trains, and prints exactly one line `BENCH_RESULT {json}` that run_all.py parses.

Timing rule for every framework alike: the data is already in memory as index tensors; a step is
"take the batch rows (index_select of a seeded permutation), convert them to what the framework's
model takes, forward, loss, backward, optimizer step"; `warmup` steps run untimed, then `steps`
steps are timed (stopping early, after at least `min_steps`, once `max_seconds` have passed so a
slow framework cannot blow the run's time budget; the number of timed steps is recorded).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

RESULT_PREFIX = "BENCH_RESULT "


def parse_spec(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="benchmark worker (started by bench/run_all.py)")
    ap.add_argument("--spec", required=True, help="JSON job spec")
    args = ap.parse_args(argv)
    return json.loads(args.spec)


def setup_process(spec: dict):
    """Threads and memory cap before torch does any work. Returns torch."""
    threads = int(spec.get("threads", 2))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    mem_gb = spec.get("mem_limit_gb")
    if mem_gb:
        # RLIMIT_DATA (private writable memory, i.e. torch's big buffers) makes an oversized
        # allocation fail inside this worker with a RuntimeError instead of waking the kernel's
        # OOM killer on a machine other people are using.
        lim = int(float(mem_gb) * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (lim, lim))
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(int(spec.get("seed", 2021)))
    np.random.seed(int(spec.get("seed", 2021)))
    return torch


def load_feature_map(data_dir) -> dict:
    return json.loads((Path(data_dir) / "feature_map.json").read_text())


def load_split(data_dir, split: str, rows: int | None = None):
    """(X int32 [rows, F], y float32 [rows]) as writable numpy arrays (first `rows` rows)."""
    X = np.load(Path(data_dir) / f"{split}_X.npy", mmap_mode="r")
    y = np.load(Path(data_dir) / f"{split}_y.npy", mmap_mode="r")
    if rows is not None:
        X, y = X[:rows], y[:rows]
    return np.array(X, dtype=np.int32), np.array(y, dtype=np.float32)


def train_rows_needed(spec: dict) -> int:
    if spec["mode"] == "mutual":
        return 1  # the mutual worker reads its own rows through ctrkit.data
    if spec["mode"] == "auc":
        return spec.get("train_rows")
    # speed: enough distinct rows for every step of the run, at least a few batches' worth
    steps = int(spec["warmup"]) + int(spec["steps"])
    return max(steps, 4) * int(spec["batch_size"])


def batch_indices(torch, n: int, batch_size: int, seed: int):
    """Generator of batch index tensors over shuffled epochs (the same order for every framework)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for idx in perm.split(batch_size):
            if idx.numel() == batch_size:
                yield idx


def epoch_indices(torch, n: int, batch_size: int, seed: int):
    """One epoch, shuffled, last batch partial (as every framework's fit does)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g).split(batch_size)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_steps(step, next_batch, spec: dict) -> dict:
    """Run `warmup` untimed then up to `steps` timed calls of `step(batch)`; samples/s over the
    timed ones. `step` must leave no async work pending (CPU: it doesn't)."""
    warmup, steps = int(spec["warmup"]), int(spec["steps"])
    max_s, min_steps = float(spec.get("max_seconds", 1e9)), int(spec.get("min_steps", 2))
    slow = False
    sync = spec.get("_sync") or (lambda: None)
    t_warm = time.perf_counter()
    for i in range(warmup):
        t0 = time.perf_counter()
        step(next_batch())
        # a very slow step (e.g. FuxiCTR FiBiNET) is warm after one step; keep the budget
        if i == 0 and time.perf_counter() - t0 > float(spec.get("slow_step_s", 5.0)):
            slow = True  # one timed step of many seconds is already a stable measurement
            min_steps = 1
            break
    sync()
    warm_s = time.perf_counter() - t_warm
    times = []
    samples = 0
    t_start = time.perf_counter()
    for i in range(steps):
        b = next_batch()
        t0 = time.perf_counter()
        step(b)
        sync()
        times.append(time.perf_counter() - t0)
        samples += int(spec["batch_size"])
        if i + 1 >= min_steps and time.perf_counter() - t_start > max_s:
            break
    total = time.perf_counter() - t_start
    return {"samples_per_s": samples / total, "timed_steps": len(times), "timed_seconds": total,
            "step_seconds_median": float(np.median(times)), "warmup_seconds": warm_s, "slow_step": slow}


def auc_logloss(y: np.ndarray, p: np.ndarray) -> dict:
    from sklearn.metrics import log_loss, roc_auc_score
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(y, p)), "logloss": float(log_loss(y, p))}


def env(torch) -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "executable": sys.executable}


def run_worker(spec: dict, run_one) -> None:
    """Call `run_one(spec, model_spec, torch, data)` for each model in the spec; print one result
    line per model (errors, e.g. out of memory, are results too)."""
    torch = setup_process(spec)
    fm = load_feature_map(spec["data"])
    rows = train_rows_needed(spec)
    t0 = time.perf_counter()
    Xtr, ytr = load_split(spec["data"], "train", rows)
    data = {"feature_map": fm, "train": (Xtr, ytr), "load_seconds": time.perf_counter() - t0}
    if spec["mode"] == "auc":
        data["test"] = load_split(spec["data"], "test", spec.get("test_rows"))
    for model_spec in spec["models"]:
        out = {"framework": spec["framework"], "model": model_spec["model"], "mode": spec["mode"],
               "batch_size": spec["batch_size"], "variant": spec.get("variant", "fp32"),
               "tag": spec.get("tag"), "repeat": spec.get("repeat")}
        try:
            out.update(run_one(spec, model_spec, torch, data))
            out["status"] = "ok"
        except Exception as e:  # noqa: BLE001  a failure is a measurement (e.g. OOM), not a crash
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            oom = isinstance(e, MemoryError) or "can't allocate memory" in str(e) or "out of memory" in str(e).lower()
            out.update({"status": "oom" if oom else "error", "error": msg})
            if not oom:
                traceback.print_exc(file=sys.stderr)
        out["peak_rss_mb"] = peak_rss_mb()
        out["env"] = env(torch)
        print(RESULT_PREFIX + json.dumps(out), flush=True)


def finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)
