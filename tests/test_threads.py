"""ctrkit.core.utils.resolve_threads / apply_threads: explicit counts, "auto" from the free cores, errors."""
import os
import subprocess
import sys

import pytest
import torch

from ctrkit.core import utils
from ctrkit.core.utils import CtrkitError, resolve_threads
from ctrkit.kernels import apply_threads


@pytest.mark.parametrize("given, expected", [(1, 1), (3, 3), ("2", 2), (" 4 ", 4)])
def test_explicit_counts_are_used_as_given(given, expected):
    assert resolve_threads(given) == expected


@pytest.mark.parametrize("bad", [0, -1, "0", "two", 1.5, True, [2], "auto2"])
def test_bad_counts_are_one_line_errors(bad):
    with pytest.raises(CtrkitError, match="threads must be a positive int or 'auto'"):
        resolve_threads(bad)


def test_auto_follows_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads("auto") == 3
    assert resolve_threads(None) == 3


@pytest.mark.parametrize("busy_of_2, expected", [(0.0, 2), (0.2, 2), (0.6, 1), (1.0, 1), (2.0, 1), (7.0, 1)])
def test_auto_leaves_out_the_cores_others_keep_busy(monkeypatch, busy_of_2, expected):
    # a 2-core machine: a core with at least 3/4 of it idle counts as free, never fewer than 1 thread
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(utils, "_usable_cores", lambda: 2)
    monkeypatch.setattr(utils.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(utils, "_busy_cores_of_others", lambda sample_s: busy_of_2)
    assert resolve_threads("auto") == expected


def test_auto_without_proc_stat_uses_every_usable_core(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(utils, "_usable_cores", lambda: 5)
    monkeypatch.setattr(utils, "_busy_cores_of_others", lambda sample_s: None)
    assert resolve_threads("auto") == 5


def test_busy_cores_take_this_process_out(monkeypatch):
    # 2 CPUs, 200 ticks elapsed, 150 of them busy; this process used 0.5 s = 50 ticks of them
    ticks = iter([(1000.0, 4000.0), (1150.0, 4200.0)])
    own = iter([10.0, 10.5])
    monkeypatch.setattr(utils, "_proc_stat_ticks", lambda: next(ticks))
    monkeypatch.setattr(utils.os, "times", lambda: (next(own), 0.0, 0.0, 0.0, 0.0))
    monkeypatch.setattr(utils.os, "sysconf", lambda name: 100)
    monkeypatch.setattr(utils.os, "cpu_count", lambda: 2)
    assert utils._busy_cores_of_others(0.0) == pytest.approx(1.0)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_a_spinning_process_is_seen_as_busy():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = utils._busy_cores_of_others(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy is not None and busy >= 0.5


def test_apply_threads_sets_torch_and_returns_the_number():
    old = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1 and torch.get_num_threads() == 1
        n = apply_threads("auto")
        assert n >= 1 and torch.get_num_threads() == n
    finally:
        torch.set_num_threads(old)


# ---- results at small batches: the same bits at any thread count -------------------------------------
# MKL shares a product with a small output out over its threads by splitting its sums (other bits at 2
# threads than at 1); ctrkit.kernels.cpublas.product_threads runs such products on fewer threads. Seen
# first as FiBiNET at batch 16 (test AUC 0.5668 at 1 thread, 0.5913 at 2), then every model with an
# MLP at batch 8, and any layer on a last batch of 2 or 3 rows.

CRITEO_LIKE = [3, 5, 7, 2, 11, 13, 4, 6, 9, 8, 10, 12, 5] * 3  # 39 fields, as Criteo (FiBiNET: 741 pairs)


def _steps(name: str, batch: int, threads: int, steps: int = 3):
    """Losses, weights after `steps` Adam steps (CPU kernels, dropout on) and eval logits at `threads`."""
    from ctrkit.kernels import for_device
    from ctrkit.models import build
    from ctrkit.training import presets

    apply_threads(threads)
    torch.manual_seed(0)
    model = for_device(build(name, CRITEO_LIKE, **{**presets.get(name, "smoke").model, **(
        {"net_dropout": 0.1} if name not in ("LR", "FM") else {})}), "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    X = torch.stack([torch.randint(0, s, (steps * batch,), generator=g) for s in CRITEO_LIKE], 1)
    y = torch.randint(0, 2, (steps * batch,), generator=g).float()
    losses = []
    for s in range(steps):
        torch.manual_seed(10 + s)  # the same dropout masks
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(X[s * batch:(s + 1) * batch]),
                                                                    y[s * batch:(s + 1) * batch])
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    with torch.no_grad():
        logits = model.eval()(X[:batch])
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()], logits


@pytest.mark.parametrize("batch", [2, 3, 8, 16])
@pytest.mark.parametrize("name", ["FiBiNET", "DeepFM", "DCN", "PNN", "FM", "LR"])
def test_small_batch_training_steps_are_the_same_bits_at_1_and_2_threads(name, batch):
    old = torch.get_num_threads()
    try:
        one, two = _steps(name, batch, 1), _steps(name, batch, 2)
    finally:
        apply_threads(old)
    assert torch.equal(one[0], two[0]), (one[0], two[0])
    assert all(torch.equal(a, b) for a, b in zip(one[1], two[1]))
    assert torch.equal(one[2], two[2])


@pytest.mark.parametrize("name, batch", [("FiBiNET", 16), ("FiBiNET", 8), ("DCN", 8), ("DeepFM", 2), ("DeepFM", 3),
                                         ("PNN", 3), ("PNN", 1)])
def test_small_batch_training_steps_are_the_same_bits_at_3_and_4_threads(name, batch):
    """More threads share out larger outputs (measured: any max(M, N) < 12 * threads), and F.linear on
    2 or 3 rows (a last batch) at most widths; PNN's Gram matrix of one row from 4 threads."""
    old = torch.get_num_threads()
    try:
        runs = [_steps(name, batch, t, steps=2) for t in (1, 3, 4)]
    finally:
        apply_threads(old)
    for other in runs[1:]:
        assert torch.equal(runs[0][0], other[0])
        assert all(torch.equal(a, b) for a, b in zip(runs[0][1], other[1]))


def test_fibinet_at_batch_16_trains_to_the_same_result_at_1_and_2_threads(criteo_small):
    """The audit's run through the trainer: FiBiNET, smoke preset, batch 16, 1 vs 2 threads."""
    from ctrkit.core.utils import seed_everything
    from ctrkit.models import build
    from ctrkit.training import config as C
    from ctrkit.training import loop as T
    from ctrkit.training import presets

    old = torch.get_num_threads()
    runs = []
    try:
        for t in (1, 2):
            seed_everything(1)
            model = build("FiBiNET", criteo_small, **presets.get("FiBiNET", "smoke").model)
            cfg = C.RunConfig.single(dict(epochs=1, batch_size=16, lr=0.01, patience=1, progress=False, device="cpu",
                                          amp="off", seed=1, threads=t))
            runs.append(T.fit(model, criteo_small, cfg))
    finally:
        apply_threads(old)
    assert [r["env"]["torch_threads"] for r in runs] == [1, 2]
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]] for r in runs]
    assert strip[0] == strip[1]
    assert (runs[0]["test_auc"], runs[0]["test_logloss"]) == (runs[1]["test_auc"], runs[1]["test_logloss"])


def test_clipping_over_a_large_table_is_the_same_bits_at_1_and_2_threads():
    """The trainer's gradient norm (`Peer.step`) runs over every embedding row: 39 x 20,000 x 16 values
    here, made dense. A plain torch.sum over so many values gives other bits at 2 threads than at 1 on
    this machine (a sum-of-squares norm fails this test); torch's vector_norm, which clipping uses, does
    not. The clipped gradients are compared: under Adam a scale's last bit seldom reaches the weights."""
    from ctrkit.models import build
    from ctrkit.training.config import TrainConfig
    from ctrkit.training.loop import Peer

    sizes = [20_000] * 39
    g = torch.Generator().manual_seed(3)
    X = torch.stack([torch.randint(0, s, (2048,), generator=g) for s in sizes], 1)
    y = torch.randint(0, 2, (2048,), generator=g).float()
    old, runs = torch.get_num_threads(), []
    try:
        for t in (1, 2):
            apply_threads(t)
            torch.manual_seed(0)
            model = build("DeepFM", sizes, embedding_dim=16, hidden_units=[400, 400, 400], net_dropout=0.0)
            table = max(model.parameters(), key=torch.Tensor.numel)
            dense = torch.randn(table.shape, generator=torch.Generator().manual_seed(4))
            peer = Peer(model, TrainConfig(clip_grad_norm=1e-3), index=0, learns_from=[], trainable=True,
                        device="cpu")
            loss = torch.nn.functional.binary_cross_entropy_with_logits(peer.logits(X), y) + (table * dense).sum()
            peer.step(loss)  # the bound is tiny: the gradients are scaled by the norm's bits
            runs.append([p.grad.clone() for p in model.parameters()] + [p.detach().clone() for p in model.parameters()])
    finally:
        apply_threads(old)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
