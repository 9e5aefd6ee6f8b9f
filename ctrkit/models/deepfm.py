"""DeepFM (Guo et al., IJCAI 2017), as in FuxiCTR ``DeepFM`` (behind the BARS numbers):
``logit = LR(x) + FM(E) + MLP(flatten(E))`` -- the FM and the DNN share one embedding table.

Parameters (V = sum(vocab), F fields, d = embedding_dim, units h_1..h_L, no batch norm):
``V*d + V + 1`` (embedding, first-order weights, bias) ``+ MLP(F*d -> h_1 .. h_L -> 1)``
where an MLP has ``sum(in*out + out)`` per Linear and ``2*h`` per batch-norm layer.
"""
from __future__ import annotations

import torch

from ctrkit.models import layers
from ctrkit.models.base import CTRModel, check_deep_args


class DeepFM(CTRModel):
    name = "DeepFM"

    def __init__(self, fields, embedding_dim: int = 10, hidden_units=(64, 64, 64),
                 hidden_activations: str = "ReLU", net_dropout: float = 0.0, batch_norm: bool = False):
        hidden_units = check_deep_args(embedding_dim, hidden_units, hidden_activations, net_dropout, batch_norm)
        super().__init__(fields, dict(embedding_dim=embedding_dim, hidden_units=hidden_units,
                                      hidden_activations=hidden_activations, net_dropout=net_dropout,
                                      batch_norm=batch_norm))
        self.embedding = layers.FeatureEmbedding(self.field_sizes, embedding_dim)
        self.lr = layers.LinearTerm(self.field_sizes, use_bias=True)
        self.fm = layers.FMInteraction()
        self.mlp = layers.MLP(self.num_fields * embedding_dim, hidden_units, hidden_activations,
                              net_dropout, batch_norm, output_dim=1)
        layers.reset_parameters(self)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self.check_input(X)
        emb = self.embedding(X)  # [B, F, d]
        return (self.lr(X) + self.fm(emb) + self.mlp(emb.flatten(1)).squeeze(-1)).float()  # float32 under autocast
