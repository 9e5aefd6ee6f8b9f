import json
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from ctrkit.experiments.store import ResultsStore, read_results
from ctrkit.core.utils import CtrkitError


def _run(run_key, n=3, **extra):
    return [dict(run_key=run_key, peer=f"M{i}", peer_index=i, test_auc=0.7 + i / 100,
                 partners=[f"M{j}" for j in range(n) if j != i], config={"lr": 1e-3}, **extra)
            for i in range(n)]


def test_append_read_roundtrip_and_tidy_frame(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    assert s.records() == [] and len(s.to_frame()) == 0
    assert s.append(_run("a")) == 3
    s.append(_run("b", n=2))
    recs = s.records()
    assert [r["run_key"] for r in recs] == ["a"] * 3 + ["b"] * 2
    assert len({r["append_id"] for r in recs}) == 2
    df = s.to_frame()
    assert list(df.columns[:4]) == ["run_key", "dataset", "fingerprint", "mode"]
    assert df["test_auc"].tolist() == pytest.approx([0.70, 0.71, 0.72, 0.70, 0.71])
    assert json.loads(df["partners"].iloc[0]) == ["M1", "M2"]
    assert s.has_run("a") and not s.has_run("c")
    out = s.to_csv(tmp_path / "r.csv")
    back = read_results(out)
    assert back["test_auc"].tolist() == pytest.approx(df["test_auc"].tolist())
    assert read_results(tmp_path / "r.jsonl").shape == df.shape


def test_forced_rerun_keeps_latest_append(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    s.append(_run("a"))
    s.append([dict(r, test_auc=0.9) for r in _run("a")])
    assert [r["test_auc"] for r in s.records()] == [0.9, 0.9, 0.9]
    assert len(s.records(latest_only=False)) == 6


def test_torn_last_line_is_ignored_and_next_append_is_clean(tmp_path):
    path = tmp_path / "r.jsonl"
    s = ResultsStore(path)
    s.append(_run("a"))
    # a writer killed in the middle of its append: the first record whole, the second torn
    other = ResultsStore(tmp_path / "scratch.jsonl")
    other.append(_run("dead"))
    payload = (tmp_path / "scratch.jsonl").read_bytes()
    cut = payload.index(b"\n") + 25
    with open(path, "ab") as f:
        f.write(payload[:cut])
    assert [r["run_key"] for r in s.records()] == ["a"] * 3  # the partial run is not half-counted
    assert not s.has_run("dead")
    s.append(_run("b"))
    with pytest.warns(UserWarning, match="unreadable"):
        keys = [r["run_key"] for r in s.records()]
    assert keys == ["a"] * 3 + ["b"] * 3


def test_a_read_parses_only_what_was_appended_and_a_rewritten_store_afresh(tmp_path, monkeypatch):
    """Every run looks itself up in the store before it trains: a whole-file parse per lookup grew
    with the square of a grid's runs. The parse of a store's whole lines is kept and only the appended
    bytes are parsed; a file whose start changed is parsed again; callers get their own records."""
    import ctrkit.experiments.store as store_mod
    path = tmp_path / "r.jsonl"
    s = ResultsStore(path)
    s.append(_run("a"))
    parsed = []
    real = store_mod.json.loads
    monkeypatch.setattr(store_mod.json, "loads", lambda b: parsed.append(b) or real(b))
    assert len(s.records()) == 3 and len(parsed) == 3
    assert len(ResultsStore(path).records()) == 3 and len(parsed) == 3  # another instance, same file
    s.append(_run("b", n=2))  # the append reads line 1 once (is this file a ctrkit store?)
    assert [r["run_key"] for r in s.records()] == ["a"] * 3 + ["b"] * 2 and len(parsed) == 1 + 5
    s.run_records("a")[0]["config"]["lr"] = 99.0  # the caller's copy
    assert s.run_records("a")[0]["config"] == {"lr": 1e-3}
    # rewritten in place (same inode, longer): parsed from its first byte, not appended to the old
    lines = path.read_bytes().splitlines(keepends=True)
    with open(path, "r+b") as f:
        f.write(b"".join(lines[3:] + lines[:3]) + json.dumps(dict(_run("c", n=1)[0])).encode() + b"\n")
    assert [r["run_key"] for r in s.records()] == ["b"] * 2 + ["a"] * 3 + ["c"]
    assert len(parsed) == 1 + 11


_WRITER = textwrap.dedent("""
    import sys
    from ctrkit.experiments.store import ResultsStore
    s = ResultsStore(sys.argv[1])
    tag = sys.argv[2]
    for k in range(int(sys.argv[3])):
        # big records make a torn interleaving likely if the lock did not work
        s.append([{"run_key": f"{tag}-{k}", "peer_index": i, "pad": "x" * 20000} for i in range(4)])
""")


def test_two_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "r.jsonl"
    script = tmp_path / "w.py"
    script.write_text(_WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(path), tag, "40"]) for tag in ("p", "q")]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 * 40 * 4
    assert all(json.loads(line)["pad"] == "x" * 20000 for line in lines)
    keys = ResultsStore(path).run_keys()
    assert keys == {f"{t}-{k}" for t in "pq" for k in range(40)}


def test_killed_writer_process_leaves_store_readable(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultsStore(path).append(_run("a"))
    # a real process killed (SIGKILL) after writing part of its payload, without the newline
    code = textwrap.dedent(f"""
        import os, signal
        with open({str(path)!r}, "ab") as f:
            f.write(b'{{"run_key": "dead", "peer_index": 0, "append_id": "z", "append_size": 2}}\\n{{"run_key": "de')
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    rc = subprocess.run([sys.executable, "-c", code]).returncode
    assert rc == -signal.SIGKILL
    s = ResultsStore(path)
    assert s.run_keys() == {"a"}  # one of two lines of "dead" made it: the run does not count
    s.append(_run("b"))
    with pytest.warns(UserWarning):
        assert s.run_keys() == {"a", "b"}


def test_store_path_errors(tmp_path):
    with pytest.raises(CtrkitError, match="directory"):
        ResultsStore(tmp_path)
    with pytest.raises(CtrkitError, match="does not exist"):
        read_results(tmp_path / "missing.jsonl")
    with pytest.raises(CtrkitError, match="serialisable"):
        ResultsStore(tmp_path / "x.jsonl").append([{"run_key": "a", "bad": object()}])
    assert not os.path.exists(tmp_path / "x.jsonl")
    assert isinstance(read_results(pd.DataFrame({"a": [1]})), pd.DataFrame)


def test_an_append_the_disk_could_not_take_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    import ctrkit.experiments.store as store_mod

    s = ResultsStore(tmp_path / "r.jsonl")
    s.append(_run("a"))
    before = s.path.read_bytes()

    real, calls = os.write, []

    def full(fd, data):  # the disk takes the first 100 bytes of the append, then is full
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, bytes(data[:100]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod.os, "write", full)
    with pytest.raises(CtrkitError, match="No space left on device.*nothing of this run was recorded"):
        s.append(_run("b"))
    monkeypatch.undo()
    assert s.path.read_bytes() == before  # not a torn append that every later read warns of
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["run_key"] for r in s.records()] == ["a"] * 3


def test_another_programs_json_lines_are_not_appended_to(tmp_path):
    theirs = tmp_path / "events.jsonl"
    theirs.write_text('{"hello": 1}\n')
    for check in (lambda st: st.check_usable(), lambda st: st.append(_run("a"))):
        with pytest.raises(CtrkitError, match="line 1 is not a ctrkit record"):
            check(ResultsStore(theirs))
    assert theirs.read_text() == '{"hello": 1}\n'
    # a store whose first append was killed mid-line is still ours
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"run_key": "x", "peer": "DeepF')
    ResultsStore(torn).append(_run("a"))
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        assert len(ResultsStore(torn).records()) == 3


def test_csv_export_replaces_only_an_earlier_export(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    s.append(_run("a"))
    out = tmp_path / "results.csv"
    s.to_csv(out)
    s.append(_run("b", n=2))
    s.to_csv(out)  # an earlier export: replaced by the newer one
    assert len(pd.read_csv(out)) == 5
    mine = tmp_path / "mine.csv"
    mine.write_text("model,auc\nDeepFM,0.8\n")
    link = tmp_path / "link.csv"
    link.symlink_to(out)
    for theirs in (mine, link):
        with pytest.raises(CtrkitError, match=f"{theirs.name}: exists and is not a ctrkit results export"):
            s.to_csv(theirs)
    assert mine.read_text() == "model,auc\nDeepFM,0.8\n" and link.is_symlink()
    with pytest.raises(CtrkitError, match="is a folder; give the CSV file's path"):
        s.to_csv(tmp_path)


def test_lookups_read_a_settled_store_once_and_see_every_change(tmp_path, monkeypatch):
    # a grid looks every run up before training: a read and a scan per lookup grew with the square of its runs
    from pathlib import Path

    from ctrkit.experiments import store as S

    path = tmp_path / "r.jsonl"
    s = ResultsStore(path)
    for k in ("a", "b", "c"):
        s.append(_run(k))
    import time

    clock = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: clock() + 60 * 10**9)  # settled: as if written a minute ago
    reads = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: reads.append(p) or real(p))
    for _ in range(3):
        assert s.has_run("b") and not s.has_run("z") and s.run_keys() == {"a", "b", "c"}
        assert [r["peer"] for r in s.run_records("c")] == ["M0", "M1", "M2"]
    assert len(reads) == 1
    s.append(_run("d", n=2))  # an append changes the size: read again
    assert s.has_run("d") and len(s.run_records("d")) == 2 and len(reads) == 2
    assert s.has_run("d") and s.has_run("a") and len(reads) == 2
    s.append(_run("b", n=2))  # a re-run: the lookup returns its newest append
    assert [r["peer"] for r in s.run_records("b")] == ["M0", "M1"]
    brute = [r for r in s.records() if r["run_key"] == "b"]
    assert [r["append_id"] for r in s.run_records("b")] == [r["append_id"] for r in brute]


def test_a_same_size_rewrite_just_after_a_read_is_seen(tmp_path):
    # size and mtime can stay the same within the file system's mtime granularity: a fresh file is read again
    path = tmp_path / "r.jsonl"
    s = ResultsStore(path)
    s.append(_run("a"))
    assert s.run_records("a")[0]["test_auc"] == 0.7
    text = path.read_text()
    path.write_text(text.replace('"test_auc": 0.7,', '"test_auc": 0.9,', 1))
    assert path.stat().st_size == len(text)
    assert s.run_records("a")[0]["test_auc"] == 0.9


def test_a_store_copied_over_with_its_mtime_kept_is_read_again(tmp_path):
    # shutil.copy2 / cp -p / a restored backup: same inode, size and (old) mtime; only the ctime moves
    import shutil

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    ResultsStore(a).append(_run("k"))
    ResultsStore(b).append(_run("k"))
    text = b.read_text().replace('"test_auc": 0.7,', '"test_auc": 0.1,', 1)
    b.write_text(text)
    for p in (a, b):
        os.utime(p, (1_000_000_000, 1_000_000_000))
    assert ResultsStore(a).run_records("k")[0]["test_auc"] == 0.7
    shutil.copy2(b, a)
    assert a.stat().st_mtime == 1_000_000_000 and a.stat().st_size == b.stat().st_size
    assert ResultsStore(a).run_records("k")[0]["test_auc"] == 0.1


def test_an_empty_file_made_for_the_export_is_taken(tmp_path):
    import tempfile

    s = ResultsStore(tmp_path / "r.jsonl")
    s.append(_run("a"))
    fd, name = tempfile.mkstemp(suffix=".csv", dir=tmp_path)
    os.close(fd)
    s.to_csv(name)
    assert len(pd.read_csv(name)) == 3
