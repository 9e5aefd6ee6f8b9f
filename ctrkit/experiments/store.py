"""The experiment results store: an append-only JSON-lines file, one record per peer per run.

Guarantees:
- one run's records go in with ONE locked write + fsync, stamped with an append id and the
  number of records in that append; on read, an append with fewer complete lines than it claims
  (a writer killed mid-write) is dropped entirely, so a run is either fully in or not at all;
- two processes appending at once never interleave (a `filelock` lock file next to the store);
- a torn last line is ignored on read, and the next append starts on a fresh line;
- records are tidy-readable (`to_frame`) and exportable (`to_csv`);
- a read parses only the lines appended since the process's last read of the same file.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
from filelock import FileLock

from ctrkit.core.utils import CtrkitError, atomic_path, file_stamp, probe_writable
from ctrkit.experiments.record import CORE_FIELDS

# Columns every record is expected to carry (`ctrkit.experiments.record.Record`'s core fields), in the
# order the tidy frame shows them first, then the append stamps.
COLUMNS = [*CORE_FIELDS, "append_id", "append_size", "written_at"]


class ResultsStore:
    """An append-only results file. `path` is created on the first append."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise CtrkitError(f"results store {self.path} is a directory, expected a .jsonl file")
        if self.path.exists() and not self.path.is_file():  # a FIFO would block every read
            raise CtrkitError(f"results store {self.path} is not a regular file (a pipe or a device?)")
        self._lock = FileLock(str(self.path) + ".lock")

    # ---- write -------------------------------------------------------------------------------
    def check_usable(self) -> None:
        """Fail now, not after training, when this store cannot take a run: someone else's file (its
        first line is read), a folder that cannot be made, or a store or lock file that cannot be
        written (a read-only folder or file, a store name too long to add `.lock` to)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CtrkitError(f"results store {self.path}: cannot create its folder ({e.strerror or e})") from None
        if self.path.exists():
            try:
                with open(self.path, "rb") as f:
                    self._refuse_foreign(f)
            except OSError as e:
                raise CtrkitError(f"results store {self.path}: cannot read it ({e.strerror or e})") from None
            self.run_keys()
        # What `_write` will do, writing nothing: take the lock (its file stays, as after every append:
        # waiters share its inode), open the store for append, or where there is none yet create and
        # remove a file of our own beside it (an empty store made and removed here could vanish
        # under another process reading it).
        try:
            with self._lock:
                if self.path.exists():
                    open(self.path, "ab").close()
                else:
                    probe_writable(self.path.parent)
        except OSError as e:
            raise CtrkitError(f"results store {self.path}: cannot write {e.filename or 'it'} ({e.strerror or e}); "
                              f"nothing was trained") from None

    def append(self, records: Iterable[dict]) -> int:
        """Append all of one run's records at once; returns how many were written."""
        records = [dict(r) for r in records]
        if not records:
            return 0
        append_id = uuid.uuid4().hex
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        lines = []
        for r in records:
            r.update(append_id=append_id, append_size=len(records), written_at=stamp)
            try:
                lines.append(json.dumps(r, default=_json_default, allow_nan=True))
            except (TypeError, ValueError) as e:
                raise CtrkitError(f"results store {self.path}: record is not JSON-serialisable: {e}") from e
        payload = ("\n".join(lines) + "\n").encode()
        try:
            self._write(payload)
        except OSError as e:  # disk full, read-only, a folder where the file should be: the store is intact
            raise CtrkitError(f"results store {self.path}: cannot append ({e.strerror or e}); "
                              f"nothing of this run was recorded") from None
        return len(records)

    def _write(self, payload: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            with open(self.path, "ab+") as f:
                self._refuse_foreign(f)
                # A writer killed mid-line leaves no newline at the end: start on a fresh line so
                # the torn fragment stays one bad line instead of corrupting our first record.
                size = f.seek(0, os.SEEK_END)
                if size > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        payload = b"\n" + payload
                # Straight to the descriptor (O_APPEND), not through `f`'s buffer: a full disk takes
                # part of the append, and the part is cut off again, so the store is as it was (a
                # reader drops a torn append, but warns of it on every read forever). A buffered
                # write would keep the rest to flush again at close, after the cut.
                try:
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(f.fileno(), view):]
                    os.fsync(f.fileno())
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(f.fileno(), size)
                    raise

    def _refuse_foreign(self, f) -> None:
        """A one-line error unless the open file `f` is empty or a ctrkit store: its first line one of
        our records (every append stamps `append_id`; older ones had a `run_key`), or torn JSON (an
        append killed mid-line)."""
        f.seek(0)
        first = f.readline(1 << 20)
        if not first.strip():
            return
        try:
            rec = json.loads(first)
        except ValueError:
            ours = first.startswith(b"{")
        else:
            ours = isinstance(rec, dict) and bool({"append_id", "run_key"} & set(rec))
        if not ours:
            raise CtrkitError(f"results store {self.path}: line 1 is not a ctrkit record (not a ctrkit "
                              f"results store?); nothing was appended")

    # ---- read --------------------------------------------------------------------------------
    def records(self, latest_only: bool = True) -> list[dict]:
        """Complete records in file order (fresh dicts; their nested values are shared with the
        parse cache, so read them only). With `latest_only`, a run re-run with --force keeps only
        its newest append (by run_key)."""
        return [dict(r) for r in self._complete(latest_only)]

    def _complete(self, latest_only: bool) -> list[dict]:
        """`records`, as the parse cache's own dicts (not to be changed)."""
        memo = self._whole(latest_only)
        return memo.records if memo is not None else []

    def _whole(self, latest_only: bool) -> _Whole | None:
        """The complete records of the store as it is now, made once per parse; None without a store."""
        if not self.path.exists():
            return None
        good, bad = _parse(self.path)
        if bad:
            warnings.warn(f"results store {self.path}: skipped {bad} unreadable line(s) "
                          "(left by a writer that was killed mid-write)", stacklevel=4)
        key = (str(self.path.resolve()), latest_only)
        memo = _WHOLE.get(key)
        if memo is None or memo.source is not good:  # a new parse is a new list
            memo = _WHOLE[key] = _Whole(source=good, records=_whole_appends(good, latest_only))
        return memo

    def _by_run_key(self, latest_only: bool) -> dict:
        """run_key -> its records, indexed once per parse: a grid looks every run up before it trains,
        and a scan of the whole store per lookup grew with the square of its runs."""
        memo = self._whole(latest_only)
        if memo is None:
            return {}
        if memo.by_key is None:
            memo.by_key = {}
            for r in memo.records:
                memo.by_key.setdefault(r.get("run_key"), []).append(r)
        return memo.by_key

    def run_records(self, run_key: str) -> list[dict] | None:
        """The records of a finished run (by peer), or None."""
        done = [copy.deepcopy(r) for r in self._by_run_key(True).get(run_key, [])]
        return sorted(done, key=lambda r: r.get("peer_index", 0)) if done else None

    @contextlib.contextmanager
    def claim(self, run_key: str) -> Iterator[None]:
        """Hold run `run_key` while it trains: an identical run started meanwhile (another
        process, another notebook) waits here, then finds it done instead of training it twice.
        Lock files live in `<store>.locks/`; the lock is the OS's (flock), freed if the holder dies."""
        folder = self.path.with_name(self.path.name + ".locks")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CtrkitError(f"results store {self.path}: cannot create {folder}: {e.strerror or e}") from None
        with FileLock(str(folder / f"{run_key}.lock")):
            yield

    def run_keys(self) -> set[str]:
        return {k for k in self._by_run_key(False) if k}

    def has_run(self, run_key: str) -> bool:
        return run_key in self.run_keys()

    def to_frame(self, latest_only: bool = True) -> pd.DataFrame:
        return records_to_frame(self.records(latest_only=latest_only))

    def to_csv(self, path: str | os.PathLike) -> Path:
        # Under the append lock: two exports of one store (notebooks running at once) land in the
        # order they read it, so the CSV left behind is never an older snapshot than the store was.
        with self._lock:
            return export_csv(self.to_frame(), path)

    def __len__(self) -> int:
        return len(self.records())

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"


# path -> (the bytes parsed so far: whole lines, ending in a newline; their records; bad lines
# among them). The store only grows by appends, so a later read parses only what was added: every
# run looks itself up in the store before it trains, and a grid's reads of a whole store made its
# JSON parsing grow with the square of its runs. A file whose start no longer matches (rewritten,
# truncated, replaced) is parsed again from its first byte.
_PARSED: dict[str, tuple[bytes, list[dict], int]] = {}
# path -> (its `file_stamp` at its last parse, the records): a store unchanged since is not read
# again (an append changes its size, a replaced file its inode, a copy over it its ctime). Trusted
# only for a file whose mtime and ctime were already _SETTLED_NS old when read: a write within the
# file system's time granularity (a jiffy; 2 s on FAT) of the read could leave them as they were
# ("racy git").
_SEEN: dict[str, tuple[tuple, list[dict]]] = {}
_SETTLED_NS = 5_000_000_000


@dataclasses.dataclass
class _Whole:
    """`ResultsStore._complete` of one parse (`source`, by identity), with its run-key index."""
    source: list
    records: list
    by_key: dict | None = None


# (path, latest_only) -> the _Whole of its last parse
_WHOLE: dict[tuple[str, bool], _Whole] = {}


def _whole_appends(good: list[dict], latest_only: bool) -> list[dict]:
    """The records of appends that made it in whole (a killed writer's part is dropped); with
    `latest_only`, a run re-run with --force keeps only its newest append."""
    counts: dict[str, int] = {}
    for r in good:
        counts[r.get("append_id")] = counts.get(r.get("append_id"), 0) + 1
    complete = [r for r in good if r.get("append_id") is None
                or counts[r["append_id"]] == r.get("append_size", counts[r["append_id"]])]
    if latest_only:
        last_append = {}
        for r in complete:
            if r.get("run_key") is not None:
                last_append[r["run_key"]] = r.get("append_id")
        complete = [r for r in complete
                    if r.get("run_key") is None or last_append[r["run_key"]] == r.get("append_id")]
    return complete


def _parse(path: Path) -> tuple[list[dict], int]:
    """(the records of every JSON line of the store at `path`, the number of unreadable lines
    before its last one). A torn last line (a writer killed mid-line, or one writing now) is skipped
    without counting; a line that is not a JSON record at all is a one-line error."""
    key = str(path.resolve())
    st = os.stat(path)
    stamp = file_stamp(st)
    if key in _SEEN and _SEEN[key][0] == stamp:
        return _SEEN[key][1], _PARSED[key][2] if key in _PARSED else 0
    settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _SETTLED_NS
    raw = path.read_bytes()
    done, good, bad = _PARSED.get(key, (b"", [], 0))
    if not raw.startswith(done):
        done, good, bad = b"", [], 0
    start = len(done)
    lines = raw[start:].split(b"\n")
    good, tail = list(good), []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError:
            if not line.lstrip().startswith(b"{"):
                line_no = done.count(b"\n") + i + 1  # counted on this error only, not per read
                raise CtrkitError(f"results store {path}: line {line_no} is not a JSON record "
                                  f"(not a ctrkit results store?)") from None
            if i != len(lines) - 1:  # the last line torn by a killed writer is expected
                bad += 1
            continue
        (tail if i == len(lines) - 1 else good).append(rec)  # no newline yet: it may still grow
    end = raw.rfind(b"\n") + 1
    if end > start:
        _PARSED[key] = (raw[:end], good, bad)
    records = good + tail
    if settled:
        _SEEN[key] = (stamp, records)
    else:
        _SEEN.pop(key, None)
    return records, bad


def records_to_frame(records: list[dict]) -> pd.DataFrame:
    """Tidy frame: one row per peer per run; lists and dicts (partners, config, env) as JSON text."""
    df = pd.DataFrame(records)
    for c in df.columns[df.dtypes == object]:  # only where a dict or list can be: not a pass per record and key
        values = df[c].tolist()
        if any(isinstance(v, (dict, list)) for v in values):
            df[c] = [json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v for v in values]
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra].reset_index(drop=True)


def export_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """`df` (a `records_to_frame`) as tidy CSV at `path`, written atomically. A file already there is
    replaced only if it is such an export (its header starts with run_key and names append_id):
    ctrkit never overwrites what it did not write."""
    path = Path(path)
    if path.is_dir():
        raise CtrkitError(f"{path}: is a folder; give the CSV file's path")
    try:
        if os.path.lexists(path):
            with open(path, "rb") as f:
                header = f.readline(1 << 16).decode("utf-8", "replace").rstrip("\r\n").split(",")
            empty = path.is_file() and path.stat().st_size == 0  # e.g. made by mkstemp for this
            if not empty and (path.is_symlink() or header[0] != "run_key" or "append_id" not in header):
                raise CtrkitError(f"{path}: exists and is not a ctrkit results export; choose another path")
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
    except OSError as e:
        raise CtrkitError(f"{path}: cannot write the results CSV ({e.strerror or e})") from None
    return path


def read_results(source) -> pd.DataFrame:
    """A store path (.jsonl), a tidy CSV export, a ResultsStore or a DataFrame -> tidy DataFrame."""
    if isinstance(source, pd.DataFrame):
        return source
    if isinstance(source, ResultsStore):
        return source.to_frame()
    path = Path(source)
    if not path.exists():
        raise CtrkitError(f"results store {path} does not exist")
    if path.suffix == ".csv":
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
            raise CtrkitError(f"results file {path}: not a readable CSV ({str(e).splitlines()[0]})") from None
        missing = [c for c in ("run_key", "mode", "peer", "test_auc") if c not in df.columns]
        if missing:
            raise CtrkitError(f"results file {path}: not a ctrkit results export (no column {', '.join(missing)})")
        return df
    return ResultsStore(path).to_frame()


def _json_default(o):
    # numpy scalars and paths show up in records; everything else is a bug worth failing on
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
