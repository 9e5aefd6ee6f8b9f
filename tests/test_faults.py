"""Faults on the training side, as a user meets them: a full disk, an output through a file, kill -9
at a random moment then the same command again, a checkpoint of the wrong model, two identical
runs at once, garbage files, Ctrl-C. Each is a one-line `ctrkit: error:` (exit 2) or a rerun that
equals the uninterrupted run; nothing of a failed run is recorded."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ctrkit import cli
from ctrkit.experiments import runs
from ctrkit.experiments.store import ResultsStore
from ctrkit.training.loop import RunStopped

CLI = [sys.executable, "-m", "ctrkit.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The process failed the way users are promised: exit 2, one `ctrkit: error:` line, no traceback."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("ctrkit: error: "), proc.stderr[-2000:]
    return lines[-1]


def _pretrain_args(data, out, *extra):
    return ["pretrain", "--data", str(data.path), "--model", "DeepFM", "--preset", "smoke", "--device", "cpu",
            "--seed", "3", "--epochs", "3", "--set", "patience=3", "--out", str(out), "--json", *extra]


def _mutual_args(data, out, store, *extra):
    return ["mutual", "--data", str(data.path), "--peers", "DeepFM,DCN", "--init", "scratch", "--preset", "smoke",
            "--device", "cpu", "--seed", "3", "--epochs", "3", "--set", "patience=3", "--out", str(out),
            "--store", str(store), "--json", *extra]


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture
def small_disk(tmpfs):
    """A 1 MiB tmpfs nearly filled: the next checkpoint does not fit."""
    disk = tmpfs("1m")
    (disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 48 * 1024))
    return disk


# ---------------------------------------------------------------- OS failures


def test_disk_full_is_one_line_and_the_store_stays_as_it_was(criteo_small, small_disk):
    store = small_disk / "store.jsonl"
    ResultsStore(store).append([{"run_key": "earlier", "peer": "FM"}])
    before = store.read_bytes()
    for args in (_pretrain_args(criteo_small, small_disk / "pre", "--store", str(store)),
                 _mutual_args(criteo_small, small_disk / "mut", store)):
        line = _one_error_line(_cli(args))
        assert str(small_disk) in line and "No space left on device" in line, line
        assert store.read_bytes() == before  # nothing of the failed run recorded, the earlier one intact
        assert not list(small_disk.rglob("*.tmp"))  # no half-written temp file left behind


def test_output_through_a_file_fails_before_training(criteo_small, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine\n")
    t0 = time.perf_counter()
    line = _one_error_line(_cli(_pretrain_args(criteo_small, blocker / "run")))
    assert f"cannot create the output folder {blocker / 'run'}" in line
    assert blocker.read_text() == "mine\n"
    line = _one_error_line(_cli(_mutual_args(criteo_small, blocker / "mut", tmp_path / "s.jsonl")))
    assert str(blocker) in line
    assert time.perf_counter() - t0 < 120


def _main_error(capsys, args) -> str:
    """cli.main in this process: exit 2 and one `ctrkit: error:` line."""
    assert cli.main(args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[-1].startswith("ctrkit: error: ") and "Traceback" not in "\n".join(err), err
    return err[-1]


def test_out_of_range_settings_are_one_line_before_training(criteo_small, tmp_path, capsys):
    """Values the old checks let through to numpy, torch or OpenMP (a traceback, a crash, a silent
    default): a seed beyond 64 bits, 100,000 threads, an lr decay that does not lower the lr, batch 0."""
    pre = _pretrain_args(criteo_small, tmp_path / "p")
    mut = _mutual_args(criteo_small, tmp_path / "m", tmp_path / "m.jsonl")
    for args, words in ((pre + ["--seed", str(2**64)], f"seed: expected an integer from 0 to 2**63-1, got {2**64}"),
                        (pre + ["--seeds", f"1,{2**64}"], f"--seeds '1,{2**64}': expected an integer from 0 to 2**63-1"),
                        (pre + ["--seeds", "1,2,1"], "--seeds '1,2,1': 1 is listed twice (each seed runs once)"),
                        (pre + ["--threads", "100000"], "threads: 100000 is more than this machine can use"),
                        (pre + ["--set", "lr_decay=1"], "lr_decay: expected a number in (0, 1)"),
                        (mut + ["--batch-size", "0"], "batch_size: expected an int >= 1, got 0"),
                        (pre + ["--set", "lr=[1"], "--set lr=[1: not a YAML/JSON literal"),
                        (pre + ["--set", "monitor={AUC: .nan}"], "monitor: bad entry 'AUC': nan")):
        assert words in _main_error(capsys, args)
    assert not (tmp_path / "p").exists() and not (tmp_path / "m.jsonl").exists()


def test_another_tools_checkpoint_and_json_under_ctrkits_names_are_not_replaced(criteo_small, tmp_path, capsys):
    """A torch archive or a JSON object is not enough to be ctrkit's: what its pickle or keys say is."""
    import torch

    mine = tmp_path / "mine"
    mine.mkdir()
    torch.save({"w": torch.ones(3)}, mine / "best.pt")  # the user's own weights, saved with torch
    before = (mine / "best.pt").read_bytes()
    assert "best.pt exists and was not written by ctrkit" in _main_error(capsys, _pretrain_args(criteo_small, mine))
    assert (mine / "best.pt").read_bytes() == before
    (mine / "best.pt").unlink()
    (mine / "result.json").write_text('{"history": [0.7, 0.71]}')  # another tool's training log
    assert "result.json exists and was not written by ctrkit" in _main_error(capsys, _pretrain_args(criteo_small, mine))
    assert (mine / "result.json").read_text() == '{"history": [0.7, 0.71]}'
    (mine / "result.json").unlink()
    # a user's file that merely looks like a temporary one stays; ctrkit's own leftover (mkstemp's
    # 8 characters) is removed, as after a kill
    (mine / ".best.pt.backup.tmp").write_text("keep me")
    (mine / ".best.pt.k3x_9q2a.tmp").write_text("a killed writer's")
    assert cli.main(_pretrain_args(criteo_small, mine)) == 0
    assert (mine / ".best.pt.backup.tmp").read_text() == "keep me" and not (mine / ".best.pt.k3x_9q2a.tmp").exists()
    # what ctrkit wrote there is its own: the same --out again replaces it
    assert cli.main(_pretrain_args(criteo_small, mine, "--set", "lr=0.002")) == 0
    # ... and so is an older version's resume checkpoint (a mutual run's format before 97acdfc)
    torch.save({"format": "ctrkit-mutual-last-1", "epoch": 1}, mine / "last.pt")
    assert cli.main(_pretrain_args(criteo_small, mine)) == 0  # a fresh start replaces it


def test_peers_may_have_a_space_after_the_comma(criteo_small, tmp_path, capsys):
    args = _mutual_args(criteo_small, tmp_path / "m", tmp_path / "m.jsonl", "--epochs", "1")
    args[args.index("--peers") + 1] = "DeepFM, DCN"
    assert cli.main(args) == 0
    assert [p["label"] for p in _last_json(capsys.readouterr().out)["peers"]] == ["DeepFM", "DCN"]


def test_files_ctrkit_did_not_write_are_neither_appended_to_nor_overwritten(criteo_small, tmp_path, capsys):
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    line = _main_error(capsys, _pretrain_args(criteo_small, tmp_path / "p", "--store", str(notes)))
    assert "not a ctrkit results store" in line and notes.read_text() == "# my notes\n"
    assert not (tmp_path / "p").exists()  # found before training, not after
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "best.pt").write_text("my own weights\n")
    line = _main_error(capsys, _pretrain_args(criteo_small, mine))
    assert f"{mine / 'best.pt'} exists and was not written by ctrkit" in line
    assert (mine / "best.pt").read_text() == "my own weights\n"
    (tmp_path / "dir" / "last.pt").mkdir(parents=True)  # found before training, not at the first save
    line = _main_error(capsys, _pretrain_args(criteo_small, tmp_path / "dir", "--resume"))
    assert "last.pt exists and was not written by ctrkit" in line
    # ctrkit's own files in that folder are replaced as before (another setting, the same --out)
    assert cli.main(_pretrain_args(criteo_small, tmp_path / "again")) == 0
    assert cli.main(_pretrain_args(criteo_small, tmp_path / "again", "--set", "lr=0.002")) == 0
    # ... but not another model's checkpoint: a mistyped --out loses no pretraining
    before = (tmp_path / "again" / "best.pt").read_bytes()
    line = _main_error(capsys, _pretrain_args(criteo_small, tmp_path / "again", "--model", "DCN"))  # the last --model
    assert "holds a DeepFM checkpoint of criteo" in line and "not DCN of criteo" in line
    assert (tmp_path / "again" / "best.pt").read_bytes() == before
    # a result.json copied without its checkpoint is not a finished run: --resume trains
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tmp_path / "again" / "result.json", copy / "result.json")
    capsys.readouterr()
    assert cli.main(_pretrain_args(criteo_small, copy, "--set", "lr=0.002", "--resume")) == 0
    assert (copy / "best.pt").is_file() and _last_json(capsys.readouterr().out)["checkpoint"] == str(copy / "best.pt")


def test_stores_that_are_not_stores_are_one_line(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "is not a regular file" in _main_error(capsys, ["table", "finetune", "--store", str(fifo)])
    (tmp_path / "empty.csv").write_text("")
    assert "not a readable CSV" in _main_error(capsys, ["table", "finetune", "--store", str(tmp_path / "empty.csv")])
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert "not a ctrkit results export" in _main_error(capsys, ["table", "finetune", "--store",
                                                                 str(tmp_path / "other.csv")])


def test_a_warning_is_one_line(tmp_path):
    """A torn line in the store (a writer killed mid-line) is skipped with one warning line."""
    store = ResultsStore(tmp_path / "s.jsonl")
    store.append([{"run_key": "a", "peer": "FM"}])
    with open(store.path, "a") as f:
        f.write('{"run_key": "torn", "pe\n')
    store.append([{"run_key": "b", "peer": "FM"}])
    p = _cli(["table", "finetune", "--store", str(store.path)])
    assert p.returncode == 0, p.stderr
    # the warning once, in one line (the store is read again for the empty table's reason, which follows)
    assert p.stderr.splitlines() == [f"ctrkit: warning: results store {store.path}: skipped 1 unreadable line(s) "
                                     f"(left by a writer that was killed mid-write)",
                                     "ctrkit: no `finetune` rows: the store has no mutual runs from pretrained peers"]


def test_json_to_a_full_disk_and_out_of_memory_are_one_line(criteo_small, monkeypatch, capsys):
    with open("/dev/full", "w") as full:
        p = subprocess.run([*CLI, "info", str(criteo_small.path), "--json"], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=120, env=ENV)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "No space left on device" in p.stderr
    for error in (MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                              "111200000000 bytes")):
        def boom(args, error=error):
            raise error
        monkeypatch.setitem(cli.COMMANDS, "info", boom)
        assert "out of memory" in _main_error(capsys, ["info", str(criteo_small.path)])
    monkeypatch.setitem(cli.COMMANDS, "info", lambda args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError is a bug to see, not to hide
        cli.main(["info", str(criteo_small.path)])


# ---------------------------------------------------------------- kill -9, then the same command


def _kill_at_random(args, seconds: float, rng: random.Random, env=ENV) -> float:
    """Start the command, SIGKILL it at a random moment within `seconds`; return the moment."""
    at = rng.uniform(0.3, 1.0) * seconds
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        proc.wait(timeout=at)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return at


@pytest.mark.parametrize("kind", ["pretrain", "mutual"])
def test_kill_9_at_a_random_point_then_rerun_equals_the_uninterrupted_run(criteo_small, tmp_path, kind):
    rng = random.Random(f"kill-{kind}")  # a different moment per command, the same in every CI run
    make = (lambda out: _pretrain_args(criteo_small, out)) if kind == "pretrain" else \
        (lambda out: _mutual_args(criteo_small, out, tmp_path / f"{out.name}.jsonl"))
    t0 = time.perf_counter()
    whole = _cli(make(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    seconds = time.perf_counter() - t0
    ref = _last_json(whole.stdout)
    for attempt in range(2):
        out = tmp_path / f"cut{attempt}"
        _kill_at_random(make(out), seconds, rng)
        again = _cli(make(out) + (["--resume"] if kind == "pretrain" else []))
        assert again.returncode == 0, again.stderr[-2000:]
        got = _last_json(again.stdout)
        if kind == "pretrain":
            assert (got["test_auc"], got["test_logloss"], got["epochs"]) == (ref["test_auc"], ref["test_logloss"],
                                                                             ref["epochs"])
        else:
            assert [(p["test_auc"], p["test_logloss"]) for p in got["peers"]] == \
                   [(p["test_auc"], p["test_logloss"]) for p in ref["peers"]]
            assert len(ResultsStore(tmp_path / f"{out.name}.jsonl").records()) == 2  # one run, recorded once
        assert not list(out.rglob("*.tmp"))


def test_a_killed_writers_temp_checkpoint_is_removed_by_the_next_run(criteo_small, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.pt.abc123xy.tmp"  # what utils.atomic_path (mkstemp) leaves when killed mid-write
    stale.write_bytes(b"\0" * 1000)
    proc = _cli(_pretrain_args(criteo_small, out, "--epochs", "1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not stale.exists() and (out / "best.pt").is_file()


# ---------------------------------------------------------------- wrong inputs


@pytest.fixture(scope="module")
def deepfm_dir(criteo_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "DeepFM"
    proc = _cli(_pretrain_args(criteo_small, out, "--epochs", "1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_checkpoint_of_another_model_is_refused(criteo_small, deepfm_dir, tmp_path):
    ck = tmp_path / "ck"
    (ck / "DCN").mkdir(parents=True)
    shutil.copy(deepfm_dir / "best.pt", ck / "DCN" / "best.pt")  # a DeepFM where the DCN should be
    shutil.copytree(deepfm_dir, ck / "DeepFM")
    line = _one_error_line(_cli(["mutual", "--data", str(criteo_small.path), "--peers", "DeepFM,DCN", "--init",
                                 "pretrained", "--ckpt-dir", str(ck), "--device", "cpu", "--preset", "smoke"]))
    assert "DCN/best.pt holds a DeepFM, not the DCN asked for" in line


def test_a_pretraining_that_did_not_finish_is_not_finetuned_from(criteo_small, deepfm_dir, tmp_path):
    """A killed `pretrain` leaves best.pt (a few epochs' model) and last.pt, not result.json."""
    ck = tmp_path / "ck"
    shutil.copytree(deepfm_dir, ck / "DeepFM")
    assert (ck / "DeepFM" / "last.pt").is_file()
    (ck / "DeepFM" / "result.json").unlink()
    line = _one_error_line(_cli(["mutual", "--data", str(criteo_small.path), "--peers", "DeepFM,DCN", "--init",
                                 "pretrained", "--ckpt-dir", str(ck), "--device", "cpu", "--preset", "smoke"]))
    assert "DeepFM/best.pt: its pretraining did not finish" in line and f"--out {ck / 'DeepFM'} --resume" in line


def test_garbage_checkpoint_and_store_and_infinite_settings_are_one_line(criteo_small, deepfm_dir, tmp_path):
    ck = tmp_path / "ck"
    (ck / "DeepFM").mkdir(parents=True)
    (ck / "DCN").mkdir()
    (ck / "DeepFM" / "best.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint at all" * 50)
    shutil.copy(deepfm_dir / "best.pt", ck / "DCN" / "best.pt")
    line = _one_error_line(_cli(["mutual", "--data", str(criteo_small.path), "--peers", "DeepFM,DCN", "--init",
                                 "pretrained", "--ckpt-dir", str(ck), "--device", "cpu"]))
    assert "DeepFM/best.pt: unreadable (truncated or corrupt)" in line and "weights_only" not in line
    garbage = tmp_path / "store.jsonl"
    garbage.write_text("model,auc\nDeepFM,0.8\n")
    line = _one_error_line(_cli(["table", "finetune", "--store", str(garbage)]))
    assert "line 1 is not a JSON record" in line
    line = _one_error_line(_cli(_pretrain_args(criteo_small, tmp_path / "inf", "--set", "lr=inf")))
    assert "lr: expected a finite number > 0" in line
    line = _one_error_line(_cli(_mutual_args(criteo_small, tmp_path / "w", tmp_path / "w.jsonl", "--weight", "inf")))
    assert "weight must be >= 0 and finite" in line


# ---------------------------------------------------------------- concurrency, stopping, Ctrl-C


def test_identical_runs_started_together_train_once(criteo_small, tmp_path):
    store = tmp_path / "s.jsonl"
    args = _mutual_args(criteo_small, tmp_path / "unused", store, "--epochs", "1")
    procs = [subprocess.Popen([*CLI, *args[:args.index("--out")], *args[args.index("--out") + 2:]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-1500:] for _, e in outs]
    skipped = sorted(_last_json(o)["skipped"] for o, _ in outs)
    assert skipped == [False, True]
    recs = ResultsStore(store).records(latest_only=False)
    assert len(recs) == 2 and len({r["append_id"] for r in recs}) == 1


def test_stop_ends_the_run_after_a_step_and_records_nothing(criteo_small, tmp_path):
    store = tmp_path / "s.jsonl"
    steps = []
    stop = threading.Event()

    def on_step():  # a Stop button pressed during epoch 1
        steps.append(1)
        if len(steps) == 3:
            stop.set()
        return stop.is_set()

    spec = runs.RunSpec(peers=("DeepFM", "DCN"), preset="smoke", epochs=2, device="cpu", progress=False)
    with pytest.raises(RunStopped, match="stopped by request in epoch 1 after step 3"):
        runs.execute(spec, criteo_small, store=store, out_dir=tmp_path / "run", stop=on_step)
    assert not store.exists() or ResultsStore(store).records() == []
    assert not (tmp_path / "run" / "result.json").exists()


def test_ctrl_c_is_one_line_and_importing_the_cli_loads_nothing_heavy(criteo_small, monkeypatch, capsys):
    probe = subprocess.run([sys.executable, "-c", "import sys, ctrkit.cli; print('torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "False"  # so Ctrl-C while torch loads lands in main()'s handler

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "execute", interrupted)
    assert cli.main(["mutual", "--data", str(criteo_small.path), "--peers", "DeepFM,DCN", "--init", "scratch"]) == 130
    assert capsys.readouterr().err.strip() == "ctrkit: interrupted"


def test_a_reader_that_goes_away_ends_the_command_quietly(criteo_small):
    """`ctrkit info DIR | head -1`: the closed pipe is exit 141 with nothing on stderr, not an OS error."""
    code = ("import sys, ctrkit.cli as c\n"
            "def gone(args):\n    print('x' * 200000)\n    sys.stdout.flush()\n"
            "c.COMMANDS['info'] = gone\nsys.exit(c.main(['info', sys.argv[1]]))")
    p = subprocess.Popen([sys.executable, "-c", code, str(criteo_small.path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()  # the reader goes away before the writer is done
    assert p.wait(timeout=120) == 141
    assert p.stderr.read() == b""


def _tables(out: Path) -> dict:
    """Every table of a reproduce run, without columns of wall time (the only thing allowed to differ)
    and without run keys (identifiers, not results: a pretrained run's key holds its checkpoint
    folder, which is inside the run's --out, so two output folders give two sets of keys)."""
    import pandas as pd

    got = {}
    for csv in sorted((out / "tables").glob("*.csv")):
        df = pd.read_csv(csv)
        got[csv.name] = df[[c for c in df.columns if "second" not in c and "time" not in c
                            and not c.startswith("run_key")]]
    return got


def test_reproduce_killed_at_a_random_point_then_rerun_equals_the_uninterrupted_run(tmp_path):
    args = ["reproduce", "--profile", "smoke", "--dataset", "criteo", "--device", "cpu"]
    t0 = time.perf_counter()
    whole = _cli([*args, "--out", str(tmp_path / "whole")], timeout=1500)
    assert whole.returncode == 0, whole.stderr[-3000:]
    seconds = time.perf_counter() - t0
    cut = tmp_path / "cut"
    # TMPDIR: a killed runner cannot remove its kernel's socket folder
    _kill_at_random([*args, "--out", str(cut)], seconds, random.Random("kill-reproduce"), {**ENV, "TMPDIR": str(tmp_path)})
    again = _cli([*args, "--out", str(cut)], timeout=1500)
    assert again.returncode == 0, again.stderr[-3000:]
    ref, got = _tables(tmp_path / "whole"), _tables(cut)
    assert ref.keys() == got.keys() and len(ref) >= 10
    for name in ref:
        assert ref[name].equals(got[name]), name


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_of_a_parallel_reproduce_is_one_line(tmp_path, sig, code, word):
    """Ctrl-C reaches the terminal's whole process group: the runner and its notebook workers. The
    runner says `ctrkit: interrupted` (exit 130); a worker's interrupted cell is no traceback. A
    SIGTERM to the group (`kill`, a scheduler's stop) the same: `ctrkit: terminated`, exit 143, and
    no multiprocessing warning of leaked semaphores from workers that died without cleaning up."""
    args = ["reproduce", "--profile", "smoke", "--device", "cpu", "--jobs", "2", "--out", str(tmp_path / "out")]
    # SIGINT as a shell's foreground job gets it (a background job of a script would ignore it)
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "TMPDIR": str(tmp_path)}, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stdout:  # interrupt once both workers are inside a training notebook's cells
        seen.append(line)
        if sum("_01_baselines ..." in ln for ln in seen) == 2:
            time.sleep(3)
            break
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-3000:]
    assert err.strip().splitlines() == [f"ctrkit: {word}"], err[-3000:]
    assert "Traceback" not in out and "Task exception" not in out, out[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_notebook_worker_logs_nothing_more(sig):
    """A reproduce worker (`runner._notebook_worker`) that gets Ctrl-C or SIGTERM ends as a KeyboardInterrupt
    and then logs nothing: its kernel got the signal too and may have died, and nbclient's "Kernel died"
    line or asyncio's traceback of the cell would otherwise print beside the runner's one line."""
    script = textwrap.dedent(f"""
        import logging, os, sys, time
        from ctrkit.notebook import runner
        runner._notebook_worker(os.getppid())
        logging.basicConfig()  # a handler on stderr, as nbclient's logger has
        try:
            os.kill(os.getpid(), {int(sig)})
            time.sleep(30)
        except KeyboardInterrupt:
            logging.getLogger("nbclient").error("Kernel died while waiting for execute reply.")
            sys.exit(0)
        sys.exit(3)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
