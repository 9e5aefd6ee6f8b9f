"""DeepFM training samples/s with 1, 2 and "auto" intra-op threads, with and without extra CPU load.

What ``ctrkit.core.utils.resolve_threads("auto")`` should mean is decided here: each job is a fresh
subprocess that applies its thread setting (``ctrkit.core.utils.apply_threads``) and times the step of
``ctrkit.training.loop.fit`` (Adam via ``make_optimizer``, BCE on logits, clipping at 10, fp32) on random
Criteo-shaped indices; "load" starts that many CPU-bound processes (a Python busy loop each) before
the job and stops them after. Jobs are interleaved (every repeat runs every (load, threads) pair,
the order rotated per repeat) so that drift of a shared machine is spread over all of them; the
result holds every job with the load average it saw and the thread count "auto" chose.

    .venv/bin/python bench/bench_threads.py --repeats 3 --loads 0 1 2 --tag NAME
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT_PREFIX = "THREADS_RESULT "
# Criteo-shaped: 13 small integer-bucket fields and 26 categorical ones (~58k ids, like bench/'s data)
FIELD_SIZES = [40 + 7 * i for i in range(13)] + [30 + 180 * i for i in range(26)]


def worker(spec: dict) -> dict:
    from ctrkit.core.utils import tune_cpu_allocator, _busy_cores_of_others
    from ctrkit.kernels import apply_threads

    busy = _busy_cores_of_others(0.2)  # what "auto" sees (measured again inside apply_threads)
    threads = apply_threads(spec["threads"])
    import torch
    import torch.nn.functional as F
    from torch import nn
    from ctrkit import models
    from ctrkit.training.config import TrainConfig
    from ctrkit.training.optim import make_optimizer

    tune_cpu_allocator()
    torch.manual_seed(0)
    model = models.build("DeepFM", FIELD_SIZES, embedding_dim=16, hidden_units=[400, 400, 400])
    opt = make_optimizer(model, TrainConfig(lr=1e-3, embedding_regularizer=1e-5))
    params = list(model.parameters())
    B = spec["batch_size"]
    X = torch.stack([torch.randint(0, s, (B * 4,), dtype=torch.int32) for s in FIELD_SIZES], 1)
    y = torch.randint(0, 2, (B * 4,)).float()

    def step(k):
        xb, yb = X[(k % 4) * B:(k % 4 + 1) * B], y[(k % 4) * B:(k % 4 + 1) * B]
        loss = F.binary_cross_entropy_with_logits(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()

    for k in range(spec["warmup"]):
        step(k)
    t0, k = time.perf_counter(), 0
    while k < spec["steps"] and (k < 2 or time.perf_counter() - t0 < spec["max_seconds"]):
        step(k)
        k += 1
    secs = time.perf_counter() - t0
    return {"threads_used": threads, "samples_per_s": k * B / secs, "steps": k, "seconds": secs,
            "busy_cores_of_others": busy, "loadavg": os.getloadavg()}


def run_job(threads, load: int, args) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    try:
        time.sleep(0.5 if load else 0.0)  # let the spinners get going before "auto" looks
        spec = {"threads": threads, "batch_size": args.batch_size, "warmup": args.warmup,
                "steps": args.steps, "max_seconds": args.max_seconds}
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                              capture_output=True, text=True, env=_thread_env(threads))
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"threads": threads, "load": load, "error": proc.stderr.strip().splitlines()[-1:]}
    return {"threads": threads, "load": load, **json.loads(lines[-1][len(RESULT_PREFIX):])}


def _thread_env(threads) -> dict:
    # explicit counts also pin OpenMP/MKL through the environment; "auto" must not see a stale value
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if str(threads) != "auto":
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return {**env, "PYTHONPATH": str(HERE.parent)}


def summarize(jobs: list[dict], loads, settings) -> list[dict]:
    rows = []
    for load in loads:
        row = {"load": load}
        for t in settings:
            ok = [j for j in jobs if j["load"] == load and str(j["threads"]) == str(t) and "error" not in j]
            row[f"t{t}_median"] = statistics.median(j["samples_per_s"] for j in ok) if ok else None
            if t == "auto":
                row["auto_used"] = sorted({j["threads_used"] for j in ok})
        best = max((row[f"t{t}_median"] or 0) for t in settings if t != "auto")
        row["auto_vs_best_fixed"] = row["tauto_median"] / best if best and row.get("tauto_median") else None
        rows.append(row)
    return rows


def to_markdown(res: dict) -> str:
    head = ["load (extra busy processes)", "1 thread", "2 threads", "auto", "auto chose", "auto / best fixed"]
    lines = [f"# DeepFM samples/s vs intra-op threads ({res['date']})", "",
             f"Machine: {res['machine']}. Command: `{res['command']}`. {res['note']}", "",
             "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in res["summary"]:
        cells = [str(r["load"])] + [f"{r[f't{t}_median']:,.0f}" if r[f"t{t}_median"] else "—" for t in ("1", "2", "auto")]
        cells += [",".join(map(str, r.get("auto_used", []))),
                  f"{r['auto_vs_best_fixed']:.2f}x" if r["auto_vs_best_fixed"] else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Medians over the repeats; every job (with the load average it saw) is in the .json."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=6.0)
    ap.add_argument("--tag", default="threads")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    settings = ["1", "2", "auto"]
    pairs = [(load, t) for load in args.loads for t in settings]
    jobs = []
    for r in range(args.repeats):
        for load, t in pairs[r % len(pairs):] + pairs[:r % len(pairs)]:  # rotate the order per repeat
            job = run_job(t if t == "auto" else int(t), load, args)
            job["repeat"] = r
            print(json.dumps(job), file=sys.stderr, flush=True)
            jobs.append(job)
    import _results

    res = {**_results.stamp("bench_threads.py"), "note": args.note, "settings": vars(args), "jobs": jobs,
           "summary": summarize(jobs, args.loads, settings)}
    _results.write(args.out, args.tag, res, to_markdown)


if __name__ == "__main__":
    main()
