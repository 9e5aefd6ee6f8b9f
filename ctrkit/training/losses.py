"""The mutual-learning loss (Yilmaz & Aldemir, eq. 1), peer by peer.

Peer n minimises  L_n = BCE(y, p_n) + w/(N-1) * sum_{i != n} D(p_i, p_n),  p = sigmoid(logit),
with D = mean squared difference (the paper) or the Bernoulli KL(p_i || p_n) of deep mutual learning.
The other peers' p_i are targets: they are detached, so no gradient reaches a peer through
another peer's loss.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ctrkit.core.utils import CtrkitError

DIVERGENCES = ("mse", "kl")


def check_weight(weight: float) -> None:
    if not (weight >= 0 and math.isfinite(weight)):  # also rejects NaN
        raise CtrkitError(f"mutual weight must be >= 0 and finite, got {weight!r}")


def check_divergence(divergence: str) -> None:
    if divergence not in DIVERGENCES:
        raise CtrkitError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")


def divergence_to(own_logits: torch.Tensor, others_probs: torch.Tensor, divergence: str = "mse") -> torch.Tensor:
    """Per-partner divergence of this peer from each partner, averaged over the batch: shape [N-1].

    `own_logits` [B] (carries the gradient), `others_probs` [N-1, B] (targets, no gradient).
    """
    check_divergence(divergence)
    if divergence == "mse":
        return (others_probs - torch.sigmoid(own_logits).unsqueeze(0)).pow(2).mean(dim=1)
    # Bernoulli KL(q || p) with q = partner, p = own; own log-probabilities from logsigmoid are
    # finite even for saturated logits, and xlogy makes 0*log(0) = 0 for the partner's entropy.
    q = others_probs
    log_p, log_1mp = F.logsigmoid(own_logits).unsqueeze(0), F.logsigmoid(-own_logits).unsqueeze(0)
    neg_entropy = torch.special.xlogy(q, q) + torch.special.xlogy(1 - q, 1 - q)
    cross = q * log_p + (1 - q) * log_1mp
    return (neg_entropy - cross).mean(dim=1)


def peer_loss(
    own_logits: torch.Tensor,
    labels: torch.Tensor,
    others_probs: torch.Tensor,
    weight: float = 1.0,
    divergence: str = "mse",
) -> torch.Tensor:
    """L_n for one peer: BCE on its own logits + weight/(N-1) * sum of divergences to its partners.

    `others_probs` [N-1, B] must already be detached; with N-1 == 0 or weight == 0 this is the
    plain BCE (bit-identical to independent training: the mutual term is not even computed).
    """
    bce = F.binary_cross_entropy_with_logits(own_logits, labels)
    n_others = others_probs.shape[0]
    if n_others == 0 or weight == 0:
        return bce
    return bce + weight / n_others * divergence_to(own_logits, others_probs, divergence).sum()


def mutual_losses(
    logits: Sequence[torch.Tensor] | torch.Tensor,
    labels: torch.Tensor,
    weight: float = 1.0,
    divergence: str = "mse",
) -> list[torch.Tensor]:
    """One scalar loss per peer for a batch that fed every peer: `logits` is N tensors of shape [B]
    (or one [N, B] tensor), `labels` [B] in {0, 1}."""
    check_weight(weight)
    check_divergence(divergence)
    logits = list(logits)
    if not logits:
        raise CtrkitError("mutual_losses needs at least one peer's logits")
    labels = labels.to(logits[0].dtype)
    # Targets for the partners: detached once, shared by every peer's loss.
    probs = torch.stack([torch.sigmoid(z.detach()) for z in logits])
    losses = []
    for n, own in enumerate(logits):
        others = torch.cat([probs[:n], probs[n + 1:]])
        losses.append(peer_loss(own, labels, others, weight, divergence))
    return losses


def warmup_weight(weight: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up of the mutual weight: 0 at step 0, `weight` from step `warmup_steps` on."""
    if warmup_steps <= 0:
        return weight
    return weight * min(1.0, step / warmup_steps)
