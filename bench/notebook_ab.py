"""Some notebooks of a profile, with notebook parameters the CLI does not take (e.g. fewer seeds), side by side.

    python bench/notebook_ab.py --variant before=/tmp/old --variant now=/tmp/now --profile paper \
        --notebooks 00_data,01_baselines --seeds 2021,2022 --repeats 2 --tag paper-stages

Each repeat runs every variant once (the order rotates by repeat) into a fresh output folder: the
notebooks one after another with papermill, in a subprocess whose PYTHONPATH is the variant's tree
(the kernels inherit it), with the profile's own settings (workers, threads) but the given seeds.
It records each notebook's seconds (the stage split) and whether every table CSV equals the first
variant's of the same repeat (run-key columns aside). For the paper profile, whose whole run takes
hours on the 2-core machine, this times its stages on a subset of seeds.
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
from reproduce_ab import interleaved, variants

_RUN = """
import json, sys, time, papermill
tree, out, dataset, profile, seeds, names = sys.argv[1:7]
secs = {}
for nb in names.split(","):
    t0 = time.perf_counter()
    papermill.execute_notebook(f"{tree}/notebooks/{nb}.ipynb", f"{out}/{dataset}_{nb}.ipynb", cwd=out,
                               parameters=dict(dataset=dataset, profile=profile, out=out,
                                               seeds=[int(s) for s in seeds.split(",")]),
                               progress_bar=False, kernel_name="python3")
    secs[nb] = round(time.perf_counter() - t0, 1)
print(json.dumps(secs))
"""


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", required=True, help="NAME=TREE (repeatable; the first is the reference)")
    ap.add_argument("--dataset", default="criteo")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--notebooks", default="00_data,01_baselines")
    ap.add_argument("--seeds", default="2021,2022")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tag", default="notebook-ab")
    ap.add_argument("--note", default="")
    ap.add_argument("--keep", default=None, help="keep the outputs under this folder (default: a temporary one)")
    return ap.parse_args()


def one(v: dict, args, out: Path) -> dict:
    out.mkdir(parents=True)
    return run_notebooks(v, args, out)


def run_notebooks(v: dict, args, out: Path) -> dict:
    """`args.notebooks` of variant `v` one after another into `out`: {variant, wall_s, notebooks: seconds each}."""
    env = {**os.environ, "PYTHONPATH": v["tree"], "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _RUN, v["tree"], str(out), args.dataset, args.profile, args.seeds,
                        args.notebooks], env=env, cwd=v["tree"], capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{v['name']} failed (rc {p.returncode}): {p.stderr.strip()[-400:]}")
    return {"variant": v["name"], "wall_s": round(time.perf_counter() - t0, 1),
            "notebooks": json.loads(p.stdout.strip().splitlines()[-1])}


def table(res: dict, title: str, tree=lambda v: f"`{v['tree']}`", stage_head: str = "median (s)",
          stage=lambda rows, nb: f"{statistics.median(r['notebooks'][nb] for r in rows):.1f}") -> str:
    """The result as markdown: a row per variant, its walls, median, speed-up and a cell per notebook."""
    names = [v["name"] for v in res["variants"]]
    nbs = res["notebooks"].split(",")
    lines = [f"# {title} ({res['profile']} profile, {res['dataset']}, seeds {res['seeds']})", "",
             f"{res['date']} | {res['machine']} | `{res['command']}`", "", res["note"], "",
             "| variant | tree | wall (s) per repeat | median (s) | speed-up vs first | "
             + " | ".join(f"{nb} {stage_head}" for nb in nbs) + " | tables equal to the first's |",
             "|---|---|---|---:|---:|" + "---:|" * len(nbs) + "---|"]
    med = {}
    for v in res["variants"]:
        rows = [r for r in res["runs"] if r["variant"] == v["name"]]
        med[v["name"]] = statistics.median(r["wall_s"] for r in rows)
        lines.append(f"| {v['name']} | {tree(v)} | {', '.join(str(r['wall_s']) for r in rows)} | "
                     f"{med[v['name']]:.1f} | {med[names[0]] / med[v['name']]:.2f}x | "
                     + " | ".join(stage(rows, nb) for nb in nbs) + f" | {[r['tables_equal'] for r in rows]} |")
    return "\n".join(lines) + "\n"


def to_markdown(res: dict) -> str:
    return table(res, "Notebooks side by side")


def main() -> None:
    args = parse()
    vs = variants(args.variant)
    root = Path(args.keep or tempfile.mkdtemp(prefix="notebook-ab-"))
    runs = interleaved(vs, args.repeats, root, lambda v, out: one(v, args, out))
    res = {**stamp("notebook_ab.py"), "dataset": args.dataset, "profile": args.profile, "notebooks": args.notebooks,
           "seeds": args.seeds, "note": args.note, "variants": vs, "runs": runs}
    write(Path(__file__).resolve().parent / "results", args.tag, res, to_markdown)


if __name__ == "__main__":
    main()
