"""Writing a benchmark's result: `<stem>.json` (everything) and `<stem>.md` (the table), atomically,
with the machine, command and date the result records. Imported by the bench scripts that run in
the project venv (not by the competitors' workers)."""
from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ctrkit.core.utils import atomic_path, write_json_atomic  # noqa: E402
from ctrkit.kernels import env_info  # noqa: E402


def stamp(script: str, extra_machine: str = "") -> dict:
    """date, machine and command of this run."""
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{env_info()['cpu']}, {os.cpu_count()} cores, {platform.platform()}{extra_machine}",
            "command": f"python bench/{script} " + " ".join(sys.argv[1:])}


def write(folder: str | Path, tag: str, res: dict, to_markdown: Callable[[dict], str]) -> Path:
    """`<folder>/<date>-<tag>.json|.md`; prints the Markdown; returns the stem."""
    stem = Path(folder) / f"{res['date'][:10]}-{tag}"
    write_json_atomic(stem.with_suffix(".json"), res)
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(to_markdown(res))
    print(to_markdown(res))
    return stem
