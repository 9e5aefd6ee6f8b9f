"""Replicas: K runs of one architecture on one dataset trained as one batched model per step.

Each replica is an ordinary `ctrkit.training.loop.Peer` (its own model, Adam, plateau schedule,
early stopping, best weights, checkpoint state), so everything but the step is the sequential code.
The step stacks the K models' parameters (`torch.stack`, differentiable: the gradients land on each
replica's own leaves) and runs the model once under `torch.func.vmap` (`ctrkit.kernels.for_vmap`: on
the CPU the kernels that have a vmap rule, the embedding gather and FM, else the reference maths):

    logits[k] = f(theta_k, x_k)        k = 1..K, one batched matmul / gather per layer
    L = sum_k L_k                      L_k depends on theta_k only, so dL/dtheta_k = dL_k/dtheta_k

then clips and steps each replica's optimizer alone (per-replica lr, clip norm, weight decay). A
replica that stopped early is stacked detached and not stepped: it stops changing.

Randomness is the sequential run's: replica k's batches come from its run's own generator (the
loop), and its dropout masks are drawn up front from the same stream the sequential forward draws
them from (`rng.dropout_seed`), in the order and shapes of the model's Dropout layers, then fed into
the vmapped forward (`_FedDropout`): `x * mask` is what `nn.Dropout` computes on the CPU.

Numerics: the reference maths under vmap (batched matmuls) rounds differently from the CPU kernels
of a sequential run (`ctrkit.kernels`; the vmapped gather and FM are each replica's own kernel, bit for
bit, so FM's replicas are its runs exactly): a step's gradients agree to ~1e-6 of each tensor's
largest entry. Adam divides every entry by its own running size, so the
rounding of entries near zero becomes updates of up to the lr, and over a run replicas differ from
the sequential runs as runs on two CPUs do: measured on an AVX-512 Xeon (3 epochs, smoke preset),
train losses up to 2e-4 apart and test AUCs up to 7e-4 (a few swapped pairs of near-equal scores),
against 5e-3 and more between seeds; on an AVX2 EPYC, much closer (tests/test_replicas.py states
the tolerances). On the CPU a grid trains one run at a time unless asked (`runs.default_max_replicas`).
Evaluation uses each replica's own model, exactly as the sequential run does.
Models with BatchNorm cannot be replicas (running statistics are updated in place per replica).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from ctrkit.core.errors import CtrkitError
from ctrkit.kernels import for_vmap
from ctrkit.training.rng import dropout_seed

__all__ = ["Stack", "check_replicas", "step", "replica_bytes"]



class _FedDropout(nn.Dropout):
    """nn.Dropout whose masks were drawn before the vmapped forward (one per call, in call order)."""

    masks: list = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _FedDropout.masks.pop(0)


def check_replicas(groups: Sequence[Sequence], exchange) -> None:
    """Replicas must be runs of the same peers (architecture and hyperparameters), in one process,
    without BatchNorm."""
    if exchange is not None and (exchange.replicas != 1 or exchange.n_peers != len(groups[0])):
        raise CtrkitError("replicas (several runs in one step) need every peer in this process (LocalExchange)")
    first = [(p.name, p.hparams) for p in groups[0]]
    for g in groups[1:]:
        if [(p.name, p.hparams) for p in g] != first:
            raise CtrkitError(f"replicas must share their peers' architecture: {[n for n, _ in first]} with "
                              f"{first[0][1]} vs {[(p.name, p.hparams) for p in g]}")
    for p in groups[0]:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in p.model.modules()):
            raise CtrkitError(f"{p.name}: a model with batch_norm cannot train as replicas")


class Stack:
    """One peer position of K replica runs: the template model (`for_vmap`) and its vmapped forward."""

    def __init__(self, model: nn.Module):
        self.template = for_vmap(copy.deepcopy(model), next(model.parameters()).device)
        self.dropouts = [m for m in self.template.modules() if isinstance(m, nn.Dropout)]
        for m in self.dropouts:
            m.__class__ = _FedDropout
        self.names = [n for n, q in model.named_parameters()]
        self._shapes: list | None = None

    def _mask_shapes(self, params: dict, buffers: dict, x: torch.Tensor) -> list:
        """Each Dropout call's input shape without the batch dimension, in call order (probed once)."""
        if self._shapes is None:
            shapes: list = []
            hooks = [m.register_forward_pre_hook(lambda _m, inp: shapes.append(tuple(inp[0].shape[1:])))
                     for m in self.dropouts]
            _FedDropout.masks = [x.new_ones((), dtype=torch.float32)] * len(self.dropouts) * 4
            try:
                with torch.no_grad():
                    functional_call(self.template, ({k: v[0] for k, v in params.items()}, buffers), (x[0, :2],))
            finally:
                for h in hooks:
                    h.remove()
            self._shapes = shapes
        return self._shapes

    def _masks(self, peers: Sequence, rows: int, steps: Sequence[int], seeds: Sequence[int], like: torch.Tensor):
        """[K, rows, ...] per Dropout call: replica k's masks from its sequential run's stream (the
        models call each Dropout once, in module order)."""
        per = []
        for p, step_, seed in zip(peers, steps, seeds):
            if p.training and p.drops:
                torch.manual_seed(dropout_seed(seed, step_, p.dropout_stream, p.replica))
                # what nn.Dropout draws on the CPU: empty_like(x).bernoulli_(1 - p).div_(1 - p)
                per.append([torch.empty((rows, *s), dtype=like.dtype, device=like.device)
                            .bernoulli_(1 - m.p).div_(1 - m.p) for s, m in zip(self._shapes, self.dropouts)])
            else:  # a stopped peer forwards in eval mode: no dropout
                per.append([torch.ones((rows, *s), dtype=like.dtype, device=like.device) for s in self._shapes])
        return [torch.stack([masks[i] for masks in per]) for i in range(len(self._shapes))]

    def logits(self, peers: Sequence, xb: torch.Tensor, steps: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
        """[K, b] logits of peers[k] (one per replica run) on xb[k] ([K, b, F])."""
        params = {n: torch.stack([p.model.get_parameter(n) if p.training else p.model.get_parameter(n).detach()
                                  for p in peers]) for n in self.names}
        buffers = dict(peers[0].model.named_buffers())  # index constants, shared (no BatchNorm)
        masks = []
        if self.dropouts:
            self._mask_shapes(params, buffers, xb)
            masks = self._masks(peers, xb.shape[1], steps, seeds, torch.empty(0, device=xb.device))

        def one(theta: dict, x: torch.Tensor, *m: torch.Tensor) -> torch.Tensor:
            _FedDropout.masks = list(m)
            return functional_call(self.template, (theta, buffers), (x,))

        out = vmap(one)(params, xb, *masks).float()
        _FedDropout.masks = []
        return out


def step(peers: Sequence, losses: Sequence[torch.Tensor]) -> None:
    """One backward of the summed losses, then each replica's clip and optimizer step alone."""
    for p in peers:
        p.optimizer.zero_grad(set_to_none=True)
    torch.stack(list(losses)).sum().backward()
    for p in peers:
        if p.config.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(p.params, p.config.clip_grad_norm)
        p.optimizer.step()


def replica_bytes(model: nn.Module, batch_size: int, num_fields: int) -> int:
    """Rough memory of one more replica: weights, gradients, Adam's two moments, the stacked copy and
    its gradient (6 x the parameters), plus the batch's activations (a generous 64 floats per field
    and row, 4 bytes each)."""
    params = sum(p.numel() for p in model.parameters())
    return 4 * (6 * params + 64 * batch_size * num_fields)
