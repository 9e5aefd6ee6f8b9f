"""Layer tests: shapes, gradients, and seeded golden values checked against independent NumPy
loops (explicit pair sums / per-sample formulas), not against the vectorised code itself; the CPU
kernels (``ctrkit.kernels.cpu``, switched in with ``for_device``) against the reference layers."""
import copy
import itertools

import numpy as np
import pytest
import torch

from ctrkit.kernels import cpu, cpublas, for_device
from ctrkit.models import layers
from ctrkit.core.utils import CtrkitError

B, F, D = 5, 4, 3
SIZES = [3, 5, 7, 2]


def _emb(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, F, D, generator=g, dtype=torch.float32)


def _x(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, s, (B,), generator=g) for s in SIZES], dim=1)


def _grads_flow(module, out):
    out.pow(2).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---- embedding / first-order ------------------------------------------------------------------
def test_feature_embedding_uses_per_field_offsets():
    torch.manual_seed(0)
    layer = layers.FeatureEmbedding(SIZES, D)
    assert layer.weight.shape == (sum(SIZES), D)
    X = _x()
    out = layer(X)
    assert out.shape == (B, F, D) and out.dtype == torch.float32 and out.is_contiguous()
    W = layer.weight.detach().numpy()
    starts = np.cumsum([0] + SIZES[:-1])  # field f occupies rows starts[f] .. starts[f] + size - 1
    for b in range(B):
        for f in range(F):
            np.testing.assert_array_equal(out[b, f].detach().numpy(), W[starts[f] + X[b, f].item()])


def test_feature_embedding_int32_equals_int64_and_grad_only_on_used_rows():
    layer = layers.FeatureEmbedding(SIZES, D)
    X = _x()
    assert torch.equal(layer(X.int()), layer(X.long()))
    layer(X.int()).sum().backward()
    used = {int(sum(SIZES[:f]) + X[b, f]) for b in range(B) for f in range(F)}
    nonzero = set(torch.nonzero(layer.weight.grad.abs().sum(1)).flatten().tolist())
    assert nonzero == used


def test_feature_embedding_cpu_backward_equals_aten_embedding_and_is_deterministic():
    """The CPU kernel's index_add_ backward must give exactly what F.embedding's backward gives
    (repeated rows accumulate), run after run."""
    torch.manual_seed(3)
    sizes = [4, 50, 3]
    layer = for_device(layers.FeatureEmbedding(sizes, 6), "cpu")
    assert type(layer) is cpu.CpuFeatureEmbedding
    X = torch.stack([torch.randint(0, s, (400,)) for s in sizes], dim=1).int()  # many repeats
    g = torch.randn(400, 3, 6)
    grads = []
    for _ in range(2):
        layer.weight.grad = None
        layer(X).backward(g)
        grads.append(layer.weight.grad.clone())
    idx = X.long() + layer.offsets.long()
    w = layer.weight.detach().clone().requires_grad_()
    torch.nn.functional.embedding(idx, w).backward(g)
    torch.testing.assert_close(grads[0], w.grad, rtol=1e-6, atol=1e-6)
    assert torch.equal(grads[0], grads[1])
    with torch.no_grad():  # the no-grad path (evaluation) returns the same values
        assert torch.equal(layer(X), w[idx])


@pytest.mark.parametrize("kernel,make", [
    (cpu.VmapFeatureEmbedding, lambda: (layers.FeatureEmbedding([4, 50, 3], 6),
                                       torch.stack([torch.randint(0, s, (3, 200)) for s in (4, 50, 3)], -1))),
    (cpu.VmapFMInteraction, lambda: (layers.FMInteraction(), torch.randn(3, 200, 5, 6, requires_grad=True)))])
def test_cpu_kernels_under_vmap_are_each_replicas_own_kernel_bit_for_bit(kernel, make):
    """Replicas (ctrkit.training.replicas) vmap the model over K stacked parameter sets: the embedding
    gather and FM, switched in by ``for_vmap``, run their vmap rule (K tables as one, K batches as one),
    whose values and gradients are each replica's own sequential kernel's, bit for bit."""
    torch.manual_seed(4)
    layer, x = make()
    assert type(cpu.for_vmap(layer, "cpu")) is kernel
    assert type(cpu.for_vmap(layers.MLP(6, [4]), "cpu")) is layers.MLP  # no vmap rule: the reference
    assert type(cpu.for_vmap(layer, "cuda")) is type(make()[0])  # off the CPU: the reference maths
    cpu.for_vmap(layer, "cpu")
    params = {n: torch.stack([p.detach() * (k + 1) for k in range(3)]).requires_grad_()
              for n, p in layer.named_parameters()}
    batched = torch.func.vmap(lambda th, xk: torch.func.functional_call(layer, (th, dict(layer.named_buffers())), (xk,)))
    out = batched(params, x)
    g = torch.randn_like(out)
    leaves = [*params.values(), *([x] if x.requires_grad else [])]
    grads = torch.autograd.grad(out, leaves, g)
    seq = for_device(for_device(copy.deepcopy(layer), "meta"), "cpu")  # what a sequential run trains with
    assert type(seq) in cpu.KERNELS.values()
    for k in range(3):
        theta = {n: v[k].detach().clone().requires_grad_() for n, v in params.items()}
        xk = x[k].detach().clone().requires_grad_(x.requires_grad)
        one = torch.func.functional_call(seq, (theta, dict(seq.named_buffers())), (xk,))
        assert torch.equal(out[k], one)
        mine = torch.autograd.grad(one, [*theta.values(), *([xk] if x.requires_grad else [])], g[k])
        for a, b in zip(grads, mine):
            assert torch.equal(a[k], b)


def test_cpu_gather_vmapped_over_batches_alone_shares_one_table():
    layer = cpu.for_vmap(layers.FeatureEmbedding([4, 50, 3], 6), "cpu")
    X = torch.stack([torch.randint(0, s, (3, 40)) for s in (4, 50, 3)], -1)
    out = torch.func.vmap(layer)(X)  # the weight is not batched: one table for every batch
    out.sum().backward()
    assert torch.equal(out, torch.stack([layer.weight[x + layer.offsets] for x in X]))
    assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight).index_add_(
        0, (X + layer.offsets).reshape(-1), torch.ones(3 * 40 * 3, 6)))


def test_a_frozen_tables_cpu_gather_records_no_gradient():
    layer = for_device(layers.FeatureEmbedding([4, 50, 3], 6), "cpu").requires_grad_(False)
    X = torch.stack([torch.randint(0, s, (30,)) for s in (4, 50, 3)], 1)
    out = layer(X)
    assert not out.requires_grad and torch.equal(out, layer.weight[X + layer.offsets])


def test_feature_embedding_init_is_fuxictr_small_normal():
    torch.manual_seed(0)
    w = layers.FeatureEmbedding([100_000], 8).weight
    assert abs(w.std().item() - 1e-4) < 2e-6 and abs(w.mean().item()) < 2e-6


def test_linear_term_golden():
    layer = layers.LinearTerm(SIZES, use_bias=True)
    with torch.no_grad():
        layer.embedding.weight.copy_(torch.arange(sum(SIZES), dtype=torch.float32).view(-1, 1))
        layer.bias.fill_(0.5)
    X = torch.tensor([[0, 0, 0, 0], [2, 4, 6, 1]])
    # row 0: rows 0, 3, 8, 15 -> 26 + 0.5; row 1: rows 2, 7, 14, 16 -> 39 + 0.5
    torch.testing.assert_close(layer(X), torch.tensor([26.5, 39.5]))
    no_bias = layers.LinearTerm(SIZES, use_bias=False)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ["embedding.weight"]


# ---- FM -----------------------------------------------------------------------------------------
def test_fm_hand_computed():
    emb = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]]])
    # <e1,e2> = 11, <e1,e3> = 2, <e2,e3> = 4
    torch.testing.assert_close(layers.FMInteraction()(emb), torch.tensor([17.0]))
    torch.testing.assert_close(cpu.CpuFMInteraction()(emb), torch.tensor([17.0]))


def test_fm_matches_explicit_pairwise_sum():
    emb = _emb(1)
    e = emb.double().numpy()
    expected = [sum(e[b, i] @ e[b, j] for i, j in itertools.combinations(range(F), 2)) for b in range(B)]
    out = layers.FMInteraction()(emb)
    assert out.shape == (B,)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


# ---- MLP ----------------------------------------------------------------------------------------
def test_mlp_structure_and_shapes():
    mlp = layers.MLP(6, [8, 4], activation="tanh", dropout=0.5, batch_norm=True, output_dim=1)
    kinds = [type(m).__name__ for m in mlp.net]
    assert kinds == ["Linear", "BatchNorm1d", "Tanh", "Dropout"] * 2 + ["Linear"]
    assert mlp(torch.randn(B, 6)).shape == (B, 1)
    plain = layers.MLP(6, [8], dropout=0.0)
    assert [type(m).__name__ for m in plain.net] == ["Linear", "ReLU"] and plain.output_dim == 8
    assert layers.MLP(6, [], output_dim=1)(torch.randn(B, 6)).shape == (B, 1)


def test_mlp_golden_and_grads():
    torch.manual_seed(3)
    mlp = layers.MLP(4, [3], output_dim=1)
    x = torch.randn(B, 4)
    W1, b1 = mlp.net[0].weight.detach().numpy(), mlp.net[0].bias.detach().numpy()
    W2, b2 = mlp.net[2].weight.detach().numpy(), mlp.net[2].bias.detach().numpy()
    expected = np.maximum(x.numpy() @ W1.T + b1, 0) @ W2.T + b2
    out = mlp(x)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    layers.reset_parameters(mlp)  # zero biases would block nothing: grads still reach every param
    _grads_flow(mlp, mlp(x))


def test_unknown_activation():
    with pytest.raises(CtrkitError, match="activation 'swishy' is unknown; valid:"):
        layers.MLP(4, [3], activation="swishy")


@pytest.mark.parametrize("fm", [layers.FMInteraction, cpu.CpuFMInteraction])  # reference, CPU kernel
def test_fm_gradient_equals_autograd_of_the_formula_and_stays_fp32_under_autocast(fm):
    emb = torch.randn(6, 5, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, dtype=torch.float64)
    ref = 0.5 * (emb.sum(1).pow(2) - emb.pow(2).sum(1)).sum(1)
    out = fm()(emb)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, emb, g)[0], torch.autograd.grad(ref, emb, g)[0])
    e32 = emb.detach().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fm()(e32)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref.detach().float(), rtol=1e-5, atol=1e-5)


def test_mlp_relu_in_place_keeps_gradients():
    torch.manual_seed(2)
    mlp = layers.MLP(4, [5, 3], "ReLU", batch_norm=True, output_dim=1)
    ref = layers.MLP(4, [5, 3], "ReLU", batch_norm=True, output_dim=1)
    for m in ref.net:
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    ref.load_state_dict(mlp.state_dict())
    x = torch.randn(8, 4)
    a, b = mlp(x), ref(x)
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a.sum(), list(mlp.parameters()))
    gb = torch.autograd.grad(b.sum(), list(ref.parameters()))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)


# ---- CrossNet -------------------------------------------------------------------------------------
def test_crossnet_matches_per_sample_formula():
    torch.manual_seed(4)
    net = layers.CrossNet(6, 2)
    with torch.no_grad():
        net.bias.normal_()  # non-zero biases so the + b_l term is exercised
    x0 = torch.randn(B, 6)
    w, bias = net.weight.detach().double().numpy(), net.bias.detach().double().numpy()
    expected = []
    for row in x0.double().numpy():
        x = row.copy()
        for l in range(2):
            x = row * float(x @ w[l]) + bias[l] + x  # x_{l+1} = x0 (x_l . w_l) + b_l + x_l
        expected.append(x)
    out = net(x0)
    assert out.shape == (B, 6)
    np.testing.assert_allclose(out.detach().numpy(), np.array(expected), rtol=1e-5, atol=1e-6)
    _grads_flow(net, out)


def test_crossnet_zero_layers_is_identity_and_init():
    x = torch.randn(B, 6)
    assert torch.equal(layers.CrossNet(6, 0)(x), x)
    torch.manual_seed(0)
    big = layers.CrossNet(20_000, 3)
    expected_std = (2 / 20_001) ** 0.5  # xavier_normal of a Linear(D, 1)
    assert abs(big.weight.std().item() / expected_std - 1) < 0.03 and big.bias.abs().sum() == 0


# ---- inner product ------------------------------------------------------------------------------
def test_inner_product_matches_explicit_loops():
    emb = _emb(5)
    out = layers.InnerProduct(F)(emb)
    P = F * (F - 1) // 2
    assert out.shape == (B, P)
    e = emb.double().numpy()
    expected = np.zeros((B, P))
    for b in range(B):
        k = 0
        for i in range(F):
            for j in range(i + 1, F):
                expected[b, k] = sum(e[b, i, t] * e[b, j, t] for t in range(D))
                k += 1
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    emb.requires_grad_(True)
    layers.InnerProduct(F)(emb).sum().backward()
    assert emb.grad.abs().sum() > 0


def test_triu_pairs_order_is_combinations_order():
    assert list(zip(*layers.triu_pairs(5).tolist())) == list(itertools.combinations(range(5), 2))


# ---- SENET ------------------------------------------------------------------------------------
def test_senet_matches_numpy():
    torch.manual_seed(6)
    se = layers.SENet(F, reduction_ratio=2)
    W1 = se.excitation[0].weight.detach().double().numpy()
    W2 = se.excitation[2].weight.detach().double().numpy()
    assert W1.shape == (2, F) and W2.shape == (F, 2)  # reduced size max(1, int(4 / 2)) = 2
    emb = _emb(7)
    e = emb.double().numpy()
    a = np.maximum(np.maximum(e.mean(-1) @ W1.T, 0) @ W2.T, 0)
    out = se(emb)
    assert out.shape == (B, F, D)
    np.testing.assert_allclose(out.detach().numpy(), e * a[..., None], rtol=1e-5, atol=1e-7)
    assert layers.SENet(F, reduction_ratio=10).excitation[0].out_features == 1
    assert isinstance(layers.SENet(F, 2, "Sigmoid").excitation[3], torch.nn.Sigmoid)


@pytest.mark.parametrize("threads", [1, 2])
def test_senet_cpu_kernel_is_the_reference_bit_for_bit_with_thread_invariant_weight_gradients(threads):
    """The CPU SENET runs the reference's products; its weight gradients (summed over the batch) have
    the same bits at 2 threads as at 1, and the thread count is given back."""
    torch.manual_seed(3)
    ref = layers.SENet(13, reduction_ratio=3, excitation_activation="Sigmoid")
    emb = torch.randn(4096, 13, 10)
    grads = {}
    old = torch.get_num_threads()
    try:
        for name, n in (("reference", 1), ("kernel", 1), ("kernel", threads)):
            torch.set_num_threads(n)
            se = copy.deepcopy(ref) if name == "reference" else for_device(copy.deepcopy(ref), "cpu")
            assert isinstance(se, cpu.CpuSENet) == (name == "kernel")
            x = emb.clone().requires_grad_()
            out = se(x)
            out.pow(2).sum().backward()
            grads[name, n] = (out.detach(), x.grad, *(p.grad for p in se.parameters()))
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(old)
    for a, b, c in zip(grads["reference", 1], grads["kernel", 1], grads["kernel", threads]):
        assert torch.equal(a, b) and torch.equal(b, c)


# ---- bilinear -----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["by_left_field", "pair_major"])  # CPU's and GPU's
@pytest.mark.parametrize("bilinear_type", ["field_all", "field_each", "field_interaction"])
def test_bilinear_matches_explicit_pair_loop(bilinear_type, layout):
    torch.manual_seed(8)
    layer = layers.Bilinear(F, D, bilinear_type)
    P = F * (F - 1) // 2
    n = {"field_all": None, "field_each": F, "field_interaction": P}[bilinear_type]
    assert layer.weight.shape == ((D, D) if n is None else (n, D, D))
    emb = _emb(9).requires_grad_(True)
    if layout == "by_left_field":
        for_device(layer, "cpu")  # the CPU kernel; the reference is pair-major
    out = layer(emb)
    assert out.shape == (B, P, D)
    W, e = layer.weight.detach().double().numpy(), emb.detach().double().numpy()
    expected = np.zeros((B, P, D))
    for b in range(B):
        for k, (i, j) in enumerate(itertools.combinations(range(F), 2)):
            if bilinear_type == "field_all":
                Wk = W
            elif bilinear_type == "field_each":
                Wk = W[i]  # the left field's matrix
            else:
                Wk = W[k]  # the pair's matrix
            expected[b, k] = (e[b, i] @ Wk) * e[b, j]
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    _grads_flow(layer, out)
    assert emb.grad.abs().sum() > 0


@pytest.mark.parametrize("bilinear_type", ["field_all", "field_each", "field_interaction"])
def test_bilinear_layouts_have_equal_gradients_and_bf16(bilinear_type):
    """The CPU kernel's hand-written backward equals autograd through the pair-major reference
    (float64), for the input and the weight; under bf16 autocast it returns bf16 close to fp32."""
    torch.manual_seed(11)
    Fn, d = 6, 4
    layer = layers.Bilinear(Fn, d, bilinear_type).double()
    emb = torch.randn(7, Fn, d, dtype=torch.float64, requires_grad=True)
    g = torch.randn(7, Fn * (Fn - 1) // 2, d, dtype=torch.float64)
    grads = []
    for device in ("cpu", "cuda"):  # the CPU kernel, then the reference (what any other device runs)
        out = for_device(layer, device)(emb)
        grads.append((out, *torch.autograd.grad(out, (emb, layer.weight), g)))
    assert type(layer) is layers.Bilinear
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    layer = for_device(layer.float(), "cpu")
    e32 = emb.detach().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer(e32)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), layer(e32), rtol=0.05, atol=0.02)


@pytest.mark.parametrize("bilinear_type", ["field_all", "field_each", "field_interaction"])
def test_bilinear_cat_equals_the_textbook_cat_values_and_gradients(bilinear_type):
    """FiBiNET's p and q written into one buffer (the CPU kernel) equal torch.cat of the two layers'
    textbook pair-major outputs through autograd (float64): the output and the gradients of both
    inputs and both weights, also when the second input is computed from the first (SENET's q)."""
    torch.manual_seed(12)
    Fn, d, b = 5, 3, 6
    lp, lq = layers.Bilinear(Fn, d, bilinear_type).double(), layers.Bilinear(Fn, d, bilinear_type).double()
    emb = torch.randn(b, Fn, d, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(b, Fn, 1, dtype=torch.float64, requires_grad=True)
    P = Fn * (Fn - 1) // 2
    g = torch.randn(b, 2 * P, d, dtype=torch.float64)
    wrt = (emb, scale, lp.weight, lq.weight)
    ref = torch.cat([lp(emb), lq(emb * scale)], dim=1)
    assert torch.equal(layers.BilinearCat()([(lp, emb), (lq, emb * scale)]), ref)  # the reference is the cat
    bilinear_cat = for_device(layers.BilinearCat(), "cpu")
    got = bilinear_cat([(lp, emb), (lq, emb * scale)])
    assert got.shape == (b, 2 * P, d) and got.reshape(b, -1).t().is_contiguous()  # pair-major in memory
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(torch.autograd.grad(got, wrt, g), torch.autograd.grad(ref, wrt, g)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = bilinear_cat([(lp.float(), emb.detach().float()), (lq.float(), emb.detach().float())])
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), torch.cat([lp(emb.detach().float()), lq(emb.detach().float())], 1),
                               rtol=0.05, atol=0.02)


def _block_by_block(e, w, g):
    """The by-left-field bilinear written plainly, one block at a time with its own permuted weight:
    the GEMMs and elementwise ops the seeded results were made with (output, grad emb, grad weight)."""
    b, fn, d = e.shape
    out, lefts, s = [], [], 0
    g_e, g_w = torch.zeros_like(e), torch.empty_like(w)
    for i in range(fn - 1):
        n = fn - 1 - i
        wi = w[s:s + n].permute(1, 0, 2).reshape(d, n * d)
        left = e[:, i] @ wi
        out.append(left.view(b, n, d) * e[:, i + 1:])
        gi = g[:, s:s + n]
        g_e[:, i + 1:].addcmul_(gi, left.view(b, n, d))
        g_left = (gi * e[:, i + 1:]).reshape(b, n * d)
        g_e[:, i] += g_left @ wi.t()
        g_w[s:s + n] = (e[:, i].t() @ g_left).view(d, n, d).permute(1, 0, 2)
        s += n
    return torch.cat(out, dim=1), g_e, g_w


@pytest.mark.parametrize("b, fn, d", [(512, 39, 4), (300, 24, 4), (64, 13, 16), (7, 5, 3)])
def test_bilinear_kernel_is_bit_for_bit_the_block_by_block_products(b, fn, d):
    """The kernel permutes each weight once per step, works on transposed (pair-major) operands and
    writes the weight gradient into one buffer: in fp32 its output and gradients are the batch-major
    block-by-block computation's bits (a different GEMM shape or order would change the seeded
    tables' last digits). Measured with MKL's Intel kernels; elsewhere the mirrored products may round
    differently, within float rounding."""
    torch.manual_seed(13)
    P = fn * (fn - 1) // 2
    emb = torch.randn(b, fn, d, requires_grad=True)
    w = torch.randn(P, d, d, requires_grad=True)
    g = torch.randn(b, P, d)
    out = cpu._BilinearByLeftField.apply(torch.float32, emb, w)
    got = (out, *torch.autograd.grad(out, (emb, w), g))
    for a, r in zip(got, _block_by_block(emb.detach(), w.detach(), g)):
        _same_bits_on_intel(a, r)


def _same_bits_on_intel(a: torch.Tensor, r: torch.Tensor) -> None:
    if cpublas._cpu_vendor() == "GenuineIntel":
        assert torch.equal(a, r)
    else:
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)  # sums of up to 512 fp32 terms


def test_bilinear_kernel_takes_a_non_contiguous_embedding():
    """Any layout of the embeddings in (a permuted view here): the same values and gradients as its
    contiguous copy."""
    torch.manual_seed(5)
    emb = torch.randn(6, 4, 9).permute(2, 1, 0).requires_grad_()  # [9, 4, 6]: B=9, F=4, d=6
    w = torch.randn(6, 6, 6, requires_grad=True)
    g = torch.randn(9, 6, 6)
    out = cpu._BilinearByLeftField.apply(torch.float32, emb, w)
    got = (out, *torch.autograd.grad(out, (emb, w), g))
    for a, r in zip(got, _block_by_block(emb.detach().contiguous(), w.detach(), g)):
        _same_bits_on_intel(a, r)


def test_bilinear_unknown_type():
    with pytest.raises(CtrkitError, match="bilinear_type 'pairwise' is unknown"):
        layers.Bilinear(F, D, "pairwise")


def test_crossnet_closed_form_matches_layer_by_layer_autograd():
    """CrossNet computes all layers as x0 * a + c; values AND gradients (input, weights, biases)
    must equal the textbook layer-by-layer recursion."""
    torch.manual_seed(7)
    net = layers.CrossNet(5, 3).double()
    with torch.no_grad():
        net.bias.normal_()
    x0 = torch.randn(B, 5, dtype=torch.float64, requires_grad=True)
    x = x0
    for w, b in zip(net.weight, net.bias):
        x = x0 * (x @ w).unsqueeze(1) + b + x
    g = torch.randn_like(x)
    ref = torch.autograd.grad(x, (x0, net.weight, net.bias), g)
    out = net(x0)
    got = torch.autograd.grad(out, (x0, net.weight, net.bias), g)
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the per-row scale stays fp32 under autocast
        assert net.float()(x0.detach().float()).dtype == torch.float32
