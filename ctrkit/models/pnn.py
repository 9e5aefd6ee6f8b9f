"""Inner-product PNN (IPNN; Qu et al., ICDM 2016), as in FuxiCTR ``PNN(product_type="inner")``:
the MLP input is the flattened embeddings concatenated with all P = F*(F-1)/2 pairwise inner
products ``<e_i, e_j>``; the MLP's output Linear gives the logit (no separate first-order term).

Parameters (V = sum(vocab), no batch norm): ``V*d + MLP(F*d + P -> h_1 .. h_L -> 1)``.
"""
from __future__ import annotations

import torch

from ctrkit.models import layers
from ctrkit.models.base import CTRModel, check_deep_args
from ctrkit.core.utils import CtrkitError


class PNN(CTRModel):
    name = "PNN"

    def __init__(self, fields, embedding_dim: int = 10, hidden_units=(64, 64, 64),
                 hidden_activations: str = "ReLU", net_dropout: float = 0.0, batch_norm: bool = False,
                 product_type: str = "inner"):
        hidden_units = check_deep_args(embedding_dim, hidden_units, hidden_activations, net_dropout, batch_norm)
        if product_type != "inner":  # FuxiCTR (and the BARS runs) implement only IPNN
            raise CtrkitError(f"hyperparameter product_type must be 'inner' (IPNN), got {product_type!r}")
        super().__init__(fields, dict(embedding_dim=embedding_dim, hidden_units=hidden_units,
                                      hidden_activations=hidden_activations, net_dropout=net_dropout,
                                      batch_norm=batch_norm, product_type=product_type))
        F = self.num_fields
        self.embedding = layers.FeatureEmbedding(self.field_sizes, embedding_dim)
        self.inner = layers.InnerProduct(F)
        self.mlp = layers.MLP(F * embedding_dim + F * (F - 1) // 2, hidden_units, hidden_activations,
                              net_dropout, batch_norm, output_dim=1)
        layers.reset_parameters(self)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self.check_input(X)
        emb = self.embedding(X)  # [B, F, d]
        return self.mlp(torch.cat([emb.flatten(1), self.inner(emb)], dim=1)).squeeze(-1).float()  # fp32 under autocast
