"""A/B of the training engine: `ctrkit.training.loop.fit` samples/s of two ctrkit source trees (e.g. the
commit before the one-loop refactor vs the working tree), interleaved in one run.

    python bench/engine_ab.py --old /path/to/old/tree --rows 200000 --repeats 3 --out bench/results/NAME

Each measurement is a fresh process (PYTHONPATH = the tree) training DeepFM / DCN for `--epochs`
epochs on the same prepared synthetic Criteo data; the order of the two trees alternates per repeat
so that drift of a shared machine falls on both. samples/s is fit's own (training wall time);
samples per CPU-second (the whole fit call) is less sensitive to other jobs on a shared machine.
The ratio reported is the median of the per-repeat after/before ratios (pairs run back to back).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKER = r"""
import json, sys, torch
from ctrkit import data, models
try:
    from ctrkit.training import loop as train
except ImportError:  # trees before the layer folders (e.g. f382031)
    from ctrkit import train
from ctrkit.core.utils import seed_everything
torch.set_num_threads(int(sys.argv[3]))
d = data.load(sys.argv[1])
name = sys.argv[2]
seed_everything(1)
m = models.build(name, d.field_sizes, embedding_dim=16, hidden_units=[400, 400, 400], net_dropout=0.0)
cfg = dict(epochs=int(sys.argv[4]), batch_size=10000, lr=1e-3, patience=10, device="cpu", amp="off", progress=False, seed=1)
# newer trees set threads themselves ("auto" by default); since the typed config it is a run key
if "threads" in train.TrainConfig.keys() or hasattr(train, "RunConfig"):
    cfg["threads"] = int(sys.argv[3])
import time
cpu0 = time.process_time()
r = train.fit(m, d, cfg)
cpu = time.process_time() - cpu0  # the whole fit (training and evaluation): the same work in both trees
print(json.dumps({"samples_per_s": r["samples_per_s"], "samples_per_cpu_s": r["epochs"] * d.rows["train"] / cpu,
                  "test_auc": r["test_auc"], "ctrkit": train.__file__}))
"""


def measure(tree: Path, data_dir: Path, model: str, threads: int, epochs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(data_dir), model, str(threads), str(epochs)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="a ctrkit source tree (its parent folder holds ctrkit/)")
    ap.add_argument("--new", default=str(REPO))
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="DeepFM,DCN")
    ap.add_argument("--work", default=str(REPO / "bench" / "work" / "engine_ab"))
    ap.add_argument("--out", required=True, help="result stem: writes STEM.json and STEM.md")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from ctrkit import data

    d = data.synthetic_dataset("criteo", args.rows, Path(args.work) / "criteo", progress=False)
    trees = {"before": Path(args.old), "after": Path(args.new)}
    runs = []
    for rep in range(args.repeats):
        order = list(trees) if rep % 2 == 0 else list(trees)[::-1]
        for model in args.models.split(","):
            for label in order:
                r = measure(trees[label], d.path, model, args.threads, args.epochs)
                runs.append({"repeat": rep, "model": model, "tree": label, **r})
                print(f"repeat {rep} {model:<7} {label:<6} {r['samples_per_s']:,.0f} samples/s "
                      f"{r['samples_per_cpu_s']:,.0f} per CPU-s AUC {r['test_auc']:.6f}", flush=True)
    summary = {}
    for model in args.models.split(","):
        mine = [r for r in runs if r["model"] == model]
        by = {(r["repeat"], r["tree"]): r for r in mine}
        out = {"test_auc": {t: sorted({round(r["test_auc"], 9) for r in mine if r["tree"] == t}) for t in trees}}
        for metric in ("samples_per_s", "samples_per_cpu_s"):
            out[metric] = {t: statistics.median(r[metric] for r in mine if r["tree"] == t) for t in trees}
            out[metric]["ratio"] = statistics.median(by[(k, "after")][metric] / by[(k, "before")][metric]
                                                     for k in range(args.repeats))
        summary[model] = out
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "command": " ".join(sys.argv), "rows": args.rows, "threads": args.threads,
            "epochs": args.epochs, "note": "shared machine: other jobs ran meanwhile; ratios only, interleaved"}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2) + "\n")
    lines = [f"# Engine A/B: fit samples/s before vs after ({meta['date']})", "",
             f"Command: `{meta['command']}`; {meta['cpu_count']}-core machine ({meta['machine']}), "
             f"{args.threads} thread(s), {args.rows:,} synthetic Criteo rows, batch 10,000, embedding 16, "
             f"MLP [400,400,400], fp32, {args.epochs} epochs, median of {args.repeats} interleaved repeats. "
             f"{meta['note']}.", "",
             "| model | samples/s before | after | ratio | samples/CPU-s before | after | ratio | test AUC before / after |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for model, s in summary.items():
        w, c = s["samples_per_s"], s["samples_per_cpu_s"]
        lines.append(f"| {model} | {w['before']:,.0f} | {w['after']:,.0f} | {w['ratio']:.3f}x | {c['before']:,.0f} | "
                     f"{c['after']:,.0f} | {c['ratio']:.3f}x | {s['test_auc']['before']} / {s['test_auc']['after']} |")
    lines += ["", "ratio: median over repeats of after/before (the two runs of a repeat are back to back)."]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
