"""Two training processes at once vs one alone, per model (CPU): how far a second core speeds up
the quick profile's training, which bounds what `workers` and `reproduce --jobs` can gain.

Each measurement trains `--steps` Adam steps of one model (the smoke preset the quick profile uses,
batch 512, Criteo-shaped fields, 1 thread, the CPU kernels) in a fresh process, after 5 untimed
warm-up steps: once alone, then in two processes started together (a barrier), then in four (half
the steps each: the same work, two processes per core, as when two notebooks each run two workers).
Scaling = 2 x the alone time / the slower of the pair's times: 2.0 means the second core adds a whole
core; less means the two processes slow each other down (shared caches, memory bandwidth). Four on two
cores = the pair's slower time / the four's slowest: below 1.0 is what time-slicing costs (each switch
refills the caches). Repeats alternate the order of alone and pair.

    .venv/bin/python bench/bench_concurrency.py                  # 3 repeats, 150 steps
    .venv/bin/python bench/bench_concurrency.py --steps 20 --repeats 1    # a quick check of the script
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _results import stamp, write  # noqa: E402

MODELS = ("DeepFM", "DCN", "PNN", "FiBiNET")
# the quick profile's Criteo vocabularies are a few hundred per field; the step cost hardly depends on them
FIELDS = [300] * 39


def _train(name: str, steps: int, barrier, out) -> None:
    import torch
    import torch.nn.functional as F

    from ctrkit.kernels import apply_threads, for_device
    from ctrkit.models import build
    from ctrkit.training import presets

    apply_threads(1)
    torch.manual_seed(0)
    p = presets.get(name, "smoke")
    model = for_device(build(name, FIELDS, **p.model), "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X = torch.stack([torch.randint(0, v, (int(p.train["batch_size"]),)) for v in FIELDS], 1)
    y = (torch.arange(X.shape[0]) % 4 == 0).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(X), y).backward()
        opt.step()

    for _ in range(5):
        step()
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    out.put(time.perf_counter() - t0)


def measure(name: str, steps: int, n: int) -> list[float]:
    """Seconds of `steps` steps in each of `n` processes started together."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_train, args=(name, steps, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return times


def to_markdown(res: dict) -> str:
    lines = [f"# Two training processes at once vs one alone (CPU, {res['steps']} steps, smoke preset)", "",
             f"{res['date']} | {res['machine']} | `{res['command']}`", "",
             "| model | alone (s) per repeat | each of two at once (s), slower per repeat | scaling (2 x alone / slower), median "
             "| four at once, half the steps each (s), slowest | four vs two on 2 cores (throughput), median |",
             "|---|---|---|---:|---|---:|"]
    for m in res["models"]:
        rows = [r for r in res["runs"] if r["model"] == m]
        scale = statistics.median(2 * r["alone"] / max(r["pair"]) for r in rows)
        alone = ", ".join(f"{r['alone']:.2f}" for r in rows)
        pair = ", ".join(f"{max(r['pair']):.2f}" for r in rows)
        four = ", ".join(f"{max(r['four']):.2f}" for r in rows)
        over = statistics.median(max(r["pair"]) / max(r["four"]) for r in rows)
        lines.append(f"| {m} | {alone} | {pair} | {scale:.2f}x | {four} | {over:.2f}x |")
    lines += ["", "2.00x: the second process costs the first nothing; below, they slow each other down. "
              "Four vs two below 1.00x: more training processes than cores cost throughput."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tag", default="concurrency-cpu")
    args = ap.parse_args()
    models, runs = args.models.split(","), []
    for r in range(args.repeats):
        for m in models:
            first_alone = r % 2 == 0
            a = measure(m, args.steps, 1) if first_alone else None
            pair = measure(m, args.steps, 2)
            a = a if first_alone else measure(m, args.steps, 1)
            four = measure(m, args.steps // 2, 4)
            runs.append({"model": m, "repeat": r, "alone": a[0], "pair": pair, "four": four})
            print(f"repeat {r} {m}: alone {a[0]:.2f} s, two at once {max(pair):.2f} s, four at once (half the "
                  f"steps) {max(four):.2f} s", flush=True)
    res = {**stamp("bench_concurrency.py"), "steps": args.steps, "models": models, "runs": runs}
    write(Path(__file__).resolve().parent / "results", args.tag, res, to_markdown)


if __name__ == "__main__":
    main()
