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

`DatasetSchema.from_dict` / `load_schema(path)` check every key (an unknown one is an error listing
the valid ones). The built-in Criteo, Avazu, Frappe and MovieLens schemas are instances of the same
class (`BUILTIN`); the BARS protocols (`PROTOCOLS`) adjust a built-in schema's min-count and split.
"""
from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ctrkit.data.keys import floats
from ctrkit.core.errors import CtrkitError

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


def _check_keys(d, cls, where: str) -> None:
    if not isinstance(d, dict):
        raise CtrkitError(f"{where}: expected a mapping, got {type(d).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in valid]
    if unknown:
        raise CtrkitError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid: {', '.join(valid)}")


def _names(v, where: str) -> tuple:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
        raise CtrkitError(f"{where}: expected a list of column names, got {v!r}")
    return tuple(v)


def _items(v, where: str) -> list:
    if v is None:
        return []
    if not isinstance(v, (list, tuple)):
        raise CtrkitError(f"{where}: expected a list of mappings, got {v!r}")
    return list(v)


def _values(v, where: str) -> tuple:
    """Label values as strings (YAML may give 1 or ">50K")."""
    if not isinstance(v, (list, tuple)):
        v = [v]
    if any(isinstance(x, bool) for x in v):
        raise CtrkitError(f"{where}: got a boolean: YAML reads unquoted yes/no/true/false/on/off as "
                          f"booleans; quote the value, e.g. ['yes']")
    if not v or not all(isinstance(x, (str, int, float)) for x in v):
        raise CtrkitError(f"{where}: expected a non-empty list of values, got {v!r}")
    return tuple(str(x).strip() for x in v)


@dataclass(frozen=True, kw_only=True)
class Label:
    """The label column; a row is positive when its value is in `positive`, negative when in
    `negative` (default [0] when positive is [1]; "rest": every other value), else invalid."""
    column: str
    positive: tuple = ("1",)
    negative: tuple | str | None = None

    @classmethod
    def from_dict(cls, d, where: str = "label") -> Label:
        if isinstance(d, str):
            d = {"column": d}
        _check_keys(d, cls, where)
        if "column" not in d:
            raise CtrkitError(f"{where}: missing key 'column'")
        neg = d.get("negative")
        return cls(column=_names(d["column"], f"{where}.column")[0],
                   positive=_values(d.get("positive", [1]), f"{where}.positive"),
                   negative=neg if neg in (None, "rest") else _values(neg, f"{where}.negative"))

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
    (fixed bins at the given increasing `edges`: v < edges[0], edges[0] <= v < edges[1], ...)."""
    column: str
    bucket: str = "log2"
    bins: int = 10
    edges: tuple | None = None

    @classmethod
    def from_dict(cls, d, where: str) -> Numeric:
        if isinstance(d, str):
            d = {"column": d}
        _check_keys(d, cls, where)
        if "column" not in d:
            raise CtrkitError(f"{where}: missing key 'column'")
        edges = d.get("edges")
        n = cls(column=_names(d["column"], f"{where}.column")[0], bucket=d.get("bucket", "edges" if edges else "log2"),
                bins=d.get("bins", 10), edges=tuple(edges) if isinstance(edges, (list, tuple)) else edges)
        if n.bucket not in BUCKETS:
            raise CtrkitError(f"{where}.bucket: unknown bucket {n.bucket!r}; valid: {', '.join(BUCKETS)}")
        if (n.bucket == "edges") != (n.edges is not None):
            raise CtrkitError(f"{where}.edges: give edges exactly with bucket: edges (got bucket {n.bucket!r}, "
                              f"edges {edges!r})")
        if n.edges is not None and (not isinstance(n.edges, tuple) or not n.edges or any(
                isinstance(e, bool) or not isinstance(e, (int, float)) for e in n.edges)
                or any(a >= b for a, b in zip(n.edges, n.edges[1:]))):
            raise CtrkitError(f"{where}.edges: expected a non-empty list of strictly increasing numbers, got {edges!r}")
        if not isinstance(n.bins, int) or isinstance(n.bins, bool) or not 2 <= n.bins <= MAX_BINS:
            raise CtrkitError(f"{where}.bins: expected an integer from 2 to {MAX_BINS}, got {n.bins!r}")
        return n


@dataclass(frozen=True, kw_only=True)
class Time:
    """A timestamp column turned into categorical fields (`derive`: hour, weekday, weekend).
    `names`: the output field names (default `<column>_<part>`)."""
    column: str
    format: str = "YYMMDDHH"
    derive: tuple = TIME_PARTS
    names: tuple | None = None

    @classmethod
    def from_dict(cls, d, where: str) -> Time:
        _check_keys(d, cls, where)
        if "column" not in d:
            raise CtrkitError(f"{where}: missing key 'column'")
        t = cls(column=_names(d["column"], f"{where}.column")[0], format=str(d.get("format", "YYMMDDHH")),
                derive=_names(d.get("derive", list(TIME_PARTS)), f"{where}.derive"),
                names=None if d.get("names") is None else _names(d["names"], f"{where}.names"))
        bad = [p for p in t.derive if p not in TIME_PARTS]
        if bad:
            raise CtrkitError(f"{where}.derive: unknown part(s) {', '.join(bad)}; valid: {', '.join(TIME_PARTS)}")
        if t.names is not None and len(t.names) != len(t.derive):
            raise CtrkitError(f"{where}.names: {len(t.names)} names for {len(t.derive)} derived fields")
        return t

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

    @classmethod
    def from_dict(cls, d, where: str) -> Join:
        _check_keys(d, cls, where)
        for k in ("file", "key"):
            if k not in d:
                raise CtrkitError(f"{where}: missing key {k!r}")
        if not isinstance(d["file"], str) or not d["file"]:
            raise CtrkitError(f"{where}.file: expected a file path, got {d['file']!r}")
        return cls(file=d["file"], key=_names(d["key"], f"{where}.key")[0])


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

    @classmethod
    def from_dict(cls, d, where: str) -> Derive:
        _check_keys(d, cls, where)
        for k in ("column", "source", "rule"):
            if k not in d:
                raise CtrkitError(f"{where}: missing key {k!r}")
        x = cls(column=_names(d["column"], f"{where}.column")[0], source=_names(d["source"], f"{where}.source")[0],
                rule=d["rule"], sep=d.get("sep", "|"), length=d.get("length", 1))
        if x.rule not in DERIVE_RULES:
            raise CtrkitError(f"{where}.rule: unknown rule {x.rule!r}; valid: {', '.join(DERIVE_RULES)}")
        if not isinstance(x.sep, str) or not x.sep:
            raise CtrkitError(f"{where}.sep: expected a non-empty string, got {x.sep!r}")
        if not isinstance(x.length, int) or isinstance(x.length, bool) or x.length < 1:
            raise CtrkitError(f"{where}.length: expected an integer >= 1, got {x.length!r}")
        return x


@dataclass(frozen=True, kw_only=True)
class Split:
    """How one unsplit input is split: train/valid/test `ratios` (integers; rows are assigned in
    blocks of sum(ratios) rows of a class), `seed`, `stratified` by label."""
    ratios: tuple = (8, 1, 1)
    seed: int = 2021
    stratified: bool = True

    @classmethod
    def from_dict(cls, d, where: str = "split") -> Split:
        _check_keys(d, cls, where)
        s = cls(ratios=tuple(d.get("ratios", (8, 1, 1))), seed=d.get("seed", 2021),
                stratified=d.get("stratified", True))
        r = s.ratios
        if len(r) != 3 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in r) \
                or r[0] < 1 or sum(r) > 1000:
            raise CtrkitError(f"{where}.ratios: expected three integers train, valid, test (train >= 1), got {list(r)}")
        from ctrkit.core.utils import MAX_SEED  # (here, not at the top: a schema is read before torch is needed)

        if not isinstance(s.seed, int) or isinstance(s.seed, bool) or not 0 <= s.seed <= MAX_SEED:
            raise CtrkitError(f"{where}.seed: expected an integer from 0 to 2**63-1, got {s.seed!r}")
        if not isinstance(s.stratified, bool):
            raise CtrkitError(f"{where}.stratified: expected true or false, got {s.stratified!r}")
        return s


@dataclass(frozen=True, kw_only=True)
class DatasetSchema:
    """What a raw table's columns mean (see the module docstring). Columns not named anywhere are
    ignored and listed in the feature map (`source.ignored_columns`); `drop` ignores silently.
    `columns`: every column in order, for files without a header. `order`: the processed fields'
    order (default: categorical, numeric, then derived time fields)."""
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

    @classmethod
    def from_dict(cls, d, where: str = "schema") -> DatasetSchema:
        _check_keys(d, cls, where)
        for k in ("name", "label"):
            if k not in d:
                raise CtrkitError(f"{where}: missing key {k!r}")
        if not isinstance(d["name"], str) or not d["name"]:
            raise CtrkitError(f"{where}.name: expected a non-empty string, got {d['name']!r}")
        if "/" in d["name"] or "\\" in d["name"] or d["name"] in (".", ".."):  # it names folders (runs/<name>/...)
            raise CtrkitError(f"{where}.name: a name, not a path, got {d['name']!r}")
        s = cls(name=d["name"], label=Label.from_dict(d["label"]),
                categorical=_names(d.get("categorical") or [], "categorical"),
                numeric=tuple(Numeric.from_dict(x, f"numeric[{i}]") for i, x in enumerate(d.get("numeric") or [])),
                time=tuple(Time.from_dict(x, f"time[{i}]") for i, x in enumerate(d.get("time") or [])),
                drop=_names(d.get("drop") or [], "drop"), min_count=d.get("min_count", 1),
                split=Split.from_dict(d.get("split") or {}),
                columns=None if d.get("columns") is None else _names(d["columns"], "columns"),
                order=None if d.get("order") is None else _names(d["order"], "order"),
                join=tuple(Join.from_dict(x, f"join[{i}]") for i, x in enumerate(_items(d.get("join"), "join"))),
                derive=tuple(Derive.from_dict(x, f"derive[{i}]")
                             for i, x in enumerate(_items(d.get("derive"), "derive"))))
        s.validate()
        return s

    def validate(self) -> None:
        if not isinstance(self.min_count, int) or isinstance(self.min_count, bool) or self.min_count < 1:
            raise CtrkitError(f"min_count: expected an integer >= 1, got {self.min_count!r}")
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
