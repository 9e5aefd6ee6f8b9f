"""Metrics of a run computed on its own device: the CTR scores (ROC AUC, logloss) and the training speed.

AUC and logloss equal scikit-learn's `roc_auc_score` / `log_loss` on the same predictions (tested to
1e-6), without moving millions of predictions to the host. The speed (`throughput`): samples/s and,
on CUDA, the model FLOPs per second as a share of the chip's measured matrix rate (`mfu`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F_
from torch import nn
from torch.overrides import TorchFunctionMode

from ctrkit.core.utils import CtrkitError

__all__ = ["auc", "logloss", "METRICS", "forward_flops_per_sample", "matmul_peak", "throughput"]


def _flat(y, p) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.as_tensor(y).reshape(-1)
    p = torch.as_tensor(p).reshape(-1)
    if y.numel() != p.numel():
        raise CtrkitError(f"metrics: {y.numel()} labels but {p.numel()} predictions")
    if y.numel() == 0:
        raise CtrkitError("metrics: no samples to score")
    if p.device != y.device:
        y = y.to(p.device)
    # one reduction per call (an evaluation, not a step): a label of 2 or NaN would score silently
    bad = (y != 0) & (y != 1)
    if bool(bad.any()):
        raise CtrkitError(f"metrics: labels must be 0 or 1, found {y[bad][0].item()}")
    return y, p


def auc(y, p) -> float:
    """ROC AUC as the Mann-Whitney statistic with tied scores counted 1/2 (= sklearn's trapezoids).

    One sort plus integer cumulative sums: the pair counts are exact in int64, so the only rounding
    is the final float64 division. A NaN prediction makes it NaN, as it makes the logloss (a sort
    would rank NaN highest and score it; then the tracker's non-finite check would not see it).
    """
    y, p = _flat(y, p)
    if p.is_floating_point() and bool(torch.isnan(p).any()):
        return float("nan")
    ps, order = torch.sort(p)
    pos = (y[order] > 0.5).to(torch.int64)
    n = pos.numel()
    n_pos = int(pos.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise CtrkitError(f"AUC is undefined: all {n} labels are {'1' if n_neg == 0 else '0'}")
    # Groups of equal scores: positives inside each group and negatives ranked strictly below it.
    _, counts = torch.unique_consecutive(ps, return_counts=True)
    ends = torch.cumsum(counts, 0) - 1
    cum_pos = torch.cumsum(pos, 0)[ends]
    pos_in = torch.diff(cum_pos, prepend=cum_pos.new_zeros(1))
    neg_in = counts - pos_in
    neg_below = torch.cumsum(neg_in, 0) - neg_in
    # 2 * (pairs ranked right + 0.5 * tied pairs), kept integral.
    twice = 2 * (pos_in * neg_below).sum() + (pos_in * neg_in).sum()
    return float(twice.to(torch.float64) / (2.0 * n_pos * n_neg))


def logloss(y, p) -> float:
    """Mean binary cross-entropy of probabilities p, clipped like sklearn to [eps, 1-eps] of p's dtype."""
    y, p = _flat(y, p)
    if bool(((p < 0) | (p > 1)).any()):  # NaN passes: a diverged model's NaN logloss is seen by the tracker
        raise CtrkitError(f"logloss: predictions must be probabilities in [0, 1] (logits? apply a sigmoid), "
                          f"found {p[(p < 0) | (p > 1)][0].item():g}")
    eps = torch.finfo(p.dtype).eps if p.is_floating_point() else torch.finfo(torch.float64).eps
    p64 = p.to(torch.float64).clamp(eps, 1.0 - eps)
    y64 = y.to(torch.float64)
    loss = -(y64 * torch.log(p64) + (1.0 - y64) * torch.log1p(-p64)).mean()
    return float(loss)


METRICS = {"auc": auc, "logloss": logloss}


# ---------------------------------------------------------------- training speed


def forward_flops_per_sample(model: nn.Module, X: torch.Tensor, rows: int = 8) -> float:
    """Matrix FLOPs of one forward pass per sample: every matrix product's ``2 x (output elements)
    x (inner dimension)`` (linear layers, ``mm``, ``bmm``, ``matmul``/``@``, ``addmm``, ``baddbmm``;
    embedding gathers and element-wise ops count nothing; the same total as torch's FlopCounterMode,
    tested) over `rows` rows of X, in eval mode and without gradients, so no weight, gradient or
    random stream is touched. Training a peer costs about 3x this (forward, and the backward's two
    products per matmul). Counted at the Python level (a ``TorchFunctionMode``), not the dispatcher:
    FlopCounterMode imports torch._dynamo on first use (~0.9 s of CPU), once in every notebook
    kernel that orders a grid's runs by cost."""
    xb, was = X[:rows], model.training
    counter = _MatmulFlops()
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(xb)
    finally:
        model.train(was)
    return counter.flops / max(1, xb.shape[0])


class _MatmulFlops(TorchFunctionMode):
    """Sums ``2 x out.numel() x K`` over the matrix products called while active (K: the left
    operand's last dimension; the positional indices of the two operands per function below). Products
    with a 1-D operand (matrix-vector, dot) count nothing, as in FlopCounterMode."""

    OPERANDS = {**dict.fromkeys((F_.linear, torch.mm, torch.bmm, torch.matmul, torch.Tensor.mm, torch.Tensor.bmm,
                                 torch.Tensor.matmul, torch.Tensor.__matmul__), (0, 1)),
                torch.Tensor.__rmatmul__: (1, 0),
                **dict.fromkeys((torch.addmm, torch.Tensor.addmm, torch.baddbmm, torch.Tensor.baddbmm), (1, 2))}

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        operands = self.OPERANDS.get(func)
        if operands is not None and len(args) > max(operands):
            a, b = (args[i] for i in operands)
            if a.dim() >= 2 and b.dim() >= 2:
                self.flops += 2 * out.numel() * a.shape[-1]
        return out


@functools.lru_cache(maxsize=None)
def matmul_peak(device: str, dtype: str = "bf16", n: int = 8192, reps: int = 10) -> float:
    """The FLOP/s of an n x n x n matmul on a CUDA `device` in `dtype` (bf16, or fp32 as the run's
    TF32 setting allows): the chip's practical matrix rate, measured once per process (~20 ms on an
    H200). Constant inputs: no random stream is drawn."""
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.full((n, n), 0.5, device=device, dtype=dt)
    b = torch.full((n, n), 0.25, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    end.synchronize()
    return 2.0 * n ** 3 * reps / (start.elapsed_time(end) / 1000.0)


def throughput(samples_per_s: float | None, flops_per_sample: float | None, peak: float | None) -> dict:
    """A result's speed fields: samples/s, and where the FLOPs and the peak are known (CUDA) the
    model FLOPs per sample, the peak in TFLOP/s and `mfu` = samples/s x FLOPs per sample / peak."""
    out = {"samples_per_s": samples_per_s}
    if flops_per_sample and peak:
        out.update(model_flops_per_sample=flops_per_sample, matmul_peak_tflops=peak / 1e12,
                   mfu=(samples_per_s or 0.0) * flops_per_sample / peak)
    return out
