"""`core.owned`: a file ctrkit writes at a fixed name replaces only what ctrkit wrote there (its
record), so a table, figure or index edited or put there by hand is never overwritten."""
from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ctrkit.analysis import plots  # noqa: E402
from ctrkit.core import owned  # noqa: E402
from ctrkit.core.utils import CtrkitError, sha256_file  # noqa: E402
from ctrkit.notebook import reproduce  # noqa: E402


def _write(path, text):
    with owned.owned_path(path) as tmp:
        tmp.write_text(text)


def test_a_file_ctrkit_wrote_is_replaced_and_recorded(tmp_path):
    path = tmp_path / "t.md"
    _write(path, "one\n")
    assert owned.recorded(path) == [sha256_file(path)]
    _write(path, "two\n")
    assert path.read_text() == "two\n" and owned.recorded(path) == [sha256_file(path)]
    assert owned.changed([path]) == []


@pytest.mark.parametrize("how", ["put there by hand", "edited after ctrkit wrote it", "a link"])
def test_a_file_ctrkit_did_not_write_stays_as_it_is(tmp_path, how):
    path, theirs = tmp_path / "t.md", tmp_path / "theirs.md"
    theirs.write_text("theirs\n")
    if how == "put there by hand":
        path.write_text("mine\n")
    elif how == "edited after ctrkit wrote it":
        _write(path, "ctrkit's\n")
        path.write_text("mine\n")
        assert owned.changed([path]) == [path]
    else:
        path.symlink_to(theirs)
    before = path.read_bytes()
    with pytest.raises(CtrkitError, match=f"^{path}: exists and ctrkit did not write it"):
        _write(path, "new\n")
    assert path.read_bytes() == before and theirs.read_text() == "theirs\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left


def test_the_same_bytes_are_no_conflict(tmp_path):
    """A file already holding what ctrkit writes is taken over (nothing of the user's is lost)."""
    path = tmp_path / "t.md"
    path.write_text("same\n")
    _write(path, "same\n")
    assert owned.recorded(path) == [sha256_file(path)]


def test_a_writer_killed_between_record_and_rename_leaves_both_versions_known(tmp_path, monkeypatch):
    path = tmp_path / "t.md"
    _write(path, "old\n")
    old = sha256_file(path)
    real = os.replace

    def killed(src, dst):  # the file's rename, after its record listed old and new
        if str(dst) == str(path):
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _write(path, "new\n")
    monkeypatch.setattr(os, "replace", real)
    assert path.read_text() == "old\n" and old in owned.recorded(path) and len(owned.recorded(path)) == 2
    _write(path, "newer\n")  # the next run goes on
    assert path.read_text() == "newer\n"


def test_a_damaged_record_proves_nothing(tmp_path):
    path = tmp_path / "t.md"
    _write(path, "one\n")
    owned.record_path(path).write_text("{not json")
    with pytest.raises(CtrkitError, match="did not write it"):
        _write(path, "two\n")
    owned.record_path(path).write_text(json.dumps({"sha256": "not a list"}))
    assert owned.recorded(path) == []


def test_move_into_replaces_only_ctrkits_file(tmp_path):
    dest = tmp_path / "nb.ipynb"
    for text in ("first", "second"):
        src = tmp_path / ".partial"
        src.write_text(text)
        owned.move_into(src, dest)
        assert dest.read_text() == text and owned.recorded(dest) == [sha256_file(dest)] and not src.exists()
    dest.write_text("edited by hand")
    src.write_text("third")
    with pytest.raises(CtrkitError, match="did not write it"):
        owned.move_into(src, dest)
    assert dest.read_text() == "edited by hand" and src.read_text() == "third"


def test_adopt_records_only_files_without_a_record(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("a\n")
    _write(b, "b\n")
    b.write_text("b edited\n")
    assert owned.adopt([a, b, tmp_path / "absent.csv"]) == 1
    assert owned.changed([a, b]) == [b]


def test_save_table_and_save_figure_keep_a_users_file(tmp_path):
    stem = tmp_path / "criteo_headline"
    df = pd.DataFrame({"model": ["DCN"], "gain": [0.1]})
    reproduce.save_table(df, stem)
    reproduce.save_table(df.assign(gain=0.2), stem)  # its own: replaced
    assert "0.2" in (tmp_path / "criteo_headline.md").read_text()
    (tmp_path / "criteo_headline.md").write_text("my notes\n")
    with pytest.raises(CtrkitError, match="criteo_headline.md: exists and ctrkit did not write it.*another out folder"):
        reproduce.save_table(df, stem)
    assert (tmp_path / "criteo_headline.md").read_text() == "my notes\n"

    (tmp_path / "fig.svg").write_text("<svg>mine</svg>")
    fig, _ = plt.subplots()
    with pytest.raises(CtrkitError, match="fig.svg: exists and ctrkit did not write it"):
        plots.save(fig, tmp_path / "fig")
    assert not (tmp_path / "fig.png").exists()  # refused before either format is written
    fig, _ = plt.subplots()
    assert [p.name for p in plots.save(fig, tmp_path / "fig2")] == ["fig2.png", "fig2.svg"]
    fig, _ = plt.subplots()
    plots.save(fig, tmp_path / "fig2")  # again: its own


def test_a_notebook_run_by_hand_replaces_a_reproductions_tables_written_before_records(tmp_path):
    """An earlier reproduction's tables and figures (its `.done` beside them, no records) are ctrkit's:
    `cfg.table`/`cfg.figure` record them, so a notebook run by hand in JupyterLab replaces them; a
    folder without `.done` proves nothing."""
    df = pd.DataFrame({"a": [1]})
    for marked in (True, False):
        out = tmp_path / ("marked" if marked else "plain")
        (out / "tables").mkdir(parents=True)
        (out / ".done").mkdir() if marked else None
        (out / "tables" / "criteo_headline.csv").write_text("old\n")
        (out / "tables" / "criteo_headline.md").write_text("old\n")
        cfg = reproduce.settings(dataset="criteo", profile="smoke", out=str(out))
        if marked:
            reproduce.save_table(df, cfg.table("headline"))
            assert (out / "tables" / "criteo_headline.csv").read_text() == "a\n1\n"
        else:
            with pytest.raises(CtrkitError, match="did not write it"):
                reproduce.save_table(df, cfg.table("headline"))
    # a reproduction that has had records (its .done says so) adopts nothing again: a record deleted
    # by hand does not make an edited file ctrkit's
    marked = tmp_path / "marked"
    assert (marked / ".done" / "owned.json").exists()
    for p in (marked / "tables" / owned.RECORDS).iterdir():
        p.unlink()
    (marked / "tables" / "criteo_headline.md").write_text("mine\n")
    cfg = reproduce.settings(dataset="criteo", profile="smoke", out=str(marked))
    with pytest.raises(CtrkitError, match="did not write it"):
        reproduce.save_table(df, cfg.table("headline"))
    assert (marked / "tables" / "criteo_headline.md").read_text() == "mine\n"
