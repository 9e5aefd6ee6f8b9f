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

Also here: how many threads torch's own fp32 products may use (``product_threads``, ``mm``). MKL
shares a product whose output is small out over its threads by splitting its sums, and those bits
change with the thread count; such products run on fewer threads (see ``product_threads``).
"""
from __future__ import annotations

import contextlib
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


# Rows (or columns) of output per thread from which MKL keeps a product's sums whole (measured: 12, see
# product_threads; 16 leaves a margin)
_SHARE = 16


def product_threads(m: int, n: int, b: torch.Tensor) -> int:
    """How many of torch's threads the product ``a @ b`` (``[m, K] x [K, n]``) may use and still give
    the bits it gives on one thread: torch's thread count, fewer for a small output.

    Why: MKL shares a product whose output is too small to give every thread its rows out over the
    threads by splitting the sum over K, so its bits depend on the thread count; its strict
    reproducibility mode (``ctrkit/__init__``) does not stop that on AMD CPUs. Measured on an AVX-512
    AMD EPYC (MKL 2024.2, ``MKL_CBWR=AUTO,STRICT``; 1 vs t = 2..16 threads, every layout, K = 4 to
    40,000): every product that gave other bits had ``max(m, n) < 12 * t``, or ``m`` 2 or 3 with a
    column-major ``b`` (F.linear's forward on 2 or 3 rows: at any n, 2,048 at 3 threads); none with
    ``m`` or ``n`` 1, or K below 4. FiBiNET's SENET and bilinear products at batch 16, a 16-wide
    layer's at batch 8, and any layer's on a last batch of 2 or 3 rows met it. So the product runs on
    at most ``max(m, n) // 16`` threads (one below 32), where MKL leaves every sum whole; on one
    thread for the thin case. Normal batches (any output of 32 x 32 or more at 2 threads) keep every
    thread. On one thread MKL never splits a sum, so these are the 1-thread results at any count."""
    t = torch.get_num_threads()
    if t == 1 or m == 1 or n == 1 or b.shape[0] == 1:  # a row, a column, or no sum to split
        return t
    if m <= 3 and b.stride(0) == 1:
        return 1
    return min(t, max(1, max(m, n) // _SHARE))


@contextlib.contextmanager
def threads(n: int):
    """Run the block on at most ``n`` of torch's threads (the count is put back after)."""
    t = torch.get_num_threads()
    if n < t:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n < t:
            torch.set_num_threads(t)


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.mm(a, b, out=out)`` on ``product_threads`` threads: the bits of one thread at any count."""
    n = product_threads(a.shape[0], b.shape[1], b)
    if n >= torch.get_num_threads():
        return torch.mm(a, b, out=out)
    with threads(n):
        return torch.mm(a, b, out=out)


def f_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` (2-D fp32 ``x``), with its three products (forward ``[B, out]``, x's gradient
    ``[B, in]``, the weight's ``[out, in]``) on ``product_threads`` threads where one's output is small
    (``_SmallLinear``: autograd's products, so the bits of ``F.linear`` on one thread); else F.linear."""
    t = torch.get_num_threads()
    if t > 1 and x.dim() == 2 and min(product_threads(x.shape[0], weight.shape[0], weight.t()),
                                      product_threads(x.shape[0], weight.shape[1], weight),
                                      product_threads(weight.shape[0], weight.shape[1], x)) < t:
        return _SmallLinear.apply(x, weight, bias)
    return F_.linear(x, weight, bias)


class _SmallLinear(torch.autograd.Function):
    """``F.linear`` with the products autograd runs for it (``addmm``/``mm`` forward; ``mm_mat1_backward``
    and ``mm_mat2_backward``'s choice of product by layout; the bias's gradient summed over the batch),
    each on ``product_threads`` threads."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        with threads(product_threads(x.shape[0], weight.shape[0], weight.t())):
            return F_.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # a column-major x gets its gradient column-major, as autograd gives it
            gx = mm(weight.t(), grad.t()).t() if _torch_column_major(x) else mm(grad, weight)
        if ctx.needs_input_grad[1]:  # W^T is column-major for a row-major W: autograd's (g^T x)
            gw = mm(grad.t(), x) if _torch_column_major(weight.t()) else mm(x.t(), grad).t()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gx, gw, gb


def _torch_column_major(t: torch.Tensor) -> bool:
    """autograd's test (``mm_mat1_backward``) for a column-major 2-D operand."""
    return t.stride(0) == 1 and t.stride(1) == t.shape[0]


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
    return f_linear(x, weight, bias)


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
        with threads(product_threads(weight.shape[0], x.shape[0], x.t())):
            out_t = torch.addmm(bias.unsqueeze(1), weight, x.t()) if bias is not None else torch.mm(weight, x.t())
        return out_t.t().contiguous()  # the next layer gets the row-major [B, out] it always got

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        gx = mm(weight.t(), grad.t()).t() if ctx.needs_input_grad[0] else None
        gw = mm(x.t(), grad).t() if ctx.needs_input_grad[1] else None
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
        return mm(a.detach(), b.detach())
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
