"""The files a reproduction writes in its out folder, and adopting those of an older ctrkit (`owned` records).

`runner` checks them before a reproduction runs; `reproduce` (a notebook run by hand) adopts them too.
"""
from __future__ import annotations

from pathlib import Path

from ctrkit.core import owned
from ctrkit.core.utils import write_json_atomic


# What reproduce and its notebooks write in --out: (folder, file names, name endings). The temp files
# (`atomic_path`'s) of those files that a killed run left are removed by the next one.
WRITTEN = [("tables", (), (".csv", ".md", ".tex")), ("figures", (), (".png", ".svg", ".pdf")),
            (".", ("index.md", "index.html"), ()), (".done", (), (".json",))]


def outputs(out_dir: Path) -> list[Path]:
    """The files in `out_dir` of the names reproduce writes (`WRITTEN`, and the executed notebooks)."""
    found = [p for p in (out_dir / "notebooks").rglob("*.ipynb") if not p.name.startswith(".")]
    for sub, names, ends in WRITTEN:
        if sub != ".done" and (out_dir / sub).is_dir():
            found += [p for p in (out_dir / sub).iterdir() if p.name in names or (ends and p.name.endswith(ends))]
    return sorted(p for p in found if not p.name.startswith("."))


# In .done once a reproduction's outputs carry `owned` records: a reproduction without it was made
# before records existed and its outputs are adopted, once; with it, never again (a file whose record
# was deleted since is not thereby ctrkit's).
RECORDS_SINCE = "owned.json"


def adopt_legacy(out_dir: Path) -> None:
    """Record the outputs of a reproduction made before `owned` records existed (its `.done`, no
    `RECORDS_SINCE`) as ctrkit's, so this version replaces them; then mark it as having records."""
    from ctrkit import __version__

    done = out_dir / ".done"
    if done.is_dir() and not (done / RECORDS_SINCE).exists():
        owned.adopt(outputs(out_dir))
        write_json_atomic(done / RECORDS_SINCE, {"written_by": "ctrkit", "records_since": __version__})
