"""Faults on the data side (issue 15): a test per class, each failing before its fix.

1 data loss in prepare, 3 OS failures and damaged files as one-line errors, 4 BOM and blank lines,
5 stale staging folders, 6 checks at load, 7 train+test without valid, 9 synth overwrite and a
truncated .npy in info, 10 input errors an audit found (bytes and file names that are not UTF-8, a
feature map of the wrong shape, synth's seed, marker and temp files).
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
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(out), "--seed", "5"], "pass --force (force=True from Python)")
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


def test_synth_again_with_the_same_settings_writes_nothing_and_succeeds(tmp_path, capsys):
    """The same `ctrkit synth` again, after it finished, would write the same bytes: it was refused
    ("exists; pass --force"). Now it leaves the file as it is and exits 0. Other settings (rows,
    seed, a dataset of the same file name) or a file changed since are refused as before."""
    out = tmp_path / "s"
    args = ["synth", "criteo", "--rows", "300", "--out", str(out)]
    assert main(args) == 0
    path = out / "train.txt"
    before = path.stat()
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out == f"{path}: already holds these 300 synthetic criteo rows (seed 2021); nothing written\n"
    assert synth.written_before("criteo", 300, out) == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    fails(capsys, [*args[:3], "301", *args[4:]], "exists", "--force")
    fails(capsys, [*args, "--seed", "7"], "exists", "--force")
    avazu = tmp_path / "a"
    assert main(["synth", "avazu", "--rows", "300", "--out", str(avazu)]) == 0
    fails(capsys, ["synth", "frappe", "--rows", "300", "--out", str(avazu)], "exists", "--force")  # train.csv too
    with path.open("a") as f:
        f.write("1\t2\n")  # changed since synth wrote it: not the file the settings describe
    assert synth.written_before("criteo", 300, out) is None
    fails(capsys, args, "exists", "--force")
    assert main([*args, "--force"]) == 0 and synth.written_before("criteo", 300, out) == path
    assert len(path.read_text().splitlines()) == 300


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


# ------------------------------------------------------------------ 10: input errors found by an audit

def _criteo_with(tmp_path, edits: dict, name="train.txt") -> Path:
    """A synthetic Criteo file (300 rows, ~75 KB) with lines replaced: {line number: bytes -> bytes}."""
    src = synth.generate("criteo", 300, tmp_path / "src", seed=4, force=True)
    lines = src.read_bytes().split(b"\n")
    for n, edit in edits.items():
        lines[n - 1] = edit(lines[n - 1])
    path = tmp_path / "bad" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"\n".join(lines))
    return path


def _bad_c1(line: bytes) -> bytes:
    cells = line.split(b"\t")
    cells[14] = b"ab\xff\xfe"  # C1: not UTF-8
    return b"\t".join(cells)


def test_a_byte_that_is_not_utf8_is_named_by_its_line(tmp_path, capsys):
    out = str(tmp_path / "o")
    late = _criteo_with(tmp_path, {100: _bad_c1}, "late.txt")  # past the first 8 KB, inside Arrow's first block
    fails(capsys, ["prepare", "criteo", "--raw", str(late), "--out", out], str(late),
          "line 100: column C1: not UTF-8 text (byte 0xff)")
    gz = late.with_suffix(".txt.gz")
    gz.write_bytes(gzip.compress(late.read_bytes()))
    fails(capsys, ["prepare", "criteo", "--raw", str(gz), "--out", out], "line 100: column C1")
    early = _criteo_with(tmp_path, {3: _bad_c1}, "early.txt")  # within the first 8 KB
    fails(capsys, ["prepare", "criteo", "--raw", str(early), "--out", out], "line 3: column C1: not UTF-8")
    header = tmp_path / "bad" / "header.csv"
    header.write_bytes(b"click,id\xff\n1,2\n")
    fails(capsys, ["prepare", "avazu", "--raw", str(header), "--out", out], "line 1: not UTF-8 text (byte 0xff")
    # with a malformed row after it, the malformed row (Arrow's error) is named, not a traceback
    both = _criteo_with(tmp_path, {100: _bad_c1, 150: lambda b: b + b"\textra"}, "both.txt")
    fails(capsys, ["prepare", "criteo", "--raw", str(both), "--out", out], "line 150: expected 40 columns, got 41")
    # skipping the malformed row, the byte is found (a skipped row is never converted: not counted)
    fails(capsys, ["prepare", "criteo", "--raw", str(both), "--out", out, "--on-bad-lines", "skip"],
          "line 100: column C1")
    assert not Path(out).exists()


def test_avazu_bad_label_after_a_bad_byte_in_the_dropped_id(tmp_path, capsys, raw):
    lines = raw.read_bytes().split(b"\n")
    lines[499] = b"12\xff3" + lines[499][lines[499].index(b","):]  # id: dropped, never converted
    cells = lines[1199].split(b",")
    cells[1] = b"7"
    lines[1199] = b",".join(cells)
    raw.write_bytes(b"\n".join(lines))
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(tmp_path / "o")],
          "line 1200: label 'click' must be 0 or 1, got '7'")
    d = _prepare(raw, tmp_path / "o", "--on-bad-lines", "skip")
    assert sum(d.rows.values()) == 1999


def test_raw_that_is_not_a_regular_file(tmp_path, capsys):
    import os

    fails(capsys, ["prepare", "criteo", "--raw", "/dev/null", "--out", str(tmp_path / "o")],
          "/dev/null: not a regular file (a character device)")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fails(capsys, ["prepare", "criteo", "--raw", str(fifo), "--out", str(tmp_path / "o")],
          "not a regular file (a named pipe)")


@pytest.mark.parametrize("edit,needle", [
    (lambda fm: fm.update(rows=[1, 2, 3]), "'rows': expected an object of rows per split, got [1, 2, 3]"),
    (lambda fm: fm["rows"].pop("test"), "lacks 'rows.test'"),
    (lambda fm: fm["rows"].update(valid=-1), "'rows.valid': expected an integer >= 0"),
    (lambda fm: fm["fields"][1].pop("vocab_size"), "lacks 'fields[1].vocab_size'"),
    (lambda fm: fm["fields"][0].update(vocab_size="7"), "'fields[0].vocab_size': expected an integer >= 1, got '7'"),
    (lambda fm: fm.update(fields="abc"), "'fields': expected a non-empty list of fields, got 'abc'"),
    (lambda fm: fm["fields"].__setitem__(2, "C1"), "'fields[2]': expected an object"),
    (lambda fm: fm.update(ctr={"train": "x"}), "'ctr.train': expected a number or null, got 'x'"),
    (lambda fm: fm.update(dataset=7), "'dataset': expected a string"),
    (lambda fm: fm.update(source=["a"]), "'source': expected an object"),
])
def test_feature_map_of_the_wrong_shape_is_one_line_naming_the_key(tmp_path, capsys, raw, edit, needle):
    out = tmp_path / "out"
    _prepare(raw, out)
    fm_path = out / "feature_map.json"
    fm = json.loads(fm_path.read_text())
    edit(fm)
    fm_path.write_text(json.dumps(fm))
    fails(capsys, ["info", str(out)], str(fm_path), needle)


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**64)])
def test_synth_seed_out_of_range(tmp_path, capsys, seed):
    out = tmp_path / "v"
    fails(capsys, ["synth", "criteo", "--rows", "30", "--out", str(out), "--seed", seed],
          f"--seed: expected an integer from 0 to 2**63-1, got {seed}")
    assert not out.exists()
    assert main(["synth", "criteo", "--rows", "30", "--out", str(out), "--seed", str(2**63 - 1)]) == 0


def test_paths_that_are_not_utf8_are_one_line(tmp_path, capsys, raw):
    import os

    bad = tmp_path / os.fsdecode(b"v\xff")
    fails(capsys, ["synth", "criteo", "--rows", "10", "--out", str(bad)], "--out", "v\\xff", "not UTF-8")
    assert not bad.exists()
    copy = tmp_path / os.fsdecode(b"x\xff.csv")
    copy.write_bytes(raw.read_bytes())
    fails(capsys, ["prepare", "avazu", "--raw", str(copy), "--out", str(tmp_path / "o")], "x\\xff.csv", "not UTF-8")
    fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(bad)], "--out", "v\\xff", "not UTF-8")
    assert not bad.exists()


def test_synth_marks_its_file_before_writing_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s"

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() raises it: no file name

    monkeypatch.setattr(synth, "write_json_atomic", full)
    fails(capsys, ["synth", "criteo", "--rows", "30", "--out", str(out)],
          f"cannot write {out / synth.MARKER}: no space left on the device")
    assert not (out / "train.txt").exists()  # nothing written that the next run would not know as its own
    monkeypatch.undo()
    assert main(["synth", "criteo", "--rows", "30", "--out", str(out), "--force"]) == 0


def test_synth_on_a_full_disk_names_the_file_and_keeps_its_marker(tmp_path, capsys, tmpfs):
    disk = tmpfs("64k")
    fails(capsys, ["synth", "criteo", "--rows", "3000", "--out", str(disk / "s")],
          f"cannot write {disk / 's' / 'train.txt'}: no space left on the device")
    assert sorted(p.name for p in (disk / "s").iterdir()) == [synth.MARKER]  # no temp file left
    assert json.loads((disk / "s" / synth.MARKER).read_text())["files"] == ["train.txt"]


def test_synth_removes_the_temp_file_of_a_killed_run(tmp_path, monkeypatch):
    import os

    out = tmp_path / "s"
    seen = []
    tables = synth._tables

    def spy(*args):
        for t in tables(*args):
            yield t
            seen.extend(p.name for p in out.iterdir())

    monkeypatch.setattr(synth, "_tables", spy)
    synth.generate("criteo", 30, out)
    assert f".train.txt.tmp-{os.getpid()}" in seen  # the temp file carries the writer's pid
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale, live = out / f".train.txt.tmp-{dead}", out / f".train.txt.tmp-{os.getppid()}"
    stale.write_bytes(b"\0" * 4096)
    live.write_bytes(b"x")  # a running writer's: left alone
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / f".train.txt.tmp-{dead}").write_bytes(b"x")  # no marker naming train.txt: not ours
    synth.generate("criteo", 30, out, force=True)
    synth.generate("criteo", 30, foreign)
    assert not stale.exists() and live.exists() and (foreign / f".train.txt.tmp-{dead}").exists()


def test_a_data_folder_that_does_not_exist_says_so(tmp_path, capsys):
    fails(capsys, ["info", str(tmp_path / "nope")], "nope: no such directory")
    (tmp_path / "empty").mkdir()
    fails(capsys, ["info", str(tmp_path / "empty")], "empty: not a prepared dataset (no feature_map.json)")
    fails(capsys, ["compare", str(tmp_path / "nope"), str(tmp_path / "empty")], "nope: no such directory")
