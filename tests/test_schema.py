"""Dataset schemas: YAML == Python object, keys checked, buckets and time fields hand-checked, file
formats agree, built-ins are schemas, Frappe/MovieLens built in, bad input, and real data (UCI
Adult) through a schema file: prepare, pretrain every model, one mutual run."""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from ctrkit import data
from ctrkit.training import presets
from ctrkit.data import synth
from ctrkit.cli import main
from ctrkit.data import DatasetSchema, Label, Numeric, Split, Time, load_schema

SHARED = Path(__file__).resolve().parents[2] / "shared"
ADULT = SHARED / "data" / "real-samples" / "adult.csv.gz"
ANCHORS = SHARED / "anchors"
needs_adult = pytest.mark.skipif(not ADULT.is_file(), reason=f"{ADULT} absent (real samples live outside the repo)")
needs_anchors = pytest.mark.skipif(not ANCHORS.is_dir(), reason=f"{ANCHORS} absent (anchors live outside the repo)")

# The committed schema of the study on Adult (figures/study-adult/); its data stays outside the repo.
ADULT_YAML = (Path(__file__).resolve().parents[1] / "docs" / "schemas" / "adult.yaml").read_text()


def arrays(path):
    d = data.load(path)
    return {s: tuple(np.array(a) for a in d.numpy(s)) for s in data.SPLITS}


def _cli_fails(capsys, argv, *needles, out=None):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("ctrkit: error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    if out is not None:  # nothing half-written: no output, no staging folder
        assert not Path(out).exists()
        assert not list(Path(out).parent.glob(f".{Path(out).name}.*"))
    return err


def _write_csv(path: Path, header, rows, delim=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([delim.join(header)] + [delim.join(map(str, r)) for r in rows]) + "\n")
    return path


# ------------------------------------------------------------------------ the schema object

def test_yaml_and_python_object_are_the_same_schema(tmp_path):
    f = tmp_path / "adult.yaml"
    f.write_text(ADULT_YAML)
    s = load_schema(f)
    want = DatasetSchema(
        name="adult", label=Label(column="income", positive=(">50K",), negative=("<=50K",)),
        categorical=("workclass", "education", "marital-status", "occupation", "relationship", "race",
                     "gender", "native-country"),
        numeric=(Numeric(column="age"), Numeric(column="educational-num"), Numeric(column="capital-gain"),
                 Numeric(column="capital-loss"), Numeric(column="hours-per-week", bucket="quantile", bins=8),
                 Numeric(column="fnlwgt", bucket="quantile", bins=10)),
        min_count=2, split=Split(ratios=(8, 1, 1), seed=2021))
    assert s == want and s.digest() == want.digest()
    assert s.fields[:2] == ("workclass", "education") and s.fields[-1] == "fnlwgt" and len(s.fields) == 14
    with pytest.raises(TypeError):
        DatasetSchema("adult", Label(column="income"))  # keyword-only
    # every setting that changes the output changes the digest
    assert s.replace(min_count=3).digest() != s.digest()


@pytest.mark.parametrize("text,needles", [
    ("name: x\nlabel: y\ncatgorical: [a]\n", ["unknown key(s) catgorical", "valid: name, label, categorical, numeric"]),
    ("name: x\nlabel: y\nnumeric: [{column: a, buckets: 3}]\n", ["numeric[0]: unknown key(s) buckets", "valid: column, bucket, bins"]),
    ("name: x\nlabel: y\nnumeric: [{column: a, bucket: cube}]\n", ["numeric[0].bucket", "valid: log2, quantile"]),
    ("name: x\nlabel: {column: y, positive: ['yes']}\ncategorical: [a]\n", ["label.negative: required"]),
    ("name: x\nlabel: {column: y, positive: [yes], negative: [no]}\ncategorical: [a]\n", ["label.positive: got a boolean", "quote"]),
    ("name: x\nlabel: y\ncategorical: [a, y]\n", ["categorical: column 'y' is listed twice", "label.column"]),
    ("name: x\nlabel: y\ncategorical: [a]\nsplit: {ratios: [0, 1, 1]}\n", ["split.ratios"]),
    # the seed rule of every other seed (synth, prepare --seed, the runs): torch's signed 64 bits
    ("name: x\nlabel: y\ncategorical: [a]\nsplit: {seed: -1}\n", ["split.seed", "from 0 to 2**63-1, got -1"]),
    ("name: x\nlabel: y\ntime: [{column: t, derive: [minute]}]\n", ["time[0].derive", "valid: hour, weekday, weekend"]),
    ("name: x\nlabel: y\ncategorical: [a\n", ["invalid YAML"]),
    ("name: x\nlabel: y\ncategorical: [a]\ncolumns: [y, a, a]\n", ["columns: a listed more than once"]),
    ("name: x\nlabel: y\ncategorical: [a]\ncolumns: [y]\n", ["columns: lacks a"]),
    # bins sized arrays in the encoder: 10**12 ran out of memory
    ("name: x\nlabel: y\nnumeric: [{column: t, bucket: quantile, bins: 1000000000000}]\n",
     ["numeric[0].bins", "from 2 to 65536, got 1000000000000"]),
    # the name names folders (runs/<name>/seed<S>/...): a path would write outside them
    ('name: "../../evil"\nlabel: y\ncategorical: [a]\n', ["name: a name, not a path", "'../../evil'"]),
])
def test_bad_schema_names_the_key(tmp_path, capsys, text, needles):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    raw = _write_csv(tmp_path / "t.csv", ["y", "a", "t"], [[0, "u", 1], [1, "v", 2]])
    out = tmp_path / "out"
    _cli_fails(capsys, ["prepare", "--schema", str(f), "--raw", str(raw), "--out", str(out)], str(f), *needles, out=out)


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_schema_file_not_utf8_names_the_line(tmp_path, capsys, bom):
    f = tmp_path / "s.yaml"
    f.write_bytes(bom + b"name: adult\n\xff\xfe: x\n")
    raw = _write_csv(tmp_path / "t.csv", ["y", "a"], [[0, "u"], [1, "v"]])
    out = tmp_path / "out"
    _cli_fails(capsys, ["prepare", "--schema", str(f), "--raw", str(raw), "--out", str(out)], str(f),
               "line 2: not UTF-8 text (byte 0xff)", out=out)


# ------------------------------------------------------------------------ buckets, time, formats

def test_quantile_and_log2_buckets_hand_checked(tmp_path):
    rows = [[i % 2, v, v, "" if i == 7 else v] for i, v in enumerate(range(1, 101))]
    raw = _write_csv(tmp_path / "raw" / "train.csv", ["y", "q", "l", "m"], rows)
    for s in ("valid", "test"):
        _write_csv(tmp_path / "raw" / f"{s}.csv", ["y", "q", "l", "m"], [[0, 0.5, 3, 250], [1, 1000, 8, ""]])
    schema = DatasetSchema(name="nums", label=Label(column="y"),
                           numeric=(Numeric(column="q", bucket="quantile", bins=4), Numeric(column="l"),
                                    Numeric(column="m", bucket="quantile", bins=2)))
    d = data.load(data.prepare(schema, raw.parent, tmp_path / "out", progress=False))
    X = d.numpy("train")[0]
    # 4 equal-count bins of 1..100: 1-25 -> 2, 26-50 -> 3, 51-75 -> 4, 76-100 -> 5; missing slot 6
    assert X[:, 0].tolist() == [2] * 25 + [3] * 25 + [4] * 25 + [5] * 25
    assert d.field_sizes[0] == 2 + 4 + 1
    assert d.feature_map["fields"][0]["edges"] == [26.0, 51.0, 76.0]
    # values outside the training range fall in the first / last bin, not OOV
    assert d.numpy("valid")[0][:, 0].tolist() == [2, 5]
    # log2: v > 2 -> floor(ln(v)^2): 3 -> 1, 8 -> 4, 100 -> 21; v <= 2 -> int(v) (1 -> 1, 2 -> 2: kept apart)
    buckets = data.bucketize(np.arange(1, 101))
    assert len(np.unique(X[:, 1])) == len(np.unique(buckets))
    same = buckets[:, None] == buckets[None, :]
    np.testing.assert_array_equal(same, X[:, 1][:, None] == X[:, 1][None, :])
    # a missing value has its own index (the last) in a quantile field
    assert X[7, 2] == d.field_sizes[2] - 1 and (np.delete(X[:, 2], 7) < d.field_sizes[2] - 1).all()


def test_time_fields_derived(tmp_path):
    stamps = ["2024-03-01 00:15:00", "2024-03-02 13:00:00", "2024-03-03 13:59:59", "2024-03-04 23:00:00"] * 5
    unix = [1709252100, 1709384400, 1709474399, 1709593200] * 5  # the same instants, UTC
    raw = _write_csv(tmp_path / "t.csv", ["y", "ts", "u", "c"],
                     [[i % 2, s, u, "a"] for i, (s, u) in enumerate(zip(stamps, unix))])
    schema = DatasetSchema(name="times", label=Label(column="y"), categorical=("c",),
                           time=(Time(column="ts", format="%Y-%m-%d %H:%M:%S"), Time(column="u", format="unix")),
                           split=Split(ratios=(1, 0, 0)))
    d = data.load(data.prepare(schema, raw, tmp_path / "out", progress=False))
    assert d.field_names == ["c", "ts_hour", "ts_weekday", "ts_weekend", "u_hour", "u_weekday", "u_weekend"]
    X = d.numpy("train")[0]
    assert d.rows["train"] == 20
    # Friday 00h, Saturday 13h, Sunday 13h, Monday 23h: 3 hours, 4 weekdays, weekend = no/yes/yes/no
    ts = X[:4, 1:4]
    assert len(set(ts[:, 0])) == 3 and ts[1, 0] == ts[2, 0]
    assert len(set(ts[:, 1])) == 4
    assert ts[0, 2] == ts[3, 2] != ts[1, 2] == ts[2, 2]
    np.testing.assert_array_equal(X[:, 1:4], X[:, 4:7])  # strptime and unix agree


def test_csv_tsv_gzip_parquet_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = synth.generate("frappe", 3000, tmp_path / "raw", seed=3)
    text = raw.read_text()
    (tmp_path / "tsv").mkdir()
    (tmp_path / "tsv" / "train.tsv").write_text(text.replace(",", "\t"))
    (tmp_path / "gz").mkdir()
    with gzip.open(tmp_path / "gz" / "train.csv.gz", "wt") as f:
        f.write(text)
    (tmp_path / "pq").mkdir()
    rows = list(csv.reader(text.splitlines()))
    table = pa.table({c: [r[i] for r in rows[1:]] for i, c in enumerate(rows[0])})
    pq.write_table(table.set_column(0, "label", pa.array([int(r[0]) for r in rows[1:]])), tmp_path / "pq" / "train.parquet")
    ref = arrays(data.prepare("frappe", raw, tmp_path / "o_csv", progress=False))
    for name in ("tsv", "gz", "pq"):
        got = arrays(data.prepare("frappe", tmp_path / name, tmp_path / f"o_{name}", progress=False))
        for s in data.SPLITS:
            np.testing.assert_array_equal(ref[s][0], got[s][0], err_msg=name)
            np.testing.assert_array_equal(ref[s][1], got[s][1], err_msg=name)


def test_builtin_criteo_equals_the_same_schema_from_a_file(tmp_path):
    """Criteo is an instance of the schema mechanism: a YAML file saying the same gives the same
    arrays (the fingerprint differs: it names the schema)."""
    raw = synth.generate("criteo", 3000, tmp_path / "raw", seed=4)
    f = tmp_path / "criteo.yaml"
    cols = ["label"] + data.CRITEO_INT + data.CRITEO_CAT
    f.write_text(json.dumps({"name": "my_criteo", "label": "label", "columns": cols,
                             "numeric": data.CRITEO_INT, "categorical": data.CRITEO_CAT,
                             "order": data.CRITEO_INT + data.CRITEO_CAT, "min_count": 10}))
    a = data.prepare("criteo", raw, tmp_path / "a", progress=False)
    b = data.prepare(str(f), raw, tmp_path / "b", progress=False)
    A, B = arrays(a), arrays(b)
    for s in data.SPLITS:
        np.testing.assert_array_equal(A[s][0], B[s][0])
        np.testing.assert_array_equal(A[s][1], B[s][1])
    assert data.load(a).field_sizes == data.load(b).field_sizes
    assert data.load(a).fingerprint != data.load(b).fingerprint


# ------------------------------------------------------------------------ Frappe, MovieLens

@pytest.mark.parametrize("name,fields,big", [("frappe", data.FRAPPE_CAT, "item"), ("movielens", data.MOVIELENS_CAT, "tag_id")])
def test_frappe_movielens_shaped_synth_and_builtin(tmp_path, capsys, name, fields, big):
    assert main(["synth", name, "--rows", "6000", "--out", str(tmp_path / "raw")]) == 0
    assert main(["prepare", name, "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "d")]) == 0
    d = data.load(tmp_path / "d")
    assert d.field_names == fields and d.protocol == "x1"
    assert abs(d.rows["train"] - 4200) <= 10 and abs(d.rows["valid"] - 1200) <= 10  # 7:2:1
    assert 0.28 < d.feature_map["ctr"]["train"] < 0.38
    sizes = dict(zip(d.field_names, d.field_sizes))
    assert sizes[big] > 100 and min(sizes.values()) >= 4
    if name == "frappe":
        assert sizes["isweekend"] == 4 and sizes["daytime"] == 9  # padding, OOV, and the values
    # the BARS files: a folder of train/valid/test CSVs with a header, used as given
    lines = (tmp_path / "raw" / "train.csv").read_text().splitlines()
    bars = tmp_path / "bars"
    bars.mkdir()
    for s, (lo, hi) in {"train": (1, 4001), "valid": (4001, 5001), "test": (5001, 6001)}.items():
        (bars / f"{s}.csv").write_text("\n".join([lines[0]] + lines[lo:hi]) + "\n")
    capsys.readouterr()
    assert main(["prepare", name, "--raw", str(bars), "--out", str(tmp_path / "b"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["rows"] == {"train": 4000, "valid": 1000, "test": 1000}


@needs_anchors
@pytest.mark.parametrize("ours,bars", [("frappe", "frappe_x1"), ("movielens", "movielenslatest_x1")])
def test_frappe_movielens_bars_presets_and_results_match_anchors(ours, bars):
    cfgs = json.loads((ANCHORS / "bars-configs" / "bars_winning_configs_small.json").read_text())[bars]
    for model, entry in cfgs.items():
        c = entry["config"]
        p = presets.get(model, "bars", dataset=ours, protocol="x1")
        assert p.source["model_id"] == entry["expid"]
        assert p.train["lr"] == c["learning_rate"] and p.train["batch_size"] == c["batch_size"]
        assert p.train["embedding_regularizer"] == c["embedding_regularizer"] and p.train["patience"] == c["patience"]
        assert p.model["embedding_dim"] == c["embedding_dim"] and p.model["net_dropout"] == c["net_dropout"]
        assert p.model["hidden_units"] == c.get("hidden_units", c.get("dnn_hidden_units"))
        assert p.model["batch_norm"] == c["batch_norm"]
    board = {r["Model"]: r for r in csv.DictReader(open(ANCHORS / f"leaderboard_{bars}.csv"))}
    rows = presets.bars_results(dataset=ours, protocol="x1")
    assert {r["model"] for r in rows} >= {"DeepFM", "DCN", "PNN", "FiBiNET"}
    for r in rows:
        assert (r["auc"], r["logloss"]) == (float(board[r["bars_name"]]["AUC"]), float(board[r["bars_name"]]["Logloss"]))


# ------------------------------------------------------------------------ bad input (one line, nothing written)

_BAD = {
    "missing column": ("y,a\n0,u\n1,v\n", ["header lacks column(s) b", "line 1"]),
    "label outside the set": ("y,a,b\nno,u,1\nmaybe,v,2\n", ["line 3", "label 'y' must be one of yes, no", "'maybe'"]),
    "text in numeric": ("y,a,b\nno,u,1\nyes,v,1\nno,w,abc\n", ["line 4", "numeric field b is not a number: 'abc'"]),
    "duplicated column": ("y,a,b,a\nno,u,1,u\n", ["column 'a' appears 2 times in the header", "line 1"]),
    "empty file": ("", ["line 1: empty file"]),
}


@pytest.mark.parametrize("case", list(_BAD))
def test_bad_input_is_one_line_naming_where(tmp_path, capsys, case):
    text, needles = _BAD[case]
    f = tmp_path / "s.yaml"
    f.write_text("name: t\nlabel: {column: y, positive: ['yes'], negative: ['no']}\ncategorical: [a]\nnumeric: [b]\n")
    raw = tmp_path / "t.csv"
    raw.write_text(text)
    out = tmp_path / "out"
    _cli_fails(capsys, ["prepare", "--schema", str(f), "--raw", str(raw), "--out", str(out)], *needles, out=out)


def test_a_typo_in_a_schema_column_names_the_close_header_column(tmp_path, capsys):
    """`marital_status` in the schema, `marital-status` in the header (UCI Adult's spelling)."""
    raw = _write_csv(tmp_path / "adult.csv", ["income", "marital-status", "hours-per-week", "race"],
                     [["<=50K", "Never-married", 40, "Black"], [">50K", "Divorced", 50, "White"]])
    f = tmp_path / "s.yaml"
    f.write_text("name: adult2\nlabel: {column: income, positive: ['>50K'], negative: ['<=50K']}\n"
                 "categorical: [marital_status, race]\nnumeric: [hours-per-week]\n")
    out = tmp_path / "out"
    argv = ["prepare", "--schema", str(f), "--raw", str(raw), "--out", str(out)]
    err = _cli_fails(capsys, argv, out=out)
    assert err == (f"ctrkit: error: {raw}: line 1: header lacks column(s) marital_status for adult2; "
                   f"did you mean 'marital-status'?\n"), err
    # several: each its own suggestion; a name close to nothing gets none
    f.write_text(f.read_text().replace("[hours-per-week]", "[hours_per_week]").replace("race]", "zzz]"))
    _cli_fails(capsys, argv, "header lacks column(s) marital_status (did you mean 'marital-status'?), zzz, "
                             "hours_per_week (did you mean 'hours-per-week'?) for adult2", out=out)
    # the same file as parquet (its own reader of column names)
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow.csv as pacsv

    pq.write_table(pacsv.read_csv(raw), tmp_path / "adult.parquet")
    f.write_text(f.read_text().replace("zzz]", "race]").replace("[hours_per_week]", "[hours-per-week]"))
    _cli_fails(capsys, ["prepare", "--schema", str(f), "--raw", str(tmp_path / "adult.parquet"), "--out", str(out)],
               "header lacks column(s) marital_status for adult2; did you mean 'marital-status'?", out=out)


def test_protocol_and_schema_do_not_mix(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text("name: t\nlabel: y\ncategorical: [a]\n")
    raw = _write_csv(tmp_path / "t.csv", ["y", "a"], [[0, "u"], [1, "v"]])
    _cli_fails(capsys, ["prepare", "--schema", str(f), "--raw", str(raw), "--out", str(tmp_path / "o"),
                        "--protocol", "x1"], "applies to the built-in datasets only", out=tmp_path / "o")
    _cli_fails(capsys, ["prepare", "criteo", "--schema", str(f), "--raw", str(raw), "--out", str(tmp_path / "o")],
               "either a built-in dataset", out=tmp_path / "o")


# ------------------------------------------------------------------------ real data: UCI Adult

@needs_adult
def test_adult_through_a_schema_file_learns(tmp_path, capsys):
    from ctrkit import experiments

    f = tmp_path / "adult.yaml"
    f.write_text(ADULT_YAML)
    assert main(["prepare", "--schema", str(f), "--raw", str(ADULT), "--out", str(tmp_path / "adult")]) == 0
    d = data.load(tmp_path / "adult")
    assert d.dataset == "adult" and d.num_fields == 14 and sum(d.rows.values()) == 48842
    assert abs(d.feature_map["ctr"]["train"] - 0.239) < 0.01  # 11,687 of 48,842 earn >50K
    models = ["DeepFM", "DCN", "PNN", "FiBiNET"]
    base = experiments.pretrain_baselines(d, models, tmp_path / "ckpt", preset="smoke", seeds=[2021],
                                          epochs=1, device="cpu", progress=False)
    aucs = dict(zip(base["model"], base["test_auc"]))
    print("adult pretrained test AUC:", aucs)
    assert set(aucs) == set(models) and min(aucs.values()) > 0.85, aucs
    recs, _ = experiments.run_one(d, models, init="pretrained", mode="mutual", seed=2021,
                                  ckpt_dir=tmp_path / "ckpt" / "seed2021", preset="smoke", epochs=1,
                                  device="cpu", progress=False)
    mutual = {r["model"]: r["test_auc"] for r in recs}
    print("adult mutual test AUC:", mutual)
    assert len(mutual) == 4 and min(mutual.values()) > 0.85, mutual


# ------------------------------------------------------------------------ reproduce on the new datasets

@pytest.mark.slow
@pytest.mark.parametrize("name", ["frappe", "movielens"])
def test_reproduce_smoke_on_frappe_and_movielens_shaped_data(tmp_path, name):
    from ctrkit.notebook import reproduce, runner

    out = tmp_path / "out"
    runner.run(runner.Reproduction(dataset=name, profile="smoke", out=str(out), device="cpu",
                                   only=["00_data", "01_baselines"]), progress=False, log=lambda *a, **k: None)
    base = reproduce.read_table(out / "tables" / f"{name}_baselines")
    assert set(base["model"]) >= {"DeepFM", "DCN", "PNN", "FiBiNET"}
    assert base["bars_auc"].notna().all() and (base["bars_auc"] > 0.9).all()  # BARS's numbers beside ours
    assert base["test_auc_mean"].between(0.5, 1.0).all()  # synthetic smoke rows: above chance


def test_reproduce_takes_a_schema_file_with_data(tmp_path):
    from ctrkit.notebook import reproduce, runner
    from ctrkit.core.utils import CtrkitError

    f = tmp_path / "logs.yaml"
    f.write_text("name: mylogs\nlabel: y\ncategorical: [a]\n")
    with pytest.raises(CtrkitError, match="--data FILE_OR_DIR is required"):
        runner.plan(dataset=str(f), profile="smoke", out=str(tmp_path / "o"))
    raw = _write_csv(tmp_path / "t.csv", ["y", "a"], [[i % 2, "uvw"[i % 3]] for i in range(60)])
    jobs = runner.plan(dataset=str(f), profile="smoke", data=str(raw), out=str(tmp_path / "o"))
    assert jobs[0].dataset == "mylogs" and jobs[0].parameters["dataset"] == str(f.resolve())
    cfg = reproduce.settings(dataset=str(f), profile="smoke", data_dir=str(raw), out=str(tmp_path / "o"))
    d = reproduce.dataset(cfg)
    assert cfg.dataset == "mylogs" and d.dataset == "mylogs" and sum(d.rows.values()) == 60
    with pytest.raises(CtrkitError, match="unknown|valid: criteo, avazu, frappe, movielens"):
        runner.plan(dataset="kdd12", profile="smoke", out=str(tmp_path / "o"))


def test_a_prepared_folder_of_another_dataset_is_refused_with_one_line(tmp_path):
    """A schema (or a dataset name) and the prepared folder of another dataset never load together."""
    from ctrkit.notebook import reproduce
    from ctrkit.core.utils import CtrkitError

    f = tmp_path / "logs.yaml"
    f.write_text("name: mylogs\nlabel: y\ncategorical: [a, b]\n")
    raw = _write_csv(tmp_path / "t.csv", ["y", "a", "b"], [[i % 2, "uvw"[i % 3], i % 5] for i in range(60)])
    other = tmp_path / "other.yaml"
    other.write_text("name: otherlogs\nlabel: y\ncategorical: [a]\n")
    prepared = data.prepare(load_schema(other), raw, tmp_path / "prepared", progress=False)
    cfg = reproduce.settings(dataset=str(f), profile="smoke", data_dir=str(prepared), out=str(tmp_path / "o"))
    with pytest.raises(CtrkitError) as e:
        reproduce.dataset(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "'otherlogs'" in msg and "'mylogs'" in msg and str(f) in msg
    # the same name but other fields: prepared from another version of the schema
    f.write_text("name: otherlogs\nlabel: y\ncategorical: [a, b]\n")
    cfg = reproduce.settings(dataset=str(f), profile="smoke", data_dir=str(prepared), out=str(tmp_path / "o"))
    with pytest.raises(CtrkitError, match="fields differ .*b.*prepare it again"):
        reproduce.dataset(cfg)
    cfg = reproduce.settings(dataset="criteo", profile="smoke", data_dir=str(prepared), out=str(tmp_path / "o"))
    with pytest.raises(CtrkitError, match="holds prepared dataset 'otherlogs', but parameter dataset is 'criteo'"):
        reproduce.dataset(cfg)


# ------------------------------------------------------------------------ your own data, as it comes (issue 22)

def test_format_by_content_and_typed_headers(tmp_path, capsys):
    """A parquet file named .parquet.brotli (brotli pages), a gzip file named .csv and a typed header
    (`rating:float`, a label column `y:int`) all read as what they are, to the same arrays."""
    import lzma

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [[i % 2, "uvw"[i % 3], i % 7] for i in range(90)]
    schema = "name: typed\nlabel: y\ncategorical: [a]\nnumeric: [{column: rating, bucket: quantile, bins: 3}]\n"
    f = tmp_path / "typed.yaml"
    f.write_text(schema)
    plain = _write_csv(tmp_path / "plain" / "t.csv", ["y", "a", "rating"], rows)
    typed = _write_csv(tmp_path / "typed" / "t.csv", ["y:int", "a:string", "rating:float"], rows)
    gz = tmp_path / "gz" / "t.csv"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    pqf = tmp_path / "pq" / "t.parquet.brotli"
    pqf.parent.mkdir()
    pq.write_table(pa.table({"y:int": [r[0] for r in rows], "a": [r[1] for r in rows],
                             "rating:float": [float(r[2]) for r in rows]}), pqf, compression="brotli")
    want = arrays(data.prepare(load_schema(f), plain, tmp_path / "o_plain", progress=False))
    for name, raw in (("typed", typed), ("gz", gz), ("pq", pqf), ("pqdir", pqf.parent)):
        if name == "pqdir":
            pqf.rename(pqf.with_name("train.parquet.brotli"))
            raw = pqf.parent
        got = arrays(data.prepare(load_schema(f), raw, tmp_path / f"o_{name}", progress=False))
        for s in data.SPLITS:
            np.testing.assert_array_equal(got[s][0], want[s][0], err_msg=name)
    xz = tmp_path / "t.csv.xz"
    xz.write_bytes(lzma.compress(plain.read_bytes()))
    _cli_fails(capsys, ["prepare", "--schema", str(f), "--raw", str(xz), "--out", str(tmp_path / "x")],
               str(xz), "xz-compressed", "decompress it first")
    br = tmp_path / "t.csv.brotli"
    br.write_bytes(b"\x8b\x03\x80y,a\n\x03")  # no parquet magic: brotli-compressed text, not opened
    _cli_fails(capsys, ["prepare", "--schema", str(f), "--raw", str(br), "--out", str(tmp_path / "b")],
               "brotli-compressed")
    binary = tmp_path / "t.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 50)
    _cli_fails(capsys, ["prepare", "--schema", str(f), "--raw", str(binary), "--out", str(tmp_path / "c")],
               "not UTF-8 text")


def test_fixed_edge_buckets_and_a_note_when_quantile_bins_merge(tmp_path, capsys):
    rows = [[i % 2, v, 5 if i < 80 else i] for i, v in enumerate(range(100))]  # q: 80% of the rows are 5
    raw = _write_csv(tmp_path / "t.csv", ["y", "v", "q"], rows)
    f = tmp_path / "s.yaml"
    f.write_text("name: nums\nlabel: y\nnumeric:\n  - {column: v, bucket: edges, edges: [10, 50, 90]}\n"
                 "  - {column: q, bucket: quantile, bins: 4}\n")
    out = tmp_path / "o"
    assert main(["prepare", "--schema", str(f), "--raw", str(raw), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "note: q: 4 quantile bins asked, " in printed and "merged" in printed
    d = data.load(out)
    assert d.feature_map["fields"][0]["bucket"] == "edges" and d.feature_map["fields"][0]["edges"] == [10.0, 50.0, 90.0]
    X, _ = d.numpy("train", mmap=False)
    raw_v = np.array([r[1] for r in rows])
    # v < 10 -> 2, 10 <= v < 50 -> 3, 50 <= v < 90 -> 4, v >= 90 -> 5 (whatever split a row went to)
    seen = {int(x) for x in X[:, 0]}
    assert seen <= {2, 3, 4, 5} and d.field_sizes[0] == 2 + 4 + 1
    every = np.concatenate([d.numpy(s)[0][:, 0] for s in data.SPLITS])
    assert sorted(np.bincount(every)[2:6].tolist()) == sorted(np.bincount(np.searchsorted([10, 50, 90], raw_v,
                                                                                          side="right")).tolist())
    assert "note: q: 4 quantile bins asked" in data.format_info(data.info(d))
    for bad in ("{column: v, bucket: edges}", "{column: v, edges: [3, 2]}", "{column: v, bucket: log2, edges: [1]}"):
        f.write_text(f"name: nums\nlabel: y\nnumeric:\n  - {bad}\n")
        _cli_fails(capsys, ["prepare", "--schema", str(f), "--raw", str(raw), "--out", str(tmp_path / "z")],
                   "numeric[0].edges")


def test_a_schema_joins_related_files_by_a_key_and_derives_columns(tmp_path, capsys):
    """MovieLens 100k's shape: ratings, users and items in three files; no hand join. The joined and
    derived fields equal those of the same table joined by hand."""
    raw = tmp_path / "ml"
    users = {u: (20 + u % 40, f"{u % 9}{u % 7}{u:03d}") for u in range(1, 31)}
    items = {i: "|".join(["Action", "Comedy", "Drama"][i % 3:]) for i in range(1, 21)}
    ratings = [(1 + k % 30, 1 + (k * 7) % 20, 1 + k % 5) for k in range(300)]
    _write_csv(raw / "train.csv", ["user_id", "item_id", "rating:float"], ratings)
    _write_csv(raw / "users.csv", ["user_id", "age", "zip"], [(u, a, z) for u, (a, z) in users.items()])
    _write_csv(raw / "items.csv", ["item_id", "genres"], [(i, g) for i, g in items.items()], delim="\t")
    f = tmp_path / "ml.yaml"
    f.write_text("name: ml\nlabel: {column: rating, positive: [4, 5], negative: rest}\n"
                 "categorical: [user_id, item_id, zip3, genre]\nnumeric: [{column: age, bucket: edges, edges: [30, 45]}]\n"
                 "join: [{file: users.csv, key: user_id}, {file: items.csv, key: item_id}]\n"
                 "derive: [{column: zip3, source: zip, rule: prefix, length: 3}, {column: genre, source: genres, "
                 "rule: first}]\n")
    got = arrays(data.prepare(load_schema(f), raw / "train.csv", tmp_path / "joined", progress=False))
    flat = [(u, i, r, users[u][0], users[u][1][:3], items[i].split("|")[0]) for u, i, r in ratings]
    hand = _write_csv(tmp_path / "hand" / "t.csv", ["user_id", "item_id", "rating", "age", "zip3", "genre"], flat)
    g = tmp_path / "hand.yaml"
    g.write_text("name: ml\nlabel: {column: rating, positive: [4, 5], negative: rest}\n"
                 "categorical: [user_id, item_id, zip3, genre]\nnumeric: [{column: age, bucket: edges, edges: [30, 45]}]\n")
    want = arrays(data.prepare(load_schema(g), hand, tmp_path / "byhand", progress=False))
    for s in data.SPLITS:
        for a, b in zip(got[s], want[s]):
            np.testing.assert_array_equal(a, b)
    _write_csv(raw / "users.csv", ["user_id", "age", "zip"], [(1, 20, "123"), (1, 30, "456")])
    _cli_fails(capsys, ["prepare", "--schema", str(f), "--raw", str(raw / "train.csv"), "--out", str(tmp_path / "x")],
               "users.csv", "repeats a value")
    (raw / "users.csv").write_bytes(b"user_id,age,zip\xff\n1,20,123\n")
    _cli_fails(capsys, ["prepare", "--schema", str(f), "--raw", str(raw / "train.csv"), "--out", str(tmp_path / "x")],
               "users.csv: line 1: not UTF-8 text (byte 0xff")
    f.write_text(f.read_text().replace("rule: first", "rule: last"))
    _cli_fails(capsys, ["prepare", "--schema", str(f), "--raw", str(raw / "train.csv"), "--out", str(tmp_path / "y")],
               "derive[1].rule", "valid: first, prefix")
