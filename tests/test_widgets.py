"""The peer selector, driven headless (set the controls, click Train, wait for the training thread),
and the notebook set-up it relies on: paths relative to the repository, data never regenerated.
Each numbered defect of issue 14 that a headless test can see has a test here (the browser-only
ones are in test_e2e_browser.py)."""
from __future__ import annotations

import json
import os
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
    """Tiny real checkpoints of FM and DeepFM (smoke preset, 1 epoch) for seeds 2021 and 2022."""
    ckpt = tmp_path_factory.mktemp("ckpt")
    experiments.pretrain_baselines(criteo_small, ["FM", "DeepFM"], ckpt, preset="smoke", seeds=[2021, 2022],
                                   epochs=1, device="cpu", progress=False)
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
                                                 ("seed", -1, "seed must be in 0.."),
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
