"""ctrkit.kernels.cpublas: the MLPs' fp32 CPU products in numpy's OpenBLAS equal F.linear (values and
gradients), the backend choice, its thread count, and where it steps aside."""
import os

import pytest
import torch
import torch.nn.functional as F

from ctrkit import models
from ctrkit.kernels import cpublas
from ctrkit.models import layers
from ctrkit.core.utils import CtrkitError
from ctrkit.kernels import apply_threads, for_device

HAS_OPENBLAS = cpublas._numpy_openblas() is not None
needs_openblas = pytest.mark.skipif(not HAS_OPENBLAS, reason="numpy here is not linked to OpenBLAS")


@pytest.fixture
def blas(monkeypatch):
    """Choose the backend for one test: blas("torch" | "openblas" | "auto", vendor=...)."""
    def choose(name, vendor=None):
        monkeypatch.setenv("CTRKIT_CPU_BLAS", name)
        monkeypatch.setattr(cpublas, "_BACKEND", None)
        monkeypatch.setattr(cpublas, "_POOL", None)
        monkeypatch.setattr(cpublas, "_WORKERS", None)
        monkeypatch.setattr(cpublas, "_N_WORKERS", 0)
        if vendor is not None:
            monkeypatch.setattr(cpublas, "_cpu_vendor", lambda: vendor)
        return cpublas.backend()
    yield choose
    monkeypatch.undo()
    cpublas._BACKEND = cpublas._POOL = cpublas._WORKERS = None  # the next caller decides again
    cpublas._N_WORKERS = 0


def _linear_grads(fn, x, w, b):
    """fn's output and its gradients as the backward hands them over (autograd.grad: no copy into the
    leaves' layout, so a test sees the layout the producer of x would get)."""
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    b = b.clone().requires_grad_() if b is not None else None
    out = fn(x, w, b)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                [t for t in (x, w, b) if t is not None])
    return out.detach(), *grads, *([None] if b is None else [])


@needs_openblas
@pytest.mark.parametrize("bias", [True, False])
def test_openblas_linear_equals_f_linear(blas, bias):
    assert blas("openblas") == "openblas"
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(257, 4100, generator=g), torch.randn(70, 4100, generator=g)  # a wide layer
    b = torch.randn(70, generator=g) if bias else None
    ours = _linear_grads(cpublas.linear, x, w, b)
    ref = _linear_grads(F.linear, x, w, b)
    for a, r in zip(ours, ref):
        if r is None:
            assert a is None
        else:
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-3)  # fp32 sums of 4,100 terms of size ~1
    assert cpublas.linear(x, w, b).grad_fn is None  # no grad wanted: plain tensors in, plain out


@needs_openblas
def test_input_without_grad_gets_none(blas):
    blas("openblas")
    x, w = torch.randn(8, 4096), torch.randn(3, 4096, requires_grad=True)
    out = cpublas.linear(x, w, None)
    assert type(out.grad_fn).__name__ == "_OpenBlasLinearBackward"
    out.sum().backward()
    torch.testing.assert_close(w.grad, x.sum(0).expand(3, 4096))


@needs_openblas
def test_where_it_steps_aside(blas):
    blas("openblas")
    x, w = torch.randn(4, 4096, requires_grad=True), torch.randn(3, 4096)
    assert "OpenBlas" in type(cpublas.linear(x, w, None).grad_fn).__name__
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpublas.linear(x, w, None).dtype == torch.bfloat16  # autocast's F.linear
    out = cpublas.linear(x.double(), w.double(), None)
    assert out.dtype == torch.float64 and "OpenBlas" not in type(out.grad_fn).__name__
    narrow = cpublas.linear(x[:, :4095], w[:, :4095], None)  # a narrow layer: torch's product
    assert "OpenBlas" not in type(narrow.grad_fn).__name__


@pytest.mark.parametrize("vendor, expected", [("GenuineIntel", "torch"), ("AuthenticAMD", "openblas"),
                                              ("HygonGenuine", "openblas"), ("", "torch")])
def test_auto_takes_openblas_off_intel(blas, vendor, expected):
    if expected == "openblas" and not HAS_OPENBLAS:
        expected = "torch"
    assert blas("auto", vendor=vendor) == expected


def test_without_threadpoolctl_auto_is_torch(blas, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_threadpoolctl(name, *args, **kwargs):
        if name == "threadpoolctl":
            raise ImportError("No module named 'threadpoolctl'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_threadpoolctl)
    assert blas("auto", vendor="AuthenticAMD") == "torch"


def test_torch_is_always_available_and_bad_choices_are_one_line_errors(blas, monkeypatch):
    assert blas("torch") == "torch"
    with pytest.raises(CtrkitError, match="CTRKIT_CPU_BLAS: expected one of auto, torch, openblas, got 'mkl'"):
        blas("mkl")
    monkeypatch.setattr(cpublas, "_numpy_openblas", lambda: None)
    with pytest.raises(CtrkitError, match="numpy here is not linked to OpenBLAS"):
        blas("openblas")


@needs_openblas
def test_one_openblas_thread_and_as_many_workers_as_torch_threads(blas):
    blas("openblas")
    old = torch.get_num_threads()
    try:
        for n in (2, 1, 3):
            apply_threads(n)
            assert {lib.num_threads for lib in cpublas._POOL.lib_controllers} == {1}
            assert cpublas._N_WORKERS == n and (cpublas._WORKERS is None) == (n == 1)
    finally:
        apply_threads(old)


@needs_openblas
@pytest.mark.parametrize("shape", [(2500, 300, 200), (300, 200, 2500), (5, 7, 3)])
def test_blocked_products_are_the_same_bits_for_any_worker_count(blas, shape):
    blas("openblas")
    M, K, N = shape
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g).t()  # b transposed, as in forward
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            apply_threads(n)
            outs.append(cpublas._mm(a, b))
    finally:
        apply_threads(old)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    torch.testing.assert_close(outs[0], a @ b, rtol=1e-4, atol=1e-4)


@needs_openblas
@pytest.mark.parametrize("name", ["DeepFM", "FiBiNET"])
def test_a_training_step_agrees_across_backends_and_threads(blas, name):
    """Same maths in either library; within one library the thread count changes no bit (what lets
    threads="auto" follow the machine's load with OpenBLAS too)."""
    fields = [7, 11, 5, 9, 13]
    X = torch.stack([torch.arange(64) % s for s in fields], 1)
    y = (torch.arange(64) % 3 == 0).float()
    old = torch.get_num_threads()
    grads = {}
    try:
        for backend in ("torch", "openblas"):
            blas(backend)
            for threads in (1, 2):
                apply_threads(threads)
                torch.manual_seed(0)
                model = for_device(models.build(name, fields, embedding_dim=4, hidden_units=[5000, 200]), "cpu")
                F.binary_cross_entropy_with_logits(model(X), y).backward()
                grads[backend, threads] = torch.cat([p.grad.flatten() for p in model.parameters()])
    finally:
        apply_threads(old)
    assert torch.equal(grads["openblas", 1], grads["openblas", 2])
    assert torch.equal(grads["torch", 1], grads["torch", 2])
    torch.testing.assert_close(grads["openblas", 1], grads["torch", 1], rtol=1e-4, atol=1e-6)
    assert not torch.equal(grads["openblas", 1], grads["torch", 1])  # the products did run in OpenBLAS


def test_env_records_the_backend(blas):
    from ctrkit.kernels import env_info

    for name in ("torch", "openblas") if HAS_OPENBLAS else ("torch",):
        chosen = blas(name)
        assert env_info()["cpu_blas"] == chosen == name
    assert env_info()["mkl_cbwr"] == os.environ["MKL_CBWR"]  # set by `import ctrkit` unless the user did


def test_mlp_runs_its_products_through_it(monkeypatch):
    calls, real = [], cpublas.linear
    monkeypatch.setattr(cpublas, "linear", lambda x, w, b: calls.append(tuple(w.shape)) or real(x, w, b))
    mlp = for_device(layers.MLP(6, [5, 4], output_dim=1), "cpu")  # the trainer's CPU MLP
    x = torch.randn(3, 6)
    torch.testing.assert_close(mlp(x), mlp.net(x), rtol=1e-6, atol=1e-6)
    assert calls == [(5, 6), (4, 5), (1, 4)]


def test_a_bad_choice_stops_the_cli_before_training(criteo_small, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "ctrkit.cli", "pretrain", "--data", str(criteo_small.path), "--model",
                        "DeepFM", "--preset", "smoke", "--device", "cpu", "--out", str(out)],
                       env={**os.environ, "CTRKIT_CPU_BLAS": "mkl"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == ("ctrkit: error: CTRKIT_CPU_BLAS: expected one of auto, torch, "
                                                 "openblas, got 'mkl'")
    assert "Traceback" not in r.stderr and "epoch" not in r.stderr and not out.exists()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(512, 5928, 16), (512, 2208, 16), (300, 1080, 16), (64, 720, 400)])
def test_a_column_major_input_gives_f_linears_numbers_bit_for_bit(blas, shape, bias):
    """FiBiNET's first layer reads the pair-major bilinear's output (batch stride 1): with torch's BLAS
    its products are the mirrored ones, and they are F.linear's on a row-major copy (values and the
    three gradients, bit for bit: the seeded tables must not move), x's gradient again column-major."""
    blas("torch")
    B, K, N = shape
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(B, K, generator=g), torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if bias else None
    x_col = x.t().contiguous().t()
    assert type(cpublas.linear(x_col.detach().requires_grad_(), w, b).grad_fn).__name__ == "_ColumnMajorLinearBackward"
    ours, ref = _linear_grads(cpublas.linear, x_col, w, b), _linear_grads(F.linear, x, w, b)
    for a, r in zip(ours, ref):
        if cpublas._cpu_vendor() == "GenuineIntel":  # measured there; other CPUs may round these differently
            assert (a is None and r is None) or torch.equal(a, r)
        elif r is not None:
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-3)
    assert ours[0].is_contiguous() and ours[1].t().is_contiguous()  # out row-major, x's grad column-major


def test_a_column_major_input_steps_aside_where_f_linear_keeps_it(blas):
    """Narrow inputs (at [512, 16] -> 1 the mirrored product rounded differently), row-major inputs,
    autocast and float64 keep F.linear."""
    blas("torch")
    x = torch.randn(300, 16).t().contiguous().t().requires_grad_()
    assert "ColumnMajor" not in type(cpublas.linear(x, torch.randn(1, 16), None).grad_fn).__name__
    wide = torch.randn(300, 512).t().contiguous().t().requires_grad_()
    w = torch.randn(8, 512)
    row_major = wide.detach().contiguous().requires_grad_()
    assert "ColumnMajor" not in type(cpublas.linear(row_major, w, None).grad_fn).__name__
    assert "ColumnMajor" not in type(cpublas.linear(wide.double(), w.double(), None).grad_fn).__name__
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpublas.linear(wide, w, None).dtype == torch.bfloat16


@needs_openblas
def test_with_openblas_a_column_major_input_takes_the_mirrored_products_where_openblas_would_not_run(blas):
    """FiBiNET's 5,928 -> 16 smoke layer is too thin for OpenBLAS (``_mm`` hands its products to torch):
    its column-major input takes ``_ColumnMajorLinear``, the torch backend's numbers; a layer OpenBLAS
    runs keeps ``_OpenBlasLinear`` (F.linear's numbers within rounding). Either way x's gradient comes
    back column-major."""
    g = torch.Generator().manual_seed(2)
    for (B, K, N), kind in (((512, 5928, 16), "_ColumnMajorLinearBackward"),
                            ((512, 5000, 64), "_OpenBlasLinearBackward")):
        x, w, b = torch.randn(B, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
        x_col = x.t().contiguous().t()
        blas("torch")
        on_torch = _linear_grads(cpublas.linear, x_col, w, b)
        assert blas("openblas") == "openblas"
        assert type(cpublas.linear(x_col.detach().requires_grad_(), w, b).grad_fn).__name__ == kind
        ours, ref = _linear_grads(cpublas.linear, x_col, w, b), _linear_grads(F.linear, x, w, b)
        for a, r in zip(ours, ref):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-3)
        if kind == "_ColumnMajorLinearBackward":
            assert all(torch.equal(a, t) for a, t in zip(ours, on_torch))  # the same products as on torch's BLAS
        assert ours[1].t().is_contiguous()  # x's gradient comes back in x's layout: nothing to transpose


# ---- torch's small products: the bits of one thread at any thread count (product_threads) -------------

def _at(threads: int, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def test_product_threads_keeps_every_thread_for_large_outputs_and_fewer_for_small_ones():
    b_row, b_col = torch.empty(64, 40), torch.empty(40, 64).t()
    assert _at(1, lambda: cpublas.product_threads(16, 16, b_row)) == 1
    assert _at(2, lambda: cpublas.product_threads(512, 16, b_row)) == 2  # a normal batch keeps its threads
    assert _at(2, lambda: cpublas.product_threads(16, 16, b_row)) == 1
    assert _at(4, lambda: cpublas.product_threads(16, 40, b_row)) == 2  # max(M, N) // 16
    assert _at(2, lambda: cpublas.product_threads(1, 20, b_row)) == 2  # a row or a column: never split
    assert _at(2, lambda: cpublas.product_threads(3, 2048, b_col)) == 1  # F.linear on 3 rows
    assert _at(2, lambda: cpublas.product_threads(3, 2048, b_row)) == 2


@pytest.mark.parametrize("layout", ["NN", "NT", "TN", "TT"])
def test_small_products_give_the_bits_of_one_thread_at_2_3_and_4_threads(layout):
    """torch.mm gives other bits at 2-4 threads than at 1 for some of these (MKL splits their sums);
    cpublas.mm gives the 1-thread bits at every count."""
    g = torch.Generator().manual_seed(3)
    split = 0
    for M, K, N in [(4, 152, 16), (8, 39, 13), (16, 39, 20), (2, 39, 100), (3, 624, 400), (12, 200, 40),
                    (40, 64, 30), (16, 5928, 20), (5, 156, 16), (33, 40, 47)]:
        a, b = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)
        if layout[0] == "T":
            a = a.t().contiguous().t()
        if layout[1] == "T":
            b = b.t().contiguous().t()
        one = _at(1, lambda: torch.mm(a, b))
        for t in (2, 3, 4):
            split += not torch.equal(one, _at(t, lambda: torch.mm(a, b)))
            assert torch.equal(one, _at(t, lambda: cpublas.mm(a, b))), (M, K, N, t)
    if cpublas._cpu_vendor() == "AuthenticAMD":
        assert split > 0  # what this guards against did happen here


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_layout", ["row", "column"])
def test_f_linear_on_few_threads_is_f_linears_autograd_bit_for_bit(bias, x_layout):
    """f_linear switches to _SmallLinear by thread count and shape: its products must be the ones
    autograd runs for F.linear (the same bits on one thread), and at 2-4 threads give those bits."""
    g = torch.Generator().manual_seed(4)
    for B, K, N in [(8, 156, 16), (16, 16, 1), (3, 624, 400), (2, 40, 24), (16, 200, 20)]:
        x, w = torch.randn(B, K, generator=g), torch.randn(N, K, generator=g)
        if x_layout == "column":
            x = x.t().contiguous().t()
        b = torch.randn(N, generator=g) if bias else None
        ref = _at(1, lambda: _linear_grads(F.linear, x, w, b))
        small = _at(1, lambda: _linear_grads(cpublas._SmallLinear.apply, x, w, b))
        for t in (1, 2, 3, 4):
            ours = _at(t, lambda: _linear_grads(cpublas.f_linear, x, w, b))
            for got in (small, ours):
                for a, r in zip(got, ref):
                    assert (a is None and r is None) or (torch.equal(a, r) and a.stride() == r.stride()), (B, K, N, t)
