"""The peer selector, driven headless (set the controls, click Train, wait for the training thread),
and the notebook set-up it relies on: paths relative to the repository, data never regenerated.
Each numbered defect of issue 14 that a headless test can see has a test here (the browser-only
ones are in test_e2e_browser.py)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import matplotlib
import pytest

from ctrkit import experiments
from ctrkit.notebook import profiles, reproduce, runner, widgets
from ctrkit.analysis import records
from ctrkit.experiments.store import ResultsStore
from ctrkit.core.utils import CtrkitError

matplotlib.use("Agg")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pretrained(criteo_small, tmp_path_factory):
    """Tiny real checkpoints of FM and DeepFM (smoke preset, 1 epoch, fp32) for seeds 2021 and 2022; their
    baseline records in baselines.jsonl beside the seed folders."""
    ckpt = tmp_path_factory.mktemp("ckpt")
    experiments.pretrain_baselines(criteo_small, ["FM", "DeepFM"], ckpt, preset="smoke", seeds=[2021, 2022],
                                   epochs=1, device="cpu", amp="off", progress=False,
                                   store=ckpt / "baselines.jsonl")
    return ckpt


def _selector(data, store, ckpt):
    return widgets.PeerSelector(data, store=store, ckpt_dir=ckpt, preset="smoke", device="cpu")


def _train(sel):
    sel.train_button.click()
    assert sel.wait(300), "the run did not finish"


def test_train_button_runs_real_peers_and_records_them(criteo_small, pretrained, tmp_path):
    store = tmp_path / "store.jsonl"
    sel = _selector(criteo_small, store, pretrained)
    # the checkpoint folder of the seed is found and the pretrained models are marked
    assert sel.checkpoints.value == str(pretrained / "seed2021") and sel.seed.value == 2021
    assert ("FM  ✓ pretrained", "FM") in sel.peers.options and ("DCN", "DCN") in sel.peers.options
    # 7: no broken-image icon before any training: the empty image is not displayed
    assert sel.curve.layout.display == "none" and sel.curve.value == b""

    sel.peers.value = ("FM", "DeepFM")
    sel.init.value, sel.mode.value = "pretrained", "mutual"
    sel.weight.value, sel.epochs.value = 0.5, 2
    _train(sel)

    assert sel.last_error is None, sel.last_error
    recs = ResultsStore(store).records()
    assert sorted(r["peer"] for r in recs) == ["DeepFM", "FM"]
    assert {(r["mode"], r["init"], r["weight"], r["n_peers"], r["seed"]) for r in recs} == \
        {("mutual", "pretrained", 0.5, 2, 2021)}
    for r in recs:
        assert 0.0 < r["test_auc"] < 1.0 and 0.0 < r["pretrained_test_auc"] < 1.0
    # the live curve (one history row per epoch) and the result table are shown
    assert sel.curve.value[:8] == PNG_MAGIC and sel.curve.layout.display is None
    assert [r["epoch"] for r in sel.history] == [1, 2]
    assert "DeepFM" in sel.result.value and "test_auc" in sel.result.value and "delta_auc" in sel.result.value
    assert "2 records appended" in sel.status.value
    assert set(sel.table()["peer"]) == {"FM", "DeepFM"}

    # 4 and 6: the same run again is found in the store, not repeated; the old curve is gone and
    # no run folder is left behind for a click that trained nothing
    runs_before = sorted(sel.runs_dir.iterdir())
    _train(sel)
    assert sel.skipped and "already in the store" in sel.status.value
    assert sel.curve.layout.display == "none" and sel.history == []
    assert len(ResultsStore(store).records()) == 2
    assert sorted(sel.runs_dir.iterdir()) == runs_before


def test_widget_runs_are_tagged_exploration(criteo_small, pretrained, tmp_path):
    # 3: widget runs are tagged, so the paper's tables can leave them out
    store = tmp_path / "store.jsonl"
    sel = _selector(criteo_small, store, pretrained)
    sel.peers.value, sel.init.value, sel.mode.value = ("FM", "DeepFM"), "pretrained", "alone"
    _train(sel)
    assert sel.last_error is None, sel.last_error
    assert {r.get("tag") for r in ResultsStore(store).records()} == {widgets.EXPLORATION_TAG}
    # ... and the paper's tables read past them unless asked
    assert records.records(store).empty
    assert set(records.records(store, include_exploration=True)["peer"]) == {"FM", "DeepFM"}


def test_scratch_run_early_stop_and_missing_auc(criteo_small, pretrained, tmp_path):
    store = tmp_path / "store.jsonl"
    sel = _selector(criteo_small, store, pretrained)
    sel.peers.value, sel.init.value, sel.mode.value = ("FM", "DeepFM"), "scratch", "mutual"
    sel.epochs.value = 40  # smoke preset: patience 1, so the peers stop long before epoch 40
    _train(sel)
    assert sel.last_error is None, sel.last_error
    ran = len(sel.history)
    assert ran < 40
    # 7: the early stop is announced with the epochs that ran
    assert "early stop" in sel.status.value and f"{ran} of 40 epochs" in sel.status.value
    # 7: a missing AUC (no pretrained model from scratch) is a dash, never "None"/"nan"
    assert "–" in sel.result.value and "None" not in sel.result.value and "nan" not in sel.result.value
    assert sel.table()["pretrained_test_auc"].isna().all()
    assert "None" not in sel.refresh_store_view().value


def test_stop_button_stops_the_run_and_appends_nothing(criteo_small, pretrained, tmp_path):
    # 5: Stop ends the run (after the current step), nothing partial is appended or left on disk
    store = tmp_path / "store.jsonl"
    sel = _selector(criteo_small, store, pretrained)
    sel.peers.value, sel.init.value, sel.mode.value = ("FM", "DeepFM"), "scratch", "mutual"
    sel.epochs.value = 40
    train_epoch = sel._on_epoch

    def press_stop_after_epoch_1(row):  # a user pressing Stop while epoch 2 runs, deterministic
        if row["epoch"] == 1:
            sel.stop_button.click()
        train_epoch(row)

    sel._on_epoch = press_stop_after_epoch_1
    _train(sel)
    assert sel.stopped and sel.last_error is None, sel.last_error
    assert "stopped" in sel.status.value and "nothing was appended" in sel.status.value
    assert not store.exists() or ResultsStore(store).records() == []
    assert not sel.runs_dir.exists() or list(sel.runs_dir.iterdir()) == []
    assert not sel.train_button.disabled and sel.stop_button.disabled


def test_double_click_is_one_run(criteo_small, pretrained, tmp_path):
    # 6: a second click while the first run trains is ignored (no queued second run)
    store = tmp_path / "store.jsonl"
    sel = _selector(criteo_small, store, pretrained)
    sel.peers.value, sel.init.value, sel.mode.value = ("FM", "DeepFM"), "pretrained", "mutual"
    sel.train_button.click()
    sel.train_button.click()
    assert sel.wait(300)
    assert "2 records appended" in sel.status.value and not sel.skipped
    assert len(ResultsStore(store).records()) == 2
    assert len(list(sel.runs_dir.iterdir())) == 1


def test_errors_are_shown_inside_the_widget_and_clear_the_previous_run(criteo_small, pretrained, tmp_path):
    store = tmp_path / "store.jsonl"
    sel = _selector(criteo_small, store, pretrained)
    sel.peers.value, sel.init.value, sel.mode.value = ("FM", "DeepFM"), "pretrained", "alone"
    _train(sel)
    assert sel.curve.layout.display is None and sel.result.value

    # 4: an error replaces the previous curve and table, it does not sit above them
    sel.peers.value, sel.mode.value = ("FM", "PNN"), "mutual"
    _train(sel)
    assert "missing checkpoint(s) for PNN" in sel.last_error
    assert "Error:" in sel.error.value and "missing checkpoint(s) for PNN" in sel.error.value
    assert sel.result.value == "" and sel.curve.layout.display == "none"

    sel.peers.value = ("FM",)
    _train(sel)
    assert "needs at least 2 peers; 1 selected" in sel.error.value

    # a failure inside the run (not a CtrkitError) is shown with its traceback
    sel.peers.value, sel.init.value = ("FM", "DeepFM"), "scratch"
    sel.preset = "no-such-preset"
    _train(sel)
    assert sel.last_error and "no-such-preset" in sel.last_error and "no-such-preset" in sel.error.value
    assert not sel.train_button.disabled

    # no checkpoints at all: pretrained is refused with a pointer to 01_baselines
    empty = _selector(criteo_small, tmp_path / "empty.jsonl", tmp_path / "none")
    assert empty.init.value == "scratch"
    empty.init.value = "pretrained"
    _train(empty)
    assert "run 01_baselines first" in empty.error.value


def test_checkpoint_folder_follows_the_seed_and_another_seed_is_refused(criteo_small, pretrained, tmp_path):
    # 7: checkpoints of seed 2022 are never finetuned under seed 2021 without a word
    sel = _selector(criteo_small, tmp_path / "store.jsonl", pretrained)
    sel.seed.value = 2022
    assert sel.checkpoints.value == str(pretrained / "seed2022")
    sel.checkpoints.value = str(pretrained / "seed2021")
    assert sel.seed.value == 2021
    sel.seed.value = 7  # no seed7 folder: the seed2021 checkpoints stay chosen, and are refused
    sel.peers.value, sel.init.value = ("FM", "DeepFM"), "pretrained"
    _train(sel)
    assert "seed2021 was pretrained with seed 2021, the run's seed is 7" in sel.last_error
    assert "pretrain seed 7" in sel.last_error and "seed7" not in sel.last_error  # no folder that is not there
    assert "Error:" in sel.error.value
    assert not (tmp_path / "store.jsonl").exists()


@pytest.mark.parametrize("field, value, says", [("weight", -1.0, "mutual weight must be >= 0"),
                                                 ("weight", float("nan"), "mutual weight must be >= 0"),
                                                 ("seed", -1, "seed: expected an integer from 0 to 2**63-1, got -1"),
                                                 ("epochs", 0, "epochs must be >= 1")])
def test_an_out_of_range_field_is_refused_at_train_not_clamped(criteo_small, tmp_path, field, value, says):
    sel = _selector(criteo_small, tmp_path / "store.jsonl", None)
    sel.weight.value = 1e9  # a field keeps what was typed: a bounded one clamped this to 100 without a word
    assert sel.weight.value == 1e9 and sel._validate().weight == 1e9
    setattr(getattr(sel, field), "value", value)
    _train(sel)
    assert says in sel.last_error and "Error:" in sel.error.value
    assert not (tmp_path / "store.jsonl").exists()


def test_empty_store_is_a_sentence_not_a_table(criteo_small, tmp_path):
    # 7: an empty store shows a sentence, not a 29-column empty table
    sel = _selector(criteo_small, tmp_path / "store.jsonl", None)
    view = sel.refresh_store_view().value
    assert "No runs in the store yet" in view and "<table" not in view
    assert list(sel.table().columns) == widgets._STORE_COLUMNS and sel.table().empty


def test_a_large_store_is_shown_as_counts_and_its_newest_records(criteo_small, tmp_path):
    store = ResultsStore(tmp_path / "store.jsonl")
    for seed in range(30):  # a reproduction's store: many records; the view must stay readable
        store.append([{"run_key": f"k{seed}", "mode": "alone", "init": "pretrained", "peer": "DeepFM", "seed": seed,
                       "test_auc": 0.7, "tag": "variants" if seed % 3 == 0 else None}])
    view = _selector(criteo_small, store.path, None).refresh_store_view().value
    assert "30 record(s)" in view and ">variants<" in view and ">paper<" in view
    assert view.count("<tr>") == 2 + widgets.STORE_VIEW_ROWS  # body rows: the counts (2 kinds), the newest 20
    assert ">29<" in view and ">0<" not in view.split("newest first")[1]  # the newest, not the oldest


def test_legend_is_outside_the_axes():
    # 7: the legend never covers a point
    history = [{"epoch": e, "ensemble_valid_auc": 0.7 + e / 100,
                "peers": [{"valid_auc": 0.69 + e / 100}, {"valid_auc": 0.71 + e / 100}]} for e in (1, 2, 3)]
    fig = widgets.curve_figure(history, ["DeepFM", "FM"], title="t")
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= box.x1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["DeepFM", "FM", "ensemble (mean p)"]


# ---- the notebooks' set-up (reproduce.settings / dataset), as 06_explore meets it -------------------

def test_relative_paths_are_relative_to_the_repository(tmp_path, monkeypatch):
    # 2: JupyterLab's kernel runs in notebooks/, papermill's in OUT: "results" is the same folder
    for cwd in (ROOT / "notebooks", tmp_path):
        monkeypatch.chdir(cwd)
        cfg = reproduce.settings(dataset="criteo", profile="smoke", out="results")
        assert cfg.out == ROOT / "results" and cfg.store == ROOT / "results" / "criteo" / "store.jsonl"
        assert reproduce.resolve_path(str(tmp_path / "x")) == tmp_path / "x"


def test_data_of_other_settings_is_never_regenerated(tmp_path):
    # 1: a notebook run with other settings stops with one line instead of replacing the data
    out = tmp_path / "out"
    made = reproduce.settings(dataset="criteo", profile="smoke", out=str(out), rows=600)
    data = reproduce.dataset(made)
    fmap = made.data_path / "data" / "feature_map.json"
    before = (fmap.read_bytes(), os.stat(fmap).st_mtime_ns)
    assert reproduce.dataset(made).fingerprint == data.fingerprint  # same settings: used as it is

    other = reproduce.settings(dataset="criteo", profile="smoke", out=str(out))  # the profile's 1,000 rows
    with pytest.raises(CtrkitError, match=r"holds synthetic data made with other settings: rows 600 \(asked: 1000\)"):
        reproduce.dataset(other)
    assert (fmap.read_bytes(), os.stat(fmap).st_mtime_ns) == before

    # data ctrkit did not synthesize (a processed folder put there) is not touched either
    foreign = reproduce.settings(dataset="avazu", profile="smoke", out=str(out))
    (foreign.data_path / "data").mkdir(parents=True)
    (foreign.data_path / "data" / "feature_map.json").write_text(json.dumps({"dataset": "avazu"}))
    with pytest.raises(CtrkitError, match="is not ctrkit's synthetic data"):
        reproduce.dataset(foreign)
    assert not (foreign.data_path / "raw").exists()


def test_data_of_another_split_is_never_regenerated(tmp_path):
    """The study profile scores 8,000 training rows on 5,000 valid/test rows (`split` 8:5:5): an OUT
    whose data was made with the protocol's split at the same rows is refused, naming the split."""
    study = reproduce.settings(dataset="avazu", profile="study", out=str(tmp_path / "out"), rows=900)
    assert study.split == [8, 5, 5] and "split 8:5:5" in study._repr_markdown_()
    plain = reproduce.settings(dataset="avazu", profile="smoke", out=str(tmp_path / "out"), rows=900)
    assert plain.split is None and "train/valid/test split" not in plain._repr_markdown_()
    reproduce.dataset(plain)
    with pytest.raises(CtrkitError, match=r"other settings: split None \(asked: \[8, 5, 5\]\)"):
        reproduce.dataset(study)
    d = reproduce.dataset(dataclasses.replace(study, out=tmp_path / "out2"))
    assert abs(d.rows["valid"] - 250) <= 2 and abs(d.rows["train"] - 400) <= 2, d.rows  # blocks of 18 per class


def test_cli_error_for_other_data_is_one_line(tmp_path):
    out = tmp_path / "out"
    reproduce.dataset(reproduce.settings(dataset="criteo", profile="smoke", out=str(out), rows=600))
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ctrkit.cli", "reproduce", "--profile", "smoke", "--dataset", "criteo",
                        "--out", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ctrkit: error: notebook 00_data (criteo) failed") and "rows 600 (asked: 1000)" in last


def test_executed_05_and_06_land_where_the_readme_says(tmp_path):
    # 8: the README's output list names the same paths the runner writes
    jobs = {j.notebook: j for j in runner.plan(dataset="both", profile="smoke", out=str(tmp_path))}
    readme = (ROOT / "README.md").read_text()
    for nb in profiles.ONCE:
        rel = jobs[nb].executed(tmp_path).relative_to(tmp_path).as_posix()
        assert rel == f"notebooks/{nb}.ipynb" and f"`{rel}`" in readme
    rel = runner.Job("02_scratch_vs_finetune", "avazu", {}).executed(tmp_path).relative_to(tmp_path).as_posix()
    assert rel == "notebooks/avazu/02_scratch_vs_finetune.ipynb" and "`notebooks/<dataset>/<notebook>.ipynb`" in readme


# ---- the audit of the selector against the tables (each test fails on the selector before it) ---------------

def _sweep(data, store, ckpt):
    """A finetuning sweep of FM+DeepFM as 02 runs it (paper runs, untagged), at the profile's fp32."""
    experiments.run(data, [["FM", "DeepFM"]], inits=["pretrained"], modes=["alone", "mutual"], weight=[0.5, 3.0],
                    finetune_lr_scale=[0.3, 1.0], seeds=[2021], store=store, ckpt_dir=ckpt, preset="smoke",
                    device="cpu", amp="off", threads=1, finetune_epochs=1, progress=False)


def test_runs_take_the_profiles_settings_and_the_sweeps_choice(criteo_small, pretrained, tmp_path):
    # 1: the selection the tables report is the widget's default, is shown from the paper run, and
    # trained again gives the same numbers (the profile's amp and threads, the chosen lr scale)
    from ctrkit.analysis import tables

    store = tmp_path / "store.jsonl"
    _sweep(criteo_small, store, pretrained)
    best = tables.chosen_setting(store, dataset=criteo_small.dataset)
    sel = widgets.PeerSelector(criteo_small, store=store, ckpt_dir=pretrained, preset="smoke", device="cpu",
                               amp="off", threads=1)
    assert (sel.weight.value, sel.lr_scale.value, sel.epochs.value) == (best["weight"], best["finetune_lr_scale"], 1)
    assert "chose on validation" in sel.defaults_note.value and "amp <code>off</code>" in sel.children[0].value
    sel.mode.value = "mutual"
    paper = {r["peer"]: r["test_auc"] for r in ResultsStore(store).records() if r["mode"] == "mutual"
             and r["weight"] == best["weight"] and r["finetune_lr_scale"] == best["finetune_lr_scale"]}
    n = len(ResultsStore(store).records())
    _train(sel)
    assert sel.last_error is None and sel.skipped and sel.paper_run
    assert "as a paper run" in sel.status.value and len(ResultsStore(store).records()) == n
    assert "lr_scale" in sel.result.value and f"<td>{best['finetune_lr_scale']:g}</td>" in sel.result.value

    sel.force.value = True  # trained again, as an exploration run: the paper run's numbers
    _train(sel)
    assert sel.last_error is None and not sel.skipped, sel.last_error
    mine = [r for r in ResultsStore(store).records() if r.get("tag") == widgets.EXPLORATION_TAG]
    assert {(r["amp"], r["finetune_lr_scale"], r["weight"]) for r in mine} == \
        {("off", best["finetune_lr_scale"], best["weight"])}
    assert {r["peer"]: r["test_auc"] for r in mine} == pytest.approx(paper, abs=1e-6)

    sel.init.value = "scratch"  # fields still at the sweep's values take scratch's (RunSpec's weight)
    assert sel.weight.value == 1.0
    sel.init.value = "pretrained"
    assert sel.weight.value == best["weight"]


def test_default_peers_have_checkpoints_in_either_folder_layout(criteo_small, pretrained, tmp_path):
    # 2: the default selection trains on the first click; 7: a seed folder (the CLI's --ckpt-dir) works too
    ckpt = tmp_path / "pretrained"
    experiments.pretrain_baselines(criteo_small, ["DCN"], ckpt, preset="smoke", seeds=[2021], epochs=1,
                                   device="cpu", progress=False)
    shutil.copytree(pretrained / "seed2021" / "DeepFM", ckpt / "seed2021" / "DeepFM")
    for folder in (ckpt, ckpt / "seed2021"):
        sel = _selector(criteo_small, tmp_path / "store.jsonl", folder)
        assert sel.checkpoints.value == str(ckpt / "seed2021") and sel.seed.value == 2021
        assert sel.peers.value == ("DeepFM", "DCN") and sel.init.value == "pretrained"
    sel.mode.value = "alone"
    _train(sel)
    assert sel.last_error is None, sel.last_error
    assert sorted(r["peer"] for r in ResultsStore(tmp_path / "store.jsonl").records()) == ["DCN", "DeepFM"]


def test_the_kd_teacher_is_a_control_and_is_named(criteo_small, pretrained, tmp_path):
    # 3: the teacher is chosen, not whichever selected model the list shows first; by default the best
    # baseline on validation (as the notebooks' KD control); the status and the table name it
    store = tmp_path / "store.jsonl"
    lines = [json.loads(x) for x in (pretrained / "baselines.jsonl").read_text().splitlines()]
    for r in lines:  # DeepFM, listed after FM, is the better baseline here
        r["valid_auc"] = 0.9 if r["peer"] == "DeepFM" else 0.6
    store.write_text("".join(json.dumps(r) + "\n" for r in lines))
    sel = _selector(criteo_small, store, pretrained)
    sel.peers.value, sel.mode.value = ("FM", "DeepFM"), "mutual"
    assert sel.teacher.layout.display == "none"
    # (hiding the teacher hides nothing else: each control has a layout of its own)
    assert all(c.layout.display != "none" for c in sel._inputs if c is not sel.teacher)
    sel.mode.value = "kd"
    assert sel.teacher.layout.display is None and sel.teacher.options == ("FM", "DeepFM")
    assert sel.teacher.value == "DeepFM"
    sel.teacher.value = "FM"  # the user's pick stays while FM is selected
    sel.peers.value = ("DeepFM", "FM")
    assert sel.teacher.value == "FM"
    sel.teacher.value = "DeepFM"
    _train(sel)
    assert sel.last_error is None, sel.last_error
    recs = [r for r in ResultsStore(store).records() if r["mode"] == "kd"]
    assert {r["peer_index"]: r["peer"] for r in recs} == {0: "DeepFM", 1: "FM"}
    assert "KD teacher: DeepFM" in sel.status.value and "<td>teacher</td>" in sel.result.value


def test_controls_are_locked_while_a_run_trains_and_labels_follow_the_run(criteo_small, pretrained, tmp_path,
                                                                          monkeypatch):
    # 4: a control changed mid-run (possible headless; disabled in the browser) does not relabel the run
    titles = []
    draw = widgets.curve_figure
    monkeypatch.setattr(widgets, "curve_figure", lambda h, labels, *, title: titles.append(title) or draw(
        h, labels, title=title))
    sel = _selector(criteo_small, tmp_path / "store.jsonl", pretrained)
    sel.peers.value, sel.init.value, sel.mode.value, sel.epochs.value = ("FM", "DeepFM"), "scratch", "mutual", 3
    seen, on_epoch = [], sel._on_epoch

    def user_edits_controls(row):
        seen.append([c.disabled for c in (sel.peers, sel.init, sel.mode, sel.weight, sel.epochs, sel.seed)])
        sel.mode.value, sel.init.value, sel.epochs.value = "alone", "pretrained", 50
        on_epoch(row)
        seen.append(sel.status.value)

    sel._on_epoch = user_edits_controls
    _train(sel)
    assert sel.last_error is None, sel.last_error
    assert [s for s in seen if isinstance(s, str)][:2] == ["training… epoch 1 of 3", "training… epoch 2 of 3"]
    assert set(titles) == {"mutual (scratch): validation AUC per peer"}
    assert seen[0] == [True] * 6
    assert not any(c.disabled for c in sel._inputs) and not sel.train_button.disabled


def test_a_store_that_cannot_be_read_stays_in_the_red_box(criteo_small, pretrained, tmp_path, monkeypatch):
    # 6: nothing escapes the training thread as a traceback outside the widget
    escaped = []
    monkeypatch.setattr("threading.excepthook", lambda a: escaped.append(f"{a.exc_type.__name__}: {a.exc_value}"))
    store = tmp_path / "foreign.jsonl"
    store.write_text("peer,test_auc\nDeepFM,0.7\n")
    sel = _selector(criteo_small, store, pretrained)
    _train(sel)
    assert escaped == []
    assert "not a JSON record" in sel.last_error and "Error:" in sel.error.value
    assert not sel.train_button.disabled and not sel._busy
    assert "no sweep" in sel.defaults_note.value  # said, not raised, at construction


def test_choices_are_refused_in_the_widgets_words(criteo_small, pretrained, tmp_path):
    # 7: before a run starts, one line in the widget's terms (not the command line's)
    sel = _selector(criteo_small, tmp_path / "store.jsonl", pretrained)
    sel.peers.value, sel.mode.value = (), "alone"
    _train(sel)
    assert sel.last_error.startswith("no peers selected")
    sel.peers.value, sel.init.value, sel.mode.value = ("FM", "DeepFM"), "scratch", "ensemble"
    with pytest.raises(CtrkitError, match="pick init 'pretrained'") as e:
        sel._validate()
    assert "--" not in str(e.value)
    sel.lr_scale.value = 0.0
    sel.mode.value = "mutual"
    with pytest.raises(CtrkitError, match="finetune_lr_scale: expected a finite number > 0"):
        sel._validate()

    sel = widgets.PeerSelector(criteo_small, store=tmp_path / "s.jsonl", ckpt_dir=pretrained, models=["deepfm", "fm"],
                               device="cpu")
    assert [v for _, v in sel.peers.options] == ["DeepFM", "FM"] and sel.peers.value == ("DeepFM", "FM")
    for bad, says in ((["NoSuch"], "parameter models: unknown model 'NoSuch'"),
                      (["DeepFM", "deepfm"], "parameter models: DeepFM is listed twice"),
                      ("DeepFM", "parameter models: expected a non-empty list")):
        with pytest.raises(CtrkitError, match=says):
            widgets.PeerSelector(criteo_small, store=tmp_path / "s.jsonl", models=bad)
    for kw, says in (({"device": "gpu"}, "parameter device"), ({"device": None}, "parameter device"),
                     ({"amp": "fp16"}, "parameter amp"), ({"epochs": 3}, "parameter epochs: not a setting")):
        with pytest.raises(CtrkitError, match=says):
            widgets.PeerSelector(criteo_small, store=tmp_path / "s.jsonl", **kw)


def test_a_diverged_auc_is_nan_not_the_dash_of_not_applicable(criteo_small, tmp_path):
    # 8: NaN (a diverged run) and None (does not apply) read differently, in the result and in the store
    rec = {"run_key": "k", "mode": "mutual", "init": "scratch", "peer": "DeepFM", "peers": "DeepFM+DCN", "seed": 1,
           "weight": 1.0, "epochs": 1, "pretrained_test_auc": None, "valid_auc": float("nan"),
           "test_auc": float("nan"), "ensemble_test_auc": float("nan")}
    store = ResultsStore(tmp_path / "store.jsonl")
    store.append([rec])
    view = _selector(criteo_small, store.path, None).refresh_store_view().value
    assert "<td>nan</td>" in view and "diverged" in view
    request = widgets._Request(peers=["DeepFM", "DCN"], init="scratch", mode="mutual", seed=1, weight=1.0,
                               lr_scale=0.1, epochs=1, force=False, ckpt_folder=None, out_dir=tmp_path)
    shown = widgets.PeerSelector._result_html([rec], request)
    assert "<td>nan</td>" in shown and "<td>–</td>" in shown and "diverged" in shown
