"""`ctrkit compare`: two reproductions' claim tables side by side, each interval read as a verdict, the
conclusions a change moved named; and `--amp`, the knob that makes the second reproduction. (That
every claim table of a real reproduction is read: tests/test_notebooks.py's smoke reproduce.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ctrkit import cli
from ctrkit.analysis import compare
from ctrkit.core.utils import CtrkitError
from ctrkit.notebook import reproduce, runner


def _headline(rows) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": "criteo", "model": m, "weight": w, "finetune_lr_scale": 0.1, "n_pairs": 5,
                          "rel_pct_mean": mean, "rel_pct_ci_low": lo, "rel_pct_ci_high": hi, "p_holm": 1.0}
                         for m, w, mean, lo, hi in rows])


def _reproduction(root: Path, headline: pd.DataFrame, *, slopes=None) -> Path:
    t = root / "tables"
    t.mkdir(parents=True)
    pd.DataFrame({"split": ["train"], "rows": [10]}).to_csv(t / "criteo_data_splits.csv", index=False)
    headline.to_csv(t / "criteo_headline.csv", index=False)
    if slopes is not None:
        slopes.to_csv(t / "criteo_partner_slopes.csv", index=False)
    return root


@pytest.mark.parametrize("interval, expected", [((0.2, 0.1, 0.3), "gain"), ((-0.2, -0.3, -0.1), "loss"),
                                                ((0.1, -0.1, 0.3), "no clear difference"),
                                                ((0.0, float("nan"), float("nan")), "no interval")])
def test_verdict_reads_the_interval(interval, expected):
    assert compare.verdict(*interval) == expected


def test_a_moved_conclusion_is_named_and_rows_of_one_side_are_kept(tmp_path):
    a = _reproduction(tmp_path / "a", _headline([("DeepFM", 30.0, 0.3, 0.1, 0.5), ("DCN", 30.0, 0.1, -0.1, 0.3)]),
                      slopes=pd.DataFrame({"target": ["DCN"], "slope_mean": [2.0], "slope_ci_low": [1.0],
                                           "slope_ci_high": [3.0]}))
    b = _reproduction(tmp_path / "b", _headline([("DeepFM", 10.0, 0.05, -0.1, 0.2), ("DCN", 30.0, 0.12, -0.1, 0.3),
                                                 ("PNN", 30.0, -0.4, -0.6, -0.2)]))
    df = compare.conclusions(a, b, labels=("fp32", "bf16"))
    head = df[df["table"] == "headline"].set_index("row")
    assert head.loc["DeepFM", ["fp32_verdict", "bf16_verdict", "same"]].tolist() == ["gain", "no clear difference", False]
    assert head.loc["DCN", "same"] and head.loc["DCN", "shift"] == pytest.approx(0.02)
    assert head.loc["DeepFM", "fp32_setting"] == "weight 30, finetune_lr_scale 0.1"
    assert head.loc["DeepFM", "bf16_setting"] == "weight 10, finetune_lr_scale 0.1"
    assert head.loc["PNN", ["fp32_verdict", "bf16_verdict"]].tolist() == ["no interval", "loss"]
    df.to_csv(tmp_path / "c.csv", index=False)  # read back, every verdict is a word, none a missing value
    assert pd.read_csv(tmp_path / "c.csv")[["fp32_verdict", "bf16_verdict"]].notna().all().all()
    slope = df[df["table"] == "partner_slopes"].iloc[0]
    assert (slope["estimate"], slope["fp32_verdict"], slope["bf16_verdict"]) == ("slope", "gain", "no interval")
    text = compare.summary(df, ("fp32", "bf16"))
    assert text.startswith("1 of 2 conclusions agree") and "criteo headline DeepFM: gain under fp32" in text
    md = compare.to_markdown(df, ("fp32", "bf16"), caption="cap")
    assert "**yes**" in md and "one side" in md and "fp32: weight 30" in md and md.rstrip().endswith("cap")


def test_bad_input_is_one_line(tmp_path):
    a = _reproduction(tmp_path / "a", _headline([("DeepFM", 30.0, 0.3, 0.1, 0.5)]))
    with pytest.raises(CtrkitError, match="missing: no such directory"):
        compare.conclusions(a, tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CtrkitError, match="no tables folder"):
        compare.conclusions(a, tmp_path / "plain")
    with pytest.raises(CtrkitError, match="labels"):
        compare.conclusions(a, a, labels=("x", "x"))
    bad = _reproduction(tmp_path / "bad", _headline([("DeepFM", 30.0, 0.3, 0.1, 0.5)]).drop(columns="rel_pct_ci_low"))
    with pytest.raises(CtrkitError, match="criteo_headline.csv: not a headline table"):
        compare.conclusions(a, bad)
    twice = _reproduction(tmp_path / "twice", _headline([("DeepFM", 30.0, 0.3, 0.1, 0.5)] * 2))
    with pytest.raises(CtrkitError, match="rows repeat"):
        compare.conclusions(a, twice)
    # a value that is not a number, and a row with more fields than the header (pandas would make its
    # first fields the index and read the rest shifted: a bogus "gain")
    text = _headline([("DeepFM", 30.0, 0.3, 0.1, 0.5)]).to_csv(index=False)
    for name, edit, words in (("word", text.replace(",0.3,", ",abc,"), "line 2: rel_pct_mean is not a number"),
                              ("wide", text.rstrip("\n") + ",9,9\n", "line 2: 11 fields, the header has 9")):
        (_reproduction(tmp_path / name, _headline([])) / "tables" / "criteo_headline.csv").write_text(edit)
        with pytest.raises(CtrkitError, match=words):
            compare.conclusions(a, tmp_path / name)


def test_cli_writes_its_files_and_replaces_only_its_own(tmp_path):
    a = _reproduction(tmp_path / "a", _headline([("DeepFM", 30.0, 0.3, 0.1, 0.5)]))
    b = _reproduction(tmp_path / "b", _headline([("DeepFM", 30.0, -0.3, -0.5, -0.1)]))
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "ctrkit.cli", "compare", str(a), str(b), "--labels", "fp32,bf16", "--out", str(out)]
    for _ in range(2):  # the second run replaces the first's files
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "0 of 1 conclusions agree" in r.stdout and "gain under fp32, loss under bf16" in r.stdout
    r = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert (last["compared"], last["agree"]) == (1, 0)
    assert last["moved"] == [{"dataset": "criteo", "table": "headline", "row": "DeepFM", "fp32_verdict": "gain",
                              "bf16_verdict": "loss"}]
    back = pd.read_csv(out / "compare.csv")
    assert back["bf16_verdict"].tolist() == ["loss"] and back["same"].tolist() == [False]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "compare.md").write_text("my notes\n")
    r = subprocess.run(cmd[:-1] + [str(theirs)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not an earlier comparison" in r.stderr
    assert (theirs / "compare.md").read_text() == "my notes\n"
    pictures = tmp_path / "pictures"  # a figure of the same name, no comparison beside it
    pictures.mkdir()
    (pictures / "compare.png").write_bytes(b"mine")
    r = subprocess.run(cmd[:-1] + [str(pictures)], capture_output=True, text=True)
    assert r.returncode == 2 and "compare.png: exists" in r.stderr
    assert (pictures / "compare.png").read_bytes() == b"mine" and not (pictures / "compare.csv").exists()
    r = subprocess.run(cmd[:5] + [str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope: no such directory" in r.stderr


def test_amp_overrides_the_profile_and_reaches_the_notebooks_only_when_given(tmp_path):
    assert reproduce.settings(dataset="criteo", profile="quick", out=str(tmp_path)).amp == "off"
    assert reproduce.settings(dataset="criteo", profile="quick", out=str(tmp_path), amp="bf16").amp == "bf16"
    with pytest.raises(CtrkitError, match="parameter amp must be one of"):
        reproduce.settings(dataset="criteo", profile="quick", out=str(tmp_path), amp="fp16")
    assert all("amp" not in j.parameters for j in runner.plan(dataset="criteo", profile="quick", out=str(tmp_path)))
    jobs = runner.plan(dataset="criteo", profile="quick", out=str(tmp_path), amp="bf16")
    assert {j.parameters["amp"] for j in jobs} == {"bf16"}


def test_seeds_reach_the_notebooks_only_when_given_and_bad_ones_are_one_line(tmp_path):
    # a reseeded reproduction is the noise floor a comparison is read against
    assert all("seeds" not in j.parameters for j in runner.plan(dataset="avazu", profile="quick", out=str(tmp_path)))
    jobs = runner.plan(dataset="avazu", profile="quick", out=str(tmp_path), seeds=[7, 8, 9])
    assert all(j.parameters["seeds"] == [7, 8, 9] for j in jobs)
    for bad in ("7", "7,7", "7,x"):
        r = subprocess.run([sys.executable, "-m", "ctrkit.cli", "reproduce", "--seeds", bad, "--out", str(tmp_path)],
                           capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("ctrkit: error: --seeds") and "Traceback" not in r.stderr


def test_the_figure_draws_both_runs_and_stars_a_moved_row(tmp_path):
    from ctrkit.analysis import plots

    a = _reproduction(tmp_path / "a", _headline([("DeepFM", 30.0, 0.3, 0.1, 0.5), ("DCN", 30.0, 0.1, -0.1, 0.3)]))
    b = _reproduction(tmp_path / "b", _headline([("DeepFM", 30.0, 0.05, -0.1, 0.2), ("DCN", 30.0, 0.1, -0.1, 0.3)]))
    df = compare.conclusions(a, b, labels=("fp32", "bf16"))
    png, svg = plots.compared(df, tmp_path / "fig", labels=("fp32", "bf16"), caption="cap")
    text = svg.read_text()
    assert png.stat().st_size > 5000
    for drawn in ("DeepFM*", "DCN<", "criteo: mutual - alone, finetuned", "fp32", "bf16", "the verdict moved"):
        assert drawn in text, drawn
    with pytest.raises(CtrkitError, match="no rows of the tables"):
        plots.compared(df, tmp_path / "none", labels=("fp32", "bf16"), tables=("variants",))


def test_provenance_is_the_line_each_dataset_s_tables_carry(tmp_path):
    out = _reproduction(tmp_path / "a", _headline([("DeepFM", 30.0, 0.3, 0.1, 0.5)]))
    (out / "criteo").mkdir()
    (out / "criteo" / "results.csv").write_text("")  # not read: the caption says it all
    line = "synthetic Criteo-shaped data · 8,000 rows (train 6,399 / valid 800 / test 801) · 5 seeds · bf16 · profile quick"
    (out / "tables" / "criteo_headline.md").write_text(f"| model |\n|:--|\n| DeepFM |\n\nMutual minus alone. ({line})\n")
    assert compare.provenance(out) == f"{out} (criteo: {line})"


def test_runs_of_other_data_or_profile_are_said_not_to_be_like_for_like(tmp_path, capsys):
    """compare is for the same protocol under other seeds or precision: other rows, another profile or a
    dataset on one side only is one warning line each; other seeds and precision are not."""
    def repro(name, line, datasets=("criteo",)):
        out = _reproduction(tmp_path / name, _headline([("DeepFM", 30.0, 0.3, 0.1, 0.5)]))
        for ds in datasets:
            (out / ds).mkdir()
            (out / ds / "results.csv").write_text("")
            (out / "tables" / f"{ds}_headline.md").write_text(f"| model |\n|:--|\n| DeepFM |\n\nCaption. ({line})\n")
        return out

    quick = "synthetic Criteo-shaped data · 8,000 rows (train 6,399 / valid 800 / test 801) · 5 seeds · fp32 · profile quick"
    a = repro("a", quick)
    b = repro("b", quick.replace("5 seeds", "5 seeds (2026-2030)").replace("fp32", "bf16"))
    assert compare.not_comparable(a, b) == []
    c = repro("c", quick.replace("8,000 rows", "1,000 rows").replace("quick", "smoke"), ("criteo", "avazu"))
    said = compare.not_comparable(a, c)
    assert said[0] == f"avazu: only in {c}" and said[1].startswith("criteo: other data, rows or profile (")
    with pytest.warns(UserWarning, match="not like for like") as seen:  # the CLI prints each as one warning line
        assert cli.main(["compare", str(a), str(c)]) == 0
    assert len(seen) == 2 and "profile smoke" in str(seen[1].message)


def test_another_precision_into_the_same_out_is_refused_and_leaves_the_first_run(tmp_path):
    # the checkpoints' folders do not name the precision: a bf16 rerun into an fp32 reproduction's
    # folder must stop with one line, not overwrite the baselines the fp32 tables were made from
    out = tmp_path / "out"
    request = dict(dataset="criteo", profile="smoke", out=str(out), device="cpu", jobs=1,
                   only=["00_data", "01_baselines"])
    runner.run(runner.Reproduction(**request), progress=False, log=lambda m: None)
    best = out / "criteo" / "pretrained" / "seed2021" / "DeepFM" / "best.pt"
    before = best.read_bytes()
    with pytest.raises(CtrkitError, match=r"cannot resume with different settings \(amp: 'off' -> 'bf16'"):
        runner.run(runner.Reproduction(**request, amp="bf16"), progress=False, log=lambda m: None)
    assert best.read_bytes() == before


def test_a_killed_writers_staging_folder_is_removed_by_the_next_and_a_foreign_one_stays(tmp_path):
    a = _reproduction(tmp_path / "a", _headline([("DeepFM", 30.0, 0.3, 0.1, 0.5)]))
    df = compare.conclusions(a, a)
    out = tmp_path / "cmp"
    out.mkdir()
    dead = 2**22 + 12345  # above the default pid_max (4,194,304): no such process
    killed = out / f".compare.tmp-{dead}"  # a write killed mid-stage: outputs only
    killed.mkdir()
    (killed / "compare.csv").write_text("half")
    theirs = out / f".compare.tmp-{dead + 1}"  # same shape of name, a file that is no output: not ours
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    compare.write(df, out, ("a", "b"), caption="c")
    assert not killed.exists() and (theirs / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == sorted([".compare-manifest.json", "compare.csv", "compare.md",
                                                            theirs.name])
