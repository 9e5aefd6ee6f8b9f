"""Model tests: output contract, training, checkpoint round trip, hand-computed parameter counts,
independent recomputation of the DeepFM/DCN/FiBiNET logits, and registry errors."""
import itertools
import json
import re
import shutil

import numpy as np
import pytest
import torch

import ctrkit.models as M
from ctrkit.core.utils import CtrkitError

FIELDS = [3, 5, 7, 2]
B = 16
SMALL = {"LR": {}, "FM": {"embedding_dim": 4}}
for _name in ("DeepFM", "DCN", "PNN", "FiBiNET"):
    SMALL[_name] = {"embedding_dim": 4, "hidden_units": [8, 6], "net_dropout": 0.1, "batch_norm": True}
NAMES = list(M.MODELS)


def _batch(seed=0, n=B):
    g = torch.Generator().manual_seed(seed)
    X = torch.stack([torch.randint(0, s, (n,), generator=g) for s in FIELDS], dim=1).int()
    y = torch.randint(0, 2, (n,), generator=g).float()
    return X, y


def _model(name, seed=0, **extra):
    torch.manual_seed(seed)
    return M.build(name, FIELDS, **{**SMALL[name], **extra})


def test_registry_names():
    assert NAMES == ["LR", "FM", "DeepFM", "DCN", "PNN", "FiBiNET"]


@pytest.mark.parametrize("name", NAMES)
def test_output_contract_and_int_dtypes(name):
    m = _model(name).eval()
    X, _ = _batch()
    out = m(X)
    assert out.shape == (B,) and out.dtype == torch.float32
    assert torch.equal(out, m(X.long()))
    assert m.name == name
    with pytest.raises(CtrkitError, match=r"input must be \[batch, 4\]"):
        m(X[:, :3])


@pytest.mark.parametrize("name", NAMES)
def test_grads_reach_every_parameter(name):
    m = _model(name)  # with batch norm and dropout
    X, y = _batch(1, 64)
    torch.nn.functional.binary_cross_entropy_with_logits(m(X), y).backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_training_lowers_loss(name):
    # no dropout / batch norm here: eval-mode BN running stats after 15 steps are not converged
    m = _model(name, **({"net_dropout": 0.0, "batch_norm": False} if "net_dropout" in SMALL[name] else {}))
    X, _ = _batch(1, 256)
    y = ((X[:, 0] == 0) | (X[:, 2] < 3)).float()  # learnable from first-order features alone
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    with torch.no_grad():
        first = loss_fn(m(X), y).item()
    for _ in range(15):
        opt.zero_grad()
        loss_fn(m(X), y).backward()
        opt.step()
    with torch.no_grad():
        assert loss_fn(m(X), y).item() < 0.8 * first


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_identical_logits(name, tmp_path):
    m = _model(name, seed=1)
    X, y = _batch(2)
    torch.nn.functional.binary_cross_entropy_with_logits(m(X), y).backward()  # BN stats move
    m.eval()
    path = tmp_path / "m.pt"
    torch.save({"name": m.name, "hparams": json.loads(json.dumps(m.hparams)),
                "fields": m.field_sizes, "state": m.state_dict()}, path)
    ck = torch.load(path)
    torch.manual_seed(99)  # a different init, to be overwritten by the state dict
    m2 = M.build(ck["name"], ck["fields"], **ck["hparams"]).eval()
    m2.load_state_dict(ck["state"])
    assert m2.hparams == m.hparams
    assert torch.equal(m(X), m2(X))


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_model(name):
    X, _ = _batch()
    assert torch.equal(_model(name, seed=5).eval()(X), _model(name, seed=5).eval()(X))


# ---- parameter counts: fields [3, 5, 7], d = 4, hidden [8] (V = 15, F = 3, P = 3, D = F*d = 12) ----
def _count(m):
    return sum(p.numel() for p in m.parameters())


PC_FIELDS = [3, 5, 7]
DEEP = {"embedding_dim": 4, "hidden_units": [8]}


def test_parameter_counts_hand_computed():
    V, d, F, P, h = 15, 4, 3, 3, 8
    mlp = lambda n_in: n_in * h + h + h + 1  # Linear(n_in, 8) + Linear(8, 1)
    assert _count(M.build("LR", PC_FIELDS)) == V + 1 == 16
    assert _count(M.build("FM", PC_FIELDS, embedding_dim=4)) == V * d + V + 1 == 76
    assert _count(M.build("DeepFM", PC_FIELDS, **DEEP)) == V * d + V + 1 + mlp(F * d) == 189
    # DCN: cross weights+biases 2*D per layer, DNN without output layer, final Linear(D + 8, 1)
    assert _count(M.build("DCN", PC_FIELDS, num_cross_layers=2, **DEEP)) == \
        V * d + 2 * 12 * 2 + (12 * h + h) + (12 + h + 1) == 233
    assert _count(M.build("DCN", PC_FIELDS, num_cross_layers=2, embedding_dim=4, hidden_units=[])) == \
        V * d + 2 * 12 * 2 + 12 + 1 == 121
    assert _count(M.build("PNN", PC_FIELDS, **DEEP)) == V * d + mlp(F * d + P) == 197
    # FiBiNET: emb + bias-free LR, SENET 2*F*r (r = max(1, int(3/3)) = 1), two bilinear layers,
    # MLP over 2*P*d = 24
    assert _count(M.build("FiBiNET", PC_FIELDS, **DEEP)) == V * d + V + 2 * F * 1 + 2 * P * d * d + mlp(24) == 386
    assert _count(M.build("DeepFM", PC_FIELDS, batch_norm=True, **DEEP)) == 189 + 2 * h  # BN gamma, beta


@pytest.mark.parametrize("bilinear_type, n_w, total", [("field_all", 1, 526), ("field_each", 4, 622),
                                                       ("field_interaction", 6, 686)])
def test_fibinet_parameter_count_per_bilinear_type(bilinear_type, n_w, total):
    V, d, F, P = 17, 4, 4, 6  # fields [3, 5, 7, 2]
    m = M.build("FiBiNET", FIELDS, bilinear_type=bilinear_type, **DEEP)
    assert _count(m) == V * d + V + 2 * F * 1 + 2 * n_w * d * d + (2 * P * d * 8 + 8 + 8 + 1) == total


def test_embedding_parameters_split():
    m = M.build("DeepFM", PC_FIELDS, **DEEP)
    emb = M.embedding_parameters(m)
    assert sorted(tuple(p.shape) for p in emb) == [(15, 1), (15, 4)]
    net = M.net_parameters(m)
    assert len(emb) + len(net) == len(list(m.parameters()))
    assert {id(p) for p in emb}.isdisjoint(id(p) for p in net)
    assert [tuple(p.shape) for p in M.embedding_parameters(M.build("PNN", PC_FIELDS, **DEEP))] == [(15, 4)]


# ---- independent recomputation of whole-model logits from the parameters -----------------------------
def _np(t):
    return t.detach().double().numpy()


def _rows(m, X):
    starts = np.cumsum([0] + m.field_sizes[:-1])
    return X.numpy().astype(np.int64) + starts


def _mlp_np(seq, x):
    for layer in seq:  # no BN / dropout in these models (eval mode, none configured)
        if isinstance(layer, torch.nn.Linear):
            x = x @ _np(layer.weight).T + _np(layer.bias)
        else:
            x = np.maximum(x, 0)
    return x


def test_deepfm_logit_is_lr_plus_fm_plus_dnn():
    torch.manual_seed(0)
    m = M.build("DeepFM", FIELDS, embedding_dim=3, hidden_units=[5]).eval()
    with torch.no_grad():  # embeddings at 1e-4 would make the FM term invisible; use O(1) values
        m.embedding.weight.normal_()
        m.lr.embedding.weight.normal_()
        m.lr.bias.fill_(0.3)
    X, _ = _batch(3)
    rows = _rows(m, X)
    E, w = _np(m.embedding.weight)[rows], _np(m.lr.embedding.weight)[rows, 0]
    lr = w.sum(1) + 0.3
    fm = np.array([sum(E[b, i] @ E[b, j] for i, j in itertools.combinations(range(4), 2)) for b in range(B)])
    dnn = _mlp_np(m.mlp.net, E.reshape(B, -1))[:, 0]
    np.testing.assert_allclose(_np(m(X)), lr + fm + dnn, rtol=1e-5, atol=1e-5)


def test_dcn_logit_is_linear_of_cross_and_dnn():
    torch.manual_seed(0)
    m = M.build("DCN", FIELDS, embedding_dim=3, hidden_units=[5], num_cross_layers=2).eval()
    with torch.no_grad():
        m.embedding.weight.normal_()
    X, _ = _batch(4)
    x0 = _np(m.embedding.weight)[_rows(m, X)].reshape(B, -1)
    x = x0.copy()
    for l in range(2):
        x = x0 * (x @ _np(m.cross.weight[l]))[:, None] + _np(m.cross.bias[l]) + x
    z = np.concatenate([x, _mlp_np(m.mlp.net, x0)], axis=1)
    expected = z @ _np(m.fc.weight)[0] + _np(m.fc.bias)[0]
    np.testing.assert_allclose(_np(m(X)), expected, rtol=1e-5, atol=1e-5)


def test_fibinet_logit_matches_explicit_pairs():
    torch.manual_seed(0)
    m = M.build("FiBiNET", FIELDS, embedding_dim=3, hidden_units=[5], reduction_ratio=2).eval()
    with torch.no_grad():
        m.embedding.weight.normal_()
        m.lr.embedding.weight.normal_()
    X, _ = _batch(5)
    rows = _rows(m, X)
    E = _np(m.embedding.weight)[rows]
    W1, W2 = _np(m.senet.excitation[0].weight), _np(m.senet.excitation[2].weight)
    S = E * np.maximum(np.maximum(E.mean(-1) @ W1.T, 0) @ W2.T, 0)[..., None]
    pairs = list(itertools.combinations(range(4), 2))
    Wp, Wq = _np(m.bilinear_p.weight), _np(m.bilinear_q.weight)
    p = np.stack([(E[:, i] @ Wp[k]) * E[:, j] for k, (i, j) in enumerate(pairs)], axis=1)
    q = np.stack([(S[:, i] @ Wq[k]) * S[:, j] for k, (i, j) in enumerate(pairs)], axis=1)
    dnn = _mlp_np(m.mlp.net, np.concatenate([p, q], axis=1).reshape(B, -1))[:, 0]
    expected = _np(m.lr.embedding.weight)[rows, 0].sum(1) + dnn
    np.testing.assert_allclose(_np(m(X)), expected, rtol=1e-5, atol=1e-5)
    assert m.lr.bias is None  # FuxiCTR's FiBiNET adds a bias-free LR term


# ---- registry and validation -------------------------------------------------------------------------
def test_unknown_model_lists_valid_names():
    with pytest.raises(CtrkitError, match="unknown model 'xDeepFM'; valid: LR, FM, DeepFM, DCN, PNN, FiBiNET"):
        M.build("xDeepFM", FIELDS)


def test_unknown_hparam_lists_valid_ones():
    with pytest.raises(CtrkitError, match=r"DeepFM: unknown hyperparameter\(s\) hiden_units; valid: embedding_dim, "
                                          r"hidden_units, hidden_activations, net_dropout, batch_norm"):
        M.build("DeepFM", FIELDS, hiden_units=[4])
    with pytest.raises(CtrkitError, match="LR: unknown hyperparameter"):
        M.build("LR", FIELDS, embedding_dim=4)


@pytest.mark.parametrize("name, bad, msg", [
    ("DeepFM", {"hidden_units": 64}, "hidden_units must be a list"),
    ("DeepFM", {"embedding_dim": 0}, "embedding_dim must be an int >= 1"),
    ("PNN", {"net_dropout": 1.0}, r"net_dropout must be a float in \[0, 1\)"),
    ("DCN", {"batch_norm": "False"}, "batch_norm must be true or false"),
    ("DCN", {"num_cross_layers": -1}, "num_cross_layers must be an int >= 0"),
    ("FiBiNET", {"bilinear_type": "all"}, "bilinear_type must be one of"),
    ("FiBiNET", {"reduction_ratio": 0}, "reduction_ratio must be a positive number"),
    ("PNN", {"product_type": "outer"}, "product_type must be 'inner'"),
    ("DeepFM", {"hidden_activations": "swish2"}, "hidden_activations must be one of"),
])
def test_bad_hparam_values(name, bad, msg):
    with pytest.raises(CtrkitError, match=msg):
        M.build(name, FIELDS, **bad)


def test_fields_forms_and_aliases():
    fmap = {"fields": [{"name": f"C{i}", "vocab_size": s} for i, s in enumerate(FIELDS)]}

    class Data:
        field_sizes = FIELDS

    for fields in (fmap, Data(), tuple(FIELDS)):
        assert M.build("fm", fields).field_sizes == FIELDS  # names are case-insensitive
    assert M.build("IPNN", FIELDS).name == "PNN"
    for bad in ([], [3, 0], {"dataset": "criteo"}, "abc", [2.5]):
        with pytest.raises(CtrkitError, match="fields"):
            M.build("LR", bad)


def test_hparams_complete_and_json_round_trip():
    m = M.build("DCN", FIELDS, hidden_units=(4,))
    assert m.hparams == {"embedding_dim": 10, "hidden_units": [4], "hidden_activations": "ReLU",
                         "net_dropout": 0.0, "batch_norm": False, "num_cross_layers": 3}
    assert M.build("DCN", FIELDS, **json.loads(json.dumps(m.hparams))).hparams == m.hparams
    assert set(M.hparam_defaults("FiBiNET")) == set(M.build("FiBiNET", FIELDS).hparams)


def test_bad_inputs_are_clear_errors(criteo_small, tmp_path):
    """Shape and dtype per batch in the model; the index range once per split where the data is served
    (a bad index would silently read the next field's rows in the fused table): one line naming the
    file, the field and the index."""
    from ctrkit import data

    m = M.build("DeepFM", FIELDS)
    with pytest.raises(CtrkitError, match="must be int32 or int64"):
        m(torch.zeros(2, 4))
    size = criteo_small.field_sizes[2]
    for row, bad, shown in ((1, size, size), (0, -1, -1)):
        folder = tmp_path / f"bad{row}"
        shutil.copytree(criteo_small.path, folder)
        X = np.load(folder / "valid_X.npy")
        X[row, 2] = bad
        np.save(folder / "valid_X.npy", X)
        d = data.load(folder)
        name = d.field_names[2]
        with pytest.raises(CtrkitError, match=rf"^{re.escape(str(folder / 'valid_X.npy'))}: field {name} \(column 2\): "
                                              rf"index {shown} outside \[0, {size}\) of its vocabulary"):
            d.tensors("valid")
        d.tensors("train")  # the other splits are fine


@pytest.mark.parametrize("name", NAMES)
def test_logits_stay_float32_under_autocast(name):
    X, _ = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _model(name)(X).dtype == torch.float32


# ---- the CPU kernels (ctrkit.kernels.cpu) against the reference maths, whole models --------------------
KERNEL_CASES = [(n, {}) for n in NAMES] + [("FiBiNET", {"bilinear_type": t}) for t in ("field_all", "field_each")]


@pytest.mark.parametrize("name, extra", KERNEL_CASES, ids=[n + "-" + "".join(e.values()) for n, e in KERNEL_CASES])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_kernels_equal_the_reference_logits_and_gradients(name, extra, dtype, tol):
    """A whole model with the CPU kernels switched in gives the reference model's logits and every
    parameter's gradient (float64: to 1e-10; float32: to 1e-5, the sums' order differs), in train
    mode (batch norm, dropout with the same seed) and in eval mode."""
    import copy

    from ctrkit.kernels import cpu, for_device

    ref = _model(name, **extra).to(dtype)
    fast = for_device(copy.deepcopy(ref), "cpu")
    assert any(type(m) in cpu.KERNELS.values() for m in fast.modules())  # something was swapped
    assert list(fast.state_dict()) == list(ref.state_dict())
    X, y = _batch(3, 64)
    outs = []
    for m in (ref, fast):
        torch.manual_seed(7)  # the same dropout masks
        out = m(X)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, y.to(dtype))
        outs.append((out, *torch.autograd.grad(loss, list(m.parameters()))))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(X), ref.eval()(X), rtol=tol, atol=tol)


@pytest.mark.parametrize("batch", [1, 3, 8, 16])
@pytest.mark.parametrize("name", NAMES)
def test_kernels_equal_the_reference_at_small_batches_on_2_threads(name, batch):
    """At small batches the CPU kernels run small products on fewer threads (ctrkit.kernels.cpublas.
    product_threads; PNN's Gram matrix on one thread below 32 rows): still the reference's numbers."""
    import copy

    from ctrkit.kernels import apply_threads, for_device

    old = torch.get_num_threads()
    try:
        apply_threads(2)
        extra = {"batch_norm": False} if "batch_norm" in SMALL[name] else {}  # a batch may be 1 row
        ref = _model(name, **extra, **({"num_cross_layers": 4} if name == "DCN" else {}))
        fast = for_device(copy.deepcopy(ref), "cpu")
        X, y = _batch(5, batch)
        outs = []
        for m in (ref, fast):
            torch.manual_seed(7)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(X), y)
            outs.append((loss, *torch.autograd.grad(loss, list(m.parameters()))))
    finally:
        apply_threads(old)
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
