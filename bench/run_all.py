"""ctrkit's benchmark, one command: `make bench` (= `.venv/bin/python bench/run_all.py`).

Trains DeepFM, DCN, PNN and FiBiNET on the same synthetic Criteo-shaped data (`ctrkit synth` +
`prepare`, 1M rows by default) with the same sizes (embedding 16, MLP [400, 400, 400]), batch
sizes and thread count in ctrkit, FuxiCTR 2.3.10 and DeepCTR-Torch 0.3.0, each framework in its
own subprocess, interleaved, median of `--repeats` runs; plus the bare reference loop, ctrkit's
fast-path variants (bf16 autocast, torch.compile, fused vs per-field embeddings), an equal-work
AUC check and the N-peer mutual scaling. Writes `bench/results/<date>-<machine>.json` and `.md`.

Parts (`--parts`, default all but x4):
  speed     samples/s at batch 10,000 (all models) and 4,096 (FiBiNET), fp32, 3 frameworks + reference
  fastpath  ctrkit bf16 / compile / compile+bf16 / per-field embeddings / unfused Adam at batch 10,000
  auc       1 epoch on the first `--auc-rows` training rows, test AUC per framework (+ ctrkit seed
            noise and bf16); FiBiNET on `--auc-fibinet-rows` rows (FuxiCTR's FiBiNET is too slow
            for more within the budget)
  mutual    ctrkit.training.mutual.mutual_fit epoch seconds for N = 1..5 DeepFM peers
  x4        the BARS x4_001 MLPs (presets 'bars', criteo x4_001) at batch 10,000, few steps

Competitors need `bash bench/setup_competitors.sh` (bench/.venv-competitors) and, for FuxiCTR,
FUXICTR_MODEL_ZOO=<reczoo/FuxiCTR checkout>/model_zoo; whatever is missing is skipped with a message.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMPETITOR_PY = HERE / ".venv-competitors" / "bin" / "python"
MODELS = ["DeepFM", "DCN", "PNN", "FiBiNET"]
PARTS = ["speed", "fastpath", "auc", "mutual", "x4"]
DEFAULT_PARTS = ["speed", "fastpath", "auc", "mutual"]
WORKERS = {"ctrkit": "fw_ctrkit.py", "fuxictr": "fw_fuxictr.py", "deepctr": "fw_deepctr.py",
           "reference": "reference_loop.py"}
TARGETS = {"vs_fuxictr_fp32": 1.3, "vs_reference": 0.9, "bf16_vs_fuxictr": 2.0, "fibinet_4096_vs_fuxictr": 5.0,
           "mutual_n4_vs_single": 4.2}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_hmp_hparams(model: str, emb: int, hidden: list[int]) -> dict:
    hp = {"embedding_dim": emb, "hidden_units": list(hidden), "net_dropout": 0.0, "batch_norm": False}
    if model == "DCN":
        hp["num_cross_layers"] = 3
    if model == "FiBiNET":
        hp.update(reduction_ratio=3, bilinear_type="field_interaction")
    return hp


def x4_hparams(model: str) -> dict:
    from ctrkit.training import presets
    hp = dict(presets.get(model, "bars", dataset="criteo", protocol="x4_001").model)
    hp["hidden_activations"] = "ReLU"
    return hp


def machine_info(threads: int) -> dict:
    import torch
    flags = ""
    model = platform.processor() or "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = m.group(1).strip() if m else model
        f = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        flags = f.group(1) if f else ""
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": mem_gb,
            "amx_bf16": "amx_bf16" in flags.split(), "avx512f": "avx512f" in flags.split(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "threads": threads}


def machine_slug(info: dict) -> str:
    cpu = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*", "", info["cpu"])
    cpu = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") or "cpu"
    return f"{cpu}-{info['cores']}c"


class Runner:
    def __init__(self, args, data_dir: Path):
        self.args, self.data_dir = args, data_dir
        self.results: list[dict] = []
        self.skipped: dict[str, str] = {}
        self.have_competitors = COMPETITOR_PY.exists()
        zoo = os.environ.get("FUXICTR_MODEL_ZOO")
        if not self.have_competitors:
            self.skipped["fuxictr"] = self.skipped["deepctr"] = (
                f"{COMPETITOR_PY} missing: run `bash bench/setup_competitors.sh` first")
        elif not zoo or not (Path(zoo) / "DeepFM").is_dir():
            self.skipped["fuxictr"] = ("FUXICTR_MODEL_ZOO is unset or has no DeepFM/: set it to the model_zoo/ "
                                       "folder of a reczoo/FuxiCTR checkout (FuxiCTR's PyPI package has no "
                                       "DeepFM/DCN/PNN/FiBiNET)")
        for fw, why in self.skipped.items():
            log(f"skipping {fw}: {why}")

    def python_for(self, fw: str) -> str:
        return str(COMPETITOR_PY) if fw in ("fuxictr", "deepctr") else sys.executable

    def run(self, spec: dict) -> list[dict]:
        fw = spec["framework"]
        if fw in self.skipped:
            return []
        spec = {"data": str(self.data_dir), "threads": self.args.threads, "mem_limit_gb": self.args.mem_limit_gb,
                "seed": 2021, "embedding_regularizer": 1e-5, **spec}
        env = dict(os.environ, OMP_NUM_THREADS=str(self.args.threads), MKL_NUM_THREADS=str(self.args.threads),
                   RAY_USAGE_STATS_ENABLED="0", PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [self.python_for(fw), str(HERE / WORKERS[fw]), "--spec", json.dumps(spec)]
        label = f"{fw}/{spec.get('variant', 'fp32')}/{spec['mode']} bs={spec['batch_size']} " \
                f"{','.join(m['model'] for m in spec['models'])}" + (f" r{spec['repeat']}" if spec.get("repeat") is not None else "")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                                  timeout=self.args.job_timeout)
            stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr, rc = f"timed out after {self.args.job_timeout}s", -9
        out = []
        for line in stdout.splitlines():
            if line.startswith("BENCH_RESULT "):
                r = json.loads(line[len("BENCH_RESULT "):])
                r.update({k: spec[k] for k in ("config", "repeat", "variant", "seed") if k in spec})
                out.append(r)
        done = {r["model"] for r in out}
        for m in spec["models"]:  # a crashed worker (killed, segfault) still leaves a record
            if m["model"] not in done:
                tail = " | ".join(stderr.strip().splitlines()[-3:])[-400:]
                out.append({"framework": fw, "model": m["model"], "mode": spec["mode"], "batch_size": spec["batch_size"],
                            "variant": spec.get("variant", "fp32"), "config": spec.get("config"),
                            "repeat": spec.get("repeat"), "status": "oom" if rc in (-9, 137) else "error",
                            "error": f"worker exit {rc}: {tail}"})
        summary = ", ".join(f"{r['model']} " + (f"{r['samples_per_s']:,.0f}/s" if "samples_per_s" in r else
                                                 f"AUC {r['test_auc']:.4f}" if "test_auc" in r else r["status"])
                            for r in out)
        log(f"{label}: {summary} ({time.perf_counter() - t0:.0f}s)")
        self.results.extend(out)
        return out


def speed_jobs(args, parts: list[str]) -> list[dict]:
    cpu = [int(h) for h in args.hidden.split(",")]
    base = {"mode": "speed", "warmup": args.warmup, "steps": args.steps, "max_seconds": args.max_seconds,
            "min_steps": 2, "slow_step_s": args.slow_step_s}
    b1, b2 = args.batch_sizes
    allm = [{"model": m, "hparams": cpu_hmp_hparams(m, args.emb, cpu)} for m in MODELS]
    fib = [x for x in allm if x["model"] == "FiBiNET"]
    jobs = []
    if "speed" in parts or "fastpath" in parts:  # fp32 ctrkit is the baseline of both
        jobs.append({**base, "framework": "ctrkit", "variant": "fp32", "batch_size": b1, "models": allm, "config": "cpu"})
    if "speed" in parts:
        jobs += [{**base, "framework": fw, "batch_size": b1, "models": allm, "config": "cpu"}
                 for fw in ("fuxictr", "deepctr")]
        jobs.append({**base, "framework": "reference", "batch_size": b1, "models": allm[:1], "config": "cpu"})
        jobs += [{**base, "framework": fw, "batch_size": b2, "models": fib, "config": "cpu"}
                 for fw in ("ctrkit", "fuxictr", "deepctr")]
    if "fastpath" in parts:
        no_fib = allm[:3]
        # compile: DeepFM and PNN (compile time on 2 cores is ~10 steps' worth per model and variant)
        comp = [allm[0], allm[2]]
        jobs += [{**base, "framework": "ctrkit", "variant": "bf16", "batch_size": b1, "models": allm, "config": "cpu"},
                 {**base, "framework": "ctrkit", "variant": "perfield", "batch_size": b1, "models": no_fib, "config": "cpu"},
                 {**base, "framework": "ctrkit", "variant": "unfused_adam", "batch_size": b1, "models": no_fib, "config": "cpu"},
                 {**base, "framework": "ctrkit", "variant": "default_malloc", "batch_size": b1, "models": no_fib,
                  "config": "cpu"},
                 {**base, "framework": "ctrkit", "variant": "bf16_default_malloc", "batch_size": b1, "models": no_fib,
                  "config": "cpu"},
                 {**base, "framework": "ctrkit", "variant": "textbook", "batch_size": b1, "models": allm, "config": "cpu"},
                 # compile: first repeat only (its compile time alone is several steps' worth)
                 {**base, "framework": "ctrkit", "variant": "compile", "batch_size": b1, "models": comp, "config": "cpu",
                  "only_first_repeat": True},
                 {**base, "framework": "ctrkit", "variant": "compile_bf16", "batch_size": b1, "models": comp,
                  "config": "cpu", "only_first_repeat": True},
                 {**base, "framework": "ctrkit", "variant": "bf16", "batch_size": b2, "models": fib, "config": "cpu"}]
    if "x4" in parts:
        x4 = {**base, "warmup": 1, "steps": 3, "max_seconds": args.max_seconds, "config": "x4_001"}
        mods = [{"model": m, "hparams": x4_hparams(m)} for m in MODELS[:3]]
        jobs += [{**x4, "framework": "ctrkit", "variant": "fp32", "batch_size": b1, "models": mods},
                 {**x4, "framework": "ctrkit", "variant": "bf16", "batch_size": b1, "models": mods},
                 {**x4, "framework": "fuxictr", "batch_size": b1, "models": mods}]
    return jobs


def auc_jobs(args) -> list[dict]:
    cpu = [int(h) for h in args.hidden.split(",")]
    m3 = [{"model": m, "hparams": cpu_hmp_hparams(m, args.emb, cpu)} for m in MODELS[:3]]
    fib = [{"model": "FiBiNET", "hparams": cpu_hmp_hparams("FiBiNET", args.emb, cpu)}]
    base = {"mode": "auc", "batch_size": args.auc_batch, "test_rows": args.auc_test_rows}
    jobs = []
    for models, rows, tag in ((m3, args.auc_rows, "main"), (fib, args.auc_fibinet_rows, "fibinet")):
        common = {**base, "models": models, "train_rows": rows, "config": f"auc-{tag}"}
        jobs += [{**common, "framework": "ctrkit", "variant": "fp32", "seed": 2021},
                 {**common, "framework": "ctrkit", "variant": "fp32", "seed": 2022},  # run-to-run noise
                 {**common, "framework": "ctrkit", "variant": "bf16", "seed": 2021},
                 {**common, "framework": "fuxictr", "seed": 2021},
                 {**common, "framework": "deepctr", "seed": 2021}]
    return jobs


def mutual_job(args) -> dict:
    cpu = [int(h) for h in args.hidden.split(",")]
    return {"mode": "mutual", "framework": "ctrkit", "variant": "fp32", "batch_size": args.batch_sizes[0],
            "models": [{"model": "DeepFM", "hparams": cpu_hmp_hparams("DeepFM", args.emb, cpu)}],
            "n_peers": list(range(1, args.max_peers + 1)), "train_rows": args.mutual_rows,
            "valid_rows": args.mutual_valid_rows, "test_rows": args.mutual_valid_rows, "config": "mutual"}


# ---------------------------------------------------------------- summary


def _median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(results: list[dict], args) -> dict:
    b1, b2 = args.batch_sizes
    speed = {}
    for r in results:
        if r["mode"] != "speed":
            continue
        key = (r.get("config", "cpu"), r["batch_size"], r["model"], r["framework"], r.get("variant", "fp32"))
        speed.setdefault(key, []).append(r)
    speed_rows = []
    for (config, bs, model, fw, variant), rs in sorted(speed.items()):
        ok = [r["samples_per_s"] for r in rs if r.get("status") == "ok"]
        row = {"config": config, "batch_size": bs, "model": model, "framework": fw, "variant": variant,
               "samples_per_s": _median(ok), "repeats": len(ok), "all": ok,
               "status": "ok" if ok else rs[0].get("status"), "error": None if ok else rs[0].get("error"),
               "peak_rss_mb": max((r.get("peak_rss_mb") or 0) for r in rs) or None}
        cs = [r.get("compile_seconds") for r in rs if r.get("compile_seconds") is not None]
        if cs:
            row["compile_seconds"] = _median(cs)
        speed_rows.append(row)

    def sp(model, fw, variant="fp32", bs=b1, config="cpu"):
        for row in speed_rows:
            if (row["model"], row["framework"], row["variant"], row["batch_size"], row["config"]) == (model, fw, variant, bs, config):
                return row["samples_per_s"]
        return None

    def ratio(a, b):
        return a / b if a and b else None

    targets = {}
    for m in MODELS:
        t = {"ctrkit_fp32": sp(m, "ctrkit"), "fuxictr_fp32": sp(m, "fuxictr"), "deepctr_fp32": sp(m, "deepctr"),
             "ctrkit_bf16": sp(m, "ctrkit", "bf16")}
        t["fp32_vs_fuxictr"] = ratio(t["ctrkit_fp32"], t["fuxictr_fp32"])
        t["bf16_vs_fuxictr"] = ratio(t["ctrkit_bf16"], t["fuxictr_fp32"])
        t["fp32_vs_deepctr"] = ratio(t["ctrkit_fp32"], t["deepctr_fp32"])
        t["bf16_vs_fp32"] = ratio(t["ctrkit_bf16"], t["ctrkit_fp32"])
        t["met_fp32_1.3x"] = None if t["fp32_vs_fuxictr"] is None else t["fp32_vs_fuxictr"] >= TARGETS["vs_fuxictr_fp32"]
        t["met_bf16_2x"] = None if t["bf16_vs_fuxictr"] is None else t["bf16_vs_fuxictr"] >= TARGETS["bf16_vs_fuxictr"]
        targets[m] = t
    ref = sp("DeepFM", "reference")
    targets["DeepFM"]["reference_fp32"] = ref
    targets["DeepFM"]["vs_reference"] = ratio(sp("DeepFM", "ctrkit"), ref)
    fib = {"ctrkit_fp32_4096": sp("FiBiNET", "ctrkit", bs=b2), "fuxictr_fp32_4096": sp("FiBiNET", "fuxictr", bs=b2),
           "deepctr_fp32_4096": sp("FiBiNET", "deepctr", bs=b2), "ctrkit_bf16_4096": sp("FiBiNET", "ctrkit", "bf16", b2),
           "ctrkit_trains_at_10000": sp("FiBiNET", "ctrkit") is not None}
    fib["vs_fuxictr_4096"] = ratio(fib["ctrkit_fp32_4096"], fib["fuxictr_fp32_4096"])
    targets["FiBiNET"].update(fib)

    auc_rows = [r for r in results if r["mode"] == "auc"]
    auc = []
    for r in auc_rows:
        auc.append({k: r.get(k) for k in ("config", "model", "framework", "variant", "seed", "status", "test_auc",
                                          "test_logloss", "train_rows", "fit_samples_per_s", "error")})
    # Run-to-run noise, pooled over the models of one AUC config (one seed pair per model is too
    # few): sd of one run = sqrt(mean(delta_seed^2) / 2); two independent runs differ by
    # sqrt(2) * sd, so 'equal' = |ctrkit - FuxiCTR| <= 2 * sqrt(2) * sd = 2 * RMS(delta_seed).
    seed_deltas: dict[str, list[float]] = {}
    for m in MODELS:
        pair = {r.get("seed"): r for r in auc if r["model"] == m and r["framework"] == "ctrkit"
                and (r.get("variant") or "fp32") == "fp32" and r["status"] == "ok"}
        if 2021 in pair and 2022 in pair:
            seed_deltas.setdefault(pair[2021]["config"], []).append(pair[2021]["test_auc"] - pair[2022]["test_auc"])
    rms = {c: (sum(x * x for x in v) / len(v)) ** 0.5 for c, v in seed_deltas.items()}
    equal = {}
    for m in MODELS:
        def a(fw, variant="fp32", seed=2021):
            for r in auc:
                if (r["model"], r["framework"], r.get("variant") or "fp32", r.get("seed")) == (m, fw, variant, seed) \
                        and r["status"] == "ok":
                    return r["test_auc"]
            return None
        c1, c2, fx, dc, bf = a("ctrkit"), a("ctrkit", seed=2022), a("fuxictr"), a("deepctr"), a("ctrkit", "bf16")
        cfg = next((r["config"] for r in auc if r["model"] == m), None)
        noise = abs(c1 - c2) if c1 is not None and c2 is not None else None
        tol = 2 * rms[cfg] if cfg in rms else None
        equal[m] = {"ctrkit": c1, "ctrkit_seed2": c2, "fuxictr": fx, "deepctr": dc, "ctrkit_bf16": bf,
                    "seed_noise": noise, "tolerance": tol,
                    "ctrkit_minus_fuxictr": (c1 - fx) if c1 is not None and fx is not None else None,
                    "bf16_minus_fp32": (bf - c1) if bf is not None and c1 is not None else None}
        d = equal[m]["ctrkit_minus_fuxictr"]
        equal[m]["equal_within_noise"] = None if d is None or tol is None else abs(d) <= tol

    mutual = None
    for r in results:
        if r["mode"] == "mutual" and r.get("status") == "ok":
            es = r["epoch_seconds"]
            one = es.get("1")
            mutual = {"model": r["model"], "train_rows": r["train_rows"], "batch_size": r["batch_size"],
                      "epoch_seconds": es, "vs_single": {n: (s / one if one else None) for n, s in es.items()},
                      "valid_auc": r.get("valid_auc")}
            n4 = mutual["vs_single"].get("4")
            mutual["met_n4_4.2x"] = None if n4 is None else n4 <= TARGETS["mutual_n4_vs_single"]
        elif r["mode"] == "mutual":
            mutual = {"status": r.get("status"), "error": r.get("error")}
    return {"speed": speed_rows, "targets": targets, "auc": auc, "equal_work": equal, "mutual": mutual}


def fmt(v, spec="{:,.0f}"):
    return "—" if v is None else spec.format(v)


def markdown(report: dict) -> str:
    s, m = report["summary"], report["machine"]
    b1, b2 = report["settings"]["batch_sizes"]
    lines = [f"# ctrkit benchmark {report['created'][:10]} on {m['cpu']}, {m['cores']} cores, "
             f"{report['settings']['threads']} threads, torch {m['torch']}", "",
             f"Data: {report['settings']['rows']:,} synthetic Criteo-shaped rows (`ctrkit.data.synthetic_dataset`), "
             f"39 fields, vocab {report['settings']['vocab']:,}; embedding {report['settings']['emb']}, "
             f"MLP {report['settings']['hidden']}, steady-state training samples/s (median of the completed "
             f"interleaved repeats, {_repeat_range(s)} per cell of {report['settings']['repeats']} planned; "
             f"warm-up excluded).",
             f"Command: `{report['command']}`", ""]
    if report.get("note"):
        lines += [f"Note: {report['note']}", ""]
    t = s["targets"]
    lines += [f"## Training speed, fp32, batch {b1:,} (samples/s)", "",
              "| model | ctrkit | FuxiCTR | DeepCTR-Torch | ctrkit / FuxiCTR | ctrkit bf16 | bf16 / FuxiCTR |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for model in MODELS:
        r = t[model]
        fx = fmt(r["fuxictr_fp32"]) if r["fuxictr_fp32"] else _status(s, model, "fuxictr", b1)
        dc = fmt(r["deepctr_fp32"]) if r["deepctr_fp32"] else _status(s, model, "deepctr", b1)
        lines.append(f"| {model} | {fmt(r['ctrkit_fp32'])} | {fx} | {dc} | {fmt(r['fp32_vs_fuxictr'], '{:.2f}x')} | "
                     f"{fmt(r['ctrkit_bf16'])} | {fmt(r['bf16_vs_fuxictr'], '{:.2f}x')} |")
    d = t["DeepFM"]
    lines += ["", f"Bare reference loop (DeepFM, hand-written PyTorch): {fmt(d.get('reference_fp32'))} samples/s; "
                  f"ctrkit DeepFM / reference = {fmt(d.get('vs_reference'), '{:.2f}x')}.", ""]
    f = t["FiBiNET"]
    lines += [f"FiBiNET at batch {b2:,}: ctrkit {fmt(f['ctrkit_fp32_4096'])} (bf16 {fmt(f['ctrkit_bf16_4096'])}), "
              f"FuxiCTR {fmt(f['fuxictr_fp32_4096']) if f['fuxictr_fp32_4096'] else _status(s, 'FiBiNET', 'fuxictr', b2)}, "
              f"DeepCTR-Torch {fmt(f['deepctr_fp32_4096'])} samples/s; ctrkit / FuxiCTR = "
              f"{fmt(f['vs_fuxictr_4096'], '{:.1f}x')}.", ""]
    fp = [r for r in s["speed"] if r["framework"] == "ctrkit" and r["config"] == "cpu" and r["batch_size"] == b1]
    if any(r["variant"] != "fp32" for r in fp):
        lines += [f"## ctrkit fast-path variants, batch {b1:,} (samples/s; ratio to fp32)", "",
                  "bf16: autocast with fp32 master weights; torch.compile columns: first repeat only, "
                  "compile = seconds of the first (compiling) step; per-field: one nn.Embedding per field + stack "
                  "instead of the fused table; default malloc: without `ctrkit.core.utils.tune_cpu_allocator` (every "
                  "other ctrkit column has it, as `fit` does); textbook layers: ctrkit's CPU layer fast paths swapped for "
                  "the plain code they replaced (ATen embedding backward, autograd FM, out-of-place ReLU, "
                  "layer-by-layer cross network, pair-major bilinear).", "",
                  "| model | fp32 | bf16 autocast | torch.compile | compile + bf16 | per-field embeddings | unfused Adam "
                  "| default malloc | bf16, default malloc (ratio to bf16) | textbook layers |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for model in MODELS:
            by = {r["variant"]: r for r in fp if r["model"] == model}
            base = by.get("fp32", {}).get("samples_per_s")
            cells = []
            for v in ("fp32", "bf16", "compile", "compile_bf16", "perfield", "unfused_adam", "default_malloc",
                      "bf16_default_malloc", "textbook"):
                x = by.get(v, {}).get("samples_per_s")
                c = fmt(x)
                ref = by.get("bf16", {}).get("samples_per_s") if v == "bf16_default_malloc" else base
                if x and ref and v != "fp32":
                    c += f" ({x / ref:.2f}x{' bf16' if v == 'bf16_default_malloc' else ''})"
                if by.get(v, {}).get("compile_seconds"):
                    c += f", compile {by[v]['compile_seconds']:.0f}s"
                cells.append(c)
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    x4 = [r for r in s["speed"] if r["config"] == "x4_001"]
    if x4:
        lines += [f"## BARS x4_001 MLPs, batch {b1:,} (samples/s)", "", "| model | ctrkit fp32 | ctrkit bf16 | FuxiCTR |",
                  "|---|---:|---:|---:|"]
        for model in MODELS:
            by = {(r["framework"], r["variant"]): r for r in x4 if r["model"] == model}
            if by:
                lines.append(f"| {model} | {fmt(by.get(('ctrkit', 'fp32'), {}).get('samples_per_s'))} | "
                             f"{fmt(by.get(('ctrkit', 'bf16'), {}).get('samples_per_s'))} | "
                             f"{fmt(by.get(('fuxictr', 'fp32'), {}).get('samples_per_s'))} |")
        lines.append("")
    eq = s["equal_work"]
    if any(v["ctrkit"] is not None for v in eq.values()):
        st = report["settings"]
        lines += ["## Equal work: test AUC after 1 epoch (same data, same sizes)", "",
                  f"First {st['auc_rows']:,} training rows ({st['auc_fibinet_rows']:,} for FiBiNET), batch "
                  f"{st['auc_batch']:,}, test on {st['auc_test_rows']:,} rows. Run-to-run noise from ctrkit's two seeds, "
                  f"pooled over the models of a row group: 'equal' means |ctrkit - FuxiCTR| <= 2 x RMS(AUC(seed 2021) - "
                  f"AUC(seed 2022)) (tolerance column), i.e. within 2 sd of the difference of two independent runs.", "",
                  "| model | ctrkit | ctrkit seed 2 | FuxiCTR | DeepCTR-Torch | ctrkit - FuxiCTR | tolerance | equal? | ctrkit bf16 | bf16 - fp32 |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        for model in MODELS:
            e = eq[model]
            lines.append(f"| {model} | {fmt(e['ctrkit'], '{:.4f}')} | {fmt(e['ctrkit_seed2'], '{:.4f}')} | "
                         f"{fmt(e['fuxictr'], '{:.4f}')} | {fmt(e['deepctr'], '{:.4f}')} | "
                         f"{fmt(e['ctrkit_minus_fuxictr'], '{:+.4f}')} | {fmt(e['tolerance'], '{:.4f}')} | "
                         f"{'—' if e['equal_within_noise'] is None else ('yes' if e['equal_within_noise'] else 'no')} | "
                         f"{fmt(e['ctrkit_bf16'], '{:.4f}')} | {fmt(e['bf16_minus_fp32'], '{:+.4f}')} |")
        lines.append("")
    mu = s["mutual"]
    if mu and "epoch_seconds" in mu:
        lines += [f"## N-peer mutual learning (ctrkit.training.mutual.mutual_fit, {mu['model']} peers, "
                  f"{mu['train_rows']:,} rows, batch {mu['batch_size']:,})", "",
                  "| N peers | epoch seconds | / single model |", "|---:|---:|---:|"]
        for n, sec in mu["epoch_seconds"].items():
            lines.append(f"| {n} | {sec:.1f} | {fmt(mu['vs_single'][n], '{:.2f}x')} |")
        lines.append("")
    elif mu:
        lines += ["## N-peer mutual learning", "", f"not measured: {mu.get('status')}: {mu.get('error')}", ""]
    if report.get("skipped"):
        lines += ["Skipped: " + "; ".join(f"{k}: {v}" for k, v in report["skipped"].items()), ""]
    if report.get("skipped_jobs_over_budget"):
        lines += ["Not run (time budget spent): " + "; ".join(report["skipped_jobs_over_budget"]), ""]
    return "\n".join(lines)


def _repeat_range(s) -> str:
    n = [r["repeats"] for r in s["speed"] if r["repeats"]]
    return "none" if not n else (f"{min(n)}" if min(n) == max(n) else f"{min(n)}-{max(n)}")


def _status(s, model, fw, bs):
    for r in s["speed"]:
        if (r["model"], r["framework"], r["batch_size"], r["variant"]) == (model, fw, bs, "fp32") and r["config"] == "cpu":
            return r["status"] or "—"
    return "—"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma list of {PARTS}")
    ap.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows (train 80%%)")
    ap.add_argument("--data", help="an already prepared dataset directory (instead of --rows synthetic)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--emb", type=int, default=16)
    ap.add_argument("--hidden", default="400,400,400")
    ap.add_argument("--batch-sizes", type=int, nargs=2, default=[10000, 4096])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8, help="timed steps (at most)")
    ap.add_argument("--max-seconds", type=float, default=5.0, help="stop timing a model after this, >= 2 steps")
    ap.add_argument("--slow-step-s", type=float, default=5.0,
                    help="a first step slower than this ends warm-up and one timed step suffices")
    ap.add_argument("--auc-rows", type=int, default=100_000)
    ap.add_argument("--auc-fibinet-rows", type=int, default=12_288)
    ap.add_argument("--auc-test-rows", type=int, default=50_000)
    ap.add_argument("--auc-batch", type=int, default=4096)
    ap.add_argument("--mutual-rows", type=int, default=200_000)
    ap.add_argument("--mutual-valid-rows", type=int, default=10_000)
    ap.add_argument("--max-peers", type=int, default=5)
    ap.add_argument("--mem-limit-gb", type=float, default=14.0,
                    help="per-worker memory cap: an oversized allocation fails as 'oom' in the worker")
    ap.add_argument("--job-timeout", type=int, default=900)
    ap.add_argument("--budget-min", type=float, default=None,
                    help="start no job after this many minutes (skipped jobs are listed in the result)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--machine", help="machine name in the result file name (default: from the CPU)")
    ap.add_argument("--note", default="", help="free text stored with the results")
    ap.add_argument("--quick", action="store_true",
                    help="dry run: 20k rows, tiny batches, 1 repeat (checks the harness, numbers mean nothing)")
    ap.add_argument("--frameworks", help="speed/fastpath: only these (comma list of ctrkit,fuxictr,deepctr,reference)")
    ap.add_argument("--models", help="speed/fastpath: only these models (comma list)")
    ap.add_argument("--variants", help="speed/fastpath: only these ctrkit variants (fp32,bf16,compile,...)")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--resummarize", metavar="JSON",
                    help="recompute the summary and the .md of an existing result file (no training)")
    args = ap.parse_args(argv)
    if args.resummarize:
        path = Path(args.resummarize)
        report = json.loads(path.read_text())
        args.batch_sizes = report["settings"]["batch_sizes"]
        report["summary"] = summarize(report["runs"], args)
        for p, text in ((path, json.dumps(report, indent=1)), (path.with_suffix(".md"), markdown(report) + "\n")):
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, p)
        print(markdown(report))
        return 0
    if args.quick:
        args.rows, args.repeats, args.batch_sizes = 20_000, 1, [1000, 512]
        args.warmup, args.steps, args.max_seconds = 1, 2, 2.0
        args.auc_rows, args.auc_fibinet_rows, args.auc_test_rows, args.auc_batch = 4000, 2048, 2000, 512
        args.mutual_rows, args.mutual_valid_rows, args.max_peers = 4000, 1000, 3
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = sorted(set(parts) - set(PARTS))
    if bad:
        ap.error(f"unknown part(s) {bad}; valid: {PARTS}")

    import torch  # noqa: F401  (the orchestrator only reads torch's version)
    from ctrkit import data as cdata

    t0 = time.perf_counter()
    if args.data:
        d = cdata.load(args.data)
    else:
        work = HERE / "work" / f"criteo_{args.rows}"
        log(f"data: {args.rows:,} synthetic Criteo rows in {work} (cached after the first run)")
        d = cdata.synthetic_dataset("criteo", args.rows, work)
    rows = sum(d.rows.values())
    log(f"data ready: {d.path} rows {d.rows}, vocab {sum(d.field_sizes):,} ({time.perf_counter() - t0:.0f}s)")

    runner = Runner(args, Path(d.path))
    deadline = t0 + args.budget_min * 60 if args.budget_min else None
    skipped_jobs = []

    def run(job):
        if deadline is not None and time.perf_counter() > deadline:
            skipped_jobs.append(f"{job['framework']}/{job.get('variant', 'fp32')}/{job['mode']} "
                                f"bs={job['batch_size']} r{job.get('repeat')}")
            return
        runner.run(job)

    if "mutual" in parts:  # first: one job, and the budget cut must not fall on it
        run(mutual_job(args))
    jobs = speed_jobs(args, parts)
    if args.frameworks:  # focused runs: only these frameworks / models
        keep = set(args.frameworks.split(","))
        jobs = [j for j in jobs if j["framework"] in keep]
    if args.variants:
        keep = set(args.variants.split(","))
        jobs = [j for j in jobs if j.get("variant", "fp32") in keep]
    if args.models:
        keep = set(args.models.split(","))
        jobs = [{**j, "models": [m for m in j["models"] if m["model"] in keep]} for j in jobs]
        jobs = [j for j in jobs if j["models"]]
    for r in range(args.repeats):
        todo = [j for j in jobs if r == 0 or not j.get("only_first_repeat")]
        if not todo:
            break
        k = r % len(todo)  # rotate the order so no framework always runs first
        for job in todo[k:] + todo[:k]:
            run({**{x: y for x, y in job.items() if x != "only_first_repeat"}, "repeat": r})
    if "auc" in parts:
        for job in auc_jobs(args):
            run(job)
    if skipped_jobs:
        log(f"budget of {args.budget_min} min spent: skipped {len(skipped_jobs)} job(s)")

    info = machine_info(args.threads)
    created = dt.datetime.now(dt.timezone.utc)
    report = {"created": created.isoformat(timespec="seconds"), "machine": info,
              "command": "python bench/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "note": args.note, "seconds": round(time.perf_counter() - t0, 1),
              "settings": {"parts": parts, "rows": rows, "vocab": sum(d.field_sizes), "repeats": args.repeats,
                           "threads": args.threads, "emb": args.emb, "hidden": [int(h) for h in args.hidden.split(",")],
                           "batch_sizes": args.batch_sizes, "warmup": args.warmup, "steps": args.steps,
                           "max_seconds": args.max_seconds, "auc_rows": args.auc_rows,
                           "auc_fibinet_rows": args.auc_fibinet_rows, "auc_test_rows": args.auc_test_rows,
                           "auc_batch": args.auc_batch, "mutual_rows": args.mutual_rows, "quick": args.quick,
                           "versions": {"fuxictr": "2.3.10", "deepctr-torch": "0.3.0",
                                        "fuxictr_model_zoo": os.environ.get("FUXICTR_MODEL_ZOO")}},
              "targets": TARGETS, "skipped": runner.skipped, "skipped_jobs_over_budget": skipped_jobs,
              "runs": runner.results}
    report["summary"] = summarize(runner.results, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # a run of some parts only gets their names in the file name, so it never overwrites a full run
    stem = f"{created:%Y-%m-%d}-{args.machine or machine_slug(info)}" + ("-quick" if args.quick else "") \
        + ("" if parts == DEFAULT_PARTS else "-" + "-".join(parts)) + (f"-{args.tag}" if args.tag else "")
    md = markdown(report)
    for path, text in ((out / f"{stem}.json", json.dumps(report, indent=1)), (out / f"{stem}.md", md + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written result
    print(md)
    log(f"wrote {out / stem}.json and .md ({time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
