"""Evaluation: click probabilities in large batches, AUC/logloss, and the non-finite loss check."""
from __future__ import annotations

import torch
from torch import nn

from ctrkit.core.errors import CtrkitError
from ctrkit.training import metrics
from ctrkit.training.precision import amp_context

__all__ = ["NonFiniteLossError", "NonFiniteCheck", "predict", "scores", "evaluate", "looks_like_probabilities"]


class NonFiniteLossError(CtrkitError):
    """Training produced a NaN/inf loss; the message names the epoch and the step."""


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
        if epoch == 1 and step == 1:
            # the loss of the untouched init weights: no update (lr, clipping) and no checkpoint is to
            # blame, the forward is (or a teacher's: a peer's loss takes its teachers' probabilities)
            also = "" if what == "loss" else ", and those of the peers it learns from"
            raise NonFiniteLossError(f"non-finite training {what} at epoch 1, step 1, the very first step: "
                                     f"the model's output is non-finite from the start, before any update "
                                     f"(check the model's forward{also})")
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
            z = logits.float()
            # sigmoid(+-inf) is exactly 1 or 0, which would be scored as a confident valid prediction:
            # a non-finite logit becomes a NaN probability, which the metrics and trackers refuse
            out.append(torch.sigmoid(z).masked_fill_(~torch.isfinite(z), float("nan")))
        return torch.cat(out) if out else torch.empty(0, device=X.device)
    finally:
        model.train(was_training)


# a logit in [0, 1] is a probability in [0.5, sigmoid(1)] (sigmoid is monotone; float32, as `predict`'s)
_SIGMOID_ONE = float(torch.sigmoid(torch.tensor(1.0)))


def looks_like_probabilities(y: torch.Tensor, p: torch.Tensor) -> bool:
    """Whether click probabilities `p` (of labels `y`) look like a forward that returns probabilities:
    every logit in [0, 1] (every `p` in [0.5, sigmoid(1)]) while fewer than half the labels are clicks.

    A probability forward has every logit in (0, 1) by construction. A logit forward trained even one
    epoch by BCE on such data predicts a mean probability near the click rate (< 0.5), so most of
    its logits are negative; at init the built-ins' logits straddle 0 (zero biases, small weights).
    A logit model with every prediction >= 0.5 on data of a click rate < 0.5 would be miscalibrated
    beyond use anyway. NaN probabilities compare false: not flagged (they are an error of their own)."""
    if not len(p) or float(y.float().mean()) >= 0.5:
        return False
    lo, hi = torch.aminmax(p)
    return bool(lo >= 0.5) and bool(hi <= _SIGMOID_ONE)


def scores(y: torch.Tensor, p: torch.Tensor) -> dict:
    """{"auc", "logloss"} of click probabilities `p` against labels `y`, equal to sklearn's."""
    return {"auc": metrics.auc(y, p), "logloss": metrics.logloss(y, p)}


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 65536,
             amp_dtype: torch.dtype | None = None) -> dict:
    """{"auc", "logloss"} of the model on (X, y)."""
    return scores(y, predict(model, X, batch_size, amp_dtype))
