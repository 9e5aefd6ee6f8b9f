"""A run's settings, defined once: `TrainConfig` (one peer's optimizer and schedule), `RunConfig`
(what the training loop runs: mode, batches, epochs, device, and one TrainConfig per peer),
`RunSpec` (a mutual run as the results store keys it) and `PretrainSpec` (one baseline). Keyword-only
dataclasses, unknown keys rejected; each rule (alone's weight, the peer count, the device) decided here.

A *train dict* is the flat form FuxiCTR configs, the presets, `--set` and every checkpoint's
`train_config` use: a peer's TrainConfig keys and the run-level keys a single model's training
carries (epochs, batch_size, seed, ...), in `TRAIN_DICT_KEYS` order. `RunConfig.single(train_dict)`
reads one, `RunConfig.train_dict(k)` writes peer k's (what best.pt and result.json hold).
Adding a knob: one field here and the code that uses it (and a CLI flag if it belongs on the CLI).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Sequence

import torch

from ctrkit.core import utils
from ctrkit.core.errors import CtrkitError
from ctrkit.core.utils import as_float, as_int, as_number, did_you_mean, resolve_device, resolve_threads, seed_problem
from ctrkit.models import canonical_name
from ctrkit.training import metrics
from ctrkit.training.losses import check_divergence, check_weight

__all__ = ["MODES", "INITS", "TAGS", "AMP_CHOICES", "GRAPH_CHOICES", "COMPILE_CHOICES", "TRAIN_DICT_KEYS",
           "RUN_TRAIN_KEYS", "TrainConfig", "RunConfig", "RunSpec", "PretrainSpec", "min_peers", "stored_weight",
           "weight_matters", "run_key", "peer_labels",
           "split_label", "parse_monitor"]

MODES = ("mutual", "alone", "kd", "ensemble", "ensemble_teacher", "ektf")
INITS = ("scratch", "pretrained")
TAGS = (None, "exploration", "variants")
AMP_CHOICES = ("auto", "bf16", "off")
# Graph mode (`ctrkit.training.graph`): how the training step runs on CUDA, never what it computes, so
# it is neither part of a result's key nor of the resume signature, and not in the flat train dict
# (checkpoints keep the keys they always had); `RunConfig.single` accepts it besides those keys.
GRAPH_CHOICES = ("auto", "on", "off")
# torch.compile of the trained peers' forward (`ctrkit.training.compiled`): the same maths, other
# roundings, so like graph mode a run-only key; off unless asked for (not measured to pay anywhere yet).
COMPILE_CHOICES = ("off", "on")
_RUN_ONLY_KEYS = ("graph", "compile")
# Monitors as FuxiCTR writes them: a metric name, or {metric: weight} summed (BARS: AUC - logloss).
_MONITOR_ALIASES = {"auc": {"auc": 1.0}, "logloss": {"logloss": -1.0},
                    "auc-logloss": {"auc": 1.0, "logloss": -1.0}}
# The flat train dict's keys in the order checkpoints and result.json have always written them (a
# TrainConfig field added later goes at the end, see TRAIN_DICT_KEYS below the classes).
_TRAIN_DICT_ORDER = ("epochs", "batch_size", "lr", "embedding_regularizer", "net_regularizer", "clip_grad_norm",
                     "monitor", "patience", "lr_decay", "min_lr", "eval_batch_size", "amp", "device", "seed",
                     "progress", "check_every", "threads")
# ... of which these are RunConfig's (one batch feeds every peer), the others a peer's TrainConfig.
RUN_TRAIN_KEYS = ("epochs", "batch_size", "eval_batch_size", "amp", "device", "seed", "progress", "check_every",
                  "threads")
# Train-dict keys that change how a run goes, not what it gives: not part of a baseline's key.
_NOT_RESULT = {"progress", "device", "threads", "eval_batch_size", "check_every", *_RUN_ONLY_KEYS}


# ---------------------------------------------------------------- the rules, each decided once


def min_peers(mode: str) -> int:
    """alone trains one or more peers side by side, and so may the group rules (one peer: its own
    ensemble, nothing to learn: training alone); the others need someone to learn from."""
    return 1 if mode in ("alone", "ensemble_teacher", "ektf") else 2


def stored_weight(mode: str, weight: float) -> float:
    """The weight a run records: alone learns from nobody, so 0. (ensemble keeps the weight it was
    given: the store's run keys of existing ensemble runs depend on it.)"""
    return 0.0 if mode == "alone" else float(weight)


def weight_matters(mode: str) -> bool:
    """Whether two runs differing only in weight differ: not when nobody learns (alone, ensemble)."""
    return mode in ("mutual", "kd", "ensemble_teacher", "ektf")


def run_key(**fields) -> str:
    """Stable id of a run's settings (sorted JSON -> sha1)."""
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def peer_labels(models: Sequence[str]) -> list[str]:
    """Unique labels within a run: DeepFM, DCN, DeepFM_2 (a repeated model gets its occurrence)."""
    seen: Counter = Counter()
    out = []
    for m in models:
        seen[m] += 1
        out.append(m if seen[m] == 1 else f"{m}_{seen[m]}")
    return out


def split_label(label: str) -> tuple[str, int]:
    """"DeepFM_2" -> ("DeepFM", 2); "DeepFM" -> ("DeepFM", 1)."""
    name, _, k = label.rpartition("_")
    if name and k.isdigit():
        return canonical_name(name), int(k)
    return canonical_name(label), 1


def _reject_unknown(cls, d: dict, what: str) -> None:
    _reject_keys(d, [f.name for f in dataclasses.fields(cls)], what)


def _reject_keys(d: dict, valid: Sequence[str], what: str) -> None:
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise CtrkitError(f"unknown {what} key(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
                          f"{did_you_mean(unknown[0], valid) if len(unknown) == 1 else ''}")


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise CtrkitError(f"train config {name}: expected one of {', '.join(choices)}, got {value!r}"
                          f"{did_you_mean(value, choices)}")


def check_mode(mode: Any) -> str:
    """The one check of a run's mode (RunConfig, RunSpec, the grids through RunSpec)."""
    if not isinstance(mode, str) or mode not in MODES:
        raise CtrkitError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}{did_you_mean(mode, MODES)}")
    return mode


def check_run_weight(weight: Any) -> float:
    """The mutual term's weight as a float: a number (`as_float`: not a string, not a bool) that
    `losses.check_weight` accepts (>= 0, finite)."""
    w = as_float(weight)
    if w is None:
        raise CtrkitError(f"mutual weight must be a number >= 0 and finite, got {weight!r}")
    check_weight(w)
    return w


def check_lr_scale(scale: Any) -> int | float:
    """The finetuning lr scale: a finite number > 0 (`as_number`: an int stays an int, as the run key
    has always recorded it, 1 and 1.0 keying apart)."""
    n = as_number(scale)
    if n is None or not 0 < n < math.inf:
        raise CtrkitError(f"finetune_lr_scale: expected a finite number > 0, got {scale!r}")
    return n


MAX_SEED = utils.MAX_SEED  # (in core: the data layer's split seed follows the same rule)


def _check_int(what: str, name: str, v: Any, lo: int) -> int:
    """`v` as an int (`as_int`: numpy's ints converted; bool and float refused), within bounds."""
    if name == "seed" and seed_problem(v):  # the one seed rule, in its words
        raise CtrkitError(f"{what} {name}: {seed_problem(v)}")
    hi = MAX_SEED if name == "seed" else None
    n = as_int(v)
    if n is None or n < lo or (hi is not None and n > hi):
        raise CtrkitError(f"{what} {name}: expected an int >= {lo}" + (f" and <= {hi}" if hi else "") + f", got {v!r}")
    return n


def _parse_regularizer(name: str, value: Any) -> float:
    # FuxiCTR configs write the regularizer as 1e-05, "1e-05" or "l2(1.e-5)"; all mean an L2 weight.
    if isinstance(value, str):
        text = value.strip().lower()
        if text.startswith("l2(") and text.endswith(")"):
            text = text[3:-1]
        try:
            value = float(text)
        except ValueError:
            raise CtrkitError(f"train config {name}: expected a number or l2(number), got {value!r}") from None
    v = as_float(value)
    if v is None or not v >= 0:
        raise CtrkitError(f"train config {name}: expected a number >= 0, got {value!r}")
    return v


def parse_monitor(value: Any) -> dict[str, float]:
    """A monitor as {metric: weight} (AUC, logloss, AUC-logloss or a dict)."""
    if isinstance(value, str):
        key = value.replace(" ", "").lower()
        if key not in _MONITOR_ALIASES:
            raise CtrkitError(f"train config monitor: unknown {value!r}; valid: AUC, logloss, AUC-logloss "
                              f"or a dict like {{\"AUC\": 1, \"logloss\": -1}}"
                              f"{did_you_mean(value, ('AUC', 'logloss', 'AUC-logloss'))}")
        return dict(_MONITOR_ALIASES[key])
    if isinstance(value, dict) and value:
        out = {}
        for k, w in value.items():
            weight = as_float(w)
            if str(k).lower() not in metrics.METRICS or weight is None \
                    or not math.isfinite(weight):  # a NaN weight would end the run at its first epoch
                hint = did_you_mean(str(k), ("AUC", "logloss")) if str(k).lower() not in metrics.METRICS else ""
                raise CtrkitError(f"train config monitor: bad entry {k!r}: {w!r}; metrics: AUC, logloss, "
                                  f"finite weights{hint}")
            out[str(k).lower()] = weight
        return out
    raise CtrkitError(f"train config monitor: expected AUC, logloss, AUC-logloss or a dict, got {value!r}")


# ---------------------------------------------------------------- one peer


@dataclasses.dataclass(kw_only=True, frozen=True)
class TrainConfig:
    """One peer's optimizer and schedule (FuxiCTR's protocol): Adam's lr, the L2 regularizers,
    gradient clipping, the monitor, early-stopping patience and the plateau LR decay."""

    lr: float = 1e-3
    embedding_regularizer: float = 0.0
    net_regularizer: float = 0.0
    clip_grad_norm: float | None = 10.0
    monitor: Any = "AUC"
    patience: int = 2
    lr_decay: float = 0.1
    min_lr: float = 1e-6

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        set_("patience", _check_int("train config", "patience", self.patience, 0))
        for name in ("lr", "lr_decay", "min_lr"):
            v = as_float(getattr(self, name))
            if v is None or not (v > 0 and math.isfinite(v)):
                raise CtrkitError(f"train config {name}: expected a finite number > 0, got {getattr(self, name)!r}")
            set_(name, v)
        if self.lr_decay >= 1:  # the plateau schedule's factor: it must lower the lr
            raise CtrkitError(f"train config lr_decay: expected a number in (0, 1), got {self.lr_decay!r}")
        set_("embedding_regularizer", _parse_regularizer("embedding_regularizer", self.embedding_regularizer))
        set_("net_regularizer", _parse_regularizer("net_regularizer", self.net_regularizer))
        if self.clip_grad_norm is not None:
            v = as_float(self.clip_grad_norm)
            if v is None or not v > 0:
                raise CtrkitError(f"train config clip_grad_norm: expected a number > 0 or null, got "
                                  f"{self.clip_grad_norm!r}")
            set_("clip_grad_norm", v)
        parse_monitor(self.monitor)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        d = dict(d or {})
        _reject_unknown(cls, d, "train config")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


# ---------------------------------------------------------------- what the loop runs


def _train_configs(peers: Any) -> tuple:
    """RunConfig.peers as TrainConfigs: one TrainConfig or dict (one peer), or a list/tuple of them."""
    if isinstance(peers, (TrainConfig, dict)):
        peers = [peers]
    if not isinstance(peers, (list, tuple)) or not all(isinstance(p, (TrainConfig, dict)) for p in peers):
        raise CtrkitError(f"run config peers: expected a TrainConfig or dict per peer (a list of them), got {peers!r}")
    return tuple(p if isinstance(p, TrainConfig) else TrainConfig.from_dict(p) for p in peers)


@dataclasses.dataclass(kw_only=True, frozen=True)
class RunConfig:
    """What the training loop runs: the run-level settings (one batch feeds every peer) and
    `peers`, one TrainConfig (or dict) per peer. `weight` is the mutual term's (alone: 0);
    `threads`: intra-op CPU threads, a number, "auto" (`ctrkit.core.utils.resolve_threads`: the cores
    other processes leave free) or None (torch's setting as it is). `graph`: on CUDA, auto/on replay the
    whole step as one CUDA graph (`ctrkit.training.graph`; auto falls back to eager with a warning, on
    is an error off CUDA). `compile`: "on" trains each peer through `torch.compile` of its reference
    maths (`ctrkit.training.compiled`). `torch_device` is `device` resolved."""

    peers: tuple
    mode: str = "mutual"
    weight: float = 1.0
    divergence: str = "mse"
    warmup_steps: int = 0
    epochs: int = 10
    batch_size: int = 4096
    seed: int = 2021
    device: str = "auto"
    amp: str = "auto"
    eval_batch_size: int = 65536
    # Steps between host syncs (non-finite check, progress refresh): rare enough to keep the device busy.
    check_every: int = 100
    progress: bool = True
    threads: Any = "auto"
    graph: str = "auto"
    compile: str = "off"

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        check_mode(self.mode)
        set_("weight", stored_weight(self.mode, check_run_weight(self.weight)))
        check_divergence(self.divergence)
        for name in ("warmup_steps", "epochs", "batch_size", "seed", "eval_batch_size", "check_every"):
            set_(name, _check_int("train config", name, getattr(self, name),
                                  0 if name in ("warmup_steps", "seed", "epochs") else 1))
        _check_choice("amp", self.amp, AMP_CHOICES)
        _check_choice("graph", self.graph, GRAPH_CHOICES)
        _check_choice("compile", self.compile, COMPILE_CHOICES)
        set_("device", str(self.device))
        if self.threads not in (None, "auto"):
            resolve_threads(self.threads)  # a bad value is an error now, not at the start of training
            set_("threads", as_int(self.threads) if as_int(self.threads) is not None else self.threads)
        if not isinstance(self.progress, bool):
            raise CtrkitError(f"train config progress: expected true or false, got {self.progress!r}")
        set_("peers", _train_configs(self.peers))
        if len(self.peers) < min_peers(self.mode):
            raise CtrkitError(f"mode {self.mode!r} needs at least {min_peers(self.mode)} peers, got {len(self.peers)}")

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        _reject_unknown(cls, d, "run config")
        return cls(**d)

    @classmethod
    def single(cls, train: dict | None = None) -> "RunConfig":
        """One model trained alone (`fit`) from a flat train dict (a preset's `train` plus run keys)."""
        train = dict(train or {})
        _reject_keys(train, (*TRAIN_DICT_KEYS, *_RUN_ONLY_KEYS), "train config")
        peer = TrainConfig.from_dict({k: v for k, v in train.items() if k not in (*RUN_TRAIN_KEYS, *_RUN_ONLY_KEYS)})
        run = {k: v for k, v in train.items() if k in (*RUN_TRAIN_KEYS, *_RUN_ONLY_KEYS)}
        return cls(mode="alone", weight=0.0, peers=(peer,), **run)

    @functools.cached_property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def run_dict(self) -> dict:
        """The run-level settings (result.json's `config`, the resume signature); not `graph` (how
        the step runs, not what it gives: a result's `env` says whether the graph ran)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("peers", *_RUN_ONLY_KEYS)}

    def train_dict(self, k: int) -> dict:
        """Peer k's flat train dict: what its best.pt and result.json record as `train_config`."""
        # an ensemble run has 0 epochs; its peers' train dicts have always said 1
        run = {**self.run_dict(), "epochs": max(self.epochs, 1)}
        peer = self.peers[k].to_dict()
        return {key: peer[key] if key in peer else run[key] for key in TRAIN_DICT_KEYS}

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with `changes`, checked as a new RunConfig; an unknown key is a one-line CtrkitError
        as in `TrainConfig.replace` (dataclasses.replace would raise Python's TypeError)."""
        return RunConfig.from_dict({**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **changes})


TRAIN_DICT_KEYS: tuple[str, ...] = (*_TRAIN_DICT_ORDER,
                                     *[k for k in TrainConfig.keys() if k not in _TRAIN_DICT_ORDER])


def normalize_train_dict(train: dict) -> dict:
    """A flat train dict validated, in `TRAIN_DICT_KEYS` order, numbers as the configs hold them."""
    return RunConfig.single(train).train_dict(0)


# ---------------------------------------------------------------- a mutual run, as the store keys it


def _peer_names(peers: Any) -> list[str]:
    """RunSpec.peers as model names (or labels): "DeepFM,DCN" or a list/tuple of names."""
    names = peers.split(",") if isinstance(peers, str) else peers
    names = list(names) if isinstance(names, Iterable) and not isinstance(names, dict) else None
    if names is None or not all(isinstance(p, str) for p in names):
        raise CtrkitError(f"peers: expected model names (a list, or one string like 'DeepFM,DCN'), got {peers!r}")
    return [p.strip() for p in names if p.strip()]


@dataclasses.dataclass(kw_only=True, frozen=True)
class RunSpec:
    """Everything that defines one run of N peers. `epochs` None: the presets' (scratch) or
    `finetune_epochs` (pretrained). Pretrained peers come from `ckpt_dir/<label>/best.pt`, finetuned
    at `finetune_lr_scale` x their pretraining lr, monitoring `finetune_monitor`; their pretrained
    weights count as epoch 0. `overrides`: `--set` keys of the train config (every peer) or the
    model (scratch peers). `tag` "exploration" (the widget's runs) or "variants" (the variants
    notebook's) keeps a run out of the paper's tables. `share_embedding`: the peers (all from
    scratch, one embedding size) use ONE embedding table, peer 0's (`ctrkit.experiments.runs`).
    `graph`, `compile`: `RunConfig`'s, not part of the run's key."""

    peers: tuple[str, ...]
    init: str = "scratch"
    mode: str = "mutual"
    weight: float = 1.0
    divergence: str = "mse"
    share_embedding: bool = False
    warmup_steps: int = 0
    epochs: int | None = None
    finetune_lr_scale: float = 0.1
    finetune_epochs: int = 2
    finetune_monitor: str = "AUC-logloss"
    seed: int = 2021
    preset: str = "quick"
    amp: str = "auto"
    batch_size: int | None = None
    overrides: tuple = ()
    ckpt_dir: str | None = None
    tag: str | None = None
    device: str = "auto"
    threads: Any = "auto"
    progress: bool = True
    graph: str = "auto"
    compile: str = "off"

    def __post_init__(self):
        object.__setattr__(self, "peers", tuple(peer_labels([canonical_name(p) for p in _peer_names(self.peers)])))
        if isinstance(self.overrides, dict) or self.overrides is None:
            object.__setattr__(self, "overrides", tuple(sorted((self.overrides or {}).items())))
        if self.ckpt_dir is not None:
            object.__setattr__(self, "ckpt_dir", str(Path(self.ckpt_dir).resolve()))
        self.validate()

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        _reject_unknown(cls, d, "run setting")
        return cls(**d)

    @property
    def names(self) -> list[str]:
        return [split_label(p)[0] for p in self.peers]

    @property
    def from_checkpoint(self) -> list[bool]:
        """Which peers are loaded: all when pretrained; the kd teacher (peer 0) always."""
        return [self.init == "pretrained" or (self.mode == "kd" and k == 0) for k in range(len(self.peers))]

    @functools.cached_property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def validate(self) -> None:
        """Every setting checked, its numbers made Python's (`as_int`/`as_number`: numpy's converted)."""
        if not isinstance(self.init, str) or self.init not in INITS:
            raise CtrkitError(f"unknown init {self.init!r}; valid: {', '.join(INITS)}{did_you_mean(self.init, INITS)}")
        check_mode(self.mode)
        self._check_numbers()
        check_divergence(self.divergence)
        parse_monitor(self.finetune_monitor)  # a typo fails here, not when the first pretrained peer loads
        if len(self.peers) < min_peers(self.mode):
            raise CtrkitError(f"peers: mode {self.mode!r} needs at least {min_peers(self.mode)} peers, got "
                              f"{len(self.peers)} ({','.join(self.peers)})")
        if self.mode == "ensemble" and self.init != "pretrained":
            raise CtrkitError("mode 'ensemble' averages pretrained peers: use --init pretrained with --ckpt-dir "
                              "(init='pretrained', ckpt_dir=... from Python)")
        if any(self.from_checkpoint) and self.ckpt_dir is None:
            raise CtrkitError(f"init {self.init!r} / mode {self.mode!r} needs --ckpt-dir / ckpt_dir= (one `pretrain --out` "
                              f"folder per model)")
        if self.tag not in TAGS:
            raise CtrkitError(f"tag: expected one of {TAGS}, got {self.tag!r}")
        _check_choice("graph", self.graph, GRAPH_CHOICES)
        _check_choice("compile", self.compile, COMPILE_CHOICES)
        if not isinstance(self.share_embedding, bool):
            raise CtrkitError(f"share_embedding: expected true or false, got {self.share_embedding!r}")
        if self.share_embedding and (self.init != "scratch" or self.mode in ("kd", "ensemble")):
            raise CtrkitError(f"share_embedding: the peers share one table trained from scratch; init {self.init!r} / "
                              f"mode {self.mode!r} loads pretrained tables (use init scratch, mode mutual, alone, "
                              f"ensemble_teacher or ektf)")

    def _check_numbers(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("weight", check_run_weight(self.weight))
        set_("finetune_lr_scale", check_lr_scale(self.finetune_lr_scale))
        for name in ("finetune_epochs", "warmup_steps", "seed") + tuple(
                n for n in ("epochs", "batch_size") if getattr(self, n) is not None):
            lo = 0 if name in ("warmup_steps", "seed") else 1
            set_(name, _check_int("run setting", name, getattr(self, name), lo))

    def settings(self) -> dict:
        """Every setting that changes a result, as stored; what is irrelevant to this run is None."""
        loads = any(self.from_checkpoint)
        return {"peers": list(self.peers), "init": self.init, "mode": self.mode,
                "weight": stored_weight(self.mode, self.weight), "divergence": self.divergence,
                "warmup_steps": self.warmup_steps, "epochs": self.epochs, "preset": self.preset, "amp": self.amp,
                "batch_size": self.batch_size, "overrides": dict(self.overrides), "tag": self.tag,
                "finetune_lr_scale": self.finetune_lr_scale if loads else None,
                "finetune_epochs": self.finetune_epochs if self.init == "pretrained" else None,
                "finetune_monitor": self.finetune_monitor if loads else None,
                "ckpt_dir": self.ckpt_dir if loads else None,
                # only when set: the run keys of every run without it stay what they were
                **({"share_embedding": True} if self.share_embedding else {})}

    def key(self, fingerprint: str) -> str:
        """The store's skip-if-done key: the data, every setting, the seed."""
        return run_key(fingerprint=fingerprint, seed=self.seed, **self.settings())

    def settings_key(self, fingerprint: str) -> str:
        """The same without the seed and the per-seed checkpoint folder: runs that tables may pair by seed."""
        s = {**self.settings(), "ckpt_dir": None}
        return run_key(fingerprint=fingerprint, **s)

    def run_config(self, trains: Sequence[dict], device: torch.device | str) -> RunConfig:
        """The loop's config from every peer's flat train dict (preset or checkpoint, `--set` applied):
        the run's epochs are the spec's, else finetune_epochs (pretrained) or the longest preset's;
        its batch size the spec's, else the first peer's."""
        epochs = self.epochs or (self.finetune_epochs if self.init == "pretrained" else max(t["epochs"] for t in trains))
        return RunConfig(mode=self.mode, weight=self.weight, divergence=self.divergence, warmup_steps=self.warmup_steps,
                         epochs=0 if self.mode == "ensemble" else epochs,
                         batch_size=self.batch_size or trains[0]["batch_size"], seed=self.seed, device=str(device),
                         amp=self.amp, progress=self.progress, threads=self.threads, graph=self.graph,
                         compile=self.compile,
                         peers=tuple(TrainConfig.from_dict({k: v for k, v in t.items() if k not in RUN_TRAIN_KEYS})
                                     for t in trains))


# ---------------------------------------------------------------- one baseline


@dataclasses.dataclass(kw_only=True, frozen=True)
class PretrainSpec:
    """One baseline: `model` (or a label, "DeepFM_2": init seed + 1) trained alone with its preset.
    `epochs`/`amp` None: the preset's; `overrides`: `--set` keys (train dict or model), winning over
    the other fields. `graph`, `compile`: `RunConfig`'s, not part of the baseline's key."""

    model: str
    preset: str = "quick"
    seed: int = 2021
    epochs: int | None = None
    overrides: Any = None
    device: str = "auto"
    threads: Any = "auto"
    amp: str | None = None
    progress: bool = True
    graph: str = "auto"
    compile: str = "off"

    def __post_init__(self):
        _check_choice("graph", self.graph, GRAPH_CHOICES)
        _check_choice("compile", self.compile, COMPILE_CHOICES)
        # checked as RunConfig.single will, but now: the baseline's key records them (np.int64 as a string)
        object.__setattr__(self, "seed", _check_int("pretrain setting", "seed", self.seed, 0))
        if self.epochs is not None:
            object.__setattr__(self, "epochs", _check_int("pretrain setting", "epochs", self.epochs, 0))

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainSpec":
        _reject_unknown(cls, d, "pretrain setting")
        return cls(**d)

    @property
    def label(self) -> str:
        name, k = split_label(self.model)
        return name if k == 1 else f"{name}_{k}"

    def base_train(self, preset_train: dict) -> dict:
        """The flat train dict before `--set`: the preset's and this spec's run-level fields."""
        return {**preset_train, "seed": self.seed, "device": str(resolve_device(self.device)),
                "progress": self.progress, "threads": self.threads,
                **({"epochs": self.epochs} if self.epochs is not None else {}),
                **({"amp": self.amp} if self.amp is not None else {}),
                **({"graph": self.graph} if self.graph != "auto" else {}),  # only when set: the dict as before
                **({"compile": self.compile} if self.compile != "off" else {})}

    def keys(self, fingerprint: str, hparams: dict, train: dict) -> tuple[str, str]:
        """(run key, settings key) of the baseline trained with `hparams` and the flat `train` dict."""
        train_key = {k: v for k, v in train.items() if k not in _NOT_RESULT}
        common = dict(kind="baseline", fingerprint=fingerprint, peer=self.label, preset=self.preset, model=hparams)
        return (run_key(seed=self.seed, **common, train=train_key),
                run_key(**common, train={**train_key, "seed": None}))
