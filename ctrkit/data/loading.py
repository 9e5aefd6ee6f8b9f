"""A processed dataset directory: `load()` memory-maps it, `CTRData` serves its splits.

A processed directory holds `feature_map.json` and per split `{split}_X.npy` (int32 [rows, fields],
per-field local indices) and `{split}_y.npy` (float32 [rows]). Index layout of every field:
0 = padding (never produced; kept for FuxiCTR-style embedding tables), 1 = OOV, 2.. = kept values,
most frequent first. `info` says what a folder holds, and `small_data` whether it is too small to trust.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctrkit.core.errors import CtrkitError

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
PAD, OOV, FIRST = 0, 1, 2


@dataclass
class CTRData:
    """A processed dataset directory. Arrays are memory-mapped; nothing is read until asked."""

    path: Path
    feature_map: dict
    # (split, device) -> tensors: a run, its pretrained-score pass and the next run of an experiment
    # grid reuse one copy instead of re-reading the split from disk (and re-uploading it to a GPU).
    _tensors: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _checked: set = field(default_factory=set, init=False, repr=False, compare=False)

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

    def numpy(self, split: str, *, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(X int32 [rows, fields], y float32 [rows]): read-only memmaps, or (mmap=False) arrays read
        into writable memory, which is what torch needs and costs 1x the split (a copy out of a
        memmap also maps the file's pages into the process: 2x at its peak)."""
        self._check_split(split)
        mode = "r" if mmap else None
        try:
            X = np.load(self.path / f"{split}_X.npy", mmap_mode=mode)
            y = np.load(self.path / f"{split}_y.npy", mmap_mode=mode)
        except (OSError, ValueError) as e:  # e.g. a truncated file: "mmap length is greater than file size"
            raise CtrkitError(f"{self.path}: cannot read split {split!r}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
        return X, y

    def tensors(self, split: str, device="cpu"):
        """(X torch.int32 [rows, fields], y torch.float32 [rows]) on `device`.

        The split's indices are checked against the field sizes first (once per split, one max and
        min per column): a bad index would otherwise read another field's embedding rows, and the
        models do not check ranges per batch (that would read every batch back to the host).
        """
        import torch

        try:
            key = (split, str(torch.device(device)))
        except (RuntimeError, TypeError):  # torch's multi-line "Expected one of cpu, cuda, ..."
            raise CtrkitError(f"device {device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
        if key not in self._tensors:
            X, y = self.numpy(split, mmap=False)
            if split not in self._checked:
                self._check_indices(split, X)
                self._checked.add(split)
            self._tensors[key] = (torch.from_numpy(X).to(device), torch.from_numpy(y).to(device))
        return self._tensors[key]

    def _check_indices(self, split: str, X: np.ndarray) -> None:
        if len(X) == 0:
            return
        sizes = np.asarray(self.field_sizes)
        lo, hi = X.min(axis=0), X.max(axis=0)
        bad = np.flatnonzero((lo < 0) | (hi >= sizes))
        if bad.size:
            f = int(bad[0])
            # one line naming the file and the field: a bad index would read another field's rows of
            # the fused embedding table (the models do not check per batch)
            raise CtrkitError(f"{self.path / f'{split}_X.npy'}: field {self.field_names[f]} (column {f}): index "
                              f"{int(hi[f]) if hi[f] >= sizes[f] else int(lo[f])} outside [0, {int(sizes[f])}) "
                              f"of its vocabulary; the folder is damaged: prepare it again")

    def __repr__(self) -> str:
        return (f"CTRData({self.dataset}/{self.protocol}, {self.num_fields} fields, "
                f"rows={self.rows}, path={str(self.path)!r})")


def load(data_dir) -> CTRData:
    """Open a processed directory written by `prepare`, checking what is cheap to check before any
    training: every split's arrays readable with the feature map's row count and field count,
    labels 0/1, and both classes present in train."""
    path = Path(data_dir)
    fm_path = path / "feature_map.json"
    if not path.exists():
        raise CtrkitError(f"{path}: no such directory (give a folder written by `ctrkit prepare`)")
    if not fm_path.is_file():
        raise CtrkitError(f"{path}: not a prepared dataset (no feature_map.json); run `ctrkit prepare`")
    try:
        fm = json.loads(fm_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CtrkitError(f"{fm_path}: unreadable feature map: {e}") from None
    if not isinstance(fm, dict):
        raise CtrkitError(f"{fm_path}: unreadable feature map: not a JSON object")
    _check_feature_map(fm, fm_path)
    d = CTRData(path=path, feature_map=fm)
    for split in SPLITS:
        _check_split_files(d, split)
    return d


_ABSENT = object()


def _is_count(v, least: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _is_ctr(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _expect(fm_path: Path, key: str, value, ok, want: str) -> None:
    if value is _ABSENT:
        raise CtrkitError(f"{fm_path}: feature map lacks {key!r}")
    if not ok(value):
        raise CtrkitError(f"{fm_path}: feature map {key!r}: expected {want}, got {repr(value)[:60]}")


def _check_feature_map(fm: dict, fm_path: Path) -> None:
    """The keys and types that loading, `info` and training read, checked once here: a feature map
    edited or damaged into valid JSON of the wrong shape is one line naming the file and the key."""
    for key in ("dataset", "protocol", "fingerprint"):
        _expect(fm_path, key, fm.get(key, _ABSENT), lambda v: isinstance(v, str), "a string")
    fields = fm.get("fields", _ABSENT)
    _expect(fm_path, "fields", fields, lambda v: isinstance(v, list) and v, "a non-empty list of fields")
    for i, f in enumerate(fields):
        _expect(fm_path, f"fields[{i}]", f, lambda v: isinstance(v, dict), "an object with name and vocab_size")
        _expect(fm_path, f"fields[{i}].name", f.get("name", _ABSENT), lambda v: isinstance(v, str), "a string")
        _expect(fm_path, f"fields[{i}].vocab_size", f.get("vocab_size", _ABSENT), lambda v: _is_count(v, 1),
                "an integer >= 1")
    rows = fm.get("rows", _ABSENT)
    _expect(fm_path, "rows", rows, lambda v: isinstance(v, dict), "an object of rows per split")
    for s in SPLITS:
        _expect(fm_path, f"rows.{s}", rows.get(s, _ABSENT), _is_count, "an integer >= 0")
    ctr = fm.get("ctr")  # optional, and so is each split's (null: an empty split)
    _expect(fm_path, "ctr", ctr, lambda v: v is None or isinstance(v, dict), "an object of CTR per split")
    for s, v in (ctr or {}).items():
        _expect(fm_path, f"ctr.{s}", v, _is_ctr, "a number or null")
    source = fm.get("source")
    _expect(fm_path, "source", source, lambda v: v is None or isinstance(v, dict), "an object")
    notes = (source or {}).get("notes", [])
    _expect(fm_path, "source.notes", notes, lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
            "a list of strings")


def _check_split_files(d: CTRData, split: str) -> None:
    X, y = d.numpy(split)
    where = f"{d.path}: split {split!r}"
    want = d.rows.get(split)
    if X.ndim != 2 or X.shape[1] != d.num_fields or X.dtype != np.int32:
        raise CtrkitError(f"{where}: {split}_X.npy is {X.dtype} {list(X.shape)}, expected int32 [rows, {d.num_fields}]")
    if y.ndim != 1 or len(y) != len(X):
        raise CtrkitError(f"{where}: {split}_X.npy has {len(X)} rows but {split}_y.npy has {len(y)}")
    if want is not None and len(X) != want:
        raise CtrkitError(f"{where}: {len(X)} rows in the files, {want} in feature_map.json")
    # counts, not np.unique: one linear pass over a memmap of tens of millions of labels
    ones, zeros = int(np.count_nonzero(y == 1.0)), int(np.count_nonzero(y == 0.0))
    if ones + zeros != len(y):
        other = np.asarray(y)[(np.asarray(y) != 0.0) & (np.asarray(y) != 1.0)][0]
        raise CtrkitError(f"{where}: labels must be 0 or 1, found {other}")
    if split == "train" and len(y) and 0 in (ones, zeros):
        raise CtrkitError(f"{where}: every training label is {int(ones > 0)}: there is nothing to learn")


class SmallDataWarning(UserWarning):
    """A prepared dataset too small to learn from or evaluate on: its metrics would be noise."""


# Fewer positives or negatives than this in valid or test: an AUC there is mostly noise. Its standard
# error (Hanley & McNeil 1982, at AUC 0.75) is about sqrt(0.08 / positives) or sqrt(0.04 / negatives),
# over 0.06 below 10 of a class: tens of times the 0.001-0.01 gaps between the models a table compares.
MIN_CLASS_ROWS = 10


def _few_of_a_class(fm: dict) -> list[str]:
    """"valid 19 rows (4 positive, 15 negative)" per evaluation split with under MIN_CLASS_ROWS of a class."""
    rows, ctr, said = fm["rows"], fm.get("ctr") or {}, []
    for s in ("valid", "test"):
        n = rows[s]
        if n and ctr.get(s) is None:  # a feature map without CTRs: the classes are unknown
            continue
        # the CTR is the labels' float32 mean, whose sum of 0/1 is exact: rows x CTR rounds to the positives
        pos = round(n * (ctr.get(s) or 0.0))
        if min(pos, n - pos) < MIN_CLASS_ROWS:
            said.append(f"{s} {n} rows ({pos} positive, {n - pos} negative)")
    return said


def small_data(fm: dict) -> str:
    """Why a prepared dataset (its feature map) is too small to learn from or evaluate on, as one
    line ("" when it is not): evaluation splits with under MIN_CLASS_ROWS of a class, and fields
    whose vocabulary is only padding and OOV (every training value rarer than min_count)."""
    said = []
    few = _few_of_a_class(fm)
    if few:
        said.append(f"{' and '.join(few)}: under {MIN_CLASS_ROWS} of a class, an AUC there is mostly noise")
    # vocab_size FIRST: no kept value (quantile/edges bins always have at least one bin besides)
    empty = [f["name"] for f in fm["fields"] if f["vocab_size"] <= FIRST]
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        after = f" after min_count {fm['min_count']}" if fm.get("min_count") else ""
        keep = "keeps" if len(empty) == 1 else "keep"
        said.append(f"{len(empty)} of {len(fm['fields'])} fields {keep} only padding and OOV{after} ({shown}): "
                    f"no information in {'it' if len(empty) == 1 else 'them'}")
    return "; ".join(said)


def info(d: CTRData) -> dict:
    """Rows per split, CTR, fields with vocabulary sizes, and what makes the data too small to trust
    (`small_data`): what `ctrkit info` shows."""
    fm = d.feature_map
    small = small_data(fm)
    return {"path": str(d.path), "dataset": d.dataset, "protocol": d.protocol,
            "fingerprint": d.fingerprint, "rows": fm["rows"], "ctr": fm.get("ctr"),
            "fields": [{"name": f["name"], "vocab_size": f["vocab_size"]} for f in fm["fields"]],
            "total_vocab": int(sum(d.field_sizes)), "source": fm.get("source"),
            "warnings": [f"too little data: {small}"] if small else []}


def format_info(i: dict) -> str:
    lines = [f"{i['path']}: {i['dataset']} / protocol {i['protocol']} / fingerprint {i['fingerprint']}"]
    share = (i.get("source") or {}).get("train_share")
    if isinstance(share, dict):  # `ctrkit.data.subset.train_share`'s folder: whose rows it holds
        lines.append(f"  train rows: a fixed {share.get('share', 0):.0%} sample of {share.get('of_path')}'s "
                     f"{share.get('of_rows', 0):,} (fingerprint {share.get('of_fingerprint')}); its feature map, "
                     f"valid and test")
    for s in SPLITS:
        ctr = (i.get("ctr") or {}).get(s)
        lines.append(f"  {s:<5} {i['rows'][s]:>12,d} rows  CTR {ctr:.4f}" if ctr is not None
                     else f"  {s:<5} {i['rows'][s]:>12,d} rows")
    lines.append(f"  {len(i['fields'])} fields, {i['total_vocab']:,d} embedding rows in all:")
    lines += [f"    {f['name']:<18} {f['vocab_size']:>10,d}" for f in i["fields"]]
    lines += [f"  note: {n}" for n in (i.get("source") or {}).get("notes", [])]
    lines += [f"  warning: {w}" for w in i.get("warnings", [])]
    return "\n".join(lines)


def check_matches(d: CTRData, *, name: str, fields=None, claimed_by: str) -> None:
    """A prepared folder used as dataset `name` (with the schema's processed `fields`, when given)
    must be that dataset: otherwise one line naming the folder, what it holds and what claimed it
    (a schema of one dataset and the prepared folder of another never load together)."""
    if d.dataset != name:
        raise CtrkitError(f"{d.path}: holds prepared dataset {d.dataset!r}, but {claimed_by} is {name!r}: "
                          f"pass the folder prepared from it, or prepare it again")
    if fields is not None and list(d.field_names) != list(fields):
        extra = sorted(set(d.field_names) - set(fields)) or sorted(set(fields) - set(d.field_names))
        raise CtrkitError(f"{d.path}: its fields differ from {claimed_by}'s ({', '.join(extra[:5]) or 'order'}): "
                          f"it was prepared from another schema; prepare it again")
