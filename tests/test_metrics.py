import numpy as np
import pytest
import torch

from ctrkit.training import metrics
from ctrkit.core.utils import CtrkitError


def _sklearn():
    """sklearn.metrics, the reference; a skip where it is not installed (the GPU machine's python)."""
    return pytest.importorskip("sklearn.metrics")


def _case(n, seed, decimals=None, dtype=np.float32):
    g = np.random.default_rng(seed)
    y = (g.random(n) < 0.3).astype(np.float32)
    p = 1 / (1 + np.exp(-(g.normal(size=n) + 1.2 * y)))
    if decimals is not None:  # coarse scores: many tied predictions, across both classes
        p = np.round(p, decimals)
    return y, p.astype(dtype)


@pytest.mark.parametrize("n,decimals", [(7, None), (1000, None), (200_000, None), (1000, 1), (50_000, 2), (50_000, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_auc_and_logloss_equal_sklearn(n, decimals, dtype):
    sk = _sklearn()
    y, p = _case(n, seed=n + (decimals or 0), decimals=decimals, dtype=dtype)
    if decimals is not None:
        assert len(np.unique(p)) < n / 5  # the case really has ties
    assert metrics.auc(torch.from_numpy(y), torch.from_numpy(p)) == pytest.approx(sk.roc_auc_score(y, p), abs=1e-6)
    assert metrics.logloss(torch.from_numpy(y), torch.from_numpy(p)) == pytest.approx(sk.log_loss(y, p), abs=1e-6)


def test_extremes_all_tied_perfect_reversed_and_clipped():
    sk = _sklearn()
    y = np.array([0, 1, 0, 1, 1, 0], dtype=np.float32)
    tied = np.full(6, 0.3, dtype=np.float32)
    assert metrics.auc(y, tied) == pytest.approx(0.5, abs=1e-12)
    perfect = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3], dtype=np.float32)
    assert metrics.auc(y, perfect) == pytest.approx(1.0, abs=1e-12)
    assert metrics.auc(y, 1 - perfect) == pytest.approx(0.0, abs=1e-12)
    # Probabilities of exactly 0 and 1 are clipped like sklearn: finite and equal to it.
    for dtype in (np.float64, np.float32):
        hard = np.array([1, 0, 1, 0, 0, 1], dtype=dtype)
        assert np.isfinite(metrics.logloss(y, hard))
        # sklearn takes the log in float32 for float32 input: equal to float32's relative precision
        assert metrics.logloss(y, hard) == pytest.approx(sk.log_loss(y, hard), rel=1e-6)


def test_accepts_numpy_lists_and_any_shape():
    y, p = _case(100, seed=3)
    ref = _sklearn().roc_auc_score(y, p)
    assert metrics.auc(y.tolist(), p.tolist()) == pytest.approx(ref, abs=1e-6)
    assert metrics.auc(torch.from_numpy(y).view(10, 10), torch.from_numpy(p).view(100, 1)) == pytest.approx(ref, abs=1e-6)


def test_a_nan_prediction_gives_a_nan_auc_that_the_tracker_stops_on():
    """A NaN sorts highest and would be scored as the most confident click: NaN, like the logloss,
    so that a monitor of AUC meets the tracker's non-finite check."""
    from ctrkit.training.config import TrainConfig
    from ctrkit.training.evaluation import NonFiniteLossError
    from ctrkit.training.optim import Tracker, make_optimizer

    y = np.array([0, 1, 0, 1, 1, 0], dtype=np.float32)
    p = np.array([0.1, 0.9, np.nan, 0.8, 0.3, 0.2], dtype=np.float32)
    assert np.isnan(metrics.auc(y, p)) and np.isnan(metrics.logloss(y, p))
    model = torch.nn.Linear(2, 1)
    cfg = TrainConfig(monitor="AUC")
    tracker = Tracker(make_optimizer(model, cfg), cfg)
    with pytest.raises(NonFiniteLossError, match="validation monitor is nan"):
        tracker.on_epoch_end(1, {"auc": metrics.auc(y, p), "logloss": 0.5}, model)


def test_bad_input_is_a_clear_error():
    with pytest.raises(CtrkitError, match="only|all 3 labels are 0"):
        metrics.auc(np.zeros(3), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(CtrkitError, match="all 2 labels are 1"):
        metrics.auc(np.ones(2), np.array([0.1, 0.2]))
    with pytest.raises(CtrkitError, match="3 labels but 2 predictions"):
        metrics.logloss(np.zeros(3), np.zeros(2))
    with pytest.raises(CtrkitError, match="no samples"):
        metrics.auc(np.zeros(0), np.zeros(0))


@pytest.mark.parametrize("fn", [metrics.auc, metrics.logloss])
@pytest.mark.parametrize("label,shown", [(2.0, "2.0"), (np.nan, "nan"), (-1.0, "-1.0"), (0.5, "0.5")])
def test_a_label_other_than_0_or_1_is_refused(fn, label, shown):
    # were scored: labels {0, 2} gave a logloss of -0.99, a NaN label an AUC of 1.0
    y = np.array([0, 1, label, 1], dtype=np.float32)
    with pytest.raises(CtrkitError, match=f"labels must be 0 or 1, found {shown}"):
        fn(y, np.array([0.1, 0.9, 0.5, 0.8], dtype=np.float32))


def test_logloss_refuses_logits_and_auc_takes_any_score():
    y, logits = np.array([0, 1, 0, 1], dtype=np.float32), np.array([-3.0, 2.5, -1.0, 4.0], dtype=np.float32)
    with pytest.raises(CtrkitError, match="probabilities in .0, 1. .logits. apply a sigmoid., found -3"):
        metrics.logloss(y, logits)  # scored 1.2e-7 (clipped to [eps, 1 - eps])
    assert metrics.auc(y, logits) == 1.0  # a ranking: logits and probabilities agree


@pytest.mark.gpu
def test_on_cuda_equals_the_cpu():
    """CUDA against the CPU (which equals sklearn, above): sklearn is not on the GPU machine."""
    y, p = _case(100_000, seed=5, decimals=3)
    yc, pc = torch.from_numpy(y), torch.from_numpy(p)
    assert metrics.auc(yc.cuda(), pc.cuda()) == pytest.approx(metrics.auc(yc, pc), abs=1e-6)
    assert metrics.logloss(yc.cuda(), pc.cuda()) == pytest.approx(metrics.logloss(yc, pc), abs=1e-6)


@pytest.mark.parametrize("name, hparams", [("LR", {}), *[(m, {"embedding_dim": 4}) for m in ("FM", "DeepFM", "DCN", "PNN")],
                                           *[("FiBiNET", {"embedding_dim": 4, "bilinear_type": t})
                                             for t in ("field_all", "field_each", "field_interaction")]])
def test_forward_flops_equal_torchs_flop_counter(name, hparams):
    """The Python-level count (what orders a grid's runs by cost) gives FlopCounterMode's total."""
    from torch.utils.flop_counter import FlopCounterMode
    from ctrkit.models import build
    torch.manual_seed(0)
    model = build(name, [3] * 7 + [5] * 6, **hparams)
    X = torch.randint(0, 3, (16, 13))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(X[:8])
    assert metrics.forward_flops_per_sample(model, X) == counter.get_total_flops() / 8
    assert name in ("LR", "FM") or counter.get_total_flops() > 0


def test_forward_flops_import_nothing_heavy():
    """FlopCounterMode imports torch._dynamo (~0.9 s of CPU) in every notebook kernel; this does not."""
    import subprocess
    import sys
    code = ("import sys, torch; from ctrkit.models import build; from ctrkit.training import metrics; "
            "print(metrics.forward_flops_per_sample(build('FiBiNET', [3] * 5), torch.zeros(8, 5, dtype=torch.long)),"
            " 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) > 0 and out[1] == "False"
