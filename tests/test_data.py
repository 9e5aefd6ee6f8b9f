"""The data pipeline: readers, BARS protocol transforms, vocabularies, splits, bad input, CLI."""
from __future__ import annotations

import gzip
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from ctrkit import data
from ctrkit.data import synth
from ctrkit.data import encode, keys
from ctrkit.cli import main
from ctrkit.core.utils import CtrkitError

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-samples"
CRITEO_SAMPLE = SAMPLES / "criteo_sample_with_header.csv"
AVAZU_SAMPLE = SAMPLES / "avazu_sample.csv"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"{SAMPLES} absent (real samples live outside the repo)")


def arrays(path):
    d = data.load(path)
    return {s: tuple(np.array(a) for a in d.numpy(s)) for s in data.SPLITS}


def assert_same(a, b):
    for s in data.SPLITS:
        np.testing.assert_array_equal(a[s][0], b[s][0])
        np.testing.assert_array_equal(a[s][1], b[s][1])


def criteo_row(label="0", ints=None, cats=None):
    ints = ints if ints is not None else ["1"] * 13
    cats = cats if cats is not None else ["aaaa"] * 26
    return "\t".join([label] + list(ints) + list(cats))


# ------------------------------------------------------------------------ readers, real samples

@needs_samples
def test_real_criteo_header_csv_tsv_and_gzip_agree(tmp_path):
    """Header CSV (BARS), Kaggle train.txt (TSV, no header) and its .gz give the same dataset."""
    a = data.prepare("criteo", CRITEO_SAMPLE, tmp_path / "a", protocol="x4_002", progress=False)
    lines = CRITEO_SAMPLE.read_text().splitlines()
    assert lines[0].startswith("label,I1")
    tsv = "\n".join(line.replace(",", "\t") for line in lines[1:]) + "\n"
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train.txt").write_text(tsv)
    (tmp_path / "rawgz").mkdir()
    with gzip.open(tmp_path / "rawgz" / "train.txt.gz", "wt") as f:
        f.write(tsv)
    b = data.prepare("criteo", tmp_path / "raw", tmp_path / "b", protocol="x4_002", progress=False)
    c = data.prepare("criteo", tmp_path / "rawgz", tmp_path / "c", protocol="x4_002", progress=False)
    A = arrays(a)
    assert_same(A, arrays(b))
    assert_same(A, arrays(c))
    d = data.load(a)
    # 8:1:1 in blocks of 10 rows per class: exact up to the last, partial block of each class
    assert sum(d.rows.values()) == 200
    assert all(abs(d.rows[s] - n) <= 4 for s, n in zip(data.SPLITS, (160, 20, 20)))
    assert d.field_names == data.CRITEO_INT + data.CRITEO_CAT
    assert abs(np.concatenate([A[s][1] for s in data.SPLITS]).mean() - d.feature_map["ctr"]["train"]) < 0.1
    # The sample's first row: I1 is missing, I2 = 3 -> bucket 1; missing is a token of its own.
    Xtr = A["train"][0]
    assert Xtr.dtype == np.int32 and Xtr.shape[1] == 39
    assert (Xtr >= 0).all() and (Xtr < np.array(d.field_sizes)).all()


@needs_samples
def test_real_avazu_sample_hour_fields(tmp_path):
    out = data.prepare("avazu", AVAZU_SAMPLE, tmp_path / "a", progress=False)
    d = data.load(out)
    assert d.num_fields == 24 and d.field_names[0] == "hour"
    assert d.field_names[-2:] == ["weekday", "weekend"] and "id" not in d.field_names
    assert sum(d.rows.values()) == 100
    # All sample rows are from 2014-10-21 (a Tuesday): one weekday and one weekend value.
    X = np.concatenate([d.numpy(s)[0] for s in data.SPLITS])
    assert len(np.unique(X[:, -2])) == 1 and len(np.unique(X[:, -1])) == 1


def test_hour_transform_hand_checked():
    import pyarrow as pa

    (hod, wd, we), bad = keys.hour_keys(pa.array(["14102100", "14102523", "14102613", "1410xx00", "14102124"]))
    # keys are value + 1 (0 is reserved); 2014-10-25 is a Saturday, 2014-10-26 a Sunday.
    assert list(hod[:3]) == [0 + 1, 23 + 1, 13 + 1]
    assert list(wd[:3]) == [1 + 1, 5 + 1, 6 + 1]
    assert list(we[:3]) == [0 + 1, 1 + 1, 1 + 1]
    assert list(bad) == [False, False, False, True, True]


def test_bucketize_hand_checked():
    # BARS convert_to_bucket: v > 2 -> floor(ln(v)^2), else int(v).
    v = np.array([-2, -1, 0, 1, 2, 2.5, 3, 10, 100, 1000, 17668.0])
    assert data.bucketize(v).tolist() == [-2, -1, 0, 1, 2, 0, 1, 5, 21, 47, 95]
    # a huge negative is one bucket at the bound, without numpy's overflow warning (raised as an error here)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.bucketize(np.array([-1e308, -1e30, -3.5])).tolist() == [-2**62, -2**62, -3]


def test_integer_missing_is_its_own_token(tmp_path):
    rows = [criteo_row(label=str(int(i % 3 == 0)), ints=["" if i % 2 else "0"] + ["1"] * 12) for i in range(40)]
    d = _presplit(tmp_path, rows, rows[:5], rows[:5], protocol="x1")
    X = d.numpy("train")[0]
    assert len(np.unique(X[:, 0])) == 2  # "" and 0 are different values
    assert d.field_sizes[0] == 4  # padding, OOV, 2 values


# ------------------------------------------------------------------------ vocabularies, OOV

def _presplit(tmp_path, train, valid, test, protocol="x4_001", name="raw"):
    raw = tmp_path / name
    raw.mkdir()
    for s, rows in (("train", train), ("valid", valid), ("test", test)):
        (raw / f"{s}.txt").write_text("\n".join(rows) + "\n")
    return data.load(data.prepare("criteo", raw, tmp_path / f"{name}-out", protocol=protocol, progress=False))


def test_min_count_oov_and_train_only_vocab(tmp_path):
    def row(c1, label="0"):
        return criteo_row(label=label, cats=[c1] + ["zz"] * 25)

    train = [row("aaaa")] * 12 + [row("bbbb", "1")] * 10 + [row("cccc")] * 9 + [row("dddd")] * 2
    valid = [row("aaaa"), row("bbbb"), row("cccc"), row("eeee")]
    test = [row("eeee")] * 3 + [row("bbbb")] * 30  # test counts never enter the vocabulary
    d = _presplit(tmp_path, train, valid, test, protocol="x4_001")  # Criteo x4_001: min-count 10
    c1 = d.field_names.index("C1")
    assert d.field_sizes[c1] == 2 + 2  # padding, OOV, aaaa, bbbb
    Xtr = d.numpy("train")[0][:, c1]
    # Most frequent value first: aaaa (12) -> 2, bbbb (10) -> 3; cccc (9 < 10), dddd -> OOV (1).
    assert Xtr.tolist() == [2] * 12 + [3] * 10 + [1] * 11
    assert d.numpy("valid")[0][:, c1].tolist() == [2, 3, 1, 1]  # eeee unseen in train -> OOV
    assert d.rows == {"train": 33, "valid": 4, "test": 33}
    assert d.feature_map["source"]["split"] == "given"
    # x4_002 (min-count 2) keeps cccc and dddd.
    d2 = _presplit(tmp_path, train, valid, test, protocol="x4_002", name="raw2")
    assert d2.field_sizes[c1] == 2 + 4
    assert d2.numpy("valid")[0][:, c1].tolist() == [2, 3, 4, 1]


# ------------------------------------------------------------------------ too little data: one warning

def _small_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, data.SmallDataWarning)]


def test_few_of_a_class_and_empty_vocabularies_warn_once_with_the_numbers(tmp_path, capsys):
    """valid: 9 positives (under 10) -> said; test: 10 of each -> not said; C1 all distinct in train
    (under min-count 10) -> only padding and OOV; `info` shows the same facts."""
    def rows(pos, neg, c1=lambda i: "aaaa"):
        return [criteo_row(label=str(int(i < pos)), cats=[c1(i)] + ["zz"] * 25) for i in range(pos + neg)]

    train = rows(20, 30, c1=lambda i: f"v{i}")
    with pytest.warns(data.SmallDataWarning) as record:
        d = _presplit(tmp_path, train, rows(9, 10), rows(10, 10))
    (msg,) = _small_warnings(record)
    # test (10 of each class) is enough: not named
    assert msg == (f"{d.path}: too little data: valid 19 rows (9 positive, 10 negative): under 10 of a class, "
                   f"an AUC there is mostly noise; 1 of 39 fields keeps only padding and OOV after min_count 10 "
                   f"(C1): no information in it"), msg
    assert d.field_sizes[d.field_names.index("C1")] == 2
    # `ctrkit info` says the same, as text and as JSON
    assert main(["info", str(d.path)]) == 0
    assert f"  warning: {msg.split(': ', 1)[1]}" in capsys.readouterr().out.splitlines()
    assert main(["info", str(d.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["warnings"] == [msg.split(": ", 1)[1]]


def test_enough_of_each_class_and_kept_values_do_not_warn(tmp_path, capsys):
    def rows(pos, neg):
        return [criteo_row(label=str(int(i < pos))) for i in range(pos + neg)]

    with warnings.catch_warnings():
        warnings.simplefilter("error", data.SmallDataWarning)
        d = _presplit(tmp_path, rows(20, 30), rows(10, 10), rows(10, 10))
    assert data.info(d)["warnings"] == []
    assert main(["info", str(d.path)]) == 0 and "warning" not in capsys.readouterr().out


@needs_samples
def test_real_criteo_sample_warns_with_its_numbers_every_time_it_is_prepared(tmp_path):
    out = tmp_path / "c"
    for _ in range(2):  # the second call finds it prepared already: the folder is as small as it was
        with pytest.warns(data.SmallDataWarning) as record:
            data.prepare("criteo", CRITEO_SAMPLE, out, progress=False)
        (msg,) = _small_warnings(record)
        assert msg.startswith(f"{out}: too little data: valid 19 rows (4 positive, 15 negative) and test 20 rows "
                              f"(5 positive, 15 negative): under 10 of a class"), msg
        assert "11 of 39 fields keep only padding and OOV after min_count 10 (I5, C3, C4, C7, C11, ...)" in msg, msg


@needs_samples
def test_cli_prepare_of_the_real_avazu_sample_prints_one_warning_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ctrkit.cli", "prepare", "avazu", "--raw", str(AVAZU_SAMPLE),
                        "--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.splitlines() == [
        f"ctrkit: warning: {tmp_path / 'a'}: too little data: valid 10 rows (2 positive, 8 negative) and test 10 "
        f"rows (2 positive, 8 negative): under 10 of a class, an AUC there is mostly noise; 1 of 24 fields keeps "
        f"only padding and OOV after min_count 2 (device_ip): no information in it"], r.stderr


@pytest.mark.parametrize("dataset", ["criteo", "avazu"])
def test_the_synthetic_data_of_make_reproduce_does_not_warn(tmp_path, dataset):
    """`make reproduce` (profile quick) prepares 8,000 synthetic rows of each dataset: no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", data.SmallDataWarning)
        d = data.synthetic_dataset(dataset, 8000, tmp_path)
    assert data.info(d)["warnings"] == []


def test_synthetic_rows_split_other_than_the_protocol(tmp_path):
    """`split` (the study profile's 8:5:5): the same rows scored on larger valid/test sets, the
    protocol's min-count kept, recorded in the feature map and its fingerprint; cached like the rest."""
    plain = data.synthetic_dataset("avazu", 1800, tmp_path / "plain")
    d = data.synthetic_dataset("avazu", 1800, tmp_path / "split", split=(8, 5, 5))
    rows = d.rows
    assert sum(rows.values()) == 1800 and abs(rows["train"] - 800) <= 2 and abs(rows["valid"] - 500) <= 2, rows
    assert plain.rows["valid"] < 200  # the protocol's 8:1:1
    schema = d.feature_map["schema"]
    assert schema["split"]["ratios"] == [8, 5, 5] and schema["min_count"] == 2  # Avazu x4_001's min-count
    assert d.protocol == "schema" and d.fingerprint != plain.fingerprint
    # the same rows either way (only the split differs): the raw file is byte-identical
    raw = lambda folder: next(p for p in (folder / "raw").iterdir() if p.name.startswith("train."))  # noqa: E731
    assert raw(tmp_path / "plain").read_bytes() == raw(tmp_path / "split").read_bytes()
    fmap = tmp_path / "split" / "data" / "feature_map.json"
    before = os.stat(fmap).st_mtime_ns
    assert data.synthetic_dataset("avazu", 1800, tmp_path / "split", split=[8, 5, 5]).fingerprint == d.fingerprint
    assert os.stat(fmap).st_mtime_ns == before  # cached: nothing prepared again
    for bad in ((0.8, 0.1, 0.1), ("a", "b", "c"), (8, 1)):
        with pytest.raises(CtrkitError, match=r"split.*ratios.*three integers"):
            data.synthetic_dataset("avazu", 1800, tmp_path / "bad", split=bad)


# ------------------------------------------------------------------------ splits

def test_split_deterministic_stratified_and_seeded(tmp_path):
    raw = synth.generate("criteo", 5000, tmp_path / "raw", seed=5)
    a = arrays(data.prepare("criteo", raw, tmp_path / "a", seed=1, progress=False))
    b = arrays(data.prepare("criteo", raw, tmp_path / "b", seed=1, progress=False))
    c = arrays(data.prepare("criteo", raw, tmp_path / "c", seed=2, progress=False))
    assert_same(a, b)
    assert abs(a["train"][0].shape[0] - 4000) <= 4 and abs(a["valid"][0].shape[0] - 500) <= 4
    assert not np.array_equal(a["valid"][1], c["valid"][1]) or not np.array_equal(a["valid"][0], c["valid"][0])
    y = np.concatenate([a[s][1] for s in data.SPLITS])
    pos = y.sum()
    for s, frac in zip(data.SPLITS, (0.8, 0.1, 0.1)):
        # stratified in blocks of 10 rows per class: each split's positives within one block
        assert abs(a[s][1].sum() - frac * pos) <= 10


def test_splitter_proportions_and_golden_assignment():
    y = (np.arange(2000) % 4 == 0).astype(np.float32)
    sp = encode.Splitter((8, 1, 1), True, 2021)
    first = sp.assign(y[:777])
    got = np.concatenate([first, sp.assign(y[777:])])
    # Streaming in pieces gives the same assignment as one call.
    np.testing.assert_array_equal(got, encode.Splitter((8, 1, 1), True, 2021).assign(y))
    for c in (0, 1):
        counts = np.bincount(got[y == c], minlength=3)
        assert counts.tolist() == [n * 8 // 10 for n in [counts.sum()]] + [counts.sum() // 10] * 2
    x1 = encode.Splitter((7, 2, 1), False, 2021).assign(y)
    assert np.bincount(x1).tolist() == [1400, 400, 200]
    # Golden values: the assignment uses only integer arithmetic of our own, so it must never
    # change with numpy/scikit-learn versions. If this fails, existing prepared splits changed.
    assert encode.Splitter((8, 1, 1), True, 2021).assign(np.zeros(20, np.float32)).tolist() == GOLDEN


# Recorded when the splitter was written (numpy 2.4); a regression anchor, not a computed result.
GOLDEN = [1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2, 0, 0, 0, 0, 1, 0, 0, 0]


# ------------------------------------------------------------------------ bad input (CLI)

def _cli_fails(capsys, argv, out: Path, *needles):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("ctrkit: error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    assert not (out / "feature_map.json").exists()
    assert not any(p.name.startswith(f".{out.name}.tmp") for p in out.parent.iterdir())
    return err


@pytest.mark.parametrize("case,line,needle", [
    ("columns", 4, "expected 40 columns, got 39"),
    ("integer", 3, "numeric field I2 is not a number: 'abc'"),
    ("label", 5, "label 'label' must be 0 or 1, got '2'"),
])
def test_bad_lines_error_and_skip(tmp_path, capsys, case, line, needle):
    rows = [criteo_row(label=str(i % 2)) for i in range(30)]
    bad_i = line - 1
    if case == "columns":
        rows[bad_i] = rows[bad_i].rsplit("\t", 1)[0]
    elif case == "integer":
        r = rows[bad_i].split("\t")
        r[2] = "abc"
        rows[bad_i] = "\t".join(r)
    else:
        rows[bad_i] = "2" + rows[bad_i][1:]
    raw = tmp_path / "train.txt"
    raw.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    _cli_fails(capsys, ["prepare", "criteo", "--raw", str(raw), "--out", str(out), "--protocol", "x1"],
               out, str(raw), f"line {line}:", needle)
    assert main(["prepare", "criteo", "--raw", str(raw), "--out", str(out), "--protocol", "x1",
                 "--on-bad-lines", "skip"]) == 0
    assert "skipped 1 bad rows" in capsys.readouterr().out
    d = data.load(out)
    assert sum(d.rows.values()) == 29 and d.feature_map["source"]["skipped_rows"] == 1


def test_bad_line_in_header_csv_counts_header(tmp_path, capsys):
    lines = ["label," + ",".join(data.CRITEO_INT + data.CRITEO_CAT)]
    lines += [criteo_row().replace("\t", ",") for _ in range(5)]
    lines[3] = lines[3].replace("aaaa", "aaaa,extra", 1)
    raw = tmp_path / "x.csv"
    raw.write_text("\n".join(lines) + "\n")
    _cli_fails(capsys, ["prepare", "criteo", "--raw", str(raw), "--out", str(tmp_path / "o")],
               tmp_path / "o", "line 4:", "got 41")


def test_avazu_bad_hour_and_label(tmp_path, capsys):
    raw = synth.generate("avazu", 50, tmp_path / "raw", seed=1)
    lines = raw.read_text().splitlines()
    r = lines[3].split(",")
    r[2] = "14x02100"
    lines[3] = ",".join(r)
    raw.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    _cli_fails(capsys, ["prepare", "avazu", "--raw", str(raw), "--out", str(out)], out, str(raw),
               "line 4:", "hour must be YYMMDDHH, got '14x02100'")
    r = lines[6].split(",")
    r[1] = "yes"
    lines[6] = ",".join(r)
    raw.write_text("\n".join(lines) + "\n")
    assert main(["prepare", "avazu", "--raw", str(raw), "--out", str(out), "--on-bad-lines", "skip"]) == 0
    assert "skipped 2 bad rows" in capsys.readouterr().out
    assert sum(data.load(out).rows.values()) == 48


def test_bad_files_and_names(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "out"
    _cli_fails(capsys, ["prepare", "criteo", "--raw", str(empty), "--out", str(out)], out, str(empty), "line 1", "empty")
    _cli_fails(capsys, ["prepare", "criteo", "--raw", str(tmp_path / "nope.txt"), "--out", str(out)], out,
               "nope.txt", "no such file")
    _cli_fails(capsys, ["prepare", "criteo", "--raw", str(tmp_path), "--out", str(out)], out,
               "no train.*", str(tmp_path))
    ok = tmp_path / "ok.txt"
    ok.write_text("\n".join(criteo_row() for _ in range(10)) + "\n")
    _cli_fails(capsys, ["prepare", "movie", "--raw", str(ok), "--out", str(out)], out,
               "unknown dataset 'movie'", "criteo, avazu, frappe, movielens", "--schema")
    _cli_fails(capsys, ["prepare", "criteo", "--raw", str(ok), "--out", str(out), "--protocol", "x9"], out,
               "unknown protocol 'x9'", "x4_001, x4_002, x1")
    _cli_fails(capsys, ["prepare", "avazu", "--raw", str(ok), "--out", str(out)], out, "ok.txt", "line 1")
    _cli_fails(capsys, ["info", str(tmp_path / "nothing")], tmp_path / "nothing", "no such directory")


def test_gzip_truncated_fails_cleanly(tmp_path, capsys):
    raw = synth.generate("avazu", 3000, tmp_path / "raw", seed=1, gzip=True)
    blob = raw.read_bytes()
    bad = tmp_path / "cut" / "train.csv.gz"
    bad.parent.mkdir()
    bad.write_bytes(blob[: len(blob) // 2])
    out = tmp_path / "out"
    _cli_fails(capsys, ["prepare", "avazu", "--raw", str(bad.parent), "--out", str(out)], out, str(bad))


# ------------------------------------------------------------------------ generator

def test_synth_statistics_and_determinism(tmp_path):
    c = synth.generate("criteo", 20000, tmp_path / "c", seed=3)
    c2 = synth.generate("criteo", 20000, tmp_path / "c2", seed=3)
    c3 = synth.generate("criteo", 20000, tmp_path / "c3", seed=4)
    assert c.name == "train.txt" and c.read_bytes() == c2.read_bytes() != c3.read_bytes()
    rows = [line.split("\t") for line in c.read_text().splitlines()]
    assert all(len(r) == 40 for r in rows)
    y = np.array([int(r[0]) for r in rows])
    assert 0.22 < y.mean() < 0.28
    miss_i1 = np.mean([r[1] == "" for r in rows])
    assert 0.40 < miss_i1 < 0.50
    ints = np.array([float(r[5]) for r in rows if r[5]])  # I5: heavy tail
    assert np.percentile(ints, 99.9) > 20 * np.median(ints)
    card = [len({r[14 + j] for r in rows}) for j in range(26)]
    assert min(card) <= 4 and max(card) > 1000
    a = synth.generate("avazu", 20000, tmp_path / "a", seed=3)
    lines = a.read_text().splitlines()
    assert lines[0] == ",".join(synth.AVAZU_COLUMNS)
    ya = np.array([int(line.split(",")[1]) for line in lines[1:]])
    assert 0.14 < ya.mean() < 0.20
    with pytest.raises(CtrkitError, match="unknown dataset"):
        synth.generate("kdd", 10, tmp_path / "k")


def test_synth_labels_carry_signal(criteo_small):
    """Per-field effects: some field's values have clearly different CTRs in train."""
    X, y = criteo_small.numpy("train")
    best = 0.0
    for f in range(X.shape[1]):
        vals, inv, cnt = np.unique(X[:, f], return_inverse=True, return_counts=True)
        ctr = np.bincount(inv, weights=y) / cnt
        big = cnt >= 100
        if big.sum() >= 2:
            best = max(best, ctr[big].max() - ctr[big].min())
    assert best > 0.15


# ------------------------------------------------------------------------ datasets / hub

def test_datasets_path_on_local_files_matches_file_path(tmp_path):
    datasets = pytest.importorskip("datasets")
    raw = synth.generate("avazu", 2000, tmp_path / "raw", seed=9)
    lines = raw.read_text().splitlines()
    files = {}
    for s, (lo, hi) in {"train": (1, 1601), "validation": (1601, 1801), "test": (1801, 2001)}.items():
        p = tmp_path / "split" / f"{'valid' if s == 'validation' else s}.csv"
        p.parent.mkdir(exist_ok=True)
        p.write_text("\n".join([lines[0]] + lines[lo:hi]) + "\n")
        files[s] = str(p)
    feats = datasets.Features({c: datasets.Value("string") for c in synth.AVAZU_COLUMNS})
    ds = datasets.load_dataset("csv", data_files=files, features=feats, cache_dir=str(tmp_path / "hf"))
    a = data.prepare("avazu", ds, tmp_path / "a", progress=False)
    b = data.prepare("avazu", tmp_path / "split", tmp_path / "b", progress=False)
    assert data.load(a).rows == {"train": 1600, "valid": 200, "test": 200}
    assert_same(arrays(a), arrays(b))


def test_unreachable_hub_is_a_quick_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    t = time.time()
    out = tmp_path / "o"
    _cli_fails(capsys, ["prepare", "criteo", "--raw", "hf://reczoo/Criteo_x4", "--out", str(out)], out,
               "hf://reczoo/Criteo_x4", "cannot reach the Hugging Face hub")
    assert time.time() - t < 15


# ------------------------------------------------------------------------ CLI end to end, caching

@pytest.mark.parametrize("dataset,fields", [("criteo", 39), ("avazu", 24)])
def test_cli_synth_prepare_info(tmp_path, capsys, dataset, fields):
    A, B = tmp_path / "A", tmp_path / "B"
    assert main(["synth", dataset, "--rows", "20000", "--out", str(A)]) == 0
    assert main(["prepare", dataset, "--raw", str(A), "--out", str(B)]) == 0
    capsys.readouterr()
    assert main(["info", str(B), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sum(info["rows"].values()) == 20000
    assert all(abs(info["rows"][s] - n) <= 4 for s, n in zip(data.SPLITS, (16000, 2000, 2000)))
    assert len(info["fields"]) == fields and all(f["vocab_size"] >= 2 for f in info["fields"])
    d = data.load(B)
    X, y = d.tensors("train")
    assert X.dtype.is_floating_point is False and str(X.dtype) == "torch.int32" and str(y.dtype) == "torch.float32"
    assert tuple(X.shape) == (info["rows"]["train"], fields)
    assert (X.max(0).values.numpy() < np.array(d.field_sizes)).all() and X.min() >= 0
    # Same input again: a no-op (files untouched); --force rebuilds to identical content.
    mtime = (B / "train_X.npy").stat().st_mtime_ns
    assert main(["prepare", dataset, "--raw", str(A), "--out", str(B)]) == 0
    assert (B / "train_X.npy").stat().st_mtime_ns == mtime
    before = arrays(B)
    assert main(["prepare", dataset, "--raw", str(A), "--out", str(B), "--force"]) == 0
    assert_same(before, arrays(B))
    # Other settings into the same directory without --force: refused.
    assert main(["prepare", dataset, "--raw", str(A), "--out", str(B), "--protocol", "x1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["info", str(B)]) == 0
    assert "train" in capsys.readouterr().out


def test_synthetic_dataset_cached(tmp_path):
    d = data.synthetic_dataset("avazu", 3000, tmp_path, seed=7)
    mtime = (d.path / "feature_map.json").stat().st_mtime_ns
    d2 = data.synthetic_dataset("avazu", 3000, tmp_path, seed=7)
    assert (d2.path / "feature_map.json").stat().st_mtime_ns == mtime
    assert d2.fingerprint == d.fingerprint
    d3 = data.synthetic_dataset("avazu", 3000, tmp_path, seed=7, protocol="x1")
    assert d3.protocol == "x1" and d3.rows == {"train": 2100, "valid": 600, "test": 300}  # unstratified: exact
    assert d3.fingerprint != d.fingerprint


def test_fixtures(criteo_small, avazu_small):
    assert criteo_small.dataset == "criteo" and criteo_small.num_fields == 39
    assert avazu_small.dataset == "avazu" and avazu_small.num_fields == 24
    assert sum(criteo_small.rows.values()) == 4000
    assert criteo_small.feature_map["created_with"]["seed"] == 2021
