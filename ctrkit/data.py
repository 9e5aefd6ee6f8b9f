"""The Criteo/Avazu data pipeline: raw files (or a Hugging Face dataset) -> processed directory.

A processed directory holds `feature_map.json` and per split `{split}_X.npy` (int32 [rows, fields],
per-field local indices) and `{split}_y.npy` (float32 [rows]); `load()` memory-maps them.

`prepare()` streams the input twice in bounded memory, with Arrow's CSV reader:
pass 1 counts the values of every field in the training rows, pass 2 maps each value to its index
and appends the rows to the split's .npy files. Each field value becomes a 64-bit key (integers:
their BARS bucket; strings: a 64-bit hash of their bytes, computed once per distinct value of a
block), so the vocabularies are numpy arrays, never Python dicts.

Index layout of every field: 0 = padding (never produced here; kept for compatibility with
FuxiCTR-style embedding tables), 1 = OOV (values rarer than the protocol's min-count in train, and
values unseen in train), 2.. = kept values, most frequent first.
"""
from __future__ import annotations

import datetime as _dt
import gzip as _gzip
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ctrkit.utils import CtrkitError, env_info, write_json_atomic

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
PAD, OOV, FIRST = 0, 1, 2

CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
AVAZU_CAT = ["C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
             "app_category", "device_id", "device_ip", "device_model", "device_type",
             "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]


@dataclass(frozen=True)
class Schema:
    dataset: str
    label: str                  # label column name in the raw file
    raw_columns: tuple          # every column of a raw file, in order (headerless files)
    fields: tuple               # the processed fields, in order
    int_fields: tuple = ()      # Criteo integer fields (bucketed)


SCHEMAS = {
    "criteo": Schema("criteo", "label", tuple(["label"] + CRITEO_INT + CRITEO_CAT),
                     tuple(CRITEO_INT + CRITEO_CAT), tuple(CRITEO_INT)),
    # Avazu: `id` is dropped; `hour` (YYMMDDHH) becomes hour-of-day, weekday and weekend (BARS x4).
    "avazu": Schema("avazu", "click", tuple(["id", "click", "hour"] + AVAZU_CAT),
                    tuple(["hour"] + AVAZU_CAT + ["weekday", "weekend"])),
}


@dataclass(frozen=True)
class Protocol:
    name: str
    min_count: dict             # dataset -> categorical min-count (BARS min_categr_count)
    split: tuple                # train/valid/test fractions in tenths, for one unsplit input
    stratified: bool


# BARS: Criteo_x4_001 min-count 10, Avazu_x4_001 2; x4_002: 2 and 1; x1 per its yaml: 1.
# Criteo_x1's integers are numeric in BARS; here every field is categorical (int32 indices), so
# x1 buckets them like x4 does.
PROTOCOLS = {
    "x4_001": Protocol("x4_001", {"criteo": 10, "avazu": 2}, (8, 1, 1), True),
    "x4_002": Protocol("x4_002", {"criteo": 2, "avazu": 1}, (8, 1, 1), True),
    "x1": Protocol("x1", {"criteo": 1, "avazu": 1}, (7, 2, 1), False),
}


def _schema(dataset: str) -> Schema:
    if dataset not in SCHEMAS:
        raise CtrkitError(f"unknown dataset {dataset!r}; valid: {', '.join(SCHEMAS)}")
    return SCHEMAS[dataset]


def _protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise CtrkitError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


# --------------------------------------------------------------------------------------------
# Loading a processed directory
# --------------------------------------------------------------------------------------------

@dataclass
class CTRData:
    """A processed dataset directory. Arrays are memory-mapped; nothing is read until asked."""

    path: Path
    feature_map: dict
    # (split, device) -> tensors: a run, its pretrained-score pass and the next run of an experiment
    # grid reuse one copy instead of re-reading the split from disk (and re-uploading it to a GPU).
    _tensors: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def dataset(self) -> str:
        return self.feature_map["dataset"]

    @property
    def protocol(self) -> str:
        return self.feature_map["protocol"]

    @property
    def fingerprint(self) -> str:
        return self.feature_map["fingerprint"]

    @property
    def field_sizes(self) -> list[int]:
        return [int(f["vocab_size"]) for f in self.feature_map["fields"]]

    @property
    def field_names(self) -> list[str]:
        return [f["name"] for f in self.feature_map["fields"]]

    @property
    def num_fields(self) -> int:
        return len(self.feature_map["fields"])

    @property
    def rows(self) -> dict:
        return dict(self.feature_map["rows"])

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise CtrkitError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")

    def numpy(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(X int32 [rows, fields] memmap, y float32 [rows] memmap)."""
        self._check_split(split)
        try:
            X = np.load(self.path / f"{split}_X.npy", mmap_mode="r")
            y = np.load(self.path / f"{split}_y.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise CtrkitError(f"{self.path}: cannot read split {split!r}: {e}") from None
        return X, y

    def tensors(self, split: str, device="cpu"):
        """(X torch.int32 [rows, fields], y torch.float32 [rows]) on `device`."""
        import torch

        key = (split, str(torch.device(device)))
        if key not in self._tensors:
            X, y = self.numpy(split)
            # np.array copies out of the read-only memmap: torch wants writable memory.
            self._tensors[key] = (torch.from_numpy(np.array(X)).to(device), torch.from_numpy(np.array(y)).to(device))
        return self._tensors[key]

    def __repr__(self) -> str:
        return (f"CTRData({self.dataset}/{self.protocol}, {self.num_fields} fields, "
                f"rows={self.rows}, path={str(self.path)!r})")


def load(data_dir) -> CTRData:
    """Open a processed directory written by `prepare`."""
    path = Path(data_dir)
    fm_path = path / "feature_map.json"
    if not fm_path.is_file():
        raise CtrkitError(f"{path}: not a prepared dataset (no feature_map.json); run `ctrkit prepare`")
    try:
        fm = json.loads(fm_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CtrkitError(f"{fm_path}: unreadable feature map: {e}") from None
    for key in ("dataset", "protocol", "fields", "fingerprint", "rows"):
        if key not in fm:
            raise CtrkitError(f"{fm_path}: feature map lacks {key!r}")
    return CTRData(path=path, feature_map=fm)


# --------------------------------------------------------------------------------------------
# Value -> 64-bit key
# --------------------------------------------------------------------------------------------

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _mix64(h: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser: spreads FNV's weak low bits.
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def hash_strings(arr) -> np.ndarray:
    """64-bit FNV-1a (+ splitmix finaliser) of each string's UTF-8 bytes; nulls hash like "".

    Pure numpy integer arithmetic, so a value's key is the same on every machine and version.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pc.fill_null(arr, "") if arr.null_count else arr
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1 + arr.offset)[arr.offset:]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lens = (offsets[1:] - offsets[:-1]).astype(np.int64)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    active = np.flatnonzero(lens > 0)
    pos = 0
    with np.errstate(over="ignore"):
        while active.size:
            b = data[starts[active] + pos].astype(np.uint64)
            h[active] = (h[active] ^ b) * _FNV_PRIME
            pos += 1
            active = active[lens[active] > pos]
        return _mix64(h ^ lens.astype(np.uint64))


_NUM_RE = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_INT_KEY_OFFSET = 1 << 40  # bucket b -> key b + 2^40 (> 0); key 0 is "missing"


def bucketize(v: np.ndarray) -> np.ndarray:
    """BARS `convert_to_bucket`: v > 2 -> floor(ln(v)^2), else int(v) (truncation)."""
    v = np.asarray(v, dtype=np.float64)
    out = np.trunc(v)
    big = v > 2
    out[big] = np.floor(np.log(v[big]) ** 2)
    return out.astype(np.int64)


def _int_keys(values) -> tuple[np.ndarray, np.ndarray]:
    """Keys of a dictionary of Criteo integer strings, and a mask of the invalid ones."""
    import pyarrow.compute as pc

    vals = pc.utf8_trim_whitespace(values)
    empty = np.asarray(pc.equal(vals, "").to_numpy(zero_copy_only=False), dtype=bool)
    ok = np.asarray(pc.match_substring_regex(vals, _NUM_RE).to_numpy(zero_copy_only=False), dtype=bool)
    bad = ~(ok | empty)
    keys = np.zeros(len(values), dtype=np.uint64)
    good = ok & ~empty
    if good.any():
        nums = pc.cast(pc.filter(vals, good), "float64").to_numpy()
        finite = np.isfinite(nums)
        b = np.where(finite, bucketize(np.where(finite, nums, 0)), 0)
        keys[good] = (b + _INT_KEY_OFFSET).astype(np.uint64)
        bad[np.flatnonzero(good)[~finite]] = True
    return keys, bad


def _label_values(values) -> tuple[np.ndarray, np.ndarray]:
    """0/1 of each distinct label string (accepting "0.0"/"1.0"), and a mask of invalid ones."""
    import pyarrow.compute as pc

    s = pc.utf8_trim_whitespace(values).to_numpy(zero_copy_only=False)
    y = np.zeros(len(s), dtype=np.float32)
    bad = np.zeros(len(s), dtype=bool)
    for i, v in enumerate(s):  # a handful of distinct values per block
        if v in ("0", "1"):
            y[i] = float(v)
        else:
            try:
                f = float(v)
            except ValueError:
                f = -1.0
            if f in (0.0, 1.0):
                y[i] = f
            else:
                bad[i] = True
    return y, bad


def _hour_keys(values) -> tuple[list, np.ndarray]:
    """Avazu `hour` (YYMMDDHH) -> keys of hour-of-day, weekday, weekend; mask of invalid ones."""
    s = values.to_numpy(zero_copy_only=False)
    hod = np.zeros(len(s), dtype=np.uint64)
    wd = np.zeros(len(s), dtype=np.uint64)
    we = np.zeros(len(s), dtype=np.uint64)
    bad = np.zeros(len(s), dtype=bool)
    for i, v in enumerate(s):  # distinct hours in a block: a few hundred at most
        v = v.strip()
        try:
            if len(v) != 8 or not v.isdigit():
                raise ValueError
            day = _dt.date(2000 + int(v[0:2]), int(v[2:4]), int(v[4:6]))
            h = int(v[6:8])
            if h > 23:
                raise ValueError
        except ValueError:
            bad[i] = True
            continue
        hod[i], wd[i], we[i] = h + 1, day.weekday() + 1, int(day.weekday() >= 5) + 1
    return [hod, wd, we], bad


# --------------------------------------------------------------------------------------------
# Sources: files or Hugging Face datasets, as a stream of Arrow tables
# --------------------------------------------------------------------------------------------

@dataclass
class _Part:
    """One input stream: a file, or one split of a `datasets` dataset."""
    name: str                               # shown in messages: the file path or "hub:<id>[split]"
    split: str | None                       # given split (pre-split input) or None (to be split)
    open: Callable[[], Iterator]             # -> iterator of pyarrow Tables/RecordBatches
    first_line: int                         # line number of the first data row (1-based)
    columns: dict                           # our column name -> column name in the stream
    locate_bad_row: Callable[[int], str] | None = None  # rows_ok -> "line N: ..." (files)
    fingerprint: str = ""
    size: int = 0
    skipped: list = field(default_factory=lambda: [0])


_RAW_NAMES = {"criteo": ("train.txt", "train.tsv", "train.csv"), "avazu": ("train.csv",)}
_SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation", "val"), "test": ("test",)}
_EXTS = (".csv", ".txt", ".tsv")


def _with_gz(stem_names) -> list[str]:
    return [n + gz for n in stem_names for gz in ("", ".gz")]


def _open_text(path: Path):
    return _gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")


def _file_fingerprint(path: Path) -> str:
    """Size + SHA-256 of the first and last MiB: cheap on a 11 GB file, changes with any re-export."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read())
    return h.hexdigest()


def _file_part(path: Path, schema: Schema, split: str | None, on_bad_lines: str) -> _Part:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if not path.is_file():
        raise CtrkitError(f"{path}: no such file")
    try:
        with _open_text(path) as f:
            first = f.readline()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise CtrkitError(f"{path}: cannot read: {e}") from None
    if not first.strip():
        raise CtrkitError(f"{path}: line 1: empty file (no header, no rows)")
    delim = "\t" if "\t" in first else ","
    tokens = [t.strip().strip('"') for t in first.rstrip("\r\n").split(delim)]
    lower = [t.lower() for t in tokens]
    header = schema.label in lower or "i1" in lower or "hour" in lower
    if header:
        want = [c for c in schema.raw_columns if c != "id"]
        columns = {}
        for c in want:
            if c.lower() not in lower:
                missing = [w for w in want if w.lower() not in lower]
                raise CtrkitError(f"{path}: line 1: header lacks column(s) {', '.join(missing)} "
                                  f"for {schema.dataset}")
            columns[c] = tokens[lower.index(c.lower())]
        names = tokens
        first_line = 2
    else:
        names = list(schema.raw_columns)
        if len(tokens) != len(names):
            raise CtrkitError(f"{path}: line 1: expected {len(names)} {'tab' if delim == chr(9) else 'comma'}"
                              f"-separated columns for headerless {schema.dataset}, got {len(tokens)}")
        columns = {c: c for c in names if c != "id"}
        first_line = 1
    dict_type = pa.dictionary(pa.int32(), pa.string())
    include = list(columns.values())

    def open_stream(handler):
        read = pacsv.ReadOptions(use_threads=True, block_size=4 << 20,
                                 column_names=None if header else names,
                                 skip_rows=0)
        parse = pacsv.ParseOptions(delimiter=delim, quote_char='"' if delim == "," else False,
                                   ignore_empty_lines=False, invalid_row_handler=handler)
        conv = pacsv.ConvertOptions(column_types={c: dict_type for c in include},
                                    include_columns=include, strings_can_be_null=False,
                                    quoted_strings_can_be_null=False)
        return pacsv.open_csv(str(path), read_options=read, parse_options=parse,
                              convert_options=conv)

    part = _Part(name=str(path), split=split, open=lambda: iter(()), first_line=first_line,
                 columns=columns, fingerprint=_file_fingerprint(path), size=path.stat().st_size)

    def batches():
        def handler(row):
            if on_bad_lines == "skip":
                part.skipped[0] += 1
                return "skip"
            return "error"
        try:
            reader = open_stream(handler)
        except (pa.ArrowInvalid, OSError) as e:  # OSError: e.g. a truncated .gz
            raise CtrkitError(_arrow_error(part, e, 0)) from None
        rows = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowInvalid, OSError) as e:
                raise CtrkitError(_arrow_error(part, e, rows)) from None
            rows += batch.num_rows
            yield batch

    part.open = batches
    n_cols = len(names)

    def locate(rows_ok: int) -> str:
        # Arrow does not report line numbers: find the first malformed line after the good rows.
        with _open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if lineno < first_line + rows_ok:
                    continue
                got = len(line.rstrip("\r\n").split(delim)) if line.strip("\r\n") else 0
                if got != n_cols:
                    return f"line {lineno}: expected {n_cols} columns, got {got}"
        return f"line {first_line + rows_ok}: malformed row"

    part.locate_bad_row = locate
    return part


def _arrow_error(part: _Part, e: Exception, rows_ok: int) -> str:
    msg = str(e).splitlines()[0]
    if part.locate_bad_row is not None and "columns" in msg:
        return f"{part.name}: {part.locate_bad_row(rows_ok)}"
    return f"{part.name}: near line {part.first_line + rows_ok}: {msg}"


def _dataset_parts(ds, schema: Schema, name: str) -> list[_Part]:
    """Parts from a `datasets.Dataset` / `DatasetDict` (hub id or local files)."""
    import datasets

    if isinstance(ds, datasets.Dataset):
        splits = {None: ds}
    else:
        keys = list(ds.keys())
        found = {}
        for ours, aliases in _SPLIT_NAMES.items():
            hit = [k for k in keys if k.lower() in aliases]
            if hit:
                found[ours] = ds[hit[0]]
        if set(found) == set(SPLITS):
            splits = found
        elif "train" in found and len(keys) == 1:
            splits = {None: found["train"]}
        else:
            raise CtrkitError(f"{name}: expected splits train/valid(ation)/test or one train split, "
                              f"got {', '.join(keys) or 'none'}")
    parts = []
    for split, d in splits.items():
        lower = {c.lower(): c for c in d.column_names}
        want = [c for c in schema.raw_columns if c != "id"]
        missing = [c for c in want if c.lower() not in lower]
        if missing:
            raise CtrkitError(f"{name}: dataset lacks column(s) {', '.join(missing)} for {schema.dataset}")
        columns = {c: lower[c.lower()] for c in want}

        def batches(d=d, columns=columns):
            import pyarrow as pa
            import pyarrow.compute as pc

            for t in d.with_format("arrow").iter(batch_size=1 << 17):
                cols = []
                for c in columns.values():
                    a = t.column(c)
                    if not pa.types.is_string(a.type) and not pa.types.is_large_string(a.type):
                        a = pc.cast(a, pa.string())
                    a = pc.fill_null(a, "")
                    cols.append(pc.dictionary_encode(a.combine_chunks()))
                yield pa.table(cols, names=list(columns.values()))

        fp = getattr(d, "_fingerprint", None) or hashlib.sha256(repr(d).encode()).hexdigest()
        parts.append(_Part(name=f"{name}[{split or 'train'}]", split=split, open=batches,
                           first_line=1, columns=columns, fingerprint=str(fp), size=0))
    return parts


def _hub_parts(hub_id: str, schema: Schema) -> list[_Part]:
    import datasets

    offline = os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "TRUE") or \
        os.environ.get("HF_DATASETS_OFFLINE", "") in ("1", "true", "TRUE")
    if not offline:
        _check_hub_reachable(hub_id)
    try:
        ds = datasets.load_dataset(hub_id)
    except Exception as e:  # datasets raises many kinds; the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CtrkitError(f"hf://{hub_id}: cannot load from the Hugging Face hub: {first}") from None
    return _dataset_parts(ds, schema, f"hf://{hub_id}")


def _check_hub_reachable(hub_id: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not minutes of retries, when the hub cannot be reached."""
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/datasets/{hub_id}"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if e.code in (401, 404):
            raise CtrkitError(f"hf://{hub_id}: no such dataset on {endpoint} (HTTP {e.code})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise CtrkitError(f"hf://{hub_id}: cannot reach the Hugging Face hub at {endpoint} "
                          f"({reason}); download the files and pass --raw DIR, or set "
                          f"HF_HUB_OFFLINE=1 to use the local cache") from None


def _resolve_source(raw, schema: Schema, on_bad_lines: str) -> tuple[list[_Part], dict]:
    # A Dataset object implies `datasets` is imported already; don't pay its import otherwise.
    datasets = sys.modules.get("datasets")
    if datasets is not None and isinstance(raw, (datasets.Dataset, datasets.DatasetDict)):
        return _dataset_parts(raw, schema, "datasets"), {"kind": "datasets"}
    raw_s = str(raw)
    if raw_s.startswith("hf://"):
        hub_id = raw_s[len("hf://"):].strip("/")
        if not hub_id:
            raise CtrkitError("--raw hf://<id>: the hub id is empty")
        return _hub_parts(hub_id, schema), {"kind": "hub", "id": hub_id}
    path = Path(raw_s)
    if path.is_dir():
        found = {}
        for split, stems in _SPLIT_NAMES.items():
            cands = [path / n for s in stems for ext in _EXTS for n in _with_gz([s + ext])]
            hit = [c for c in cands if c.is_file()]
            if hit:
                found[split] = hit[0]
        if set(found) == set(SPLITS):
            parts = [_file_part(found[s], schema, s, on_bad_lines) for s in SPLITS]
            return parts, {"kind": "presplit", "files": [str(found[s]) for s in SPLITS]}
        single = [path / n for n in _with_gz(_RAW_NAMES[schema.dataset])]
        single = [c for c in single if c.is_file()]
        if single:
            return [_file_part(single[0], schema, None, on_bad_lines)], \
                {"kind": "file", "files": [str(single[0])]}
        if found:
            raise CtrkitError(f"{path}: has {', '.join(found)} but not all of train/valid/test files")
        raise CtrkitError(f"{path}: no {' / '.join(_RAW_NAMES[schema.dataset])} (or .gz), and no "
                          f"train/valid/test files in this directory")
    if not path.exists():
        raise CtrkitError(f"{path}: no such file or directory")
    return [_file_part(path, schema, None, on_bad_lines)], {"kind": "file", "files": [str(path)]}


# --------------------------------------------------------------------------------------------
# Decoding a block and assigning splits
# --------------------------------------------------------------------------------------------

def _decode(batch, part: _Part, schema: Schema):
    """-> (labels float32 [n], per field (keys uint64 [U], codes int32 [n]), bad-row mask [n])."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = batch.num_rows
    bad = np.zeros(n, dtype=bool)
    names = batch.schema.names

    def col(ours):
        a = batch.column(names.index(part.columns[ours]))
        if isinstance(a, pa.ChunkedArray):
            a = a.combine_chunks()
        if not pa.types.is_dictionary(a.type):
            a = pc.dictionary_encode(a)
        codes = a.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        return a.dictionary, codes

    lab_vals, lab_codes = col(schema.label)
    y_of, y_bad = _label_values(lab_vals)
    y = y_of[lab_codes]
    if y_bad.any():
        bad |= y_bad[lab_codes]
    fields = []
    if schema.dataset == "criteo":
        for name in schema.fields:
            vals, codes = col(name)
            if name in schema.int_fields:
                keys, kbad = _int_keys(vals)
                if kbad.any():
                    bad |= kbad[codes]
            else:
                keys = hash_strings(vals)
            fields.append((keys, codes))
    else:
        vals, codes = col("hour")
        (hod, wd, we), hbad = _hour_keys(vals)
        if hbad.any():
            bad |= hbad[codes]
        fields.append((hod, codes))
        for name in schema.fields[1:-2]:
            vals, c = col(name)
            fields.append((hash_strings(vals), c))
        fields.append((wd, codes))
        fields.append((we, codes))
    return y, fields, bad


def _bad_row_message(batch, part: _Part, schema: Schema, i: int, rows_before: int) -> str:
    """Name the first invalid value of row i of the block (same checks as _decode)."""
    import pyarrow as pa

    line = part.first_line + rows_before + i
    names = batch.schema.names

    def value(ours):
        v = batch.column(names.index(part.columns[ours]))[i].as_py()
        return "" if v is None else str(v)

    lab = value(schema.label)
    if _label_values(pa.array([lab]))[1][0]:
        return f"{part.name}: line {line}: label {schema.label!r} must be 0 or 1, got {lab.strip()!r}"
    if schema.dataset == "criteo":
        for name in schema.int_fields:
            v = value(name)
            if _int_keys(pa.array([v]))[1][0]:
                return f"{part.name}: line {line}: integer field {name} is not a number: {v.strip()!r}"
    else:
        v = value("hour")
        if _hour_keys(pa.array([v]))[1][0]:
            return f"{part.name}: line {line}: hour must be YYMMDDHH, got {v!r}"
    return f"{part.name}: line {line}: invalid row"


class _Splitter:
    """Deterministic split assignment of a stream of rows, independent of library versions.

    Rows of each class (label, when stratified) are taken in blocks of 10 consecutive rows of that
    class; a block's 10 slots get 8/1/1 (or 7/2/1) train/valid/test in an order chosen by
    splitmix64(seed, class, block) keys. So every split gets its exact share of each class (up to
    one block), the assignment looks random, and it needs only integer arithmetic, no shuffles.
    """

    def __init__(self, fractions: tuple, stratified: bool, seed: int):
        self.pattern = np.repeat(np.arange(3, dtype=np.int8), fractions)  # e.g. 0*8, 1, 2
        assert len(self.pattern) == 10
        self.stratified = stratified
        self.seed = np.uint64(seed % (1 << 64))
        self.seen = [0, 0]  # rows seen per class

    def _slots(self, cls: int, idx: np.ndarray) -> np.ndarray:
        block = idx // 10
        pos = idx % 10
        ublocks = np.unique(block)
        with np.errstate(over="ignore"):
            base = _mix64(self.seed * np.uint64(0x9E3779B97F4A7C15) + np.uint64(cls + 1)) \
                ^ ublocks.astype(np.uint64)
            # key of slot j of each block; the argsort of the 10 keys is the block's order
            keys = _mix64(base[:, None] * np.uint64(0xD6E8FEB86659FD93) + np.arange(10, dtype=np.uint64))
        order = np.argsort(keys, axis=1, kind="stable")
        perm = self.pattern[order]  # [blocks, 10]: split of each position in the block
        return perm[np.searchsorted(ublocks, block), pos]

    def assign(self, y: np.ndarray) -> np.ndarray:
        out = np.empty(len(y), dtype=np.int8)
        classes = (y > 0.5).astype(np.int64) if self.stratified else np.zeros(len(y), np.int64)
        for c in (0, 1):
            m = classes == c
            k = int(m.sum())
            if k:
                idx = self.seen[c] + np.arange(k, dtype=np.int64)
                out[m] = self._slots(c, idx)
                self.seen[c] += k
        return out


# --------------------------------------------------------------------------------------------
# Counting (pass 1) and vocabularies
# --------------------------------------------------------------------------------------------

class _Counter:
    """Per field counts of keys, merged in sorted numpy arrays (no Python dicts)."""

    def __init__(self, n_fields: int):
        self.pending = [[] for _ in range(n_fields)]
        self.pending_size = [0] * n_fields
        self.merged = [(np.zeros(0, np.uint64), np.zeros(0, np.int64)) for _ in range(n_fields)]

    def add(self, f: int, keys: np.ndarray, codes: np.ndarray) -> None:
        cnt = np.bincount(codes, minlength=len(keys))
        nz = cnt > 0
        self.pending[f].append((keys[nz], cnt[nz]))
        self.pending_size[f] += int(nz.sum())
        if self.pending_size[f] > max(1 << 21, len(self.merged[f][0])):
            self._merge(f)

    def _merge(self, f: int) -> None:
        ks = [self.merged[f][0]] + [k for k, _ in self.pending[f]]
        cs = [self.merged[f][1]] + [c for _, c in self.pending[f]]
        k = np.concatenate(ks)
        c = np.concatenate(cs)
        uk, inv = np.unique(k, return_inverse=True)
        self.merged[f] = (uk, np.bincount(inv, weights=c, minlength=len(uk)).astype(np.int64))
        self.pending[f] = []
        self.pending_size[f] = 0

    def vocab(self, f: int, min_count: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(sorted kept keys, their indices, vocab_size). Most frequent value first (index 2)."""
        self._merge(f)
        keys, counts = self.merged[f]
        keep = counts >= min_count
        k, c = keys[keep], counts[keep]
        order = np.lexsort((k, -c))  # count descending, then key: deterministic
        index = np.empty(len(k), dtype=np.int32)
        index[order] = FIRST + np.arange(len(k), dtype=np.int32)
        return k, index, FIRST + len(k)


def _lookup(sorted_keys: np.ndarray, index: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.full(len(keys), OOV, dtype=np.int32)
    pos = np.searchsorted(sorted_keys, keys)
    pos = np.minimum(pos, len(sorted_keys) - 1)
    hit = sorted_keys[pos] == keys
    return np.where(hit, index[pos], OOV).astype(np.int32)


# --------------------------------------------------------------------------------------------
# .npy files appended to in blocks (the row count is known only at the end)
# --------------------------------------------------------------------------------------------

_NPY_HEADER = 128  # bytes; fixed so the header can be rewritten with the final shape in place


def _npy_header(dtype, shape) -> bytes:
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
         "shape": tuple(shape)}
    text = repr(d).encode("latin1")
    magic = b"\x93NUMPY\x01\x00"
    pad = _NPY_HEADER - len(magic) - 2 - len(text) - 1
    if pad < 0:
        raise RuntimeError("npy header too long")
    return magic + (_NPY_HEADER - len(magic) - 2).to_bytes(2, "little") + text + b" " * pad + b"\n"


class _NpyAppender:
    def __init__(self, path: Path, dtype, width: int | None):
        self.path, self.dtype, self.width, self.rows = path, np.dtype(dtype), width, 0
        self.f = open(path, "wb")
        self.f.write(b"\0" * _NPY_HEADER)

    def append(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=self.dtype)
        self.f.write(a.tobytes())
        self.rows += a.shape[0]

    def close(self) -> None:
        shape = (self.rows,) if self.width is None else (self.rows, self.width)
        self.f.seek(0)
        self.f.write(_npy_header(self.dtype, shape))
        self.f.close()


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------

def _fingerprint(dataset, protocol, seed, parts, on_bad_lines) -> str:
    h = hashlib.sha256(f"ctrkit-data-v{FORMAT_VERSION}|{dataset}|{protocol}|{seed}|{on_bad_lines}".encode())
    for p in parts:
        h.update(f"|{p.split}|{Path(p.name).name}|{p.fingerprint}".encode())
    return h.hexdigest()[:16]


def prepare(dataset: str, raw, out, protocol: str = "x4_001", on_bad_lines: str = "error",
            seed: int = 2021, force: bool = False, progress: bool = True) -> Path:
    """Raw Criteo/Avazu input -> processed directory `out` (see the module docstring); return `out`.

    `raw`: a raw file (.gz too), a directory with train.txt/train.csv (e.g. from `ctrkit synth`)
    or with pre-split train/valid/test files (used as given), `hf://<hub id>`, or a `datasets`
    Dataset/DatasetDict. Preparing the same input with the same settings again is a no-op unless
    `force`. The output appears only when complete (written to a temp dir, then renamed).
    """
    schema = _schema(dataset)
    proto = _protocol(protocol)
    if on_bad_lines not in ("error", "skip"):
        raise CtrkitError(f"--on-bad-lines must be error or skip, got {on_bad_lines!r}")
    out = Path(out)
    parts, source = _resolve_source(raw, schema, on_bad_lines)
    fp = _fingerprint(dataset, protocol, seed, parts, on_bad_lines)
    if out.exists() and not force:
        fm_path = out / "feature_map.json"
        if fm_path.is_file():
            try:
                old = json.loads(fm_path.read_text()).get("fingerprint")
            except (OSError, json.JSONDecodeError):
                old = None
            if old == fp:
                return out
            raise CtrkitError(f"{out}: already holds a dataset prepared from other input or settings "
                              f"(fingerprint {old}, now {fp}); pass --force to replace it")
        if out.is_dir() and any(out.iterdir()):
            raise CtrkitError(f"{out}: exists and is not an empty directory; pass --force or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        fm = _prepare_into(tmp, schema, proto, parts, source, seed, fp, on_bad_lines, progress)
        write_json_atomic(tmp / "feature_map.json", fm)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old) if out.is_dir() else out.unlink()
            os.replace(tmp, out)
            if old.exists():
                shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _prepare_into(tmp: Path, schema: Schema, proto: Protocol, parts: list[_Part], source: dict,
                  seed: int, fp: str, on_bad_lines: str, progress: bool) -> dict:
    from tqdm.auto import tqdm

    F = len(schema.fields)
    presplit = parts[0].split is not None
    min_count = proto.min_count[schema.dataset]

    def stream(part: _Part, desc: str):
        """Decoded blocks of a part: (y, fields, split of each row); bad rows dropped or raised."""
        splitter = None if presplit else _Splitter(proto.split, proto.stratified, seed)
        rows_before = 0
        part.skipped[0] = 0
        bar = tqdm(desc=desc, unit="rows", unit_scale=True, disable=not progress, leave=False,
                   file=sys.stderr)
        try:
            for batch in part.open():
                n = batch.num_rows
                if n == 0:
                    continue
                y, fields, bad = _decode(batch, part, schema)
                if bad.any():
                    if on_bad_lines == "skip":
                        keep = ~bad
                        part.skipped[0] += int(bad.sum())
                        y = y[keep]
                        fields = [(k, c[keep]) for k, c in fields]
                    else:
                        raise CtrkitError(_bad_row_message(batch, part, schema,
                                                           int(np.argmax(bad)), rows_before))
                rows_before += n
                if splitter is None:
                    sp = np.full(len(y), SPLITS.index(part.split), dtype=np.int8)
                else:
                    sp = splitter.assign(y)
                bar.update(n)
                yield y, fields, sp
        finally:
            bar.close()

    # Pass 1 (the only parse): each block's rows go, as block-local dictionary codes, straight to
    # their split's .npy file; the block's distinct keys go to a side file; training values are
    # counted. Pass 2 rewrites the codes in place as vocabulary indices, block by block.
    counter = _Counter(F)
    X_out = {s: _NpyAppender(tmp / f"{s}_X.npy", np.int32, F) for s in SPLITS}
    y_out = {s: _NpyAppender(tmp / f"{s}_y.npy", np.float32, None) for s in SPLITS}
    keys_path = tmp / ".keys.bin"
    blocks = []  # per block: (key offset of each field [F+1], [(split, row0, row1), ...])
    n_keys = 0
    skipped = 0
    try:
        with open(keys_path, "wb") as kf:
            for part in parts:
                count = part.split in (None, "train")
                for y, fields, sp in stream(part, f"read {Path(part.name).name}"):
                    C = np.empty((len(y), F), dtype=np.int32)
                    offs = [n_keys]
                    for f, (keys, codes) in enumerate(fields):
                        C[:, f] = codes
                        kf.write(np.ascontiguousarray(keys, dtype=np.uint64).tobytes())
                        n_keys += len(keys)
                        offs.append(n_keys)
                    ranges = []
                    for i, s in enumerate(SPLITS):
                        m = sp == i
                        k = int(m.sum())
                        if k == 0:
                            continue
                        Cs = C[m] if k < len(y) else C
                        if count and i == 0:
                            for f in range(F):
                                counter.add(f, fields[f][0], Cs[:, f])
                        r0 = X_out[s].rows
                        X_out[s].append(Cs)
                        y_out[s].append(y[m] if k < len(y) else y)
                        ranges.append((s, r0, r0 + k))
                    blocks.append((np.asarray(offs, dtype=np.int64), ranges))
                skipped += part.skipped[0]
    finally:
        for app in list(X_out.values()) + list(y_out.values()):
            app.close()
    vocabs = [counter.vocab(f, min_count) for f in range(F)]
    del counter

    if n_keys:
        all_keys = np.memmap(keys_path, dtype=np.uint64, mode="r", shape=(n_keys,))
        # Plain reads and writes, not a writable memmap: a mapping's dirty pages would count as
        # this process's memory (7 GB of X for the full Criteo); the page cache does not.
        files = {s: open(tmp / f"{s}_X.npy", "r+b") for s in SPLITS if X_out[s].rows}
        row_bytes = 4 * F
        try:
            for offs, ranges in tqdm(blocks, desc="index", unit="blocks", disable=not progress,
                                     leave=False, file=sys.stderr):
                local = [_lookup(vocabs[f][0], vocabs[f][1], np.asarray(all_keys[offs[f]:offs[f + 1]]))
                         for f in range(F)]
                for s, r0, r1 in ranges:
                    fh = files[s]
                    fh.seek(_NPY_HEADER + r0 * row_bytes)
                    blk = np.frombuffer(fh.read((r1 - r0) * row_bytes), dtype=np.int32).reshape(r1 - r0, F).copy()
                    for f in range(F):
                        blk[:, f] = local[f][blk[:, f]]
                    fh.seek(_NPY_HEADER + r0 * row_bytes)
                    fh.write(blk.tobytes())
        finally:
            for fh in files.values():
                fh.close()
        del all_keys
    keys_path.unlink()
    rows = {s: X_out[s].rows for s in SPLITS}
    if rows["train"] == 0:
        raise CtrkitError(f"{parts[0].name}: no valid rows to train on")
    ctr = {}
    for s in SPLITS:
        yy = np.load(tmp / f"{s}_y.npy", mmap_mode="r")
        ctr[s] = float(yy.mean()) if len(yy) else None
    return {
        "dataset": schema.dataset,
        "protocol": proto.name,
        "fields": [{"name": n, "vocab_size": int(v[2])} for n, v in zip(schema.fields, vocabs)],
        "fingerprint": fp,
        "rows": rows,
        "ctr": ctr,
        "source": {**source, "skipped_rows": skipped,
                   "split": "given" if presplit else
                   f"{':'.join(map(str, proto.split))}{' stratified by label' if proto.stratified else ''}, seed {seed}"},
        "min_count": min_count,
        "index_layout": {"padding": PAD, "oov": OOV, "first_value": FIRST},
        "format_version": FORMAT_VERSION,
        "created_with": env_info(None, seed),
    }


def synthetic_dataset(dataset: str, rows: int, out, seed: int = 2021, protocol: str = "x4_001",
                      progress: bool = False) -> CTRData:
    """Synthesize raw files into `out/raw` and prepare them into `out/data`; return the CTRData.

    Cached: when `out` already holds the same synthetic rows prepared the same way, nothing runs.
    """
    from ctrkit import synth

    out = Path(out)
    raw_dir, data_dir = out / "raw", out / "data"
    meta = raw_dir / "synth.json"
    want = {"dataset": dataset, "rows": int(rows), "seed": seed}
    raw_file = None
    if meta.is_file():
        try:
            have = json.loads(meta.read_text())
        except json.JSONDecodeError:
            have = None
        if have == want:
            raw_file = next((p for p in sorted(raw_dir.iterdir()) if p.name.startswith("train.")), None)
    if raw_file is None:
        raw_file = synth.generate(dataset, rows, raw_dir, seed=seed, progress=progress)
        write_json_atomic(meta, want)
    # prepare() is a no-op when the fingerprint (raw content + settings) matches; anything else
    # in data_dir is a stale synthetic dataset of ours, replaced.
    return load(prepare(dataset, raw_file, data_dir, protocol=protocol, seed=seed,
                        force=not _same_fingerprint(dataset, raw_file, data_dir, protocol, seed),
                        progress=progress))


def _same_fingerprint(dataset, raw_file, data_dir, protocol, seed) -> bool:
    fm = Path(data_dir) / "feature_map.json"
    if not fm.is_file():
        return False
    try:
        old = json.loads(fm.read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError):
        return False
    parts, _ = _resolve_source(raw_file, _schema(dataset), "error")
    return old == _fingerprint(dataset, protocol, seed, parts, "error")


def info(d: CTRData) -> dict:
    """Rows per split, CTR, fields with vocabulary sizes: what `ctrkit info` shows."""
    fm = d.feature_map
    return {"path": str(d.path), "dataset": d.dataset, "protocol": d.protocol,
            "fingerprint": d.fingerprint, "rows": fm["rows"], "ctr": fm.get("ctr"),
            "fields": [{"name": f["name"], "vocab_size": f["vocab_size"]} for f in fm["fields"]],
            "total_vocab": int(sum(d.field_sizes)), "source": fm.get("source")}


def format_info(i: dict) -> str:
    lines = [f"{i['path']}: {i['dataset']} / protocol {i['protocol']} / fingerprint {i['fingerprint']}"]
    for s in SPLITS:
        ctr = (i.get("ctr") or {}).get(s)
        lines.append(f"  {s:<5} {i['rows'][s]:>12,d} rows  CTR {ctr:.4f}" if ctr is not None
                     else f"  {s:<5} {i['rows'][s]:>12,d} rows")
    lines.append(f"  {len(i['fields'])} fields, {i['total_vocab']:,d} embedding rows in all:")
    lines += [f"    {f['name']:<18} {f['vocab_size']:>10,d}" for f in i["fields"]]
    return "\n".join(lines)
