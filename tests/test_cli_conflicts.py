"""Flags that contradict each other or would be ignored, as a user meets them: each is one
`ctrkit: error:` line (exit 2) before any training, or one warning where the run is still what was
asked; a `--set` key with a flag of its own is that flag; `compare --out` names the file it could not
write and replaces only files it wrote; a full disk behind stdout says stdout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ctrkit import cli
from ctrkit.analysis import compare


def _main_error(capsys, args) -> str:
    """cli.main in this process: exit 2 and one `ctrkit: error:` line, no traceback."""
    assert cli.main(args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("ctrkit: error: ") and "Traceback" not in err[0], err
    return err[0]


def _pretrain(data, out, *extra):
    return ["pretrain", "--data", str(data.path), "--model", "FM", "--preset", "smoke", "--device", "cpu",
            "--epochs", "1", "--out", str(out), "--json", *extra]


def _mutual(data, *extra):
    return ["mutual", "--data", str(data.path), "--peers", "FM,LR", "--init", "scratch", "--preset", "smoke",
            "--device", "cpu", "--epochs", "1", "--json", *extra]


# ---------------------------------------------------------------- contradictions and ignored flags


@pytest.mark.parametrize("command, extra, says", [
    ("pretrain", ["--seed", "7", "--seeds", "1,2"], "--seed 7 and --seeds 1,2: give one"),
    ("pretrain", ["--set", "seed=7", "--seeds", "1,2"], "--set seed=7 and --seeds 1,2: give one"),
    ("mutual", ["--seed", "3", "--seeds", "1,2"], "--seed 3 and --seeds 1,2: give one"),
    ("pretrain", ["--set", "epochs=3"], "--epochs 1 and --set epochs=3 disagree"),
    ("pretrain", ["--seed", "4", "--set", "seed=9"], "--seed 4 and --set seed=9 disagree"),
    ("pretrain", ["--amp", "off", "--set", "amp=bf16"], "--amp off and --set amp=bf16 disagree"),
    ("pretrain", ["--threads", "1", "--set", "threads=2"], "--threads 1 and --set threads=2 disagree"),
    ("mutual", ["--batch-size", "256", "--set", "batch_size=512"], "--batch-size 256 and --set batch_size=512 disagree"),
    ("mutual", ["--set", "epochs=2"], "--epochs 1 and --set epochs=2 disagree"),
    ("mutual", ["--mode", "alone", "--weight", "5"], "--weight 5.0: --mode alone has no mutual term"),
    ("mutual", ["--ckpt-dir", "CKPT"], "--ckpt-dir CKPT: --init scratch --mode mutual loads no checkpoint"),
    ("mutual", ["--finetune-lr-scale", "0.5"], "--finetune-lr-scale 0.5: --init scratch --mode mutual finetunes no"),
])
def test_a_contradiction_is_one_line_naming_both_before_training(criteo_small, tmp_path, capsys, command, extra, says):
    extra = [str(tmp_path) if x == "CKPT" else x for x in extra]
    says = says.replace("CKPT", str(tmp_path))
    argv = _pretrain(criteo_small, tmp_path / "p", *extra) if command == "pretrain" else _mutual(criteo_small, *extra)
    assert says in _main_error(capsys, argv)
    assert not (tmp_path / "p").exists()


def test_a_set_device_that_fails_names_the_set_key(criteo_small, tmp_path, capsys):
    # on a CPU machine the device is refused, on a GPU one the two disagree: either way the --set key is named
    line = _main_error(capsys, _pretrain(criteo_small, tmp_path / "p", "--set", "device=cuda"))
    assert "--set device=cuda" in line and "--device cuda" not in line
    line = _main_error(capsys, _pretrain(criteo_small, tmp_path / "p", "--set", "device=gpu"))
    assert line.startswith("ctrkit: error: --set device=gpu: ")


def test_a_set_key_with_a_flag_is_that_flag_in_mutual_too(criteo_small, capsys):
    # mutual's loop read the seed from --seed only: `--set seed=9` trained seed 2021 under another run key
    import json

    runs = {}
    for extra in (["--seed", "9"], ["--set", "seed=9"]):
        assert cli.main(_mutual(criteo_small, *extra)) == 0
        runs[extra[0]] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p["seed"] for p in runs["--set"]["peers"]] == [9, 9]
    assert runs["--set"]["run_key"] == runs["--seed"]["run_key"]


def test_replicas_without_seeds_is_a_warning_and_the_run_goes_on(criteo_small, tmp_path, capsys):
    with pytest.warns(UserWarning, match="--replicas 2 ignored: it batches the seeds of --seeds"):
        assert cli.main(_pretrain(criteo_small, tmp_path / "p", "--replicas", "2")) == 0


@pytest.mark.parametrize("seed", ["-1", str(2**63), "x"])
def test_prepare_takes_the_seeds_synth_takes(criteo_small, tmp_path, capsys, seed):
    raw = Path(criteo_small.path).parent / "raw" / "train.txt"
    line = _main_error(capsys, ["prepare", "criteo", "--raw", str(raw), "--out", str(tmp_path / "d"), f"--seed={seed}"])
    got = seed if seed != "x" else repr(seed)  # a number as typed; text as text
    assert line == f"ctrkit: error: --seed: expected an integer from 0 to 2**63-1, got {got}"
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- compare --out


def _reproduction(root: Path, mean: float, low: float, high: float) -> Path:
    t = root / "tables"
    t.mkdir(parents=True)
    pd.DataFrame({"split": ["train"], "rows": [10]}).to_csv(t / "criteo_data_splits.csv", index=False)
    pd.DataFrame([{"model": "DeepFM", "rel_pct_mean": mean, "rel_pct_ci_low": low, "rel_pct_ci_high": high}]
                 ).to_csv(t / "criteo_headline.csv", index=False)
    return root


@pytest.fixture
def two(tmp_path):
    return [str(_reproduction(tmp_path / "a", 0.3, 0.1, 0.5)), str(_reproduction(tmp_path / "b", -0.3, -0.5, -0.1))]


@pytest.fixture
def read_only(tmp_path, tmpfs):
    """A folder nothing can be written into (root ignores modes: a tmpfs mounted read-only)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = tmpfs("1m")
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
    return folder


def test_compare_into_a_read_only_folder_names_compare_csv(two, read_only, capsys):
    line = _main_error(capsys, ["compare", *two, "--out", str(read_only)])
    assert line.startswith(f"ctrkit: error: {read_only / 'compare.csv'}: cannot write (") and ".tmp" not in line


def test_compare_replaces_its_own_figure_but_not_one_changed_since(two, tmp_path, capsys):
    out = tmp_path / "cmp"
    for _ in range(2):  # its own files, unchanged since, are replaced
        assert cli.main(["compare", *two, "--out", str(out)]) == 0
    (out / "compare.svg").write_bytes(b"<svg>my edit</svg>")  # the figure, changed by the user
    assert f"{out / 'compare.svg'}: exists and is not an earlier comparison" in _main_error(
        capsys, ["compare", *two, "--out", str(out)])
    assert (out / "compare.svg").read_bytes() == b"<svg>my edit</svg>"
    (out / "compare.svg").unlink()  # gone: the next comparison writes it again
    assert cli.main(["compare", *two, "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"compare.csv", "compare.md", "compare.png", "compare.svg",
                                              ".compare-manifest.json"}


def test_compare_does_not_take_a_csv_of_the_same_header_for_its_own(two, tmp_path, capsys):
    # made with the Python API (`conclusions(...).to_csv`), the user's file: neither it nor a figure is replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    compare.conclusions(*two).to_csv(mine / "compare.csv", index=False)
    (mine / "compare.svg").write_bytes(b"<svg>mine</svg>")
    before = (mine / "compare.csv").read_bytes()
    assert "compare.csv: exists and is not an earlier comparison" in _main_error(
        capsys, ["compare", *two, "--out", str(mine)])
    assert (mine / "compare.csv").read_bytes() == before and (mine / "compare.svg").read_bytes() == b"<svg>mine</svg>"


def test_a_file_named_like_the_manifest_is_not_taken_for_it(two, tmp_path, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / compare.MANIFEST).write_text('{"files": {"compare.csv": []}}')
    assert "is not ctrkit compare's list of its files" in _main_error(capsys, ["compare", *two, "--out", str(out)])
    assert [p.name for p in out.iterdir()] == [compare.MANIFEST]


# ---------------------------------------------------------------- stdout


def test_stdout_on_a_full_disk_is_named(two):
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "ctrkit.cli", "compare", *two], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.splitlines() == ["ctrkit: error: stdout: No space left on device"], p.stderr


def test_mutual_set_epochs_and_batch_size_keep_the_run_key_of_the_python_api():
    """mutual always trained with `--set epochs/batch_size` as train keys: a stored run (and the same
    run made through `RunSpec(overrides=...)`) must keep its key, or it is trained again and no
    longer pairs with its control."""
    from ctrkit.experiments import runs

    args = cli.build_parser().parse_args(["mutual", "--data", "/nowhere", "--peers", "FM,LR", "--init", "scratch",
                                          "--set", "epochs=3", "--set", "batch_size=512"])
    cli._reconcile(args)
    spec = cli._spec(args)
    api = runs.RunSpec(peers=("FM", "LR"), init="scratch", overrides={"epochs": 3, "batch_size": 512})
    assert spec.key("fp") == api.key("fp")
