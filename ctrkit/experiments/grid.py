"""Experiment grids: seeds x peer sets x init x mode (x weight x finetuning lr) -> `runs.RunSpec`s
-> `runs.execute` -> one results-store record per peer per run.

Notebook API (each returns a tidy DataFrame, one row per peer per run):

    experiments.pretrain_baselines(data, ["DeepFM", "DCN"], ckpt_dir, preset=..., seeds=[...], store=...)
    experiments.run(data, [["DeepFM", "DCN"], ...], inits=[...], modes=[...], seeds=[...], store=...,
                    ckpt_dir=..., weight=[0.3, 1, 3], finetune_lr_scale=[0.1, 1])

`peer_sets` is a list of peer sets (a flat list of names is refused with a hint); every other axis
(inits, modes, seeds, weight, divergence, finetune_lr_scale) a list or one value, never an empty list.
The remaining keywords are settings: a `PretrainSpec` field (baselines) or a `RunSpec` field (runs),
checked there (an unknown one is an error), so a new knob needs no change here.

Checkpoints of the baselines live in `ckpt_dir/seed<S>/<Model>` (one `pretrain --out` folder per
model, what `ctrkit mutual --ckpt-dir ckpt_dir/seed<S>` expects); a repeated model's k-th copy is
`<Model>_<k>` with init seed S+k-1. A run already in the store (same run key: every setting of its
RunSpec and the data) is skipped unless `force`.
"""
from __future__ import annotations

import itertools
import numbers
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Sequence

import pandas as pd
from tqdm.auto import tqdm

from ctrkit.core.utils import CtrkitError
from ctrkit.experiments import runs
from ctrkit.experiments.runs import PretrainSpec, RunSpec, seed_dir
from ctrkit.experiments.store import records_to_frame
from ctrkit.experiments.workers import check_workers
from ctrkit.training.config import weight_matters
from ctrkit.training.losses import check_divergence

__all__ = ["pretrain_baselines", "run", "run_one", "expand", "seed_dir"]

# The divergence a run where nobody learns from anyone (alone, ensemble) records: RunSpec's default,
# the one every such run has been keyed with unless a caller passed another (see `expand`).
_MOOT_DIVERGENCE = RunSpec.__dataclass_fields__["divergence"].default


def pretrain_baselines(data, models: Sequence[str], ckpt_dir: str | Path, *, seeds: Iterable[int] = (2021,),
                       store=None, force: bool = False, progress: bool = True, **settings) -> pd.DataFrame:
    """Pretrain each model (or label, e.g. "DeepFM_2") per seed into `ckpt_dir/seed<S>/<label>` with
    `runs.pretrain`, recorded in the store as mode "baseline" (a finished checkpoint of the same
    settings is reused, an interrupted one resumed, unless `force`). `settings`: `PretrainSpec`
    fields (preset, epochs, overrides, device, threads, amp). A model's seeds train together as
    replicas (`runs.pretrain_many`, at most `max_replicas` (a keyword; default: 8 on a GPU, 1 on the
    CPU) per step; 1: one by one, bit for bit as before); the records are the same within `ctrkit.training.replicas`'s tolerance.
    `workers` (a keyword; default 1): processes the (label, seeds) groups are spread over
    (`ctrkit.experiments.workers`; "auto": the CPU's cores / `threads`, 1 on CUDA). `per_model` (a keyword):
    label -> overrides that replace `overrides` for that label (e.g. each model's tuned setting), so
    that all models train in one grid: with workers, one call keeps both cores busy to its end,
    where a call per model waits for each model's last seed."""
    seeds, labels = _values("seeds", seeds), _values("models", models)
    if not isinstance(ckpt_dir, (str, os.PathLike)):
        raise CtrkitError(f"ckpt_dir: expected the folder the baselines go into (seed<S>/<Model>), got {ckpt_dir!r}")
    max_replicas = (runs.check_max_replicas(settings.pop("max_replicas", None))
                    or runs.default_max_replicas(settings.get("device", "auto")))
    workers = check_workers(settings.pop("workers", 1))  # a bad value fails before any run
    per_model = dict(settings.pop("per_model", None) or {})
    if set(per_model) - set(labels):
        raise CtrkitError(f"per_model names {sorted(set(per_model) - set(labels))}, which are not among the models "
                          f"{labels}")
    spec = lambda label, seed: PretrainSpec.from_dict({  # noqa: E731
        **settings, **({"overrides": per_model[label]} if label in per_model else {}), "model": label, "seed": seed,
        "progress": False})
    # one label's seeds train together as replicas
    groups = [g for label in labels for g in _chunks([spec(label, seed) for seed in seeds], max_replicas)]
    bar = tqdm(total=len(seeds) * len(labels), desc="baselines", disable=not progress)
    done = runs.pretrain_groups(groups, data, out_dirs=[[seed_dir(ckpt_dir, s.seed) / s.label for s in g] for g in groups],
                                store=store, force=force, workers=workers,
                                progress=lambda k: bar.update(len(groups[k])))
    bar.close()
    recs = {(s.seed, s.model): rec for g, out in zip(groups, done) for s, (_, rec) in zip(g, out)}
    recs = [recs[(seed, label)] for seed, label in itertools.product(seeds, labels)]
    return records_to_frame(recs)


def _chunks(items: list, n: int) -> list[list]:
    return [items[i:i + max(1, n)] for i in range(0, len(items), max(1, n))]


def _values(name: str, v) -> list:
    """A grid axis as a list: one value (a string, a number) is a list of one, so `modes="alone"` is
    not read letter by letter; an empty list runs nothing, which is a slip, not a request."""
    values = [v] if isinstance(v, (str, bytes, numbers.Number)) or not isinstance(v, Iterable) else list(v)
    if not values:
        raise CtrkitError(f"{name}: an empty list runs nothing; give at least one value")
    return values


def _peer_sets(peer_sets) -> list:
    """`peer_sets` as a list of peer sets (each a list of names or a string "DeepFM,DCN"). A flat
    list of bare names, `["LR", "FM"]`, would be one one-peer run per name (each model alone) where
    one run of these peers was almost surely meant: an error that says how to write either."""
    sets = _values("peer_sets", peer_sets)
    if all(isinstance(p, str) and "," not in p for p in sets):
        raise CtrkitError(f"peer_sets: expected a list of peer sets, got a flat list of model names {sets}: "
                          f"write {[sets]} for one run of these peers" + (
                              f" (or {[[p] for p in sets]} for one run per model)" if len(sets) > 1 else ""))
    return sets


def expand(peer_sets, *, inits=("pretrained",), modes=("mutual",), seeds=(2021,), weight=1.0,
           finetune_lr_scale=0.1, divergence=_MOOT_DIVERGENCE) -> list[dict]:
    """The grid as a list of run settings. `peer_sets` is a list of peer sets (`[["DeepFM", "DCN"]]`);
    every other axis a list or one value. `ensemble` from scratch is left out (averaging untrained
    models means nothing); so are the weights and divergences of runs where nobody learns (alone,
    ensemble) beyond the first. Such a run takes the default divergence (mse) whatever `divergence`
    says: it does not use one, and so one alone control serves every divergence of the grid and of
    later grids (its run key is the one it always had), as one serves every weight."""
    out, seen = [], set()
    axes = [_values(name, v) for name, v in (("seeds", seeds), ("inits", inits), ("modes", modes),
                                             ("weight", weight), ("divergence", divergence),
                                             ("finetune_lr_scale", finetune_lr_scale))]
    for div in axes[4]:
        check_divergence(div)  # a typo fails even where only the alone runs would have carried it
    for seed, peers, init, mode, w, div, lr in itertools.product(axes[0], _peer_sets(peer_sets), *axes[1:]):
        if mode == "ensemble" and init == "scratch":
            continue
        learns = weight_matters(mode)
        key = (seed, tuple(runs.peer_labels(_peer_list(peers))), init, mode, w if learns else 0.0,
               div if learns else _MOOT_DIVERGENCE, lr if init == "pretrained" or mode == "kd" else None)
        if key in seen:
            continue
        seen.add(key)
        out.append({"seed": seed, "peers": list(key[1]), "init": init, "mode": mode, "weight": w,
                    "divergence": key[5], "finetune_lr_scale": lr})
    return out


def _peer_list(peers) -> list[str]:
    if isinstance(peers, str):
        peers = peers.split(",")
    names = [p.strip() for p in peers if p.strip()]
    if not names:
        raise CtrkitError("empty peer set")
    return names


def run_one(data, peers, *, store=None, force: bool = False, out_dir: str | Path | None = None, callback=None,
            stop=None, **settings) -> tuple[list[dict], bool]:
    """One run through `runs.execute`: (records, skipped). `settings`: `RunSpec` fields (init, mode,
    seed, ckpt_dir, preset, epochs, weight, ...)."""
    spec = RunSpec.from_dict({**settings, "peers": tuple(_peer_list(peers))})
    return runs.execute(spec, data, store=store, out_dir=out_dir, force=force, callback=callback, stop=stop)


def run(data, peer_sets, *, inits=("pretrained",), modes=("mutual",), seeds=(2021,), store=None, force: bool = False,
        **settings) -> pd.DataFrame:
    """Every run of the grid (see `expand`; `weight`, `divergence` and `finetune_lr_scale` may be lists), each
    recorded as it finishes; every spec is validated and the checkpoints a pretrained/kd run needs
    are checked for all runs before the first one starts. `settings`: `RunSpec` fields for every run
    (`ckpt_dir` is the folder of the `seed<S>` folders; `overrides`: train-config keys for every peer
    of every run, e.g. the baselines' patience for runs from scratch); `progress` shows the runs' bar.
    Runs that differ only in seed, weight and finetuning lr scale train together as replicas
    (`runs.execute_many`, at most `max_replicas` per step; default: 8 on a GPU, 1 on the CPU, where
    replicas measured slower; 1: one by one, bit for bit as before). `workers` (default 1): processes
    the runs (their replica groups) are spread over, each run's result the one it gives alone
    (`ctrkit.experiments.workers`; "auto": the CPU's cores / `threads`, 1 on CUDA)."""
    progress, max_replicas = settings.pop("progress", True), runs.check_max_replicas(settings.pop("max_replicas", None))
    workers = check_workers(settings.pop("workers", 1))  # a bad value fails before any run
    weight, lr_scale = settings.pop("weight", 1.0), settings.pop("finetune_lr_scale", 0.1)
    divergence, ckpt_dir = settings.pop("divergence", _MOOT_DIVERGENCE), settings.pop("ckpt_dir", None)
    specs = []
    for s in expand(peer_sets, inits=inits, modes=modes, seeds=seeds, weight=weight, finetune_lr_scale=lr_scale,
                    divergence=divergence):
        ck = seed_dir(ckpt_dir, s["seed"]) if ckpt_dir is not None else None
        spec = RunSpec.from_dict({**settings, **s, "peers": tuple(s["peers"]), "ckpt_dir": ck, "progress": False})
        for label, use in zip(spec.peers, spec.from_checkpoint):
            path = runs.checkpoint_path(ck, label) if use else None
            if path is not None and not path.is_file():
                raise CtrkitError(f"missing checkpoint {path}: pretrain it first (experiments.pretrain_baselines("
                                  f"data, [{label!r}], {str(ckpt_dir)!r}, seeds=[{s['seed']}], "
                                  f"preset={spec.preset!r}))")
        specs.append(spec)
    bar = tqdm(total=len(specs), desc="runs", disable=not progress)

    def show(todo: list[int]) -> None:
        spec = specs[todo[0]]
        bar.set_postfix_str(f"{'+'.join(spec.peers)} {spec.init} {spec.mode} x{len(todo)}")

    recs, _ = runs.execute_many(specs, data, store=store, force=force, max_replicas=max_replicas,
                                progress=lambda todo: (show(todo), bar.update(len(todo))), workers=workers)
    bar.close()
    return records_to_frame([r for run_recs in recs for r in run_recs])
