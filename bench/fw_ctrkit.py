"""Benchmark worker: ctrkit (project venv). Started by run_all.py; see _common.py for the protocol.

The timed step is ctrkit.training.loop.fit's inner step, built from the same public pieces fit uses
(`make_optimizer`, `amp_context`, BCE-with-logits on fp32 logits, gradient clipping at 10, the loss
accumulated on the device), so the number is what `fit` gets per step. The auc mode calls
`ctrkit.training.loop.fit` itself (1 epoch) on the prepared directory.

Every variant but compile/textbook runs the model as `fit` does on the CPU, with the layer kernels of
`ctrkit.kernels.cpu` switched in (`for_device`).

Variants (spec["variant"]): fp32 | bf16 (autocast, fp32 master weights) | compile (torch.compile of
the model's reference maths, which traces as one graph; fp32) | compile_bf16 | perfield (fp32, the fused embedding table replaced by one
nn.Embedding per field + stack, as FuxiCTR/DeepCTR-Torch do: what fusing buys) | unfused_adam (fp32,
the same optimizer groups as `make_optimizer` but torch's default single-tensor Adam instead of
`fused=True`: what make_optimizer's fused kernel buys) | default_malloc (fp32 without
`ctrkit.core.utils.tune_cpu_allocator`, which `fit` and every other variant apply: what it buys) |
bf16_default_malloc (the same under bf16 autocast) |
textbook (fp32, the reference layers of `ctrkit.models.layers` instead of the CPU kernels --
ATen's embedding backward, FM through autograd, the pair-major bilinear and torch.cat -- plus
out-of-place ReLU and the layer-by-layer cross network; the MLP keeps `cpublas`: what the rest buys,
model by model).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

BF16_VARIANTS = ("bf16", "compile_bf16", "bf16_default_malloc")


def _per_field_embeddings(torch, model):
    """Swap every fused FeatureEmbedding for a per-field one (same init, same maths)."""
    from torch import nn
    from ctrkit.models import layers

    class PerField(nn.Module):
        def __init__(self, fused):
            super().__init__()
            sizes = [int(s) for s in model.field_sizes]
            self.tables = nn.ModuleList(nn.Embedding(s, fused.embedding_dim) for s in sizes)
            for t in self.tables:
                nn.init.normal_(t.weight, std=layers.EMBEDDING_INIT_STD)

        def forward(self, X):
            X = X.long()
            return torch.stack([t(X[:, f]) for f, t in enumerate(self.tables)], dim=1)

    emb_params = []
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, layers.FeatureEmbedding):
                pf = PerField(child)
                setattr(mod, child_name, pf)
                emb_params += list(pf.parameters())
    return emb_params


def _textbook_layers(torch):
    """The cross network layer by layer (the reference layers are already the plain formulations the
    CPU kernels replace; same maths)."""
    from ctrkit.models import layers

    def cross(self, x0):
        x = x0
        for w, b in zip(self.weight, self.bias):
            x = x0 * (x @ w).unsqueeze(1) + b + x
        return x

    layers.CrossNet.forward = cross


def _layer_kernels(model, variant: str):
    """The CPU kernels as `fit` switches them in; compile: none (the reference traces as one graph);
    textbook: only the MLP's (`cpublas`), as before the kernels moved out of the models."""
    from ctrkit.kernels import cpu, for_device
    from ctrkit.models import layers

    if variant == "textbook":
        for m in model.modules():
            if type(m) is layers.MLP:
                m.__class__ = cpu.CpuMLP
    elif not variant.startswith("compile"):
        for_device(model, "cpu")
    return model


def _optimizer(torch, model, cfg, emb_params=None):
    from ctrkit.training.optim import make_optimizer
    peer = cfg.peers[0]
    if emb_params is None:
        return make_optimizer(model, peer)
    ids = {id(p) for p in emb_params}
    net = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.Adam([{"params": emb_params, "weight_decay": peer.embedding_regularizer},
                             {"params": net, "weight_decay": peer.net_regularizer}], lr=peer.lr)


def run_one(spec, model_spec, torch, data):
    from ctrkit.training.config import RunConfig
    from ctrkit.core.utils import tune_cpu_allocator

    variant = spec.get("variant", "fp32")
    if not variant.endswith("default_malloc"):
        tune_cpu_allocator()  # what fit/mutual_fit do on CPU (once per process; workers are fresh)
    amp = "bf16" if variant in BF16_VARIANTS else "off"
    fm = data["feature_map"]
    sizes = [int(f["vocab_size"]) for f in fm["fields"]]
    cfg = RunConfig.single(dict(epochs=1, batch_size=int(spec["batch_size"]), lr=1e-3,
                                embedding_regularizer=spec.get("embedding_regularizer", 1e-5),
                                net_regularizer=0.0, amp=amp, device="cpu", seed=int(spec.get("seed", 2021)),
                                progress=False))
    if spec["mode"] == "auc":
        return _auc(spec, model_spec, sizes, cfg)
    if spec["mode"] == "mutual":
        return _mutual_scaling(spec, model_spec, torch, sizes, cfg)
    return _timed_steps(spec, model_spec, torch, data, sizes, cfg)


def _auc(spec, model_spec, sizes, cfg):
    """`ctrkit.training.loop.fit` itself, 1 epoch on the prepared directory."""
    from ctrkit import data as cdata, models
    from ctrkit.training.loop import fit
    from ctrkit.core.utils import seed_everything

    seed_everything(cfg.seed)
    model = models.build(model_spec["model"], sizes, **model_spec["hparams"])
    d = cdata.load(spec["data"])
    # fit validates every epoch: a small valid split keeps that cheap (1 epoch: nothing to select)
    d = _Subset(d, int(spec.get("train_rows") or d.rows["train"]), spec.get("test_rows"),
                valid_rows=spec.get("valid_rows", 10_000))
    t0 = time.perf_counter()
    res = fit(model, d, cfg.replace(peers=(cfg.peers[0].replace(monitor="AUC"),)))
    return {"test_auc": res["test_auc"], "test_logloss": res["test_logloss"],
            "valid_auc": res["valid_auc"], "fit_samples_per_s": res["samples_per_s"],
            "seconds": time.perf_counter() - t0, "train_rows": d.rows["train"], "params": res["params"]}


def _timed_steps(spec, model_spec, torch, data, sizes, cfg):
    """fit's inner step on the worker's training arrays, timed by `_common.time_steps`."""
    import torch.nn.functional as F
    from torch import nn
    from ctrkit import models
    from ctrkit.training.precision import amp_context

    variant = spec.get("variant", "fp32")
    torch.manual_seed(cfg.seed)
    if variant == "textbook":
        _textbook_layers(torch)
    model = _layer_kernels(models.build(model_spec["model"], sizes, **model_spec["hparams"]), variant)
    if variant == "textbook":
        for m in model.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
    emb_params = _per_field_embeddings(torch, model) if variant == "perfield" else None
    model.train()
    opt = _optimizer(torch, model, cfg, emb_params)
    if variant == "unfused_adam":
        opt = torch.optim.Adam(opt.param_groups, lr=cfg.peers[0].lr, fused=False, foreach=False)
    params = [p for p in model.parameters() if p.requires_grad]
    fwd = torch.compile(model) if variant.startswith("compile") else model
    amp_dtype = torch.bfloat16 if variant in BF16_VARIANTS else None
    Xtr, ytr = (torch.from_numpy(a) for a in data["train"])
    it = _common.batch_indices(torch, Xtr.shape[0], cfg.batch_size, cfg.seed)
    loss_sum = torch.zeros((), dtype=torch.float64)

    def next_batch():
        idx = next(it)
        return Xtr.index_select(0, idx), ytr.index_select(0, idx)

    def step(batch):
        nonlocal loss_sum
        xb, yb = batch
        with amp_context("cpu", amp_dtype):
            logits = fwd(xb)
        loss = F.binary_cross_entropy_with_logits(logits.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, cfg.peers[0].clip_grad_norm)
        opt.step()
        loss_sum += loss.detach()

    t_compile = None
    if variant.startswith("compile"):
        t0 = time.perf_counter()
        step(next_batch())  # first call compiles; timed separately (compile cost vs gain)
        t_compile = time.perf_counter() - t0
    out = _common.time_steps(step, next_batch, spec)
    out["params"] = sum(p.numel() for p in model.parameters())
    out["final_loss"] = float(loss_sum)
    if t_compile is not None:
        out["compile_seconds"] = t_compile
    return out


def _mutual_scaling(spec, model_spec, torch, sizes, cfg):
    """Epoch seconds of `ctrkit.training.mutual.mutual_fit` with N = 1..max peers of the same model (N = 1 is
    mode "alone": the same code path training one model), 1 epoch each, same rows and batches.
    An epoch's seconds come from mutual_fit's history (training + validation of every peer; the
    validation split is cut small so the training dominates)."""
    from ctrkit import data as cdata, models
    from ctrkit.training.config import RunConfig
    from ctrkit.training.mutual import mutual_fit
    from ctrkit.core.utils import seed_everything

    d = _Subset(cdata.load(spec["data"]), int(spec["train_rows"]), spec.get("test_rows"),
                valid_rows=spec.get("valid_rows"))
    out = {"train_rows": d.rows["train"], "epoch_seconds": {}, "valid_auc": {}}
    for n in spec["n_peers"]:
        peers = []
        for k in range(n):
            seed_everything(cfg.seed + k)
            peers.append(models.build(model_spec["model"], sizes, **model_spec["hparams"]))
        mcfg = RunConfig(mode="mutual" if n > 1 else "alone", epochs=1, batch_size=cfg.batch_size,
                         seed=cfg.seed, device="cpu", amp=cfg.amp, progress=False,
                         peers=(cfg.peers[0],) * n)
        res = mutual_fit(peers, d, mcfg)
        out["epoch_seconds"][str(n)] = res["history"][0]["seconds"]
        out["valid_auc"][str(n)] = [p["valid_auc"] for p in res["peers"]]
    return out


class _Subset:
    """A CTRData view with the first `train_rows` training rows (and `test_rows` test rows):
    `fit` reads only `.tensors`, `.field_sizes`, `.fingerprint`, `.dataset`."""

    def __init__(self, d, train_rows: int, test_rows: int | None, valid_rows: int | None = None):
        self._d, self._n, self._nt, self._nv = d, train_rows, test_rows, valid_rows
        self.field_sizes, self.fingerprint, self.dataset, self.path = d.field_sizes, d.fingerprint, d.dataset, d.path
        self.rows = {**d.rows, "train": min(train_rows, d.rows["train"])}

    def tensors(self, split, device="cpu"):
        X, y = self._d.tensors(split, device)
        n = {"train": self._n, "test": self._nt, "valid": self._nv}[split]
        return (X[:n], y[:n]) if n is not None else (X, y)


if __name__ == "__main__":
    _common.run_worker(_common.parse_spec(), run_one)
