"""CPU fast paths of the model layers: hand-written forward/backward passes and OpenBLAS products,
switched in by changing a layer's class in place (``for_device``).

Every class here subclasses a layer of ``ctrkit.models.layers`` and overrides ``forward`` only
(``CpuCrossNet``: its product, ``dots``): the
parameters, buffers and state_dict keys are the layer's own, so checkpoints are the same with and
without them, and ``for_device(model, "cuda")`` puts the reference class back. They are what ctrkit
trains with on the CPU (the seeded results, figures and tables were made with them); the reference
maths is what runs on every other device and what ``torch.compile`` traces. Each is tested against
the reference (values and gradients) in tests/test_layers.py and tests/test_graph.py.

Measured (2 threads, B=10,000, F=39, d=16 unless said):

* ``CpuFeatureEmbedding``: the backward is ONE ``index_add_`` (``_GatherRows``), not ATen's
  ``embedding_dense_backward``, which cost ~22 ms per table per step (d=16 and d=1 alike) against
  6 ms; with the gather batch-major (no transpose copy: 1.6 ms vs 21 ms for a field-major gather +
  transpose) DeepFM's fp32 step went from 44k to ~55k samples/s.
* Replicas (``for_vmap``, under ``torch.func.vmap``): the gather and FM as ``VmapFeatureEmbedding`` /
  ``VmapFMInteraction``, the same kernels with a vmap rule (K stacked tables as one table, K batches
  as K times the rows); vmapped ``F.embedding`` would run ATen's backward over the K tables.
* ``CpuFMInteraction``: the gradient in one piece (``_FMFunction``) instead of ~5 full ``[B, F, d]``
  temporaries of autograd through ``pow``/``sum``.
* ``CpuMLP``: every Linear through ``ctrkit.kernels.cpublas.linear`` (wide fp32 layers in numpy's
  OpenBLAS on non-Intel x86 CPUs; an input stored column-major, the bilinear's, as its mirrored
  products; else ``F.linear``).
* Thread counts: every fp32 product here (and ``cpublas.linear``'s) runs on
  ``cpublas.product_threads`` threads, fewer where its output is too small for MKL to share out
  without splitting its sums (small batches, a last batch of a few rows): the bits of one thread at
  any count. Hence ``CpuCrossNet`` (DCN's ``[B, D] x [D, L]``) and ``CpuInnerProduct`` (PNN's Gram
  matrix on one thread below 32 rows).
* ``CpuBilinear`` / ``CpuBilinearCat``: by left field (``_BilinearByLeftField``). The pairs with
  left field i are (i, i+1..F-1), so their right operands are the contiguous rows of fields i+1..
  of the transposed embeddings (no gather), and one ``[n_i*d, d] x [d, B]`` GEMM gives all their
  left products; the products are written straight into one pair-major ``[P*d, B]`` buffer
  (FiBiNET's p and q into one, no cat copy), whose transpose is the ``[B, P, d]`` output, and the
  hand-written backward accumulates into one gradient buffer in place. Under bf16 autocast it runs
  in bf16, so the MLP gets its input without a cast. One bilinear + the ``Linear(P*d, 400)`` it feeds,
  forward+backward, B=4,096: the textbook pair-major gather 1,192 ms fp32 / 1,233 ms bf16, this
  kernel (then batch-major) 638 ms / 328 ms. On a GPU the reference (~6 kernels) beats it (~4F small ones).
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F_
from torch import nn

from ctrkit.kernels import cpublas
from ctrkit.models import layers

__all__ = ["for_device", "for_vmap", "KERNELS"]


class CpuFeatureEmbedding(layers.FeatureEmbedding):
    """``FeatureEmbedding`` whose training backward is ``_GatherRows`` (evaluation: ``F.embedding``)."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        idx = self.rows(X)  # [B, F] rows of the fused table
        if self.weight.device.type == "cpu" and torch.is_grad_enabled() and self.weight.requires_grad:
            return _GatherRows.apply(idx, self.weight)
        return F_.embedding(idx, self.weight)


def _gather(idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight.index_select(0, idx.reshape(-1)).view(*idx.shape, weight.shape[1])


def _keep_rows(ctx, idx: torch.Tensor, weight: torch.Tensor) -> None:
    ctx.save_for_backward(idx)
    ctx.num_rows = weight.shape[0]


class _GatherRows(torch.autograd.Function):
    """``weight[idx]`` for ``idx`` ``[B, F]`` -> ``[B, F, d]``, with the backward as ONE ``index_add_``
    into a zero table. CPU ``index_add_`` adds in index order, so it is deterministic (tested against
    ``F.embedding``'s gradient)."""

    @staticmethod
    def forward(ctx, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        _keep_rows(ctx, idx, weight)
        return _gather(idx, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        d = grad.shape[-1]
        gw = torch.zeros(ctx.num_rows, d, dtype=grad.dtype, device=grad.device)
        # int64 indices: with int32 ones index_add_ takes a slow path (20.5 ms vs 7.6 ms)
        return None, gw.index_add_(0, idx.reshape(-1).long(), grad.reshape(-1, d))


class CpuFMInteraction(layers.FMInteraction):
    """``FMInteraction`` through ``_FMFunction``."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return _FMFunction.apply(emb)


def _fm(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The FM term per row and the field sum ``s`` ``[B, d]`` its gradient needs."""
    s = emb.sum(dim=1)
    flat = emb.reshape(emb.shape[0], 1, -1)
    with torch.autocast(emb.device.type, enabled=False):  # a difference of two sums: keep fp32
        sum_of_square = torch.bmm(flat, flat.transpose(1, 2)).view(-1)  # row dot products, no temporary
    return 0.5 * (s.pow(2).sum(dim=1) - sum_of_square), s


class _FMFunction(torch.autograd.Function):
    """``0.5 * (|sum_i e_i|^2 - sum_i |e_i|^2)`` per row, with the gradient written in one piece,
    ``g * (sum_j e_j - e_i)``: autograd through ``pow``/``sum`` builds ~5 full ``[B, F, d]``
    temporaries per step (forward squares, backward expand, 2x-scale, add), this builds one."""

    @staticmethod
    def forward(ctx, emb: torch.Tensor) -> torch.Tensor:
        out, s = _fm(emb)
        ctx.save_for_backward(emb, s)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        emb, s = ctx.saved_tensors
        return (s.unsqueeze(1) - emb).mul_(grad.view(-1, 1, 1).to(emb.dtype))


# Replicas (``for_vmap``) run the gather and FM under ``torch.func.vmap``, which needs a Function in the
# ``setup_context`` form with a vmap rule. That form costs an ``inspect.signature`` in every
# ``Function.apply`` (~30 us, a tenth of a smoke-sized step's embedding and FM), so the sequential
# kernels above keep the classic form, and these subclasses (same maths, same backward) serve vmap.


class _VmapGatherRows(_GatherRows):
    """``_GatherRows`` under vmap: K stacked tables ``[K, V, d]`` are one flat ``[K*V, d]`` table,
    replica k's rows offset by ``k*V``, so the backward is one ``index_add_`` again (vmapped
    ``F.embedding`` runs ATen's ``embedding_dense_backward``, ~3x slower)."""

    @staticmethod
    def forward(idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return _gather(idx, weight)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _keep_rows(ctx, *inputs)

    @staticmethod
    def vmap(info, in_dims, idx: torch.Tensor, weight: torch.Tensor):
        di, dw = in_dims
        if dw is None:  # one table, batched indices: the gather as it is
            return _VmapGatherRows.apply(idx.movedim(di, 0), weight), 0
        weight = weight.movedim(dw, 0)
        k, rows = weight.shape[0], weight.shape[1]
        idx = idx.movedim(di, 0) if di is not None else idx.expand(k, *idx.shape)
        offset = torch.arange(k, device=idx.device, dtype=torch.long).mul_(rows).view(k, *[1] * (idx.dim() - 1))
        return _VmapGatherRows.apply(idx.long() + offset, weight.reshape(k * rows, weight.shape[2])), 0


class _VmapFMFunction(_FMFunction):
    """``_FMFunction`` under vmap: row by row, so K replicas' ``[K, B, F, d]`` are K*B rows of it."""

    @staticmethod
    def forward(emb: torch.Tensor) -> torch.Tensor:
        return _fm(emb)[0]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0], inputs[0].sum(dim=1))  # _fm's s, the same sum

    @staticmethod
    def vmap(info, in_dims, emb: torch.Tensor):
        emb = emb.movedim(in_dims[0], 0)
        return _VmapFMFunction.apply(emb.reshape(-1, *emb.shape[2:])).view(emb.shape[0], emb.shape[1]), 0


class VmapFeatureEmbedding(CpuFeatureEmbedding):
    """``CpuFeatureEmbedding`` for replicas (``for_vmap``): the gather with a vmap rule. Not
    ``weight.requires_grad``: under vmap a batched weight reads False."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        idx = self.rows(X)
        if self.weight.device.type == "cpu" and torch.is_grad_enabled():
            return _VmapGatherRows.apply(idx, self.weight)
        return F_.embedding(idx, self.weight)


class VmapFMInteraction(CpuFMInteraction):
    """``CpuFMInteraction`` for replicas (``for_vmap``): FM with a vmap rule."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return _VmapFMFunction.apply(emb)


class CpuMLP(layers.MLP):
    """``MLP`` with every Linear through ``cpublas.linear`` (which picks OpenBLAS or ``F.linear``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.net:
            x = cpublas.linear(x, m.weight, m.bias) if isinstance(m, nn.Linear) else m(x)
        return x


class CpuBilinear(layers.Bilinear):
    """``Bilinear`` batch-major by left field (``_BilinearByLeftField``)."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return _BilinearByLeftField.apply(_compute_dtype(emb), emb, self.pair_weights())


class CpuBilinearCat(layers.BilinearCat):
    """``BilinearCat`` with every pair's by-left-field products written into their slice of one buffer;
    the backward reads its slices of the one gradient."""

    def forward(self, pairs) -> torch.Tensor:
        flat = [t for layer, emb in pairs for t in (emb, layer.pair_weights())]
        return _BilinearByLeftField.apply(_compute_dtype(pairs[0][1]), *flat)


class CpuSENet(layers.SENet):
    """``SENet`` whose two bias-free Linear layers sum their weight gradients over the batch on one
    thread (``_OneThreadWeightGrad``); under autocast, the reference."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu"):
            return super().forward(emb)
        down, relu, up, act = self.excitation
        z = relu(_OneThreadWeightGrad.apply(emb.mean(dim=-1), down.weight))
        return emb * act(_OneThreadWeightGrad.apply(z, up.weight)).unsqueeze(-1)


class CpuCrossNet(layers.CrossNet):
    """``CrossNet`` whose one product ``x0 @ W^T`` (``[B, D] x [D, L]``) is ``cpublas.f_linear``'s: the
    same products, on fewer threads where the output is small (a batch of 2 or 3 rows, or B and L
    both small; see ``cpublas.product_threads``). fp32 outside autocast; else the reference."""

    def dots(self, x0: torch.Tensor) -> torch.Tensor:
        if x0.device.type != "cpu" or x0.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return super().dots(x0)
        return cpublas.f_linear(x0, self.weight)


class CpuInnerProduct(layers.InnerProduct):
    """``InnerProduct``; a batch of fewer than ``_FEW_ROWS`` rows (a last batch can be that small) takes
    its Gram matrix and gradient on one thread (``_FewRowsGram``): torch's ``bmm`` shares too few
    matrices out over its threads by splitting their sums in MKL (measured: at 1 row from 4 threads;
    at 2-4 rows with F=100 from 8). fp32 outside autocast; else, and for more rows, the reference."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        if (emb.shape[0] >= _FEW_ROWS or emb.device.type != "cpu" or emb.dtype != torch.float32
                or torch.is_autocast_enabled("cpu")):
            return super().forward(emb)
        return _FewRowsGram.apply(emb).flatten(1).index_select(1, self.flat_index)


_FEW_ROWS = 32  # a function of the batch only, not of the thread count: the same path at every count


class _FewRowsGram(torch.autograd.Function):
    """``bmm(E, E^T)`` ``[B, F, F]`` and its gradient ``G E + (E^T G)^T`` (autograd's two products), on
    one thread."""

    @staticmethod
    def forward(ctx, emb: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(emb)
        with _one_thread():
            return torch.bmm(emb, emb.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (emb,) = ctx.saved_tensors
        with _one_thread():
            return torch.bmm(grad, emb) + torch.bmm(emb.transpose(1, 2), grad).transpose(1, 2)


@contextlib.contextmanager
def _one_thread():
    """MKL splits the sum of a product with a small output and a long sum (a weight's gradient summed
    over the batch) over its threads, and on AMD CPUs its strict reproducibility mode (``MKL_CBWR``,
    see ``ctrkit/__init__``) does not keep the bits of such a sum the same at another thread count
    (measured: FiBiNET's bilinear and SENET weight gradients at 1 vs 2 threads on an AVX-512 EPYC).
    These products run on one thread; they are a small share of the step."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


class _OneThreadWeightGrad(torch.autograd.Function):
    """``x @ w.T`` (a bias-free Linear), the products autograd runs for ``F.linear``, with the weight
    gradient ``g.T @ x`` on one thread (``_one_thread``) and the other two on
    ``cpublas.product_threads`` (at batch 8 SENET's ``[B, F] x [F, F/3]`` met MKL's split sums too)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        with cpublas.threads(cpublas.product_threads(x.shape[0], w.shape[0], w.t())):
            return F_.linear(x, w)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        with _one_thread():
            g_w = g.t().mm(x) if ctx.needs_input_grad[1] else None
        return (cpublas.mm(g, w) if ctx.needs_input_grad[0] else None), g_w


def _compute_dtype(emb: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else emb.dtype


class _BilinearByLeftField(torch.autograd.Function):
    """``out[:, k*P + p] = (E_k[:, i_p] @ W_k[p]) * E_k[:, j_p]`` for every (E_k ``[B, F, d]``,
    W_k ``[P, d, d]``) input pair k and pair p in ``triu_pairs`` order, by left field, in ``dtype``
    (bf16 under autocast); gradients come back in the inputs' dtypes. Called as
    ``apply(dtype, E_1, W_1, E_2, W_2, ...)``.

    Pair-major in memory: the products are the rows of one ``[k*P*d, B]`` buffer and the output is
    its transpose (``[B, k*P, d]``, batch stride 1). Each left field's block of products is then a
    contiguous run of rows, written, read back and differentiated in sequential memory, where a
    batch-major ``[B, k*P*d]`` buffer gave every block a narrow column slice strided over the whole
    buffer, one row at a time (in a training step at d=4 its ops took 40-45 us each, the same ops on
    the same shapes in a loop 4-10 us). The MLP that reads the output takes it as it is
    (``cpublas.linear``: the products of a batch-major copy, bit for bit with MKL on Intel) and hands
    back its gradient in the same layout; a gradient in any other layout is transposed once here."""

    @staticmethod
    def forward(ctx, dtype: torch.dtype, *tensors: torch.Tensor) -> torch.Tensor:
        (B, F, d), P, k_in = tensors[0].shape, tensors[1].shape[0], len(tensors) // 2
        out_t = torch.empty(k_in * P * d, B, dtype=dtype, device=tensors[0].device)
        widths = _block_widths(F, d)
        e_ts, ws, lefts = [], [], []
        for k in range(k_in):
            e_t = tensors[2 * k].to(dtype).reshape(B, F * d).t().contiguous()  # [F*d, B]: field i is rows i*d..
            w = tensors[2 * k + 1].to(dtype)
            # left field i's pairs (i, i+1..F-1): one [n*d, d] x [d, B] GEMM, times the rows below field i
            blocks = zip(e_t.split(d), _side_by_side(w).t().split(widths),
                         out_t[k * P * d:(k + 1) * P * d].split(widths))
            for i, (col_t, w_block_t, o) in enumerate(blocks):
                left_t = cpublas.mm(w_block_t, col_t)  # kept for the backward's right-operand gradient
                torch.mul(left_t, e_t[(i + 1) * d:], out=o)
                lefts.append(left_t)
            e_ts.append(e_t)
            ws.append(w)
        ctx.save_for_backward(*e_ts, *ws, *lefts)
        ctx.shape, ctx.dtypes = (B, F, d), [t.dtype for t in tensors]
        return out_t.t().view(B, k_in * P, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (B, F, d), saved = ctx.shape, ctx.saved_tensors
        k_in = len(ctx.dtypes) // 2
        P, blocks = saved[k_in].shape[0], F - 1
        g_t = grad.reshape(B, -1).t().contiguous()  # a no-op for the gradient cpublas.linear gives back
        grads = []
        for k in range(k_in):
            e_t, w = saved[k], saved[k_in + k]
            lefts = saved[2 * k_in + k * blocks:2 * k_in + (k + 1) * blocks]
            grads += _bilinear_backward(e_t, w, lefts, g_t[k * P * d:(k + 1) * P * d].to(e_t.dtype), B, d)
        return (None, *(g.to(dt) for g, dt in zip(grads, ctx.dtypes)))


def _bilinear_backward(e_t, w, lefts, g_t, B: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (emb ``[B, F, d]``, weight ``[P, d, d]``) of one pair-major bilinear from its output
    gradient ``g_t`` ``[P*d, B]``, the transposed embeddings ``e_t`` ``[F*d, B]`` and the forward's left
    products (one ``[n*d, B]`` per left field), summed in fp32 under bf16. The weight's permutation
    happens once per step, and its gradient lands in its columns of one ``[d, P*d]`` buffer."""
    F = e_t.shape[0] // d
    acc = torch.float32 if e_t.dtype in (torch.bfloat16, torch.float16) else e_t.dtype
    g_emb_t = torch.zeros(F * d, B, dtype=acc, device=e_t.device)
    g_w_cat = torch.empty(d, w.shape[0] * d, dtype=acc, device=e_t.device)
    widths = _block_widths(F, d)
    blocks = zip(lefts, g_t.split(widths), _side_by_side(w).split(widths, dim=1), g_w_cat.split(widths, dim=1),
                 e_t.split(d), g_emb_t.split(d))
    for i, (left_t, g_block, w_block, g_w_block, col_t, g_col) in enumerate(blocks):
        g_emb_t[(i + 1) * d:].addcmul_(g_block, left_t)  # right operands
        g_left = torch.mul(g_block, e_t[(i + 1) * d:])
        g_col.add_(cpublas.mm(w_block, g_left))  # left operand: [d, n*d] x [n*d, B], small at a small batch
        with _one_thread():  # [d, B] x [B, n*d]: summed over the batch
            if acc == e_t.dtype:
                torch.mm(col_t, g_left.t(), out=g_w_block)
            else:  # bf16 products into the fp32 buffer
                g_w_block.copy_(col_t @ g_left.t())
    return g_emb_t.t().reshape(B, F, d), g_w_cat.view(d, -1, d).permute(1, 0, 2).contiguous()


def _side_by_side(w: torch.Tensor) -> torch.Tensor:
    """``[P, d, d]`` -> ``[d, P*d]``: pair p's matrix in columns ``p*d .. p*d+d-1``."""
    return w.permute(1, 0, 2).reshape(w.shape[1], -1)


@functools.lru_cache(maxsize=None)
def _block_widths(num_fields: int, d: int) -> tuple[int, ...]:
    """Columns of each left field's block (the pairs (i, i+1..F-1): ``(F-1-i)*d``), in field order."""
    return tuple(n * d for n in range(num_fields - 1, 0, -1))


# reference layer class -> its CPU kernel class (exact classes: a subclass of a layer is left alone)
KERNELS: dict[type, type] = {layers.FeatureEmbedding: CpuFeatureEmbedding, layers.FMInteraction: CpuFMInteraction,
                             layers.MLP: CpuMLP, layers.Bilinear: CpuBilinear, layers.BilinearCat: CpuBilinearCat,
                             layers.SENet: CpuSENet, layers.CrossNet: CpuCrossNet,
                             layers.InnerProduct: CpuInnerProduct}
_REFERENCE = {v: k for k, v in KERNELS.items()}
# for_vmap: reference layer class -> its CPU kernel with a vmap rule (row by row, or a gather: K replicas
# are the same kernel on K times the rows); the other kernels' weights are per replica under vmap
# (batched matmuls), where the reference maths is what vmap batches
VMAPPED: dict[type, type] = {layers.FeatureEmbedding: VmapFeatureEmbedding, layers.FMInteraction: VmapFMInteraction}
_REFERENCE.update({v: k for k, v in VMAPPED.items()})


def for_device(model: nn.Module, device) -> nn.Module:
    """Switch `model`'s layers to the implementation for `device`, in place, and return `model`: on
    the CPU the kernels above, on any other device the reference maths of ``ctrkit.models.layers``.
    Only the classes change (parameters, buffers and state_dict keys stay), so it can be called again
    after the model moves, and checkpoints do not depend on it."""
    return _switch(model, KERNELS if torch.device(device).type == "cpu" else _REFERENCE)


def for_vmap(model: nn.Module, device) -> nn.Module:
    """``for_device`` for a model run under ``torch.func.vmap`` (replicas): on the CPU the kernels with
    a vmap rule (``VMAPPED``) and the reference maths for every other layer; elsewhere the reference."""
    _switch(model, _REFERENCE)
    return _switch(model, VMAPPED) if torch.device(device).type == "cpu" else model


def _switch(model: nn.Module, table: dict) -> nn.Module:
    for m in model.modules():
        cls = table.get(type(m))
        if cls is not None:
            m.__class__ = cls
    return model
