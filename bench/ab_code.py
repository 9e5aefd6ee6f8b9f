"""A/B of ctrkit's code: one model's training samples/s with files of a git revision ("old") against
the working tree ("new"), in one interleaved run.

Both sides run the working tree's ctrkit except for ``--files`` (default ``ctrkit``: the whole
package), which "old" takes from ``--old REV`` (a folder: the revision's whole folder, e.g. a tree
from before the package moved into layer folders; files: just those, e.g.
``ctrkit/models/layers.py ctrkit/models/fibinet.py``, so the ratio is the change of those files and
nothing else). Each job is a fresh subprocess (``PYTHONPATH`` on its copy of the
package) that times the step of ``ctrkit.training.loop.fit`` (``make_optimizer`` Adam, BCE on logits,
clipping at 10) on random Criteo-shaped indices with the same seed; jobs alternate old/new and the
order flips every repeat. The loss summed over the timed steps is recorded: with the same maths it
must agree between old and new up to float rounding. The model is trained as ``fit`` trains it on
the CPU (``ctrkit.kernels.for_device``, where the tree has it). ``--new-env`` runs the new side once
per environment setting (e.g. ``CTRKIT_CPU_BLAS=torch`` and ``=auto``): a three-way comparison in one
run.

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


def floor_worker(spec: dict) -> dict:
    """The model's widest layer's three products alone (forward ``X W^T``, input gradient ``G W``,
    weight gradient ``G^T X``) at the batch size, timed like a step: what any exact implementation of
    the model must compute, so ``B / their time`` bounds its samples/s with this BLAS."""
    import torch
    from torch import nn
    import ctrkit
    from ctrkit import models

    if (Path(ctrkit.__file__).parent / "kernels").is_dir():
        from ctrkit.kernels import cpublas
    else:  # trees before the layer folders
        from ctrkit import cpublas
    torch.set_num_threads(spec["threads"])
    model = models.build(spec["model"], FIELD_SIZES, **spec["hparams"])
    wide = max((m for m in model.modules() if isinstance(m, nn.Linear)), key=lambda m: m.weight.numel())
    (n_out, n_in), B = wide.weight.shape, spec["batch_size"]
    mm = cpublas._mm if cpublas.backend() == "openblas" else torch.mm
    g = torch.Generator().manual_seed(1)
    X, W, G = (torch.randn(*shape, generator=g) for shape in ((B, n_in), (n_out, n_in), (B, n_out)))
    for _ in range(spec["warmup"]):
        mm(X, W.t()), mm(G, W), mm(G.t(), X)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(spec["steps"]):
        mm(X, W.t()), mm(G, W), mm(G.t(), X)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    k = spec["steps"]
    return {"samples_per_s": k * B / secs, "samples_per_cpu_s": k * B / cpu, "steps": k, "seconds": secs,
            "cpu_seconds": cpu, "loss_sum": 0.0, "layer": [n_in, n_out], "blas": cpublas.backend(),
            "loadavg": os.getloadavg()}


def _tree_api(names: tuple[str, ...]) -> list:
    """`names` from the ctrkit on the path, in whichever module that tree keeps them (trees before and
    after the layer folders and the trainer's split differ)."""
    import importlib

    import ctrkit

    root = Path(ctrkit.__file__).parent
    places = ("ctrkit.training.loop", "ctrkit.training.optim", "ctrkit.training.protocol", "ctrkit.training.precision",
              "ctrkit.training.config", "ctrkit.core.utils", "ctrkit.train", "ctrkit.utils")
    found = {}
    for place in places:
        # only modules of this tree: the project's editable install would otherwise supply a
        # subpackage the old tree lacks from the working tree
        if not root.joinpath(*place.split(".")[1:]).with_suffix(".py").is_file():
            continue
        mod = importlib.import_module(place)
        found.update({n: getattr(mod, n) for n in names if n not in found and hasattr(mod, n)})
    return [found[n] for n in names]


def _for_device(model, device: str):
    """The trainer's CPU kernels where this tree has them (``ctrkit/kernels/cpu.py``); older trees
    had them inside the layers."""
    import ctrkit

    if (Path(ctrkit.__file__).parent / "kernels" / "cpu.py").is_file():
        from ctrkit.kernels import for_device

        return for_device(model, device)
    return model


def worker(spec: dict) -> dict:
    if spec.get("floor"):
        return floor_worker(spec)
    import torch
    import torch.nn.functional as F
    from torch import nn
    from ctrkit import models

    TrainConfig, amp_context, make_optimizer, tune_cpu_allocator = _tree_api(
        ("TrainConfig", "amp_context", "make_optimizer", "tune_cpu_allocator"))
    torch.set_num_threads(spec["threads"])
    tune_cpu_allocator()
    torch.manual_seed(0)
    model = _for_device(models.build(spec["model"], FIELD_SIZES, **spec["hparams"]), "cpu")
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
    `files` as of `old_rev` (a folder replaced whole by the revision's: `git archive`)."""
    trees = {}
    for side in ("old", "new"):
        shutil.copytree(ROOT / "ctrkit", tmp / side / "ctrkit", ignore=shutil.ignore_patterns("__pycache__"))
        trees[side] = tmp / side
    for f in files:
        f = f.rstrip("/")
        kind = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-t", f"{old_rev}:{f}"], check=True,
                              capture_output=True, text=True).stdout.strip()
        if kind == "tree":
            shutil.rmtree(tmp / "old" / f, ignore_errors=True)
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", old_rev, f], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tmp / "old")], input=archive, check=True)
            continue
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{old_rev}:{f}"], check=True,
                              capture_output=True, text=True).stdout
        (tmp / "old" / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "old" / f).write_text(text)
    return trees


def run_job(tree: Path, spec: dict, extra_env: dict | None = None) -> dict:
    env = {**os.environ, **(extra_env or {}), "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(spec["threads"])}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env, cwd=tree)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def sides(new_envs: list[str], floor: bool = False) -> list[tuple[str, str, dict]]:
    """(label, tree, extra environment) of every side: "old", then "new" once per `--new-env`
    setting (``KEY=VALUE[,KEY=VALUE]``; none: plain "new"), then with `floor` a "floor" side per
    setting (the widest layer's products alone, ``floor_worker``)."""
    out = [("old", "old", {})]
    for kind in ("new", "floor") if floor else ("new",):
        for spec in new_envs or [""]:
            env = dict(kv.split("=", 1) for kv in spec.split(",") if kv)
            out.append((f"{kind} {spec}".strip(), "new", env))
    return out


def to_markdown(res: dict) -> str:
    labels = [lab for lab, _, _ in sides(res["settings"]["new_env"], res["settings"]["floor"])]
    news = labels[1:]
    lines = [f"# A/B: {res['model']} with `{', '.join(res['files'])}` of `{res['old']}` vs the working tree "
             f"({res['date']})", "", f"Machine: {res['machine']}. Command: `{res['command']}`. {res['note']}", "",
             f"Metric: `{res['settings']['metric']}`.", "",
             "| variant | " + " | ".join(labels) + " | " + " | ".join(f"{n} / old" for n in news) + " | loss sums |",
             "|---|" + "---:|" * (len(labels) + len(news)) + "---|"]
    for v, r in res["summary"].items():
        lines.append(f"| {v} | " + " | ".join(f"{r['median'][lab]:,.0f}" for lab in labels) + " | "
                     + " | ".join(f"{r['ratio'][n]:.2f}x" for n in news) + " | "
                     + ", ".join(f"{r['loss'][lab]:.6f}" for lab in labels) + " |")
    lines += ["", "Medians over the repeats (the sides alternating, the order reversed every repeat); "
              "every job, with the load average it saw, is in the .json. Per repeat, each new side / old: "
              + "; ".join(f"{v} {n}: " + ", ".join(f"{x:.2f}" for x in r["ratios"][n])
                          for v, r in res["summary"].items() for n in news)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--old", default="HEAD")
    ap.add_argument("--files", nargs="+", default=["ctrkit"],
                    help="paths the old side takes from --old (a folder: whole); default the whole package")
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
    ap.add_argument("--new-env", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="run the new side once per such setting (repeatable), e.g. CTRKIT_CPU_BLAS=torch")
    ap.add_argument("--floor", action="store_true",
                    help="also time the widest layer's three fp32 products alone (the bound on any exact speed-up)")
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
        all_sides = sides(args.new_env, args.floor)
        for r in range(args.repeats):
            for v in args.variants:
                for label, tree, env in (all_sides if r % 2 == 0 else all_sides[::-1]):
                    spec = {"model": args.model, "hparams": json.loads(args.hparams), "variant": v,
                            "batch_size": args.batch_size, "threads": args.threads, "warmup": args.warmup,
                            "steps": args.steps, "floor": label.startswith("floor")}
                    job = {"side": label, "variant": v, "repeat": r, **run_job(trees[tree], spec, env)}
                    print(json.dumps(job), file=sys.stderr, flush=True)
                    jobs.append(job)
    summary = {}
    labels = [lab for lab, _, _ in all_sides]
    for v in args.variants:
        ok = {s: [j for j in jobs if j["variant"] == v and j["side"] == s and "error" not in j] for s in labels}
        if not all(ok.values()):
            continue
        med = {s: statistics.median(j[args.metric] for j in ok[s]) for s in ok}
        per_repeat = {n: [x[args.metric] / o[args.metric] for o in ok["old"] for x in ok[n]
                          if o["repeat"] == x["repeat"]] for n in labels[1:]}
        summary[v] = {"metric": args.metric, "median": med, "ratio": {n: med[n] / med["old"] for n in labels[1:]},
                      "ratios": per_repeat, "loss": {s: ok[s][0]["loss_sum"] for s in labels}}
    import _results

    res = {**_results.stamp("ab_code.py", f", {args.threads} threads"), "note": args.note, "old": args.old,
           "files": args.files, "model": args.model, "settings": vars(args), "jobs": jobs, "summary": summary}
    _results.write(args.out, args.tag, res, to_markdown)


if __name__ == "__main__":
    main()
