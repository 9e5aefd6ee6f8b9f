"""The peers' losses, peer by peer: the mutual-learning loss (Yilmaz & Aldemir, eq. 1) and its relatives.

Peer n minimises  L_n = BCE(y, p_n) + w/(N-1) * sum_{i != n} D(p_i, p_n),  p = sigmoid(logit),
with D = mean squared difference (the paper) or the Bernoulli KL(p_i || p_n) of deep mutual learning.
The other peers' p_i are targets: they are detached, so no gradient reaches a peer through
another peer's loss.

Two relatives learn from the whole group instead (`peer_loss(..., rule=...)`, every rule a pure
function of this peer's logits, the labels and the group's detached probabilities):
- `ensemble_teacher`: L_n = BCE(y, p_n) + w * D(pbar, p_n), pbar = the mean of all N peers' p (itself included);
- `ektf` (EKTF/KDEF, Li et al., arXiv 2411.16122): the ensemble teacher plus the peers, each term
  weighted by the peers' examination scores (`ektf_weights`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ctrkit.core.utils import CtrkitError, did_you_mean

DIVERGENCES = ("mse", "kl")
# The rules that learn from every peer of the run: their targets are all N peers' probabilities,
# this peer's own first (`ctrkit.training.mutual.teachers` orders them so).
GROUP_RULES = ("ensemble_teacher", "ektf")


def check_weight(weight: float) -> None:
    if not (weight >= 0 and math.isfinite(weight)):  # also rejects NaN
        raise CtrkitError(f"mutual weight must be >= 0 and finite, got {weight!r}")


def check_divergence(divergence: str) -> None:
    if divergence not in DIVERGENCES:
        raise CtrkitError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}"
                          f"{did_you_mean(divergence, DIVERGENCES)}")


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
    rule: str = "mutual",
) -> torch.Tensor:
    """L_n for one peer: BCE on its own logits + weight/(N-1) * sum of divergences to its partners.

    `others_probs` [N-1, B] must already be detached; with N-1 == 0 or weight == 0 this is the
    plain BCE (bit-identical to independent training: the mutual term is not even computed).
    `rule` is the run's mode: `ensemble_teacher` and `ektf` read `others_probs` as every peer's
    probabilities [N, B], this peer's own first (`ensemble_teacher_loss`, `ektf_loss`); any other
    mode (mutual, kd, alone) is the formula above.
    """
    if rule in GROUP_RULES:
        return (ektf_loss if rule == "ektf" else ensemble_teacher_loss)(own_logits, labels, others_probs, weight,
                                                                       divergence)
    bce = F.binary_cross_entropy_with_logits(own_logits, labels)
    n_others = others_probs.shape[0]
    if n_others == 0 or weight == 0:
        return bce
    return bce + weight / n_others * divergence_to(own_logits, others_probs, divergence).sum()


def ensemble_teacher_loss(own_logits: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor,
                          weight: float = 1.0, divergence: str = "mse") -> torch.Tensor:
    """The ensemble as the teacher:  L_n = BCE(y, p_n) + w * D(pbar, p_n),  pbar = (1/N) sum_i p_i.

    `probs` [N, B]: every peer's detached probabilities, this peer's first (it is part of the mean,
    as in EKTF). With one peer (pbar = p_n: nothing to learn) or weight 0 this is the plain BCE,
    bit-identical to training alone.
    """
    bce = F.binary_cross_entropy_with_logits(own_logits, labels)
    if probs.shape[0] < 2 or weight == 0:
        return bce
    teacher = probs.mean(dim=0, keepdim=True)
    return bce + weight * divergence_to(own_logits, teacher, divergence).sum()


def examination_scores(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EKTF's examination: each peer's score on the batch, s_i = mean_b (1 - |y_b - p_ib|); `probs` [N, B] -> [N]."""
    return 1.0 - (labels.to(probs.dtype).unsqueeze(0) - probs).abs().mean(dim=1)


def ektf_weights(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Peer 0's weights from the group's examination scores `scores` [N] (peer 0 = this peer):

    - teacher weight  a_0 = N * softmin(s)_0 = N * exp(-s_0) / sum_i exp(-s_i)  (the weaker peer is
      taught more; the a_i of the N peers sum to N, so equal scores give each peer weight 1);
    - peer weights  b_j = softmax_j(s_j - s_0) over j != 0 (learn more from the peers that scored
      better; they sum to 1).

    This is the reference implementation's normalisation (github.com/salmon1802/EKTF, src/EKTF.py):
    its one joint loss  mean_n BCE_n + sum_n softmin(s)_n D(T, p_n) + mean_n sum_j b_nj D(p_j, p_n)
    is (1/N) sum_n L_n with the per-peer L_n of `ektf_loss`."""
    n = scores.shape[0]
    teacher = n * torch.softmax(-scores, dim=0)[0]
    peers = torch.softmax(scores[1:] - scores[0], dim=0)
    return teacher, peers


def ektf_loss(own_logits: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, weight: float = 1.0,
              divergence: str = "mse") -> torch.Tensor:
    """EKTF (Li et al., arXiv 2411.16122), peer n:

        L_n = BCE(y, p_n) + w * ( a_n * D(pbar, p_n) + sum_{j != n} b_nj * D(p_j, p_n) ),

    pbar the mean of all N peers' probabilities, a_n and b_nj the examination weights of
    `ektf_weights` from the batch's scores; w = 1 is the paper's loss. `probs` [N, B]: every peer's
    detached probabilities, this peer's own first. Choices where ctrkit differs from the reference
    code, both so that the rule stays a function of detached targets: the weights are computed from
    the detached probabilities (coefficients, no gradient flows through them; the reference lets the
    own score carry one), and the teacher is the mean probability (the ensemble ctrkit evaluates;
    the reference takes the sigmoid of the mean logit). With one peer or weight 0: the plain BCE.
    """
    bce = F.binary_cross_entropy_with_logits(own_logits, labels)
    if probs.shape[0] < 2 or weight == 0:
        return bce
    teacher_w, peer_w = ektf_weights(examination_scores(probs, labels))
    d_teacher = divergence_to(own_logits, probs.mean(dim=0, keepdim=True), divergence)[0]
    d_peers = divergence_to(own_logits, probs[1:], divergence)
    return bce + weight * (teacher_w * d_teacher + (peer_w * d_peers).sum())


def mutual_losses(
    logits: Sequence[torch.Tensor] | torch.Tensor,
    labels: torch.Tensor,
    weight: float = 1.0,
    divergence: str = "mse",
    rule: str = "mutual",
) -> list[torch.Tensor]:
    """One scalar loss per peer for a batch that fed every peer: `logits` is N tensors of shape [B]
    (or one [N, B] tensor), `labels` [B] in {0, 1}; `rule` as in `peer_loss` (mutual or a group rule)."""
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
        others = torch.cat([probs[n:n + 1] if rule in GROUP_RULES else probs[:0], probs[:n], probs[n + 1:]])
        losses.append(peer_loss(own, labels, others, weight, divergence, rule))
    return losses


def warmup_weight(weight: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up of the mutual weight: 0 at step 0, `weight` from step `warmup_steps` on."""
    if warmup_steps <= 0:
        return weight
    return weight * min(1.0, step / warmup_steps)
