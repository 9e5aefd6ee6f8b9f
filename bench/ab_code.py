"""A/B of ctrkit's layer code: one model's training samples/s with the layer files of a git revision
("old") against the working tree ("new"), in one interleaved run.

Both sides run the working tree's ctrkit except for ``--files`` (default ``ctrkit/layers.py`` and
``ctrkit/models/fibinet.py``), which "old" takes from ``--old REV``: so the ratio is the change
of those files and nothing else. Each job is a fresh subprocess (``PYTHONPATH`` on its copy of the
package) that times the step of ``ctrkit.train.fit`` (``make_optimizer`` Adam, BCE on logits,
clipping at 10) on random Criteo-shaped indices with the same seed; jobs alternate old/new and the
order flips every repeat. The loss summed over the timed steps is recorded: with the same maths it
must agree between old and new up to float rounding.

    .venv/bin/python bench/ab_code.py --old HEAD~1 --model FiBiNET --batch-size 10000 --repeats 3
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT_PREFIX = "AB_RESULT "
FIELD_SIZES = [40 + 7 * i for i in range(13)] + [30 + 180 * i for i in range(26)]  # as bench_threads.py


def worker(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from ctrkit import models
    from ctrkit.train import TrainConfig, amp_context, make_optimizer
    from ctrkit.utils import tune_cpu_allocator

    torch.set_num_threads(spec["threads"])
    tune_cpu_allocator()
    torch.manual_seed(0)
    model = models.build(spec["model"], FIELD_SIZES, **spec["hparams"])
    opt = make_optimizer(model, TrainConfig(lr=1e-3, embedding_regularizer=1e-5))
    params = list(model.parameters())
    B = spec["batch_size"]
    g = torch.Generator().manual_seed(1)
    X = torch.stack([torch.randint(0, s, (B * 2,), generator=g, dtype=torch.int32) for s in FIELD_SIZES], 1)
    y = torch.randint(0, 2, (B * 2,), generator=g).float()
    amp = torch.bfloat16 if spec["variant"] == "bf16" else None
    loss_sum = 0.0

    def step(k):
        nonlocal loss_sum
        xb, yb = X[(k % 2) * B:(k % 2 + 1) * B], y[(k % 2) * B:(k % 2 + 1) * B]
        with amp_context("cpu", amp):
            logits = model(xb)
        loss = F.binary_cross_entropy_with_logits(logits.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        loss_sum += float(loss)

    for k in range(spec["warmup"]):
        step(k)
    t0, c0, k = time.perf_counter(), time.process_time(), 0
    while k < spec["steps"]:
        step(spec["warmup"] + k)
        k += 1
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    import ctrkit
    # samples per CPU-second: this process's own work, which waiting for a core on a busy machine
    # does not inflate (with 1 thread; with more, OpenMP's spin-waiting counts as CPU time)
    return {"samples_per_s": k * B / secs, "samples_per_cpu_s": k * B / cpu, "steps": k, "seconds": secs,
            "cpu_seconds": cpu, "loss_sum": loss_sum,
            "loadavg": os.getloadavg(), "ctrkit": str(Path(ctrkit.__file__).parent)}


def make_trees(old_rev: str, files: list[str], tmp: Path) -> dict:
    """{"old": dir, "new": dir}, each holding a copy of the working tree's ctrkit package; "old" with
    `files` as of `old_rev`."""
    trees = {}
    for side in ("old", "new"):
        shutil.copytree(ROOT / "ctrkit", tmp / side / "ctrkit", ignore=shutil.ignore_patterns("__pycache__"))
        trees[side] = tmp / side
    for f in files:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{old_rev}:{f}"], check=True,
                              capture_output=True, text=True).stdout
        (tmp / "old" / f).write_text(text)
    return trees


def run_job(tree: Path, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(spec["threads"])}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env, cwd=tree)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def to_markdown(res: dict) -> str:
    lines = [f"# A/B: {res['model']} with `{', '.join(res['files'])}` of `{res['old']}` vs the working tree "
             f"({res['date']})", "", f"Machine: {res['machine']}. Command: `{res['command']}`. {res['note']}", "",
             f"Metric: `{res['settings']['metric']}`.", "",
             "| variant | old | new | new / old | loss sums old, new |", "|---|---:|---:|---:|---|"]
    for v, r in res["summary"].items():
        lines.append(f"| {v} | {r['old']:,.0f} | {r['new']:,.0f} | {r['ratio']:.2f}x | "
                     f"{r['loss_old']:.6f}, {r['loss_new']:.6f} |")
    lines += ["", "Medians over the repeats (old and new alternating, the order flipped every repeat); "
              "every job, with the load average it saw, is in the .json. Per repeat new/old: "
              + "; ".join(f"{v}: " + ", ".join(f"{x:.2f}" for x in r["ratios"]) for v, r in res["summary"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--old", default="HEAD")
    ap.add_argument("--files", nargs="+", default=["ctrkit/layers.py", "ctrkit/models/fibinet.py"])
    ap.add_argument("--model", default="FiBiNET")
    ap.add_argument("--hparams", default='{"embedding_dim": 16, "hidden_units": [400, 400, 400]}')
    ap.add_argument("--variants", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--metric", default="samples_per_s", choices=["samples_per_s", "samples_per_cpu_s"],
                    help="wall-clock or per CPU-second throughput (the latter for 1 thread on a busy machine)")
    ap.add_argument("--tag", default="ab")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    jobs = []
    with tempfile.TemporaryDirectory(prefix="ctrkit-ab-") as tmp:
        trees = make_trees(args.old, args.files, Path(tmp))
        for r in range(args.repeats):
            for v in args.variants:
                for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    spec = {"model": args.model, "hparams": json.loads(args.hparams), "variant": v,
                            "batch_size": args.batch_size, "threads": args.threads, "warmup": args.warmup,
                            "steps": args.steps}
                    job = {"side": side, "variant": v, "repeat": r, **run_job(trees[side], spec)}
                    print(json.dumps(job), file=sys.stderr, flush=True)
                    jobs.append(job)
    summary = {}
    for v in args.variants:
        ok = {s: [j for j in jobs if j["variant"] == v and j["side"] == s and "error" not in j] for s in ("old", "new")}
        if not ok["old"] or not ok["new"]:
            continue
        med = {s: statistics.median(j[args.metric] for j in ok[s]) for s in ok}
        pairs = [(o, n) for o in ok["old"] for n in ok["new"] if o["repeat"] == n["repeat"]]
        summary[v] = {"metric": args.metric, "old": med["old"], "new": med["new"], "ratio": med["new"] / med["old"],
                      "ratios": [n[args.metric] / o[args.metric] for o, n in pairs],
                      "loss_old": ok["old"][0]["loss_sum"], "loss_new": ok["new"][0]["loss_sum"]}
    import _results

    res = {**_results.stamp("ab_code.py", f", {args.threads} threads"), "note": args.note, "old": args.old,
           "files": args.files, "model": args.model, "settings": vars(args), "jobs": jobs, "summary": summary}
    _results.write(args.out, args.tag, res, to_markdown)


if __name__ == "__main__":
    main()
