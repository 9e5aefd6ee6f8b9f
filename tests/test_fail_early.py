"""Outputs that cannot be written fail before any work, as one `ctrkit: error:` line (exit 2),
with the user's files as they were: a read-only --out or --store, a store whose lock file name is
too long, `prepare --force` through a symbolic link, `synth --rows` beyond its limit.

Permission bits do not stop root: as root the permission tests run the CLI in a subprocess without
the capabilities that override them (setpriv), and skip where that cannot be done."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctrkit import cli
from ctrkit.data import synth
from ctrkit.experiments.store import ResultsStore
from ctrkit.training import loop

# A tiny pretrain (as tests/test_faults.py's): 3 epochs of DeepFM's smoke preset on 4,000 rows.
def _pretrain_args(data, out, *extra):
    return ["pretrain", "--data", str(data.path), "--model", "DeepFM", "--preset", "smoke", "--device", "cpu",
            "--seed", "3", "--epochs", "3", "--set", "patience=3", "--out", str(out), "--json", *extra]


def _main_error(capsys, args) -> str:
    """cli.main in this process: exit 2 and one `ctrkit: error:` line."""
    assert cli.main(args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[-1].startswith("ctrkit: error: ") and "Traceback" not in "\n".join(err), err
    return err[-1]


class _Trained(Exception):
    """Raised by the first training epoch (or synth's first step): the run got past its checks."""


@pytest.fixture
def no_training(monkeypatch):
    """Training an epoch raises _Trained (the failures here must come before it)."""
    def epoch(*_a, **_k):
        raise _Trained()
    monkeypatch.setattr(loop, "_train_epoch", epoch)


# The CLI in a subprocess whose first training epoch prints TRAINED and exits 99.
CHILD = """
import sys
from ctrkit import cli
from ctrkit.data import synth
from ctrkit.training import loop
def epoch(*_a, **_k):
    print("TRAINED", file=sys.stderr)
    sys.exit(99)
loop._train_epoch = epoch
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture
def unprivileged(tmp_path):
    """run(args) -> the CLI in a subprocess where permission bits hold (as root: without the
    capabilities dac_override, dac_read_search, fowner); skips where they cannot be dropped."""
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv is missing: cannot make a folder read-only for ctrkit")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    probe = tmp_path / "probe_ro"
    probe.mkdir()
    probe.chmod(0o555)
    tried = subprocess.run([*prefix, sys.executable, "-c", "import sys; open(sys.argv[1] + '/x', 'w')", str(probe)],
                           capture_output=True, text=True)
    if tried.returncode == 0 or "PermissionError" not in tried.stderr:
        pytest.skip(f"cannot drop the privilege to write in a read-only folder here ({tried.stderr.strip()[-120:]})")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(args) -> str:
        proc = subprocess.run([*prefix, sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                              timeout=300, env=env)
        assert "TRAINED" not in proc.stderr, "trained before failing"
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert lines[-1].startswith("ctrkit: error: "), proc.stderr[-2000:]
        return lines[-1]
    return run


def _read_only(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return folder


def _snapshot(folder: Path) -> dict:
    """Every path under `folder` (links not followed) -> its bytes, link target or None (a folder)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = os.readlink(p) if p.is_symlink() else (None if p.is_dir() else p.read_bytes())
    return out


# ---------------------------------------------------------------- pretrain --out, --store


def test_read_only_out_fails_before_training(criteo_small, tmp_path, unprivileged):
    ro = _read_only(tmp_path / "ro")
    line = unprivileged(_pretrain_args(criteo_small, ro))
    assert f"cannot write in the output folder {ro}" in line and "Permission denied" in line, line
    assert list(ro.iterdir()) == []


def test_out_probe_leaves_nothing(criteo_small, tmp_path, no_training):
    """The writability probe removes its own file; the run then reaches training."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(_Trained):
        cli.main(_pretrain_args(criteo_small, out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_store_in_a_read_only_folder_fails_before_training(criteo_small, tmp_path, unprivileged):
    ro = _read_only(tmp_path / "ro")
    out = tmp_path / "out"
    line = unprivileged(_pretrain_args(criteo_small, out, "--store", str(ro / "s.jsonl")))
    assert f"results store {ro / 's.jsonl'}: cannot write {ro / 's.jsonl.lock'}" in line, line
    assert "Permission denied" in line, line
    assert list(ro.iterdir()) == [] and not (out / "best.pt").exists()
    # its lock file there (an earlier store's, say), but no store yet: the folder must take one
    lock_only = tmp_path / "lock_only"
    lock_only.mkdir()
    (lock_only / "s.jsonl.lock").touch()
    _read_only(lock_only)
    line = unprivileged(_pretrain_args(criteo_small, out, "--store", str(lock_only / "s.jsonl")))
    assert f"results store {lock_only / 's.jsonl'}: cannot write {lock_only} (Permission denied)" in line, line
    assert [p.name for p in lock_only.iterdir()] == ["s.jsonl.lock"] and not (out / "best.pt").exists()


def test_read_only_store_file_fails_before_training(criteo_small, tmp_path, unprivileged):
    """A store of ours whose lock exists (an earlier append) but whose file is read-only: unchanged."""
    store = tmp_path / "s.jsonl"
    ResultsStore(store).append([{"run_key": "earlier", "peer": "FM"}])
    store.chmod(0o444)
    before = _snapshot(tmp_path)
    line = unprivileged(_pretrain_args(criteo_small, tmp_path / "out", "--store", str(store)))
    assert f"results store {store}: cannot write {store}" in line and "Permission denied" in line, line
    assert _snapshot(tmp_path) == before


def test_store_whose_lock_name_is_too_long_fails_before_training(criteo_small, tmp_path, capsys, no_training):
    """251 characters are a valid file name; with `.lock` added (256) they are not."""
    store = tmp_path / ("s" * 245 + ".jsonl")
    line = _main_error(capsys, _pretrain_args(criteo_small, tmp_path / "out", "--store", str(store)))
    assert f"results store {store}: cannot write {store}.lock" in line and "File name too long" in line, line
    assert list(tmp_path.iterdir()) == []
    # mutual too (runs.execute checks its store before it trains)
    line = _main_error(capsys, ["mutual", "--data", str(criteo_small.path), "--peers", "DeepFM,DCN", "--init",
                                "scratch", "--preset", "smoke", "--device", "cpu", "--epochs", "1",
                                "--out", str(tmp_path / "mut"), "--store", str(store)])
    assert f"cannot write {store}.lock" in line and not (tmp_path / "mut" / "result.json").exists()


def test_store_check_leaves_no_empty_store(criteo_small, tmp_path, no_training):
    """The store's append probe creates nothing but the lock file every append keeps; an existing
    store keeps its bytes."""
    new = tmp_path / "new.jsonl"
    with pytest.raises(_Trained):
        cli.main(_pretrain_args(criteo_small, tmp_path / "o1", "--store", str(new)))
    assert not new.exists()
    old = tmp_path / "old.jsonl"
    ResultsStore(old).append([{"run_key": "earlier", "peer": "FM"}])
    before = old.read_bytes()
    with pytest.raises(_Trained):
        cli.main(_pretrain_args(criteo_small, tmp_path / "o2", "--store", str(old)))
    assert old.read_bytes() == before


# ---------------------------------------------------------------- prepare --out through a link


def test_prepare_force_through_a_symlink_is_refused_before_writing(criteo_small, tmp_path, capsys):
    real = tmp_path / "real"
    shutil.copytree(criteo_small.path, real)  # a ctrkit-prepared folder (it carries the marker)
    (tmp_path / "lnk").symlink_to("real")
    before = _snapshot(tmp_path)
    raw = criteo_small.path.parent / "raw" / "train.txt"
    args = ["prepare", "criteo", "--raw", str(raw), "--out", str(tmp_path / "lnk"), "--seed", "5", "--force"]
    line = _main_error(capsys, args)
    assert f"--out {tmp_path / 'lnk'}: is a symbolic link (to real)" in line, line
    assert _snapshot(tmp_path) == before  # the link, its target, and nothing new beside them


# ---------------------------------------------------------------- synth --rows


def test_synth_rows_beyond_the_limit_fail_at_once(tmp_path, capsys, monkeypatch):
    def truth(*_a, **_k):  # the hidden model is drawn first: a run that gets here would write
        raise _Trained()
    monkeypatch.setattr(synth, "_Truth", truth)
    out = tmp_path / "s"
    line = _main_error(capsys, ["synth", "criteo", "--rows", str(10**12), "--out", str(out)])
    assert "--rows 1000000000000: too many" in line and "1,000,000,000" in line, line
    assert not out.exists()


# ---------------------------------------------------------------- the Python API: models and splits

@pytest.mark.parametrize("change", [+50, -1])
def test_fit_refuses_a_model_built_for_other_field_sizes(criteo_small, tmp_path, no_training, change):
    # bigger tables trained silently into a best.pt no model of this data loads; smaller ones hit an index error
    from ctrkit import models
    from ctrkit.core.utils import CtrkitError

    model = models.build("FM", [s + change for s in criteo_small.field_sizes])
    with pytest.raises(CtrkitError, match=r"peer 0 \(FM\) was built for field sizes .*data.field_sizes"):
        loop.fit(model, criteo_small, {"epochs": 1}, out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_one_module_given_as_two_peers_is_refused(criteo_small, no_training):
    from ctrkit import models
    from ctrkit.core.utils import CtrkitError
    from ctrkit.training.mutual import mutual_fit

    m = models.build("FM", criteo_small.field_sizes)
    with pytest.raises(CtrkitError, match=r"peer 1 \(FM\) is the same model object as peer 0 \(FM\)"):
        mutual_fit([m, m], criteo_small, {"peers": [{}, {}], "mode": "mutual", "epochs": 1})


@pytest.mark.parametrize("split,labels,words", [("valid", [], "no rows"), ("test", [0.0] * 5, "all 5 labels are 0"),
                                                ("valid", [1.0] * 3, "all 3 labels are 1")])
def test_a_split_auc_cannot_score_fails_before_training(criteo_small, tmp_path, no_training, split, labels, words):
    # found after every epoch had trained before: "metrics: no samples to score", no split named;
    # `load` takes the folder (`info` shows it)
    import json

    from ctrkit import data
    from ctrkit.core.utils import CtrkitError

    d = tmp_path / "d"
    shutil.copytree(criteo_small.path, d)
    y = np.asarray(labels, dtype=np.load(d / f"{split}_y.npy").dtype)
    X = np.load(d / f"{split}_X.npy")[:len(y)]
    np.save(d / f"{split}_y.npy", y)
    np.save(d / f"{split}_X.npy", X)
    fm = json.loads((d / "feature_map.json").read_text())
    fm["rows"][split] = len(y)
    (d / "feature_map.json").write_text(json.dumps(fm))
    from ctrkit import models

    loaded = data.load(d)
    with pytest.raises(CtrkitError, match=rf"split '{split}': {words}"):
        loop.fit(models.build("FM", loaded.field_sizes), loaded, {"epochs": 1})


# ---------------------------------------------------------------- mutual --preset against the checkpoints'


def test_mutual_with_another_preset_than_the_checkpoints_is_one_line(criteo_small, tmp_path, capsys, monkeypatch):
    """`ctrkit pretrain --preset smoke`, then `ctrkit mutual --preset quick` on that checkpoint: the run
    would record "quick" for a smoke model (a pretrained peer is its checkpoint's model and training
    settings): exit 2 before training, naming the checkpoint, both presets and the flag. The same
    preset passes the check, and so does a checkpoint whose result.json predates the preset field."""
    import json

    ck = tmp_path / "ck"
    assert cli.main(_pretrain_args(criteo_small, ck / "DeepFM", "--epochs", "1")) == 0
    capsys.readouterr()
    monkeypatch.setattr(loop, "_train_epoch", lambda *_a, **_k: (_ for _ in ()).throw(_Trained()))
    mutual = ["mutual", "--data", str(criteo_small.path), "--peers", "DeepFM", "--mode", "alone", "--init",
              "pretrained", "--ckpt-dir", str(ck), "--seed", "3", "--device", "cpu", "--epochs", "1"]
    line = _main_error(capsys, mutual + ["--preset", "quick"])
    assert line == (f"ctrkit: error: checkpoint {ck / 'DeepFM' / 'best.pt'} was pretrained with preset 'smoke', but "
                    f"this run has preset 'quick' (a pretrained peer keeps its checkpoint's model and training "
                    f"settings, and the run records its preset): pass preset='smoke' (--preset smoke), or pretrain "
                    f"it again with preset 'quick'")
    with pytest.raises(_Trained):
        cli.main(mutual + ["--preset", "smoke"])
    rj = ck / "DeepFM" / "result.json"
    rj.write_text(json.dumps({k: v for k, v in json.loads(rj.read_text()).items() if k != "preset"}))
    with pytest.raises(_Trained):  # an older checkpoint: accepted as before
        cli.main(mutual + ["--preset", "quick"])
