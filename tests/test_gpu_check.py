"""A GPU loan's one call stays runnable: the check's CPU dry run (every section's code path) on a python
without what the GPU machine lacks, the session script, and the tests' datasets without pyarrow.

A GPU is lent rarely and briefly, and the check is run once there; a script that broke since its last
dry run would waste that time. So its dry run runs with the tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--device", "cpu", "--rows", "4000", "--eval-rows", "1000", "--batch-size", "1000"]


# what the lent GPU machine's python3 lacks (it has torch, numpy, pandas, scipy, tqdm, pyyaml and
# threadpoolctl): the check must run there without them, as they are absent here during the dry run
NOT_ON_THE_GPU_MACHINE = ["papermill", "ipywidgets", "seaborn", "matplotlib", "jupyterlab", "nbformat", "IPython",
                          "sklearn", "pyarrow", "h5py", "datasets", "pytest"]


def _check(tmp_path: Path, env: dict, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    env = {**env, "PYTHON": sys.executable, "OUT": ""}
    env.pop("FUXICTR_SRC", None)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), *SMALL, "--out", str(tmp_path), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    written = list(tmp_path.glob("*-gpu-check-cpu-dryrun.json"))
    return proc, json.loads(written[0].read_text()) if written else None


@pytest.mark.slow
def test_the_dry_run_passes_every_section_and_measures_the_replica_sweep(tmp_path, without_modules):
    """As on the GPU machine: none of the notebook stack, scikit-learn or pyarrow importable."""
    proc, rep = _check(tmp_path, without_modules(NOT_ON_THE_GPU_MACHINE))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["what"]: r for r in rep["results"]}
    assert all(r["status"] == "ok" or r["status"].startswith("n/a") for r in rows.values())
    for prefix in ("equal", "step DeepFM", "mutual 4 x DeepFM", "replicas step", "epoch FiBiNET", "estimate",
                   "fuxictr", "step FiBiNET bf16 graph compiled"):
        assert any(w.startswith(prefix) for w in rows), prefix
    # issue 21's sweep: each size's K = 2 against its K = 1
    for size in ("smoke", "quick", "bars"):
        one, two = rows[f"replicas step {size} DeepFM K=1 fp32 eager"], rows[f"replicas step {size} DeepFM K=2 fp32 eager"]
        assert one["samples_per_s"] > 0 and two["replicas"] == 2
        assert two["vs_one_run"] == pytest.approx(two["samples_per_s"] / one["samples_per_s"])
    # seeds trained as replicas are the runs trained alone (within the replicas' stated tolerance)
    many, alone = rows["replicas run smoke DeepFM 2 seeds fp32 (batched)"], rows["replicas run smoke DeepFM alone fp32 eager"]
    assert abs(many["valid_auc"][0] - alone["valid_auc"]) < 2e-3
    assert many["vs_one_run_eager"] == pytest.approx(many["samples_per_s"] / alone["samples_per_s"])
    assert "replicas run smoke DeepFM alone fp32 graph" in proc.stdout  # the n/a row is in the printed table
    md = next(tmp_path.glob("*-gpu-check-cpu-dryrun.md")).read_text()  # the result file to commit
    assert md.startswith("# GPU check: CPU dry run") and rep["command"] in md
    assert sum(line.startswith("| ") for line in md.splitlines()) == len(rep["results"]) + 1  # + the header


def test_a_row_that_fails_makes_the_check_fail_and_a_rerun_keeps_the_first_result(tmp_path):
    proc, rep = _check(tmp_path, dict(os.environ), "--sections", "matrix", "--models", "NoSuchModel")
    assert proc.returncode == 1
    (row,) = [r for r in rep["results"] if not r["status"].startswith("n/a")]  # the others: graph, bf16
    assert row["what"] == "step NoSuchModel fp32 eager" and "NoSuchModel" in row["status"]
    first = {p.name: p.read_bytes() for p in tmp_path.glob("*-gpu-check-*")}
    proc, _ = _check(tmp_path, dict(os.environ), "--sections", "fuxictr")  # the rerun of one section
    assert proc.returncode == 0
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*-gpu-check-*") if p.name in first} == first
    assert sorted(p.name[11:] for p in tmp_path.glob("*-gpu-check-*")) == [
        "gpu-check-cpu-dryrun-2.json", "gpu-check-cpu-dryrun-2.md", "gpu-check-cpu-dryrun.json",
        "gpu-check-cpu-dryrun.md"]


def test_the_session_script_runs_the_gpu_tests_then_the_check(tmp_path):
    """bench/gpu_session.sh, a GPU loan's one call: the `gpu` tests (here all skipped: no CUDA, but
    collected and run as on the device) and the check, both into $OUT."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    env.pop("FUXICTR_SRC", None)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), *SMALL, "--sections", "estimate"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (tests,) = [p.read_text() for p in tmp_path.glob("*-gpu-tests.txt")]
    assert tests.rstrip().endswith("exit status 0") and "skipped" in tests and "error" not in tests.lower()
    assert len(list(tmp_path.glob("*-gpu-check-cpu-dryrun.md"))) == 1


def test_the_test_datasets_load_from_a_carried_copy_where_pyarrow_is_missing(tmp_path, without_modules, criteo_small):
    """The GPU machine cannot make the tests' datasets (no pyarrow): `small_dataset` loads the same
    call's output made here and carried (CTRKIT_TEST_DATA), and without one the test skips."""
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "criteo_small").symlink_to(criteo_small.path.parent)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import conftest\n"
            "print(conftest.small_dataset('criteo', sys.argv[2]).fingerprint)")
    env = without_modules(["pyarrow"])
    args = [sys.executable, "-c", code, str(ROOT / "tests"), str(tmp_path / "unused")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**env, "CTRKIT_TEST_DATA": str(tmp_path / "copy")})
    assert r.returncode == 0 and r.stdout.split()[-1] == criteo_small.fingerprint, r.stderr[-2000:]
    env.pop("CTRKIT_TEST_DATA", None)
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0 and "Skipped" in r.stderr and "CTRKIT_TEST_DATA" in r.stderr
    assert not (tmp_path / "unused").exists()  # nothing made without pyarrow
