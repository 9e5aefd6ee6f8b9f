import math

import pytest
import torch
import torch.nn.functional as F

from ctrkit.training.losses import mutual_losses, peer_loss, warmup_weight
from ctrkit.core.utils import CtrkitError


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def _hand_loss(logits, labels, n, weight, divergence):
    """L_n computed element by element with explicit loops, in float64 Python arithmetic."""
    N, B = len(logits), len(labels)
    bce = -sum(labels[b] * math.log(_sig(logits[n][b])) + (1 - labels[b]) * math.log(1 - _sig(logits[n][b]))
               for b in range(B)) / B
    total = 0.0
    for i in range(N):
        if i == n:
            continue
        acc = 0.0
        for b in range(B):
            q, p = _sig(logits[i][b]), _sig(logits[n][b])
            if divergence == "mse":
                acc += (q - p) ** 2
            else:
                acc += q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
        total += acc / B
    return bce + weight / (N - 1) * total


@pytest.mark.parametrize("N", [2, 3, 4])
@pytest.mark.parametrize("divergence", ["mse", "kl"])
@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_values_match_hand_computed_formula(N, divergence, weight):
    g = torch.Generator().manual_seed(N * 7 + int(weight * 10))
    B = 9
    logits = torch.randn(N, B, generator=g, dtype=torch.float64) * 2
    labels = (torch.rand(B, generator=g) < 0.4).double()
    losses = mutual_losses(list(logits), labels, weight=weight, divergence=divergence)
    assert len(losses) == N
    for n in range(N):
        want = _hand_loss(logits.tolist(), labels.tolist(), n, weight, divergence)
        assert losses[n].item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_stacked_tensor_input_equals_list_input():
    logits = torch.randn(3, 16)
    labels = (torch.rand(16) < 0.5).float()
    a = mutual_losses(logits, labels)
    b = mutual_losses(list(logits), labels)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_two_peers_reduce_to_pairwise_formula():
    z1, z2 = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    y = (torch.rand(32) < 0.3).double()
    l1, l2 = mutual_losses([z1, z2], y, weight=1.0)
    p1, p2 = torch.sigmoid(z1), torch.sigmoid(z2)
    torch.testing.assert_close(l1, F.binary_cross_entropy(p1, y) + ((p2 - p1) ** 2).mean())
    torch.testing.assert_close(l2, F.binary_cross_entropy(p2, y) + ((p1 - p2) ** 2).mean())


def test_no_gradient_flows_through_partner_targets():
    z = [torch.randn(8, requires_grad=True) for _ in range(3)]
    y = (torch.rand(8) < 0.5).float()
    losses = mutual_losses(z, y, weight=2.0)
    # L_0 depends on z_0 only: the partners' probabilities are targets.
    g = torch.autograd.grad(losses[0], z, allow_unused=True, retain_graph=True)
    assert g[0] is not None and g[0].abs().sum() > 0
    assert g[1] is None and g[2] is None
    # the same through summing all losses: each z_n's gradient equals that of its own loss only
    total = torch.autograd.grad(sum(losses), z)
    for n in range(3):
        own = torch.autograd.grad(mutual_losses(z, y, weight=2.0)[n], z[n])[0]
        torch.testing.assert_close(total[n], own)


def test_gradient_of_mse_term_matches_analytic():
    z1 = torch.randn(5, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, dtype=torch.float64)
    y = torch.zeros(5, dtype=torch.float64)
    (l1, _) = mutual_losses([z1, z2], y, weight=1.0)
    (g,) = torch.autograd.grad(l1, z1)
    p1, p2 = torch.sigmoid(z1.detach()), torch.sigmoid(z2)
    # d/dz [ BCE ] = (p - y)/B ; d/dz [ mean (p2 - p1)^2 ] = -2 (p2 - p1) p1 (1 - p1) / B
    want = (p1 - y) / 5 + (-2 * (p2 - p1) * p1 * (1 - p1)) / 5
    torch.testing.assert_close(g, want)


def test_weight_zero_is_exactly_bce():
    z = torch.randn(3, 10)
    y = (torch.rand(10) < 0.5).float()
    for n, loss in enumerate(mutual_losses(z, y, weight=0.0)):
        assert torch.equal(loss, F.binary_cross_entropy_with_logits(z[n], y))


def test_single_peer_is_bce_and_kl_is_finite_when_saturated():
    z = torch.tensor([40.0, -40.0, 0.0])
    y = torch.tensor([1.0, 0.0, 1.0])
    (l,) = mutual_losses([z], y)
    assert torch.equal(l, F.binary_cross_entropy_with_logits(z, y))
    others = torch.tensor([[1.0, 0.0, 0.5]])
    assert torch.isfinite(peer_loss(z, y, others, 1.0, "kl"))


def test_bad_arguments_raise_clear_errors():
    z, y = torch.randn(2, 4), torch.ones(4)
    with pytest.raises(CtrkitError, match="weight"):
        mutual_losses(z, y, weight=-0.5)
    with pytest.raises(CtrkitError, match="divergence.*mse, kl"):
        mutual_losses(z, y, divergence="l1")


def test_warmup_is_linear_then_constant():
    assert [warmup_weight(2.0, s, 4) for s in (0, 1, 2, 4, 10)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert warmup_weight(2.0, 0, 0) == 2.0


# ---------------------------------------------------------------- the group rules (ensemble teacher, EKTF)

from ctrkit.training.losses import (GROUP_RULES, ektf_loss, ektf_weights, ensemble_teacher_loss,  # noqa: E402
                                    examination_scores)


def _bce(z, y):
    return -sum(yb * math.log(_sig(zb)) + (1 - yb) * math.log(1 - _sig(zb)) for zb, yb in zip(z, y)) / len(y)


def test_ensemble_teacher_equals_its_formula_on_hand_numbers():
    z = [0.0, 1.0]                              # this peer's logits: p = 0.5, 0.7311
    y = [1.0, 0.0]
    probs = torch.tensor([[0.5, _sig(1.0)], [0.9, 0.2], [0.1, 0.3]], dtype=torch.float64)  # own first
    teacher = [(0.5 + 0.9 + 0.1) / 3, (_sig(1.0) + 0.2 + 0.3) / 3]
    mse = ((teacher[0] - 0.5) ** 2 + (teacher[1] - _sig(1.0)) ** 2) / 2
    got = ensemble_teacher_loss(torch.tensor(z, dtype=torch.float64), torch.tensor(y, dtype=torch.float64),
                                probs, weight=2.0)
    assert got.item() == pytest.approx(_bce(z, y) + 2.0 * mse, rel=1e-12)
    kl = sum(q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
             for q, p in zip(teacher, [0.5, _sig(1.0)])) / 2
    got = ensemble_teacher_loss(torch.tensor(z, dtype=torch.float64), torch.tensor(y, dtype=torch.float64),
                                probs, weight=0.5, divergence="kl")
    assert got.item() == pytest.approx(_bce(z, y) + 0.5 * kl, rel=1e-12)


def test_examination_scores_and_ektf_weights_on_hand_numbers():
    y = torch.tensor([1.0, 0.0], dtype=torch.float64)
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.6, 0.6]], dtype=torch.float64)
    s = examination_scores(probs, y)
    assert s.tolist() == pytest.approx([0.5, 0.9, 0.5])          # mean(1 - |y - p|)
    a, b = ektf_weights(s)
    e = [math.exp(-v) for v in (0.5, 0.9, 0.5)]
    assert a.item() == pytest.approx(3 * e[0] / sum(e))           # N * softmin(s)_own
    d = [math.exp(0.9 - 0.5), math.exp(0.5 - 0.5)]
    assert b.tolist() == pytest.approx([d[0] / sum(d), d[1] / sum(d)])   # softmax(s_j - s_own)
    assert b.sum().item() == pytest.approx(1.0)
    # the teacher weights of the N peers (each its own first) sum to N; equal scores give 1 each
    total = sum(ektf_weights(torch.roll(s, -k))[0].item() for k in range(3))
    assert total == pytest.approx(3.0)
    assert ektf_weights(torch.full((4,), 0.7, dtype=torch.float64))[0].item() == pytest.approx(1.0)


def test_ektf_equals_its_formula_on_hand_numbers():
    z = [0.0, 2.0]
    y = [1.0, 0.0]
    p = [0.5, _sig(2.0)]
    probs = torch.tensor([p, [0.9, 0.1], [0.6, 0.6]], dtype=torch.float64)
    s = [1 - (abs(1 - p[0]) + abs(0 - p[1])) / 2, 0.9, 0.5]
    e = [math.exp(-v) for v in s]
    a = 3 * e[0] / sum(e)
    d = [math.exp(s[1] - s[0]), math.exp(s[2] - s[0])]
    b = [d[0] / sum(d), d[1] / sum(d)]
    pbar = [(p[0] + 0.9 + 0.6) / 3, (p[1] + 0.1 + 0.6) / 3]
    mse = lambda q: sum((qb - pb) ** 2 for qb, pb in zip(q, p)) / 2  # noqa: E731
    want = _bce(z, y) + 0.7 * (a * mse(pbar) + b[0] * mse([0.9, 0.1]) + b[1] * mse([0.6, 0.6]))
    got = ektf_loss(torch.tensor(z, dtype=torch.float64), torch.tensor(y, dtype=torch.float64), probs, weight=0.7)
    assert got.item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("rule", GROUP_RULES)
def test_group_rules_learn_from_detached_targets_only(rule):
    z = torch.randn(8, dtype=torch.float64, requires_grad=True)
    others = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(8) < 0.5).double()
    probs = torch.cat([torch.sigmoid(z.detach()).unsqueeze(0), torch.sigmoid(others).detach()])
    loss = peer_loss(z, y, probs, 1.0, "mse", rule)
    loss.backward()
    assert z.grad is not None and others.grad is None and not probs.requires_grad


@pytest.mark.parametrize("rule", GROUP_RULES)
def test_group_rules_with_one_peer_or_weight_zero_are_plain_bce(rule):
    z = torch.randn(16)
    y = (torch.rand(16) < 0.5).float()
    bce = F.binary_cross_entropy_with_logits(z, y)
    assert torch.equal(peer_loss(z, y, torch.sigmoid(z).unsqueeze(0), 1.0, "mse", rule), bce)
    assert torch.equal(peer_loss(z, y, torch.rand(3, 16), 0.0, "kl", rule), bce)
    assert torch.equal(peer_loss(z, y, torch.empty(0, 16), 1.0, "mse", rule), bce)


def test_mutual_losses_group_rule_puts_each_peer_first():
    logits = torch.randn(3, 10, dtype=torch.float64)
    y = (torch.rand(10) < 0.4).double()
    got = mutual_losses(logits, y, weight=1.0, rule="ektf")
    probs = torch.sigmoid(logits)
    for n in range(3):
        own_first = torch.cat([probs[n:n + 1], probs[:n], probs[n + 1:]])
        assert torch.equal(got[n], ektf_loss(logits[n], y, own_first, 1.0))
