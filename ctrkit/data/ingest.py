"""`prepare`: raw files (or a Hugging Face dataset) described by a schema -> processed directory.

`prepare()` streams the input in bounded memory with Arrow's CSV reader: one parse writes each
block's rows, as block-local codes, to its split's .npy file while counting the training values;
a second pass over those files rewrites the codes in place as vocabulary indices.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctrkit.data import outdir
from ctrkit.data.encode import Counter, Splitter, bad_row_message, build_vocab, decode, field_plan
from ctrkit.data.loading import FIRST, FORMAT_VERSION, OOV, PAD, SPLITS, CTRData, SmallDataWarning, load, small_data
from ctrkit.data.schema import DEFAULT_PROTOCOL, LEGACY, PROTOCOLS, DatasetSchema, builtin, check_seed, load_schema
from ctrkit.data.inputs import resolve_source
from ctrkit.data.sources import Part
from ctrkit.core.utils import CtrkitError, env_info, write_json_atomic

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
    """A .npy file appended to in blocks (the row count is known only at the end)."""

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
        try:
            self.f.seek(0)
            self.f.write(_npy_header(self.dtype, shape))
        finally:
            self.f.close()


def resolve_schema(dataset, protocol: str | None, seed: int | None) -> tuple[DatasetSchema, str]:
    """(schema, protocol name) of a built-in name, a DatasetSchema or a schema file path; `seed`
    (None: the schema's own) replaces the split seed. The schema checked itself when it was built."""
    # an int: a float or a string would be recorded as given but split by another seed
    seed = None if seed is None else check_seed(seed)
    if isinstance(dataset, str) and not dataset.endswith((".yaml", ".yml", ".json")):
        return builtin(dataset, protocol, seed), protocol or DEFAULT_PROTOCOL[dataset]
    if not isinstance(dataset, (str, os.PathLike, DatasetSchema)):
        raise CtrkitError(f"dataset: expected a built-in name, a DatasetSchema or a schema file (.yaml), "
                          f"got {type(dataset).__name__}")
    schema = dataset if isinstance(dataset, DatasetSchema) else load_schema(dataset)
    if protocol is not None:
        raise CtrkitError(f"--protocol {protocol}: applies to the built-in datasets only; a schema "
                          f"sets min_count and split itself")
    if seed is not None:
        schema = schema.replace(split=dataclasses.replace(schema.split, seed=seed))
    return schema, "schema"


def fingerprint(schema: DatasetSchema, protocol: str, parts, on_bad_lines: str) -> str:
    seed = schema.split.seed
    h = hashlib.sha256(f"ctrkit-data-v{FORMAT_VERSION}|{schema.name}|{protocol}|{seed}|{on_bad_lines}".encode())
    # Criteo/Avazu under a BARS protocol keep the fingerprints they had before schemas existed
    # (their settings are all in name + protocol + seed); anything else adds the schema's digest.
    if not (schema.name in LEGACY and protocol in PROTOCOLS and schema == builtin(schema.name, protocol, seed)):
        h.update(f"|schema {schema.digest()}".encode())
    for p in parts:
        h.update(f"|{p.split}|{Path(p.name).name}|{p.fingerprint}".encode())
    return h.hexdigest()[:16]


def _inputs(raw, source: dict) -> list[Path]:
    if source.get("kind") in ("hub", "datasets"):
        return []
    paths = [Path(f) for f in source.get("files", [])]
    return ([Path(str(raw))] if Path(str(raw)).is_dir() else []) + paths


def prepare(dataset, raw, out, *, protocol: str | None = None, on_bad_lines: str = "error",
            seed: int | None = None, force: bool = False, progress: bool = True) -> Path:
    """Raw input -> processed directory `out` (see `ctrkit.data`); return `out`.

    `dataset`: a built-in name (criteo, avazu, frappe, movielens; `protocol` x4_001/x4_002/x1), a
    `DatasetSchema`, or a schema file (.yaml). `raw`: a file (.csv/.tsv/.txt, .gz, .parquet), a
    folder (train/valid/test files used as given; train + test: valid carved from train; or one
    train file, split by the schema), `hf://<hub id>`, or a `datasets` Dataset/DatasetDict.
    Preparing the same input with the same settings again is a no-op unless `force`; `force`
    replaces only a previous ctrkit output. The output appears only when complete. Data too small to
    evaluate on (valid/test with under 10 of a class, fields left with only padding and OOV) gets
    one `SmallDataWarning`.
    """
    schema, protocol = resolve_schema(dataset, protocol, seed)
    if on_bad_lines not in ("error", "skip"):
        raise CtrkitError(f"--on-bad-lines must be error or skip, got {on_bad_lines!r}")
    out = Path(out)
    parts, source = resolve_source(raw, schema, on_bad_lines)
    fp = fingerprint(schema, protocol, parts, on_bad_lines)
    outdir.check_paths(out, _inputs(raw, source))
    if not force and out.is_dir() and outdir.previous_fingerprint(out) == fp:
        outdir.remove_stale(out)
        _warn_if_small(out, None)  # said again: the folder is as small as when it was made
        return out
    outdir.check_replace(out, fp, force)
    marker = {"written_by": "ctrkit prepare", "fingerprint": fp, "format_version": FORMAT_VERSION}
    with outdir.staging(out, marker) as tmp:
        fm = _prepare_into(tmp, schema, protocol, parts, source, fp, on_bad_lines, progress)
        write_json_atomic(tmp / "feature_map.json", fm)
    _warn_if_small(out, fm)
    return out


def _warn_if_small(out: Path, fm: dict | None) -> None:
    """One SmallDataWarning line naming the folder and its numbers when it is too small to learn
    from or evaluate on (`loading.small_data`): a run on it would report noise as results."""
    if fm is None:
        try:
            fm = json.loads((out / "feature_map.json").read_text())
            text = small_data(fm)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return  # a damaged feature map is load()'s to report, in its own one line
    else:
        text = small_data(fm)
    if text:
        warnings.warn(f"{out}: too little data: {text}", SmallDataWarning, stacklevel=3)


def _stream(part: Part, schema: DatasetSchema, plan, on_bad_lines: str, progress: bool):
    """Decoded blocks of a part: (y, fields, split of each row); bad rows dropped or raised."""
    from tqdm.auto import tqdm

    split = schema.split
    if part.split is None:
        splitter = Splitter(split.ratios, split.stratified, split.seed)
    elif part.split == "train+valid":
        splitter = Splitter((split.ratios[0], split.ratios[1], 0), split.stratified, split.seed)
    else:
        splitter = None
    rows_before = 0
    part.skipped[0] = 0
    bar = tqdm(desc=f"read {Path(part.name).name}", unit="rows", unit_scale=True, disable=not progress,
               leave=False, file=sys.stderr)
    try:
        for batch in part.open():
            n = batch.num_rows
            if n == 0:
                continue
            y, fields, bad = decode(batch, part, schema, plan)
            if bad.any():
                if on_bad_lines != "skip":
                    raise CtrkitError(bad_row_message(batch, part, schema, plan, int(np.argmax(bad)), rows_before))
                keep = ~bad
                part.skipped[0] += int(bad.sum())
                y = y[keep]
                fields = [(k, c[keep]) for k, c in fields]
            rows_before += n
            sp = np.full(len(y), SPLITS.index(part.split), dtype=np.int8) if splitter is None else splitter.assign(y)
            bar.update(n)
            yield y, fields, sp
    finally:
        bar.close()


def _pass1(tmp: Path, schema, plan, parts, on_bad_lines, progress):
    """The only parse: each block's rows go, as block-local dictionary codes, to their split's .npy
    file; the block's distinct keys go to a side file; training values are counted."""
    F = len(plan)
    counter = Counter(F)
    X_out = {s: _NpyAppender(tmp / f"{s}_X.npy", np.int32, F) for s in SPLITS}
    y_out = {s: _NpyAppender(tmp / f"{s}_y.npy", np.float32, None) for s in SPLITS}
    keys_path = tmp / ".keys.bin"
    blocks = []  # per block: (key offset of each field [F+1], [(split, row0, row1), ...])
    n_keys = skipped = 0
    try:
        with open(keys_path, "wb") as kf:
            for part in parts:
                count = part.split in (None, "train", "train+valid")
                for y, fields, sp in _stream(part, schema, plan, on_bad_lines, progress):
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
    rows = {s: X_out[s].rows for s in SPLITS}
    return counter, blocks, n_keys, rows, skipped


def _pass2(tmp: Path, vocabs, blocks, n_keys: int, rows: dict, progress: bool) -> None:
    """Rewrite the block-local codes in place as vocabulary indices, block by block."""
    from tqdm.auto import tqdm

    keys_path = tmp / ".keys.bin"
    F = len(vocabs)
    if n_keys:
        all_keys = np.memmap(keys_path, dtype=np.uint64, mode="r", shape=(n_keys,))
        # Plain reads and writes, not a writable memmap: a mapping's dirty pages would count as
        # this process's memory (7 GB of X for the full Criteo); the page cache does not.
        files = {s: open(tmp / f"{s}_X.npy", "r+b") for s in SPLITS if rows[s]}
        row_bytes = 4 * F
        try:
            for offs, ranges in tqdm(blocks, desc="index", unit="blocks", disable=not progress,
                                     leave=False, file=sys.stderr):
                local = [vocabs[f].lookup(np.asarray(all_keys[offs[f]:offs[f + 1]])) for f in range(F)]
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


def _split_text(schema: DatasetSchema, source: dict, presplit: bool) -> str:
    s = schema.split
    strat = " stratified by label" if s.stratified else ""
    if presplit:
        return "given"
    if source.get("kind") == "train+test":
        return f"train:valid {s.ratios[0]}:{s.ratios[1]} of the train file{strat}, seed {s.seed}; test given"
    return f"{':'.join(map(str, s.ratios))}{strat}, seed {s.seed}"


def _prepare_into(tmp: Path, schema: DatasetSchema, protocol: str, parts: list[Part], source: dict,
                  fp: str, on_bad_lines: str, progress: bool) -> dict:
    plan = field_plan(schema)
    counter, blocks, n_keys, rows, skipped = _pass1(tmp, schema, plan, parts, on_bad_lines, progress)
    vocabs = [build_vocab(counter, f, p, schema.min_count) for f, p in enumerate(plan)]
    del counter
    _pass2(tmp, vocabs, blocks, n_keys, rows, progress)
    if rows["train"] == 0:
        raise CtrkitError(f"{parts[0].name}: no valid rows to train on")
    ctr = {}
    for s in SPLITS:
        yy = np.load(tmp / f"{s}_y.npy", mmap_mode="r")
        ctr[s] = float(yy.mean()) if len(yy) else None
    ignored = sorted({c for p in parts for c in p.ignored})
    src = {**source, "skipped_rows": skipped, "split": _split_text(schema, source, parts[0].split in SPLITS)}
    if ignored:
        src["ignored_columns"] = ignored
    notes = [f"{p.name}: {v.note}" for p, v in zip(plan, vocabs) if getattr(v, "note", "")]
    if notes:  # said, not silent: e.g. quantile bins that merged on tied values
        src["notes"] = notes
    fm = {
        "dataset": schema.name,
        "protocol": protocol,
        "fields": [{"name": p.name, "vocab_size": int(v.size), **v.describe()} for p, v in zip(plan, vocabs)],
        "fingerprint": fp,
        "rows": rows,
        "ctr": ctr,
        "source": src,
        "min_count": schema.min_count,
        "index_layout": {"padding": PAD, "oov": OOV, "first_value": FIRST},
        "format_version": FORMAT_VERSION,
        "created_with": env_info(None, schema.split.seed),
    }
    if schema.name not in LEGACY or protocol == "schema":
        fm["schema"] = schema.to_dict()
    return fm


def synthetic_dataset(dataset: str, rows: int, out, seed: int = 2021, protocol: str | None = None,
                      progress: bool = False, split: Sequence[int] | None = None) -> CTRData:
    """Synthesize raw files into `out/raw` and prepare them into `out/data`; return the CTRData.

    `split`: train/valid/test ratios (whole numbers, e.g. (8, 5, 5)) instead of the protocol's, its
    min-count kept: the data is then the protocol's schema with that split (protocol "schema"), so a
    small training set can be scored on larger valid/test sets. Cached: when `out` already holds the
    same synthetic rows prepared the same way, nothing runs.
    """
    from ctrkit.data import synth

    out, seed = Path(out), check_seed(seed)  # a numpy int would be cached as text and never match
    raw_dir, data_dir = out / "raw", out / "data"
    meta = raw_dir / "synth.json"
    source, protocol = _with_split(dataset, protocol, seed, split)  # a bad split: its one-line error first
    want = synth_settings(dataset, rows, seed, split)
    raw_file = None
    if meta.is_file():
        try:
            have = json.loads(meta.read_text())
        except json.JSONDecodeError:
            have = None
        if have == want:
            raw_file = next((p for p in sorted(raw_dir.iterdir()) if p.name.startswith("train.")), None)
    if raw_file is None:
        raw_file = synth.generate(dataset, rows, raw_dir, seed=seed, progress=progress, force=True)
        write_json_atomic(meta, want)
    # prepare() is a no-op when the fingerprint (raw content + settings) matches; anything else
    # in data_dir is a stale synthetic dataset of ours, replaced.
    return load(prepare(source, raw_file, data_dir, protocol=protocol, seed=seed,
                        force=not _same_fingerprint(source, raw_file, data_dir, protocol, seed),
                        progress=progress))


def _with_split(dataset: str, protocol: str | None, seed: int, split: Sequence[int] | None) -> tuple:
    """(what `prepare` reads, its protocol): the built-in name and protocol, or with `split` the
    protocol's schema (its min-count and stratification) with those ratios, which carries them itself."""
    if split is None:
        return dataset, protocol
    schema = builtin(dataset, protocol, seed)
    return schema.replace(split=dataclasses.replace(schema.split, ratios=tuple(split))), None


def synth_settings(dataset: str, rows: int, seed: int, split: Sequence[int] | None = None) -> dict:
    """What `out/raw/synth.json` records of a synthetic dataset (the split only when not the protocol's,
    so folders made before the split could be chosen still match)."""
    want = {"dataset": dataset, "rows": int(rows), "seed": seed}
    return want if split is None else {**want, "split": [int(r) for r in split]}


def _same_fingerprint(dataset, raw_file, data_dir, protocol, seed) -> bool:
    old = outdir.previous_fingerprint(Path(data_dir))
    if old is None:
        return False
    schema, protocol = resolve_schema(dataset, protocol, seed)
    parts, _ = resolve_source(raw_file, schema, "error")
    return old == fingerprint(schema, protocol, parts, "error")
