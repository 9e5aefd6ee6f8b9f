"""Raw values -> 64-bit keys: string hashes, BARS integer buckets, labels, Avazu's hour.

Each field value becomes a 64-bit key (integers: their BARS bucket; strings: a 64-bit hash of their
bytes, computed once per distinct value of a block), so vocabularies are numpy arrays, not dicts.
"""
from __future__ import annotations

import datetime as _dt

import numpy as np

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def mix64(h: np.ndarray) -> np.ndarray:
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
        return mix64(h ^ lens.astype(np.uint64))


_NUM_RE = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_INT_KEY_OFFSET = 1 << 40  # bucket b -> key b + 2^40 (> 0); key 0 is "missing"


def bucketize(v: np.ndarray) -> np.ndarray:
    """BARS `convert_to_bucket`: v > 2 -> floor(ln(v)^2), else int(v) (truncation); a value below
    -2**62 (e.g. -1e308) is that bound, one bucket, not an int64 overflow's arbitrary one."""
    v = np.asarray(v, dtype=np.float64)
    out = np.trunc(v)
    big = v > 2
    out[big] = np.floor(np.log(v[big]) ** 2)
    return np.maximum(out, -2.0**62).astype(np.int64)


def _numbers(values) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """For a dictionary of numeric strings: zero keys to fill, the invalid ones (neither a number
    nor empty), the numbers' mask and their float64 values (None when there are none)."""
    import pyarrow.compute as pc

    vals = pc.utf8_trim_whitespace(values)
    empty = np.asarray(pc.equal(vals, "").to_numpy(zero_copy_only=False), dtype=bool)
    ok = np.asarray(pc.match_substring_regex(vals, _NUM_RE).to_numpy(zero_copy_only=False), dtype=bool)
    good = ok & ~empty
    nums = pc.cast(pc.filter(vals, good), "float64").to_numpy() if good.any() else None
    return np.zeros(len(values), dtype=np.uint64), ~(ok | empty), good, nums


def int_keys(values) -> tuple[np.ndarray, np.ndarray]:
    """Keys of a dictionary of Criteo integer strings, and a mask of the invalid ones."""
    keys, bad, good, nums = _numbers(values)
    if good.any():
        finite = np.isfinite(nums)
        b = np.where(finite, bucketize(np.where(finite, nums, 0)), 0)
        keys[good] = (b + _INT_KEY_OFFSET).astype(np.uint64)
        bad[np.flatnonzero(good)[~finite]] = True
    return keys, bad


def label_values(values, positive=("1",), negative=("0",)) -> tuple[np.ndarray, np.ndarray]:
    """1/0 of each distinct label string, and a mask of the invalid ones.

    A value is positive when it is in `positive` (as a string, or numerically: "1.0" is 1),
    negative when in `negative` (or, with negative "rest", any other non-empty value).
    """
    import pyarrow.compute as pc

    s = pc.utf8_trim_whitespace(values).to_numpy(zero_copy_only=False)
    rest = negative == "rest"
    pos_f = set(floats(positive))
    neg_f = set() if rest else set(floats(negative))
    y = np.zeros(len(s), dtype=np.float32)
    bad = np.zeros(len(s), dtype=bool)
    for i, v in enumerate(s):  # a handful of distinct values per block
        if v in positive:
            y[i] = 1.0
            continue
        if not rest and v in negative:
            continue
        try:
            f = float(v)
        except ValueError:
            f = None
        if f is not None and f in pos_f:
            y[i] = 1.0
        elif (rest and v != "") or (f is not None and f in neg_f):
            pass
        else:
            bad[i] = True
    return y, bad


def floats(vals) -> list:
    """The values that read as numbers, as floats ("1" and "1.0" alike)."""
    out = []
    for v in vals:
        try:
            out.append(float(v))
        except ValueError:
            pass
    return out


def float_keys(values) -> tuple[np.ndarray, np.ndarray]:
    """Order-preserving 64-bit keys of numeric strings (for quantile bins); "" -> key 0 (missing).

    A finite float's bits, sign-flipped so that unsigned order is numeric order; key 0 would be a
    NaN pattern, so it is free for "missing".
    """
    keys, bad, good, nums = _numbers(values)
    if good.any():
        nums = nums + 0.0  # -0.0 -> 0.0
        finite = np.isfinite(nums)
        bits = np.where(finite, nums, 0.0).view(np.uint64)
        sign = (bits >> np.uint64(63)).astype(bool)
        keys[good] = np.where(sign, ~bits, bits | np.uint64(1 << 63))
        bad[np.flatnonzero(good)[~finite]] = True
    return keys, bad


def float_of_keys(keys: np.ndarray) -> np.ndarray:
    """Inverse of float_keys for non-zero keys (used to report bin edges)."""
    keys = np.asarray(keys, dtype=np.uint64)
    top = (keys >> np.uint64(63)).astype(bool)
    return np.where(top, keys & ~np.uint64(1 << 63), ~keys).view(np.float64)


def time_keys(values, fmt: str) -> tuple[list, np.ndarray]:
    """Timestamps -> keys of hour-of-day, weekday, weekend (each value + 1); mask of invalid ones.

    `fmt`: YYMMDDHH (Avazu), unix (seconds since 1970, UTC) or a strptime format.
    """
    if fmt == "YYMMDDHH":
        return hour_keys(values)
    import pyarrow as pa
    import pyarrow.compute as pc

    vals = pc.utf8_trim_whitespace(values)
    if fmt == "unix":
        ok = np.asarray(pc.match_substring_regex(vals, r"^[-+]?\d+$").to_numpy(zero_copy_only=False), dtype=bool)
        secs = np.zeros(len(vals), dtype=np.int64)
        if ok.any():
            secs[ok] = pc.cast(pc.filter(vals, pa.array(ok)), "int64").to_numpy()
        hour, day = (secs // 3600) % 24, secs // 86400
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
        bad = ~ok
    else:
        ts = pc.strptime(vals, format=fmt, unit="s", error_is_null=True)
        bad = np.asarray(pc.is_null(ts).to_numpy(zero_copy_only=False), dtype=bool)
        ts = pc.fill_null(ts, pa.scalar(0, ts.type))
        hour = pc.hour(ts).to_numpy().astype(np.int64)
        weekday = pc.day_of_week(ts).to_numpy().astype(np.int64)
    hod = np.where(bad, 0, hour + 1).astype(np.uint64)
    wd = np.where(bad, 0, weekday + 1).astype(np.uint64)
    we = np.where(bad, 0, (weekday >= 5) + 1).astype(np.uint64)
    return [hod, wd, we], bad


def hour_keys(values) -> tuple[list, np.ndarray]:
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
