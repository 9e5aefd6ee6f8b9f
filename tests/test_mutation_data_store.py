"""Behaviour a mutation audit of data.subset, data.loading, experiments.store and training.checkpoint
found unchecked: each test here fails with one of the audit's mutants applied (a dropped check, a
flipped comparison, an off-by-one) and passes on the code as it is."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from ctrkit import data
from ctrkit.core.utils import CtrkitError
from ctrkit.data import outdir, subset
from ctrkit.data.subset import train_share
from ctrkit.experiments.store import ResultsStore, read_results
from ctrkit.training import checkpoint

DEAD_PID = 2**22 + 12345  # above the default pid_max (4,194,304): no such process


def _copy(d: data.CTRData, tmp_path, name="copy"):
    """A copy of prepared folder `d` to damage."""
    return shutil.copytree(d.path, tmp_path / name)


def _edit_fm(folder, edit):
    fm_path = folder / "feature_map.json"
    fm = json.loads(fm_path.read_text())
    edit(fm)
    fm_path.write_text(json.dumps(fm))
    return fm_path


# ------------------------------------------------------------------ data.subset.train_share

def test_a_share_of_1_keeps_every_training_row(criteo_small, tmp_path):
    whole = train_share(criteo_small, tmp_path / "all", 1)
    assert whole.rows == criteo_small.rows
    for a, b in zip(criteo_small.numpy("train"), whole.numpy("train")):
        assert np.array_equal(a, b)


def test_a_share_too_small_for_two_rows_is_never_an_empty_training_split(criteo_small, tmp_path):
    # round(share x rows) is 0: at least one row is kept, and one row (one class) is refused as
    # nothing to learn, instead of a share with no training rows at all being served
    with pytest.raises(CtrkitError, match="nothing to learn"):
        train_share(criteo_small, tmp_path / "q", 1e-6)


def test_a_share_of_other_data_with_as_many_rows_is_not_taken_for_the_earlier_one(criteo_small, tmp_path):
    other_path = _copy(criteo_small, tmp_path, "other")
    y = np.load(other_path / "train_y.npy")
    np.save(other_path / "train_y.npy", 1 - y)  # other labels, same row count
    _edit_fm(other_path, lambda fm: fm.update(fingerprint="0123456789abcdef"))
    other = data.load(other_path)
    out = tmp_path / "q"
    first = train_share(criteo_small, out, 0.5)
    first_y = np.array(first.numpy("train")[1])  # read now: the folder is replaced below
    second = train_share(other, out, 0.5)
    assert second.fingerprint != first.fingerprint
    assert np.array_equal(second.numpy("train")[1], 1 - first_y)
    assert second.feature_map["source"]["train_share"]["of_fingerprint"] == "0123456789abcdef"


def test_a_share_keeps_the_parents_evaluation_ctrs_source_and_says_where_it_came_from(criteo_small, tmp_path):
    part = train_share(criteo_small, tmp_path / "q", 0.25)
    parent = criteo_small.feature_map
    for s in ("valid", "test"):
        assert part.feature_map["ctr"][s] == parent["ctr"][s]
    assert {k: v for k, v in part.feature_map["source"].items() if k != "train_share"} == parent["source"]
    assert part.feature_map["source"]["train_share"] == {
        "share": 0.25, "rows": part.rows["train"], "of_rows": criteo_small.rows["train"],
        "of_fingerprint": criteo_small.fingerprint, "of_path": str(criteo_small.path), "sample_seed": 0}
    assert part.rows["train"] < criteo_small.rows["train"]


def test_a_share_is_copied_where_the_file_system_takes_no_hard_link(criteo_small, tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(subset.os, "link", no_link)
    part = train_share(criteo_small, tmp_path / "q", 0.5)
    for split in ("valid", "test"):
        for a, b in zip(criteo_small.numpy(split), part.numpy(split)):
            assert np.array_equal(a, b)
        assert os.stat(part.path / f"{split}_X.npy").st_nlink == 1  # a copy, not a link


def test_a_reused_share_removes_the_staging_folder_a_killed_run_left(criteo_small, tmp_path):
    out = tmp_path / "q"
    train_share(criteo_small, out, 0.25)
    stale = tmp_path / f".q.tmp-{DEAD_PID}"
    stale.mkdir()
    (stale / outdir.MARKER).write_text("{}")
    (stale / "train_X.npy").write_bytes(b"\0" * 4096)
    stamp = (out / "train_X.npy").stat().st_mtime_ns
    train_share(criteo_small, out, 0.25)
    assert (out / "train_X.npy").stat().st_mtime_ns == stamp and not stale.exists()


# ------------------------------------------------------------------ data.loading: load and tensors

@pytest.mark.parametrize("value, column", [("size", 1), (-1, 0)], ids=["vocab_size", "negative"])
def test_an_index_just_outside_its_vocabulary_is_found_before_training(criteo_small, tmp_path, value, column):
    folder = _copy(criteo_small, tmp_path)
    X = np.load(folder / "valid_X.npy")
    size = criteo_small.field_sizes[column]
    bad = size if value == "size" else value  # one past the last row, or below padding
    X[5, column] = bad
    np.save(folder / "valid_X.npy", X)
    d = data.load(folder)
    with pytest.raises(CtrkitError, match=rf"valid_X\.npy: field {d.field_names[column]} \(column {column}\): "
                                          rf"index {bad} outside \[0, {size}\)"):
        d.tensors("valid")


def test_the_index_check_also_guards_another_device(criteo_small, tmp_path):
    folder = _copy(criteo_small, tmp_path)
    X = np.load(folder / "test_X.npy")
    X[0, 3] = criteo_small.field_sizes[3] + 7
    np.save(folder / "test_X.npy", X)
    with pytest.raises(CtrkitError, match=r"test_X\.npy: field .* \(column 3\)"):
        data.load(folder).tensors("test", "meta")  # a device that needs no GPU


def test_tensors_are_kept_per_device(criteo_small):
    X, _ = criteo_small.tensors("valid", "cpu")
    Xm, ym = criteo_small.tensors("valid", "meta")
    assert X.device.type == "cpu" and Xm.device.type == "meta" and ym.device.type == "meta"
    assert criteo_small.tensors("valid", "cpu")[0] is X


def test_an_empty_split_serves_empty_tensors(criteo_small, tmp_path):
    folder = _copy(criteo_small, tmp_path)
    F = criteo_small.num_fields
    np.save(folder / "valid_X.npy", np.zeros((0, F), np.int32))
    np.save(folder / "valid_y.npy", np.zeros(0, np.float32))
    _edit_fm(folder, lambda fm: (fm["rows"].update(valid=0), fm["ctr"].update(valid=None)))
    X, y = data.load(folder).tensors("valid")
    assert tuple(X.shape) == (0, F) and tuple(y.shape) == (0,)


def test_numpy_without_mmap_is_writable_memory(criteo_small):
    X, y = criteo_small.numpy("valid", mmap=False)
    assert not isinstance(X, np.memmap) and not isinstance(y, np.memmap)
    assert X.flags.writeable and y.flags.writeable
    Xm, _ = criteo_small.numpy("valid")
    assert isinstance(Xm, np.memmap) and not Xm.flags.writeable


@pytest.mark.parametrize("edit, needle", [
    (lambda fm: fm["fields"][0].update(vocab_size=0), "'fields[0].vocab_size': expected an integer >= 1, got 0"),
    (lambda fm: fm["fields"][0].update(vocab_size=True), "'fields[0].vocab_size': expected an integer >= 1, got True"),
    (lambda fm: fm.update(fields=[]), "'fields': expected a non-empty list of fields, got []"),
    (lambda fm: fm["ctr"].update(valid=True), "'ctr.valid': expected a number or null, got True"),
    (lambda fm: fm["source"].update(notes="abc"), "'source.notes': expected a list of strings, got 'abc'"),
    (lambda fm: fm["source"].update(notes=["ok", 3]), "'source.notes': expected a list of strings"),
], ids=["vocab_0", "vocab_true", "no_fields", "ctr_true", "notes_text", "notes_int"])
def test_more_feature_maps_of_the_wrong_shape_are_one_line_naming_the_key(criteo_small, tmp_path, edit, needle):
    folder = _copy(criteo_small, tmp_path)
    fm_path = _edit_fm(folder, edit)
    with pytest.raises(CtrkitError) as e:
        data.load(folder)
    assert str(e.value).startswith(f"{fm_path}: ") and needle in str(e.value)


@pytest.mark.parametrize("damage, needle", [
    (lambda X, y: (X.astype(np.int64), y), "train_X.npy is int64"),
    (lambda X, y: (X[:, :-1], y), "expected int32 [rows, 39]"),
    (lambda X, y: (X, y[:, None]), "train_y.npy has"),
    (lambda X, y: (X, np.ones_like(y)), "every training label is 1: there is nothing to learn"),
], ids=["int64", "fields", "y_2d", "all_ones"])
def test_split_files_of_the_wrong_shape_type_or_labels_are_refused_at_load(criteo_small, tmp_path, damage, needle):
    folder = _copy(criteo_small, tmp_path)
    X, y = damage(np.load(folder / "train_X.npy"), np.load(folder / "train_y.npy"))
    np.save(folder / "train_X.npy", X)
    np.save(folder / "train_y.npy", y)
    with pytest.raises(CtrkitError, match=rf"split 'train': .*{_re(needle)}"):
        data.load(folder)


def test_rows_of_the_files_and_the_feature_map_must_agree(criteo_small, tmp_path):
    folder = _copy(criteo_small, tmp_path)
    n = criteo_small.rows["valid"]
    _edit_fm(folder, lambda fm: fm["rows"].update(valid=n - 1))
    with pytest.raises(CtrkitError, match=rf"split 'valid': {n} rows in the files, {n - 1} in feature_map\.json"):
        data.load(folder)


def _re(s: str) -> str:
    import re
    return re.escape(s)


# ------------------------------------------------------------------ experiments.store

def _run(run_key, n=3, **extra):
    return [dict(run_key=run_key, peer=f"M{i}", peer_index=i, test_auc=0.7 + i / 100, config={"lr": 1e-3}, **extra)
            for i in range(n)]


def test_an_append_is_synced_to_disk_whole_before_it_returns(tmp_path, monkeypatch):
    import ctrkit.experiments.store as store_mod

    path = tmp_path / "r.jsonl"
    synced, real = [], os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.append((st.st_ino, st.st_size))
        real(fd)

    monkeypatch.setattr(store_mod.os, "fsync", fsync)
    ResultsStore(path).append(_run("a"))
    assert (path.stat().st_ino, path.stat().st_size) in synced


def test_a_file_whose_first_line_is_not_json_is_not_appended_to(tmp_path):
    theirs = tmp_path / "log.jsonl"
    theirs.write_text("time,value\n1,2\n")
    with pytest.raises(CtrkitError, match="line 1 is not a ctrkit record"):
        ResultsStore(theirs).append(_run("a"))
    assert theirs.read_text() == "time,value\n1,2\n"


def test_a_store_of_older_records_with_only_a_run_key_is_appended_to(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"run_key": "old", "peer": "M0", "peer_index": 0, "test_auc": 0.7}) + "\n")
    s = ResultsStore(path)
    s.check_usable()
    assert s.append(_run("new")) == 3
    assert [r["run_key"] for r in s.records()] == ["old"] + ["new"] * 3


def test_a_runs_records_come_back_in_peer_order(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    s.append(list(reversed(_run("a"))))
    assert [r["peer_index"] for r in s.run_records("a")] == [0, 1, 2]
    assert s.run_records("missing") is None


def test_records_are_the_callers_own_dicts(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    s.append(_run("a"))
    mine = s.records()
    mine[0]["run_key"] = "changed"
    mine[1].clear()
    assert [r["run_key"] for r in s.records()] == ["a"] * 3 and s.run_keys() == {"a"}


def test_a_last_line_being_written_is_not_a_warning(tmp_path):
    import warnings

    path = tmp_path / "r.jsonl"
    s = ResultsStore(path)
    s.append(_run("a"))
    with open(path, "ab") as f:  # another writer, in the middle of its line
        f.write(b'{"run_key": "b", "peer": "M0", "append_id": "x", "appe')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["run_key"] for r in s.records()] == ["a"] * 3


def test_a_whole_last_record_whose_newline_is_still_coming_is_counted_once(tmp_path):
    path = tmp_path / "r.jsonl"
    s = ResultsStore(path)
    s.append(_run("a"))
    scratch = ResultsStore(tmp_path / "scratch.jsonl")
    scratch.append(_run("b", n=2))
    payload = scratch.path.read_bytes()
    with open(path, "ab") as f:  # a writer of run b with all but its final newline written
        f.write(payload[:-1])
    assert [r["run_key"] for r in s.records()] == ["a"] * 3 + ["b"] * 2
    with open(path, "ab") as f:
        f.write(b"\n")
    assert [r["run_key"] for r in s.records()] == ["a"] * 3 + ["b"] * 2
    assert [r["peer"] for r in s.run_records("b")] == ["M0", "M1"]


def test_a_line_that_is_not_json_is_named_by_its_number_after_earlier_reads(tmp_path):
    path = tmp_path / "r.jsonl"
    s = ResultsStore(path)
    s.append(_run("a"))
    assert len(s.records()) == 3  # parsed up to here: the next read parses only what follows
    with open(path, "ab") as f:
        f.write(b"garbage\n")
    with pytest.raises(CtrkitError, match=r"line 4 is not a JSON record"):
        s.records()


def test_a_fresh_store_rewritten_within_its_timestamps_granularity_is_read_again(tmp_path, monkeypatch):
    import ctrkit.experiments.store as store_mod

    # a file system whose timestamps did not move between two writes (a coarse clock): only the
    # size and the inode tell the versions apart, and a store written just now is not trusted by them
    monkeypatch.setattr(store_mod, "file_stamp", lambda st: (st.st_dev, st.st_ino, st.st_size))
    path = tmp_path / "r.jsonl"
    s = ResultsStore(path)
    s.append(_run("a"))
    assert [r["peer"] for r in s.records()] == ["M0", "M1", "M2"]
    with open(path, "r+b") as f:  # same size, same inode
        raw = f.read()
        f.seek(0)
        f.write(raw.replace(b'"M1"', b'"N1"'))
    assert [r["peer"] for r in s.records()] == ["M0", "N1", "M2"]


def test_check_usable_fails_before_training_on_a_store_with_a_line_that_is_not_json(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultsStore(path).append(_run("a"))
    with open(path, "ab") as f:
        f.write(b"garbage\n")
    with pytest.raises(CtrkitError, match=r"line 4 is not a JSON record"):
        ResultsStore(path).check_usable()


def test_dict_columns_of_the_frame_are_json_with_sorted_keys(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    s.append([dict(r, config={"lr": 1e-3, "batch_size": 64}) for r in _run("a", n=1)])
    s.append([dict(r, config={"batch_size": 64, "lr": 1e-3}) for r in _run("b", n=1)])
    df = s.to_frame()
    assert list(df["config"]) == ['{"batch_size": 64, "lr": 0.001}'] * 2


def test_the_frame_shows_the_core_columns_first_so_an_export_can_be_exported_again(tmp_path):
    from ctrkit.experiments.store import COLUMNS

    s = ResultsStore(tmp_path / "r.jsonl")
    s.append(_run("a", extra_metric=1.5))
    df = s.to_frame()
    assert list(df.columns) == COLUMNS + [c for c in df.columns if c not in COLUMNS] and df.columns[0] == "run_key"
    out = tmp_path / "r.csv"
    s.to_csv(out)
    s.append(_run("b", n=1))
    s.to_csv(out)  # its own earlier export (header from run_key on): replaced
    assert list(read_results(out)["run_key"]) == ["a"] * 3 + ["b"]


def test_numpy_numbers_and_paths_in_a_record_are_stored_as_json_numbers_and_text(tmp_path):
    s = ResultsStore(tmp_path / "r.jsonl")
    s.append([dict(_run("a", n=1)[0], test_auc=np.float64(0.75), epochs=np.int64(3), out=tmp_path / "x")])
    r = s.records()[0]
    assert r["test_auc"] == 0.75 and isinstance(r["test_auc"], float)
    assert r["epochs"] == 3 and isinstance(r["epochs"], int)
    assert r["out"] == str(tmp_path / "x")


# ------------------------------------------------------------------ training.checkpoint

def _best(d, path, **hp):
    """A best.pt of a small DeepFM on `d`, as training writes it; returns the model."""
    from ctrkit.models import build

    model = build("DeepFM", d, **{"embedding_dim": 4, "hidden_units": [8], "net_dropout": 0.5, **hp})
    checkpoint.write_best(path, model, model.state_dict(), data=d, train_config={"lr": 1e-3}, epoch=1,
                          metrics={"valid_auc": 0.7, "valid_logloss": 0.5})
    return model


def _sig(seed=7, fingerprint="fp", layout=None, peer_lr=(1e-3, 1e-3), epochs=2):
    run = {"seed": seed, "lr": 1e-3, "epochs": epochs, "batch_size": 512}
    peers = [(name, {}, {"lr": lr, "seed": seed, "epochs": epochs}) for name, lr in zip(("LR", "FM"), peer_lr)]
    return checkpoint.signature(run, peers, fingerprint, layout)


def _last(path, sig, epoch=1):
    checkpoint.save({"format": checkpoint.LAST_FORMAT, "signature": sig, "epoch": epoch, "peers": []}, path)
    return path


@pytest.mark.parametrize("changed, needle", [
    (dict(seed=8), "seed: 7 -> 8"),
    (dict(fingerprint="other"), "dataset fingerprint: 'fp' -> 'other'"),
    (dict(layout={"world_size": 2}), "layout: {} -> {'world_size': 2}"),
    (dict(peer_lr=(1e-3, 0.1)), "FM lr: 0.001 -> 0.1"),
], ids=["seed", "fingerprint", "layout", "peer_lr"])
def test_a_resume_with_another_seed_dataset_layout_or_peer_setting_is_refused(tmp_path, changed, needle):
    path = _last(tmp_path / "last.pt", _sig())
    with pytest.raises(CtrkitError, match="cannot resume with different settings") as e:
        checkpoint.read_resume([path], _sig(**changed))
    assert needle in str(e.value)
    assert set(checkpoint.read_resume([path], _sig(epochs=5))) == {1}  # training longer is a resume


def test_resume_takes_every_readable_checkpoint_by_epoch_and_skips_a_torn_one(tmp_path):
    newer, older, torn = _last(tmp_path / "a.pt", _sig(), 2), _last(tmp_path / "b.pt", _sig(), 1), tmp_path / "c.pt"
    torn.write_bytes(newer.read_bytes()[:100])
    assert sorted(checkpoint.read_resume([newer, torn, older, tmp_path / "missing.pt"], _sig())) == [1, 2]
    with pytest.raises(CtrkitError, match="unreadable"):
        checkpoint.read_resume([torn], _sig())


def test_a_last_checkpoint_of_another_format_is_not_resumed(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save({"format": "ctrkit-last-1", "signature": _sig(), "epoch": 1, "peers": []}, path)
    with pytest.raises(CtrkitError, match="not a resume checkpoint of this ctrkit version"):
        checkpoint.read_resume([path], _sig())


def test_a_torch_file_without_a_checkpoints_keys_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(CtrkitError, match="not a ctrkit checkpoint"):
        checkpoint.load_checkpoint(path)


class _NotWeights:
    pass


def test_a_checkpoint_pickling_an_object_is_refused_unread(tmp_path):
    path = tmp_path / "best.pt"
    torch.save({"model_name": "LR", "state_dict": {}, "extra": _NotWeights()}, path)
    with pytest.raises(CtrkitError, match="unreadable"):
        checkpoint.load_checkpoint(path)


def test_identity_checks_name_field_sizes_and_hyperparameters(criteo_small, tmp_path):
    path = tmp_path / "best.pt"
    _best(criteo_small, path)
    ck = checkpoint.load_checkpoint(path)
    checkpoint.check_identity(path, ck, fingerprint=criteo_small.fingerprint, field_sizes=criteo_small.field_sizes,
                              model_name="DeepFM", hparams=ck["hparams"])
    with pytest.raises(CtrkitError, match="field sizes"):
        checkpoint.check_identity(path, ck, field_sizes=[s + 1 for s in criteo_small.field_sizes])
    with pytest.raises(CtrkitError, match="holds a DeepFM, not the DCN asked for"):
        checkpoint.check_identity(path, ck, model_name="DCN")
    with pytest.raises(CtrkitError, match=r"hyperparameters differ from the ones asked for \(embedding_dim\)"):
        checkpoint.load_pretrained(path, expect_hparams={**ck["hparams"], "embedding_dim": 8})


def test_a_pretrained_model_comes_back_in_eval_mode_and_its_metadata_is_a_copy(criteo_small, tmp_path):
    path = tmp_path / "best.pt"
    _best(criteo_small, path)
    ck = checkpoint.load_checkpoint(path)
    model, meta = checkpoint.model_from(ck, path)
    assert not model.training and not any(m.training for m in model.modules())
    meta["metrics"]["valid_auc"] = 0.0
    meta["hparams"]["embedding_dim"] = 99
    assert ck["metrics"]["valid_auc"] == 0.7 and ck["hparams"]["embedding_dim"] == 4


def test_a_digest_follows_the_file_and_a_change_is_told_by_size_first(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(b"a" * 100)
    first = checkpoint.digest(path)
    assert checkpoint.changed_since(path, first) is None
    path.write_bytes(b"b" * 100)
    assert checkpoint.digest(path)["sha256"] != first["sha256"]
    assert checkpoint.changed_since(path, first) == "other bytes than written (sha256 differs, same size 100)"
    path.write_bytes(b"b" * 60)
    assert checkpoint.changed_since(path, first) == "60 bytes, not the 100 written"
    path.unlink()
    assert checkpoint.changed_since(path, first) == "missing"


def test_scores_depend_on_the_evaluation_batch_size():
    assert checkpoint.scored_by("cpu", 256) != checkpoint.scored_by("cpu", 512)
    assert checkpoint.scored_by("cpu", 256) == checkpoint.scored_by("cpu", 256)


def test_files_that_merely_resemble_ctrkits_are_not_overwritten(criteo_small, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, folder / "best.pt")  # one key of a best.pt
    with pytest.raises(CtrkitError, match="best.pt exists and was not written by ctrkit"):
        checkpoint.refuse_foreign(folder, ["best.pt"])
    (folder / "best.pt").unlink()
    (folder / "result.json").write_text('{"env": {"python": "3.11"}, "fingerprint": "x"}')  # no history
    with pytest.raises(CtrkitError, match="result.json exists and was not written by ctrkit"):
        checkpoint.refuse_foreign(folder, ["result.json"])
    (folder / "result.json").unlink()
    _best(criteo_small, folder / "best.pt")
    raw = (folder / "best.pt").read_bytes()
    checkpoint.refuse_foreign(folder, ["best.pt"])  # its own: may be replaced
    (folder / "best.pt").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(CtrkitError, match=r"best.pt: unreadable \(truncated or corrupt\), so not provably ctrkit's"):
        checkpoint.refuse_foreign(folder, ["best.pt"])
