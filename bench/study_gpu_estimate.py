"""The study profile on one GPU, estimated from measured epoch times when no GPU is at hand.

Reads the H200 measurements in the anchors folder (``gpu-h200/gpu-check-*.json``: ctrkit ``fit``
samples/s per model at the BARS Criteo x4_001 sizes, batch 10,000, bf16; ``graph-*.json``: the same
models' whole step captured in one CUDA graph) and prices ``ctrkit.notebook.runner.workload`` of the
study profile on Criteo x4's 36.7M training rows: one epoch of a model is rows / its samples/s, a
notebook's cost is its workload in epochs of all four models. Two bounds per column: every run at
the epoch caps (the study's 30 from scratch), and a converged run (``--epochs-per-run``, default 6:
BARS Criteo runs peak at epoch 2-3, plus the patience of 3). Upper bounds in one sense: the study's
`full` preset is smaller than the BARS x4 sizes measured (MLP 3 x 400 vs 5 x 1000, FiBiNET 3 x 400 vs
3 x 2000). Not in another: at the study's batch of 4,096 an eager step is launch-bound, so its
samples/s would be lower than at 10,000 (the graph column is the remedy).

    .venv/bin/python bench/study_gpu_estimate.py [--anchors ../shared/anchors] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ctrkit.notebook import profiles, runner  # noqa: E402

CRITEO_X4_TRAIN_ROWS = 36_672_493
MODELS = ("DeepFM", "DCN", "PNN", "FiBiNET")


def measured(anchors: Path) -> dict[str, dict[str, float]]:
    """{"fit (eager, bf16)": {model: samples/s}, "one CUDA graph (bf16)": {...}} from the anchors' JSON."""
    gpu = anchors / "gpu-h200"
    fit = json.loads(sorted(gpu.glob("gpu-check-*.json"))[-1].read_text())["results"]
    graph = json.loads(sorted(gpu.glob("graph-*.json"))[-1].read_text())["results"]
    best = {}
    for r in graph:  # repeats: the best of each (the chip's rate, not a noisy repeat)
        if r.get("status") == "ok" and r["what"].endswith("bf16 graph") and r["what"].split()[0] in MODELS:
            best[r["what"].split()[0]] = max(best.get(r["what"].split()[0], 0.0), r["samples_per_s"])
    return {"fit (eager, bf16)": {r["what"]: r["samples_per_s"] for r in fit if r["what"] in MODELS},
            "one CUDA graph (bf16)": best}


def table(speeds: dict[str, dict[str, float]], epochs_per_run: int, rows: int) -> str:
    """Markdown: hours per notebook of one dataset, at the caps and converged, per speed column."""
    study = profiles.profile("study")
    converged = dict(study, epochs=epochs_per_run)
    head = "| notebook | " + " | ".join(f"{k}: caps | {k}: converged" for k in speeds) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(speeds))]
    totals = {}
    for nb in runner.estimate(study, dict.fromkeys(MODELS, 1.0)):
        cells = []
        for name, sps in speeds.items():
            epoch = {m: rows / sps[m] for m in MODELS}
            for sizes in (study, converged):
                h = runner.estimate(sizes, epoch, [nb])[nb] / 3600
                totals[(name, id(sizes))] = totals.get((name, id(sizes)), 0.0) + h
                cells.append(f"{h:.1f} h")
        lines.append(f"| {nb} | " + " | ".join(cells) + " |")
    lines.append("| **all** | " + " | ".join(f"**{v:.1f} h**" for v in totals.values()) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anchors", default=str(ROOT.parent / "shared" / "anchors"))
    ap.add_argument("--epochs-per-run", type=int, default=6)
    ap.add_argument("--rows", type=int, default=CRITEO_X4_TRAIN_ROWS)
    ap.add_argument("--out", default=None, help="also write the Markdown here")
    a = ap.parse_args(argv)
    try:
        speeds = measured(Path(a.anchors))
    except (OSError, IndexError, KeyError, ValueError) as e:
        print(f"study_gpu_estimate: error: --anchors {a.anchors}: {e}", file=sys.stderr)
        return 2
    sps = "; ".join(f"{k}: " + ", ".join(f"{m} {v[m] / 1e6:.2f}M" for m in MODELS) for k, v in speeds.items())
    text = (f"Study profile on one H200, Criteo x4 ({a.rows:,} train rows), estimated from measured samples/s "
            f"({sps}); converged = {a.epochs_per_run} epochs per run from scratch\n\n{table(speeds, a.epochs_per_run, a.rows)}\n")
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
