"""Every model is one graph: ``torch.compile(model, fullgraph=True)`` traces the reference maths
forward and backward without a break (no data-dependent check, no autograd Function, no numpy), with
the eager values; and the trainer's CPU kernels are switched in for the CPU only."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import ctrkit.models as M
from ctrkit.kernels import cpu, cpublas, for_device
from ctrkit.models import layers

FIELDS = [3, 5, 7, 2, 4]
DEEP = {"embedding_dim": 4, "hidden_units": [8, 6], "net_dropout": 0.0, "batch_norm": True}
CASES = {"LR": {}, "FM": {"embedding_dim": 4}, "DeepFM": DEEP, "DCN": {**DEEP, "num_cross_layers": 2},
         "PNN": DEEP, "FiBiNET": DEEP}


def _batch(device, n=16):
    g = torch.Generator().manual_seed(0)
    X = torch.stack([torch.randint(0, s, (n,), generator=g) for s in FIELDS], 1).int()
    y = torch.randint(0, 2, (n,), generator=g).float()
    return X.to(device), y.to(device)


def _forward_backward(model, X, y):
    out = model(X)
    loss = F.binary_cross_entropy_with_logits(out, y)
    return out.detach(), torch.autograd.grad(loss, [p for p in model.parameters()])


def _check_one_graph(name, device):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = M.build(name, FIELDS, **CASES[name]).to(device)  # the reference maths
    if device != "cpu":
        for_device(model, device)  # what the trainer does: off the CPU, the reference stays
        assert not any(type(m) in cpu.KERNELS.values() for m in model.modules())
    twin = copy.deepcopy(model)  # batch-norm running stats move in train mode: one copy per side
    compiled = torch.compile(twin, fullgraph=True, backend="eager")  # fullgraph: any graph break raises
    X, y = _batch(device)
    eager_out, eager_grads = _forward_backward(model, X, y)
    out, grads = _forward_backward(compiled, X, y)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    model.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(X), model(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_reference_model_traces_as_one_graph_on_cpu(name):
    _check_one_graph(name, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_model_traces_as_one_graph_on_cuda(name):
    _check_one_graph(name, "cuda")


def test_the_old_per_batch_range_check_would_break_the_graph():
    """What the graph test guards against: reading a batch's values in forward (as the removed
    per-batch index check did) is a graph break under fullgraph=True."""

    class Checked(torch.nn.Module):
        def forward(self, X):
            if bool((X >= 3).any()):
                raise ValueError("out of range")
            return X.float().sum(1)

    with pytest.raises(Exception, match="(?i)data-dependent|graph break|generic_jump|Unsupported"):
        torch.compile(Checked(), fullgraph=True, backend="eager")(torch.zeros(2, 2, dtype=torch.int32))


def test_for_device_swaps_the_cpu_kernels_in_and_out_keeping_the_state():
    torch.manual_seed(0)
    model = M.build("FiBiNET", FIELDS, **DEEP)
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = lambda: {type(m) for m in model.modules()}
    assert not kinds() & set(cpu.KERNELS.values())
    assert for_device(model, torch.device("cpu")) is model
    assert {cpu.CpuFeatureEmbedding, cpu.CpuMLP, cpu.CpuBilinearCat, cpu.CpuBilinear} <= kinds()
    assert all(isinstance(m, layers.FeatureEmbedding) for m in (model.embedding, model.lr.embedding))
    assert all(torch.equal(keys[k], v) for k, v in model.state_dict().items()) and len(keys) == len(model.state_dict())
    assert [id(p) for p in M.embedding_parameters(model)] == [id(model.embedding.weight), id(model.lr.embedding.weight)]
    for_device(model, "cuda")  # any other device: back to the reference (no tensor moves here)
    assert not kinds() & set(cpu.KERNELS.values())
    for_device(model, "meta")
    assert type(model.mlp) is layers.MLP


def test_training_on_cpu_runs_the_wide_layers_in_openblas_when_chosen(monkeypatch):
    """After the trainer's for_device(model, "cpu"), a wide fp32 MLP layer's products go through
    ctrkit.kernels.cpublas (OpenBLAS when that is the backend), the embedding backward through the
    gather-rows kernel; the reference model runs torch's own."""
    torch.manual_seed(0)
    model = M.build("DeepFM", FIELDS, embedding_dim=1000, hidden_units=[8])  # first layer 5,000 -> 8: wide
    X, y = _batch("cpu")
    ref_fn = model.mlp(model.embedding(X).flatten(1)).grad_fn
    assert "OpenBlas" not in type(ref_fn).__name__
    calls = []
    real = cpublas.linear

    def spy(x, w, b):
        out = real(x, w, b)
        calls.append((tuple(w.shape), type(out.grad_fn).__name__))
        return out

    monkeypatch.setattr(cpublas, "linear", spy)
    for_device(model, "cpu")
    emb = model.embedding(X)
    assert type(emb.grad_fn).__name__.startswith("_GatherRows")
    model.mlp(emb.flatten(1))
    assert [shape for shape, _ in calls] == [(8, 5000), (1, 8)]
    wide = "_OpenBlasLinearBackward" if cpublas.backend() == "openblas" else "AddmmBackward0"
    assert calls[0][1] == wide and calls[1][1] == "AddmmBackward0"  # the narrow output layer: torch's
