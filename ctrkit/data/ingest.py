"""`prepare`: raw files (or a Hugging Face dataset) -> processed directory.

`prepare()` streams the input in bounded memory with Arrow's CSV reader: one parse writes each
block's rows, as block-local codes, to its split's .npy file while counting the training values;
a second pass over those files rewrites the codes in place as vocabulary indices.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ctrkit.data.keys import _hour_keys, _int_keys, _label_values, _mix64, hash_strings
from ctrkit.data.loading import FIRST, FORMAT_VERSION, OOV, PAD, SPLITS, CTRData, load
from ctrkit.data.schema import Protocol, Schema, _protocol, _schema
from ctrkit.data.sources import _Part, _resolve_source
from ctrkit.utils import CtrkitError, env_info, write_json_atomic

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
