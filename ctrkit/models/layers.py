"""Building blocks shared by every ctrkit model (the reference maths), so peers compared in mutual
learning share exactly the same embedding, first-order and MLP semantics (only their interaction part
differs).

Shapes: B = batch, F = number of fields, d = embedding dim, P = F*(F-1)/2 field pairs.

Only ``nn.Module``s with ``nn.Linear``/``nn.Parameter`` state and plain torch ops live here: no
autograd Function, no numpy, no global state, so every model traces as one graph
(``torch.compile(fullgraph=True)``). The CPU fast paths (hand-written backward passes, OpenBLAS for
wide layers) are in ``ctrkit.kernels``, which the trainer switches in for CPU runs by changing these
modules' class in place (same parameters, same state_dict keys).

Design notes
------------
* One fused embedding table. All fields live in ONE ``[sum(vocab_sizes), d]`` matrix and a field's
  local index ``x_f`` is looked up at row ``offset_f + x_f``. FuxiCTR and DeepCTR-Torch keep one
  ``nn.Embedding`` per field: F lookups, F backward scatters and a ``torch.stack`` copy per step.
  Here it is one gather and one backward scatter (one kernel each instead of F -- what matters on a
  GPU, where F small launches dominate), and ONE parameter tensor for the optimizer and the
  embedding regularizer instead of F (fewer optimizer kernels; the trainer finds it by type). The
  maths is unchanged as long as rows of different fields never mix: an index >= vocab_size_f would
  read the next field's rows, so ``ctrkit.data`` checks every split's indices once when it serves
  the split (not per batch: that would read every batch back to the host).
* Initialisation follows FuxiCTR (the code behind the BARS numbers): embeddings ``N(0, 1e-4)``,
  every ``nn.Linear`` Xavier-normal with zero bias, bilinear weights Xavier-normal, cross-layer
  biases zero (see ``reset_parameters``).
* No Python loop over field pairs. Inner products: one ``bmm`` Gram matrix + a ``triu`` index
  (measured ~15x faster than gathering ``[B, P, d]`` pairs). Bilinear: one ``bmm`` over all pairs in
  pair-major layout (see ``Bilinear``); FuxiCTR's ``matmul(left.unsqueeze(2), W)`` broadcasts ``W``
  to ``[B, P, d, d]``, which is what runs out of 24 GB at batch 10,000. CrossNet runs all its layers
  as one product (see ``CrossNet``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F_
from torch import nn

from ctrkit.core.utils import CtrkitError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leakyrelu": nn.LeakyReLU,
               "elu": nn.ELU, "gelu": nn.GELU, "selu": nn.SELU, "silu": nn.SiLU}
EMBEDDING_INIT_STD = 1e-4  # FuxiCTR's default embedding_initializer: normal_(std=1e-4)


def make_activation(name: str) -> nn.Module:
    """``"ReLU"``/``"relu"``/... -> a fresh activation module (case-insensitive, FuxiCTR names)."""
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise CtrkitError(f"activation {name!r} is unknown; valid: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


def triu_pairs(num_fields: int) -> torch.Tensor:
    """``[2, P]`` long tensor of field pairs (i, j), i < j, in row-major order
    (0,1), (0,2), ..., (1,2), ... -- the order of ``itertools.combinations`` and of FuxiCTR."""
    return torch.triu_indices(num_fields, num_fields, offset=1)


class FeatureEmbedding(nn.Module):
    """All fields' embeddings from one fused table (see module docstring for why).

    Args: ``field_sizes`` (vocab size per field, every index incl. padding/OOV), ``embedding_dim``.
    Input: ``X`` int32 or int64 ``[B, F]`` of per-field LOCAL indices in ``[0, vocab_size_f)``.
    Output: ``[B, F, d]`` float32.
    """

    def __init__(self, field_sizes: Sequence[int], embedding_dim: int):
        super().__init__()
        sizes = [int(s) for s in field_sizes]
        self.num_fields = len(sizes)
        self.embedding_dim = int(embedding_dim)
        self.weight = nn.Parameter(torch.empty(sum(sizes), self.embedding_dim))
        offsets = torch.tensor([0] + sizes[:-1], dtype=torch.long).cumsum(0)
        # int32 offsets keep an int32 batch int32 (no widening copy); fall back to int64 for huge vocabularies
        dtype = torch.int32 if sum(sizes) < 2**31 else torch.long
        # not persistent: offsets follow from field_sizes, which every checkpoint stores anyway
        self.register_buffer("offsets", offsets.to(dtype), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=EMBEDDING_INIT_STD)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return F_.embedding(self.rows(X), self.weight)

    def rows(self, X: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` rows of the fused table for the local indices ``X``."""
        return X.to(self.offsets.dtype) + self.offsets


class LinearTerm(nn.Module):
    """First-order (logistic-regression) term: sum over fields of a learned scalar weight per
    feature value, plus an optional bias. The weights are a 1-dim ``FeatureEmbedding`` (an
    embedding parameter for the regularizer, as in FuxiCTR).

    Input: ``X`` int ``[B, F]``. Output: ``[B]``.
    """

    def __init__(self, field_sizes: Sequence[int], use_bias: bool = True):
        super().__init__()
        self.embedding = FeatureEmbedding(field_sizes, 1)
        self.bias = nn.Parameter(torch.zeros(1)) if use_bias else None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        out = self.embedding(X).sum(dim=(1, 2))
        return out + self.bias if self.bias is not None else out


class FMInteraction(nn.Module):
    """Factorization-machine second-order term (Rendle 2010):
    ``sum_{i<j} <e_i, e_j> = 0.5 * sum_k ((sum_i e_ik)^2 - sum_i e_ik^2)``, O(F*d).

    Input: ``[B, F, d]``. Output: ``[B]``.
    """

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        s = emb.sum(dim=1)  # [B, d]
        return 0.5 * (s.pow(2).sum(dim=1) - emb.pow(2).sum(dim=(1, 2)))


class MLP(nn.Module):
    """Feed-forward block, FuxiCTR's MLP_Block order per hidden layer:
    ``Linear -> [BatchNorm1d] -> activation -> [Dropout]``, then an optional ``Linear(.., output_dim)``.

    Args: ``input_dim``, ``hidden_units`` (list of ints, may be empty), ``activation`` (name),
    ``dropout`` (probability after each hidden layer), ``batch_norm``, ``output_dim`` (None: return
    the last hidden layer).
    Input: ``[B, input_dim]``. Output: ``[B, output_dim]`` or ``[B, hidden_units[-1]]``
    (or ``[B, input_dim]`` when there are no hidden units and no output layer).
    """

    def __init__(self, input_dim: int, hidden_units: Sequence[int], activation: str = "ReLU",
                 dropout: float = 0.0, batch_norm: bool = False, output_dim: int | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [int(input_dim)] + [int(h) for h in hidden_units]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers.append(nn.Linear(d_in, d_out))
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            # in place: a Linear / BatchNorm output isn't needed by its own backward (saves a [B, h] pass)
            layers.append(nn.ReLU(inplace=True) if str(activation).lower() == "relu" else make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        if output_dim is not None:
            layers.append(nn.Linear(dims[-1], int(output_dim)))
        self.output_dim = int(output_dim) if output_dim is not None else dims[-1]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossNet(nn.Module):
    """DCN v1 cross network (Wang et al. 2017): ``x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l``,
    one weight vector ``w_l`` and bias ``b_l`` of size D per layer.

    Input: ``[B, D]``. Output: ``[B, D]``.
    """

    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_layers, input_dim))
        self.bias = nn.Parameter(torch.zeros(num_layers, input_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # FuxiCTR: each w_l is nn.Linear(D, 1) with xavier_normal, i.e. N(0, 2 / (D + 1)); b_l zeros
        nn.init.normal_(self.weight, std=(2.0 / (self.weight.shape[1] + 1)) ** 0.5)
        nn.init.zeros_(self.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        # Every x_l is x0 scaled per row plus a constant vector: x_l = a_l * x0 + c_l, with a_0 = 1,
        # c_0 = 0 (induction: x_l . w_l = a_l (x0 . w_l) + c_l . w_l, so a_{l+1} = a_l + that and
        # c_{l+1} = c_l + b_l). So all L layers need ONE [B, D] x [D, L] product and one fused
        # x0 * a + c at the end, instead of ~4 full [B, D] elementwise passes per layer forward and
        # more backward: DCN train step, 2 threads, B=10,000, D=624, bf16: that was most of the step.
        if self.weight.shape[0] == 0:
            return x0
        t = self.dots(x0)  # [B, L]: x0 . w_l for every layer
        a = torch.ones(x0.shape[0], dtype=x0.dtype, device=x0.device)  # [B], x0's dtype: fp32 sums under autocast
        c = torch.zeros_like(self.bias[0])  # [D]
        for l in range(self.weight.shape[0]):  # L scalar updates per row, not [B, D] passes
            a = a + a * t[:, l] + c @ self.weight[l]
            c = c + self.bias[l]
        return torch.addcmul(c, x0, a.unsqueeze(1))

    def dots(self, x0: torch.Tensor) -> torch.Tensor:
        """``[B, L]``: ``x0 . w_l`` for every layer (its own method: the CPU kernel runs this product
        on a thread count that does not change its bits)."""
        return x0 @ self.weight.t()


class InnerProduct(nn.Module):
    """IPNN product layer (Qu et al. 2016): all pairwise inner products ``<e_i, e_j>``, i < j, in
    ``triu_pairs`` order. One ``bmm`` gives the ``[B, F, F]`` Gram matrix (F*F*d flops per row,
    smaller than gathering ``[B, P, d]`` pairs), then the upper triangle is taken by flat index.

    Input: ``[B, F, d]``. Output: ``[B, P]``.
    """

    def __init__(self, num_fields: int):
        super().__init__()
        i, j = triu_pairs(num_fields)
        self.register_buffer("flat_index", i * num_fields + j, persistent=False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(emb, emb.transpose(1, 2))  # [B, F, F]
        return gram.flatten(1).index_select(1, self.flat_index)


class SENet(nn.Module):
    """FiBiNET's SENET field re-weighting (Huang et al. 2019; FuxiCTR SqueezeExcitation):
    ``z = mean_d(E)`` ``[B, F]``; ``a = act(W2 relu(W1 z))`` with ``W1: F -> max(1, F // r)`` and
    ``W2`` back to F, both bias-free; output ``E * a``.

    Input: ``[B, F, d]``. Output: ``[B, F, d]``.
    """

    def __init__(self, num_fields: int, reduction_ratio: float = 3, excitation_activation: str = "ReLU"):
        super().__init__()
        reduced = max(1, int(num_fields / reduction_ratio))
        self.excitation = nn.Sequential(nn.Linear(num_fields, reduced, bias=False), nn.ReLU(),
                                        nn.Linear(reduced, num_fields, bias=False),
                                        make_activation(excitation_activation))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        a = self.excitation(emb.mean(dim=-1))
        return emb * a.unsqueeze(-1)


BILINEAR_TYPES = ("field_all", "field_each", "field_interaction")


class Bilinear(nn.Module):
    """FiBiNET bilinear interaction: for each pair i < j, ``p_ij = (e_i W) * e_j`` with
    ``W`` shared by all fields (``field_all``: ``[d, d]``), one per left field (``field_each``:
    ``[F, d, d]``) or one per pair (``field_interaction``: ``[P, d, d]``, pairs in ``triu_pairs``
    order, as FuxiCTR).

    Pair-major: embeddings are transposed once to ``[F, B, d]``, the left/right field of every pair
    is one ``index_select`` of whole ``[B, d]`` blocks, and field_interaction is ONE ``bmm``
    ``[P, B, d] x [P, d, d]``: a constant ~6 kernels, and no ``[B, P, d, d]`` tensor ever exists
    (FuxiCTR's ``matmul(left.unsqueeze(2), W)`` broadcasts ``W`` to that, which is what runs out of
    24 GB at batch 10,000). On CPU ``ctrkit.kernels`` swaps in a batch-major layout by left field.

    Input: ``[B, F, d]``. Output: ``[B, P, d]`` (a transposed view of a ``[P, B, d]`` tensor; the
    caller's flatten/cat makes the one copy).
    """

    def __init__(self, num_fields: int, embedding_dim: int, bilinear_type: str = "field_interaction"):
        super().__init__()
        if bilinear_type not in BILINEAR_TYPES:
            raise CtrkitError(f"bilinear_type {bilinear_type!r} is unknown; valid: {list(BILINEAR_TYPES)}")
        self.bilinear_type = bilinear_type
        i, j = triu_pairs(num_fields)
        self.register_buffer("left", i, persistent=False)
        self.register_buffer("right", j, persistent=False)
        n = {"field_all": (), "field_each": (num_fields,), "field_interaction": (len(i),)}[bilinear_type]
        self.weight = nn.Parameter(torch.empty(*n, embedding_dim, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.weight)  # FuxiCTR: xavier_normal_ on the whole (stacked) tensor

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        fe = emb.transpose(0, 1).contiguous()  # [F, B, d]
        if self.bilinear_type == "field_interaction":
            left = torch.bmm(fe.index_select(0, self.left), self.weight)  # [P, B, d]
        else:
            # project each field once ([F, B, d]), then pick the left field of every pair
            hidden = fe @ self.weight if self.bilinear_type == "field_all" else torch.bmm(fe, self.weight)
            left = hidden.index_select(0, self.left)
        return (left * fe.index_select(0, self.right)).transpose(0, 1)

    def pair_weights(self) -> torch.Tensor:
        """``[P, d, d]``: the weight each pair uses (a broadcast view or a small gather)."""
        if self.bilinear_type == "field_interaction":
            return self.weight
        if self.bilinear_type == "field_all":
            return self.weight.expand(len(self.left), *self.weight.shape)
        return self.weight.index_select(0, self.left)


class BilinearCat(nn.Module):
    """FiBiNET's bilinear outputs side by side: ``cat([layer(emb) for layer, emb in pairs], dim=1)``.
    A module without state of its own, so that ``ctrkit.kernels`` can swap in its CPU version (every
    pair's products written straight into one buffer, no cat copy) without a state_dict change.

    Input: ``k`` (Bilinear over F fields with dim d, ``[B, F, d]``) pairs, all of one bilinear_type.
    Output: ``[B, k*P, d]``.
    """

    def forward(self, pairs: Sequence[tuple[Bilinear, torch.Tensor]]) -> torch.Tensor:
        return torch.cat([layer(emb) for layer, emb in pairs], dim=1)


def reset_parameters(module: nn.Module) -> None:
    """FuxiCTR's initialisation for a whole model: Xavier-normal weights and zero biases for every
    ``nn.Linear``; layers with their own ``reset_parameters`` (embeddings, cross, bilinear) keep it."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
