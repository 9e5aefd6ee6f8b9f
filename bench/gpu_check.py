"""GPU check (see gpu_check.sh): Criteo-scale synthetic tensors made on the device, one epoch of
each model at the BARS x4_001 sizes through `ctrkit.training.loop.fit`, one 4-peer epoch through
`ctrkit.training.mutual.mutual_fit`; prints a table (samples/s, epoch seconds, peak memory) and writes JSON.

The data never leaves the device: X int32 [rows, 39] with uniform random per-field indices below
x4_001-like vocabulary sizes, labels from a hidden logistic model of a few fields (so the loss
means something; the AUC is not the point). Valid/test are small (`--eval-rows`) so an epoch is
training time. `--budget-s` skips what would start after the budget (a half-measured table beats
a killed run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Criteo x4_001-like vocabulary sizes (13 bucketized integer fields, 26 categorical fields after
# min_categr_count=10; approximate, about 0.9M rows in all) -- the embedding table's size sets the
# cost of the optimizer step, so it should be Criteo-sized, not the small synthetic one.
X4_001_VOCAB = [49, 101, 126, 52, 224, 147, 119, 73, 218, 10, 36, 56, 101,
                1445, 553, 175781, 128509, 305, 19, 11930, 629, 3, 39530, 5130, 156655, 3175, 27,
                11042, 148912, 11, 4559, 2002, 4, 154563, 17, 16, 52989, 81, 40954]
MODELS = ["DeepFM", "DCN", "PNN", "FiBiNET"]


class DeviceData:
    """The part of CTRData that fit/mutual_fit read, over tensors already on the device."""

    def __init__(self, splits: dict, field_sizes: list[int]):
        self._splits, self.field_sizes = splits, field_sizes
        self.fingerprint, self.dataset, self.path = "gpu-check-synthetic", "criteo", Path("<device>")
        self.rows = {k: int(v[0].shape[0]) for k, v in splits.items()}
        self.feature_map = {"dataset": "criteo", "protocol": "x4_001",
                            "fields": [{"name": f"f{i}", "vocab_size": s} for i, s in enumerate(field_sizes)]}

    def tensors(self, split, device=None):
        return self._splits[split]


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="ctrkit GPU check: x4_001-size epochs on Criteo-scale device tensors")
    ap.add_argument("--rows", type=int, default=36_672_493, help="training rows (Criteo x4 train: 36,672,493)")
    ap.add_argument("--eval-rows", type=int, default=1_000_000, help="valid and test rows each")
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu (cpu: a dry run with tiny --rows)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the x4_001 preset's (10,000)")
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--mutual-peers", default="DeepFM,DeepFM,DeepFM,DeepFM",
                    help="peers of the mutual epoch (empty: skip)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start nothing new after this many seconds")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    ap.add_argument("--seed", type=int, default=2021)
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    import torch
    from ctrkit import models
    from ctrkit.training import presets
    from ctrkit.training.config import RunConfig
    from ctrkit.training.mutual import mutual_fit
    from ctrkit.training.loop import fit
    from ctrkit.core.utils import resolve_device, seed_everything
    from ctrkit.kernels import env_info

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (amp off) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    print(f"gpu_check: device {device}" + (f" ({torch.cuda.get_device_name(device)})" if cuda else "")
          + f", torch {torch.__version__}, rows {args.rows:,}", flush=True)

    t0 = time.perf_counter()
    data = make_data(torch, args.rows, args.eval_rows, device, args.seed)
    if cuda:
        torch.cuda.synchronize()
    data_s = time.perf_counter() - t0
    print(f"data: {args.rows:,} x {len(X4_001_VOCAB)} int32 on {device} in {data_s:.1f}s "
          f"(vocab {sum(X4_001_VOCAB):,}, CTR {float(data.tensors('train')[1].mean()):.3f})", flush=True)

    def peak_gb():
        return torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None

    rows = []
    interrupted = False  # the shell wrapper's timeout sends SIGINT: keep what was measured

    def over_budget(what):
        if interrupted:
            rows.append({"what": what, "status": "skipped: interrupted (time cap)"})
            return True
        spent = time.perf_counter() - t_start
        if spent > args.budget_s:
            rows.append({"what": what, "status": f"skipped: budget {args.budget_s:.0f}s spent ({spent:.0f}s)"})
            print(f"{what}: skipped (budget)", flush=True)
            return True
        return False

    for name in [m for m in args.models.split(",") if m]:
        if over_budget(name):
            continue
        p = presets.get(name, "bars", dataset="criteo", protocol="x4_001")
        bs = args.batch_size or int(p.train["batch_size"])
        cfg = RunConfig.single(dict(epochs=1, batch_size=bs, lr=p.train["lr"],
                                    embedding_regularizer=p.train["embedding_regularizer"],
                                    net_regularizer=p.train["net_regularizer"], monitor="AUC", amp=args.amp,
                                    device=str(device), seed=args.seed, progress=False, eval_batch_size=65536))
        seed_everything(args.seed)
        model = models.build(name, data.field_sizes, **p.model)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            res = fit(model, data, cfg)
            ep = res["history"][0]["seconds"]
            rows.append({"what": name, "status": "ok", "batch_size": bs, "amp": res["amp"],
                         "samples_per_s": res["samples_per_s"], "epoch_seconds": ep, "peak_gb": peak_gb(),
                         "params": res["params"], "valid_auc": res["valid_auc"], "hidden_units": p.model["hidden_units"]})
        except KeyboardInterrupt:
            interrupted = True
            rows.append({"what": name, "status": "interrupted (time cap)"})
        except Exception as e:  # noqa: BLE001  (an OOM is a result of the check)
            rows.append({"what": name, "status": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
        print(json.dumps(rows[-1]), flush=True)
        del model

    peers = [m for m in args.mutual_peers.split(",") if m]
    label = f"mutual x{len(peers)} ({'+'.join(sorted(set(peers)))})"
    if peers and not over_budget(label):
        built, tcfgs = [], []
        for k, name in enumerate(peers):
            p = presets.get(name, "bars", dataset="criteo", protocol="x4_001")
            seed_everything(args.seed + k)
            built.append(models.build(name, data.field_sizes, **p.model))
            tcfgs.append({"lr": p.train["lr"], "embedding_regularizer": p.train["embedding_regularizer"],
                          "net_regularizer": p.train["net_regularizer"], "monitor": "AUC"})
        bs = args.batch_size or 10000
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            res = mutual_fit(built, data, RunConfig(mode="mutual", epochs=1, batch_size=bs, seed=args.seed,
                                                    device=str(device), amp=args.amp, progress=False,
                                                    eval_batch_size=65536, peers=tuple(tcfgs)))
            ep = res["history"][0]["seconds"]
            rows.append({"what": label, "status": "ok", "batch_size": bs, "samples_per_s": args.rows / ep,
                         "epoch_seconds": ep, "peak_gb": peak_gb(),
                         "valid_auc": [q["valid_auc"] for q in res["peers"]]})
            single = next((r for r in rows if r["what"] == peers[0] and r.get("status") == "ok"), None)
            if single and len(set(peers)) == 1:
                rows[-1]["vs_single_epoch"] = ep / single["epoch_seconds"]
        except KeyboardInterrupt:
            rows.append({"what": label, "status": "interrupted (time cap)"})
        except Exception as e:  # noqa: BLE001
            rows.append({"what": label, "status": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
        print(json.dumps(rows[-1]), flush=True)

    total = time.perf_counter() - t_start
    print(f"\n| run | batch | samples/s | epoch s | peak GiB | status |\n|---|---:|---:|---:|---:|---|")
    for r in rows:
        sps = f"{r['samples_per_s']:,.0f}" if r.get("samples_per_s") else "—"
        ep = f"{r['epoch_seconds']:.1f}" if r.get("epoch_seconds") else "—"
        pk = f"{r['peak_gb']:.1f}" if r.get("peak_gb") is not None else "—"
        extra = f" ({r['vs_single_epoch']:.2f}x single)" if r.get("vs_single_epoch") else ""
        print(f"| {r['what']} | {r.get('batch_size', '—')} | {sps} | {ep}{extra} | {pk} | {r['status']} |")
    print(f"total {total:.0f}s (data {data_s:.0f}s)")

    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": args.rows,
              "eval_rows": args.eval_rows, "vocab": X4_001_VOCAB, "amp": args.amp, "data_seconds": data_s,
              "total_seconds": total, "results": rows, "env": env_info(device, args.seed),
              "command": "bash bench/gpu_check.sh " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "gpu" if cuda else "cpu-dryrun"
    path = out / f"{time.strftime('%Y-%m-%d')}-gpu-check-{kind}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path)
    print(f"wrote {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
