"""Workers: wall time of one `experiments.run` grid of the quick profile's size trained one run after
another (workers=1) against spread over worker processes (workers=2, `ctrkit.experiments.workers`),
on the CPU, interleaved, plus the start cost of a worker pool.

The grid: the quick profile's four models trained mutually and alone from scratch (its preset,
rows, seeds, epoch cap and patience, threads 1): 2 x 5 = 10 runs. Each timing trains into a fresh
store (nothing skipped); the repeats alternate which setting goes first, so slow drift of the
machine's load hits both alike. Each repeat also checks that both settings stored the same records
(volatile fields left out). Run it on a quiet machine: another busy process takes a core from workers=2.

    .venv/bin/python bench/bench_workers.py                 # the quick-size grid, 3 repeats
    .venv/bin/python bench/bench_workers.py --smoke         # ~1 minute: 1,000 rows, 1 epoch, 2 seeds
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
VOLATILE = {"seconds", "env_info", "append_id", "written_at", "checkpoint"}


def _fingerprint(data) -> str:
    """The trivial job of the pool-start measurement."""
    return data.fingerprint


def pool_start(data, workers: int) -> list[float]:
    """Seconds for a pool of `workers` to start and run one trivial job each: the first pool of this
    process (it starts the forkserver) and a second one."""
    from ctrkit.experiments.workers import run_jobs

    out = []
    for _ in range(2):
        t0 = time.perf_counter()
        list(run_jobs(_fingerprint, [()] * workers, data, workers, names=["probe"] * workers))
        out.append(round(time.perf_counter() - t0, 2))
    return out


def _stored(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in rows),
                  key=lambda r: (r["run_key"], r["peer"]))


def one_grid(data, grid: dict, workers: int, store: Path) -> float:
    from ctrkit import experiments

    t0 = time.perf_counter()
    experiments.run(data, [grid["models"]], store=store, workers=workers, **grid["kw"])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="a ~1 minute check of the script, not a measurement")
    ap.add_argument("--tag", default="workers-cpu")
    args = ap.parse_args()

    import _results
    import torch._dynamo  # noqa: F401 - what a process's first optimizer imports (~1 s): warm, as in a kernel that trained before
    from ctrkit import data as ctrdata
    from ctrkit.notebook.profiles import profile

    q = profile("quick")
    rows, seeds, epochs = (1000, q["seeds"][:2], 1) if args.smoke else (q["rows"], q["seeds"], q["epochs"])
    repeats = 1 if args.smoke else args.repeats
    grid = {"models": q["models"], "kw": dict(inits=["scratch"], modes=["mutual", "alone"], seeds=seeds,
                                              preset=q["preset"], epochs=epochs, overrides={"patience": q["patience"]},
                                              device="cpu", threads=q["threads"], amp=q["amp"], progress=False)}
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        tmp = Path(tmp)
        data = ctrdata.synthetic_dataset("criteo", rows, tmp / "data", seed=2021)
        start = pool_start(data, args.workers)
        times, equal = {1: [], args.workers: []}, []
        for r in range(repeats):
            order = [1, args.workers] if r % 2 == 0 else [args.workers, 1]
            for w in order:
                times[w].append(round(one_grid(data, grid, w, tmp / f"r{r}w{w}.jsonl"), 1))
                print(f"repeat {r + 1}/{repeats} workers={w}: {times[w][-1]} s", flush=True)
            equal.append(_stored(tmp / f"r{r}w1.jsonl") == _stored(tmp / f"r{r}w{args.workers}.jsonl"))
    med = {w: statistics.median(t) for w, t in times.items()}
    res = {**_results.stamp("bench_workers.py", ", threads 1 per run"), "smoke": args.smoke, "rows": rows,
           "runs": 2 * len(seeds), "models": q["models"], "epochs": epochs, "pool_start_s": start,
           "seconds": {str(w): t for w, t in times.items()}, "median_s": {str(w): m for w, m in med.items()},
           "speedup": round(med[1] / med[args.workers], 2), "records_equal": equal, "workers": args.workers}
    _results.write(HERE / "results", args.tag + ("-smoke" if args.smoke else ""), res, to_markdown)


def to_markdown(res: dict) -> str:
    w = str(res["workers"])
    lines = [f"# Workers: one grid's runs over {w} processes vs one after another (CPU)\n",
             f"{res['date']} | {res['machine']} | `{res['command']}`\n",
             f"Grid: {res['runs']} runs (mutual and alone from scratch, {'+'.join(res['models'])}), "
             f"{res['rows']} synthetic Criteo rows, epoch cap {res['epochs']}, threads 1 per run"
             + (" (smoke: a check of the script, not a measurement)" if res["smoke"] else "") + ".\n",
             "| workers | seconds per repeat | median s |", "|---|---|---|"]
    for k in ("1", w):
        lines.append(f"| {k} | {', '.join(str(s) for s in res['seconds'][k])} | {res['median_s'][k]:.1f} |")
    lines += ["", f"Speed-up (median workers=1 / workers={w}): **{res['speedup']}x**; store records equal in "
                  f"every repeat: {all(res['records_equal'])}.",
              f"Pool start ({w} workers, one trivial job each): first of the process {res['pool_start_s'][0]} s "
              f"(starts the forkserver, imports torch and ctrkit), later {res['pool_start_s'][1]} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
