"""Model + training presets: the built-in models' as data (``ctrkit/training/presets.json``), a model of
your own's from its class's ``presets`` attribute (``CTRModel.presets``), and the BARS published numbers
(``ctrkit/training/bars.json``).

``get(model, preset, dataset=None, protocol=None) -> Preset`` with ``.model`` (hyperparameters for
``ctrkit.models.build``) and ``.train`` (TrainConfig fields: batch_size, lr, embedding_regularizer,
net_regularizer, epochs, patience, monitor; ``full`` also lr_decay). Presets: ``smoke`` (tiny, tests),
``quick`` (2-core CPU), ``full`` (full-size BARS-like defaults for any dataset), ``bars`` (the BARS winning
configuration; needs dataset + protocol; built-in models only).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from ctrkit.models import MODELS, canonical_name, hparam_defaults
from ctrkit.core.utils import CtrkitError, did_you_mean
from ctrkit.training.config import RunConfig

DATASETS = ("criteo", "avazu")          # BARS presets for every protocol of PROTOCOLS
PROTOCOLS = ("x1", "x4_001", "x4_002")
SMALL_DATASETS = ("frappe", "movielens")  # BARS Frappe_x1 / MovielensLatest_x1: protocol x1 only
# The presets a model of your own may declare: 'bars' is the BARS leaderboard's per-dataset table of the
# built-in models' published runs, which no other model has.
OWN_PRESETS = ("smoke", "quick", "full")
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


def _declared(cls: type, preset: str) -> Mapping | None:
    """`preset`'s entry in the class attribute `presets` of a model of your own (None: not declared),
    the whole attribute checked first, so a slip in any preset fails at its first read, whichever
    preset that asks for. Checked at every read (a few small dicts), so a class edited in a notebook
    is checked as it is now; each problem is one line naming the class, the preset and the key."""
    table = cls.presets
    if not isinstance(table, Mapping):
        raise CtrkitError(f"{cls.__name__}.presets: expected a dict {{preset: {{'model': {{...}}, 'train': {{...}}}}}}, "
                          f"got {type(table).__name__}")
    for name, entry in table.items():
        if name not in OWN_PRESETS:
            raise CtrkitError(f"{cls.__name__}.presets: unknown preset {name!r}; valid: {', '.join(OWN_PRESETS)} "
                              f"('bars' is the BARS leaderboard's table of the built-in models)"
                              f"{did_you_mean(name, OWN_PRESETS)}")
        _check_entry(cls, f"{cls.__name__}.presets[{name!r}]", entry)
    return table.get(preset)


def _check_entry(cls: type, at: str, entry) -> None:
    """One declared preset: exactly 'model' (hyperparameters `cls.__init__` takes) and 'train' (a train
    dict that `RunConfig.single` takes, as it will when the preset trains); `at` names it."""
    shape = "{'model': {hyperparameters}, 'train': {training settings}}"
    if not isinstance(entry, Mapping):
        raise CtrkitError(f"{at}: expected {shape}, got {type(entry).__name__}")
    missing = [k for k in ("model", "train") if k not in entry]
    extra = sorted(map(str, set(entry) - {"model", "train"}))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unknown key {extra[0]!r}"
        raise CtrkitError(f"{at}: {what}; expected {shape}")
    for key in ("model", "train"):
        if not isinstance(entry[key], Mapping):
            raise CtrkitError(f"{at}[{key!r}]: expected a dict, got {type(entry[key]).__name__}")
    valid = hparam_defaults(cls.name)
    unknown = sorted(map(str, set(entry["model"]) - set(valid)))
    if unknown:
        raise CtrkitError(f"{at}['model']: {cls.__name__}.__init__ takes no hyperparameter {unknown[0]!r}; "
                          f"valid: {', '.join(valid) or '(none)'}{did_you_mean(unknown[0], valid)}")
    try:  # the check a preset's train dict meets when it trains (keys and values), not a second list
        RunConfig.single(dict(entry["train"]))
    except CtrkitError as e:
        raise CtrkitError(f"{at}['train']: {e}") from None


def _check_covered(data: dict, preset: str, name: str) -> None:
    """A model of your own without `preset` (presets.json is the built-ins' table, and its class's
    `presets` attribute does not declare it): one line saying which models have one and how such a
    model trains instead, not a KeyError from inside the table. Everything that trains by model name
    (`runs`, `experiments`, the CLI, the widget) starts from a preset, and `overrides`/`--set` only
    change keys of one. The routes: declare it in the class (not 'bars', the leaderboard's table), the
    loop with your own settings, or your own pretraining into the checkpoint layout, after which
    finetuning runs (init="pretrained") take the checkpoint's architecture and settings."""
    if name in data[preset]:
        return
    cls = MODELS[name].__name__
    declared = sorted(MODELS[name].presets)
    if declared:  # the class has presets, not this one: name them, not the route to having any
        why = ("'bars' is the BARS leaderboard's table of the built-in models; " if preset == "bars" else "")
        add = "" if preset == "bars" else f", or add {preset!r} to it"
        raise CtrkitError(f"no {preset!r} preset for model {name!r}: {why}{cls}.presets declares "
                          f"{', '.join(map(repr, declared))}: pass one of them (--preset, preset=){add}")
    if preset == "bars":
        how = (f"'bars' is the BARS leaderboard's per-dataset table of the built-in models' published runs, not "
               f"for a model of your own: use a preset that the class attribute {cls}.presets declares "
               f"({', '.join(OWN_PRESETS)})")
    else:
        how = (f"runs from scratch by model name (experiments, runs, the CLI) start from a preset: give the class "
               f"{cls} a class attribute `presets` = {{{preset!r}: {{'model': {{hyperparameters}}, 'train': "
               f"{{training settings}}}}}}")
    raise CtrkitError(f"no {preset!r} preset for model {name!r} (presets exist for: {', '.join(data[preset])}): {how}; "
                      f"or train {name} yourself with loop.fit(models.build({name!r}, data.field_sizes, **hparams), "
                      f"data, train, out_dir=<ckpt_dir>/seed<S>/{name}) and finetune it with init='pretrained', or "
                      f"call mutual.mutual_fit([...], data, RunConfig(...)) (docs: Your own model)")


def get(model: str, preset: str, dataset: str | None = None, protocol: str | None = None) -> Preset:
    """The `preset` for `model`: a built-in's from presets.json, a model of your own's from its class's
    `presets` attribute (`_declared`). smoke/quick/full ignore dataset/protocol; bars requires them."""
    name = canonical_name(model)
    if preset not in names():
        raise CtrkitError(f"unknown preset {preset!r}; valid: {', '.join(names())}{did_you_mean(preset, names())}")
    data = _load("presets.json")
    if name not in data[preset]:  # a model of your own: its class's `presets` (never 'bars')
        entry, source = _declared(MODELS[name], preset) if preset != "bars" else None, {}
        if entry is None:
            _check_covered(data, preset, name)  # raises: which models have it, and what to do
    elif preset != "bars":
        entry, source = data[preset][name], {}
    else:
        dataset, protocol = _split(dataset, protocol)
        entry = data["bars"][name].get(f"{dataset}_{protocol}")
        if entry is None:
            have = [m for m in data["bars"] if f"{dataset}_{protocol}" in data["bars"][m]]
            raise CtrkitError(f"no BARS preset for {name} on {dataset}_{protocol}; it has: {', '.join(have)}")
        source = {k: entry[k] for k in ("source", "model_id", "seed")}
    # deep copies: callers may edit their preset without changing the cached table (or the class's)
    return Preset(name=preset, model_name=name, model=copy.deepcopy(dict(entry["model"])),
                  train=copy.deepcopy(dict(entry["train"])), dataset=dataset, protocol=protocol, source=source)


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
           "OWN_PRESETS", "TRAIN_KEYS", "MODELS"]
