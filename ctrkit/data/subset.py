"""A share of a prepared dataset's training rows as a prepared folder of its own: `train_share`.

What a weaker baseline that is still trained to convergence needs: the same feature map (every id
means what it means in the full data, so the models are the same size), the same validation and
test rows, and fewer training rows. The rows kept are a fixed random sample (generator seed
`SAMPLE_SEED`, whatever the run's seed, so every seed and both arms of a paired comparison see the
same rows), in their original order. The folder gets its own fingerprint (the parent's, the share
and the rows kept), so its runs, store keys and checkpoints never pass for the full data's.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ctrkit.core.utils import CtrkitError, write_json_atomic
from ctrkit.data import outdir
from ctrkit.data.loading import FORMAT_VERSION, CTRData, load

SAMPLE_SEED = 0  # the one sample every run of a share uses: not a run's seed


def train_share(data: CTRData, out, share: float) -> CTRData:
    """`data` with round(share x its training rows) of them (at least 1), written to `out` (a folder
    ctrkit writes and may replace; a folder holding anything else is refused) and loaded. An `out`
    already holding this share of this data is loaded as it is, so a resumed run reuses it."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise CtrkitError(f"share {share!r}: expected a number in (0, 1], the fraction of training rows kept")
    out = Path(out)
    n_all = data.rows["train"]
    keep = np.sort(np.random.default_rng(SAMPLE_SEED).permutation(n_all)[:max(1, round(share * n_all))])
    fp = hashlib.sha256(f"{data.fingerprint}|train share {share!r}|".encode() + keep.tobytes()).hexdigest()[:16]
    X, y = data.numpy("train")  # once: the label check and the share's own arrays
    y_kept = np.ascontiguousarray(y[keep])
    _check_classes(y_kept, n_all, share)
    outdir.check_paths(out, [Path(data.path)])
    if out.is_dir() and outdir.previous_fingerprint(out) == fp:
        outdir.remove_stale(out)
        return load(out)
    mine = _written_here(out)  # another share, or other data's: ours to replace
    if not mine and out.is_dir() and not out.is_symlink() and outdir.is_ours(out) and any(out.iterdir()):
        raise CtrkitError(f"{out}: holds a dataset `ctrkit prepare` wrote, not a share: give the share a folder "
                          f"of its own")
    outdir.check_replace(out, fp, force=mine)
    marker = {"written_by": "ctrkit train_share", "fingerprint": fp, "format_version": FORMAT_VERSION}
    with outdir.staging(out, marker) as tmp:
        np.save(tmp / "train_X.npy", np.ascontiguousarray(X[keep]))
        np.save(tmp / "train_y.npy", y_kept)
        for split in ("valid", "test"):
            for a in ("X", "y"):
                _link_or_copy(Path(data.path) / f"{split}_{a}.npy", tmp / f"{split}_{a}.npy")
        write_json_atomic(tmp / "feature_map.json", _feature_map(data, fp, share, len(keep), float(y_kept.mean())))
    return load(out)


def _check_classes(y_kept: np.ndarray, n_all: int, share: float) -> None:
    """Refuse, before anything is written, a share whose rows hold one label only (a tiny share, or rare
    clicks): `load` would refuse the folder for it, and a rerun would find it again."""
    ones = int(np.count_nonzero(np.asarray(y_kept) == 1.0))
    if ones in (0, len(y_kept)):
        raise CtrkitError(f"share {share!r}: keeps {len(y_kept):,} of {n_all:,} training rows, every "
                          f"label {int(ones > 0)}: nothing to learn; take a larger share")


def _feature_map(data: CTRData, fp: str, share: float, rows: int, ctr: float) -> dict:
    """The parent's feature map (its vocabulary, counted on all its training rows) with this folder's
    fingerprint, train rows and CTR, and where it came from."""
    fm = {**data.feature_map, "fingerprint": fp, "rows": {**data.rows, "train": rows},
          "ctr": {**(data.feature_map.get("ctr") or {}), "train": ctr}}
    fm["source"] = {**(fm.get("source") or {}), "train_share": {
        "share": share, "rows": rows, "of_rows": data.rows["train"], "of_fingerprint": data.fingerprint,
        "of_path": str(data.path), "sample_seed": SAMPLE_SEED}}
    return fm


def _written_here(out: Path) -> bool:
    """Whether `out` was written by `train_share` (a folder `ctrkit prepare` wrote is not replaced)."""
    try:
        return json.loads((out / outdir.MARKER).read_text()).get("written_by") == "ctrkit train_share"
    except (OSError, ValueError, AttributeError):
        return False


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows (no second copy of a large split; the parent's files
    are replaced by renames, never rewritten in place, so the link keeps its bytes), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


__all__ = ["train_share", "SAMPLE_SEED"]
