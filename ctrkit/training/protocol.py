"""The BARS/FuxiCTR training protocol, piece by piece: the train config, Adam with FuxiCTR's L2
regularizers, the plateau tracker (LR decay, early stopping, best weights), mixed precision,
evaluation, the non-finite check, RNG state and dropout streams. `ctrkit.training.loop` runs the loop.

Protocol (FuxiCTR's BaseModel.fit, which produced the BARS numbers): Adam, binary cross-entropy on
logits, L2 on the embedding tables (`embedding_regularizer`) and on the other parameters
(`net_regularizer`), gradient-norm clipping at 10, validation every epoch on a monitor (AUC, or
AUC - logloss), learning rate x0.1 on every epoch without improvement, early stopping after
`patience` such epochs, the best weights restored at the end, then one test evaluation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ctrkit.training import metrics
from ctrkit.models import embedding_parameters
from ctrkit.core.utils import CtrkitError, cpuinfo, resolve_threads

__all__ = ["TrainConfig", "as_train_config", "make_optimizer", "Tracker", "monitor_score", "epoch_batches",
           "NonFiniteCheck", "NonFiniteLossError", "resolve_amp", "amp_context", "predict", "evaluate", "scores",
           "rng_state", "set_rng_state", "count_parameters", "dropout_seed", "uses_dropout", "AMP_CHOICES"]

AMP_CHOICES = ("auto", "bf16", "off")
# Monitors as FuxiCTR writes them: a metric name, or {metric: weight} summed (BARS: AUC - logloss).
_MONITOR_ALIASES = {"auc": {"auc": 1.0}, "logloss": {"logloss": -1.0},
                    "auc-logloss": {"auc": 1.0, "logloss": -1.0}}


class NonFiniteLossError(CtrkitError):
    """Training produced a NaN/inf loss; the message names the epoch and the step."""


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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise CtrkitError(f"train config {name}: expected a number >= 0, got {value!r}")
    return float(value)


def _parse_monitor(value: Any) -> dict[str, float]:
    if isinstance(value, str):
        key = value.replace(" ", "").lower()
        if key not in _MONITOR_ALIASES:
            raise CtrkitError(f"train config monitor: unknown {value!r}; valid: AUC, logloss, AUC-logloss "
                              f"or a dict like {{\"AUC\": 1, \"logloss\": -1}}")
        return dict(_MONITOR_ALIASES[key])
    if isinstance(value, dict) and value:
        out = {}
        for k, w in value.items():
            if str(k).lower() not in metrics.METRICS or isinstance(w, bool) or not isinstance(w, (int, float)):
                raise CtrkitError(f"train config monitor: bad entry {k!r}: {w!r}; metrics: AUC, logloss")
            out[str(k).lower()] = float(w)
        return out
    raise CtrkitError(f"train config monitor: expected AUC, logloss, AUC-logloss or a dict, got {value!r}")


@dataclasses.dataclass
class TrainConfig:
    """Everything `fit` needs besides the model and the data (the `train` part of a preset)."""

    epochs: int = 10
    batch_size: int = 4096
    lr: float = 1e-3
    embedding_regularizer: float = 0.0
    net_regularizer: float = 0.0
    clip_grad_norm: float | None = 10.0
    monitor: Any = "AUC"
    patience: int = 2
    lr_decay: float = 0.1
    min_lr: float = 1e-6
    eval_batch_size: int = 65536
    amp: str = "auto"
    device: str = "auto"
    seed: int = 2021
    progress: bool = True
    # Steps between host syncs (non-finite check, progress refresh): rare enough to keep the device busy.
    check_every: int = 100
    # Intra-op CPU threads: a number, "auto" (the cores other processes leave free, see
    # ctrkit.core.utils.resolve_threads) or None (torch's setting as it is).
    threads: Any = "auto"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience", "eval_batch_size", "seed", "check_every"):
            v = getattr(self, name)
            lo = 0 if name in ("patience", "seed") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise CtrkitError(f"train config {name}: expected an int >= {lo}, got {v!r}")
        for name in ("lr", "lr_decay", "min_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
                raise CtrkitError(f"train config {name}: expected a finite number > 0, got {v!r}")
            setattr(self, name, float(v))
        self.embedding_regularizer = _parse_regularizer("embedding_regularizer", self.embedding_regularizer)
        self.net_regularizer = _parse_regularizer("net_regularizer", self.net_regularizer)
        if self.clip_grad_norm is not None:
            v = self.clip_grad_norm
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise CtrkitError(f"train config clip_grad_norm: expected a number > 0 or null, got {v!r}")
            self.clip_grad_norm = float(v)
        _parse_monitor(self.monitor)
        if self.amp not in AMP_CHOICES:
            raise CtrkitError(f"train config amp: expected one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if not isinstance(self.device, str):
            self.device = str(self.device)
        if self.threads not in (None, "auto"):
            resolve_threads(self.threads)  # a bad value is an error now, not at the start of training
        if not isinstance(self.progress, bool):
            raise CtrkitError(f"train config progress: expected true or false, got {self.progress!r}")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.keys()))
        if unknown:
            raise CtrkitError(f"unknown train config key(s) {', '.join(unknown)}; valid: {', '.join(cls.keys())}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def as_train_config(config: TrainConfig | dict | None) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    return TrainConfig.from_dict(config)


# ---------------------------------------------------------------- building blocks


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """Adam with FuxiCTR's L2 regularizers as per-group weight decay.

    FuxiCTR adds `lambda / 2 * ||W||_2^2` (its `(lambda / p) * ||W||_p^p` with p = 2) over the
    embedding tables (lambda = embedding_regularizer) and over all other parameters
    (lambda = net_regularizer) to the loss. Its gradient is `lambda * W`, which is exactly what
    Adam's (coupled, not AdamW) `weight_decay = lambda` adds to the gradient, without building the
    norm into the graph every step. One difference: FuxiCTR clips the gradient norm after adding the
    regularizer's gradient, weight decay is added after clipping; they agree whenever the norm stays
    under the clip threshold (tested).
    """
    emb = embedding_parameters(model)
    emb_ids = {id(p) for p in emb}
    net = [p for p in model.parameters() if id(p) not in emb_ids]
    groups = [g for g in ({"params": [p for p in emb if p.requires_grad], "weight_decay": config.embedding_regularizer,
                           "name": "embedding"},
                          {"params": [p for p in net if p.requires_grad], "weight_decay": config.net_regularizer,
                           "name": "net"}) if g["params"]]
    if not groups:
        raise CtrkitError("make_optimizer: the model has no trainable parameters")
    # The protocol updates every embedding row every step (dense Adam + decay), so the optimizer
    # step over the tables is a large share of a step; the fused kernel does it in one pass
    # (~4x faster than the per-tensor loop on CPU, measured).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
                for g in groups for p in g["params"])
    return torch.optim.Adam(groups, lr=config.lr, fused=fused)


def monitor_score(monitor: Any, valid_metrics: dict) -> float:
    """The monitored value (always maximised): e.g. AUC, -logloss or AUC - logloss."""
    return float(sum(w * valid_metrics[k] for k, w in _parse_monitor(monitor).items()))


class Tracker:
    """Per-model epoch bookkeeping of FuxiCTR's protocol: plateau LR decay, early stop, best weights.

    `on_epoch_end(epoch, valid_metrics, model)` returns True when training should stop. An epoch
    improves when the monitor beats the best so far by more than `min_delta` (FuxiCTR: 1e-6);
    every other epoch multiplies the LR by `lr_decay` (floor `min_lr`) and counts towards
    `patience`. The best weights are kept in memory (CPU copies) for `restore_best`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, min_delta: float = 1e-6):
        self.config = config
        self.monitor = config.monitor
        self.patience = config.patience
        # torch's scheduler with patience=0 and an absolute threshold is FuxiCTR's lr_decay rule.
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=config.lr_decay, patience=0, threshold=min_delta,
            threshold_mode="abs", min_lr=config.min_lr)
        self.min_delta = min_delta
        self.best_score = -math.inf
        self.best_epoch: int | None = None
        self.best_metrics: dict | None = None
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.improved = False
        self.stopped = False

    def start_from(self, valid_metrics: dict, model: nn.Module) -> None:
        """Count the model as it is now (a pretrained checkpoint) as epoch 0: finetuning keeps
        these weights unless an epoch beats them on validation."""
        self.on_epoch_end(0, valid_metrics, model)
        self.stopped = False  # epoch 0 never ends a run by itself (patience 0 would)

    def on_epoch_end(self, epoch: int, valid_metrics: dict, model: nn.Module) -> bool:
        score = monitor_score(self.monitor, valid_metrics)
        if not math.isfinite(score):
            raise NonFiniteLossError(f"epoch {epoch}: the validation monitor is {score} (metrics {valid_metrics})")
        self.improved = score > self.best_score + self.min_delta
        self.scheduler.step(score)
        if self.improved:
            self.best_score, self.best_epoch, self.best_metrics = score, epoch, dict(valid_metrics)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        self.stopped = self.bad_epochs >= self.patience
        return self.stopped

    @property
    def lr(self) -> float:
        return float(self.scheduler.optimizer.param_groups[0]["lr"])

    def restore_best(self, model: nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict(), "best_score": self.best_score,
                "best_epoch": self.best_epoch, "best_metrics": self.best_metrics, "best_state": self.best_state,
                "bad_epochs": self.bad_epochs, "improved": self.improved, "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        for k in ("best_score", "best_epoch", "best_metrics", "best_state", "bad_epochs", "improved", "stopped"):
            setattr(self, k, state[k])


def dropout_seed(seed: int, step: int, peer: int = 0, replica: int = 0) -> int:
    """Seed of the dropout masks a model draws at global training step `step` (0-based, counted
    over epochs). Every model of a mutual run (`peer`) and every DDP replica gets its own stream, so
    masks don't depend on how many models share a process or in which order they run: `alone` peer
    0 equals `fit`, and `ctrkit.training.distributed` (one peer per rank) equals the single process step for
    step, dropout included. The trainers reseed before each forward of a model that has dropout."""
    return int(np.random.SeedSequence([seed, peer, replica, step]).generate_state(1, np.uint64)[0] >> 1)


def uses_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def epoch_batches(n: int, batch_size: int, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """One epoch of shuffled row indices, as views of one permutation drawn on the CPU generator
    (same order on every device), moved to `device` once. The last batch may be smaller."""
    perm = torch.randperm(n, generator=generator)
    return perm.to(device).split(batch_size)


def _cpu_bf16_flags() -> set[str]:
    """The CPU's bf16 instruction sets among amx_bf16 and avx512_bf16 (empty: none, or no /proc)."""
    return {"amx_bf16", "avx512_bf16"} & set((cpuinfo("flags") or "").split())


def _cpu_has_amx_bf16() -> bool:
    return "amx_bf16" in _cpu_bf16_flags()


_WARNED_EMULATED_BF16 = False


def _warn_emulated_bf16() -> None:
    global _WARNED_EMULATED_BF16
    if not _WARNED_EMULATED_BF16:
        _WARNED_EMULATED_BF16 = True
        warnings.warn("amp=bf16 on a CPU without bf16 instructions (neither amx_bf16 nor avx512_bf16): its bf16 "
                      "products are emulated, several times slower than fp32 (FiBiNET trained ~8x slower on an "
                      "AMD Zen 3, bench/results/); amp=auto picks fp32 here", stacklevel=3)


def resolve_amp(device: torch.device | str, amp: str) -> torch.dtype | None:
    """bf16 autocast dtype or None. auto: bf16 on CUDA with bf16 support and on CPUs with AMX
    (where bf16 matmuls have hardware support); fp32 master weights either way."""
    device = torch.device(device)
    if amp not in AMP_CHOICES:
        raise CtrkitError(f"amp: expected one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp == "off":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = _cpu_has_amx_bf16()
    else:
        supported = False
    if amp == "bf16":
        if device.type == "cuda" and not supported:
            raise CtrkitError(f"amp=bf16: the CUDA device {device} has no bf16 support; use amp=off")
        if device.type == "cpu" and not _cpu_bf16_flags():
            _warn_emulated_bf16()
        return torch.bfloat16
    return torch.bfloat16 if supported else None


def amp_context(device: torch.device | str, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class NonFiniteCheck:
    """Finds the first step with a NaN/inf loss without a host sync per step: the step number is
    recorded on the device and read only by `check()` (every `check_every` steps, epoch end)."""

    def __init__(self, device: torch.device | str):
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        bad = (self.first_bad < 0) & ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)

    def check(self, epoch: int, what: str = "loss") -> None:
        step = int(self.first_bad)
        if step >= 0:
            raise NonFiniteLossError(f"non-finite training {what} at epoch {epoch}, step {step}; "
                                     f"training stopped, the last good checkpoint is kept "
                                     f"(try a lower lr, amp=off or stronger clipping)")


@torch.inference_mode()
def predict(model: nn.Module, X: torch.Tensor, batch_size: int = 65536,
            amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Click probabilities float32 [rows] on X's device, in large batches, model in eval mode.

    Evaluation runs in fp32 by default: bf16 logits (8-bit mantissa) would tie many scores and
    blur AUC differences of the size the paper reports."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, X.shape[0], batch_size):
            with amp_context(X.device, amp_dtype):
                logits = model(X[start:start + batch_size])
            out.append(torch.sigmoid(logits.float()))
        return torch.cat(out) if out else torch.empty(0, device=X.device)
    finally:
        model.train(was_training)


def scores(y: torch.Tensor, p: torch.Tensor) -> dict:
    """{"auc", "logloss"} of click probabilities `p` against labels `y`, equal to sklearn's."""
    return {"auc": metrics.auc(y, p), "logloss": metrics.logloss(y, p)}


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 65536,
             amp_dtype: torch.dtype | None = None) -> dict:
    """{"auc", "logloss"} of the model on (X, y)."""
    return scores(y, predict(model, X, batch_size, amp_dtype))


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every RNG a training run draws from, in a form `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])],
             "generator": generator.get_state() if generator is not None else None,
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x
