"""Replicas: aggregate training samples/s and peak memory of K = 1, 2, 4, 8, 16 runs of one model
trained in one batched step (`ctrkit.training.replicas`), against one run alone (K = 1: the
sequential step, CPU kernels).

Each (size, model, K) is a fresh subprocess (its own peak RSS) timing the training step of
`ctrkit.training.loop` (forward, BCE, backward, clipping at 10, each replica's fused Adam) on random
Criteo-shaped indices, after warm-up steps. Sizes: "smoke" (the smoke preset, batch 512: what the
quick/paper reproduce profiles train), "quick" (the quick preset's models, batch 2,048, dropout 0.1) and "bars" (embedding 16, MLP [400, 400, 400], batch 10,000).
Speed-up = aggregate samples/s at K / samples/s of one run alone (the sequential path K times).

    .venv/bin/python bench/bench_replicas.py --threads 1 --tag NAME
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT_PREFIX = "REPLICAS_RESULT "
FIELD_SIZES = [40 + 7 * i for i in range(13)] + [30 + 180 * i for i in range(26)]
SIZES = {"smoke": {"batch": 512, "steps": 30, "model": None, "preset": "smoke"},
         "quick": {"batch": 2048, "steps": 12, "model": None, "preset": "quick"},
         "bars": {"batch": 10000, "steps": 4, "model": {"embedding_dim": 16, "hidden_units": [400, 400, 400],
                                                      "net_dropout": 0.0}, "preset": "quick"}}


def worker(job: dict) -> dict:
    import resource

    import torch

    sys.path.insert(0, str(HERE.parent))
    from ctrkit import models
    from ctrkit.core.utils import seed_everything
    from ctrkit.training import presets, replicas
    from ctrkit.training.config import TrainConfig
    from ctrkit.training.loop import Peer
    from ctrkit.training.losses import peer_loss

    torch.set_num_threads(job["threads"])
    size, k, b = SIZES[job["size"]], job["k"], SIZES[job["size"]]["batch"]
    hp = {**presets.get(job["model"], size["preset"]).model, **(size["model"] or {})}
    peers = []
    for s in range(k):
        seed_everything(s)
        peers.append(Peer(models.build(job["model"], FIELD_SIZES, **hp), TrainConfig(), index=0, learns_from=[],
                          trainable=True, device=torch.device("cpu")))
    X = torch.stack([torch.randint(0, n, (200_000,)) for n in FIELD_SIZES], 1)
    y = torch.randint(0, 2, (200_000,)).float()
    stack = replicas.Stack(peers[0].model) if k > 1 else None

    def one_step(i: int) -> None:
        idx = torch.randint(0, X.shape[0], (k, b))
        if stack is None:
            xb, yb = X[idx[0]], y[idx[0]]
            peers[0].step(peer_loss(peers[0].logits(xb, i, 1), yb, xb.new_empty(0, b).float(), 0.0))
            return
        xb, yb = X[idx.view(-1)].view(k, b, -1), y[idx.view(-1)].view(k, b)
        z = stack.logits(peers, xb, [i] * k, list(range(k)))
        replicas.step(peers, [peer_loss(z[j], yb[j], z.new_empty(0, b), 0.0) for j in range(k)])

    for i in range(2):
        one_step(i)
    t = time.perf_counter()
    for i in range(size["steps"]):
        one_step(i + 2)
    dt = time.perf_counter() - t
    return {**job, "batch": b, "steps": size["steps"], "seconds": dt, "samples_per_s": k * b * size["steps"] / dt,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--models", nargs="+", default=["DeepFM", "DCN"])
    ap.add_argument("--sizes", nargs="+", default=["smoke", "quick", "bars"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="replicas")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    sys.path.insert(0, str(HERE))
    import _results

    rows = []
    for size in args.sizes:
        for model in args.models:
            for k in args.ks:
                job = {"size": size, "model": model, "k": k, "threads": args.threads}
                out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True,
                                     text=True, check=True).stdout
                rows.append(json.loads(out.split(RESULT_PREFIX, 1)[1]))
                print(rows[-1], file=sys.stderr, flush=True)
    for r in rows:
        one = next(o for o in rows if (o["size"], o["model"], o["k"]) == (r["size"], r["model"], 1))
        r["speedup_vs_sequential"] = r["samples_per_s"] / one["samples_per_s"]
    res = {**_results.stamp("bench_replicas.py", f", {args.threads} torch thread(s)"), "rows": rows}
    _results.write(HERE / "results", args.tag, res, to_markdown)


def to_markdown(res: dict) -> str:
    lines = [f"# Replicas: K runs in one batched step\n\n{res['date']} | {res['machine']} | `{res['command']}`\n",
             "Training step only (forward, loss, backward, clip, each replica's Adam) on random Criteo-shaped "
             "indices; K = 1 is one run alone (sequential path, CPU kernels). Speed-up: aggregate samples/s "
             "over K = 1's.\n",
             "| size | model | K | batch | aggregate samples/s | speed-up vs sequential | peak RSS (MB) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['size']} | {r['model']} | {r['k']} | {r['batch']:,} | {r['samples_per_s']:,.0f} | "
              f"{r['speedup_vs_sequential']:.2f}x | {r['peak_rss_mb']:,.0f} |" for r in res["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
