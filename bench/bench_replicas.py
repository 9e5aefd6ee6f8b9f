"""Replicas: aggregate training samples/s and peak memory of K = 1, 2, 4, 8, 16 runs of one model
trained in one batched step (`ctrkit.training.replicas`), against one run alone (K = 1: the
sequential step: the CPU kernels on a CPU, the eager reference maths on a GPU).

Each (size, model, K) times the training step of `ctrkit.training.loop` (forward, BCE, backward,
clipping at 10, each replica's fused Adam) on random Criteo-shaped indices, after warm-up steps. On
the CPU each is a fresh subprocess (its own peak RSS); on CUDA they run in this process, one after
another, peak memory from the allocator (`max_memory_allocated`), the timed steps between two
synchronizations. Sizes: "smoke" (the smoke preset, batch 512: what the quick/paper reproduce
profiles train), "quick" (the quick preset's models, batch 2,048, dropout 0.1) and "bars" (embedding
16, MLP [400, 400, 400], batch 10,000). Speed-up = aggregate samples/s at K / samples/s of one run
alone (the sequential path K times). `bench/gpu_check.py`'s `replicas` section runs the same sweep
on a GPU (issue 21's GPU target: K = 8 at least 4x one run at the quick sizes). With ``--old REV``
(CPU) every row runs with ctrkit as of REV ("old") and as in the working tree ("new"), alternating,
the order flipped every repeat; the table gives each side's median and new / old.

    .venv/bin/python bench/bench_replicas.py --threads 1 --tag NAME
    .venv/bin/python bench/bench_replicas.py --old REV --repeats 3 --tag NAME   # A/B: ctrkit at REV vs now
    python3 bench/bench_replicas.py --device cuda --amp bf16 --tag NAME      # on a GPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT_PREFIX = "REPLICAS_RESULT "
FIELD_SIZES = [40 + 7 * i for i in range(13)] + [30 + 180 * i for i in range(26)]
SIZES = {"smoke": {"batch": 512, "steps": 30, "model": None, "preset": "smoke"},
         "quick": {"batch": 2048, "steps": 12, "model": None, "preset": "quick"},
         "bars": {"batch": 10000, "steps": 4, "model": {"embedding_dim": 16, "hidden_units": [400, 400, 400],
                                                      "net_dropout": 0.0}, "preset": "quick"}}
# a GPU step takes milliseconds: more timed steps so that one measurement spans ~1 s or more
CUDA_STEPS = {"smoke": 200, "quick": 100, "bars": 30}


def worker(job: dict) -> dict:
    """One (size, model, K, device, amp) measurement: the step's aggregate samples/s and peak memory."""
    import torch

    sys.path.insert(0, job.get("tree") or str(HERE.parent))  # --old: the old side's copy of ctrkit
    from ctrkit import models
    from ctrkit.core.utils import seed_everything
    from ctrkit.training import presets, replicas
    from ctrkit.training.config import TrainConfig
    from ctrkit.training.loop import Peer
    from ctrkit.training.losses import peer_loss
    from ctrkit.training.precision import amp_context, resolve_amp

    device = torch.device(job.get("device", "cpu"))
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(job["threads"])
    size, k, b = SIZES[job["size"]], job["k"], SIZES[job["size"]]["batch"]
    steps = CUDA_STEPS[job["size"]] if cuda else size["steps"]
    hp = {**presets.get(job["model"], size["preset"]).model, **(size["model"] or {})}
    peers = []
    for s in range(k):
        seed_everything(s)
        peers.append(Peer(models.build(job["model"], FIELD_SIZES, **hp), TrainConfig(), index=0, learns_from=[],
                          trainable=True, device=device))
    X = torch.stack([torch.randint(0, n, (200_000,)) for n in FIELD_SIZES], 1).to(device)
    y = torch.randint(0, 2, (200_000,)).float().to(device)
    stack = replicas.Stack(peers[0].model) if k > 1 else None
    amp = resolve_amp(device, job.get("amp", "off"))

    def one_step(i: int) -> None:
        idx = torch.randint(0, X.shape[0], (k, b), device=device)
        with amp_context(device, amp):  # as the loop: forward and losses under autocast, backward after
            if stack is None:
                xb, yb = X[idx[0]], y[idx[0]]
                losses = [peer_loss(peers[0].logits(xb, i, 1), yb, xb.new_empty(0, b).float(), 0.0)]
            else:
                xb, yb = X[idx.view(-1)].view(k, b, -1), y[idx.view(-1)].view(k, b)
                z = stack.logits(peers, xb, [i] * k, list(range(k)))
                losses = [peer_loss(z[j], yb[j], z.new_empty(0, b), 0.0) for j in range(k)]
        if stack is None:
            peers[0].step(losses[0])
        else:
            replicas.step(peers, losses)

    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(2):
        one_step(i)
    sync()
    t = time.perf_counter()
    for i in range(steps):
        one_step(i + 2)
    sync()
    dt = time.perf_counter() - t
    return {**job, "batch": b, "steps": steps, "seconds": dt, "samples_per_s": k * b * steps / dt,
            "peak_mb": _peak_mb(torch, device)}


def _peak_mb(torch, device) -> float:
    """Peak memory: the process's RSS on a CPU (a fresh process per job), the allocator's on CUDA."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sweep(sizes, models_, ks, *, device: str = "cpu", amp: str = "off", threads: int = 1, report=None) -> list:
    """Every (size, model, K) row, with its speed-up over K = 1 of the same size and model (K = 1
    is measured even when not in `ks`). CPU: a subprocess per row; CUDA: this process."""
    rows = []
    for size in sizes:
        for model in models_:
            for k in sorted({1, *ks}):
                job = {"size": size, "model": model, "k": k, "threads": threads, "device": device, "amp": amp}
                rows.append(_run_job(job))
                if report:
                    report(rows[-1])
    for r in rows:
        r["speedup_vs_sequential"] = r["samples_per_s"] / _one_run(rows, r)["samples_per_s"]
    return rows


def _one_run(rows: list, r: dict) -> dict:
    """The K = 1 row (one run alone) of r's size and model."""
    return next(o for o in rows if (o["size"], o["model"], o["k"]) == (r["size"], r["model"], 1))


def ab_sweep(sizes, models_, ks, trees: dict, *, repeats: int = 3, threads: int = 1, report=None) -> list:
    """Every (size, model, K) row on both sides (`trees`: {"old": dir, "new": dir}, each holding a
    ctrkit package), interleaved: `repeats` pairs of old and new jobs (fresh subprocesses), the order
    flipped every repeat; each side's median samples/s, new / old, and each side's speed-up over its
    own K = 1."""
    rows = []
    for size in sizes:
        for model in models_:
            for k in sorted({1, *ks}):
                job = {"size": size, "model": model, "k": k, "threads": threads, "device": "cpu", "amp": "off"}
                runs = {"old": [], "new": []}
                for rep in range(repeats):
                    for side in ("old", "new") if rep % 2 == 0 else ("new", "old"):
                        runs[side].append(_run_job({**job, "tree": trees[side]})["samples_per_s"])
                med = {side: statistics.median(v) for side, v in runs.items()}
                rows.append({**job, "batch": SIZES[size]["batch"], "old": med["old"], "new": med["new"],
                             "old_runs": runs["old"], "new_runs": runs["new"], "new_vs_old": med["new"] / med["old"]})
                if report:
                    report(rows[-1])
    for r in rows:
        one = _one_run(rows, r)
        r["old_vs_sequential"], r["new_vs_sequential"] = r["old"] / one["old"], r["new"] / one["new"]
    return rows


def _run_job(job: dict) -> dict:
    if job["device"] != "cpu":
        import gc

        import torch
        gc.collect()
        torch.cuda.empty_cache()  # the previous row's tensors freed (cycles too) before this row's peak
        return worker(job)
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.split(RESULT_PREFIX, 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--models", nargs="+", default=["DeepFM", "DCN"])
    ap.add_argument("--sizes", nargs="+", default=["smoke", "quick", "bars"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--amp", default="off", choices=["off", "bf16"], help="autocast of the forward (bf16: the GPU default)")
    ap.add_argument("--old", default=None, metavar="REV", help="A/B (CPU): ctrkit as of this git revision vs the working tree")
    ap.add_argument("--repeats", type=int, default=3, help="with --old: old/new pairs per row")
    ap.add_argument("--tag", default="replicas")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    sys.path.insert(0, str(HERE))
    import _results

    report = lambda r: print(r, file=sys.stderr, flush=True)  # noqa: E731
    extra = f", {args.threads} torch thread(s)" if args.device == "cpu" else f", {_gpu_name(args.device)}, amp {args.amp}"
    if args.old:
        import ab_code

        with tempfile.TemporaryDirectory() as tmp:
            # both sides copied: edits to the working tree during the run change neither
            trees = {side: str(d) for side, d in ab_code.make_trees(args.old, ["ctrkit"], Path(tmp)).items()}
            rows = ab_sweep(args.sizes, args.models, args.ks, trees, repeats=args.repeats, threads=args.threads,
                            report=report)
        res = {**_results.stamp("bench_replicas.py", extra), "old": args.old, "rows": rows}
        _results.write(HERE / "results", args.tag, res, ab_markdown)
        return
    rows = sweep(args.sizes, args.models, args.ks, device=args.device, amp=args.amp, threads=args.threads,
                 report=report)
    res = {**_results.stamp("bench_replicas.py", extra), "rows": rows}
    _results.write(HERE / "results", args.tag, res, to_markdown)


def _gpu_name(device: str) -> str:
    import torch
    return torch.cuda.get_device_name(torch.device(device))


def to_markdown(res: dict) -> str:
    cuda = any(r.get("device", "cpu") != "cpu" for r in res["rows"])
    lines = [f"# Replicas: K runs in one batched step\n\n{res['date']} | {res['machine']} | `{res['command']}`\n",
             "Training step only (forward, loss, backward, clip, each replica's Adam) on random Criteo-shaped "
             "indices; K = 1 is one run alone (the sequential path: "
             + ("eager, the reference maths" if cuda else "CPU kernels") + "). Speed-up: aggregate samples/s "
             "over K = 1's.\n",
             f"| size | model | K | batch | aggregate samples/s | speed-up vs sequential | "
             f"{'peak allocated' if cuda else 'peak RSS'} (MB) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['size']} | {r['model']} | {r['k']} | {r['batch']:,} | {r['samples_per_s']:,.0f} | "
              f"{r['speedup_vs_sequential']:.2f}x | {r.get('peak_mb', r.get('peak_rss_mb', 0)):,.0f} |"
              for r in res["rows"]]
    return "\n".join(lines) + "\n"


def ab_markdown(res: dict) -> str:
    lines = [f"# Replicas A/B: ctrkit as of {res['old']} (old) vs the working tree (new)\n\n{res['date']} | "
             f"{res['machine']} | `{res['command']}`\n",
             "Training step only, as in `bench_replicas.py`; each row's old and new jobs alternate (fresh "
             f"processes, the order flipped every repeat, {len(res['rows'][0]['old_runs'])} repeats); medians. "
             "vs sequential: a side's aggregate samples/s over its own K = 1 (one run alone).\n",
             "| size | model | K | batch | old samples/s | new samples/s | new / old | old vs sequential | "
             "new vs sequential |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['size']} | {r['model']} | {r['k']} | {r['batch']:,} | {r['old']:,.0f} | {r['new']:,.0f} | "
              f"{r['new_vs_old']:.2f}x | {r['old_vs_sequential']:.2f}x | {r['new_vs_sequential']:.2f}x |"
              for r in res["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
