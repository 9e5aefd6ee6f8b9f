"""Warm pool: a notebook's sequence of small grids on one dataset with the worker pool kept warm
between grids (`ctrkit.experiments.workers`, the default) against a cold pool per grid (the pool ended
before each grid, as every grid did before), on the CPU, interleaved.

The sequence: `--grids` grids of the quick profile's four models trained alone from scratch for one
epoch, each grid its own seeds (all new runs, into a fresh store), 2 workers, threads 1 per run;
07 runs seven grids on its dataset, 02 and 01 a few. Each repeat checks that both settings stored the
same records (volatile fields left out). Run it on a quiet machine.

    .venv/bin/python bench/bench_warm_pool.py              # 6 grids, 3 repeats
    .venv/bin/python bench/bench_warm_pool.py --smoke      # a check of the script, not a measurement
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def sequence(data, models: list, grids: int, seeds: int, kw: dict, store: Path, *, warm: bool) -> float:
    """Seconds for `grids` grids one after another (cold: the pool ended before each)."""
    from ctrkit import experiments
    from ctrkit.experiments import workers

    workers.shutdown()  # every sequence starts from no pool: its first grid starts one either way
    t0 = time.perf_counter()
    for g in range(grids):
        if not warm:
            workers.shutdown()
        experiments.run(data, [models], store=store, workers=2, seeds=[1000 * (g + 1) + s for s in range(seeds)],
                        **kw)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--grids", type=int, default=6)
    ap.add_argument("--smoke", action="store_true", help="a check of the script, not a measurement")
    ap.add_argument("--tag", default="warm-pool-cpu")
    args = ap.parse_args()

    import _results
    from bench_workers import _stored
    from ctrkit import data as ctrdata
    from ctrkit.notebook.profiles import profile

    q = profile("quick")
    rows, grids, repeats = (1000, 2, 1) if args.smoke else (q["rows"], args.grids, args.repeats)
    kw = dict(inits=["scratch"], modes=["alone"], preset=q["preset"], epochs=1,
              device="cpu", threads=q["threads"], amp=q["amp"], progress=False)
    times, equal = {"cold": [], "warm": []}, []
    with tempfile.TemporaryDirectory(prefix="bench_warm_pool_") as tmp:
        tmp = Path(tmp)
        data = ctrdata.synthetic_dataset("criteo", rows, tmp / "data", seed=2021)
        # not timed: the process's forkserver start (once per process, whatever the pool does after)
        sequence(data, q["models"], 1, 2, kw, tmp / "warmup.jsonl", warm=True)
        for r in range(repeats):
            for name in (("cold", "warm") if r % 2 == 0 else ("warm", "cold")):
                s = sequence(data, q["models"], grids, 2, kw, tmp / f"r{r}{name}.jsonl", warm=name == "warm")
                times[name].append(round(s, 2))
                print(f"repeat {r + 1}/{repeats} {name}: {s:.2f} s", flush=True)
            equal.append(_stored(tmp / f"r{r}cold.jsonl") == _stored(tmp / f"r{r}warm.jsonl"))
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {**_results.stamp("bench_warm_pool.py", ", threads 1 per run, 2 workers"), "smoke": args.smoke,
           "rows": rows, "grids": grids, "runs_per_grid": 2, "models": q["models"], "seconds": times,
           "median_s": med, "saved_per_grid_s": round((med["cold"] - med["warm"]) / max(1, grids - 1), 3),
           "records_equal": equal}
    _results.write(HERE / "results", args.tag + ("-smoke" if args.smoke else ""), res, to_markdown)


def to_markdown(res: dict) -> str:
    lines = [f"# Warm worker pool: {res['grids']} grids in a row, pool kept vs a new pool per grid (CPU)\n",
             f"{res['date']} | {res['machine']} | `{res['command']}`\n",
             f"Each grid: {res['runs_per_grid']} new runs of {'+'.join(res['models'])} alone from scratch, one "
             f"epoch, {res['rows']} synthetic Criteo rows, 2 workers, threads 1 per run"
             + (" (smoke: a check of the script, not a measurement)" if res["smoke"] else "") + ".\n",
             "| pool | seconds per repeat (whole sequence) | median s |", "|---|---|---|"]
    for k in ("cold", "warm"):
        lines.append(f"| {k} | {', '.join(str(s) for s in res['seconds'][k])} | {res['median_s'][k]:.2f} |")
    lines += ["", f"Saved per grid after the first (median difference / (grids - 1)): **{res['saved_per_grid_s']} s**; "
                  f"store records equal in every repeat: {all(res['records_equal'])}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
