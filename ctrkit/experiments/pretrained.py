"""A process's pretrained checkpoints read once and scored once: a grid's runs of one seed finetune
the same files, and each run used to read every checkpoint twice (the check, then the model) and
score it on valid and test again. A checkpoint whose training run scored it on this data, machine
and code (`checkpoint.scored_by`) is not scored again at all: every worker process of every
notebook used to measure the same numbers.

Both caches key a file by its identity (path, device and inode, modification time in ns, size):
ctrkit replaces a checkpoint by an atomic rename, so a rewritten file is a new key and is read again.
The weights are copied into a new model for every run (`checkpoint.model_from`); the scores are those
`predict` gives for the same weights, data and batch size, so a cached score is the recomputed one.
"""
from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from pathlib import Path

from ctrkit.training import checkpoint
from ctrkit.training.evaluation import predict, scores as split_scores

__all__ = ["read", "load", "scores", "clear"]

# the last few checkpoints read (a run's peers and a little more: each may hold a large embedding table)
KEEP = 8
# (file identity, device, eval batch size) -> (a weak reference to the data object, its scores), the
# last SCORES_KEPT: small dicts
SCORES_KEPT = 512
_SCORES: OrderedDict = OrderedDict()


def _identity(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=KEEP)
def _read(identity: tuple) -> dict:
    return checkpoint.load_checkpoint(Path(identity[0]))


def read(path: str | Path) -> dict:
    """`checkpoint.load_checkpoint(path)`, from memory when this process read the same file last;
    the dict is shared: read it, do not change it."""
    path = Path(path)
    try:
        key = _identity(path)
    except OSError:
        return checkpoint.load_checkpoint(path)  # its one-line error for a missing or unreadable file
    return _read(key)


def load(path: str | Path, device, **expect):
    """`checkpoint.load_pretrained` of a best.pt through `read`: (a new model, its metadata)."""
    return checkpoint.model_from(read(path), Path(path), device, **expect)


def scores(model, path: str | Path, data, device, batch_size: int) -> dict:
    """{"valid": ..., "test": ...}: the scores of `model`, loaded from `path`, on `data`'s splits,
    once per file, data object, device and batch size in this process: the checkpoint's own
    metrics where they were measured on data of this fingerprint under this `scored_by` (the same
    bits measuring gives), else measured here."""
    key = (_identity(Path(path)), str(device), batch_size)
    hit = _SCORES.get(key)
    if hit is None or hit[0]() is not data:
        out = _recorded(read(path), data, device, batch_size)
        if out is None:
            out = {}
            for split in ("valid", "test"):
                X, y = data.tensors(split, device)
                out[split] = split_scores(y, predict(model, X, batch_size))
        _SCORES[key] = (weakref.ref(data), out)
        while len(_SCORES) > SCORES_KEPT:
            _SCORES.popitem(last=False)
    return {split: dict(s) for split, s in _SCORES[key][1].items()}


def _recorded(ck: dict, data, device, batch_size: int) -> dict | None:
    """The scores a checkpoint recorded when its training run evaluated it, if they are the ones
    measuring them here would give (same data fingerprint, `checkpoint.scored_by`), else None."""
    m = ck.get("metrics") or {}
    keys = [f"{s}_{k}" for s in ("valid", "test") for k in ("auc", "logloss")]
    if (ck.get("fingerprint") != data.fingerprint or ck.get("scored_by") != checkpoint.scored_by(device, batch_size)
            or not all(isinstance(m.get(k), float) for k in keys)):
        return None
    return {s: {"auc": m[f"{s}_auc"], "logloss": m[f"{s}_logloss"]} for s in ("valid", "test")}


def clear() -> None:
    """Forget every checkpoint and score held."""
    _read.cache_clear()
    _SCORES.clear()
