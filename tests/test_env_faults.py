"""Bad environment variables ctrkit reads (RANK, WORLD_SIZE, LOCAL_RANK, CTRKIT_DIST_TIMEOUT,
OMP_NUM_THREADS): each is a one-line `ctrkit: error:` naming the variable, exit 2, no traceback,
and a failed rendezvous does not print torch's C++ stack frames."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import free_port

from ctrkit.core.utils import CtrkitError, resolve_threads
from ctrkit.training import distributed

CLI = [sys.executable, "-m", "ctrkit.cli"]
TIMEOUT = 120  # a run that hangs fails the test instead of hanging CI




def _dist_env(**extra) -> dict:
    """env:// variables of a one-rank world on a port nobody listens on, then `extra` on top."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "LOCAL_WORLD_SIZE", "CTRKIT_DIST_TIMEOUT")}
    env.update({"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                "WORLD_SIZE": "1", "LOCAL_RANK": "0", "CTRKIT_DIST_TIMEOUT": "5", **extra})
    return env


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=TIMEOUT, env=env)


def _mutual_distributed(tmp_path) -> list[str]:
    # the environment is read before the data: a folder that does not exist is never reached
    return ["mutual", "--distributed", "--data", str(tmp_path / "no-data"), "--peers", "DeepFM,DCN",
            "--init", "scratch", "--device", "cpu", "--out", str(tmp_path / "out")]


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ctrkit: error: "), proc.stderr[-2000:]
    return lines[0]


# ---------------------------------------------------------------- torchrun's variables


@pytest.mark.parametrize("env, named", [
    ({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK='abc'"),
    ({"WORLD_SIZE": "x"}, "WORLD_SIZE='x'"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
    ({"LOCAL_RANK": "x"}, "LOCAL_RANK='x'"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK=-1"),
    # outside the world: a rank that would wait out the whole rendezvous timeout for nobody
    ({"RANK": "5", "WORLD_SIZE": "2"}, "RANK=5"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1"),
    ({"CTRKIT_DIST_TIMEOUT": "inf"}, "CTRKIT_DIST_TIMEOUT='inf'"),
    ({"CTRKIT_DIST_TIMEOUT": "1e300"}, "CTRKIT_DIST_TIMEOUT='1e300'"),
])
def test_bad_rendezvous_variables_are_one_line_errors(tmp_path, env, named):
    line = _one_error_line(_cli(_mutual_distributed(tmp_path), _dist_env(**env)))
    assert named in line


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300, 1e7, -1.0])
def test_timeouts_past_what_torch_can_count_are_refused(monkeypatch, value):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, repr(value))
    with pytest.raises(CtrkitError, match=r"CTRKIT_DIST_TIMEOUT=.*must be > 0 seconds and at most 2592000"):
        distributed._timeout_s(None)
    with pytest.raises(CtrkitError, match="must be > 0 seconds and at most"):
        distributed._timeout_s(value)  # the explicit argument is held to the same range


def test_thirty_days_is_the_longest_timeout(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "2592000")
    assert distributed._timeout_s(None) == 2592000.0


def test_rendezvous_timeout_prints_no_cpp_stack_frames(tmp_path):
    # rank 1 of 2 and no rank 0: the store never answers, the join times out after 2 s
    proc = _cli(_mutual_distributed(tmp_path), _dist_env(RANK="1", WORLD_SIZE="2", CTRKIT_DIST_TIMEOUT="2"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("ctrkit: error: rank 1: cannot join the process group"), proc.stderr[-3000:]
    assert not any(ln.startswith(("frame #", "Exception raised from")) for ln in lines), proc.stderr[-3000:]
    assert len(lines) < 10, proc.stderr[-3000:]  # torch's own log lines of the tries stay, not their frames


def test_frame_filter_keeps_every_other_line(capfd):
    with distributed._without_cpp_frames():
        os.write(2, b"[W c10d] retrying\nException raised from f at x.cpp:1 (most recent call first):\n"
                    b"frame #0: c10::Error::Error() + 0x9d\n<omitting python frames>\n\na python warning\n")
    assert capfd.readouterr().err == "[W c10d] retrying\na python warning\n"


# ---------------------------------------------------------------- OMP_NUM_THREADS under threads "auto"


@pytest.mark.parametrize("value, match", [
    ("999999", "OMP_NUM_THREADS='999999': more threads than this machine can use"),
    ("abc", "OMP_NUM_THREADS='abc': expected a positive int"),
    ("0", "OMP_NUM_THREADS='0': expected a positive int"),
    ("-2", "OMP_NUM_THREADS='-2': expected a positive int"),
])
def test_auto_holds_omp_num_threads_to_the_explicit_rules(monkeypatch, value, match):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(CtrkitError, match=match):
        resolve_threads("auto")


def test_auto_takes_the_outer_count_of_an_openmp_list(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3,2")
    assert resolve_threads("auto") == 3


def test_huge_omp_num_threads_is_an_error_not_a_crash(criteo_small, tmp_path):
    # before, "auto" handed 999999 to torch.set_num_threads and libgomp crashed at the first parallel op
    env = {**os.environ, "OMP_NUM_THREADS": "999999"}
    args = ["pretrain", "--data", str(criteo_small.path), "--model", "DeepFM", "--preset", "smoke", "--device", "cpu",
            "--epochs", "1", "--threads", "auto", "--out", str(tmp_path / "out")]
    line = _one_error_line(_cli(args, env))
    assert "OMP_NUM_THREADS='999999'" in line
