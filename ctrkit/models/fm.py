"""Factorization machine (Rendle 2010; FuxiCTR ``FM``):
``logit = b + sum_f w[x_f] + sum_{i<j} <e_i, e_j>``.

Parameters: ``sum(vocab) * (d + 1) + 1``.
"""
from __future__ import annotations

import torch

from ctrkit.models import layers
from ctrkit.models.base import CTRModel, check_int


class FM(CTRModel):
    name = "FM"

    def __init__(self, fields, embedding_dim: int = 10):
        check_int("embedding_dim", embedding_dim, 1)
        super().__init__(fields, {"embedding_dim": embedding_dim})
        self.embedding = layers.FeatureEmbedding(self.field_sizes, embedding_dim)
        self.lr = layers.LinearTerm(self.field_sizes, use_bias=True)
        self.fm = layers.FMInteraction()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self.check_input(X)
        return (self.lr(X) + self.fm(self.embedding(X))).float()  # float32 also under autocast
