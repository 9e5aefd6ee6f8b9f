"""The output folder of `prepare`: what may be replaced, staging in a temp folder, OS errors.

ctrkit replaces only what it wrote: every output folder (and every staging folder) carries a
marker file; `--force` replaces a folder with the marker (or a pre-marker ctrkit output: a
feature map of ours and nothing else) and refuses anything else. An output equal to, inside or
containing an input is refused, and so is a symbolic link where something would be written (a
rename would replace the link, not its target). A staging folder left by a killed run (its
process gone) is removed by the next run on the same output.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from ctrkit.data.loading import SPLITS
from ctrkit.data.sources import check_utf8_name
from ctrkit.core.utils import CtrkitError, write_json_atomic

MARKER = ".ctrkit-prepare.json"
_OURS = {MARKER, "feature_map.json"} | {f"{s}_{a}.npy" for s in SPLITS for a in ("X", "y")}


def check_paths(out: Path, inputs: list[Path]) -> None:
    """Refuse an --out that is a file, or equal to / inside / containing an input."""
    if "\0" in str(out):
        raise CtrkitError(f"--out {str(out)!r}: invalid path (a NUL byte)")
    check_utf8_name(out, "--out ")
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise CtrkitError(f"--out {out}: is an existing file, not a folder; choose another --out")
    o = out.resolve()
    for inp in inputs:
        i = inp.resolve()
        if o == i:
            raise CtrkitError(f"--out {out}: is the input {inp}; choose another --out")
        if i in o.parents:
            raise CtrkitError(f"--out {out}: is inside the input {inp}; choose a folder outside it")
        if o in i.parents:
            raise CtrkitError(f"--out {out}: contains the input {inp}; choose a folder that does not")
    for parent in [out.parent, *out.parent.parents]:
        if parent.exists() and not parent.is_dir():
            raise CtrkitError(f"--out {out}: {parent} is a file, not a folder")


def is_ours(folder: Path) -> bool:
    """Our marker (or, for outputs written before it existed, our feature map), and nothing but
    the files we write: a file added by hand makes the folder the user's."""
    try:
        names = {p.name for p in folder.iterdir()}
        if not names <= _OURS:
            return False
        if MARKER in names:
            return True
        fm = json.loads((folder / "feature_map.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(fm, dict) and "created_with" in fm and "fingerprint" in fm


def previous_fingerprint(out: Path) -> str | None:
    try:
        return json.loads((out / "feature_map.json").read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def check_replace(out: Path, fp: str, force: bool) -> None:
    """Raise unless `out` is absent, empty, or a previous ctrkit output that may be replaced."""
    if out.is_symlink():
        # Replacing works by renaming folders: through a link it would replace the link itself with
        # a folder (the user's link gone, its target left as it was), so say which folder to give.
        raise CtrkitError(f"--out {out}: is a symbolic link (to {os.readlink(out)}); give the folder "
                          f"itself as --out, or another --out")
    if not out.exists() or not any(out.iterdir()):
        return
    if not is_ours(out):
        example = sorted(p.name for p in out.iterdir() if p.name not in _OURS)[:3]
        raise CtrkitError(f"--out {out}: exists and holds files ctrkit did not write "
                          f"({', '.join(example) or 'no ctrkit marker'}); choose another --out")
    if not force:
        raise CtrkitError(f"--out {out}: already holds a dataset prepared from other input or settings "
                          f"(fingerprint {previous_fingerprint(out)}, now {fp}); pass --force (force=True from Python) to replace it")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def stale(parent: Path, name: str, kinds=("tmp", "old")) -> Iterator[Path]:
    """The paths `.<name>.<kind>-<pid>` in `parent` whose process is gone: left by a killed run.
    Whether one is ours to remove is the caller's check (a marker)."""
    for p in parent.glob(f".{name}.*-*"):
        kind, _, pid = p.name[len(name) + 2:].partition("-")
        if kind in kinds and pid.isdigit() and not _pid_alive(int(pid)):
            yield p


def remove_stale(out: Path) -> list[Path]:
    """Staging/old folders of `out` left by killed runs (their pid gone, our marker inside)."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in stale(out.parent, out.name):
        if p.is_dir() and not p.is_symlink() and (p / MARKER).is_file():  # a link is not ours to remove
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def os_error(out: Path, e: OSError, path: Path | None = None) -> CtrkitError:
    """One line naming `path` (the file being written), else the file the OS names, else `out`."""
    where = path or e.filename or out
    why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}.get(e.errno, e.strerror or str(e))
    return CtrkitError(f"--out {out}: cannot write {where}: {why}")


@contextlib.contextmanager
def staging(out: Path, marker: dict):
    """Yield a fresh hidden temp folder next to `out`; on success it replaces `out` (the previous
    output is removed only after the new one is in place); on failure it is removed."""
    remove_stale(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists() and (tmp / MARKER).is_file():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as e:
        raise os_error(out, e) from None
    try:
        write_json_atomic(tmp / MARKER, marker)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error(out, e) from None
    try:
        yield tmp
        _swap_in(tmp, out)
    except OSError as e:
        raise os_error(out, e) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if any(out.iterdir()):
        os.replace(out, old)
    else:
        out.rmdir()
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)
