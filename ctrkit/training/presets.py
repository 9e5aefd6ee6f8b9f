"""Model + training presets as data (``ctrkit/training/presets.json``) and the BARS published numbers
(``ctrkit/training/bars.json``).

``get(model, preset, dataset=None, protocol=None) -> Preset`` with ``.model`` (hyperparameters for
``ctrkit.models.build``) and ``.train`` (TrainConfig fields: batch_size, lr, embedding_regularizer,
net_regularizer, epochs, patience, monitor; ``full`` also lr_decay). Presets: ``smoke`` (tiny, tests),
``quick`` (2-core CPU), ``full`` (full-size BARS-like defaults for any dataset), ``bars`` (the BARS winning
configuration; needs dataset + protocol).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from ctrkit.models import MODELS, canonical_name
from ctrkit.core.utils import CtrkitError, did_you_mean

DATASETS = ("criteo", "avazu")          # BARS presets for every protocol of PROTOCOLS
PROTOCOLS = ("x1", "x4_001", "x4_002")
SMALL_DATASETS = ("frappe", "movielens")  # BARS Frappe_x1 / MovielensLatest_x1: protocol x1 only
TRAIN_KEYS = ("batch_size", "lr", "embedding_regularizer", "net_regularizer", "epochs", "patience", "monitor")


@dataclass(frozen=True)
class Preset:
    name: str
    model_name: str
    model: dict
    train: dict
    dataset: str | None = None
    protocol: str | None = None
    source: dict = field(default_factory=dict)  # bars: source file, BARS model_id and seed


@lru_cache(maxsize=None)
def _load(filename: str) -> dict:
    return json.loads(resources.files("ctrkit.training").joinpath(filename).read_text())


def names() -> list[str]:
    return ["smoke", "quick", "bars", "full"]


def _split(dataset: str | None, protocol: str | None) -> tuple[str, str]:
    if dataset is not None and protocol is None and "_" in dataset:  # accept "criteo_x4_001"
        dataset, protocol = dataset.split("_", 1)
    if dataset == "movielenslatest":  # BARS's name
        dataset = "movielens"
    if dataset is None or protocol is None:
        raise CtrkitError(f"preset 'bars' needs dataset (one of {', '.join(DATASETS + SMALL_DATASETS)}) and "
                          f"protocol (one of {', '.join(PROTOCOLS)})")
    if dataset not in DATASETS + SMALL_DATASETS:
        raise CtrkitError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS + SMALL_DATASETS)}")
    valid = PROTOCOLS if dataset in DATASETS else ("x1",)
    if protocol not in valid:
        raise CtrkitError(f"unknown protocol {protocol!r} for {dataset}; valid: {', '.join(valid)}")
    return dataset, protocol


def _check_covered(data: dict, preset: str, name: str) -> None:
    """A model registered in `ctrkit.models.MODELS` by the user has no preset (the table is the
    package's data): one line saying which models have one and how such a model trains instead,
    not a KeyError from inside the table. Everything that trains by model name (`runs`,
    `experiments`, the CLI, the widget) starts from a preset, and `overrides`/`--set` only change
    keys of one. Two routes are left: the loop with your own settings, or your own pretraining into
    the checkpoint layout, after which finetuning runs (init="pretrained") take the checkpoint's
    architecture and settings and need no preset."""
    if name in data[preset]:
        return
    raise CtrkitError(f"no {preset!r} preset for model {name!r} (presets exist for: {', '.join(data[preset])}): "
                      f"runs from scratch by model name (experiments, runs, the CLI) start from a preset; train "
                      f"{name} yourself with loop.fit(models.build({name!r}, data.field_sizes, **hparams), data, "
                      f"train, out_dir=<ckpt_dir>/seed<S>/{name}) and finetune it with init='pretrained', or "
                      f"call mutual.mutual_fit([...], data, RunConfig(...)) (docs: Your own model)")


def get(model: str, preset: str, dataset: str | None = None, protocol: str | None = None) -> Preset:
    """The `preset` for `model`. smoke/quick/full ignore dataset/protocol; bars requires them."""
    name = canonical_name(model)
    if preset not in names():
        raise CtrkitError(f"unknown preset {preset!r}; valid: {', '.join(names())}{did_you_mean(preset, names())}")
    data = _load("presets.json")
    _check_covered(data, preset, name)
    if preset != "bars":
        entry, source = data[preset][name], {}
    else:
        dataset, protocol = _split(dataset, protocol)
        entry = data["bars"][name].get(f"{dataset}_{protocol}")
        if entry is None:
            have = [m for m in data["bars"] if f"{dataset}_{protocol}" in data["bars"][m]]
            raise CtrkitError(f"no BARS preset for {name} on {dataset}_{protocol}; it has: {', '.join(have)}")
        source = {k: entry[k] for k in ("source", "model_id", "seed")}
    # deep copies: callers may edit their preset without changing the cached table
    return Preset(name=preset, model_name=name, model=copy.deepcopy(entry["model"]),
                  train=copy.deepcopy(entry["train"]), dataset=dataset, protocol=protocol, source=source)


def bars_results(model: str | None = None, dataset: str | None = None,
                 protocol: str | None = None) -> list[dict]:
    """BARS leaderboard rows for our models (keys model, dataset, protocol, auc, logloss, bars_name,
    running_steps, paper), optionally filtered. Source: ``bars.json`` 'source'."""
    rows = _load("bars.json")["results"]
    if model is not None:
        model = canonical_name(model)
    for name, value in (("dataset", dataset), ("protocol", protocol)):
        known = sorted({r[name] for r in rows})
        if value is not None and value not in known:  # a typo would read as "no leaderboard row"
            raise CtrkitError(f"bars_results: unknown {name} {value!r}; the leaderboard has {', '.join(known)}")
    return [dict(r) for r in rows
            if (model is None or r["model"] == model) and (dataset is None or r["dataset"] == dataset)
            and (protocol is None or r["protocol"] == protocol)]


def bars_source() -> str:
    return _load("bars.json")["source"]


__all__ = ["Preset", "get", "names", "bars_results", "bars_source", "DATASETS", "SMALL_DATASETS", "PROTOCOLS",
           "TRAIN_KEYS", "MODELS"]
