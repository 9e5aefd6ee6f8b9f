"""Faults on the data side (issue 15): a test per class, each failing before its fix.

1 data loss in prepare, 3 OS failures and damaged files as one-line errors, 4 BOM and blank lines,
5 stale staging folders, 6 checks at load, 7 train+test without valid, 9 synth overwrite and a
truncated .npy in info.
"""
from __future__ import annotations

import errno
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from ctrkit import data
from ctrkit.data import synth
from ctrkit.cli import main
from ctrkit.data import ingest, outdir
from ctrkit.core.utils import CtrkitError


def fails(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("ctrkit: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def raw(tmp_path):
    """A small synthetic Avazu folder (train.csv) and its bytes."""
    path = synth.generate("avazu", 2000, tmp_path / "raw", seed=3)
    return path


def _prepare(raw_path, out, *extra):
    assert main(["prepare", "avazu", "--raw", str(raw_path), "--out", str(out), *extra]) == 0
    return data.load(out)


# ------------------------------------------------------------------ 1: data loss

def test_out_on_inside_or_around_an_input_is_refused(tmp_path, capsys, raw):
    before = raw.read_bytes()
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(raw)], "is an existing file")
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(raw), "--force"], "is an existing file")
    fails(capsys, ["prepare", "avazu", "--raw", str(raw.parent), "--out", str(raw.parent), "--force"], "is the input")
    fails(capsys, ["prepare", "avazu", "--raw", str(raw.parent), "--out", str(raw.parent / "sub")], "inside the input")
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(tmp_path), "--force"], "contains the input")
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(other), "--force"], "is an existing file")
    assert raw.read_bytes() == before and other.read_text() == "mine"
    assert sorted(p.name for p in raw.parent.iterdir()) == [".ctrkit-synth.json", "train.csv"]


def test_force_replaces_only_a_previous_ctrkit_output(tmp_path, capsys, raw):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    err = fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(foreign), "--force"],
                "holds files ctrkit did not write", "thesis.tex")
    assert "--force" not in err.split("thesis.tex")[1]  # it does not suggest forcing
    assert (foreign / "thesis.tex").read_text() == "years of work"
    out = tmp_path / "out"
    first = _prepare(raw, out).fingerprint
    assert (out / outdir.MARKER).is_file()
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(out), "--seed", "5"], "pass --force")
    assert _prepare(raw, out, "--seed", "5", "--force").fingerprint != first
    # a ctrkit output with a foreign file added is no longer replaced
    (out / "notes.md").write_text("added by hand")
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(out), "--force"], "notes.md")
    assert (out / "notes.md").is_file()


# ------------------------------------------------------------------ 3: OS failures, damaged files

def test_disk_full_is_one_line_and_keeps_the_previous_output(tmp_path, capsys, raw, monkeypatch):
    out = tmp_path / "out"
    old = _prepare(raw, out).fingerprint

    def full(self, a):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(ingest._NpyAppender, "append", full)
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(out), "--seed", "9", "--force"],
          "no space left on the device", "train_X.npy")
    assert data.load(out).fingerprint == old  # the previous output is intact
    assert not list(tmp_path.glob(".out.*"))  # and no staging folder is left


def test_unwritable_and_invalid_out(tmp_path, capsys, raw, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(blocker / "sub")], "is a file, not a folder")
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(tmp_path / "bad\0name")], "invalid path")

    def denied(path, obj):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(outdir, "write_json_atomic", denied)  # as root, chmod cannot make a folder unwritable
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(tmp_path / "o")], "permission denied")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_corrupt_gzip_is_one_line(tmp_path, capsys, raw):
    blob = bytearray(gzip.compress(raw.read_bytes()))
    blob[30:94] = bytes(64)  # damaged (not truncated): a bad deflate stream from the first block on
    bad = tmp_path / "bad" / "train.csv.gz"
    bad.parent.mkdir()
    bad.write_bytes(bytes(blob))
    fails(capsys, ["prepare", "avazu", "--raw", str(bad), "--out", str(tmp_path / "o")], str(bad))
    assert not (tmp_path / "o").exists()


def test_rows_of_x_and_y_differ_at_load(tmp_path, capsys, raw):
    out = tmp_path / "out"
    _prepare(raw, out)
    y = np.load(out / "valid_y.npy")
    np.save(out / "valid_y.npy", y[:-3])
    fails(capsys, ["info", str(out)], "split 'valid'", "rows but valid_y.npy has")


# ------------------------------------------------------------------ 4: BOM, trailing blank lines

def test_bom_and_blank_lines_are_read(tmp_path, raw):
    lines = raw.read_text().splitlines()
    quirky = tmp_path / "q" / "train.csv"
    quirky.parent.mkdir()
    quirky.write_bytes(("\ufeff" + "\r\n".join(lines[:1000]) + "\r\n\r\n" + "\r\n".join(lines[1000:]) + "\r\n\r\n").encode())
    a, b = _prepare(raw, tmp_path / "a"), _prepare(quirky, tmp_path / "b")
    assert sum(b.rows.values()) == 2000 == sum(a.rows.values())
    for s in data.SPLITS:
        np.testing.assert_array_equal(np.array(a.numpy(s)[0]), np.array(b.numpy(s)[0]))


def test_line_numbers_count_blank_lines(tmp_path, capsys, raw):
    lines = raw.read_text().splitlines()
    bad = lines[5].split(",")
    bad[1] = "7"  # click must be 0/1
    text = "\n".join(lines[:3] + ["", ""] + lines[3:5] + [",".join(bad)] + lines[6:]) + "\n"
    f = tmp_path / "b" / "train.csv"
    f.parent.mkdir()
    f.write_text(text)
    # header = line 1, data rows 1-2 = lines 2-3, two blank lines, rows 3-4 = lines 6-7, the bad row: line 8
    fails(capsys, ["prepare", "avazu", "--raw", str(f), "--out", str(tmp_path / "o")], "line 8:", "got '7'")


# ------------------------------------------------------------------ 5: stale staging folders

def test_stale_staging_folder_removed_by_the_next_run(tmp_path, raw):
    dead = 2**22 + 12345  # above the default pid_max (4,194,304): no such process
    stale = tmp_path / f".out.tmp-{dead}"
    stale.mkdir()
    (stale / outdir.MARKER).write_text("{}")
    (stale / "train_X.npy").write_bytes(b"\0" * 4096)
    foreign = tmp_path / f".out.tmp-{dead + 1}"  # no marker: not ours, left alone
    foreign.mkdir()
    _prepare(raw, tmp_path / "out")
    assert not stale.exists() and foreign.is_dir()


# ------------------------------------------------------------------ 6: checks at load

def test_all_zero_training_labels_fail_at_load(tmp_path, capsys, raw):
    out = tmp_path / "out"
    _prepare(raw, out)
    np.save(out / "train_y.npy", np.zeros_like(np.load(out / "train_y.npy")))
    fails(capsys, ["info", str(out)], "split 'train'", "every training label is 0")
    with pytest.raises(CtrkitError, match="nothing to learn"):
        data.load(out)


def test_label_and_index_out_of_range_found_before_training(tmp_path, capsys, raw):
    out = tmp_path / "out"
    d = _prepare(raw, out)
    y = np.load(out / "test_y.npy")
    y[0] = 2.0
    np.save(out / "test_y.npy", y)
    fails(capsys, ["info", str(out)], "split 'test'", "labels must be 0 or 1")
    y[0] = 1.0
    np.save(out / "test_y.npy", y)
    X = np.load(out / "valid_X.npy")
    X[3, 2] = d.field_sizes[2] + 5  # another field's rows, silently, on a GPU
    np.save(out / "valid_X.npy", X)
    d = data.load(out)
    # one line naming the split's file and the field (checked once, where the split is served)
    with pytest.raises(CtrkitError, match=rf"valid_X\.npy: field {d.field_names[2]} \(column 2\): index"):
        d.tensors("valid")


# ------------------------------------------------------------------ 7: train + test, no valid

def test_train_and_test_without_valid_says_what_it_does(tmp_path, capsys, raw):
    lines = raw.read_text().splitlines()
    folder = tmp_path / "tt"
    folder.mkdir()
    (folder / "train.csv").write_text("\n".join(lines[:1801]) + "\n")
    (folder / "test.csv").write_text("\n".join(lines[:1] + lines[1801:]) + "\n")
    capsys.readouterr()
    d = _prepare(folder, tmp_path / "out")
    printed = capsys.readouterr().out
    assert "note: no valid file" in printed and "test given" in printed
    assert d.rows["test"] == 200  # the test file is used as given, not ignored
    assert abs(d.rows["train"] - 1600) <= 10 and d.rows["train"] + d.rows["valid"] == 1800  # 8:1 of train
    assert "test given" in d.feature_map["source"]["split"]


# ------------------------------------------------------------------ 9: synth overwrite, truncated .npy

def test_synth_refuses_to_overwrite(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.txt").write_text("my own data\n")
    fails(capsys, ["synth", "criteo", "--rows", "100", "--out", str(mine)], "exists", "--force")
    fails(capsys, ["synth", "criteo", "--rows", "100", "--out", str(mine), "--force"], "not written by ctrkit synth")
    assert (mine / "train.txt").read_text() == "my own data\n"
    out = tmp_path / "s"
    assert main(["synth", "criteo", "--rows", "100", "--out", str(out)]) == 0
    fails(capsys, ["synth", "criteo", "--rows", "200", "--out", str(out)], "exists", "--force")
    assert main(["synth", "criteo", "--rows", "200", "--out", str(out), "--force"]) == 0
    assert len((out / "train.txt").read_text().splitlines()) == 200


def test_info_notices_a_truncated_npy(tmp_path, capsys, raw):
    out = tmp_path / "out"
    _prepare(raw, out)
    f = out / "train_X.npy"
    f.write_bytes(f.read_bytes()[:-100])
    fails(capsys, ["info", str(out)], "split 'train'", str(out))
    assert json.loads((out / "feature_map.json").read_text())["rows"]["train"] > 0


def test_kill_9_during_prepare_then_rerun_equals_an_uninterrupted_run(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    raw = synth.generate("avazu", 60_000, tmp_path / "raw", seed=8)
    ref = tmp_path / "ref"
    assert main(["prepare", "avazu", "--raw", str(raw), "--out", str(ref)]) == 0
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ctrkit.cli", "prepare", "avazu", "--raw", str(raw), "--out", str(out)]
    for delay in (0.8, 2.0):  # while reading (pass 1) and later (pass 2 or the rename), machine permitting
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not list(tmp_path.glob(".out.tmp-*")) and p.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # wait until it has started writing
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)  # a no-op if it has finished meanwhile (a fast machine)
        p.wait()
    assert main(["prepare", "avazu", "--raw", str(raw), "--out", str(out)]) == 0
    assert not list(tmp_path.glob(".out.*"))  # the killed runs' staging folders are gone
    for f in sorted(ref.glob("*.npy")):
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    assert data.load(out).fingerprint == data.load(ref).fingerprint


def test_disk_full_on_a_real_small_tmpfs(tmp_path, capsys, tmpfs):
    raw = synth.generate("avazu", 10_000, tmp_path / "raw", seed=2)  # ~1 MB of int32 indices: does not fit
    disk = tmpfs("512k")
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(disk / "out")], "no space left on the device")
    assert list(disk.iterdir()) == []  # the staging folder is gone: the disk is as it was
