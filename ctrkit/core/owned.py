"""Files ctrkit replaces only if it wrote them: a record of each written file's hash, beside it.

A table, figure, index or executed notebook that ctrkit writes at a fixed name (a reproduction's
`tables/`, `figures/`, `index.md`, `notebooks/`; a figure saved through `plots.save`) gets a record
`<folder>/.ctrkit-written/<name>.json` holding the SHA-256 of what was written. Writing that name
again replaces the file only while it still holds those bytes, or already holds the new ones: a file
put there by hand, or edited after ctrkit wrote it, stops the write with one line naming it, and the
file is left as it is. One record per file, so concurrent writers of different files (notebooks run
side by side) never race on a shared manifest. The record lists the old and the new hash while a
file is replaced, so a writer killed between the two renames leaves the file known as ctrkit's.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from ctrkit.core.errors import CtrkitError
from ctrkit.core.utils import atomic_path, sha256_file, write_json_atomic

RECORDS = ".ctrkit-written"


def record_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent / RECORDS / f"{path.name}.json"


def recorded(path: str | os.PathLike) -> list[str]:
    """The hashes ctrkit recorded for `path` ([] without a record, or with a damaged one: no proof)."""
    try:
        got = json.loads(record_path(path).read_text()).get("sha256", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [h for h in got if isinstance(h, str)] if isinstance(got, list) else []


def foreign(path: str | os.PathLike, new_hash: str | None = None) -> bool:
    """True if `path` holds something ctrkit did not write there: a link, or a file whose bytes are
    neither in its record nor `new_hash` (what is about to be written). An absent path is not."""
    path = Path(path)
    if path.is_symlink():
        return True
    if not path.exists():
        return False
    if not path.is_file():
        return True
    now = sha256_file(path)
    return now != new_hash and now not in recorded(path)


def refuse(path: str | os.PathLike, where: str = "") -> CtrkitError:
    return CtrkitError(f"{path}: exists and ctrkit did not write it (or it was changed since); not "
                       f"replacing it: move it away{where}")


def _write_record(path: Path, hashes: Iterable[str]) -> None:
    write_json_atomic(record_path(path), {"written_by": "ctrkit", "sha256": sorted(set(hashes))})


def record(path: str | os.PathLike) -> None:
    """Record `path`, as it is now, as written by ctrkit."""
    _write_record(Path(path), [sha256_file(path)])


def _begin(path: Path, new: str, where: str) -> None:
    """Before the bytes of hash `new` are renamed onto `path`: refuse if ctrkit did not write what
    `path` holds, else record old and new, so a writer killed mid-rename leaves both known as ctrkit's
    (the record is settled to `new` alone after the rename)."""
    if foreign(path, new):
        raise refuse(path, where)
    old = sha256_file(path) if path.exists() else None
    _write_record(path, [new] + ([old] if old else []))


def move_into(src: str | os.PathLike, dest: str | os.PathLike, *, where: str = "") -> None:
    """Rename ctrkit's finished file `src` (e.g. an executed notebook) onto `dest`, as `owned_path`
    replaces a file: only if ctrkit wrote what `dest` holds, recording the new bytes."""
    src, dest = Path(src), Path(dest)
    new = sha256_file(src)
    _begin(dest, new, where)
    os.replace(src, dest)
    _write_record(dest, [new])


@contextlib.contextmanager
def owned_path(path: str | os.PathLike, *, where: str = "") -> Iterator[Path]:
    """`atomic_path` that replaces `path` only if ctrkit wrote what is there (`foreign`), and records
    what it wrote. `where` ends the refusal (e.g. ", or give another --out"). OSError passes through
    for the caller to name its file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        yield tmp
        new = sha256_file(tmp)
        _begin(path, new, where)  # atomic_path renames tmp onto path as this block ends
    _write_record(path, [new])


def changed(paths: Iterable[Path]) -> list[Path]:
    """Of `paths`, the files that have a record their bytes no longer match (edited by hand), or that
    are a link now (ctrkit writes none)."""
    return [p for p in paths if (p.is_file() or p.is_symlink()) and (h := recorded(p))
            and (p.is_symlink() or sha256_file(p) not in h)]


def adopt(paths: Iterable[Path]) -> int:
    """Record files as ctrkit's without a record yet: outputs written before records existed, in a
    folder already proven ctrkit's by its marker. Returns how many were recorded."""
    n = 0
    for p in paths:
        if p.is_file() and not p.is_symlink() and not record_path(p).exists():
            record(p)
            n += 1
    return n
