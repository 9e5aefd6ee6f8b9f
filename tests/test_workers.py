"""Run-level worker processes (ctrkit.experiments.workers): a grid's runs and baselines spread over
processes give exactly the records of the same grid run one after another (same seed, one thread:
the same numbers), a partial store resumes without re-running what it holds, a failing run in a
worker is one CtrkitError naming it, and bad `workers` values are rejected."""
import json
import os

import pytest
import torch

from ctrkit import data as ctrdata
from ctrkit import experiments
from ctrkit.core.utils import CtrkitError, _usable_cores
from ctrkit.experiments import runs, workers

# what differs between two executions of the same run: wall time, machine, when and where it was written
VOLATILE = {"seconds", "env_info", "append_id", "written_at", "checkpoint"}
RUN = dict(inits=["scratch"], modes=["mutual", "alone"], preset="smoke", epochs=2, device="cpu", threads=1,
           progress=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return ctrdata.synthetic_dataset("criteo", 1000, tmp_path_factory.mktemp("workers_data"), seed=2021)


def _stored(path):
    """The store's records in its order, without the volatile fields."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def test_run_with_workers_equals_sequential(small, tmp_path):
    seeds = [1, 2, 3]
    experiments.run(small, [["DeepFM", "DCN"]], seeds=seeds, store=tmp_path / "one.jsonl", **RUN)
    experiments.run(small, [["DeepFM", "DCN"]], seeds=seeds, store=tmp_path / "two.jsonl", workers=2, **RUN)
    one, two = _stored(tmp_path / "one.jsonl"), _stored(tmp_path / "two.jsonl")
    assert len(one) == 2 * 2 * len(seeds)  # 2 modes x 3 seeds, 2 peers each
    assert two == one  # exactly, in the same order: AUCs, loglosses, best epochs, epochs run, configs
    assert len({r["test_auc"] for r in one}) > len(seeds)  # different seeds, different numbers


def test_execute_many_with_workers_equal_records_and_predictions(small, tmp_path):
    """`runs.execute_many` returns the same records in spec order, and the test predictions saved
    beside each store are equal byte for byte."""
    specs = [runs.RunSpec(peers=("DeepFM",), mode="alone", init="scratch", seed=s, preset="smoke", epochs=2,
                          device="cpu", threads=1, progress=False) for s in (4, 5)]
    a, _ = runs.execute_many(specs, small, store=tmp_path / "a" / "s.jsonl")
    b, skipped = runs.execute_many(specs, small, store=tmp_path / "b" / "s.jsonl", workers=2)
    assert skipped == [False, False]
    strip = lambda recs: [[{k: v for k, v in r.items() if k not in VOLATILE} for r in rs] for rs in recs]  # noqa: E731
    assert strip(a) == strip(b)
    pa = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.npy"))
    pb = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.npy"))
    assert pa == pb and pa
    for p in pa:
        assert (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes()


def test_workers_append_in_spec_order(small, tmp_path):
    """A slow first run and fast later ones: the later ones finish first on the other worker, yet the
    store holds the runs in the specs' order, as the sequential path writes them (some tables sum
    over the store's rows in order)."""
    slow = runs.RunSpec(peers=("DeepFM", "DCN", "PNN"), mode="mutual", init="scratch", seed=1, preset="smoke",
                        epochs=4, overrides={"patience": 10}, device="cpu", threads=1, progress=False)
    fast = [runs.RunSpec(peers=("DeepFM",), mode="alone", init="scratch", seed=s, preset="smoke", epochs=1,
                         device="cpu", threads=1, progress=False) for s in (2, 3, 4)]
    specs = [slow, *fast]
    runs.execute_many(specs, small, store=tmp_path / "s.jsonl", workers=2)
    keys = [r["run_key"] for r in _stored(tmp_path / "s.jsonl")]
    assert keys == [k for spec in specs for k in [spec.key(small.fingerprint)] * len(spec.peers)]


def test_pretrain_baselines_with_workers_equals_sequential(small, tmp_path):
    kw = dict(seeds=[1, 2], preset="smoke", epochs=2, device="cpu", threads=1, progress=False)
    experiments.pretrain_baselines(small, ["DeepFM", "DCN"], tmp_path / "c1", store=tmp_path / "one.jsonl", **kw)
    df = experiments.pretrain_baselines(small, ["DeepFM", "DCN"], tmp_path / "c2", store=tmp_path / "two.jsonl",
                                        workers=2, **kw)
    assert _stored(tmp_path / "two.jsonl") == _stored(tmp_path / "one.jsonl")
    assert list(zip(df["seed"], df["peer"])) == [(1, "DeepFM"), (1, "DCN"), (2, "DeepFM"), (2, "DCN")]
    assert all((tmp_path / "c2" / f"seed{s}" / m / "best.pt").is_file() for s in (1, 2) for m in ("DeepFM", "DCN"))


def test_baselines_start_longest_first_yet_are_recorded_in_grid_order(small, tmp_path):
    """FiBiNET's seeds (the most work per sample) start first on the workers and finish last; this
    process still appends every record in the grid's order, so the store equals the sequential one."""
    kw = dict(seeds=[1, 2], preset="smoke", epochs=2, device="cpu", threads=1, progress=False)
    specs = [[runs.PretrainSpec(model=m, seed=s, preset="smoke")] for m in ("DeepFM", "FiBiNET", "DCN") for s in (1, 2)]
    before = torch.get_rng_state()
    work = [runs._pretrain_work(g, small) for g in specs]
    assert runs._longest_first(work, small) == [2, 3, 4, 5, 0, 1]  # FiBiNET, DCN, DeepFM; ties keep their order
    assert torch.equal(torch.get_rng_state(), before)  # building the models to count drew nothing
    experiments.pretrain_baselines(small, ["DeepFM", "FiBiNET"], tmp_path / "c1", store=tmp_path / "one.jsonl", **kw)
    experiments.pretrain_baselines(small, ["DeepFM", "FiBiNET"], tmp_path / "c2", store=tmp_path / "two.jsonl",
                                   workers=2, **kw)
    one = _stored(tmp_path / "one.jsonl")
    assert [r["peer"] for r in one] == ["DeepFM", "DeepFM", "FiBiNET", "FiBiNET"]
    assert _stored(tmp_path / "two.jsonl") == one


def test_a_failing_baseline_records_no_later_group_and_the_rerun_completes_the_grid(small, tmp_path):
    """A broken resume checkpoint fails DCN's first seed (started first: most FLOPs): one line naming
    it; the store holds at most a prefix of the grid's records; once the file is gone the same call
    ends with the sequential store."""
    kw = dict(seeds=[1, 2], preset="smoke", epochs=1, device="cpu", threads=1, progress=False)
    experiments.pretrain_baselines(small, ["DeepFM", "DCN"], tmp_path / "c1", store=tmp_path / "one.jsonl", **kw)
    bad = tmp_path / "c2" / "seed1" / "DCN" / "last.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CtrkitError) as err:
        experiments.pretrain_baselines(small, ["DeepFM", "DCN"], tmp_path / "c2", store=tmp_path / "two.jsonl",
                                       workers=2, **kw)
    assert "\n" not in str(err.value) and str(err.value).startswith("baseline DCN seed 1 failed in a worker process")
    one = _stored(tmp_path / "one.jsonl")
    part = _stored(tmp_path / "two.jsonl") if (tmp_path / "two.jsonl").exists() else []
    assert part == one[:len(part)] and len(part) <= 2  # DeepFM's seeds at most, in order
    bad.unlink()
    experiments.pretrain_baselines(small, ["DeepFM", "DCN"], tmp_path / "c2", store=tmp_path / "two.jsonl",
                                   workers=2, **kw)
    assert _stored(tmp_path / "two.jsonl") == one


def test_run_jobs_starts_jobs_in_the_order_given(small):
    """`first` is the order jobs start in (one worker runs them one by one), yet each result comes
    back under its own index; `InOrder` hands results on in index order however they arrive."""
    got = dict(workers.run_jobs(_clock, [(k,) for k in range(4)], small, 1, names=["probe"] * 4, first=[2, 0, 3, 1]))
    assert sorted(got) == [0, 1, 2, 3] and all(got[k][0] == k for k in got)
    assert sorted(got, key=lambda k: got[k][1]) == [2, 0, 3, 1]
    with pytest.raises(ValueError, match="every job index once"):
        list(workers.run_jobs(_clock, [(0,), (1,)], small, 1, names=["probe"] * 2, first=[1, 1]))
    due = workers.InOrder()
    assert due.put(2, "c") == [] and due.put(0, "a") == [(0, "a")] and due.put(1, "b") == [(1, "b"), (2, "c")]
    workers.shutdown()


def test_a_finished_run_stays_claimed_until_the_parent_records_it(small, tmp_path):
    """Job 1 claims a run and finishes at once; job 0 takes a while (3 s: the second worker starts well
    within it). Job 1's worker goes on without waiting for its turn, yet the run stays claimed while
    job 0 is recorded (an identical run elsewhere would wait, then find it in the store), and is freed
    once job 1 is recorded."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(tmp_path / "s.jsonl.locks" / "R.lock"))

    def free(timeout):
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            return False
        lock.release()
        return True

    seen = []
    record = lambda i, value: seen.append((i, "free" if free(0) else "held"))  # noqa: E731

    got = dict(workers.run_jobs(_claim_or_sleep, [(None, 3.0), (str(tmp_path / "s.jsonl"), 0)], small, 2,
                                names=["probe"] * 2, record=record))
    assert sorted(got) == [0, 1]
    assert got[1] < got[0]  # job 1 finished first, and did not wait for job 0 to be recorded
    assert seen == [(0, "held"), (1, "held")]  # recorded in order, the run claimed meanwhile
    assert free(10)  # then its worker frees it
    workers.shutdown()


def test_mutual_runs_start_longest_first_yet_are_recorded_in_grid_order(small, tmp_path):
    """The runs with FiBiNET among the peers (the most work per sample) start first on the workers;
    the store still gets the grid's order, that of the sequential path."""
    kw = dict(init="scratch", preset="smoke", epochs=1, device="cpu", threads=1, progress=False)
    specs = [runs.RunSpec(peers=("DeepFM",), mode="alone", seed=1, **kw),
             runs.RunSpec(peers=("DeepFM", "FiBiNET"), seed=1, **kw),
             runs.RunSpec(peers=("DCN", "PNN"), seed=1, **kw)]
    assert runs._longest_first([runs._run_work([s], small) for s in specs], small) == [1, 2, 0]
    runs.execute_many(specs, small, store=tmp_path / "one.jsonl")
    runs.execute_many(specs, small, store=tmp_path / "two.jsonl", workers=2)
    assert _stored(tmp_path / "two.jsonl") == _stored(tmp_path / "one.jsonl")


def _claim_or_sleep(data, store, wait):
    """A probe job: sleep `wait` s; with a store, claim run "R" in it and hold the claim for the parent."""
    import contextlib
    import time

    from ctrkit.experiments.store import ResultsStore

    time.sleep(wait)
    if store is not None:
        with contextlib.ExitStack() as claims:
            claims.enter_context(ResultsStore(store).claim("R"))
            workers.hold_until_recorded(claims.pop_all())
    return time.monotonic_ns()


def _clock(data, k):
    import time

    return k, time.monotonic_ns()


def test_per_model_overrides_replace_the_shared_ones(small, tmp_path):
    df = experiments.pretrain_baselines(small, ["DeepFM", "DCN"], tmp_path / "ck", seeds=[1], preset="smoke", epochs=1,
                                        overrides={"embedding_dim": 3}, per_model={"DCN": {"embedding_dim": 2}},
                                        device="cpu", threads=1, progress=False)
    dims = {r.peer: json.loads(r.config)["model"]["embedding_dim"] for r in df.itertuples()}
    assert dims == {"DeepFM": 3, "DCN": 2}
    with pytest.raises(CtrkitError, match=r"^per_model names \['PNN'\], which are not among the models"):
        experiments.pretrain_baselines(small, ["DeepFM"], tmp_path / "ck2", seeds=[1], per_model={"PNN": {}},
                                       preset="smoke", device="cpu", threads=1, progress=False)


def test_partial_store_resumes_without_rerunning(small, tmp_path):
    """A store that holds some of the grid's runs (a killed reproduction): workers=2 trains only the
    others, leaves the stored ones as they were, and ends with the sequential grid's records."""
    grid = dict(seeds=[1, 2, 3], **{**RUN, "modes": ["alone"]})
    experiments.run(small, [["DeepFM"]], store=tmp_path / "full.jsonl", **grid)
    lines = (tmp_path / "full.jsonl").read_text().splitlines()
    (tmp_path / "part.jsonl").write_text(lines[0] + "\n")  # only the first run was recorded
    experiments.run(small, [["DeepFM"]], store=tmp_path / "part.jsonl", workers=2, **grid)
    after = (tmp_path / "part.jsonl").read_text().splitlines()
    assert after[0] == lines[0] and len(after) == len(lines)  # kept, not re-run or appended again
    assert _stored(tmp_path / "part.jsonl") == _stored(tmp_path / "full.jsonl")
    again = (tmp_path / "part.jsonl").read_text()
    experiments.run(small, [["DeepFM"]], store=tmp_path / "part.jsonl", workers=2, **grid)  # all stored: no pool
    assert (tmp_path / "part.jsonl").read_text() == again


def test_failing_run_in_worker_is_one_line_error(small, tmp_path):
    for seed in (1, 2):
        bad = runs.checkpoint_path(tmp_path / "ck" / f"seed{seed}", "DeepFM")
        bad.parent.mkdir(parents=True)
        bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CtrkitError) as err:
        experiments.run(small, [["DeepFM"]], inits=["pretrained"], modes=["alone"], seeds=[1, 2],
                        ckpt_dir=tmp_path / "ck", preset="smoke", device="cpu", threads=1, progress=False,
                        store=tmp_path / "s.jsonl", workers=2)
    msg = str(err.value)
    assert "\n" not in msg and "failed in a worker process" in msg
    # both seeds fail at once: the error names the one whose failure came back first
    assert "DeepFM" in msg and "alone" in msg and ("seed 1" in msg or "seed 2" in msg) and "best.pt" in msg
    assert not (tmp_path / "s.jsonl").exists() or not (tmp_path / "s.jsonl").read_text().strip()


def _pid(data, fail=False):
    if fail:
        raise ValueError("told to fail")
    return os.getpid(), data.fingerprint


def _pool_pids() -> set:
    """The warm pool's worker processes (the executor's own table)."""
    return set(workers._WARM[1]._processes)


def test_the_pool_stays_warm_for_the_next_grid_on_the_same_data_and_ends_on_failure(small, tmp_path):
    first = dict(workers.run_jobs(_pid, [()] * 4, small, 2, names=["probe"] * 4))
    pids = _pool_pids()
    assert {pid for pid, _ in first.values()} <= pids and len(pids) == 2
    assert len(first) == 4 and os.getpid() not in pids and {fp for _, fp in first.values()} == {small.fingerprint}
    again = dict(workers.run_jobs(_pid, [()] * 4, small, 2, names=["probe"] * 4))
    assert {pid for pid, _ in again.values()} <= pids  # the same processes: no new start, no new load
    with pytest.raises(CtrkitError, match="^probe 1 failed in a worker process: ValueError: told to fail$"):
        list(workers.run_jobs(_pid, [(), (True,)], small, 2, names=["probe 0", "probe 1"]))
    assert workers._WARM is None  # a failure ends the pool ...
    after = dict(workers.run_jobs(_pid, [()] * 2, small, 2, names=["probe"] * 2))
    assert not {pid for pid, _ in after.values()} & pids  # ... and the next grid starts new workers
    other = ctrdata.synthetic_dataset("criteo", 600, tmp_path / "other", seed=7)
    moved = dict(workers.run_jobs(_pid, [()] * 2, other, 2, names=["probe"] * 2))
    assert {fp for _, fp in moved.values()} == {other.fingerprint} != {small.fingerprint}  # other data: other pool
    workers.shutdown()
    assert workers._WARM is None


def test_an_interrupt_of_the_process_group_leaves_idle_warm_workers_quiet_and_alive(small, capfd):
    """Ctrl-C, or a Jupyter kernel's interrupt at shutdown, signals the whole process group: an idle
    warm worker neither prints a traceback nor dies (the parent ends the pool when it is interrupted)."""
    import signal
    import time

    dict(workers.run_jobs(_pid, [()] * 4, small, 2, names=["probe"] * 4))
    pids = _pool_pids()  # both workers (one may have run no job: the other took them all)
    capfd.readouterr()
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    again = dict(workers.run_jobs(_pid, [()] * 4, small, 2, names=["probe"] * 4))
    assert {pid for pid, _ in again.values()} <= pids
    assert "KeyboardInterrupt" not in capfd.readouterr().err
    workers.shutdown()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True, None])
def test_bad_workers_rejected(small, tmp_path, bad):
    with pytest.raises(CtrkitError, match=r"^workers must be a positive int or 'auto'"):
        experiments.run(small, [["DeepFM"]], seeds=[1, 2], store=tmp_path / "s.jsonl", workers=bad,
                        **{**RUN, "modes": ["alone"]})
    with pytest.raises(CtrkitError, match=r"^workers must be"):
        experiments.pretrain_baselines(small, ["DeepFM"], tmp_path / "ck", seeds=[1, 2], workers=bad, preset="smoke",
                                       device="cpu", threads=1, progress=False)
    assert not (tmp_path / "s.jsonl").exists()


def test_default_workers_rule():
    cores = _usable_cores()
    assert workers.default_workers("cpu", 1) == cores
    assert workers.default_workers("cpu", 2) == max(1, cores // 2)
    assert workers.default_workers("cpu", "auto") == 1 and workers.default_workers("cpu", None) == 1
    assert workers.resolve_workers("auto", "cpu", 1, jobs=1) == 1  # never more processes than jobs
    assert workers.resolve_workers(8, "cpu", 1, jobs=3) == 3
    assert workers.resolve_workers(" AUTO ", "cpu", "auto", jobs=5) == 1
    with pytest.raises(CtrkitError, match="^workers must be"):
        runs.execute_many([], None, workers=0)


_OWNER = """
import multiprocessing.forkserver, sys, time
from ctrkit import data as ctrdata
from ctrkit.experiments import workers
if __name__ == "__main__":
    small = ctrdata.synthetic_dataset("criteo", 300, sys.argv[1], seed=1)
    list(workers.run_jobs(id, [()] * 2, small, 2, names=["probe"] * 2))
    print(multiprocessing.forkserver._forkserver._forkserver_pid, *workers._WARM[1]._processes, flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc (Linux)")
def test_a_killed_owner_of_a_warm_pool_leaves_no_forkserver_or_workers_behind(tmp_path):
    """kill -9 of the process that owns the pool (a run, a kernel that died): the forkserver and the
    idle warm workers end too, instead of each waiting on the other for good."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "owner.py"
    script.write_text(_OWNER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "data")], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 3 and all(_alive(p) for p in pids), pids
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    for p in left:  # a failing run of this test leaves nothing running either
        os.kill(p, signal.SIGKILL)
    assert not left, "left running after their owner was killed"
