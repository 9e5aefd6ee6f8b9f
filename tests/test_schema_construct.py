"""A schema built in Python is checked by the same rules as one read from YAML (one line naming the
field), equals it when valid, and `prepare` refuses a bad seed or a pandas DataFrame in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ctrkit import data
from ctrkit.core.utils import CtrkitError
from ctrkit.data import BUILTIN, DatasetSchema, Label, Numeric, Split, Time
from ctrkit.data.schema import Derive, Join

L = Label(column="y")


def _schema(**kw):
    return DatasetSchema(**{"name": "s", "label": L, "categorical": ("a",), **kw})


def _one_line(e: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(e.value)
    assert type(e.value) is CtrkitError and "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


# ------------------------------------------------------------------------ bad values, built directly

_SEED = "expected an integer from 0 to 2**63-1"
_BAD = {
    "bucket typo": (lambda: Numeric(column="price", bucket="qantile"),
                    ["numeric 'price'.bucket: unknown bucket 'qantile'", "valid: log2, quantile, edges"]),
    "edges unsorted": (lambda: Numeric(column="price", edges=(50, 10)),
                       ["numeric 'price'.edges", "strictly increasing"]),
    "edges nan": (lambda: Numeric(column="price", edges=(1, float("nan"), 3)), ["numeric 'price'.edges"]),
    "edges without bucket edges": (lambda: Numeric(column="price", bucket="log2", edges=(1, 2)),
                                   ["numeric 'price'.edges"]),
    "bucket edges without edges": (lambda: Numeric(column="price", bucket="edges"), ["numeric 'price'.edges"]),
    **{f"bins {b!r}": (lambda b=b: Numeric(column="price", bucket="quantile", bins=b),
                       ["numeric 'price'.bins: expected an integer from 2 to 65536", f"got {b!r}"])
       for b in (0, 1, True, 2.5, "10", 1 << 17)},
    "numeric column empty": (lambda: Numeric(column=""), ["numeric ''.column: expected a column name"]),
    "time part": (lambda: Time(column="ts", derive=("hour", "minute")),
                  ["time 'ts'.derive: unknown part(s) minute", "valid: hour, weekday, weekend"]),
    "time names": (lambda: Time(column="ts", names=("a",)), ["time 'ts'.names: 1 names for 3 derived fields"]),
    "time format": (lambda: Time(column="ts", format=None), ["time 'ts'.format", "got None"]),
    "ratios two": (lambda: Split(ratios=(8, 1)), ["split.ratios: expected three integers", "got [8, 1]"]),
    "ratios fractions": (lambda: Split(ratios=(0.8, 0.1, 0.1)),
                         ["split.ratios", "got [0.8, 0.1, 0.1]", "whole numbers"]),
    "ratios no train": (lambda: Split(ratios=(0, 1, 1)), ["split.ratios", "train >= 1"]),
    "ratios negative": (lambda: Split(ratios=(8, -1, 1)), ["split.ratios"]),
    "ratios not a list": (lambda: Split(ratios=8), ["split.ratios", "got 8"]),
    **{f"split seed {s!r}": (lambda s=s: Split(seed=s), [f"split.seed: {_SEED}, got {s!r}"])
       for s in (-1, 1.5, 1.0, "1", True, 2**63)},
    **{f"stratified {v!r}": (lambda v=v: Split(stratified=v), [f"split.stratified: expected true or false, got {v!r}"])
       for v in ("no", 1, None)},
    "label boolean": (lambda: Label(column="y", positive=True), ["label.positive: got a boolean"]),
    "label column": (lambda: Label(column=5), ["label.column: expected a column name, got 5"]),
    "derive rule": (lambda: Derive(column="g", source="genres", rule="last"),
                    ["derive 'g'.rule", "valid: first, prefix"]),
    "derive length": (lambda: Derive(column="g", source="z", rule="prefix", length=0), ["derive 'g'.length"]),
    "join file": (lambda: Join(file="", key="k"), ["join ''.file: expected a file path"]),
    "name a path": (lambda: _schema(name="../evil"), ["schema.name: a name, not a path, got '../evil'"]),
    "name empty": (lambda: _schema(name=""), ["schema.name: expected a non-empty string, got ''"]),
    "name None": (lambda: _schema(name=None), ["schema.name: expected a non-empty string, got None"]),
    "categorical int": (lambda: _schema(categorical=5), ["categorical: expected a list of column names, got 5"]),
    "categorical empty name": (lambda: _schema(categorical=("a", "")),
                               ["categorical: expected a list of column names"]),
    "numeric item": (lambda: _schema(numeric=("price", 5)), ["numeric[1]: expected a mapping, got int"]),
    "numeric not a list": (lambda: _schema(numeric=Numeric(column="p")), ["numeric: expected a list"]),
    "time item of another kind": (lambda: _schema(time=(Numeric(column="t"),)),
                                  ["time[0]: expected a mapping, got Numeric"]),
    "label None": (lambda: _schema(label=None), ["label: expected a mapping"]),
    **{f"min_count {m!r}": (lambda m=m: _schema(min_count=m), [f"min_count: expected an integer >= 1, got {m!r}"])
       for m in (0, 1.5, True, "2")},
    "split a tuple": (lambda: _schema(split=(8, 1, 1)), ["split: expected a mapping, got tuple"]),
    "split bad mapping": (lambda: _schema(split={"ratios": (8, 1)}), ["split.ratios"]),
    "no feature": (lambda: _schema(categorical=()), ["schema: no feature columns"]),
    "column twice": (lambda: _schema(categorical=("a", "y")), ["categorical: column 'y' is listed twice"]),
    "replace checks too": (lambda: _schema().replace(min_count=0), ["min_count: expected an integer >= 1"]),
}


@pytest.mark.parametrize("case", list(_BAD))
def test_a_bad_value_built_directly_is_one_line_naming_the_field(case):
    build, needles = _BAD[case]
    with pytest.raises(CtrkitError) as e:
        build()
    _one_line(e, *needles)


@pytest.mark.parametrize("part,value,where", [
    ("numeric", {"column": "price", "bucket": "qantile"}, ("numeric[0].bucket", "numeric 'price'.bucket")),
    ("numeric", {"column": "price", "bucket": "quantile", "bins": 1}, ("numeric[0].bins", "numeric 'price'.bins")),
    ("time", {"column": "ts", "derive": ["minute"]}, ("time[0].derive", "time 'ts'.derive")),
    ("split", {"ratios": [0.8, 0.1, 0.1]}, ("split.ratios", "split.ratios")),
    ("split", {"seed": -1}, ("split.seed", "split.seed")),
])
def test_yaml_and_python_share_each_rule(part, value, where):
    """The same problem in the same words; only the place differs (the YAML key path, the object)."""
    with pytest.raises(CtrkitError) as from_yaml:
        DatasetSchema.from_dict({"name": "s", "label": "y", "categorical": ["a"],
                                 part: value if part == "split" else [value]})
    cls = {"numeric": Numeric, "time": Time, "split": Split}[part]
    with pytest.raises(CtrkitError) as direct:
        cls(**value)
    a, b = str(from_yaml.value), str(direct.value)
    assert a.startswith(where[0] + ": ") and b.startswith(where[1] + ": "), (a, b)
    assert a[len(where[0]):] == b[len(where[1]):]


# ------------------------------------------------------------------------ valid schemas, both ways

_VALID = {
    "docs example": (
        lambda: DatasetSchema(
            name="mylogs", label=Label(column="clicked", positive=(1,)),
            categorical=["user_id", "item_id"],
            numeric=[Numeric(column="age"), Numeric(column="price", bucket="quantile", bins=10), "dwell",
                     Numeric(column="n", edges=[18, 30.5])],
            time=[Time(column="ts", format="%Y-%m-%d %H:%M:%S", derive=["hour", "weekend"])],
            drop="request_id", min_count=2, split=Split(ratios=[8, 1, 1], seed=2021)),
        {"name": "mylogs", "label": {"column": "clicked", "positive": [1]}, "categorical": ["user_id", "item_id"],
         "numeric": [{"column": "age", "bucket": "log2"}, {"column": "price", "bucket": "quantile", "bins": 10},
                     "dwell", {"column": "n", "edges": [18, 30.5]}],
         "time": [{"column": "ts", "format": "%Y-%m-%d %H:%M:%S", "derive": ["hour", "weekend"]}],
         "drop": ["request_id"], "min_count": 2, "split": {"ratios": [8, 1, 1], "seed": 2021}}),
    "numpy integers": (
        lambda: DatasetSchema(name="n", label="y", categorical=("a",), min_count=np.int64(3),
                              numeric=(Numeric(column="q", bucket="quantile", bins=np.int32(4)),),
                              split=Split(ratios=tuple(np.array([7, 2, 1])), seed=np.int64(7), stratified=False)),
        {"name": "n", "label": "y", "categorical": "a", "min_count": 3,
         "numeric": [{"column": "q", "bucket": "quantile", "bins": 4}],
         "split": {"ratios": [7, 2, 1], "seed": 7, "stratified": False}}),
    "label and split as mappings": (
        lambda: DatasetSchema(name="m", label={"column": "r", "positive": [4, 5], "negative": "rest"},
                              categorical=("u",), split={"seed": 5}, join=[Join(file="users.csv", key="u")],
                              derive=[Derive(column="g", source="genres", rule="first")]),
        {"name": "m", "label": {"column": "r", "positive": ["4", "5"], "negative": "rest"}, "categorical": ["u"],
         "split": {"seed": 5}, "join": [{"file": "users.csv", "key": "u"}],
         "derive": [{"column": "g", "source": "genres", "rule": "first"}]}),
}


@pytest.mark.parametrize("case", list(_VALID))
def test_a_valid_schema_built_directly_equals_the_yaml_one(case):
    build, d = _VALID[case]
    direct, from_yaml = build(), DatasetSchema.from_dict(d)
    assert direct == from_yaml and hash(direct) == hash(from_yaml) and direct.digest() == from_yaml.digest()
    json.dumps(direct.to_dict())  # plain values (a NumPy integer would not be JSON)
    assert DatasetSchema.from_dict(direct.to_dict()) == direct


def test_builtin_schemas_are_checked_and_round_trip():
    for name, s in BUILTIN.items():
        assert DatasetSchema.from_dict(s.to_dict()) == s, name
        assert s.replace(min_count=3).min_count == 3
    assert Numeric(column="x").bucket == "log2" and Numeric(column="x", edges=(1, 2)).bucket == "edges"
    assert Split(seed=np.int64(9)).seed == 9 and type(Split(seed=np.int64(9)).seed) is int


# ------------------------------------------------------------------------ prepare: seed and raw

@pytest.fixture
def raw(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("y,a\n" + "".join(f"{i % 2},v{i % 5}\n" for i in range(60)))
    return f


@pytest.mark.parametrize("seed", ["1", 1.5, 1.0, -1, 2**63, True, np.float64(3.0)])
@pytest.mark.parametrize("dataset", ["schema", "criteo"])
def test_prepare_refuses_a_seed_that_is_not_an_integer_in_range(tmp_path, raw, seed, dataset):
    out = tmp_path / "out"
    with pytest.raises(CtrkitError) as e:
        data.prepare(_schema(label="y") if dataset == "schema" else dataset, raw, out, seed=seed, progress=False)
    assert _one_line(e, f"seed: {_SEED}, got {seed!r}").startswith("seed: ")
    assert not out.exists()


def test_prepare_takes_a_numpy_integer_seed_as_that_int(tmp_path, raw):
    s = _schema(label="y")
    a = data.load(data.prepare(s, raw, tmp_path / "a", seed=np.int64(7), progress=False))
    b = data.load(data.prepare(s, raw, tmp_path / "b", seed=7, progress=False))
    assert a.feature_map["fingerprint"] == b.feature_map["fingerprint"]
    assert a.feature_map["schema"]["split"]["seed"] == 7 and "seed 7" in a.feature_map["source"]["split"]
    for split in data.SPLITS:
        for x, y in zip(a.numpy(split), b.numpy(split)):
            np.testing.assert_array_equal(x, y)


def test_prepare_refuses_a_pandas_dataframe_in_one_line_naming_the_way_in(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"y": [0, 1] * 20, "a": list("abcde") * 8})
    with pytest.raises(CtrkitError) as e:
        data.prepare(_schema(label="y"), df, tmp_path / "out", progress=False)
    _one_line(e, "raw: a pandas DataFrame is not taken directly", "datasets.Dataset.from_pandas(df")
    assert not (tmp_path / "out").exists()
    datasets = pytest.importorskip("datasets")
    d = data.load(data.prepare(_schema(label="y"), datasets.Dataset.from_pandas(df, preserve_index=False),
                               tmp_path / "ok", progress=False))
    assert sum(d.rows.values()) == 40  # the way the message names works


def test_a_datasets_object_lacking_a_schema_column_names_the_close_one(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"y": [0, 1] * 20, "marital-status": list("abcde") * 8})
    with pytest.raises(CtrkitError) as e:
        data.prepare(_schema(label="y", categorical=("marital_status",)), ds, tmp_path / "out", progress=False)
    _one_line(e, "datasets: dataset lacks column(s) marital_status for s; did you mean 'marital-status'?")


@pytest.mark.parametrize("raw_value", [None, 5, ["t.csv"]])
def test_prepare_refuses_a_raw_that_is_not_a_path_in_one_line(tmp_path, raw_value):
    with pytest.raises(CtrkitError) as e:
        data.prepare(_schema(label="y"), raw_value, tmp_path / "out", progress=False)
    _one_line(e, "raw: expected a file or folder path, hf://<hub id>, or a `datasets` Dataset/DatasetDict",
              f"got {type(raw_value).__name__}")


def test_prepare_refuses_a_dataset_that_is_not_a_name_schema_or_file(tmp_path, raw):
    with pytest.raises(CtrkitError) as e:
        data.prepare(5, raw, tmp_path / "out", progress=False)
    _one_line(e, "dataset: expected a built-in name, a DatasetSchema or a schema file", "got int")


def test_a_one_item_list_is_a_column_name_as_before():
    # YAML `label: {column: [y]}` loaded before the checks moved into the classes (same digest)
    assert Label(column=["y"]).column == "y"
    with pytest.raises(CtrkitError, match="expected a column name"):
        Label(column=["y", "z"])
