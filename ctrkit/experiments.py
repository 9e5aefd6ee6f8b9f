"""Experiment grids: seeds x peer sets x init x mode -> runs -> one results-store record per peer.

Notebook API (each returns a tidy DataFrame, one row per peer per run):

    experiments.pretrain_baselines(data, ["DeepFM", "DCN"], ckpt_dir, preset, seeds, store)
    experiments.run(data, [["DeepFM", "DCN"], ...], inits, modes, seeds, store, ckpt_dir, preset, epochs, device, weight)

Checkpoints of the baselines live in `ckpt_dir/seed<S>/<Model>` (one `pretrain --out` folder per
model, what `ctrkit mutual --ckpt-dir ckpt_dir/seed<S>` expects); a repeated model's k-th copy is
`<Model>_<k>` with init seed S+k-1. A run already in the store (same run key: data fingerprint,
peers, init, mode, seed, weight, divergence, warm-up, preset, epochs, finetune settings) is skipped
unless `force`.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from ctrkit import mutual, presets
from ctrkit.models import build, canonical_name
from ctrkit.store import ResultsStore, records_to_frame
from ctrkit.train import TrainConfig, fit
from ctrkit.utils import CtrkitError, resolve_device, seed_everything, write_json_atomic

__all__ = ["pretrain_baselines", "run", "run_one", "expand", "run_key", "seed_dir", "summary"]


def seed_dir(ckpt_dir: str | Path, seed: int) -> Path:
    """Where the baselines of one seed live: pass it as `ctrkit mutual --ckpt-dir`."""
    return Path(ckpt_dir) / f"seed{seed}"


def run_key(**fields) -> str:
    """Stable id of a run's settings (sorted JSON -> sha1), the store's skip-if-done key."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _store(store) -> ResultsStore | None:
    if store is None or isinstance(store, ResultsStore):
        return store
    return ResultsStore(store)


def _peer_list(peers) -> list[str]:
    if isinstance(peers, str):
        peers = peers.split(",")
    names = [canonical_name(p.strip()) for p in peers if p.strip()]
    if not names:
        raise CtrkitError("empty peer set")
    return names


def _split_label(label: str) -> tuple[str, int]:
    """"DeepFM_2" -> ("DeepFM", 2); "DeepFM" -> ("DeepFM", 1)."""
    name, _, k = label.rpartition("_")
    if name and k.isdigit():
        return canonical_name(name), int(k)
    return canonical_name(label), 1


# ---------------------------------------------------------------- baselines


def pretrain_baselines(data, models: Sequence[str], ckpt_dir: str | Path, preset: str = "quick",
                       seeds: Iterable[int] = (2021,), store=None, epochs: int | None = None,
                       device: str = "auto", force: bool = False, progress: bool = True) -> pd.DataFrame:
    """Pretrain each model (or label, e.g. "DeepFM_2") per seed into `ckpt_dir/seed<S>/<label>` with
    `ctrkit.train.fit`, and record it in the store as mode "baseline". A finished checkpoint of
    the same dataset and settings is reused (not retrained), an interrupted one resumed, unless `force`."""
    store = _store(store)
    labels = [_split_label(m) for m in models]
    labels = [(name, k, name if k == 1 else f"{name}_{k}") for name, k in labels]
    dev = str(resolve_device(device))
    jobs = list(itertools.product(list(seeds), labels))
    records = []
    for seed, (name, k, label) in tqdm(jobs, desc="baselines", disable=not progress):
        p = presets.get(name, preset, data.dataset, data.protocol)
        cfg = TrainConfig.from_dict({**p.train, "seed": seed, "device": dev, "progress": False,
                                     **({"epochs": epochs} if epochs is not None else {})})
        key = run_key(kind="baseline", fingerprint=data.fingerprint, peer=label, seed=seed, preset=preset,
                      epochs=cfg.epochs, model=p.model, train=p.train)
        out = seed_dir(ckpt_dir, seed) / label
        done = out / "result.json"
        result = None
        if done.is_file() and not force:
            old = json.loads(done.read_text())
            if old.get("fingerprint") == data.fingerprint and old.get("run_key") == key:
                result = old
        if result is None:
            seed_everything(seed + k - 1)  # the init seed; fit reseeds for the batch order
            model = build(name, data.field_sizes, **p.model)
            # a fit killed midway continues from its last.pt (same settings) instead of starting over
            result = fit(model, data, cfg, out_dir=out, resume=not force)
            result["run_key"] = key
            # fit wrote result.json already; add our key so a re-run can reuse the checkpoint
            write_json_atomic(done, result)
        rec = dict(run_key=key, dataset=data.dataset, protocol=data.protocol, fingerprint=data.fingerprint,
                   mode="baseline", init=None, seed=seed, peer_seed=seed + k - 1, n_peers=1, peer_index=0,
                   peer=label, model=name, peers=label, partners=[], weight=None, divergence=None,
                   preset=preset, epochs=result["epochs"], valid_auc=result["valid_auc"],
                   valid_logloss=result["valid_logloss"], test_auc=result["test_auc"],
                   test_logloss=result["test_logloss"], pretrained_test_auc=None, partners_pretrained_auc=[],
                   ensemble_test_auc=None, ensemble_test_logloss=None, best_epoch=result.get("best_epoch"),
                   seconds=result["seconds"], checkpoint=str(out / "best.pt"),
                   config={"model": p.model, "train": cfg.to_dict()}, env_info=result.get("env"))
        if store is not None and (force or not store.has_run(key)):
            store.append([rec])
        records.append(rec)
    return records_to_frame(records)


# ---------------------------------------------------------------- mutual runs


def expand(peer_sets, inits=("pretrained",), modes=("mutual",), seeds=(2021,)) -> list[dict]:
    """The grid as a list of run specs (seed, peers, init, mode). `ensemble` from scratch is left
    out: averaging untrained models means nothing."""
    specs = []
    for seed, peers, init, mode in itertools.product(seeds, peer_sets, inits, modes):
        if mode == "ensemble" and init == "scratch":
            continue
        specs.append({"seed": seed, "peers": _peer_list(peers), "init": init, "mode": mode})
    return specs


def _records(result: dict, key: str, config: dict) -> list[dict]:
    """One record per peer of a finished run."""
    labels = result["labels"]
    peers = result["peers"]
    recs = []
    for k, p in enumerate(peers):
        partners = [j for j in range(len(peers)) if j != k]
        recs.append(dict(
            run_key=key, dataset=result["dataset"], protocol=result.get("protocol"),
            fingerprint=result["fingerprint"], mode=result["mode"], init=result["init"], seed=result["seed"],
            peer_seed=p["seed"], n_peers=len(peers), peer_index=k, peer=labels[k], model=p["model"],
            peers="+".join(labels), partners=[labels[j] for j in partners], weight=result["weight"],
            divergence=result["divergence"], warmup_steps=result["config"]["warmup_steps"],
            preset=result["preset"], epochs=result["epochs"], trained=p["trained"],
            valid_auc=p["valid_auc"], valid_logloss=p["valid_logloss"],
            test_auc=p["test_auc"], test_logloss=p["test_logloss"], best_epoch=p["best_epoch"],
            pretrained_valid_auc=p["pretrained_valid_auc"], pretrained_test_auc=p["pretrained_test_auc"],
            partners_pretrained_auc=[peers[j]["pretrained_test_auc"] for j in partners],
            ensemble_valid_auc=result["ensemble"]["valid_auc"], ensemble_test_auc=result["ensemble"]["test_auc"],
            ensemble_test_logloss=result["ensemble"]["test_logloss"], seconds=result["seconds"],
            config={**config, "train": p["train_config"], "hparams": p["hparams"]}, env_info=result["env"]))
    return recs


def summary(records: Sequence[dict]) -> dict:
    """The `ctrkit mutual --json` object from a run's records."""
    r0 = records[0]
    return {"init": r0["init"], "mode": r0["mode"], "seconds": r0["seconds"],
            "ensemble_test_auc": r0["ensemble_test_auc"], "run_key": r0["run_key"],
            "peers": [{"model": r["model"], "label": r["peer"], "seed": r["peer_seed"],
                       "pretrained_test_auc": r["pretrained_test_auc"], "valid_auc": r["valid_auc"],
                       "test_auc": r["test_auc"], "test_logloss": r["test_logloss"]} for r in records]}


def run_one(data, peers, init: str = "scratch", mode: str = "mutual", seed: int = 2021, store=None,
            ckpt_dir: str | Path | None = None, preset: str = "quick", epochs: int | None = None,
            device: str = "auto", weight: float = 1.0, divergence: str = "mse", warmup_steps: int = 0,
            finetune_lr_scale: float = 0.1, finetune_epochs: int = 2, force: bool = False,
            progress: bool = True, out_dir: str | Path | None = None, callback=None) -> tuple[list[dict], bool]:
    """One run, recorded in `store` (if given) in one append. Returns (records, skipped): a run
    already in the store is not re-run (its stored records come back) unless `force`. With
    `out_dir`, a run killed midway resumes from `out_dir/last.pt` (unless `force`). `callback(row)`
    gets every epoch's history row (live plots)."""
    store = _store(store)
    names = _peer_list(peers)
    config = dict(peers=mutual.peer_labels(names), init=init, mode=mode, seed=seed, preset=preset, epochs=epochs,
                  weight=0.0 if mode == "alone" else weight, divergence=divergence, warmup_steps=warmup_steps,
                  finetune_lr_scale=finetune_lr_scale if init == "pretrained" or mode == "kd" else None,
                  finetune_epochs=finetune_epochs if init == "pretrained" else None,
                  ckpt_dir=str(Path(ckpt_dir).resolve()) if ckpt_dir is not None and (init == "pretrained" or mode == "kd") else None)
    key = run_key(fingerprint=data.fingerprint, **config)
    if store is not None and not force:
        done = [r for r in store.records() if r.get("run_key") == key]
        if done:
            return sorted(done, key=lambda r: r["peer_index"]), True
    result = mutual.run_mutual(data, names, init=init, mode=mode, ckpt_dir=ckpt_dir, preset=preset, epochs=epochs,
                               weight=weight, divergence=divergence, warmup_steps=warmup_steps, seed=seed,
                               device=device, finetune_lr_scale=finetune_lr_scale, finetune_epochs=finetune_epochs,
                               progress=progress, out_dir=out_dir, resume=out_dir is not None and not force,
                               callback=callback)
    recs = _records(result, key, config)
    if store is not None:
        store.append(recs)
    return recs, False


def run(data, peer_sets, inits=("pretrained",), modes=("mutual",), seeds=(2021,), store=None,
        ckpt_dir: str | Path | None = None, preset: str = "quick", epochs: int | None = None,
        device: str = "auto", weight: float = 1.0, divergence: str = "mse", warmup_steps: int = 0,
        finetune_lr_scale: float = 0.1, finetune_epochs: int = 2, force: bool = False,
        progress: bool = True) -> pd.DataFrame:
    """Every run of the grid (see `expand`), each recorded as it finishes; the checkpoints a
    pretrained/kd run needs are checked for all runs before the first one starts."""
    specs = expand(peer_sets, inits, modes, seeds)
    for s in specs:
        if s["init"] == "pretrained" or s["mode"] == "kd":
            if ckpt_dir is None:
                raise CtrkitError(f"{s['init']}/{s['mode']} runs need ckpt_dir (see pretrain_baselines)")
            labels = mutual.peer_labels(s["peers"])
            need = labels if s["init"] == "pretrained" else labels[:1]
            for label in need:
                path = mutual.checkpoint_path(seed_dir(ckpt_dir, s["seed"]), label)
                if not path.is_file():
                    raise CtrkitError(f"missing checkpoint {path}: pretrain it first "
                                      f"(experiments.pretrain_baselines(data, [{label!r}], {str(ckpt_dir)!r}, seeds=[{s['seed']}]))")
    out = []
    bar = tqdm(specs, desc="runs", disable=not progress)
    for s in bar:
        bar.set_postfix_str(f"{'+'.join(s['peers'])} {s['init']} {s['mode']} seed {s['seed']}")
        recs, _ = run_one(data, s["peers"], init=s["init"], mode=s["mode"], seed=s["seed"], store=store,
                          ckpt_dir=seed_dir(ckpt_dir, s["seed"]) if ckpt_dir is not None else None, preset=preset,
                          epochs=epochs, device=device, weight=weight, divergence=divergence,
                          warmup_steps=warmup_steps, finetune_lr_scale=finetune_lr_scale,
                          finetune_epochs=finetune_epochs, force=force, progress=False)
        out.extend(recs)
    return records_to_frame(out)
