"""Logistic regression (BARS "LR"): ``logit = b + sum_f w[x_f]``, the first-order term alone.

Parameters: ``sum(vocab) + 1``.
"""
from __future__ import annotations

import torch

from ctrkit.models import layers
from ctrkit.models.base import CTRModel


class LR(CTRModel):
    name = "LR"

    def __init__(self, fields):
        super().__init__(fields, {})
        self.lr = layers.LinearTerm(self.field_sizes, use_bias=True)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self.check_input(X)
        return self.lr(X).float()  # float32 logits also under autocast
