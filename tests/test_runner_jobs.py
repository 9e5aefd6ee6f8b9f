"""`ctrkit reproduce --jobs`: the runner's dependency graph, run on tiny fake notebooks that log when
they start and end: every dependency holds, independent notebooks overlap with 2 jobs,
1 job is strictly sequential in plan order, a failure stops what depends on it and raises one line,
and done markers let a rerun resume."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from ctrkit.core import utils
from ctrkit.core.utils import CtrkitError
from ctrkit.notebook import profiles, runner

PAUSE = 0.6  # seconds each fake notebook holds its slot once it runs
AWAIT = 60  # seconds a fake notebook waits at most for its awaited file (then the test's assertions fail)

# Each fake notebook touches OUT/started_<dataset>_<notebook>, writes its kernel's niceness to
# OUT/nice_<dataset>_<notebook> (and its autogroup's to group_...), and appends "start|end <dataset> <notebook>
# <time>" to OUT/events.log (the runner injects `dataset` and `out` as parameters); it fails at once when
# OUT/fail_<dataset>_<notebook> exists, and when OUT/await_<dataset>_<notebook> exists it first holds its
# slot until the file named in it appears. Overlaps are thus arranged by handshakes, not by timing: a kernel
# that is slow to start on a loaded machine cannot turn a correct schedule into a failed test.
SOURCE = """import time
from pathlib import Path
log = Path(out) / "events.log"
(Path(out) / f"started_{{dataset}}_{name}").touch()
(Path(out) / f"nice_{{dataset}}_{name}").write_text(str(__import__("os").nice(0)))
group = Path("/proc/self/autogroup")  # Linux: the session's scheduling group, "/autogroup-N nice K"
(Path(out) / f"group_{{dataset}}_{name}").write_text(group.read_text().split()[-1] if group.exists() else "none")
with log.open("a") as f:
    f.write(f"start {{dataset}} {name} {{time.time()}}\\n")
awaits = Path(out) / f"await_{{dataset}}_{name}"
if awaits.exists():
    until = time.time() + {wait}
    while not (Path(out) / awaits.read_text().strip()).exists() and time.time() < until:
        time.sleep(0.05)
if (Path(out) / f"fail_{{dataset}}_{name}").exists():
    raise ValueError("{name} was told to fail")
if (Path(out) / f"kill_{{dataset}}_{name}").exists():  # the worker process running this kernel dies
    import os, signal
    os.kill(os.getppid(), signal.SIGKILL)
time.sleep({pause})
with log.open("a") as f:
    f.write(f"end {{dataset}} {name} {{time.time()}}\\n")"""


def _awaits(out: Path, dataset: str, notebook: str, name: str) -> None:
    """Notebook (dataset, notebook) holds its slot until OUT/name exists (OUT made a reproduction's
    folder first, its `.done`: reproduce writes into no folder of other files)."""
    (out / ".done").mkdir(parents=True, exist_ok=True)
    (out / f"await_{dataset}_{notebook}").write_text(name)


@pytest.fixture
def fake_notebooks(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    for name in profiles.NOTEBOOKS:
        params = nbformat.v4.new_code_cell('dataset = "criteo"\nout = "results"')
        params.metadata["tags"] = ["parameters"]
        nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(SOURCE.format(name=name, pause=PAUSE, wait=AWAIT))])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


def _run(nb_dir, out, *, jobs, dataset="criteo", only=None, logs=None):
    request = runner.Reproduction(dataset=dataset, profile="smoke", out=str(out), device="cpu", jobs=jobs, only=only)
    return runner.run(request, progress=False, notebooks_dir=nb_dir, log=(logs if logs is not None else []).append,
                      progress_every=None)


def _intervals(out: Path) -> dict[tuple[str, str], list[float]]:
    """(dataset, notebook) -> [start, end] (end missing for a notebook that failed)."""
    spans = {}
    for line in (out / "events.log").read_text().splitlines():
        kind, dataset, notebook, t = line.split()
        spans.setdefault((dataset, notebook), []).append(float(t))
    return spans


def test_two_jobs_keep_every_dependency_and_overlap_independent_notebooks(fake_notebooks, tmp_path):
    out, logs = tmp_path / "out", []
    # a correct schedule runs 03 beside 07 and 00 beside 05: each of a pair waits to see the other start
    for a, b in (("03_partners", "07_variants"), ("00_data", "05_architectures")):
        _awaits(out, "criteo", a, f"started_criteo_{b}")
        _awaits(out, "criteo", b, f"started_criteo_{a}")
    res = _run(fake_notebooks, out, jobs=2, logs=logs)
    assert sorted(res["ran"]) == sorted(j.name for j in runner.plan(dataset="criteo", profile="smoke"))
    spans = _intervals(out)
    assert len(spans) == len(profiles.NOTEBOOKS) and all(len(s) == 2 for s in spans.values())
    for (_, nb), (start, _) in spans.items():
        for needed in runner._needed(nb):
            assert spans[("criteo", needed)][1] <= start, f"{nb} started before {needed} ended"
    # 03 and 07 (04 needs 03 too) need only 02: two of them run at once
    after = sorted(s for (_, nb), s in spans.items() if nb in ("03_partners", "04_peer_count", "07_variants"))
    assert any(a[1] > b[0] for a, b in zip(after, after[1:])), after
    # 05 needs nothing: it runs beside 00 (the only other notebook ready at first)
    (s00, e00), (s05, e05) = spans[("criteo", "00_data")], spans[("criteo", "05_architectures")]
    assert s05 < e00 and s00 < e05
    # one line per start and per end, each naming its notebook by plan position
    for i, job in enumerate(runner.plan(dataset="criteo", profile="smoke"), 1):
        assert f"[{i}/8] {job.name} ..." in logs
        assert sum(line.startswith(f"[{i}/8] {job.name}: ") and " s -> " in line for line in logs) == 1, logs
    assert (out / ".done" / "criteo_07_variants.json").exists() and (out / ".done" / "06_explore.json").exists()
    # the chain that decides the end (00 -> 01 -> 02 -> the longer of 07 and 03 -> 04) runs at this
    # process's priority; a notebook started beside it with time to spare runs niced
    base, chain = os.nice(0), runner._chains([(j, None, "", True) for j in runner.plan(dataset="criteo",
                                                                                         profile="smoke")], profiles.PROFILES["smoke"])
    nice = {nb: int((out / f"nice_criteo_{nb}").read_text()) for nb in profiles.NOTEBOOKS}
    longer = "07_variants" if chain[5] > chain[3] else "03_partners"  # a tie goes to the first in plan order
    for nb in ("00_data", "01_baselines", "02_scratch_vs_finetune", longer):
        assert nice[nb] == base, nice
    background = min(19, base + runner.BACKGROUND_NICENESS)
    for nb in ("05_architectures", "06_explore", {"07_variants": "03_partners"}.get(longer, "07_variants")):
        assert nice[nb] == background, nice
    group = {nb: (out / f"group_criteo_{nb}").read_text() for nb in profiles.NOTEBOOKS}
    if group["00_data"] != "none":  # autogrouping: each kernel's session is a group, niced as a whole
        assert group["00_data"] == "0" and group["05_architectures"] == str(runner.BACKGROUND_NICENESS), group
    events = (out / "events.log").read_text()
    again = _run(fake_notebooks, out, jobs=2)
    assert again["ran"] == [] and len(again["skipped"]) == 8 and (out / "events.log").read_text() == events


def test_one_job_is_sequential_in_plan_order(fake_notebooks, tmp_path):
    out, logs = tmp_path / "out", []
    only = ["00_data", "01_baselines", "05_architectures"]
    _run(fake_notebooks, out, jobs=1, only=only, logs=logs)
    events = [line.split()[:3] for line in (out / "events.log").read_text().splitlines()]
    assert events == [[kind, "criteo", nb] for nb in only for kind in ("start", "end")]
    assert [line for line in logs if line.endswith(" ...")] == [
        "[1/3] criteo_00_data ...", "[2/3] criteo_01_baselines ...", "[3/3] 05_architectures ..."]


def test_failure_stops_new_starts_lets_the_running_finish_and_a_rerun_resumes(fake_notebooks, tmp_path):
    out, logs = tmp_path / "out", []
    (out / ".done").mkdir(parents=True)  # a reproduction's folder: its signal files are not foreign
    (out / "fail_criteo_01_baselines").touch()
    # criteo's 01 fails once avazu's 01 runs beside it, and avazu's is still running when the runner
    # takes in the failure: the runner's own log line releases it
    _awaits(out, "criteo", "01_baselines", "started_avazu_01_baselines")
    _awaits(out, "avazu", "01_baselines", "released")

    def log(line):
        logs.append(line)
        if "failed; starting nothing new" in line:
            (out / "released").touch()
    only = ["00_data", "01_baselines", "02_scratch_vs_finetune", "05_architectures"]
    with pytest.raises(CtrkitError) as e:
        request = runner.Reproduction(dataset="both", profile="smoke", out=str(out), device="cpu", jobs=2, only=only)
        runner.run(request, progress=False, notebooks_dir=fake_notebooks, log=log, progress_every=None)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("notebook 01_baselines (criteo) failed in cell ")
    assert "ValueError: 01_baselines was told to fail" in msg
    spans = _intervals(out)
    # 05 would have taken the failed notebook's slot: nothing new started after the failure
    assert set(spans) == {("criteo", "00_data"), ("avazu", "00_data"), ("criteo", "01_baselines"),
                          ("avazu", "01_baselines")}, spans
    assert len(spans[("avazu", "01_baselines")]) == 2  # the running one finished ...
    assert (out / ".done" / "avazu_01_baselines.json").exists()  # ... and is done
    assert not (out / ".done" / "criteo_01_baselines.json").exists()
    assert "[5/7] avazu_01_baselines ..." in logs
    assert "[2/7] criteo_01_baselines: failed; starting nothing new, waiting for the 1 still running" in logs

    (out / "fail_criteo_01_baselines").unlink()
    (out / "events.log").unlink()
    res = _run(fake_notebooks, out, jobs=1, dataset="both", only=only[:2])  # the markers of jobs=2 serve jobs=1
    assert res["skipped"] == ["criteo_00_data", "avazu_00_data", "avazu_01_baselines"]
    assert res["ran"] == ["criteo_01_baselines"] and set(_intervals(out)) == {("criteo", "01_baselines")}


def test_the_graph_and_the_jobs_rule():
    criteo, avazu = (runner.plan(dataset="both", profile="smoke")[:len(profiles.PER_DATASET)],
                     runner.plan(dataset="both", profile="smoke")[len(profiles.PER_DATASET):-len(profiles.ONCE)])
    by = {j.notebook: j for j in criteo}
    once = {j.notebook: j for j in runner.plan(dataset="both", profile="smoke")[-len(profiles.ONCE):]}
    for later in ("03_partners", "04_peer_count", "07_variants"):
        assert runner.depends_on(by[later], by["02_scratch_vs_finetune"]) and runner.depends_on(by[later], by["00_data"])
        assert not runner.depends_on(by[later], avazu[0]) and not runner.depends_on(by["02_scratch_vs_finetune"], by[later])
    assert not runner.depends_on(by["03_partners"], by["04_peer_count"]) and runner.depends_on(by["04_peer_count"], by["03_partners"])
    assert not runner.depends_on(by["07_variants"], by["03_partners"]) and not runner.depends_on(by["07_variants"], by["04_peer_count"])
    assert runner.depends_on(once["06_explore"], by["01_baselines"]) and not runner.depends_on(once["06_explore"], avazu[1])
    assert not any(runner.depends_on(once["05_architectures"], j) for j in criteo + avazu)
    assert set(runner.NEEDS) == set(profiles.NOTEBOOKS)

    cores = utils._usable_cores()  # the one rule, shared with workers="auto" (utils.cpu_slots)
    assert runner.parallel_jobs("auto", {"threads": 1}) == cores
    assert runner.parallel_jobs("auto", {"threads": cores}) == 1
    assert runner.parallel_jobs("auto", {"threads": "auto"}) == 1
    assert runner.parallel_jobs("auto", {"threads": 1}, "cuda") == 1
    assert runner.parallel_jobs(3, {"threads": 1}) == 3
    for bad in (0, -1, True, "2", 1.5):
        with pytest.raises(CtrkitError, match=r"^jobs .*: an integer >= 1 or 'auto'$"):
            runner.parallel_jobs(bad, {"threads": 1})


def test_cli_jobs_is_checked_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ctrkit.cli", "reproduce", "--profile", "smoke", "--jobs", "two",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["ctrkit: error: --jobs 'two': an integer >= 1 or 'auto'"]
    assert not (tmp_path / ".done").exists()


def test_the_summary_across_datasets_is_written_again_after_overlapping_07s(tmp_path):
    """Two 07s that ran side by side: the runner rewrites tables/variants_summary from every dataset's
    pairs table once both finished (a single 07 leaves it to its notebook)."""
    jobs = [j for j in runner.plan(dataset="both", profile="smoke", out=str(tmp_path)) if j.notebook == "07_variants"]
    tables = tmp_path / "tables"
    tables.mkdir()
    for k, job in enumerate(jobs):
        rows = [{"dataset": job.dataset, "init": "pretrained", "embedding": "separate", "variant": "kl", "weight": 1.0,
                 "model": "DeepFM", "peer": 0, "seed": seed, "test_auc_t": 0.70 + 0.01 * seed, "test_auc_c": 0.70}
                for seed in (1, 2, 3)]
        pd.DataFrame(rows).to_csv(tables / f"{job.dataset}_variants_pairs.csv", index=False)
    runner._variants_summary_again(jobs[:1])
    assert not (tables / "variants_summary.csv").exists()
    runner._variants_summary_again(jobs)
    summary = pd.read_csv(tables / "variants_summary.csv")
    assert summary["n_datasets"].tolist() == [2]


def test_the_longest_chain_of_work_starts_first():
    sizes = profiles.PROFILES["quick"]
    jobs = runner.plan(dataset="both", profile="quick")
    todo = [(job, None, "", True) for job in jobs]
    chain = runner._chains(todo, sizes)
    at = {job.name: chain[i] for i, job in enumerate(jobs)}
    cost = {nb: c for nb, (_, c) in runner.workload(sizes).items()}
    assert at["criteo_07_variants"] == cost["07_variants"] > at["criteo_03_partners"]
    assert at["criteo_03_partners"] == cost["03_partners"] + cost["04_peer_count"]  # 04 needs 03
    assert at["criteo_00_data"] == at["criteo_01_baselines"] == cost["01_baselines"] + at["criteo_02_scratch_vs_finetune"]
    assert at["05_architectures"] == at["06_explore"] == 0.0
    done = [(job, None, "", job.notebook != "07_variants") for job in jobs]  # a 07 done before counts for nothing
    assert runner._chains(done, sizes)[0] == cost["01_baselines"] + cost["02_scratch_vs_finetune"] + cost["03_partners"] \
        + cost["04_peer_count"]


def test_an_out_of_other_files_is_refused_and_a_bad_plan_makes_no_folder(fake_notebooks, tmp_path):
    """reproduce writes index.md, tables and notebooks: into a folder of someone else's files it
    writes nothing (it replaced them before); a bad --dataset fails before the folder is made."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.md").write_text("my index\n")
    with pytest.raises(CtrkitError, match="holds files that ctrkit did not write"):
        _run(fake_notebooks, mine, jobs=1)
    assert [p.name for p in mine.iterdir()] == ["index.md"] and (mine / "index.md").read_text() == "my index\n"
    # a results store beside one's own files (the README's runs/store.jsonl) is no reproduction of ctrkit's
    proj = tmp_path / "proj"
    (proj / "runs").mkdir(parents=True)
    (proj / "runs" / "store.jsonl").write_text('{"run_key": "k", "append_id": "a"}\n')
    (proj / "runs" / "figures").mkdir()
    with pytest.raises(CtrkitError, match="holds files that ctrkit did not write"):
        _run(fake_notebooks, proj / "runs", jobs=1)
    assert sorted(p.name for p in (proj / "runs").iterdir()) == ["figures", "store.jsonl"]
    with pytest.raises(CtrkitError, match="--dataset 'foo'"):
        _run(fake_notebooks, tmp_path / "new", jobs=1, dataset="foo")
    assert not (tmp_path / "new").exists()


def test_a_worker_that_dies_is_one_line_naming_its_notebook(fake_notebooks, tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / ".done").mkdir(parents=True)  # a reproduction's folder: its signal files are not foreign
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the killed worker cannot remove its kernel's socket folder
    (out / "kill_criteo_01_baselines").touch()
    with pytest.raises(CtrkitError) as e:
        _run(fake_notebooks, out, jobs=2, only=["00_data", "01_baselines"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("notebook 01_baselines (criteo) did not run: "), msg
    assert (out / ".done" / "criteo_00_data.json").exists() and not (out / ".done" / "criteo_01_baselines.json").exists()


@pytest.mark.skipif(os.name != "posix", reason="unix sockets")
def test_a_kernel_starts_when_the_tcp_ports_jupyter_would_pick_are_taken(tmp_path, monkeypatch):
    """The race that killed a kernel in CI ("Kernel died before replying to kernel_info"), made certain:
    jupyter picks free ports and closes them, the kernel binds them later, and here every port it would
    hand out is already taken. The runner's kernels talk over unix sockets in a private folder (removed
    after), so they start; over TCP, as where unix sockets are unavailable, the same kernel dies."""
    from jupyter_client import connect

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    monkeypatch.setattr(connect.LocalPortCache, "find_available_port", lambda self, ip: taken.getsockname()[1])
    # a short folder: under pytest's tmp_path (its pytest-N counter grows with every run on a machine)
    # the socket path can pass the ~96 bytes unix sockets allow, and the runner then rightly picks TCP
    short = Path(tempfile.mkdtemp(prefix="ck-"))
    monkeypatch.setattr(tempfile, "tempdir", str(short))
    src = tmp_path / "00_data.ipynb"
    cell = ("import json, pathlib\nfrom ipykernel.connect import get_connection_info\n"
            "pathlib.Path('transport').write_text(json.loads(get_connection_info())['transport'])")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, src)
    job = runner.Job("00_data", "criteo", {})
    with taken:
        dest = runner._execute(job, src, tmp_path, timeout=120, progress=False)
        assert dest.exists() and (tmp_path / "transport").read_text() == "ipc"
        assert list(short.iterdir()) == []  # the socket folder went with the kernel

        @contextlib.contextmanager
        def no_unix_sockets():
            yield None

        monkeypatch.setattr(runner, "_socket_folder", no_unix_sockets)
        with pytest.raises(CtrkitError, match=r"notebook 00_data \(criteo\) did not run: .*Kernel died.*"
                           r"kernel log: .*; its last line: .*Address already in use"):
            runner._execute(job, src, tmp_path, timeout=120, progress=False)
    shutil.rmtree(short, ignore_errors=True)


def test_a_full_disk_while_papermill_writes_names_where(tmp_path, monkeypatch):
    import errno

    import papermill

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as json.dump's write raises it: no file named

    monkeypatch.setattr(papermill, "execute_notebook", full)
    job = runner.Job("00_data", "criteo", {})
    with pytest.raises(CtrkitError, match=r"notebook 00_data \(criteo\) did not run: OSError: \[Errno 28\] No space left "
                                          r"on device \(writing .*\.00_data\.partial\.ipynb and the kernel log under "):
        runner._execute(job, tmp_path / "00_data.ipynb", tmp_path, timeout=10, progress=False)


def test_figures_are_copied_over_only_what_ctrkit_wrote_there(tmp_path):
    src, tables, dest = tmp_path / "figs", tmp_path / "tables", tmp_path / "dest"
    src.mkdir(), tables.mkdir()
    (src / "a.png").write_bytes(b"png 1")
    (tables / "t.md").write_text("| t |\n")
    runner.copy_figures(src, dest, tables_src=tables)
    assert (dest / "a.png").read_bytes() == b"png 1" and (dest / "tables" / "t.md").read_text() == "| t |\n"
    (src / "a.png").write_bytes(b"png 2")  # a new reproduction: its own files are replaced
    runner.copy_figures(src, dest, tables_src=tables)
    assert (dest / "a.png").read_bytes() == b"png 2"
    (dest / "tables" / "t.md").write_text("| my edit |\n")  # changed since ctrkit wrote it: the user's now
    (src / "a.png").write_bytes(b"png 3")
    with pytest.raises(CtrkitError, match=r"t\.md exists and was not written by ctrkit: nothing copied"):
        runner.copy_figures(src, dest, tables_src=tables)
    assert (dest / "a.png").read_bytes() == b"png 2" and (dest / "tables" / "t.md").read_text() == "| my edit |\n"
    (dest / "tables" / "t.md").write_text("| t |\n")  # already what ctrkit would write: nothing lost
    (dest / "b.svg").write_text("the user's own figure")
    (src / "b.svg").write_text("ctrkit's b")
    with pytest.raises(CtrkitError, match="b.svg exists and was not written by ctrkit"):
        runner.copy_figures(src, dest, tables_src=tables)
    (dest / "b.svg").unlink()
    runner.copy_figures(src, dest, tables_src=tables)
    assert (dest / "a.png").read_bytes() == b"png 3" and (dest / "b.svg").read_text() == "ctrkit's b"


def test_figures_into_a_file_fails_before_any_notebook(tmp_path):
    blocker = tmp_path / "figures"
    blocker.write_text("mine")
    with pytest.raises(CtrkitError, match="--figures .*is a file, not a folder"):
        runner.run(runner.Reproduction(profile="smoke", dataset="criteo", out=str(tmp_path / "out"),
                                       figures=str(blocker), device="cpu"))
    assert not (tmp_path / "out").exists() and blocker.read_text() == "mine"


def test_a_figures_copy_cut_short_leaves_every_file_known_as_ctrkits(tmp_path, monkeypatch):
    src, dest = tmp_path / "figs", tmp_path / "dest"
    src.mkdir()
    for n in ("a.png", "b.png"):
        (src / n).write_bytes(b"1 " + n.encode())
    runner.copy_figures(src, dest)
    for n in ("a.png", "b.png"):
        (src / n).write_bytes(b"2 " + n.encode())
    real, copied = runner.shutil.copyfile, []

    def full_after_one(a, b):  # the disk fills after the first file
        if copied:
            raise OSError(28, "No space left on device")
        copied.append(a)
        return real(a, b)

    monkeypatch.setattr(runner.shutil, "copyfile", full_after_one)
    with pytest.raises(CtrkitError, match="No space left on device"):
        runner.copy_figures(src, dest)
    monkeypatch.undo()
    assert (dest / "a.png").read_bytes() == b"2 a.png" and (dest / "b.png").read_bytes() == b"1 b.png"
    for n in ("a.png", "b.png"):
        (src / n).write_bytes(b"3 " + n.encode())  # the next reproduction: both files are still ctrkit's
    runner.copy_figures(src, dest)
    assert (dest / "a.png").read_bytes() == b"3 a.png" and (dest / "b.png").read_bytes() == b"3 b.png"


def test_a_killed_reproductions_temp_files_are_removed_by_the_next_one(fake_notebooks, tmp_path):
    """kill -9 while a table or figure is written leaves `atomic_path`'s temp file in OUT/tables or
    OUT/figures (it survived reruns and --force). The next reproduction removes those of the files it
    writes there, but not a user's files, temp files of other names, nor one young enough to be a live
    writer's (a notebook run by hand on the same OUT)."""
    import time

    out = tmp_path / "out"
    for sub in ("tables", "figures", ".done"):
        (out / sub).mkdir(parents=True)
    stale = [out / "tables" / ".criteo_peer_count.tex.f9fycz96.tmp", out / "tables" / ".criteo_headline.csv.a_b0c1d2.tmp",
             out / "figures" / ".fig1_knowledge_distillation.png.c95a1ttn.tmp", out / ".index.html.x1y2z3w4.tmp",
             out / ".done" / ".criteo_00_data.json.abcdefgh.tmp"]
    keep = [out / "tables" / "mine.csv", out / "tables" / ".notes.txt.f9fycz96.tmp",
            out / "figures" / ".fig1.png.backup.tmp", out / ".other.md.x1y2z3w4.tmp"]
    an_hour_ago = time.time() - 3600
    for p in stale + keep:
        p.write_bytes(b"x")
        os.utime(p, (an_hour_ago, an_hour_ago))
    live = out / "tables" / ".criteo_baselines.md.livewrit.tmp"
    live.write_bytes(b"x")
    _run(fake_notebooks, out, jobs=1, only=["00_data"])
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep) and live.exists()


def test_a_reproductions_output_edited_by_hand_is_never_replaced(fake_notebooks, tmp_path):
    """Every file reproduce writes at a fixed name (index, executed notebooks; tables and figures via
    `owned`, tested in test_owned) has a record: a rerun replaces its own files, refuses before any
    notebook runs when one was edited, and refuses a hand-made file where a notebook would land. An
    output written before records existed is taken as ctrkit's (its folder proves it)."""
    from ctrkit.core import owned
    from ctrkit.notebook import outputs

    out = tmp_path / "out"
    _run(fake_notebooks, out, jobs=1, only=["00_data"])
    index, nb = out / "index.md", out / "notebooks" / "criteo" / "00_data.ipynb"
    assert owned.changed([index, nb]) == [] and owned.recorded(index) and owned.recorded(nb)
    _run(fake_notebooks, out, jobs=1, only=["00_data"], logs=None)  # its own files: replaced
    index.write_text(index.read_text() + "my note\n")
    (out / "events.log").unlink()
    with pytest.raises(CtrkitError, match=r"--out .*: index.md was changed \(or made a link\) after ctrkit wrote it, .*move it away .*--force"):
        runner.run(runner.Reproduction(dataset="criteo", profile="smoke", out=str(out), device="cpu", force=True,
                                       only=["00_data"]), progress=False, notebooks_dir=fake_notebooks,
                   log=[].append, progress_every=None)
    assert index.read_text().endswith("my note\n") and not (out / "events.log").exists()  # nothing ran
    index.unlink()
    mine = out / "notebooks" / "criteo" / "01_baselines.ipynb"
    mine.write_text("{}")
    with pytest.raises(CtrkitError, match="01_baselines.ipynb: exists and ctrkit did not write it"):
        _run(fake_notebooks, out, jobs=1, only=["01_baselines"])
    assert mine.read_text() == "{}" and not (out / "started_criteo_01_baselines").exists()
    mine.unlink()

    def forced():
        runner.run(runner.Reproduction(dataset="criteo", profile="smoke", out=str(out), device="cpu", force=True,
                                       only=["00_data"]), progress=False, notebooks_dir=fake_notebooks,
                   log=[].append, progress_every=None)

    def drop_records():
        for records in out.rglob(owned.RECORDS):
            for p in records.iterdir():
                p.unlink()
            records.rmdir()

    drop_records()  # records deleted by hand: nothing is thereby ctrkit's again
    with pytest.raises(CtrkitError, match="00_data.ipynb: exists and ctrkit did not write it"):
        forced()
    drop_records()
    (out / ".done" / outputs.RECORDS_SINCE).unlink()  # a reproduction made before records existed
    _run(fake_notebooks, out, jobs=1, only=["00_data"], logs=None)
    assert owned.changed([index, nb]) == [] and owned.recorded(nb) and (out / ".done" / outputs.RECORDS_SINCE).exists()
    nb.unlink()
    nb.symlink_to(index)  # a link where ctrkit wrote a file
    with pytest.raises(CtrkitError, match=r"00_data.ipynb was changed \(or made a link\)"):
        forced()
