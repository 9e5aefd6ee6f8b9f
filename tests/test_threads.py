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
