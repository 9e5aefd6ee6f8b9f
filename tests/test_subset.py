"""ctrkit.data.subset.train_share: a fixed share of the training rows, the rest of the dataset as it was."""
import json

import numpy as np
import pytest

from ctrkit import data
from ctrkit.core.utils import CtrkitError
from ctrkit.data import outdir
from ctrkit.data.subset import train_share


def test_a_share_keeps_that_many_training_rows_in_order_and_everything_else(criteo_small, tmp_path):
    part = train_share(criteo_small, tmp_path / "q", 0.25)
    X, y = criteo_small.numpy("train")
    Xs, ys = part.numpy("train")
    assert len(Xs) == round(0.25 * len(X)) == part.rows["train"]
    # each kept row is a training row of the full data, in the full data's order, none twice
    where = {r.tobytes(): i for i, r in enumerate(np.column_stack([X, y.view(np.int32)]))}
    idx = [where[r.tobytes()] for r in np.column_stack([Xs, ys.view(np.int32)])]
    assert idx == sorted(set(idx))
    assert idx[-1] > 0.75 * len(X)  # a sample across the split, not its first quarter
    for split in ("valid", "test"):
        for a, b in zip(criteo_small.numpy(split), part.numpy(split)):
            assert np.array_equal(a, b)
    assert part.field_sizes == criteo_small.field_sizes and part.dataset == criteo_small.dataset
    assert part.feature_map["ctr"]["train"] == pytest.approx(float(ys.mean()))
    assert part.feature_map["source"]["train_share"]["of_fingerprint"] == criteo_small.fingerprint


def test_the_same_share_is_the_same_rows_and_fingerprint_and_others_differ(criteo_small, tmp_path):
    a, b = train_share(criteo_small, tmp_path / "a", 0.5), train_share(criteo_small, tmp_path / "b", 0.5)
    assert a.fingerprint == b.fingerprint and np.array_equal(a.numpy("train")[0], b.numpy("train")[0])
    c = train_share(criteo_small, tmp_path / "c", 0.25)
    assert len({a.fingerprint, c.fingerprint, criteo_small.fingerprint}) == 3


def test_a_folder_already_holding_the_share_is_reused_and_another_share_replaces_it(criteo_small, tmp_path):
    out = tmp_path / "q"
    first = train_share(criteo_small, out, 0.25)
    stamp = (out / "train_X.npy").stat().st_mtime_ns
    assert train_share(criteo_small, out, 0.25).fingerprint == first.fingerprint
    assert (out / "train_X.npy").stat().st_mtime_ns == stamp  # not written again
    half = train_share(criteo_small, out, 0.5)
    assert half.rows["train"] == round(0.5 * criteo_small.rows["train"])
    assert json.loads((out / outdir.MARKER).read_text())["fingerprint"] == half.fingerprint


def test_a_folder_ctrkit_prepare_wrote_or_a_users_folder_is_never_replaced(criteo_small, tmp_path):
    prepared = _prepared_copy(tmp_path)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in prepared.iterdir())
    with pytest.raises(CtrkitError, match="holds a dataset `ctrkit prepare` wrote, not a share: give the share a "
                                          "folder of its own"):
        train_share(criteo_small, prepared, 0.5)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in prepared.iterdir()) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(CtrkitError, match="notes.txt"):
        train_share(criteo_small, mine, 0.5)
    assert (mine / "notes.txt").read_text() == "mine"


def _prepared_copy(tmp_path):
    return data.synthetic_dataset("avazu", 1000, tmp_path / "prepared", seed=1).path


@pytest.mark.parametrize("share", [0, -0.5, 1.5, True, "0.5", float("nan")])
def test_a_share_outside_0_to_1_is_one_line_naming_it(criteo_small, tmp_path, share):
    with pytest.raises(CtrkitError, match=r"share .*expected a number in \(0, 1\]"):
        train_share(criteo_small, tmp_path / "q", share)
    assert not (tmp_path / "q").exists()


def test_a_share_inside_its_own_data_is_refused(criteo_small):
    with pytest.raises(CtrkitError, match="--out"):
        train_share(criteo_small, criteo_small.path / "share", 0.5)


def test_info_says_whose_rows_a_share_holds(criteo_small, tmp_path):
    part = train_share(criteo_small, tmp_path / "q", 0.25)
    text = data.format_info(data.info(part))
    assert f"train rows: a fixed 25% sample of {criteo_small.path}'s {criteo_small.rows['train']:,} " \
           f"(fingerprint {criteo_small.fingerprint})" in text
    assert "sample of" not in data.format_info(data.info(criteo_small))


def test_a_share_of_one_label_only_is_refused_before_anything_is_written(criteo_small, tmp_path):
    n = f"{criteo_small.rows['train']:,}"
    with pytest.raises(CtrkitError, match=rf"share 1e-06: keeps 1 of {n} training rows, every label [01]: nothing "
                                          r"to learn; take a larger share"):
        train_share(criteo_small, tmp_path / "q", 1e-6)
    assert not (tmp_path / "q").exists() and not list(tmp_path.iterdir())
