"""Training slots (`ctrkit.core.slots`): no more processes train at once than the folder has slots, the
first notebook's waiting processes get a freed slot before the others, a nested hold takes no second
slot, a slot dies with its process, and a bad folder is one line naming it. Children are real
processes; who waits is read from the locks themselves, not from timing."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctrkit.core import slots
from ctrkit.core.utils import CtrkitError

# A child: waits for a slot, then holds it until the file RELEASE exists, and appends "<name> <got>
# <released>" to LOG.
CHILD = """import os, sys, time
from ctrkit.core import slots
name, log, release = sys.argv[1], sys.argv[2], sys.argv[3]
open(log + ".ready", "a").close()  # imported: about to wait for a slot
with slots.held():
    got = time.time()
    with open(log + ".got", "a") as f:
        f.write(name + "\\n")
    while not os.path.exists(release):
        time.sleep(0.01)
    released = time.time()
with open(log, "a") as f:
    f.write(f"{name} {got} {released}\\n")
"""


def _child(folder: Path, name: str, log: Path, release: Path, first: bool) -> subprocess.Popen:
    env = {**os.environ, slots.ENV: str(folder), slots.FIRST_ENV: "1" if first else "0"}
    return subprocess.Popen([sys.executable, "-c", CHILD, name, str(log), str(release)], env=env)


def _got(log: Path) -> list[str]:
    path = log.with_name(log.name + ".got")
    return path.read_text().split() if path.exists() else []


def _wait_until(cond, what: str, timeout: float = 60.0) -> None:
    until = time.time() + timeout
    while not cond():
        assert time.time() < until, f"timed out waiting for {what}"
        time.sleep(0.02)


def _locked(path: Path, mode=fcntl.LOCK_EX) -> bool:
    """Whether another process holds a lock on `path` that excludes `mode`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_no_more_processes_hold_slots_than_there_are(tmp_path):
    folder, log, release = slots.create(tmp_path / "slots", 2), tmp_path / "log", tmp_path / "release"
    children = [_child(folder, f"c{k}", log, release, first=k % 2 == 0) for k in range(5)]
    _wait_until(lambda: len(_got(log)) == 2, "two children to hold the two slots")
    time.sleep(1.0)  # the other three are started and waiting by now; none may get a slot
    assert len(_got(log)) == 2 and all(c.poll() is None for c in children)
    release.touch()  # from now on each child frees its slot as soon as it has one
    assert all(c.wait(timeout=120) == 0 for c in children)
    spans = [tuple(map(float, line.split()[1:])) for line in log.read_text().splitlines()]
    assert len(spans) == 5 and max(sum(a <= t < b for a, b in spans) for t, _ in spans) <= 2, spans


def test_a_waiting_first_process_gets_the_freed_slot_before_the_others(tmp_path, monkeypatch):
    folder, log, release = slots.create(tmp_path / "slots", 1), tmp_path / "log", tmp_path / "release"
    release.touch()
    monkeypatch.setenv(slots.ENV, str(folder))
    monkeypatch.setenv(slots.FIRST_ENV, "0")
    with slots.held():  # this process holds the only slot
        assert _locked(folder / "slot-0")
        later = _child(folder, "later", log, release, first=False)
        _wait_until(lambda: log.with_name("log.ready").exists(), "the later child to wait")
        time.sleep(0.1)
        first = _child(folder, "first", log, release, first=True)
        _wait_until(lambda: _locked(folder / slots._GATE), "the first child to wait at the gate")
    assert first.wait(timeout=60) == 0 and later.wait(timeout=60) == 0
    assert _got(log) == ["first", "later"]


def test_while_a_first_process_waits_the_others_leave_a_free_slot(tmp_path):
    folder, log, release = slots.create(tmp_path / "slots", 1), tmp_path / "log", tmp_path / "release"
    release.touch()
    gate = os.open(folder / slots._GATE, os.O_RDONLY)
    fcntl.flock(gate, fcntl.LOCK_SH)  # as a waiting process of the first notebook does
    other = _child(folder, "other", log, release, first=False)
    _wait_until(lambda: log.with_name("log.ready").exists(), "the child to wait")
    time.sleep(1.0)
    assert _got(log) == [] and other.poll() is None  # the slot is free, yet left alone
    os.close(gate)
    assert other.wait(timeout=60) == 0 and _got(log) == ["other"]


def test_a_nested_hold_takes_no_second_slot_and_the_slot_is_freed_after(tmp_path, monkeypatch):
    folder = slots.create(tmp_path / "slots", 1)
    monkeypatch.setenv(slots.ENV, str(folder))
    with slots.held():
        with slots.held():  # would wait for ever if it took a slot of its own
            assert _locked(folder / "slot-0")
        assert _locked(folder / "slot-0")
    assert not _locked(folder / "slot-0")


def test_without_the_variable_nothing_is_held(tmp_path, monkeypatch):
    folder = slots.create(tmp_path / "slots", 1)
    monkeypatch.delenv(slots.ENV, raising=False)
    with slots.held():
        assert not _locked(folder / "slot-0")


def test_a_killed_holder_frees_its_slot(tmp_path):
    folder, log = slots.create(tmp_path / "slots", 1), tmp_path / "log"
    holder = _child(folder, "holder", log, tmp_path / "never", first=True)
    _wait_until(lambda: _locked(folder / "slot-0"), "the child to hold the slot")
    holder.kill()
    holder.wait(timeout=60)
    _wait_until(lambda: not _locked(folder / "slot-0"), "the slot to be freed")


def test_a_bad_folder_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv(slots.ENV, str(tmp_path / "missing"))
    with pytest.raises(CtrkitError, match=r"training slots .*missing .*CTRKIT_SLOTS"):
        with slots.held():
            pass
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / slots._GATE).touch()
    monkeypatch.setenv(slots.ENV, str(tmp_path / "empty"))
    with pytest.raises(CtrkitError, match="no slot-"):
        with slots.held():
            pass
    with pytest.raises(CtrkitError, match="training slots"):  # never reuses a folder it did not make
        slots.create(tmp_path / "empty", 1)
