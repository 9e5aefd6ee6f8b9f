"""FiBiNET (Huang et al., RecSys 2019), as in FuxiCTR ``FiBiNET``: SENET re-weights the field
embeddings; one bilinear layer acts on the original embeddings (p) and a second, separate one on
the SENET embeddings (q); ``flatten(cat(p, q))`` (2*P*d values, P = F*(F-1)/2) feeds the MLP, and a
bias-free first-order term is added: ``logit = LR(x) + MLP(...)``.

Parameters (V = sum(vocab), r = max(1, int(F / reduction_ratio)), no batch norm):
``V*d + V + 2*F*r + 2*n_W*d*d + MLP(2*P*d -> h_1 .. h_L -> 1)`` with n_W = 1 (field_all),
F (field_each) or P (field_interaction).
"""
from __future__ import annotations

import math

import torch

from ctrkit.models import layers
from ctrkit.models.base import CTRModel, check_activation, check_deep_args
from ctrkit.core.utils import CtrkitError, as_number


class FiBiNET(CTRModel):
    name = "FiBiNET"

    def __init__(self, fields, embedding_dim: int = 10, hidden_units=(64, 64, 64),
                 hidden_activations: str = "ReLU", net_dropout: float = 0.0, batch_norm: bool = False,
                 reduction_ratio: float = 3, bilinear_type: str = "field_interaction",
                 excitation_activation: str = "ReLU"):
        hidden_units = check_deep_args(embedding_dim, hidden_units, hidden_activations, net_dropout, batch_norm)
        check_activation("excitation_activation", excitation_activation)
        if as_number(reduction_ratio) is None or not 0 < reduction_ratio < math.inf:  # NaN fails too
            raise CtrkitError(f"hyperparameter reduction_ratio must be a positive number, got {reduction_ratio!r}")
        if bilinear_type not in layers.BILINEAR_TYPES:
            raise CtrkitError(f"hyperparameter bilinear_type must be one of {list(layers.BILINEAR_TYPES)}, "
                              f"got {bilinear_type!r}")
        super().__init__(fields, dict(embedding_dim=embedding_dim, hidden_units=hidden_units,
                                      hidden_activations=hidden_activations, net_dropout=net_dropout,
                                      batch_norm=batch_norm, reduction_ratio=reduction_ratio,
                                      bilinear_type=bilinear_type, excitation_activation=excitation_activation))
        F = self.num_fields
        self.embedding = layers.FeatureEmbedding(self.field_sizes, embedding_dim)
        self.senet = layers.SENet(F, reduction_ratio, excitation_activation)
        self.bilinear_p = layers.Bilinear(F, embedding_dim, bilinear_type)
        self.bilinear_q = layers.Bilinear(F, embedding_dim, bilinear_type)
        self.pair_cat = layers.BilinearCat()  # no state: p and q side by side
        self.lr = layers.LinearTerm(self.field_sizes, use_bias=False)
        self.mlp = layers.MLP(F * (F - 1) * embedding_dim, hidden_units, hidden_activations,
                              net_dropout, batch_norm, output_dim=1)
        layers.reset_parameters(self)
        # reset_parameters re-inits every nn.Linear incl. SENET's, as FuxiCTR does; bilinear keeps its own

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self.check_input(X)
        emb = self.embedding(X)  # [B, F, d]
        pq = self.pair_cat([(self.bilinear_p, emb), (self.bilinear_q, self.senet(emb))])  # [B, 2P, d]
        return (self.lr(X) + self.mlp(pq.flatten(1)).squeeze(-1)).float()  # MLP input [B, 2*P*d]
