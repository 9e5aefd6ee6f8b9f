"""Input files of `prepare` (CSV/TSV, .gz, parquet; one file or a split folder) as Arrow streams."""
from __future__ import annotations

import gzip as _gzip
import hashlib
import re
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ctrkit.data.loading import SPLITS
from ctrkit.data.schema import DatasetSchema
from ctrkit.core.errors import CtrkitError
from ctrkit.core.utils import did_you_mean


@dataclass
class Part:
    """One input stream: a file, or one split of a `datasets` dataset."""
    name: str                               # shown in messages: the file path or "hub:<id>[split]"
    split: str | None                       # given split, "train+valid" (valid carved from it) or None
    open: Callable[[], Iterator]             # -> iterator of pyarrow Tables/RecordBatches
    first_line: int                         # line number of the first data row (1-based)
    columns: dict                           # our column name -> column name in the stream
    locate_bad_row: Callable[[int, str], str] | None = None  # (rows_ok, Arrow's message) -> "line N: ..." (files)
    line_of: Callable[[int], int] | None = None          # data row k (0-based) -> its line number
    fingerprint: str = ""
    size: int = 0
    ignored: tuple = ()                     # columns in the input that the schema does not name
    skipped: list = field(default_factory=lambda: [0])

    def line(self, k: int) -> int:
        return self.line_of(k) if self.line_of is not None else self.first_line + k


SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation", "val"), "test": ("test",)}
_EXTS = (".csv", ".txt", ".tsv", ".parquet")


def _with_gz(names) -> list[str]:
    return [n + gz for n in names for gz in ("", ".gz") if not (n.endswith(".parquet") and gz)]


# A file's format by its first bytes, not its name: a parquet file named `.parquet.brotli` (its pages
# brotli-compressed) or a gzip file without `.gz` is still read as what it is.
_MAGIC = ((b"PAR1", "parquet"), (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
          (b"\x28\xb5\x2f\xfd", "zstd"), (b"PK\x03\x04", "zip"))
_UNREAD = ("bzip2", "xz", "zstd", "zip")


def sniff(path: Path) -> str:
    """The format of a file by its content: parquet, gzip (text inside), a compression ctrkit does
    not open, or text (with the suffix `.br`/`.brotli` and no parquet magic: brotli, which has no magic)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CtrkitError(f"{path}: cannot read: {_os_reason(e)}") from None
    kind = next((k for magic, k in _MAGIC if head.startswith(magic)), "text")
    return "brotli" if kind == "text" and path.suffix.lower() in (".br", ".brotli") else kind


def _open_text(path: Path):
    # utf-8-sig: a byte-order mark before the header is not part of the first column's name.
    # surrogateescape: a byte that is not UTF-8 is read as one lone surrogate (_ESCAPED), not raised,
    # so the lines around it are still read and counted, and the line holding it can be named.
    if sniff(path) == "gzip":
        return _gzip.open(path, "rt", newline="", encoding="utf-8-sig", errors="surrogateescape")
    return open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")


_ESCAPED = re.compile("[\udc80-\udcff]")


def _bad_byte(m: re.Match) -> str:
    return f"byte 0x{ord(m.group()) - 0xdc00:02x}"


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


def match_columns(tokens: list, schema: DatasetSchema, where: str) -> tuple[dict, tuple]:
    """Map the schema's columns to the input's names (exact, else case-insensitive).

    -> (our name -> input name, ignored input columns). A used column missing or present twice
    is an error naming it.
    """
    lower = [untyped(t).lower() for t in tokens]
    columns = {}
    for c in schema.used_columns:
        hits = [t for t in tokens if t == c] or [t for t in tokens if untyped(t) == c] \
            or [t for t, lo in zip(tokens, lower) if lo == c.lower()]
        if len(hits) > 1 or (hits and tokens.count(hits[0]) > 1):
            raise CtrkitError(f"{where}: column {c!r} appears {max(len(hits), tokens.count(hits[0]))} "
                              f"times in the header")
        if hits:
            columns[c] = hits[0]
    missing = [c for c in schema.used_columns if c not in columns]
    if missing:
        raise CtrkitError(f"{where}: {lacks_columns('header', missing, tokens, columns.values(), schema.name)}")
    named = {v.lower() for v in columns.values()} | {d.lower() for d in schema.drop}
    return columns, tuple(t for t in tokens if t.lower() not in named and untyped(t).lower() not in named)


def lacks_columns(what: str, missing: list, names: list, matched, dataset: str) -> str:
    """"<what> lacks column(s) a, b for <dataset>", with "did you mean" the close input column (of
    `names`, less the `matched` ones) where there is one: a typo'd schema column such as
    `marital_status` for the header's `marital-status`. One missing column gets it at the end of the
    line, as every other lookup does; each of several gets its own, after its name."""
    used = set(matched)
    unused = [untyped(n) for n in names if n not in used]
    hints = [did_you_mean(c, unused) for c in missing]
    if len(missing) == 1:
        return f"{what} lacks column(s) {missing[0]} for {dataset}{hints[0]}"
    listed = ", ".join(f"{c} ({h.removeprefix('; ')})" if h else c for c, h in zip(missing, hints))
    return f"{what} lacks column(s) {listed} for {dataset}"


_TYPES = ("int", "integer", "long", "float", "double", "number", "numeric", "str", "string", "text", "category",
          "categorical", "token", "bool", "boolean", "date", "datetime", "time", "timestamp", "label")


def untyped(name: str) -> str:
    """A header name without a type annotation (`rating:float` -> `rating`; some exports type their
    columns so); any other name as it is."""
    base, sep, kind = name.rpartition(":")
    return base.strip() if sep and base.strip() and kind.strip().lower() in _TYPES else name


def _read_first_line(path: Path) -> str:
    try:
        with _open_text(path) as f:
            first = f.readline()
    except (OSError, EOFError, zlib.error) as e:
        raise CtrkitError(f"{path}: cannot read: {_os_reason(e)}") from None
    bad = _ESCAPED.search(first)
    if bad:  # a later line's bad byte is Arrow's to find (it names the column), then _locate's
        raise CtrkitError(f"{path}: line 1: not UTF-8 text ({_bad_byte(bad)} at character {bad.start() + 1}), "
                          f"and its content is not parquet or gzip: give a CSV/TSV (optionally .gz) or a parquet file")
    return first


def _os_reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text.splitlines()[0] if text else type(e).__name__


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


def _check_regular(path: Path) -> None:
    """A regular file (a fifo or /dev/null exists but is not one: say which)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CtrkitError(f"{path}: no such file") from None
    except OSError as e:
        raise CtrkitError(f"{path}: cannot read: {_os_reason(e)}") from None
    if not stat.S_ISREG(mode):
        what = next((w for test, w in _NOT_REGULAR if test(mode)), "a special file")
        raise CtrkitError(f"{path}: not a regular file ({what}): give a CSV/TSV (optionally .gz) or a parquet file")


def check_utf8_name(path, what: str) -> None:
    """Refuse a path whose name is not UTF-8: Arrow takes paths as UTF-8 text only, and ctrkit prints
    paths to stdout, which cannot encode one under a strict UTF-8 locale."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise CtrkitError(f"{what}{shown}: the path is not UTF-8 text; rename it") from None


def _file_part(path: Path, schema: DatasetSchema, split: str | None, on_bad_lines: str) -> Part:
    check_utf8_name(path, "")
    _check_regular(path)
    kind = sniff(path)
    if kind == "parquet":
        return _parquet_part(path, schema, split)
    if kind in _UNREAD + ("brotli",):
        raise CtrkitError(f"{path}: {kind}-compressed (by its {'name' if kind == 'brotli' else 'content'}): "
                          f"decompress it first, or write it as CSV, CSV .gz or parquet")
    first = _read_first_line(path)
    if not first.strip():
        raise CtrkitError(f"{path}: line 1: empty file (no header, no rows)")
    delim = "\t" if "\t" in first or ".tsv" in path.suffixes else ","
    tokens = [t.strip().strip('"') for t in first.rstrip("\r\n").split(delim)]
    known = {c.lower() for c in schema.used_columns + schema.drop}
    header = any(untyped(t).lower() in known for t in tokens)
    if header:
        columns, ignored = match_columns(tokens, schema, f"{path}: line 1")
        names, first_line = tokens, 2
    else:
        if schema.columns is None:
            raise CtrkitError(f"{path}: line 1: no header naming the schema's columns (label "
                              f"{schema.label.column!r} not found); add a header line or `columns:` to the schema")
        names, first_line, ignored = list(schema.columns), 1, ()
        if len(tokens) != len(names):
            raise CtrkitError(f"{path}: line 1: expected {len(names)} {'tab' if delim == chr(9) else 'comma'}"
                              f"-separated columns for headerless {schema.name}, got {len(tokens)}")
        columns = {c: c for c in schema.used_columns}
    part = Part(name=str(path), split=split, open=lambda: iter(()), first_line=first_line,
                 columns=columns, fingerprint=_file_fingerprint(path), size=path.stat().st_size,
                 ignored=ignored)
    part.open = _csv_batches(path, part, names if not header else None, delim, on_bad_lines)
    part.line_of = lambda k: _line_of(path, first_line, k)
    part.locate_bad_row = lambda rows_ok, msg: _locate(path, first_line, rows_ok, delim, names, msg)
    return part


def _csv_batches(path: Path, part: Part, names, delim: str, on_bad_lines: str):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    include = list(part.columns.values())

    def handler(row):
        if on_bad_lines == "skip":
            part.skipped[0] += 1
            return "skip"
        return "error"

    def batches():
        # Blank lines (a trailing one is common) are skipped; line numbers in messages are
        # recovered by counting non-blank lines (part.line_of).
        read = pacsv.ReadOptions(use_threads=True, block_size=4 << 20, column_names=names)
        parse = pacsv.ParseOptions(delimiter=delim, quote_char='"' if delim == "," else False,
                                   ignore_empty_lines=True, invalid_row_handler=handler)
        conv = pacsv.ConvertOptions(column_types={c: pa.dictionary(pa.int32(), pa.string()) for c in include},
                                    include_columns=include, strings_can_be_null=False,
                                    quoted_strings_can_be_null=False)
        try:
            stream = pa.input_stream(str(path), compression="gzip" if sniff(path) == "gzip" else None)
            reader = pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=conv)
        except (pa.ArrowInvalid, OSError, zlib.error) as e:  # OSError: e.g. a truncated .gz
            raise CtrkitError(_arrow_error(part, e, 0)) from None
        rows = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowInvalid, OSError, zlib.error) as e:
                raise CtrkitError(_arrow_error(part, e, rows)) from None
            rows += batch.num_rows
            yield batch
    return batches


def _data_lines(path: Path, first_line: int):
    """(line number, line) of every non-blank data line."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if lineno >= first_line and line.strip("\r\n"):
                yield lineno, line


def _line_of(path: Path, first_line: int, k: int) -> int:
    last = first_line - 1
    for i, (lineno, _) in enumerate(_data_lines(path, first_line)):
        if i == k:
            return lineno
        last = lineno
    return last + 1


def _locate(path: Path, first_line: int, rows_ok: int, delim: str, names: list, msg: str) -> str:
    """Arrow does not report line numbers: find the first line after the good rows with the fault
    Arrow reports, a wrong number of columns or (a conversion error) a byte that is not UTF-8."""
    utf8 = "UTF8" in msg
    m = re.search(r"column #(\d+)", msg)  # the file's column, 0-based
    col = int(m.group(1)) if utf8 and m else None
    try:
        for i, (lineno, line) in enumerate(_data_lines(path, first_line)):
            if i < rows_ok:
                continue
            cells = line.rstrip("\r\n").split(delim)
            if len(cells) != len(names):
                if not utf8:
                    return f"line {lineno}: expected {len(names)} columns, got {len(cells)}"
                continue  # a row of the wrong width was skipped (--on-bad-lines skip), never converted
            bad = _ESCAPED.search(line if col is None else cells[col]) if utf8 else None
            if bad:
                where = "" if col is None else f"column {names[col]}: "
                return f"line {lineno}: {where}not UTF-8 text ({_bad_byte(bad)})"
    except (OSError, EOFError, zlib.error) as e:
        return f"near data row {rows_ok + 1}: {_os_reason(e)}"
    return f"line {_line_of(path, first_line, rows_ok)}: {'not UTF-8 text' if utf8 else 'malformed row'}"


def _arrow_error(part: Part, e: Exception, rows_ok: int) -> str:
    msg = (str(e).splitlines() or [type(e).__name__])[0]
    if part.locate_bad_row is not None and ("columns" in msg or "UTF8" in msg):
        return f"{part.name}: {part.locate_bad_row(rows_ok, msg)}"
    return f"{part.name}: near line {part.first_line + rows_ok}: {msg}"


def as_dictionary_table(t, columns: dict):
    """An Arrow table's used columns as dictionary-encoded strings (what the decoder reads)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = []
    for c in columns.values():
        a = t.column(c)
        if isinstance(a, pa.ChunkedArray):
            a = a.combine_chunks()
        if pa.types.is_dictionary(a.type):
            a = a.dictionary_decode()
        if not pa.types.is_string(a.type) and not pa.types.is_large_string(a.type):
            a = pc.cast(a, pa.string())
        cols.append(pc.dictionary_encode(pc.fill_null(a, "")))
    return pa.table(cols, names=list(columns.values()))


def _parquet_part(path: Path, schema: DatasetSchema, split: str | None) -> Part:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except (pa.ArrowInvalid, OSError) as e:
        raise CtrkitError(f"{path}: not a readable parquet file: {_os_reason(e)}") from None
    columns, ignored = match_columns(list(names), schema, str(path))
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise CtrkitError(f"{path}: column(s) {', '.join(dup)} appear more than once")

    def batches():
        try:
            for b in pq.ParquetFile(path).iter_batches(batch_size=1 << 17, columns=list(columns.values())):
                yield as_dictionary_table(pa.Table.from_batches([b]), columns)
        except (pa.ArrowInvalid, OSError) as e:
            raise CtrkitError(f"{path}: cannot read parquet: {_os_reason(e)}") from None

    return Part(name=str(path), split=split, open=batches, first_line=1, columns=columns,
                 fingerprint=_file_fingerprint(path), size=path.stat().st_size, ignored=ignored)


def _split_files(path: Path) -> dict:
    found = {}
    for split, stems in SPLIT_NAMES.items():
        cands = [path / n for s in stems for n in _with_gz([s + ext for ext in _EXTS])]
        # then any other name of the split (train.parquet.brotli): its format is read from its content
        hit = [c for c in cands if c.is_file()] or [c for s in stems for c in sorted(path.glob(f"{s}.*"))
                                                     if c.is_file() and not c.name.startswith(".")]
        if hit:
            found[split] = hit[0]
    return found


def resolve_files(raw, schema: DatasetSchema, on_bad_lines: str) -> tuple[list[Part], dict]:
    """The parts of a file or a folder of split files, and a description of it.

    A folder with train, valid and test files is used as given; with train and test only, test is
    used as given and valid is carved out of train (said in the feature map and by the CLI); with
    just a train file, it is split by the schema's ratios.
    """
    path = Path(str(raw))
    if path.is_dir():
        found = _split_files(path)
        if set(found) == set(SPLITS):
            parts = [_file_part(found[s], schema, s, on_bad_lines) for s in SPLITS]
            return parts, {"kind": "presplit", "files": [str(found[s]) for s in SPLITS]}
        if set(found) == {"train", "test"}:
            parts = [_file_part(found["train"], schema, "train+valid", on_bad_lines),
                     _file_part(found["test"], schema, "test", on_bad_lines)]
            return parts, {"kind": "train+test", "files": [str(found["train"]), str(found["test"])]}
        if set(found) == {"train"}:
            return [_file_part(found["train"], schema, None, on_bad_lines)], \
                {"kind": "file", "files": [str(found["train"])]}
        if found:
            raise CtrkitError(f"{path}: has {', '.join(found)} but not train+valid+test, train+test "
                              f"or train alone")
        raise CtrkitError(f"{path}: no train.* (csv/tsv/txt/parquet, .gz) and no train/valid/test "
                          f"files in this directory")
    if not path.exists():
        raise CtrkitError(f"{path}: no such file or directory")
    return [_file_part(path, schema, None, on_bad_lines)], {"kind": "file", "files": [str(path)]}
