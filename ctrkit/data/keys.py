"""Raw values -> 64-bit keys: string hashes, BARS integer buckets, labels, Avazu's hour.

Each field value becomes a 64-bit key (integers: their BARS bucket; strings: a 64-bit hash of their
bytes, computed once per distinct value of a block), so vocabularies are numpy arrays, not dicts.
"""
from __future__ import annotations

import datetime as _dt

import numpy as np

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
