"""Input sources of `prepare`: files or Hugging Face datasets, as streams of Arrow tables."""
from __future__ import annotations

import gzip as _gzip
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ctrkit.data.loading import SPLITS
from ctrkit.data.schema import Schema
from ctrkit.utils import CtrkitError

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
