"""Whole `ctrkit reproduce` runs side by side: source trees and flags as variants, interleaved repeats, fresh outputs.

    python bench/reproduce_ab.py --variant before=/tmp/old --variant now=.:--jobs,auto --repeats 2 --tag reproduce-ab

Each repeat runs every variant once (the order rotates by repeat, so neither always goes first) as
`python -m ctrkit.cli reproduce --dataset D --profile P --out <fresh folder> [flags]` with the
variant's tree first on PYTHONPATH (the notebooks' kernels inherit it, so old code runs old
notebooks). It records the wall time, the whole machine's busy CPU seconds (/proc/stat: run it on a
quiet machine), each notebook's own seconds (its `.done` marker) and whether every table CSV is
byte-identical to the first variant's of the same repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import stamp, write


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME=TREE[:FLAG,FLAG...], e.g. now=.:--jobs,auto (repeatable; the first is the reference)")
    ap.add_argument("--dataset", default="both")
    ap.add_argument("--data", default=None, help="--data of reproduce (a schema dataset's file; an absolute path)")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tag", default="reproduce-ab")
    ap.add_argument("--note", default="")
    ap.add_argument("--keep", default=None, help="keep the outputs under this folder (default: a temporary one)")
    return ap.parse_args()


def variants(specs: list[str]) -> list[dict]:
    out = []
    for s in specs:
        name, _, rest = s.partition("=")
        tree, _, flags = rest.partition(":")
        out.append({"name": name, "tree": str(Path(tree).resolve()), "flags": [f for f in flags.split(",") if f]})
    return out


def one(v: dict, args, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": v["tree"], "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ctrkit.cli", "reproduce", "--dataset", args.dataset, "--profile", args.profile,
           "--out", str(out), *(["--data", args.data] if args.data else []), *v["flags"]]
    t0, c0 = time.perf_counter(), cpu_seconds()
    p = subprocess.run(cmd, env=env, cwd=v["tree"], capture_output=True, text=True)
    wall, c1 = time.perf_counter() - t0, cpu_seconds()
    if p.returncode:
        sys.exit(f"{v['name']} failed (rc {p.returncode}): {p.stderr.strip()[-400:]}")
    notebooks = {m.stem: json.loads(m.read_text())["seconds"] for m in sorted((out / ".done").glob("*.json"))}
    return {"variant": v["name"], "wall_s": round(wall, 1), "cpu_s": round(c1[0] - c0[0], 1),
            "steal_s": round(c1[1] - c0[1], 1), "notebooks": notebooks}


def cpu_seconds() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far (/proc/stat; busy: user, nice, system,
    irq, softirq; stolen: time the hypervisor gave to others). On a quiet machine busy is the work of
    the run measured (its kernels and workers included, which rusage of reaped children misses)."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


def same_tables(a: Path, b: Path) -> tuple[int, list[str]]:
    """(tables, those that differ): byte for byte, or equal once the run-key columns are dropped (a
    pretrained run's key holds its checkpoint folder, inside --out: two folders, two sets of keys)."""
    import pandas as pd

    def same(n: str) -> bool:
        x, y = a / "tables" / n, b / "tables" / n
        if not y.exists() or x.read_bytes() == y.read_bytes():
            return y.exists()
        dx, dy = pd.read_csv(x), pd.read_csv(y)
        keys = [c for c in dx.columns if c.startswith("run_key")]
        return bool(keys) and list(dx.columns) == list(dy.columns) and dx.drop(columns=keys).equals(dy.drop(columns=keys))

    names = sorted(p.name for p in (a / "tables").glob("*.csv"))
    return len(names), [n for n in names if not same(n)]


def to_markdown(res: dict) -> str:
    names = [v["name"] for v in res["variants"]]
    lines = [f"# Whole reproduce runs, side by side ({res['profile']} profile, --dataset {res['dataset']}"
             f"{', --data ' + res['data'] if res.get('data') else ''})", "",
             f"{res['date']} | {res['machine']} | `{res['command']}`", "", res["note"], "",
             "| variant | tree | flags | wall (s) per repeat | median wall (s) | speed-up vs first | machine CPU s per repeat (cores busy; s stolen) | tables equal to the first's (run keys aside) |",
             "|---|---|---|---|---:|---:|---|---|"]
    walls = {n: [r["wall_s"] for r in res["runs"] if r["variant"] == n] for n in names}
    med = {n: round(statistics.median(w), 1) for n, w in walls.items()}
    for v in res["variants"]:
        n = v["name"]
        eq = [r["tables_equal"] for r in res["runs"] if r["variant"] == n]
        cpu = ", ".join(f"{r['cpu_s']} ({r['cpu_s'] / r['wall_s']:.2f}; stolen {r.get('steal_s', 0)})"
                        for r in res["runs"] if r["variant"] == n and "cpu_s" in r) or "-"
        lines.append(f"| {n} | `{v['tree']}` | `{' '.join(v['flags']) or '-'}` | {', '.join(map(str, walls[n]))} | "
                     f"{med[n]} | {med[names[0]] / med[n]:.2f}x | {cpu} | {eq} |")
    lines += ["", "Each notebook's own seconds (its `.done` marker; overlapping notebooks overlap), first repeat:", "",
              "| notebook | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    first = {n: next(r for r in res["runs"] if r["variant"] == n)["notebooks"] for n in names}
    for nb in sorted(set().union(*first.values())):
        lines.append(f"| {nb} | " + " | ".join(str(first[n].get(nb, "-")) for n in names) + " |")
    return "\n".join(lines) + "\n"


def interleaved(vs: list[dict], repeats: int, root: Path, run_one) -> list[dict]:
    """`run_one(variant, fresh output folder)` of every variant per repeat, the order rotating by repeat
    (no variant always first); each record gets its repeat and whether its tables equal the first
    variant's of the same repeat."""
    runs = []
    for r in range(repeats):
        outs = {}
        for v in vs[r % len(vs):] + vs[:r % len(vs)]:
            outs[v["name"]] = root / f"{v['name']}-{r}"
            rec = {**run_one(v, outs[v["name"]]), "repeat": r}
            runs.append(rec)
            print(f"repeat {r} {v['name']}: {rec['wall_s']} s", flush=True)
        for rec in runs[-len(vs):]:
            n, differ = same_tables(outs[vs[0]["name"]], outs[rec["variant"]])
            rec["tables_equal"] = "all" if not differ else f"{n - len(differ)}/{n} (differ: {', '.join(differ)})"
    return runs


def main() -> None:
    args = parse()
    vs = variants(args.variant)
    root = Path(args.keep or tempfile.mkdtemp(prefix="reproduce-ab-"))
    runs = interleaved(vs, args.repeats, root, lambda v, out: one(v, args, out))
    res = {**stamp("reproduce_ab.py"), "dataset": args.dataset, "data": args.data, "profile": args.profile, "note": args.note,
           "variants": vs, "runs": runs}
    write(Path(__file__).resolve().parent / "results", args.tag, res, to_markdown)


if __name__ == "__main__":
    main()
