"""Benchmark `ctrkit prepare` (end to end: raw Criteo train.txt -> processed directory) against
FuxiCTR's own preprocessing, on the same synthetic Criteo-shaped rows.

    .venv/bin/python bench/bench_prepare.py                    # 1M and 10M rows, FuxiCTR on 1M
    .venv/bin/python bench/bench_prepare.py --rows 1000000 --no-fuxictr
    .venv/bin/python bench/bench_prepare.py --rows 1000000 --schema-ab --tag schema   # schema file vs built-in

Each measured run is its own subprocess, started by a small measuring process of its own (this
script with --measure), so getrusage(RUSAGE_CHILDREN).ru_maxrss is the peak RSS of exactly that
run. FuxiCTR starts Ray, whose worker processes are not our children: for it we also sample the
summed RSS of the whole process tree (psutil) and report the larger figure.

Writes bench/results/prepare-<date>-<machine>[-<tag>].json (machine, versions, load average: the numbers
mean little without them).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMPETITOR_PY = HERE / ".venv-competitors" / "bin" / "python"

CRITEO_COLS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]


def measure(cmd: list[str]) -> dict:
    """Run cmd; wall time, exit code, and peak RSS (own children + sampled process tree)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak_tree = [0]
    stop = threading.Event()

    def sample():
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            total = 0
            try:
                for p in [root] + root.children(recursive=True):
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            peak_tree[0] = max(peak_tree[0], total)
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"rc": rc, "seconds": wall, "peak_rss_children_gb": ru.ru_maxrss / 2**20,
            "peak_rss_tree_sampled_gb": peak_tree[0] / 2**30,
            "cpu_user_s": ru.ru_utime, "cpu_sys_s": ru.ru_stime}


def run_measured(cmd: list[str]) -> dict:
    """Measure in a fresh intermediate process so RUSAGE_CHILDREN covers this run only."""
    out = subprocess.run([sys.executable, __file__, "--measure", "--", *cmd], capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    lines = [line for line in out.stdout.splitlines() if line.startswith("MEASURE ")]
    if not lines:
        raise RuntimeError(f"measuring {cmd[:3]} failed: {out.stdout[-2000:]}")
    return json.loads(lines[-1][len("MEASURE "):])


def machine() -> dict:
    sys.path.insert(0, str(ROOT))
    from ctrkit.core.utils import env_info
    import numpy
    import pyarrow

    info = env_info(None, None)
    info.update({"pyarrow": pyarrow.__version__, "numpy": numpy.__version__,
                 "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                 "hostname": platform.node()})
    if COMPETITOR_PY.exists():
        v = subprocess.run([str(COMPETITOR_PY), "-c", "import fuxictr, polars, ray; print(fuxictr.__version__, polars.__version__, ray.__version__)"],
                           capture_output=True, text=True)
        if v.returncode == 0:
            f, p, r = v.stdout.split()
            info.update({"fuxictr": f, "polars": p, "ray": r})
    return info


FUXI_WORKER = r'''
import json, logging, os, sys, time
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
data_root, src = sys.argv[1], sys.argv[2]
from fuxictr.datasets.criteo import CustomizedFeatureProcessor
from fuxictr.preprocess import build_dataset
ints = [f"I{i}" for i in range(1, 14)]
cats = [f"C{i}" for i in range(1, 27)]
# The BARS Criteo_x4_001 dataset config (dataset_config_criteo_x4_001.yaml), as FuxiCTR runs it.
params = dict(
    dataset_id="criteo_bench", data_root=data_root, data_format="csv",
    train_data=os.path.join(src, "train.csv"), valid_data=os.path.join(src, "valid.csv"),
    test_data=os.path.join(src, "test.csv"), min_categr_count=10,
    feature_cols=[{"name": ints, "active": True, "dtype": "float", "type": "categorical",
                   "na_value": 0, "fill_na": 0, "preprocess": "convert_to_bucket"},
                  {"name": cats, "active": True, "dtype": "str", "type": "categorical",
                   "na_value": "", "fill_na": ""}],
    label_col={"name": "label", "dtype": "float"}, sep="\t")
t = time.perf_counter()
enc = CustomizedFeatureProcessor(**params)
build_dataset(enc, **params)
print("FUXI_SECONDS", time.perf_counter() - t)
'''


def split_for_fuxictr(raw: Path, dst: Path, rows: int) -> None:
    """FuxiCTR reads header CSVs of pre-split files: the same rows, header added, first 80/10/10%."""
    if (dst / "test.csv").exists():
        return
    dst.mkdir(parents=True, exist_ok=True)
    header = "\t".join(CRITEO_COLS) + "\n"
    bounds = [("train", int(rows * 0.8)), ("valid", int(rows * 0.9)), ("test", rows)]
    with open(raw) as f:
        i = 0
        for name, end in bounds:
            with open(dst / f"{name}.csv", "w") as g:
                g.write(header)
                while i < end:
                    g.write(f.readline())
                    i += 1


SCHEMA_YAML = """\
# The built-in Criteo x4_001 schema, written out as a user's schema file (bench/bench_prepare.py --schema-ab)
name: criteo_as_schema
label: {column: label, positive: [1], negative: [0]}
columns: [%s]
numeric: [%s]
categorical: [%s]
order: [%s]
min_count: 10
split: {ratios: [8, 1, 1], seed: %d, stratified: true}
"""


def schema_ab(ctrkit_bin: list, raw_dir: Path, work: Path, rows: int, repeats: int, seed: int) -> dict:
    """The same raw file through the built-in Criteo path and through an equivalent schema file,
    interleaved (A B A B ...) so a busy machine's drift is shared; median time, max peak RSS."""
    ints, cats = CRITEO_COLS[1:14], CRITEO_COLS[14:]
    schema = work / "criteo_as_schema.yaml"
    schema.write_text(SCHEMA_YAML % (", ".join(CRITEO_COLS), ", ".join(ints), ", ".join(cats),
                                     ", ".join(ints + cats), seed))
    variants = {"builtin": ["criteo", "--seed", str(seed)], "schema": ["--schema", str(schema)]}
    runs = {k: [] for k in variants}
    for rep in range(repeats):
        for name, how in variants.items():
            out = work / f"criteo-{rows}-{name}"
            shutil.rmtree(out, ignore_errors=True)
            load0 = os.getloadavg()
            m = run_measured([*ctrkit_bin, "prepare", *how, "--raw", str(raw_dir), "--out", str(out)])
            runs[name].append({**m, "repeat": rep, "load_avg_before": load0})
            print(f"  {name:<8} repeat {rep}: {m['seconds']:.1f} s, peak RSS {m['peak_rss_children_gb']:.2f} GB "
                  f"(rc {m['rc']}, load {load0[0]:.1f})", flush=True)
        same = all((work / f"criteo-{rows}-builtin" / f).read_bytes() == (work / f"criteo-{rows}-schema" / f).read_bytes()
                   for f in [f"{sp}_{a}.npy" for sp in ("train", "valid", "test") for a in ("X", "y")])
    summary = {}
    for name, rs in runs.items():
        secs = sorted(r["seconds"] for r in rs)
        summary[name] = {"median_seconds": secs[len(secs) // 2], "max_peak_rss_gb": max(r["peak_rss_children_gb"] for r in rs)}
    ratio = {"time": summary["schema"]["median_seconds"] / summary["builtin"]["median_seconds"],
             "memory": summary["schema"]["max_peak_rss_gb"] / summary["builtin"]["max_peak_rss_gb"]}
    print(f"schema / built-in on {rows:,} rows: time {ratio['time']:.2f}x, memory {ratio['memory']:.2f}x; "
          f"same .npy bytes: {same}", flush=True)
    for name in variants:
        shutil.rmtree(work / f"criteo-{rows}-{name}", ignore_errors=True)
    return {"tool": "ctrkit schema vs built-in", "rows": rows, "repeats": repeats, "runs": runs,
            "summary": summary, "ratio": ratio, "same_npy_bytes": same, "schema_file": schema.read_text()}


def ensure_raw(ctrkit_bin: list, work: Path, rows: int, seed: int) -> Path:
    raw_dir = work / f"criteo-{rows}"
    if not (raw_dir / "train.txt").exists():
        t = time.perf_counter()
        subprocess.run([*ctrkit_bin, "synth", "criteo", "--rows", str(rows), "--out", str(raw_dir),
                        "--seed", str(seed)], check=True, cwd=ROOT)
        print(f"synth {rows:,} rows: {time.perf_counter() - t:.1f} s", flush=True)
    return raw_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--work", default=str(HERE / "work" / "prepare"))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--no-fuxictr", action="store_true")
    ap.add_argument("--fuxictr-rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--tag", default="", help="suffix of the result file name (keeps an earlier run of the day)")
    ap.add_argument("--schema-ab", action="store_true",
                    help="only: built-in Criteo vs the same schema as a file, interleaved, per --rows")
    ap.add_argument("--repeats", type=int, default=3, help="--schema-ab repeats of each variant")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("cmd", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print("MEASURE " + json.dumps(measure(args.cmd)), flush=True)
        return 0

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ctrkit_bin = [sys.executable, "-m", "ctrkit.cli"]
    result = {"benchmark": "prepare", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "load_avg_start": os.getloadavg(), "runs": []}
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cpu_count']} cores, "
          f"load average {result['load_avg_start']}", flush=True)
    for rows in args.rows:
        raw_dir = ensure_raw(ctrkit_bin, work, rows, args.seed)
        raw = raw_dir / "train.txt"
        if args.schema_ab:
            result["runs"].append(schema_ab(ctrkit_bin, raw_dir, work, rows, args.repeats, args.seed))
            continue
        out = work / f"criteo-{rows}-prepared"
        if out.exists():
            shutil.rmtree(out)
        load0 = os.getloadavg()
        m = run_measured([*ctrkit_bin, "prepare", "criteo", "--raw", str(raw_dir), "--out", str(out),
                          "--seed", str(args.seed)])
        run = {"tool": "ctrkit", "rows": rows, "raw_bytes": raw.stat().st_size, **m,
               "rows_per_s": rows / m["seconds"], "load_avg_before": load0, "load_avg_after": os.getloadavg()}
        run["peak_rss_gb"] = m["peak_rss_children_gb"]
        result["runs"].append(run)
        print(f"ctrkit prepare {rows:,} rows: {m['seconds']:.1f} s, {run['rows_per_s']:,.0f} rows/s, "
              f"peak RSS {run['peak_rss_gb']:.2f} GB (rc {m['rc']}; load {load0[0]:.1f})", flush=True)
        shutil.rmtree(out, ignore_errors=True)

        if rows != args.fuxictr_rows or args.no_fuxictr:
            continue
        if not COMPETITOR_PY.exists():
            msg = f"FuxiCTR skipped: {COMPETITOR_PY} is missing (run bash bench/setup_competitors.sh)"
            print(msg, flush=True)
            result["runs"].append({"tool": "fuxictr", "rows": rows, "skipped": msg})
            continue
        src = work / f"criteo-{rows}-fuxictr-src"
        split_for_fuxictr(raw, src, rows)
        froot = work / "fuxictr-out"
        shutil.rmtree(froot, ignore_errors=True)
        worker = work / "fuxictr_prepare_worker.py"
        worker.write_text(FUXI_WORKER)
        load0 = os.getloadavg()
        m = run_measured([str(COMPETITOR_PY), str(worker), str(froot), str(src)])
        run = {"tool": "fuxictr", "rows": rows, **m, "rows_per_s": rows / m["seconds"],
               "peak_rss_gb": max(m["peak_rss_children_gb"], m["peak_rss_tree_sampled_gb"]),
               "load_avg_before": load0, "load_avg_after": os.getloadavg(),
               "note": "build_dataset with the BARS Criteo_x4_001 config on pre-split header files "
                       "(the split is not timed); wall time includes Python start, imports and Ray start"}
        result["runs"].append(run)
        print(f"FuxiCTR build_dataset {rows:,} rows: {m['seconds']:.1f} s, {run['rows_per_s']:,.0f} rows/s, "
              f"peak RSS {run['peak_rss_gb']:.2f} GB (rc {m['rc']})", flush=True)
        shutil.rmtree(froot, ignore_errors=True)

    result["load_avg_end"] = os.getloadavg()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    host = platform.node().split(".")[0] or "machine"
    stem = f"prepare-{dt.date.today().isoformat()}-{host}" + (f"-{args.tag}" if args.tag else "")
    path = Path(args.out) / f"{stem}.json"
    sys.path.insert(0, str(ROOT))
    from ctrkit.core.utils import write_json_atomic
    write_json_atomic(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
