"""Prediction churn: how much two sets of predictions of the same test rows disagree, and where a
run's test predictions are kept so that two seeds can be compared later.

Two measures (codistillation, Anil et al. 2018, report the first kind):
- `mean_abs`: mean over rows of |p_a - p_b|;
- `top_decile_flip`: the share of rows in the top decile (the ceil(n/10) highest scores, ties
  broken by row order) of exactly one of the two: |A xor B| / n, 0 for the same ranking, at most 0.2.

Within a run (`peer_churn`): each peer against each other peer, on the test split, recorded in the
store. Between runs (two seeds of one configuration): `ctrkit.analysis.variants` reads the saved
predictions, `<store folder>/predictions/<run key>/<peer label>.npy` (float32, one per peer, written
atomically by `save_predictions`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ctrkit.core.utils import LIVE_TEMP_S, CtrkitError, atomic_path, probe_writable, remove_stale_temp

__all__ = ["mean_abs", "top_decile", "top_decile_flip", "churn", "peer_churn", "predictions_dir",
           "prediction_path", "check_writable", "save_predictions", "load_predictions"]


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise CtrkitError(f"churn: predictions of {a.size} and {b.size} rows do not describe the same rows")
    return a, b


def mean_abs(a, b) -> float:
    """Mean over rows of |a - b|."""
    a, b = _pair(a, b)
    return float(np.abs(a - b).mean()) if a.size else float("nan")


def top_decile(p) -> np.ndarray:
    """Boolean mask of the top decile: the ceil(n/10) highest scores, ties broken by row order."""
    p = np.asarray(p, dtype=np.float64).ravel()
    k = math.ceil(p.size / 10)
    mask = np.zeros(p.size, dtype=bool)
    mask[np.argsort(-p, kind="stable")[:k]] = True
    return mask


def top_decile_flip(a, b) -> float:
    """Share of rows whose top-decile membership differs between `a` and `b`."""
    a, b = _pair(a, b)
    return float((top_decile(a) != top_decile(b)).mean()) if a.size else float("nan")


def churn(a, b) -> dict:
    """{"mean_abs", "top_decile_flip"} of two predictions of the same rows."""
    return {"mean_abs": mean_abs(a, b), "top_decile_flip": top_decile_flip(a, b)}


def peer_churn(probs) -> list[dict | None]:
    """Per peer of a run (`probs` [N, rows]): its churn against the other peers, averaged over them
    ({"mean_abs", "top_decile_flip"}); None for a one-peer run."""
    probs = np.asarray(probs, dtype=np.float64)
    n = probs.shape[0]
    if n < 2:
        return [None] * n
    pairs = {(i, j): churn(probs[i], probs[j]) for i in range(n) for j in range(i + 1, n)}
    out = []
    for k in range(n):
        mine = [pairs[min(k, j), max(k, j)] for j in range(n) if j != k]
        out.append({m: float(np.mean([c[m] for c in mine])) for m in ("mean_abs", "top_decile_flip")})
    return out


def predictions_dir(store_path: str | Path) -> Path:
    """`<store folder>/predictions`: where the runs recorded in a store keep their test predictions."""
    return Path(store_path).parent / "predictions"


def prediction_path(folder: str | Path, run_key: str, label: str) -> Path:
    return Path(folder) / run_key / f"{label}.npy"


def check_writable(store_path: str | Path) -> None:
    """Fail now, not after the training, when a run recorded in the store at `store_path` could not
    save its test predictions (`save_predictions`, before the store's append): `predictions_dir`
    must be a folder this process can write in, or one it can create. The store's own checks are
    `ResultsStore.check_usable`'s (which makes the store's folder)."""
    folder = predictions_dir(store_path)
    if os.path.lexists(folder) and not folder.is_dir():
        raise CtrkitError(f"results store {store_path}: {folder} is not a folder (the test predictions of the runs "
                          f"recorded there go in it): move it away, or use another store; nothing was trained")
    try:
        probe_writable(folder if folder.is_dir() else folder.parent)
    except OSError as e:
        raise CtrkitError(f"results store {store_path}: cannot write the test predictions folder {folder} "
                          f"({e.strerror or e}); nothing was trained") from None


def save_predictions(folder: str | Path, run_key: str, labels: Sequence[str], probs) -> list[Path]:
    """Each peer's test predictions (`probs` [N, rows]) as float32 .npy, written atomically; a full
    disk or an unwritable folder is a one-line error naming the file (the store's append comes
    after: the run is then not recorded)."""
    labels = list(labels)
    # The temp files a killed writer of this run left (`atomic_path`'s, of these very names). Only in
    # this run's folder, whose run key the caller holds claimed in its store (`ResultsStore.claim`),
    # so no other run of the store writes there now; yet a second store in the same folder shares
    # predictions/ but not its claims, so only temp files older than any live write are removed.
    remove_stale_temp(Path(folder) / run_key, [f"{label}.npy" for label in labels], older_than=LIVE_TEMP_S)
    paths = []
    for label, p in zip(labels, np.asarray(probs, dtype=np.float32)):
        path = prediction_path(folder, run_key, label)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, p)
        except OSError as e:
            raise CtrkitError(f"cannot write the test predictions {path}: {e.strerror or e}") from None
        paths.append(path)
    return paths


def load_predictions(folder: str | Path, run_key: str, label: str) -> np.ndarray | None:
    """A peer's saved test predictions, or None when that run saved none (an older run, no store)."""
    path = prediction_path(folder, run_key, label)
    return np.load(path) if path.is_file() else None
