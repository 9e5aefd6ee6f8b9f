"""GPU check (see gpu_check.sh): the GPU measurements of issues 23 and 21 as one call of at most 8 minutes.

Sections (`--sections`; the default runs all in this order, the costly full-size epochs and the
compiles last), each a row (or rows) of the table and the JSON, each skipped once `--budget-s` is
spent (a half-measured table beats a killed run):

- equal:     graph == eager: DeepFM alone and a DeepFM + DCN mutual run, 2 epochs on `--check-rows`,
             fp32 and bf16, dropout 0 (a graph draws its masks from one stream, eager per peer),
             per-epoch train loss and valid AUC compared (`ctrkit.training.graph`).
- matrix:    every model eager vs graph, fp32 (TF32) vs bf16, 2 epochs on `--step-rows`; the
             steady rate is epoch 2's (epoch 1 holds the capture).
- mutual:    4 x DeepFM and the 4 paper models in one mutual step, bf16: eager, graph, graph
             without the peers' streams (`graph.OVERLAP_PEERS`).
- replicas:  issue 21 here: K = 1, 2, 4, 8, 16 DeepFM replicas in one batched eager step at the smoke,
             quick and BARS sizes (`bench_replicas.py`'s sweep), each K against one run's step (its
             target: K = 8 at least 4x at the quick sizes); 8 seeds of the smoke preset as replicas
             (`fit_replicas`, what `run_many` does on a GPU; graph mode does not capture replicas)
             against one run alone, eager and graph; 4 seeds at the preset's sizes, against 4 x the
             matrix's DeepFM graph row.
- fuxictr:   FuxiCTR's own `train_step` on the same tensors, when FUXICTR_SRC points to a FuxiCTR
             snapshot (its `fuxictr/` and `model_zoo/`); "n/a" otherwise.
- estimate:  `ctrkit reproduce --profile paper` (both datasets) and the study profile at `--study-rows`
             (Criteo x4) on this device, from epoch times measured here at each profile's preset,
             batch and precision, priced with `ctrkit.notebook.runner.estimate` (every run at its
             epoch cap: an upper bound).
- epochs:    one epoch of each model (`--models`) on all `--rows` and one 4-peer mutual epoch
             (`--mutual-peers`), as ctrkit runs them by default (amp auto = bf16, graph auto): the
             issue 23's target numbers.
- compile:   every model in bf16 graph mode with its forward through torch.compile, against the
             matrix's graph rows.

The data never leaves the device: X int32 [rows, 39] with uniform random per-field indices below
x4_001-like vocabulary sizes, labels from a hidden logistic model of a few fields (so the loss
means something; the AUC is not the point). Valid/test are small (`--eval-rows`) so an epoch is
training time. Models: the `bars` preset of Criteo x4_001 on CUDA; `--preset auto` on a CPU is the
`smoke` preset (a dry run of every code path: its numbers mean nothing), graph and bf16 rows say n/a.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# Criteo x4_001-like vocabulary sizes (13 bucketized integer fields, 26 categorical fields after
# min_categr_count=10; approximate, about 0.9M rows in all) -- the embedding table's size sets the
# cost of the optimizer step, so it should be Criteo-sized, not the small synthetic one.
X4_001_VOCAB = [49, 101, 126, 52, 224, 147, 119, 73, 218, 10, 36, 56, 101,
                1445, 553, 175781, 128509, 305, 19, 11930, 629, 3, 39530, 5130, 156655, 3175, 27,
                11042, 148912, 11, 4559, 2002, 4, 154563, 17, 16, 52989, 81, 40954]
MODELS = ["DeepFM", "DCN", "PNN", "FiBiNET"]
CRITEO_X4_TRAIN_ROWS = 36_672_493


class DeviceData:
    """The part of CTRData that fit/mutual_fit read, over tensors already on the device."""

    def __init__(self, splits: dict, field_sizes: list[int]):
        self._splits, self.field_sizes = splits, field_sizes
        self.fingerprint, self.dataset, self.path = "gpu-check-synthetic", "criteo", Path("<device>")
        self.protocol = "x4_001"
        self.rows = {k: int(v[0].shape[0]) for k, v in splits.items()}
        self.feature_map = {"dataset": "criteo", "protocol": "x4_001",
                            "fields": [{"name": f"f{i}", "vocab_size": s} for i, s in enumerate(field_sizes)]}

    def tensors(self, split, device=None):
        return self._splits[split]

    def head(self, rows: int, eval_rows: int) -> "DeviceData":
        """The first `rows` training rows and `eval_rows` valid/test rows, as views (no copy)."""
        return DeviceData({k: (X[:rows if k == "train" else eval_rows], y[:rows if k == "train" else eval_rows])
                           for k, (X, y) in self._splits.items()}, self.field_sizes)


def make_data(torch, rows: int, eval_rows: int, device, seed: int) -> DeviceData:
    g = torch.Generator(device=device).manual_seed(seed)
    sizes = torch.tensor(X4_001_VOCAB, device=device, dtype=torch.float32)
    hidden = torch.randn(len(X4_001_VOCAB), 64, device=device, generator=g)

    def split(n):
        # uniform in [0, vocab_f) per field, built in chunks to bound the float temporaries
        X = torch.empty(n, len(X4_001_VOCAB), dtype=torch.int32, device=device)
        y = torch.empty(n, dtype=torch.float32, device=device)
        for s in range(0, n, 4_000_000):
            e = min(n, s + 4_000_000)
            u = torch.rand(e - s, len(X4_001_VOCAB), device=device, generator=g)
            X[s:e] = (u * sizes).to(torch.int32).clamp_max_(sizes.to(torch.int32) - 1)
            # hidden click model: a per-field hashed effect of the index, ~25% CTR
            eff = torch.sin(X[s:e].float() * 0.37 + hidden[:, 0]) @ torch.ones(len(X4_001_VOCAB), device=device)
            p = torch.sigmoid(0.4 * eff - 1.1)
            y[s:e] = (torch.rand(e - s, device=device, generator=g) < p).float()
        return X, y

    return DeviceData({"train": split(rows), "valid": split(eval_rows), "test": split(eval_rows)},
                      list(X4_001_VOCAB))


# ---------------------------------------------------------------- running and recording


class Check:
    """The run's context (args, device, data) and its rows; `record` runs one measurement under the budget."""

    def __init__(self, args, torch, device, data):
        self.args, self.torch, self.device, self.data = args, torch, device, data
        self.cuda = device.type == "cuda"
        self.preset = args.preset if args.preset != "auto" else ("bars" if self.cuda else "smoke")
        self.rows, self.t_start, self.interrupted = [], time.perf_counter(), False

    def record(self, what: str, fn, *args, **kw) -> dict | None:
        """Row `what` from fn(*args, **kw) (a dict; status ok unless it says otherwise), or why not."""
        spent = time.perf_counter() - self.t_start
        if self.interrupted or spent > self.args.budget_s:
            row = {"what": what, "status": "skipped: interrupted (time cap)" if self.interrupted
                   else f"skipped: budget {self.args.budget_s:.0f}s spent ({spent:.0f}s)"}
        else:
            if self.cuda:
                self.torch.cuda.empty_cache()
                self.torch.cuda.reset_peak_memory_stats(self.device)
            try:
                row = {"what": what, "status": "ok", **fn(*args, **kw)}
                if self.cuda:
                    row["peak_gb"] = self.torch.cuda.max_memory_allocated(self.device) / 2**30
            except KeyboardInterrupt:
                self.interrupted = True
                row = {"what": what, "status": "interrupted (time cap)"}
            except Exception as e:  # noqa: BLE001  (an OOM or a failed capture is a result of the check)
                row = {"what": what, "status": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    def na(self, what: str, why: str) -> None:
        """A row that does not apply here (a CPU dry run, no FuxiCTR): counts as passed."""
        self.rows.append({"what": what, "status": f"n/a: {why}"})

    def preset_of(self, name: str, preset: str | None = None):
        from ctrkit.training import presets
        preset = preset or self.preset
        return presets.get(name, preset, dataset="criteo", protocol="x4_001") if preset == "bars" \
            else presets.get(name, preset)


@contextlib.contextmanager
def _overlap(on: bool | None):
    from ctrkit.training import graph
    old = graph.OVERLAP_PEERS
    graph.OVERLAP_PEERS = old if on is None else on
    try:
        yield
    finally:
        graph.OVERLAP_PEERS = old


def train(ck: Check, names: list[str], data, *, epochs: int, amp: str, graph: str, batch: int | None = None,
          preset: str | None = None, overlap: bool | None = None, compile: str = "off", **hp) -> dict:
    """One ctrkit run (fit for one model, mutual_fit for several) of `names` at `preset` on `data`;
    the result plus `rate` (training rows / last epoch's seconds) and `epoch_s` (every epoch's)."""
    from ctrkit import models
    from ctrkit.core.utils import seed_everything
    from ctrkit.training.config import RunConfig
    from ctrkit.training.loop import fit
    from ctrkit.training.mutual import mutual_fit

    built, peers = [], []
    for k, name in enumerate(names):
        p = ck.preset_of(name, preset)
        seed_everything(ck.args.seed + k)
        built.append(models.build(name, data.field_sizes, **{**p.model, **hp}))
        peers.append({"lr": p.train["lr"], "embedding_regularizer": p.train["embedding_regularizer"],
                      "net_regularizer": p.train["net_regularizer"], "monitor": "AUC", "patience": 5})
    batch = batch or ck.args.batch_size or int(ck.preset_of(names[0], preset).train["batch_size"])
    run = dict(epochs=epochs, batch_size=batch, seed=ck.args.seed, device=str(ck.device), amp=amp, graph=graph,
               compile=compile, progress=False, eval_batch_size=65536)
    with _overlap(overlap):
        if len(names) == 1:
            res = fit(built[0], data, RunConfig.single({**run, **peers[0]}))
            secs = [h["seconds"] for h in res["history"]]
        else:
            res = mutual_fit(built, data, RunConfig(mode="mutual", peers=tuple(peers), **run))
            secs = [h["seconds"] for h in res["history"]]
    return {"result": res, "epoch_s": secs, "rate": data.rows["train"] / secs[-1], "batch_size": batch}


def _summary(out: dict) -> dict:
    """A row's fields from `train`'s output: rate, epoch seconds, the env's graph and mfu, AUCs."""
    r, env = out["result"], out["result"]["env"]
    aucs = [p["valid_auc"] for p in r["peers"]] if "peers" in r else r["valid_auc"]
    mfu = (out["rate"] * env["model_flops_per_sample"] / (env["matmul_peak_tflops"] * 1e12)
           if env.get("model_flops_per_sample") else None)  # the steady epoch's, not the run's (capture)
    return {"samples_per_s": out["rate"], "epoch_seconds": out["epoch_s"], "batch_size": out["batch_size"],
            "amp": r["amp"], "graph": env.get("graph"), "mfu": mfu, "matmul_peak_tflops": env.get("matmul_peak_tflops"),
            "valid_auc": aucs}


# ---------------------------------------------------------------- the sections


def section_equal(ck: Check) -> None:
    """graph == eager, alone and mutual, dropout 0, fp32 and bf16."""
    if not ck.cuda:
        return ck.na("equal: graph == eager", "graph mode needs CUDA (tests/test_graph_mode.py covers the CPU)")
    data = ck.data.head(min(ck.args.check_rows, ck.data.rows["train"]), 20_000)
    for names in (["DeepFM"], ["DeepFM", "DCN"]):
        for amp in ("off", "bf16"):
            ck.record(f"equal: graph == eager, {'+'.join(names)}, {amp}", _equal, ck, names, data, amp)


def _equal(ck: Check, names: list[str], data, amp: str) -> dict:
    runs = [train(ck, names, data, epochs=2, amp=amp, graph=g, net_dropout=0.0)["result"] for g in ("off", "on")]
    rows = [[(p["train_loss"], p["valid_auc"]) for p in h["peers"]] if "peers" in h else [(h["train_loss"], h["valid_auc"])]
            for r in runs for h in r["history"]]
    half = len(rows) // 2
    pairs = [(a, b) for ea, eb in zip(rows[:half], rows[half:]) for a, b in zip(ea, eb)]
    loss_rel = max(abs(a[0] - b[0]) / abs(a[0]) for a, b in pairs)
    auc_abs = max(abs(a[1] - b[1]) for a, b in pairs)
    ok = loss_rel < 1e-3 and auc_abs < 2e-3 and runs[1]["env"].get("graph") == "on"
    return {"status": "ok" if ok else f"MISMATCH (graph {runs[1]['env'].get('graph')})",
            "max_train_loss_rel_diff": loss_rel, "max_valid_auc_diff": auc_abs}


def section_epochs(ck: Check) -> None:
    """One epoch per model on all rows, and the 4-peer mutual epoch, at ctrkit's defaults."""
    for name in [m for m in ck.args.models.split(",") if m]:
        ck.record(f"epoch {name}", lambda n=name: _summary(train(ck, [n], ck.data, epochs=1, amp=ck.args.amp,
                                                                 graph="auto")))
    peers = [m for m in ck.args.mutual_peers.split(",") if m]
    if peers:
        row = ck.record(f"epoch mutual x{len(peers)} ({'+'.join(sorted(set(peers)))})",
                        lambda: _summary(train(ck, peers, ck.data, epochs=1, amp=ck.args.amp, graph="auto",
                                               batch=ck.args.batch_size or 10000)))
        single = next((r for r in ck.rows if r["what"] == f"epoch {peers[0]}" and r["status"] == "ok"), None)
        if row and row["status"] == "ok" and single and len(set(peers)) == 1:
            row["vs_single_epoch"] = row["epoch_seconds"][-1] / single["epoch_seconds"][-1]


def section_matrix(ck: Check) -> None:
    """Every model: eager vs graph, fp32 vs bf16, the steady epoch's rate on --step-rows."""
    data = ck.data.head(ck.step_rows, 10_000)
    for name in [m for m in ck.args.models.split(",") if m]:
        for amp in ("off", "bf16"):
            for g in ("off", "on"):
                what = f"step {name} {'fp32' if amp == 'off' else amp} {'graph' if g == 'on' else 'eager'}"
                if not ck.cuda and (g == "on" or amp == "bf16"):
                    ck.na(what, "graph mode and bf16 are measured on CUDA only")
                    continue
                ck.record(what, lambda n=name, a=amp, gr=g: _summary(train(ck, [n], data, epochs=2, amp=a, graph=gr)))


def section_compile(ck: Check) -> None:
    """Every model in bf16 graph mode with its forward through torch.compile (`--compile on`): the
    matrix's graph rows are the baseline; the rate is the steady epoch's (the first one compiles)."""
    data = ck.data.head(ck.step_rows, 10_000)
    for name in [m for m in ck.args.models.split(",") if m]:
        what = f"step {name} bf16 graph compiled"
        if not ck.cuda:
            ck.na(what, "measured on CUDA only (on the CPU tests/test_compiled.py checks it)")
            continue
        ck.record(what, lambda n=name: _summary(train(ck, [n], data, epochs=2, amp="bf16", graph="on", compile="on")))


def section_mutual(ck: Check) -> None:
    """4 x DeepFM and the 4 paper models in one step: eager, graph (peers on streams), graph on one stream."""
    data = ck.data.head(ck.step_rows, 10_000)
    amp = "bf16" if ck.cuda else "off"
    for label, peers in (("4 x DeepFM", ["DeepFM"] * 4), ("4 paper models", MODELS)):
        for g, overlap, how in (("off", None, "eager"), ("on", True, "graph, peers on streams"),
                                ("on", False, "graph, one stream")):
            what = f"mutual {label} {'fp32' if amp == 'off' else amp} {how}"
            if g == "on" and not ck.cuda:
                ck.na(what, "graph mode needs CUDA")
                continue
            ck.record(what, lambda p=peers, gr=g, o=overlap: _summary(
                train(ck, p, data, epochs=2, amp=amp, graph=gr, overlap=o, batch=ck.args.batch_size or 10000)))


def section_replicas(ck: Check) -> None:
    """Issue 21 on this device: K DeepFM replicas per step (`bench_replicas`' sweep, eager), each K's
    aggregate samples/s over one run's eager step at the same size (the target: K = 8 at least 4x at
    the quick sizes); then whole runs at the smoke preset (what `make reproduce` trains): 8 seeds as
    replicas (`fit_replicas`, what run_many does on a GPU) against one run alone, eager and in graph
    mode (ctrkit's default on CUDA: graph mode does not capture replicas); and 4 seeds at the
    preset's sizes, to set against 4 x the matrix's `step DeepFM bf16 graph` row."""
    amp = "bf16" if ck.cuda else "off"
    ks = [1, 2, 4, 8, 16] if ck.cuda else [1, 2]
    for size in ("smoke", "quick", "bars"):
        rows = [ck.record(f"replicas step {size} DeepFM K={k} {_prec(amp)} eager", _replica_step, ck, size, k, amp)
                for k in ks]
        if rows[0]["status"] == "ok":
            for r in rows[1:]:
                if r["status"] == "ok":
                    r["vs_one_run"] = r["samples_per_s"] / rows[0]["samples_per_s"]
    data = ck.data.head(min(100_000, ck.data.rows["train"]), 10_000)
    k = 8 if ck.cuda else 2
    many = ck.record(f"replicas run smoke DeepFM {k} seeds {_prec(amp)} (batched)", _replicas, ck, data, amp, k,
                     "smoke", 512)
    for g in ("off", "on"):
        what = f"replicas run smoke DeepFM alone {_prec(amp)} {'graph' if g == 'on' else 'eager'}"
        if g == "on" and not ck.cuda:
            ck.na(what, "graph mode needs CUDA")
            continue
        one = ck.record(what, lambda gr=g: _summary(train(ck, ["DeepFM"], data, epochs=2, amp=amp, graph=gr,
                                                          preset="smoke", batch=512)))
        if many["status"] == "ok" and one["status"] == "ok":
            many[f"vs_one_run_{'graph' if g == 'on' else 'eager'}"] = many["samples_per_s"] / one["samples_per_s"]
    data = ck.data.head(ck.step_rows, 10_000)
    ck.record(f"replicas 4 x DeepFM seeds {_prec(amp)} eager (batched)", _replicas, ck, data, amp, 4)


def _prec(amp: str) -> str:
    return "fp32" if amp == "off" else amp


def _replica_step(ck: Check, size: str, k: int, amp: str) -> dict:
    """One row of bench_replicas' sweep on this device (its random Criteo-shaped data, its sizes)."""
    import bench_replicas
    r = bench_replicas.worker({"size": size, "model": "DeepFM", "k": k, "device": str(ck.device), "amp": amp,
                               "threads": ck.torch.get_num_threads()})
    return {"samples_per_s": r["samples_per_s"], "batch_size": r["batch"], "replicas": k, "steps": r["steps"]}


def _replicas(ck: Check, data, amp: str, k: int, preset: str | None = None, batch: int | None = None) -> dict:
    from ctrkit import models
    from ctrkit.core.utils import seed_everything
    from ctrkit.training.config import RunConfig
    from ctrkit.training.loop import fit_replicas

    p = ck.preset_of("DeepFM", preset)
    built = []
    for i in range(k):
        seed_everything(ck.args.seed + i)
        built.append(models.build("DeepFM", data.field_sizes, **p.model))
    batch = batch or ck.args.batch_size or int(p.train["batch_size"])
    cfgs = [RunConfig.single(dict(epochs=2, batch_size=batch, seed=ck.args.seed + i, device=str(ck.device), amp=amp,
                                  progress=False, eval_batch_size=65536, lr=p.train["lr"], patience=5,
                                  embedding_regularizer=p.train["embedding_regularizer"])) for i in range(k)]
    res = fit_replicas(built, data, cfgs)
    secs = [h["seconds"] for h in res[0]["history"]]
    return {"samples_per_s": k * data.rows["train"] / secs[-1], "epoch_seconds": secs, "batch_size": batch,
            "amp": res[0]["amp"], "replicas": k, "valid_auc": [r["valid_auc"] for r in res]}


def section_fuxictr(ck: Check) -> None:
    """FuxiCTR's own train_step on the same tensors (FUXICTR_SRC: a FuxiCTR snapshot), fp32."""
    src = os.environ.get("FUXICTR_SRC")
    if not src:
        return ck.na("fuxictr", "FUXICTR_SRC unset (a FuxiCTR snapshot with fuxictr/ and model_zoo/)")
    sys.path.insert(0, src)
    os.environ.setdefault("FUXICTR_MODEL_ZOO", str(Path(src) / "model_zoo"))
    missing = {m for m in _FUXICTR_UNUSED if importlib.util.find_spec(m) is None}
    if missing and not any(isinstance(f, _Stubs) for f in sys.meta_path):
        sys.meta_path.append(_Stubs(missing))
    for name in [m for m in ck.args.models.split(",") if m]:
        ck.record(f"fuxictr step {name} fp32", _fuxictr, ck, name)


# packages FuxiCTR's modules import (its data pipeline, its metrics) that its train_step never uses;
# a bare GPU machine has none of them
_FUXICTR_UNUSED = ("h5py", "polars", "ray", "keras_preprocessing", "sklearn")


class _Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules, any submodule included, for the named top-level packages; a name taken from one
    is an empty class."""

    def __init__(self, tops: set[str]):
        self.tops = tops

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self, is_package=True) if name.split(".")[0] in self.tops else None

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__getattr__ = _stub_attr
        return mod

    def exec_module(self, module) -> None:
        pass


def _stub_attr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (), {})


def _fuxictr(ck: Check, name: str) -> dict:
    import logging
    import tempfile

    import fw_fuxictr
    torch = ck.torch
    logging.disable(logging.INFO)
    p = ck.preset_of(name)
    workdir = tempfile.mkdtemp(prefix="fuxictr_gpu_check_")
    fmap = fw_fuxictr.feature_map_for(ck.data.feature_map, workdir, p.model["embedding_dim"])
    torch.manual_seed(ck.args.seed)
    m = fw_fuxictr.zoo_class(name)(fmap, model_id=name, gpu=0 if ck.cuda else -1, learning_rate=p.train["lr"],
                                   embedding_regularizer=p.train["embedding_regularizer"], net_regularizer=0,
                                   optimizer="adam", loss="binary_crossentropy", metrics=["logloss", "AUC"],
                                   model_root=workdir, verbose=0, **fw_fuxictr.hparams_for(name, dict(p.model)))
    m._max_gradient_norm = 10.0  # what its BaseModel.fit sets before train_step
    m.train()
    X, y = ck.data.tensors("train")
    names = [f["name"] for f in ck.data.feature_map["fields"]]
    bs = ck.args.batch_size or int(p.train["batch_size"])
    n = max(1, X.shape[0] // bs)

    def step(i):
        idx = torch.arange((i % n) * bs, (i % n + 1) * bs, device=X.device)
        xb = X.index_select(0, idx)
        m.train_step({**{f: xb[:, j].long() for j, f in enumerate(names)}, "label": y.index_select(0, idx)})

    sync = torch.cuda.synchronize if ck.cuda else (lambda: None)
    for i in range(3):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(3, 3 + ck.args.fuxictr_steps):
        step(i)
    sync()
    return {"samples_per_s": ck.args.fuxictr_steps * bs / (time.perf_counter() - t0), "batch_size": bs}


def section_estimate(ck: Check) -> None:
    """`reproduce --profile paper` (both datasets) and the study profile at --study-rows, from epochs measured here."""
    ck.record("estimate reproduce --profile paper (criteo + avazu)", _estimate, ck, "paper", None, 2)
    ck.record(f"estimate study profile ({ck.args.study_rows:,} train rows, one dataset)", _estimate, ck, "study",
              ck.args.study_rows, 1)


def _estimate(ck: Check, profile: str, rows: int | None, datasets: int) -> dict:
    """Each model's epoch at the profile's preset, batch and precision (graph auto), timed on up to
    --step-rows rows and scaled by steps to the profile's training rows; priced per notebook."""
    import math

    from ctrkit.notebook import profiles, runner
    sizes = profiles.profile(profile)
    train_rows = rows or int(sizes["rows"] * 0.8)  # the synthetic profiles: x4_001's 8:1:1 split
    preset = sizes["preset"] if ck.cuda else "smoke"  # a CPU dry run: the code path, not the numbers
    measured = min(train_rows, ck.step_rows)
    data = ck.data.head(measured, 10_000)
    epoch_s, batches = {}, {}
    for name in sizes["models"]:
        batch = int(ck.preset_of(name, preset).train["batch_size"])
        batch = min(profiles.batch_size(sizes, batch, train_rows) or batch, measured)
        out = train(ck, [name], data, epochs=2, amp=sizes["amp"], graph="auto", batch=batch, preset=preset)
        epoch_s[name] = out["epoch_s"][-1] * math.ceil(train_rows / batch) / math.ceil(measured / batch)
        batches[name] = batch
    per_nb = runner.estimate(sizes, epoch_s)
    return {"preset": preset, "amp": sizes["amp"], "train_rows": train_rows, "measured_rows": measured,
            "batch_size": batches, "epoch_seconds": epoch_s, "notebook_hours": {k: v / 3600 for k, v in per_nb.items()},
            "total_hours": datasets * sum(per_nb.values()) / 3600, "datasets": datasets}


# ---------------------------------------------------------------- the table and the file


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "—"


# a row's speed-up over another row, as the table shows it
_VS = (("vs_one_run", "one run"), ("vs_one_run_eager", "one run eager"), ("vs_one_run_graph", "one run graph"))


def _table(ck: Check) -> list[str]:
    """The rows as a Markdown table."""
    lines = ["| run | batch | samples/s | epoch s | mfu | peak GiB | status |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in ck.rows:
        ep = r.get("epoch_seconds")
        ep = " / ".join(f"{e:.1f}" for e in ep) if isinstance(ep, list) else "—"
        extra = f" ({r['vs_single_epoch']:.2f}x single)" if r.get("vs_single_epoch") else ""
        extra += "".join(f" ({r[key]:.2f}x {label})" for key, label in _VS if r.get(key))
        extra += f" total {r['total_hours']:.2f} h" if "total_hours" in r else ""
        lines.append(f"| {r['what']} | {r.get('batch_size', '—') if not isinstance(r.get('batch_size'), dict) else '·'} | "
                     f"{_fmt(r.get('samples_per_s'), ',.0f')} | {ep}{extra} | {_fmt(r.get('mfu'), '.1%')} | "
                     f"{_fmt(r.get('peak_gb'), '.1f')} | {r['status']} |")
    return lines


def _free(path: Path) -> Path:
    """`path`, or `<stem>-2`, `-3`, ... when a result of the day is there already: a rerun of some
    sections must not replace the first run's table."""
    n, stem = 1, path.stem
    while path.with_name(f"{stem}.json").exists() or path.with_name(f"{stem}.md").exists():
        n += 1
        stem = f"{path.stem}-{n}"
    return path.with_name(f"{stem}.json")


def report(ck: Check, data_s: float, argv) -> Path:
    """Print the table; write the JSON (everything) and the Markdown (the machine, the command, the
    table: ready to commit under bench/results/); returns the JSON's path."""
    total = time.perf_counter() - ck.t_start
    table = _table(ck)
    print("\n" + "\n".join(table))
    print(f"total {total:.0f}s (data {data_s:.0f}s)")
    from ctrkit.kernels import env_info
    out = Path(ck.args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = _free(out / f"{time.strftime('%Y-%m-%d')}-gpu-check-{'gpu' if ck.cuda else 'cpu-dryrun'}.json")
    env = env_info(ck.device, ck.args.seed)
    command = "bash bench/gpu_check.sh " + " ".join(argv if argv is not None else sys.argv[1:])
    rep = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": ck.args.rows,
           "eval_rows": ck.args.eval_rows, "step_rows": ck.step_rows, "preset": ck.preset, "vocab": X4_001_VOCAB,
           "amp": ck.args.amp, "data_seconds": data_s, "total_seconds": total, "results": ck.rows,
           "env": env, "command": command}
    machine = ck.torch.cuda.get_device_name(ck.device) if ck.cuda else f"CPU dry run ({env.get('cpu', '?')})"
    md = [f"# GPU check: {machine}", "",
          f"{rep['created']} | torch {ck.torch.__version__} | preset {ck.preset} | {ck.args.rows:,} training rows, "
          f"step rows {ck.step_rows:,} | total {total:.0f} s (data {data_s:.0f} s) | `{command}`", "", *table, ""]
    for target, text in ((path, json.dumps(rep, indent=1, default=str)), (path.with_suffix(".md"), "\n".join(md))):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    return path


def parse(argv):
    ap = argparse.ArgumentParser(description="ctrkit GPU check: graph vs eager, fp32 vs bf16, mutual steps, "
                                             "FuxiCTR, the profile estimates, on Criteo-scale device tensors")
    ap.add_argument("--rows", type=int, default=CRITEO_X4_TRAIN_ROWS, help="training rows (Criteo x4 train)")
    ap.add_argument("--eval-rows", type=int, default=1_000_000, help="valid and test rows each")
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu (cpu: a dry run with tiny --rows)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the preset's (x4_001: 10,000)")
    ap.add_argument("--preset", default="auto", help="model preset; auto: bars (Criteo x4_001) on CUDA, smoke on a CPU")
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"], help="the epochs section's")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--mutual-peers", default="DeepFM,DeepFM,DeepFM,DeepFM", help="the mutual epoch's (empty: skip)")
    ap.add_argument("--step-rows", type=int, default=None, help="rows of the matrix/mutual/estimate runs "
                    "(default: 1,000,000 on CUDA, 8 batches on a CPU)")
    ap.add_argument("--check-rows", type=int, default=500_000, help="rows of the graph == eager check")
    ap.add_argument("--study-rows", type=int, default=CRITEO_X4_TRAIN_ROWS, help="the study estimate's train rows")
    ap.add_argument("--fuxictr-steps", type=int, default=30)
    ap.add_argument("--sections", default="equal,matrix,mutual,replicas,fuxictr,estimate,epochs,compile",
                    help="which sections, in this order (the default: all)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start nothing new after this many seconds")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    ap.add_argument("--seed", type=int, default=2021)
    return ap.parse_args(argv)


SECTIONS = {"equal": section_equal, "matrix": section_matrix, "mutual": section_mutual, "estimate": section_estimate,
            "fuxictr": section_fuxictr, "epochs": section_epochs, "replicas": section_replicas,
            "compile": section_compile}


def main(argv=None) -> int:
    args = parse(argv)
    import torch
    from ctrkit.core.utils import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (amp off) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    print(f"gpu_check: device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", torch {torch.__version__}, rows {args.rows:,}", flush=True)
    t0 = time.perf_counter()
    data = make_data(torch, args.rows, args.eval_rows, device, args.seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    data_s = time.perf_counter() - t0
    print(f"data: {args.rows:,} x {len(X4_001_VOCAB)} int32 on {device} in {data_s:.1f}s "
          f"(vocab {sum(X4_001_VOCAB):,}, CTR {float(data.tensors('train')[1].mean()):.3f})", flush=True)
    ck = Check(args, torch, device, data)
    batch = args.batch_size or 10000
    ck.step_rows = min(args.rows, args.step_rows or (1_000_000 if ck.cuda else 8 * batch))
    for name in [s for s in args.sections.split(",") if s]:
        SECTIONS[name](ck)
    report(ck, data_s, argv)
    return 0 if all(r["status"] == "ok" or r["status"].startswith("n/a") for r in ck.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
