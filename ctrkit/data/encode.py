"""One block of raw rows -> labels and per-field (keys, codes); split assignment; vocabularies.

A block's column is dictionary-encoded by Arrow: each distinct value gets a 64-bit key once
(`ctrkit.data.keys`), each row keeps its int32 code into the block's dictionary. Vocabularies are
built from the training rows' key counts: categorical and log2-bucketed fields by frequency (0 =
padding, 1 = OOV, 2.. most frequent first), quantile fields by equal-count bin edges.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctrkit.data.keys import int_keys, mix64, float_keys, float_of_keys, hash_strings, label_values, time_keys
from ctrkit.data.loading import FIRST, OOV
from ctrkit.data.schema import TIME_PARTS, DatasetSchema


@dataclass(frozen=True)
class FieldPlan:
    name: str       # processed field
    kind: str       # categorical | numeric | time
    column: str     # raw column it comes from
    spec: object    # Numeric / Time spec, or None
    part: int = 0   # time: index into TIME_PARTS


def field_plan(schema: DatasetSchema) -> list[FieldPlan]:
    by_name = {c: FieldPlan(c, "categorical", c, None) for c in schema.categorical}
    by_name.update({n.column: FieldPlan(n.column, "numeric", n.column, n) for n in schema.numeric})
    for t in schema.time:
        for p, name in zip(t.derive, t.field_names):
            by_name[name] = FieldPlan(name, "time", t.column, t, TIME_PARTS.index(p))
    return [by_name[f] for f in schema.fields]


def _numeric_keys(vals, spec):
    return int_keys(vals) if spec.bucket == "log2" else float_keys(vals)


def decode(batch, part, schema: DatasetSchema, plan: list[FieldPlan]):
    """-> (labels float32 [n], per field (keys uint64 [U], codes int32 [n]), bad-row mask [n])."""
    import pyarrow as pa
    import pyarrow.compute as pc

    bad = np.zeros(batch.num_rows, dtype=bool)
    names = batch.schema.names
    cols, times = {}, {}

    def col(ours):
        if ours not in cols:
            a = batch.column(names.index(part.columns[ours]))
            if isinstance(a, pa.ChunkedArray):
                a = a.combine_chunks()
            if not pa.types.is_dictionary(a.type):
                a = pc.dictionary_encode(a)
            cols[ours] = (a.dictionary, a.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False))
        return cols[ours]

    lab_vals, lab_codes = col(schema.label.column)
    y_of, y_bad = label_values(lab_vals, schema.label.positive, schema.label.negatives)
    y = y_of[lab_codes]
    if y_bad.any():
        bad |= y_bad[lab_codes]
    fields = []
    for fp in plan:
        vals, codes = col(fp.column)
        if fp.kind == "categorical":
            keys = hash_strings(vals)
        elif fp.kind == "numeric":
            keys, kbad = _numeric_keys(vals, fp.spec)
            if kbad.any():
                bad |= kbad[codes]
        else:
            if fp.column not in times:
                times[fp.column] = time_keys(vals, fp.spec.format)
                if times[fp.column][1].any():
                    bad |= times[fp.column][1][codes]
            keys = times[fp.column][0][fp.part]
        fields.append((keys, codes))
    return y, fields, bad


def bad_row_message(batch, part, schema: DatasetSchema, plan: list[FieldPlan], i: int, rows_before: int) -> str:
    """Name the first invalid value of row i of the block (same checks as decode)."""
    import pyarrow as pa

    line = part.line(rows_before + i)
    names = batch.schema.names

    def value(ours):
        v = batch.column(names.index(part.columns[ours]))[i].as_py()
        return "" if v is None else str(v)

    lab = schema.label
    v = value(lab.column)
    if label_values(pa.array([v]), lab.positive, lab.negatives)[1][0]:
        allowed = "0 or 1" if (lab.positive, lab.negatives) == (("1",), ("0",)) else \
            f"one of {', '.join(lab.positive)}" + ("" if lab.negatives == "rest" else f", {', '.join(lab.negatives)}")
        return f"{part.name}: line {line}: label {lab.column!r} must be {allowed}, got {v.strip()!r}"
    for fp in plan:
        v = value(fp.column)
        if fp.kind == "numeric" and _numeric_keys(pa.array([v]), fp.spec)[1][0]:
            return f"{part.name}: line {line}: numeric field {fp.column} is not a number: {v.strip()!r}"
        if fp.kind == "time" and time_keys(pa.array([v]), fp.spec.format)[1][0]:
            fmt = "YYMMDDHH" if fp.spec.format == "YYMMDDHH" else f"a time in format {fp.spec.format!r}"
            return f"{part.name}: line {line}: {fp.column} must be {fmt}, got {v!r}"
    return f"{part.name}: line {line}: invalid row"


class Splitter:
    """Deterministic split assignment of a stream of rows, independent of library versions.

    Rows of each class (label, when stratified) are taken in blocks of sum(ratios) consecutive rows
    of that class (10 for 8:1:1); a block's slots get their train/valid/test shares in an order
    chosen by splitmix64(seed, class, block) keys. So every split gets its exact share of each
    class (up to one block), the assignment looks random, and it needs only integer arithmetic.
    """

    def __init__(self, ratios: tuple, stratified: bool, seed: int):
        self.pattern = np.repeat(np.arange(3, dtype=np.int8), ratios)  # e.g. 0*8, 1, 2
        self.block = len(self.pattern)
        self.stratified = stratified
        self.seed = np.uint64(seed % (1 << 64))
        self.seen = [0, 0]  # rows seen per class

    def _slots(self, cls: int, idx: np.ndarray) -> np.ndarray:
        block = idx // self.block
        pos = idx % self.block
        ublocks = np.unique(block)
        with np.errstate(over="ignore"):
            base = mix64(self.seed * np.uint64(0x9E3779B97F4A7C15) + np.uint64(cls + 1)) \
                ^ ublocks.astype(np.uint64)
            # key of slot j of each block; the argsort of the block's keys is the block's order
            keys = mix64(base[:, None] * np.uint64(0xD6E8FEB86659FD93) + np.arange(self.block, dtype=np.uint64))
        order = np.argsort(keys, axis=1, kind="stable")
        perm = self.pattern[order]  # [blocks, block]: split of each position in the block
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


class Counter:
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

    def counts(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        self._merge(f)
        return self.merged[f]


@dataclass
class Vocab:
    """Kept keys (sorted) and their indices; every other key is OOV."""
    keys: np.ndarray
    index: np.ndarray
    size: int

    @classmethod
    def from_counts(cls, keys: np.ndarray, counts: np.ndarray, min_count: int) -> Vocab:
        keep = counts >= min_count
        k, c = keys[keep], counts[keep]
        order = np.lexsort((k, -c))  # count descending, then key: deterministic
        index = np.empty(len(k), dtype=np.int32)
        index[order] = FIRST + np.arange(len(k), dtype=np.int32)
        return cls(k, index, FIRST + len(k))

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        if len(self.keys) == 0:
            return np.full(len(keys), OOV, dtype=np.int32)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        hit = self.keys[pos] == keys
        return np.where(hit, self.index[pos], OOV).astype(np.int32)

    def describe(self) -> dict:
        return {}


@dataclass
class Bins:
    """Bins of a numeric field (edges in key space, which keeps numeric order): equal-count bins of
    the training values (`quantile`) or the schema's fixed `edges`; index FIRST + bin; a missing value
    has the last index. `note`: why there are fewer quantile bins than asked (tied edges merged)."""
    edges: np.ndarray
    size: int
    kind: str = "quantile"
    note: str = ""

    @classmethod
    def fixed(cls, edges) -> Bins:
        import pyarrow as pa

        keys, _ = float_keys(pa.array([repr(float(e)) for e in edges]))
        return cls(keys, FIRST + len(keys) + 2, kind="edges")

    @classmethod
    def from_counts(cls, keys: np.ndarray, counts: np.ndarray, bins: int) -> Bins:
        present = keys != 0
        k, c = keys[present], counts[present]
        if len(k) == 0:
            return cls(np.zeros(0, np.uint64), FIRST + 2)
        cum = np.cumsum(c)
        # edge j: the first value past the j/bins quantile of the training rows (a value equal
        # to an edge goes to the upper bin); repeated edges collapse
        q = np.searchsorted(cum, cum[-1] * np.arange(1, bins) / bins, side="right")
        edges = np.unique(k[np.minimum(q, len(k) - 1)])
        edges = edges[edges > k[0]]
        note = "" if len(edges) == bins - 1 else (
            f"{bins} quantile bins asked, {len(edges) + 1} made: tied values (a value holding more than 1/{bins} "
            f"of the training rows, or fewer distinct values than bins) merged the others")
        return cls(edges, FIRST + len(edges) + 2, note=note)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        idx = FIRST + np.searchsorted(self.edges, keys, side="right").astype(np.int32)
        return np.where(keys == 0, self.size - 1, idx).astype(np.int32)

    def describe(self) -> dict:
        out = {"bucket": self.kind, "edges": [float(x) for x in float_of_keys(self.edges)]}
        return {**out, "note": self.note} if self.note else out


def build_vocab(counter: Counter, f: int, fp: FieldPlan, min_count: int):
    keys, counts = counter.counts(f)
    if fp.kind == "numeric" and fp.spec.bucket == "quantile":
        return Bins.from_counts(keys, counts, fp.spec.bins)
    if fp.kind == "numeric" and fp.spec.bucket == "edges":
        return Bins.fixed(fp.spec.edges)
    return Vocab.from_counts(keys, counts, min_count)
