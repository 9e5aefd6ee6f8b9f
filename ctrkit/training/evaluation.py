"""Evaluation: click probabilities in large batches, AUC/logloss, and the non-finite loss check."""
from __future__ import annotations

import torch
from torch import nn

from ctrkit.core.errors import CtrkitError
from ctrkit.training import metrics
from ctrkit.training.precision import amp_context

__all__ = ["NonFiniteLossError", "NonFiniteCheck", "predict", "scores", "evaluate"]


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
