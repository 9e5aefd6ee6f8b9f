"""Dataset schemas: what the columns of a raw table mean, as a YAML file or the same Python object.

```yaml
name: adult
label: {column: income, positive: [">50K"], negative: ["<=50K"]}
categorical: [workclass, education]
numeric:                                  # bucketed into categorical fields
  - {column: age, bucket: log2}           # BARS convert_to_bucket: v > 2 -> floor(ln(v)^2)
  - {column: fnlwgt, bucket: quantile, bins: 10}
time:                                     # derived fields of a timestamp column
  - {column: hour, format: YYMMDDHH, derive: [hour, weekday, weekend]}
join: [{file: people.csv, key: person_id}]  # columns of another file, by a key column (one row per key)
derive: [{column: first_genre, source: genres, rule: first, sep: "|"}]   # or rule: prefix, length: 3
drop: [id]
min_count: 1
split: {ratios: [8, 1, 1], seed: 2021}    # used only for a single unsplit file
```

A schema built in Python (`DatasetSchema(name=..., label=Label(...), ...)`) is checked when built,
by the same rules as `DatasetSchema.from_dict` / `load_schema(path)`, which also refuse an unknown
key (listing the valid ones). The built-in Criteo, Avazu, Frappe and MovieLens schemas are instances of the same
class (`BUILTIN`); the BARS protocols (`PROTOCOLS`) adjust a built-in schema's min-count and split.
"""
from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

from ctrkit.data.keys import floats
from ctrkit.core.errors import CtrkitError
from ctrkit.core.utils import as_int, seed_problem  # the seed and number rules of all ctrkit (the package imports torch anyway)

CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
AVAZU_CAT = ["C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
             "app_category", "device_id", "device_ip", "device_model", "device_type",
             "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]
FRAPPE_CAT = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather",
              "country", "city"]
MOVIELENS_CAT = ["user_id", "item_id", "tag_id"]

BUCKETS = ("log2", "quantile", "edges")
# Quantile bins of a numeric field, at most: the encoder holds arrays of `bins` entries, and a field
# cut finer than this is better read as `categorical` (every distinct value its own index).
MAX_BINS = 1 << 16
TIME_FORMATS_HELP = "YYMMDDHH, unix (seconds since 1970) or a strptime format such as %Y-%m-%d %H:%M:%S"
TIME_PARTS = ("hour", "weekday", "weekend")


# Every value's rule lives in its class's __post_init__, so a schema built in Python is checked
# exactly as one read from YAML; `from_dict` adds only the YAML's own checks (unknown and missing keys).

def _bad(where: str, key: str, problem: str) -> CtrkitError:
    """A value breaking its field's rule, said as `<where>.<key>: <problem>`, where `where` names the
    object built (e.g. numeric 'price'); `from_dict` says it again at the YAML's key path (numeric[0]).
    A plain CtrkitError: the key and problem ride along as attributes for `from_dict`."""
    e = CtrkitError(f"{where}.{key}: {problem}" if where else f"{key}: {problem}")
    e.schema_field = (key, problem)
    return e


def _set(obj, key: str, value) -> None:
    object.__setattr__(obj, key, value)  # a frozen dataclass storing its own normalised value


def check_seed(v, where: str = "", key: str = "seed") -> int:
    """A seed as an int: the rule of every ctrkit seed (torch's signed 64 bits, 0..2**63-1)."""
    problem = seed_problem(v)
    if problem:
        raise _bad(where, key, problem)
    return as_int(v)


def _check_keys(d, cls, where: str) -> None:
    if not isinstance(d, dict):
        raise CtrkitError(f"{where}: expected a mapping, got {type(d).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in valid]
    if unknown:
        raise CtrkitError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid: {', '.join(valid)}")


def _from_dict(cls, d, where: str):
    """An object from its YAML mapping: unknown and missing keys named here, every value checked by
    the class itself and its error said at `where` (e.g. numeric[0].bucket)."""
    _check_keys(d, cls, where)
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.name not in d:
            raise CtrkitError(f"{where}: missing key {f.name!r}")
    try:
        return cls(**d)
    except CtrkitError as e:
        if not hasattr(e, "schema_field"):  # already said at its own place (a nested part's from_dict)
            raise
        key, problem = e.schema_field
        raise CtrkitError(f"{where}.{key}: {problem}") from None


def _name(v, where: str, key: str) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 1:  # YAML `column: [y]`, read as its one name as before
        v = v[0]
    if not isinstance(v, str) or not v:
        raise _bad(where, key, f"expected a column name, got {v!r}")
    return v


def _names(v, where: str, key: str, what: str = "column names") -> tuple:
    """A tuple of non-empty strings; one may be given bare (YAML `categorical: user`)."""
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) and x for x in items):
        raise _bad(where, key, f"expected a list of {what}, got {v!r}")
    return tuple(items)


def _items(v, key: str) -> tuple:
    if v is None:
        return ()
    if not isinstance(v, (list, tuple)):
        raise _bad("", key, f"expected a list, got {v!r}")
    return tuple(v)


def _values(v, where: str, key: str) -> tuple:
    """Label values as strings (YAML may give 1 or ">50K")."""
    items = v if isinstance(v, (list, tuple)) else [v]
    if any(isinstance(x, bool) for x in items):
        raise _bad(where, key, "got a boolean: YAML reads unquoted yes/no/true/false/on/off as booleans; "
                               "quote the value, e.g. ['yes']")
    if not items or not all(isinstance(x, (str, numbers.Real)) for x in items):
        raise _bad(where, key, f"expected a non-empty list of values, got {v!r}")
    return tuple(str(x).strip() for x in items)


def _edges(v, where: str) -> tuple:
    """Fixed bin edges: finite numbers, strictly increasing (an int stays an int: it is in the digest)."""
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(e, numbers.Real) and not isinstance(e, bool)
        and (isinstance(e, numbers.Integral) or math.isfinite(e)) for e in v)
    edges = tuple(int(e) if isinstance(e, numbers.Integral) else float(e) for e in v) if ok else ()
    if not ok or any(a >= b for a, b in zip(edges, edges[1:])):
        raise _bad(where, "edges", f"expected a non-empty list of strictly increasing numbers, got {v!r}")
    return edges


@dataclass(frozen=True, kw_only=True)
class Label:
    """The label column; a row is positive when its value is in `positive`, negative when in
    `negative` (default [0] when positive is [1]; "rest": every other value), else invalid."""
    column: str
    positive: tuple = ("1",)
    negative: tuple | str | None = None

    def __post_init__(self):
        _set(self, "column", _name(self.column, "label", "column"))
        _set(self, "positive", _values(self.positive, "label", "positive"))
        if self.negative is not None and not (isinstance(self.negative, str) and self.negative == "rest"):
            _set(self, "negative", _values(self.negative, "label", "negative"))

    @classmethod
    def from_dict(cls, d, where: str = "label") -> Label:
        return _from_dict(cls, {"column": d} if isinstance(d, str) else d, where)

    @property
    def negatives(self) -> tuple | str:
        if self.negative is not None:
            return self.negative
        if floats(self.positive) == [1.0]:
            return ("0",)
        raise CtrkitError(f"label.negative: required when positive is not [1] (give the values, "
                          f"or 'rest' for every other value); positive is {list(self.positive)}")


@dataclass(frozen=True, kw_only=True)
class Numeric:
    """A numeric column bucketed into a categorical field: `log2` (BARS's floor(ln(v)^2) for
    v > 2, else int(v)), `quantile` (`bins` equal-count bins of the training rows) or `edges`
    (fixed bins at the given increasing `edges`: v < edges[0], edges[0] <= v < edges[1], ...).
    `bucket` left out: edges when `edges` are given, else log2."""
    column: str
    bucket: str | None = None
    bins: int = 10
    edges: tuple | None = None

    def __post_init__(self):
        where = f"numeric {self.column!r}"
        _set(self, "column", _name(self.column, where, "column"))
        if self.bucket is None:
            _set(self, "bucket", "log2" if self.edges is None else "edges")
        if not isinstance(self.bucket, str) or self.bucket not in BUCKETS:
            raise _bad(where, "bucket", f"unknown bucket {self.bucket!r}; valid: {', '.join(BUCKETS)}")
        if (self.bucket == "edges") != (self.edges is not None):
            raise _bad(where, "edges", f"give edges exactly with bucket: edges (got bucket {self.bucket!r}, "
                                       f"edges {self.edges!r})")
        if self.edges is not None:
            _set(self, "edges", _edges(self.edges, where))
        bins = as_int(self.bins)
        if bins is None or not 2 <= bins <= MAX_BINS:
            raise _bad(where, "bins", f"expected an integer from 2 to {MAX_BINS}, got {self.bins!r}")
        _set(self, "bins", bins)

    @classmethod
    def from_dict(cls, d, where: str) -> Numeric:
        return _from_dict(cls, {"column": d} if isinstance(d, str) else d, where)


@dataclass(frozen=True, kw_only=True)
class Time:
    """A timestamp column turned into categorical fields (`derive`: hour, weekday, weekend).
    `names`: the output field names (default `<column>_<part>`)."""
    column: str
    format: str = "YYMMDDHH"
    derive: tuple = TIME_PARTS
    names: tuple | None = None

    def __post_init__(self):
        where = f"time {self.column!r}"
        _set(self, "column", _name(self.column, where, "column"))
        if not isinstance(self.format, str) or not self.format:
            raise _bad(where, "format", f"expected {TIME_FORMATS_HELP}, got {self.format!r}")
        _set(self, "derive", _names(self.derive, where, "derive", "parts"))
        bad = [p for p in self.derive if p not in TIME_PARTS]
        if bad:
            raise _bad(where, "derive", f"unknown part(s) {', '.join(bad)}; valid: {', '.join(TIME_PARTS)}")
        if self.names is not None:
            _set(self, "names", _names(self.names, where, "names", "field names"))
            if len(self.names) != len(self.derive):
                raise _bad(where, "names", f"{len(self.names)} names for {len(self.derive)} derived fields")

    @classmethod
    def from_dict(cls, d, where: str) -> Time:
        return _from_dict(cls, d, where)

    @property
    def field_names(self) -> tuple:
        return self.names or tuple(f"{self.column}_{p}" for p in self.derive)


@dataclass(frozen=True, kw_only=True)
class Join:
    """Another file whose columns join each row by the column `key` (one row per key in that file;
    a key it lacks gives empty values). `file`: absolute, or relative to the folder of --raw.
    (`key`, not `on`: YAML reads an unquoted `on` as the boolean true.)"""
    file: str
    key: str

    def __post_init__(self):
        where = f"join {self.file!r}"
        if isinstance(self.file, os.PathLike):
            _set(self, "file", os.fspath(self.file))
        if not isinstance(self.file, str) or not self.file:
            raise _bad(where, "file", f"expected a file path, got {self.file!r}")
        _set(self, "key", _name(self.key, where, "key"))

    @classmethod
    def from_dict(cls, d, where: str) -> Join:
        return _from_dict(cls, d, where)


DERIVE_RULES = ("first", "prefix")


@dataclass(frozen=True, kw_only=True)
class Derive:
    """A column made from another by a small rule: `first` (the first item of a `sep`-separated list,
    e.g. a movie's first genre) or `prefix` (the first `length` characters, e.g. a zip code's region)."""
    column: str
    source: str
    rule: str
    sep: str = "|"
    length: int = 1

    def __post_init__(self):
        where = f"derive {self.column!r}"
        _set(self, "column", _name(self.column, where, "column"))
        _set(self, "source", _name(self.source, where, "source"))
        if not isinstance(self.rule, str) or self.rule not in DERIVE_RULES:
            raise _bad(where, "rule", f"unknown rule {self.rule!r}; valid: {', '.join(DERIVE_RULES)}")
        if not isinstance(self.sep, str) or not self.sep:
            raise _bad(where, "sep", f"expected a non-empty string, got {self.sep!r}")
        length = as_int(self.length)
        if length is None or length < 1:
            raise _bad(where, "length", f"expected an integer >= 1, got {self.length!r}")
        _set(self, "length", length)

    @classmethod
    def from_dict(cls, d, where: str) -> Derive:
        return _from_dict(cls, d, where)


@dataclass(frozen=True, kw_only=True)
class Split:
    """How one unsplit input is split: train/valid/test `ratios` (integers; rows are assigned in
    blocks of sum(ratios) rows of a class), `seed`, `stratified` by label."""
    ratios: tuple = (8, 1, 1)
    seed: int = 2021
    stratified: bool = True

    def __post_init__(self):
        r = self.ratios
        ints = [as_int(x) for x in r] if isinstance(r, (list, tuple)) else [None]
        if len(ints) != 3 or None in ints or min(ints) < 0 or ints[0] < 1 or sum(ints) > 1000:
            # fractions such as 0.8, 0.1, 0.1 are refused: the split assigns blocks of sum(ratios) rows
            hint = "; ratios are whole numbers, e.g. [8, 1, 1] for 80/10/10" \
                if isinstance(r, (list, tuple)) and any(isinstance(x, float) for x in r) else ""
            raise _bad("split", "ratios", f"expected three integers train, valid, test (train >= 1, sum <= 1000), "
                                          f"got {list(r) if isinstance(r, (list, tuple)) else r!r}{hint}")
        _set(self, "ratios", tuple(ints))
        _set(self, "seed", check_seed(self.seed, "split"))
        if not isinstance(self.stratified, bool):
            raise _bad("split", "stratified", f"expected true or false, got {self.stratified!r}")

    @classmethod
    def from_dict(cls, d, where: str = "split") -> Split:
        return _from_dict(cls, {} if d is None else d, where)


@dataclass(frozen=True, kw_only=True)
class DatasetSchema:
    """What a raw table's columns mean (see the module docstring). Columns not named anywhere are
    ignored and listed in the feature map (`source.ignored_columns`); `drop` ignores silently.
    `columns`: every column in order, for files without a header. `order`: the processed fields'
    order (default: categorical, numeric, then derived time fields). Built directly, a part may be
    given as in YAML (a label column name, a bare numeric column, a split mapping)."""
    name: str
    label: Label
    categorical: tuple = ()
    numeric: tuple = ()
    time: tuple = ()
    drop: tuple = ()
    min_count: int = 1
    split: Split = Split()
    columns: tuple | None = None
    order: tuple | None = None
    join: tuple = ()
    derive: tuple = ()

    def __post_init__(self):
        n = self.name
        if not isinstance(n, str) or not n:
            raise CtrkitError(f"schema.name: expected a non-empty string, got {n!r}")
        if "/" in n or "\\" in n or "\0" in n or n in (".", ".."):  # it names folders (runs/<name>/...)
            raise CtrkitError(f"schema.name: a name, not a path, got {n!r}")
        if not isinstance(self.label, Label):
            _set(self, "label", Label.from_dict(self.label))
        for key in ("categorical", "drop"):
            _set(self, key, () if getattr(self, key) is None else _names(getattr(self, key), "", key))
        for key in ("columns", "order"):
            if getattr(self, key) is not None:
                _set(self, key, _names(getattr(self, key), "", key))
        for key, cls in (("numeric", Numeric), ("time", Time), ("join", Join), ("derive", Derive)):
            _set(self, key, tuple(x if isinstance(x, cls) else cls.from_dict(x, f"{key}[{i}]")
                                  for i, x in enumerate(_items(getattr(self, key), key))))
        min_count = as_int(self.min_count)
        if min_count is None or min_count < 1:
            raise CtrkitError(f"min_count: expected an integer >= 1, got {self.min_count!r}")
        _set(self, "min_count", min_count)
        if not isinstance(self.split, Split):
            _set(self, "split", Split.from_dict(self.split))
        self.validate()

    @classmethod
    def from_dict(cls, d, where: str = "schema") -> DatasetSchema:
        _check_keys(d, cls, where)
        for k in ("name", "label"):
            if k not in d:
                raise CtrkitError(f"{where}: missing key {k!r}")
        return cls(**d)

    def validate(self) -> None:
        """The rules across fields (run when the schema is built, after each field's own)."""
        seen = {}
        uses = [("label.column", self.label.column)] + [("categorical", c) for c in self.categorical] \
            + [("numeric", n.column) for n in self.numeric] + [("time", t.column) for t in self.time] \
            + [("drop", c) for c in self.drop]
        for key, col in uses:
            if col in seen:
                raise CtrkitError(f"{key}: column {col!r} is listed twice (also under {seen[col]})")
            seen[col] = key
        fields = self.default_order()
        if not fields:
            raise CtrkitError("schema: no feature columns (give categorical, numeric or time)")
        dup = sorted({f for f in fields if fields.count(f) > 1})
        if dup:
            raise CtrkitError(f"time.names: field name(s) {', '.join(dup)} clash with other fields")
        if self.order is not None and sorted(self.order) != sorted(fields):
            raise CtrkitError(f"order: must list each processed field once: {', '.join(fields)}")
        if self.columns is not None:
            dup = sorted({c for c in self.columns if self.columns.count(c) > 1})
            if dup:
                raise CtrkitError(f"columns: {', '.join(dup)} listed more than once")
            missing = [c for c in seen if c not in self.columns]
            if missing:
                raise CtrkitError(f"columns: lacks {', '.join(missing)} named elsewhere in the schema")
        made = [x.column for x in self.derive]
        if len(set(made)) < len(made):
            raise CtrkitError(f"derive: column(s) {', '.join(sorted({c for c in made if made.count(c) > 1}))} "
                              f"derived twice")
        self.label.negatives  # raises when the label's value set is incomplete

    def default_order(self) -> list:
        return list(self.categorical) + [n.column for n in self.numeric] + \
            [f for t in self.time for f in t.field_names]

    @property
    def fields(self) -> tuple:
        """The processed fields, in order."""
        return tuple(self.order or self.default_order())

    @property
    def used_columns(self) -> tuple:
        """The raw columns read: label, then every feature column."""
        return (self.label.column,) + self.categorical + tuple(n.column for n in self.numeric) + \
            tuple(t.column for t in self.time)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Hash of everything that changes the processed output (part of the fingerprint)."""
        d = self.to_dict()
        for k in ("join", "derive"):  # keys added later, unset: the digest of a schema without them stays
            if not d[k]:
                d.pop(k)
        for n in d["numeric"]:  # a key added later, unset: the digest of a schema without it stays the same
            if n.get("edges") is None:
                n.pop("edges", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]

    def replace(self, **changes) -> DatasetSchema:
        return dataclasses.replace(self, **changes)


def _schema_text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark dropped); a byte that is not UTF-8 is named by line."""
    try:
        body = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as e:
        raise CtrkitError(f"{path}: cannot read schema: {e.strerror or e}") from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body[:e.start].count(b"\n") + 1
        raise CtrkitError(f"{path}: line {line}: not UTF-8 text (byte 0x{body[e.start]:02x}); "
                          f"save the schema as UTF-8") from None


def load_schema(path) -> DatasetSchema:
    """A schema from a YAML (or JSON) file; errors name the file and the key."""
    import yaml

    path = Path(path)
    try:
        d = yaml.safe_load(_schema_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise CtrkitError(f"{path}: {where}invalid YAML: {getattr(e, 'problem', None) or e}") from None
    try:
        return DatasetSchema.from_dict(d)
    except CtrkitError as e:
        raise CtrkitError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------------
# Built-in schemas and the BARS protocols
# --------------------------------------------------------------------------------------------

_BINARY = Label(column="label", positive=("1",), negative=("0",))

BUILTIN = {
    "criteo": DatasetSchema(name="criteo", label=_BINARY, categorical=tuple(CRITEO_CAT),
                            numeric=tuple(Numeric(column=c) for c in CRITEO_INT),
                            columns=tuple(["label"] + CRITEO_INT + CRITEO_CAT),
                            order=tuple(CRITEO_INT + CRITEO_CAT), min_count=10),
    # Avazu: `id` is dropped; `hour` (YYMMDDHH) becomes hour-of-day, weekday and weekend (BARS x4).
    "avazu": DatasetSchema(name="avazu", label=Label(column="click", positive=("1",), negative=("0",)),
                           categorical=tuple(AVAZU_CAT),
                           time=(Time(column="hour", names=("hour", "weekday", "weekend")),),
                           drop=("id",), columns=tuple(["id", "click", "hour"] + AVAZU_CAT),
                           order=tuple(["hour"] + AVAZU_CAT + ["weekday", "weekend"]), min_count=2),
    # BARS Frappe_x1 / MovielensLatest_x1 (dataset_config_*_x1.yaml): every column categorical,
    # min_categr_count 1, given 7:2:1 splits (the ratio is used only for one unsplit file).
    "frappe": DatasetSchema(name="frappe", label=_BINARY, categorical=tuple(FRAPPE_CAT),
                            split=Split(ratios=(7, 2, 1), stratified=False)),
    "movielens": DatasetSchema(name="movielens", label=_BINARY, categorical=tuple(MOVIELENS_CAT),
                               split=Split(ratios=(7, 2, 1), stratified=False)),
}
LEGACY = ("criteo", "avazu")  # fingerprints kept from before schemas (no schema digest in them)


@dataclass(frozen=True, kw_only=True)
class Protocol:
    name: str
    min_count: dict             # dataset -> categorical min-count (BARS min_categr_count)
    split: tuple                # train/valid/test ratios, for one unsplit input
    stratified: bool


# BARS: Criteo_x4_001 min-count 10, Avazu_x4_001 2; x4_002: 2 and 1; x1 per its yaml: 1.
# Criteo_x1's integers are numeric in BARS; here every field is categorical (int32 indices), so
# x1 buckets them like x4 does. Frappe and MovieLens exist as x1 only.
PROTOCOLS = {
    "x4_001": Protocol(name="x4_001", min_count={"criteo": 10, "avazu": 2}, split=(8, 1, 1), stratified=True),
    "x4_002": Protocol(name="x4_002", min_count={"criteo": 2, "avazu": 1}, split=(8, 1, 1), stratified=True),
    "x1": Protocol(name="x1", min_count={"criteo": 1, "avazu": 1, "frappe": 1, "movielens": 1},
                   split=(7, 2, 1), stratified=False),
}
DEFAULT_PROTOCOL = {"criteo": "x4_001", "avazu": "x4_001", "frappe": "x1", "movielens": "x1"}


def builtin(dataset: str, protocol: str | None = None, seed: int | None = None) -> DatasetSchema:
    """The built-in schema of `dataset` under a BARS `protocol` (min-count and split)."""
    if dataset not in BUILTIN:
        raise CtrkitError(f"unknown dataset {dataset!r}; valid: {', '.join(BUILTIN)}, or --schema FILE.yaml")
    protocol = protocol or DEFAULT_PROTOCOL[dataset]
    if protocol not in PROTOCOLS:
        raise CtrkitError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    proto = PROTOCOLS[protocol]
    if dataset not in proto.min_count:
        valid = [p for p, v in PROTOCOLS.items() if dataset in v.min_count]
        raise CtrkitError(f"protocol {protocol!r} is not defined for {dataset}; valid: {', '.join(valid)}")
    s = BUILTIN[dataset]
    return s.replace(min_count=proto.min_count[dataset],
                     split=Split(ratios=proto.split, stratified=proto.stratified,
                                 seed=s.split.seed if seed is None else seed))
