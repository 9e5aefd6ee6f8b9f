"""The notebooks' analysis cells (tables, figures, captions) on a finished reproduction, source trees side by side.

    python bench/bench_analysis.py --results /tmp/quick --variant before=/tmp/old --variant now=. --repeats 3
    python bench/bench_analysis.py ... --scale 10     # each store's runs 10x over (as 50 seeds): a study's size

Each repeat runs every variant once (the order rotating) in a fresh interpreter with the variant's
tree first on PYTHONPATH, on its own copy of the results folder (`ctrkit reproduce --out` of a
finished run): per dataset, the cells of 01-04 and 07 after their training (export, every paper
table, figure data, figures, captions, the variants tables), as the notebooks call them. It records
the CPU seconds of those cells (the imports apart) and whether every table the cells wrote is
byte-identical to the first variant's, and the store lookups a resumed grid makes before it trains
(`has_run` and `run_records` of 200 runs per dataset). `--scale K` first repeats each store's records
K times, each copy under new seeds, run keys and appends, so the tables see K times the seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _results import stamp, write

CELLS = r'''
import json, resource, sys, time
import matplotlib
matplotlib.use("Agg")
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t0 = cpu()
from ctrkit.analysis import plots
from ctrkit.notebook import reproduce
t1 = cpu()
out, profile = sys.argv[1], sys.argv[2]
for dataset in ("criteo", "avazu"):
    cfg = reproduce.settings(dataset=dataset, profile=profile, out=out, data_dir=None, device="cpu",
                             rows=None, seeds=None, epochs=None, amp=None)
    data = reproduce.dataset(cfg)
    reproduce.export_results(cfg)
    reproduce.paper_table(cfg, "baselines")  # 01
    for name in ("scratch", "sweep"):  # 02
        reproduce.paper_table(cfg, name)
    plots.sweep_gain(reproduce.figure_data(cfg, "sweep"), cfg.figure("sweep_gain"), caption=reproduce.caption(cfg), title="")
    reproduce.chosen(cfg)
    for name in ("headline", "finetune"):
        reproduce.paper_table(cfg, name)
    plots.paired_gains(reproduce.figure_data(cfg, "gains"), cfg.figure("paired_gains"), caption=reproduce.caption(cfg), title="")
    for name in ("controls", "alternatives"):
        reproduce.paper_table(cfg, name)
    reproduce.strength(cfg, data)
    reproduce.paper_table(cfg, "partners")  # 03
    plots.partner_heatmap(reproduce.figure_data(cfg, "partners"), cfg.figure("partner_matrix"), caption=reproduce.caption(cfg), title="")
    reproduce.paper_table(cfg, "partner_slopes")
    plots.partner_slopes(reproduce.figure_data(cfg, "partner_points"), reproduce.figure_data(cfg, "partner_slopes"),
                         cfg.figure("partner_slopes"), caption=reproduce.caption(cfg))
    reproduce.paper_table(cfg, "peer_count")  # 04
    plots.peer_count(reproduce.figure_data(cfg, "peer_count"), cfg.figure("peer_count"), caption=reproduce.caption(cfg), title="")
    reproduce.variants_table(cfg)  # 07
    plots.paired_gains(reproduce.read_table(cfg.table("fig_variants")), cfg.figure("variants"), x="comparison",
                       hue="model", width=9.0, height=3.2, caption=reproduce.caption(reproduce.for_variants(cfg)), title="")
    reproduce.variants_summary(cfg)
t2 = cpu()
from ctrkit.experiments.store import ResultsStore
for dataset in ("criteo", "avazu"):
    store = ResultsStore(reproduce.settings(dataset=dataset, profile=profile, out=out).store)
    keys = sorted(store.run_keys())[:200]
    assert all(store.has_run(k) and store.run_records(k) for k in keys)
t3 = cpu()
print(json.dumps({"import_cpu_s": round(t1 - t0, 2), "cells_cpu_s": round(t2 - t1, 2),
                  "lookups_cpu_s": round(t3 - t2, 2)}))
'''


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True, help="a finished `ctrkit reproduce --dataset both` output folder")
    ap.add_argument("--profile", default="quick", help="the profile it was run with")
    ap.add_argument("--variant", action="append", required=True, help="NAME=TREE (repeatable; the first is the reference)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=int, default=1, help="repeat each store's records this many times (new seeds)")
    ap.add_argument("--tag", default="analysis-cells")
    ap.add_argument("--note", default="")
    return ap.parse_args()


def scaled(store: Path, k: int) -> None:
    """`store`'s records `k` times over: copy c (c >= 1) under seed + 1000 c, new run keys and appends,
    its file's mtime set back (a settled store, as a study's is when a grid resumes)."""
    recs = [json.loads(line) for line in store.read_text().splitlines() if line.strip()]
    with open(store, "a") as f:
        for c in range(1, k):
            for r in recs:
                seeds = {k: r[k] + 1000 * c for k in ("seed", "peer_seed") if isinstance(r.get(k), int)}
                f.write(json.dumps({**r, **seeds, "run_key": f"{r['run_key']}-x{c}",
                                    "append_id": f"{r['append_id']}-x{c}"}) + "\n")
    os.utime(store, (store.stat().st_mtime - 60,) * 2)


def one(tree: str, results: Path, profile: str, work: Path, scale: int = 1) -> dict:
    shutil.copytree(results, work)
    if scale > 1:
        for store in sorted(work.glob("*/store.jsonl")):
            scaled(store, scale)
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", CELLS, str(work), profile], env=env, cwd=tree, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{tree} failed: {p.stderr.strip()[-600:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def tables(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob("*/tables/*")) if p.is_file()}


def to_markdown(res: dict) -> str:
    lines = [f"# The notebooks' analysis cells on a finished {res['profile']} reproduction, side by side", "",
             f"{res['date']} | {res['machine']} | `{res['command']}`", "", res["note"], "",
             f"Stores: each {res.get('scale', 1)}x the reproduction's records.", "",
             "| variant | tree | cells' CPU s per repeat | median | vs first | imports' CPU s (median) | "
             "lookups' CPU s (median) | tables equal to the first's |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    first = None
    for v in res["variants"]:
        runs = [r for r in res["runs"] if r["variant"] == v["name"]]
        med = statistics.median(r["cells_cpu_s"] for r in runs)
        first = first or med
        lines.append(f"| {v['name']} | `{v['tree']}` | {', '.join(str(r['cells_cpu_s']) for r in runs)} | {med:.2f} | "
                     f"{first / med:.2f}x | {statistics.median(r['import_cpu_s'] for r in runs):.2f} | "
                     f"{statistics.median(r.get('lookups_cpu_s', float('nan')) for r in runs):.2f} | "
                     f"{[r['tables_equal'] for r in runs]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse()
    vs = [{"name": s.partition("=")[0], "tree": str(Path(s.partition("=")[2]).resolve())} for s in args.variant]
    root, runs = Path(tempfile.mkdtemp(prefix="bench-analysis-")), []
    try:
        for r in range(args.repeats):
            done = {}
            for v in vs[r % len(vs):] + vs[:r % len(vs)]:
                work = root / f"{v['name']}-{r}"
                runs.append({"variant": v["name"], "repeat": r,
                             **one(v["tree"], Path(args.results), args.profile, work, args.scale)})
                done[v["name"]] = tables(work)
                print(f"repeat {r} {v['name']}: {runs[-1]}", flush=True)
            for rec in runs[-len(vs):]:
                differ = [k for k, b in done[vs[0]["name"]].items() if done[rec["variant"]].get(k) != b]
                rec["tables_equal"] = "all" if not differ else f"differ: {', '.join(differ[:5])}"
            for v in vs:
                shutil.rmtree(root / f"{v['name']}-{r}")
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the copies this script made
    res = {**stamp("bench_analysis.py"), "profile": args.profile, "results": args.results, "scale": args.scale,
           "note": args.note,
           "variants": vs, "runs": runs}
    write(Path(__file__).resolve().parent / "results", args.tag, res, to_markdown)


if __name__ == "__main__":
    main()
