"""Which BLAS runs the MLPs' fp32 matrix products on the CPU: torch's MKL, or numpy's OpenBLAS.

Why: torch's CPU wheels do their fp32 GEMMs in Intel MKL, which on AMD CPUs takes a generic AVX2
path; numpy's wheels ship OpenBLAS, whose kernels are tuned for AMD Zen too. On an AMD Zen 3 CPU
OpenBLAS ran FiBiNET's 23,712 -> 400 first layer's three products faster than MKL, and with them the
training step (``bench/ab_code.py --floor``; the numbers are in ``bench/results/``); on the narrow
layers of the other models it did not, so only wide layers use it. On Intel CPUs MKL is the fast
one, so it stays there.

``CTRKIT_CPU_BLAS`` chooses: ``auto`` (default: OpenBLAS on x86 CPUs that are not Intel's, when
numpy's BLAS is OpenBLAS), ``torch`` or ``openblas``. The choice is recorded with every result
(``env.cpu_blas``); the same choice on the same CPU gives the same result for the same seed, for any
thread count (see ``_mm``). bf16 autocast, float64 and every device but the CPU keep torch's
``F.linear``.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F_

from ctrkit.core.utils import CtrkitError, cpuinfo

CHOICES = ("auto", "torch", "openblas")
_BACKEND: str | None = None
_POOL = None  # threadpoolctl's handle on numpy's OpenBLAS, kept at 1 thread (see _mm)
_WORKERS: ThreadPoolExecutor | None = None  # runs _mm's blocks at once; None: one thread
_N_WORKERS = 0
_BLOCK = 1024  # most rows or columns per block (see _block_size)
_SMALL = 1 << 24  # multiply-adds below which torch's product is as fast (measured)
_THIN = 32  # a dimension below which torch's product is faster (e.g. the output layer's [B, 1])
# layers narrower than this stay in torch: in a training step OpenBLAS tied or lost on DeepFM's and
# DCN's 624 -> 400 layers (0.87-0.90x, bench/results/*cpublas-ab*) and won on FiBiNET's
# 23,712 -> 400 and 14,820 -> 64 first layers
_WIDE = 4096


def _cpu_vendor() -> str:
    return cpuinfo("vendor_id") or ""


def _numpy_openblas():
    """threadpoolctl's controller of the OpenBLAS libraries loaded (numpy's among them), or None when
    numpy's BLAS is not OpenBLAS (or threadpoolctl is missing: a bare GPU machine runs without it)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None

    blas = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {}).get("name", "")
    pool = ThreadpoolController().select(internal_api="openblas")
    return pool if "openblas" in str(blas).lower() and pool.lib_controllers else None


def backend() -> str:
    """``"openblas"`` or ``"torch"``: the BLAS of the MLPs' fp32 CPU products (decided once)."""
    global _BACKEND, _POOL
    if _BACKEND is None:
        choice = os.environ.get("CTRKIT_CPU_BLAS", "auto").strip().lower() or "auto"
        if choice not in CHOICES:
            raise CtrkitError(f"CTRKIT_CPU_BLAS: expected one of {', '.join(CHOICES)}, got {choice!r}")
        wanted = choice == "openblas" or (choice == "auto" and _cpu_vendor() not in ("GenuineIntel", ""))
        pool = _numpy_openblas() if wanted else None
        if choice == "openblas" and pool is None:
            raise CtrkitError("CTRKIT_CPU_BLAS=openblas: numpy here is not linked to OpenBLAS")
        _BACKEND, _POOL = ("openblas", pool) if pool is not None else ("torch", None)
        if pool is not None:
            for lib in pool.lib_controllers:
                lib.set_num_threads(1)
            _resize(torch.get_num_threads())
    return _BACKEND


def set_threads(n: int) -> None:
    """How many products run at once (kept equal to torch's thread count, set where torch's is)."""
    if backend() == "openblas":  # decided (and CTRKIT_CPU_BLAS checked) when a run starts
        _resize(max(1, int(n)))


def _resize(n: int) -> None:
    global _WORKERS, _N_WORKERS
    if n == _N_WORKERS:
        return
    if _WORKERS is not None:
        _WORKERS.shutdown(wait=True)
    _WORKERS = ThreadPoolExecutor(n, thread_name_prefix="ctrkit-blas") if n > 1 else None
    _N_WORKERS = n


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; on CPU in fp32 outside autocast, for a wide layer (``_WIDE``
    inputs or outputs) with the OpenBLAS backend, its three products (forward, input and weight
    gradients) run in numpy's OpenBLAS; otherwise a batch-major-strided input (``[B, in]`` with batch
    stride 1: the pair-major bilinear's output) of at least ``_COLUMNS`` features goes through
    ``_ColumnMajorLinear``.

    Input: ``[B, in]``. Output: ``[B, out]``."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() != 2
            or torch.is_autocast_enabled("cpu")):
        return F_.linear(x, weight, bias)
    wide = backend() == "openblas" and max(weight.shape) >= _WIDE
    if wide and _in_openblas(x.shape[0], *weight.shape):
        return _OpenBlasLinear.apply(x, weight, bias)
    if _column_major(x) and x.shape[1] >= _COLUMNS:
        return _ColumnMajorLinear.apply(x, weight, bias)
    if wide:
        return _OpenBlasLinear.apply(x, weight, bias)  # row-major: as before, whichever BLAS runs its products
    return F_.linear(x, weight, bias)


def _column_major(x: torch.Tensor) -> bool:
    """``[B, in]`` stored as ``x.t()`` contiguous (batch stride 1), more than one row."""
    return x.stride(0) == 1 and x.stride(1) == x.shape[0] and x.shape[0] > 1


def _in_openblas(rows: int, out: int, inner: int) -> bool:
    """Whether ``_mm`` runs a layer's products in OpenBLAS: the forward ``[rows, inner] x [inner, out]``
    and both gradients' products have the same three dimensions, so one test decides all three.
    When it does not (a thin layer: FiBiNET's 5,928 -> 16 at the smoke preset), a column-major input
    takes ``_ColumnMajorLinear``: the same torch products without repacking the strided operand or
    transposing the input gradient back."""
    return min(rows, out, inner) >= _THIN and rows * out * inner >= _SMALL


# features from which a column-major input takes _ColumnMajorLinear (with MKL on an Intel CPU its
# products equal F.linear's of a row-major copy bit for bit at every such shape tested, FiBiNET's
# first layers included; at [512, 16] -> 1 they did not)
_COLUMNS = 256


class _ColumnMajorLinear(torch.autograd.Function):
    """``F.linear`` of an ``x`` stored column-major (``x.t()`` contiguous) as the mirrored products:
    ``(W x^T + b)^T`` forward, ``(W^T g^T)^T`` for x's gradient (so it comes back column-major, the
    layout its producer reads), ``(x^T g)^T`` for W's and ``g.sum(0)`` for the bias: the same numbers as
    ``F.linear``'s autograd on a row-major copy of ``x`` (bit for bit with MKL on an Intel CPU, tested;
    elsewhere within float rounding), without the copy. ``F.linear`` itself on such an ``x`` packs the
    strided operand on every product (its forward measured ~2x slower at [512, 5,928] -> 16)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out_t = torch.addmm(bias.unsqueeze(1), weight, x.t()) if bias is not None else torch.mm(weight, x.t())
        return out_t.t().contiguous()  # the next layer gets the row-major [B, out] it always got

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        gx = torch.mm(weight.t(), grad.t()).t() if ctx.needs_input_grad[0] else None
        gw = torch.mm(x.t(), grad).t() if ctx.needs_input_grad[1] else None
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` ``[M, K] x [K, N]``: big products as single-threaded OpenBLAS products of blocks of
    rows of ``a`` (M >= N) or columns of ``b``, spread over the workers; thin or small ones (measured
    slower in OpenBLAS) in torch. Why not OpenBLAS's own threads: its sums come out in a different
    order for 1 and 2 threads (measured: not bit-equal at most shapes), and ctrkit's results must not
    depend on the thread count (``threads="auto"`` follows the load). The blocks depend only on the
    shapes, so any number of workers computes the same bits."""
    (M, K), N = a.shape, b.shape[1]
    if min(M, N, K) < _THIN or M * N * K < _SMALL:
        return torch.mm(a.detach(), b.detach())
    x, y = a.detach().numpy(), b.detach().numpy()  # views of the tensors' memory, transposes included
    out = np.empty((M, N), dtype=np.float32)
    by_rows = M >= N  # measured: row blocks for the forward, column blocks for the weight gradient
    size = _block_size(M if by_rows else N)

    def block(s: int) -> None:
        # like torch, no warning for inf/NaN (the trainer reports a non-finite loss itself); errstate
        # is per thread, hence here
        with np.errstate(all="ignore"):
            if by_rows:
                np.matmul(x[s:s + size], y, out=out[s:s + size])
            else:
                np.matmul(x, y[:, s:s + size], out=out[:, s:s + size])

    starts = range(0, M if by_rows else N, size)
    if _WORKERS is None:
        for s in starts:
            block(s)
    else:
        list(_WORKERS.map(block, starts))  # list(): waits, and re-raises a block's error here
    return torch.from_numpy(out)


def _block_size(n: int) -> int:
    """Rows (or columns) per block: at most 1,024 (each block repacks the other operand), at least
    4 blocks for any worker count up to 4, a multiple of 64; a function of the shape only."""
    return max(64, min(_BLOCK, -(-n // 4 // 64) * 64))


class _OpenBlasLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = _mm(x, weight.t())
        return out.add_(bias) if bias is not None else out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = None
        if ctx.needs_input_grad[0]:
            # a column-major x (the pair-major bilinear's output) gets its gradient in its own layout:
            # (W^T g^T)^T, so its producer need not transpose a [B, in] buffer back
            gx = _mm(weight.t(), grad.t()).t() if _column_major(x) else _mm(grad, weight)
        gw = _mm(grad.t(), x) if ctx.needs_input_grad[1] else None
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb
