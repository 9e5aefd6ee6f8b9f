"""Deep & Cross Network v1 (Wang et al., ADKDD 2017), as in FuxiCTR ``DCN``: the flattened
embeddings ``x0`` (size D = F*d) go through a cross network and, in parallel, an MLP; their
outputs are concatenated and a final Linear gives the logit. With ``hidden_units=[]`` only the
cross network is used.

Parameters (V = sum(vocab), D = F*d, L_c = num_cross_layers, last hidden h_L, no batch norm):
``V*d + 2*D*L_c + MLP(D -> h_1 .. h_L, hidden layers only) + (D + h_L) + 1``.
"""
from __future__ import annotations

import torch

from ctrkit.models import layers
from ctrkit.models.base import CTRModel, check_deep_args, check_int


class DCN(CTRModel):
    name = "DCN"

    def __init__(self, fields, embedding_dim: int = 10, hidden_units=(64, 64, 64),
                 hidden_activations: str = "ReLU", net_dropout: float = 0.0, batch_norm: bool = False,
                 num_cross_layers: int = 3):
        hidden_units = check_deep_args(embedding_dim, hidden_units, hidden_activations, net_dropout, batch_norm)
        check_int("num_cross_layers", num_cross_layers, 0)
        super().__init__(fields, dict(embedding_dim=embedding_dim, hidden_units=hidden_units,
                                      hidden_activations=hidden_activations, net_dropout=net_dropout,
                                      batch_norm=batch_norm, num_cross_layers=num_cross_layers))
        input_dim = self.num_fields * embedding_dim
        self.embedding = layers.FeatureEmbedding(self.field_sizes, embedding_dim)
        self.cross = layers.CrossNet(input_dim, num_cross_layers)
        # output_dim=None: the DNN tower ends at its last hidden layer (concatenated with the cross output)
        self.mlp = (layers.MLP(input_dim, hidden_units, hidden_activations, net_dropout, batch_norm)
                    if hidden_units else None)
        self.fc = torch.nn.Linear(input_dim + (hidden_units[-1] if hidden_units else 0), 1)
        layers.reset_parameters(self)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self.check_input(X)
        x0 = self.embedding(X).flatten(1)  # [B, F*d]
        out = self.cross(x0)
        if self.mlp is not None:
            out = torch.cat([out, self.mlp(x0)], dim=1)
        return self.fc(out).squeeze(-1).float()  # float32 logits also under autocast
