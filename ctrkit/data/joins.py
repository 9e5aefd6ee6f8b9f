"""A schema's `join` and `derive`: other files' columns joined to each row by a key, and columns made by a small rule.

The main file is read for the columns it has (the schema's, less those the joined files or the rules
provide, plus the keys and the rules' sources); each batch then gets the joined columns by a key
lookup (row order kept: the split and the line numbers of messages stay those of the main file) and
the derived ones, before the usual decoding.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctrkit.core.errors import CtrkitError
from ctrkit.data.schema import DatasetSchema, Label
from ctrkit.data.sources import Part, as_dictionary_table, check_utf8_name, sniff, untyped, _file_fingerprint


@dataclass(frozen=True)
class _View:
    """What the main file must hold: the attributes of a schema that reading a file looks at."""
    name: str
    used_columns: tuple
    drop: tuple
    columns: tuple | None
    label: Label


def _side_table(path: Path):
    """A joined file, whole, every column as text (it is small: one row per key)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise CtrkitError(f"{path}: no such file (a schema's join)")
    check_utf8_name(path, "")
    try:
        if sniff(path) == "parquet":
            t = pq.read_table(path)
        else:
            stream = pa.input_stream(str(path), compression="gzip" if sniff(path) == "gzip" else None)
            with pa.input_stream(str(path), compression="gzip" if sniff(path) == "gzip" else None) as f:
                first = f.read(1 << 16).split(b"\n")[0].decode("utf-8-sig").rstrip("\r")
            delim = "\t" if "\t" in first else ("|" if "|" in first and "," not in first else ",")
            # every column as text, as read: a zip code 01001 stays 01001 (not the number 1001)
            names = [c.strip().strip('"') for c in first.split(delim)]
            t = pacsv.read_csv(stream, parse_options=pacsv.ParseOptions(delimiter=delim),
                               convert_options=pacsv.ConvertOptions(strings_can_be_null=False,
                                                                    column_types={c: pa.string() for c in names}))
    except UnicodeDecodeError as e:  # the header; Arrow checks the rest (ArrowInvalid)
        raise CtrkitError(f"{path}: line 1: not UTF-8 text (byte 0x{e.object[e.start]:02x}; a schema's join)") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise CtrkitError(f"{path}: cannot read (a schema's join): {(str(e).splitlines() or [''])[0]}") from None
    t = t.rename_columns([untyped(c) for c in t.column_names])
    return t.cast(pa.schema([(c, pa.string()) for c in t.column_names]))


def plan(raw, schema: DatasetSchema) -> tuple[_View, list]:
    """The main file's view and the joined tables [(Join, table, fingerprint)]."""
    base = Path(str(raw))
    folder = base if base.is_dir() else base.parent
    sides = []
    for j in schema.join:
        path = Path(j.file) if Path(j.file).is_absolute() else folder / j.file
        t = _side_table(path)
        if j.key not in t.column_names:
            raise CtrkitError(f"{path}: lacks the join key column {j.key!r}")
        keys = t.column(j.key)
        if len(keys.unique()) < len(keys):
            raise CtrkitError(f"{path}: key column {j.key!r} repeats a value: a joined file has one row per key")
        sides.append((j, t, _file_fingerprint(path)))
    provided = {c for _, t, _ in sides for c in t.column_names} - {j.key for j in schema.join}
    made = {d.column for d in schema.derive}
    need = [c for c in schema.used_columns if c not in provided and c not in made]
    need += [j.key for j in schema.join] + [d.source for d in schema.derive if d.source not in provided | made]
    view = _View(name=schema.name, used_columns=tuple(dict.fromkeys(need)), drop=schema.drop,
                 columns=schema.columns, label=schema.label)
    return view, sides


def _derived(col, d):
    import pyarrow.compute as pc

    if d.rule == "prefix":
        return pc.utf8_slice_codeunits(col, 0, d.length)
    return pc.fill_null(pc.list_element(pc.split_pattern(col, d.sep), 0), "")


def wrap(parts: list[Part], schema: DatasetSchema, sides: list) -> list[Part]:
    """Each part's batches with the joined and derived columns, named as the schema names them."""
    import hashlib

    import pyarrow as pa
    import pyarrow.compute as pc

    def joined(columns: dict, inner):
        def batches():
            for b in inner():
                t = b if isinstance(b, pa.Table) else pa.Table.from_batches([b])
                cols = {}
                for ours, name in columns.items():
                    a = t.column(name).combine_chunks()
                    cols[ours] = a.dictionary_decode() if pa.types.is_dictionary(a.type) else a.cast(pa.string())
                for j, side, _ in sides:
                    idx = pc.index_in(cols[j.key], value_set=side.column(j.key))
                    for c in side.column_names:
                        if c != j.key and c not in cols:
                            cols[c] = pc.fill_null(pc.take(side.column(c), idx), "")
                for d in schema.derive:
                    cols[d.column] = _derived(cols[d.source], d)
                used = {c: c for c in schema.used_columns}
                yield as_dictionary_table(pa.table({c: cols[c] for c in used}), used)
        return batches

    extra = hashlib.sha256("|".join(fp for _, _, fp in sides).encode()).hexdigest()[:16]
    out = []
    for p in parts:
        inner = p.open
        p.open = joined(dict(p.columns), inner)
        p.columns = {c: c for c in schema.used_columns}
        p.fingerprint = f"{p.fingerprint}+{extra}"  # the joined files are part of what made the data
        out.append(p)
    return out
