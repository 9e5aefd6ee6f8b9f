"""The peer selector: pick peers and settings, press Train, watch each peer's validation AUC, read
the result table. Every run goes through `ctrkit.experiments.run_one` (one call, `_call_run_one`),
tagged `exploration`, so it lands in the results store next to the notebooks' runs without entering
the paper's tables, and a run already there is shown, not repeated, unless "re-run" is ticked. A
selection whose settings equal a paper run of the store (the same run but for the tag) is shown from
that run: the numbers the tables report.

    from ctrkit.notebook import widgets
    widgets.PeerSelector(data, store="results/criteo/store.jsonl", ckpt_dir="results/criteo/pretrained",
                         preset="smoke", device="auto", amp="off", threads=1)

Every run takes the selector's `preset`, `device`, `amp`, `threads` and `graph` (06_explore passes
its profile's, so a run is computed as the notebooks' runs are); pretrained finetuning starts from the
weight, lr scale and epochs the store's finetuning sweep (02) chose on validation
(`ctrkit.analysis.tables.chosen_setting`, what `reproduce.chosen` reads).

It is an ipywidgets VBox. Training runs in a background thread, so the kernel keeps answering the
Stop button (a click is a message the kernel handles while the thread trains); a test drives it
headless by setting the controls, calling `selector.train_button.click()` and `selector.wait()`.
"""
from __future__ import annotations

import dataclasses
import html
import io
import math
import re
import shutil
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ctrkit import experiments
from ctrkit import models as registry
from ctrkit.models import canonical_name
from ctrkit.experiments import designs, runs
from ctrkit.experiments.store import ResultsStore
from ctrkit.training import config
from ctrkit.training.loop import RunStopped
from ctrkit.training.losses import check_weight
from ctrkit.core.extras import require
from ctrkit.core.utils import CtrkitError, seed_problem
from ctrkit.notebook.profiles import check_device

W = require("notebooks", "ipywidgets", what="ctrkit.notebook.widgets")

__all__ = ["PeerSelector", "EXPLORATION_TAG", "curve_figure"]

# The store tag of widget runs: the paper's tables leave these records out.
EXPLORATION_TAG = "exploration"

_ERROR_STYLE = ("border:1px solid #c0392b;background:#fdecea;color:#7b241c;padding:6px 8px;"
                "border-radius:4px;font-family:monospace;white-space:pre-wrap")
_NOTE_STYLE = "color:#555;font-style:italic"
# Store columns of the "runs in the store" view, and which of them are numbers.
_STORE_COLUMNS = ["tag", "mode", "init", "peers", "peer", "seed", "epochs", "pretrained_test_auc", "test_auc",
                  "ensemble_test_auc"]
_NUMERIC = {"seed", "epochs", "best_epoch", "weight", "pretrained_test_auc", "valid_auc", "test_auc",
            "delta_auc", "test_logloss", "ensemble_test_auc"}
_INTEGER = {"seed", "epochs", "best_epoch"}
_SETTING = {"weight", "finetune_lr_scale"}  # shown as typed (%g), not as a 4-decimal metric
# The choices (RunSpec's), pretrained first: the widget's default when checkpoints exist.
INITS = tuple(sorted(config.INITS, key=lambda init: init != "pretrained"))
MODES = config.MODES
# Settings every run of a selector takes (RunSpec fields), with RunSpec's defaults.
_SPEC = {f.name: f.default for f in dataclasses.fields(config.RunSpec)}
RUN_SETTINGS = {k: _SPEC[k] for k in ("preset", "device", "amp", "threads", "graph")}
# A NaN metric is a run that diverged, not a value that does not apply: the table says which is which.
_NAN_NOTE = "nan: the run diverged (its loss or predictions became non-finite); –: does not apply to this run"


@dataclass(frozen=True)
class _Request:
    """One Train click, validated: what run_one gets (`peers`: the KD teacher first)."""

    peers: list[str]
    init: str
    mode: str
    seed: int
    weight: float
    lr_scale: float
    epochs: int
    force: bool
    ckpt_folder: Path | None
    out_dir: Path

    @property
    def teacher(self) -> str | None:
        return self.peers[0] if self.mode == "kd" else None


def _cell(value, column: str) -> str:
    """One table cell as text: a value that does not apply (None) is an en dash, a NaN metric (a
    diverged run) is "nan", never "None" and never the dash that would read as "not applicable"."""
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float):
        return str(int(value)) if column in _INTEGER else f"{value:g}" if column in _SETTING else f"{value:.4f}"
    return str(value)


_TABLE_CSS = ("<style>.ctrkit-table{border-collapse:collapse}.ctrkit-table th,.ctrkit-table td"
              "{padding:2px 6px;text-align:right}</style>")


STORE_VIEW_ROWS = 20  # the store's newest records the view shows in full


def _html_table(df: pd.DataFrame) -> str:
    text = pd.DataFrame({c: [_cell(v, c) for v in df[c]] for c in df.columns})
    return _TABLE_CSS + text.to_html(index=False, border=0, classes="ctrkit-table")


def _records_table(rows: Sequence[dict], columns: Sequence[str], headers: dict | None = None) -> str:
    """Records (dicts as stored) as an HTML table, cell by cell from the raw values: a DataFrame would
    turn None (does not apply) into NaN (diverged) before they are told apart."""
    text = pd.DataFrame({(headers or {}).get(c, c): [_cell(r.get(c), c) for r in rows] for c in columns},
                        columns=[(headers or {}).get(c, c) for c in columns])
    out = _TABLE_CSS + text.to_html(index=False, border=0, classes="ctrkit-table")
    return out + (f"<p style='{_NOTE_STYLE}'>{_NAN_NOTE}</p>" if (text == "nan").any().any() else "")


def _seed_of(folder: str | Path | None) -> int | None:
    m = re.fullmatch(r"seed(\d+)", Path(folder).name) if folder else None
    return int(m.group(1)) if m else None


def _model_names(models: Sequence[str] | None) -> list[str]:
    """The models the list offers: canonical names (a checkpoint folder is named so), each once."""
    if models is None:
        return [m for m in registry.names() if m != "LR"]  # with an installed package's models
    if isinstance(models, str) or not models:
        raise CtrkitError(f"parameter models: expected a non-empty list of model names, got {models!r}")
    names = []
    for m in models:
        try:
            name = canonical_name(m)
        except CtrkitError as e:
            raise CtrkitError(f"parameter models: {e}") from None
        if name in names:
            raise CtrkitError(f"parameter models: {name} is listed twice")
        names.append(name)
    return names


def _run_settings(given: dict) -> dict:
    """The selector's run settings (preset, device, amp, threads, graph): RunSpec's defaults, updated."""
    unknown = sorted(set(given) - set(RUN_SETTINGS))
    if unknown:
        raise CtrkitError(f"parameter {unknown[0]}: not a setting of the peer selector; valid: "
                          f"{', '.join(RUN_SETTINGS)}")
    out = {**RUN_SETTINGS, **given}
    check_device(out["device"])
    if out["amp"] not in config.AMP_CHOICES:
        raise CtrkitError(f"parameter amp: expected one of {', '.join(config.AMP_CHOICES)}, got {out['amp']!r}")
    return out


def curve_figure(history: Sequence[dict], labels: Sequence[str], *, title: str):
    """Each peer's validation AUC per epoch (and the ensemble's) from mutual_fit's history rows; the
    legend sits outside the axes, so it never covers a point. A matplotlib Figure without pyplot:
    the widget draws it in the training thread."""
    from matplotlib.figure import Figure

    from ctrkit.analysis import plots

    with plots.style():
        fig = Figure(figsize=(plots.COLUMN * 1.6, 2.3))
        ax = fig.subplots()
        epochs = [r["epoch"] for r in history]
        for k, label in enumerate(labels):
            ax.plot(epochs, [r["peers"][k]["valid_auc"] for r in history], marker="o", label=label)
        ax.plot(epochs, [r["ensemble_valid_auc"] for r in history], linestyle="--", marker="x", color="black",
                label="ensemble (mean p)")
        ax.set(title=title, xlabel="epoch", ylabel="validation AUC")
        if len(epochs) <= 12:
            ax.set_xticks(epochs)  # whole epochs only, also for a single point
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, borderaxespad=0.0)
    return fig


class PeerSelector(W.VBox):
    """Peers (models; pretrained checkpoints from a `pretrain_baselines` folder or one of its
    `seed<S>` folders), init, mode, the KD teacher, weight, finetuning lr scale, epochs, seed; Train
    and Stop; a live per-peer validation-AUC curve; the run's result table.

    `settings`: the run settings every Train click takes (`RUN_SETTINGS`: preset, device, amp,
    threads, graph; RunSpec's defaults otherwise). Errors (bad choices, missing checkpoints, a failing
    run, a store that cannot be read) appear in the red box inside the widget and in `last_error`;
    nothing is swallowed silently. `background=False` trains in the caller's thread (no Stop then).
    """

    def __init__(self, data, *, store: str | Path, ckpt_dir: str | Path | None = None,
                 models: Sequence[str] | None = None, runs_dir: str | Path | None = None, background: bool = True,
                 **settings):
        s = _run_settings(settings)
        self.preset, self.device, self.amp, self.threads, self.graph = (s[k] for k in RUN_SETTINGS)
        self.data, self.background = data, background
        self.store = ResultsStore(store)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        # Per-run folders (mutual_fit's result.json with the epoch history) live next to the store;
        # one is created only when a run really trains.
        self.runs_dir = Path(runs_dir) if runs_dir is not None else self.store.path.parent / "widget_runs"
        self.last_records: pd.DataFrame | None = None
        self.last_error: str | None = None
        self.history: list[dict] = []
        self.skipped = self.stopped = self.paper_run = False
        self._busy, self._relabeling, self._setting_teacher = False, False, False
        self._teacher_pick: str | None = None  # the KD teacher the user picked (None: the default)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: _Request | None = None  # the run in progress: what its curve and status describe
        self._labels: list[str] = []
        self.chosen, why = self._sweep_choice()
        self._baselines = self._read_baselines()
        self._build_controls(_model_names(models))
        self._wire()
        title = W.HTML(f"<b>Peer selector</b> — {html.escape(str(data.dataset))} data at "
                       f"<code>{html.escape(str(data.path))}</code>, preset <code>{html.escape(str(self.preset))}</code>, "
                       f"amp <code>{html.escape(str(self.amp))}</code>, threads <code>{html.escape(str(self.threads))}"
                       f"</code>, store <code>{html.escape(str(self.store.path))}</code> (runs tagged "
                       f"<code>{EXPLORATION_TAG}</code>, left out of the paper's tables)")
        self.defaults_note = W.HTML(f"<span style='{_NOTE_STYLE}'>{html.escape(why)}</span>")
        controls = W.HBox([W.VBox([self.peers, self.checkpoints]),
                           W.VBox([self.init, self.mode, self.teacher, self.force]),
                           W.VBox([self.weight, self.lr_scale, self.epochs, self.seed])])
        super().__init__([title, controls, self.defaults_note,
                          W.HBox([self.train_button, self.stop_button, self.status]),
                          self.error, self.curve, self.result])
        self.add_class("ctrkit-peer-selector")

    # ---- what the store says ---------------------------------------------------------------------
    def _sweep_choice(self) -> tuple[dict | None, str]:
        """(the finetuning setting the store's sweep chose on validation, or None; the sentence saying so).
        The same function as the notebooks' `reproduce.chosen`, so the defaults are the tables' setting."""
        from ctrkit.analysis import tables

        try:
            best = tables.chosen_setting(self.store.path, dataset=self.data.dataset)
        except CtrkitError as e:
            return None, (f"Finetuning defaults: RunSpec's (weight {_SPEC['weight']:g}, lr scale "
                          f"{_SPEC['finetune_lr_scale']:g}); the store has no sweep to take them from ({e}).")
        ep = best["finetune_epochs"]
        return best, (f"Finetuning defaults (init pretrained): weight {best['weight']:g}, lr scale "
                      f"{best['finetune_lr_scale']:g}{f', {ep} epoch(s)' if ep else ''}: the setting the sweep of 02 "
                      f"chose on validation for {self.data.dataset}, the one the tables report.")

    def _read_baselines(self) -> pd.DataFrame | None:
        """The store's baseline records of this dataset (the KD teacher's default), None when unreadable."""
        from ctrkit.analysis import records

        try:
            df = records.records(self.store.path, dataset=self.data.dataset)
        except CtrkitError:
            return None
        return df[df["mode"] == "baseline"] if len(df) else None

    def _defaults(self, init: str) -> dict:
        """weight, lr scale and epochs a run of `init` starts from: pretrained, the sweep's choice (else
        RunSpec's); from scratch, RunSpec's weight (02's scratch runs') and one epoch."""
        if init == "pretrained" and self.chosen:
            return {"weight": self.chosen["weight"], "lr_scale": self.chosen["finetune_lr_scale"],
                    "epochs": self.chosen["finetune_epochs"] or 1}
        return {"weight": _SPEC["weight"], "lr_scale": _SPEC["finetune_lr_scale"], "epochs": 1}

    # ---- controls --------------------------------------------------------------------------------
    def _build_controls(self, names: list[str]) -> None:
        self.peers = W.SelectMultiple(options=names, value=(), rows=min(6, len(names)), description="peers")
        self.checkpoints = W.Dropdown(options=self._checkpoint_sets(), description="checkpoints")
        # the first two models with a checkpoint, finetuned: a default Train click runs as it is
        have = [m for m in names if m in self._available()]
        init = "pretrained" if len(have) >= 2 else "scratch"
        self.peers.value = tuple(have[:2] if init == "pretrained" else names[:2])
        # three columns of these fit a notebook cell (the default width, 300 px, overflowed it); a Layout
        # of each its own: the teacher's is hidden outside kd
        small = lambda: dict(layout=W.Layout(width="250px"), style={"description_width": "80px"})  # noqa: E731
        self.init = W.Dropdown(options=list(INITS), value=init, description="init", **small())
        self.mode = W.Dropdown(options=list(MODES), value="mutual", description="mode", **small())
        # peer 0 of a kd run; a multi-select reports its selection in list order, so it is chosen here
        self.teacher = W.Dropdown(options=[], description="KD teacher", **small())
        d = self._defaults(init)
        # unbounded fields, checked at Train: a bounded one would clamp a typed 1e9 to its max without a word
        self.weight = W.FloatText(value=d["weight"], step=0.1, description="weight", **small())
        self.lr_scale = W.FloatText(value=d["lr_scale"], step=0.1, description="lr scale", **small(),
                                    tooltip="finetuning lr = this x the pretraining lr (peers from a checkpoint)")
        self.epochs = W.IntText(value=d["epochs"], description="epochs", **small())
        self.seed = W.IntText(value=_seed_of(self.checkpoints.value) or 2021, description="seed", **small())
        self.force = W.Checkbox(value=False, description="re-run if already in the store", indent=False)
        self.train_button = W.Button(description="Train", button_style="primary", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.status, self.error, self.result = W.HTML(), W.HTML(), W.HTML()
        # hidden until there is a PNG: an empty Image shows the browser's broken-image icon
        self.curve = W.Image(format="png", layout=W.Layout(max_width="720px", display="none"))
        self.store_view = W.HTML()
        for name in ("peers", "checkpoints", "init", "mode", "teacher", "weight", "lr_scale", "epochs", "seed", "force",
                     "train_button", "stop_button", "status", "error", "curve", "result", "store_view"):
            getattr(self, name).add_class("ctrkit-" + name.replace("_button", "").replace("_", "-"))

    def _wire(self) -> None:
        self.train_button.on_click(self._on_train)
        self.stop_button.on_click(self._on_stop)
        self.init.observe(self._on_init, names="value")
        self.checkpoints.observe(self._on_checkpoints, names="value")
        self.seed.observe(self._on_seed, names="value")
        self.peers.observe(self._update_teacher, names="value")
        self.mode.observe(self._update_teacher, names="value")
        self.teacher.observe(self._on_teacher, names="value")
        self._describe_peers()
        self._update_teacher()

    @property
    def _inputs(self) -> list:
        """The controls a run is made of: disabled while it trains, so a run is labelled by what it runs."""
        return [self.peers, self.checkpoints, self.init, self.mode, self.teacher, self.weight, self.lr_scale,
                self.epochs, self.seed, self.force]

    # ---- choices -------------------------------------------------------------------------------
    def _checkpoint_sets(self) -> list[tuple[str, str]]:
        """(label, folder) of every checkpoint set: a folder holding <model>/best.pt. ckpt_dir may be
        pretrain_baselines' folder of `seed<S>` folders (what the notebooks pass) or one of those
        (what the CLI's --ckpt-dir takes)."""
        sets = []
        if self.ckpt_dir is not None and self.ckpt_dir.is_dir():
            for d in [self.ckpt_dir] + sorted(p for p in self.ckpt_dir.iterdir() if p.is_dir()):
                models = sorted(p.parent.name for p in d.glob("*/best.pt"))
                if models:
                    sets.append((f"{d.name}: {', '.join(models)}", str(d)))
        return sets or [("(no pretrained checkpoints)", "")]

    def _available(self) -> set[str]:
        folder = self.checkpoints.value
        return {p.parent.name for p in Path(folder).glob("*/best.pt")} if folder else set()

    def _describe_peers(self, change=None) -> None:
        # Mark the models that have a checkpoint, so a pretrained choice is informed before Train.
        have, chosen = self._available(), self.peers.value
        self._relabeling = True  # new options reset the selection for a moment: not a new choice of teacher
        try:
            self.peers.options = [(f"{m}  ✓ pretrained" if m in have else m, m) for m in
                                  [o[1] if isinstance(o, tuple) else o for o in self.peers.options]]
            self.peers.value = chosen
        finally:
            self._relabeling = False

    def _update_teacher(self, change=None) -> None:
        """The KD teacher: one of the selected peers, shown for mode kd; the one the user picked while it
        stays selected, else the best baseline on validation among them (designs.best_model, as the
        notebooks' reproduce.kd_peers), else the first."""
        if self._relabeling:
            return
        chosen = list(self.peers.value)
        self._setting_teacher = True  # our own change of the dropdown is not the user's pick
        try:
            self.teacher.options = chosen
            self.teacher.value = self._teacher_pick if self._teacher_pick in chosen else self._best_baseline(chosen)
        finally:
            self._setting_teacher = False
        self.teacher.layout.display = None if self.mode.value == "kd" else "none"

    def _on_teacher(self, change) -> None:
        if not self._setting_teacher:
            self._teacher_pick = change["new"]

    def _best_baseline(self, chosen: list[str]) -> str | None:
        if not chosen:
            return None
        base = self._baselines
        if base is not None and base["model"].isin(chosen).any():
            try:
                return designs.best_model(base[base["model"].isin(chosen)])
            except CtrkitError:  # baselines without a validation AUC: no ranking
                pass
        return chosen[0]

    def _on_init(self, change) -> None:
        # A field still at the old init's default takes the new one's (pretrained: the sweep's choice;
        # scratch: RunSpec's weight); a value the user typed stays.
        old, new = self._defaults(change["old"]), self._defaults(change["new"])
        for key, field in (("weight", self.weight), ("lr_scale", self.lr_scale), ("epochs", self.epochs)):
            if field.value == old[key]:
                field.value = new[key]
        self._describe_peers()

    def _on_checkpoints(self, change) -> None:
        # checkpoints pretrained with seed S are finetuned with seed S: keep the two in step
        s = _seed_of(change["new"])
        if s is not None and s != self.seed.value:
            self.seed.value = s
        self._describe_peers()

    def _on_seed(self, change) -> None:
        match = [v for _, v in self.checkpoints.options if _seed_of(v) == change["new"]]
        if match and match[0] != self.checkpoints.value:
            self.checkpoints.value = match[0]

    def _validate(self) -> _Request:
        peers, mode, init = list(self.peers.value), self.mode.value, self.init.value
        seed, weight, lr_scale = int(self.seed.value), float(self.weight.value), float(self.lr_scale.value)
        check_weight(weight)
        config.check_lr_scale(lr_scale)  # RunSpec's own rule, said before anything trains
        if seed_problem(seed):
            raise CtrkitError(f"seed: {seed_problem(seed)}")
        if int(self.epochs.value) < 1:
            raise CtrkitError(f"epochs must be >= 1, got {self.epochs.value}")
        need = config.min_peers(mode)
        if not peers:
            raise CtrkitError(f"no peers selected: pick {'one or more models' if need == 1 else f'{need} or more'} "
                              f"in the peers list")
        if len(peers) < need:
            raise CtrkitError(f"mode {mode!r} needs at least {need} peers; {len(peers)} selected")
        if mode == "ensemble" and init != "pretrained":
            raise CtrkitError("mode 'ensemble' averages the pretrained peers' predictions (nothing trains): "
                              "pick init 'pretrained'")
        if mode == "kd":
            teacher = self.teacher.value if self.teacher.value in peers else peers[0]
            peers = [teacher] + [p for p in peers if p != teacher]
        folder = self._checkpoint_folder(peers, init, mode, seed)
        out_dir = self.runs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        return _Request(peers=peers, init=init, mode=mode, seed=seed, weight=weight, lr_scale=lr_scale,
                        epochs=int(self.epochs.value), force=bool(self.force.value), ckpt_folder=folder,
                        out_dir=out_dir)

    def _checkpoint_folder(self, peers: list[str], init: str, mode: str, seed: int) -> Path | None:
        """The chosen checkpoint set, checked against what the run loads (all peers when pretrained,
        the KD teacher always)."""
        folder = Path(self.checkpoints.value) if self.checkpoints.value else None
        if init == "pretrained" or mode in ("kd", "ensemble"):
            if folder is None:
                raise CtrkitError(f"init {init!r} / mode {mode!r} needs pretrained checkpoints and none were "
                                  f"found under {self.ckpt_dir} (give the folder of the seed<S> folders or one seed<S> "
                                  f"folder, each holding <model>/best.pt; run 01_baselines first)")
            if _seed_of(folder) not in (None, seed):
                raise CtrkitError(self._seed_mismatch(folder, seed))
            need_ckpt = peers if init == "pretrained" else peers[:1]
            missing = [p for p in need_ckpt if not (folder / p / "best.pt").is_file()]  # pretrain_baselines' layout
            if missing:
                raise CtrkitError(f"missing checkpoint(s) for {', '.join(missing)} in {folder} "
                                  f"(pretrain them in 01_baselines, or pick init 'scratch')")
        return folder

    def _seed_mismatch(self, folder: Path, seed: int) -> str:
        said = f"checkpoint folder {folder.name} was pretrained with seed {_seed_of(folder)}, the run's seed is {seed}"
        if any(_seed_of(v) == seed for _, v in self.checkpoints.options):
            return f"{said}: pick seed {_seed_of(folder)} or the seed{seed} checkpoints"
        return (f"{said}: pick seed {_seed_of(folder)}, or pretrain seed {seed} in 01_baselines "
                f"(no checkpoints of seed {seed} under {self.ckpt_dir})")

    # ---- running -------------------------------------------------------------------------------
    def _clear(self) -> None:
        """A new run starts from a blank slate: no curve, table or error of the previous one."""
        self.error.value = self.result.value = ""
        self.curve.layout.display = "none"
        self.curve.value = b""
        self.last_error, self.last_records, self.history = None, None, []
        self.skipped = self.stopped = self.paper_run = False

    def _show_error(self, message: str, details: str | None = None) -> None:
        self.last_error = message
        body = html.escape(message)
        if details:
            body += f"<details><summary>traceback</summary>{html.escape(details)}</details>"
        self.error.value = f"<div class='ctrkit-error-box' style='{_ERROR_STYLE}'><b>Error:</b> {body}</div>"
        self.status.value = "<span style='color:#c0392b'>failed</span>"

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        for control in self._inputs:
            control.disabled = busy
        self.train_button.disabled, self.stop_button.disabled = busy, not (busy and self.background)

    def _on_train(self, button=None) -> None:
        if self._busy:
            return  # a second click while a run trains (a double-click) is not a second run
        self._clear()
        try:
            request = self._validate()
        except CtrkitError as e:
            self._show_error(str(e))
            return
        self._stop.clear()
        self._set_busy(True)
        self.status.value = "training…" + self._teacher_words(request)
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(request,), name="ctrkit-peer-selector",
                                            daemon=True)
            self._thread.start()
        else:
            self._run(request)

    @staticmethod
    def _teacher_words(r: _Request) -> str:
        return f" (KD teacher {r.teacher}; students {', '.join(r.peers[1:])})" if r.teacher else ""

    def _on_stop(self, button=None) -> None:
        if self._busy:
            self._stop.set()
            self.stop_button.disabled = True
            self.status.value = "stopping after the current step…"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run (if any) is over; False if it still runs after `timeout` s."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _settings(self, r: _Request) -> dict:
        """The RunSpec settings of a request."""
        settings = dict(init=r.init, mode=r.mode, seed=r.seed, ckpt_dir=r.ckpt_folder, preset=self.preset,
                        device=self.device, amp=self.amp, threads=self.threads, graph=self.graph, progress=False,
                        tag=EXPLORATION_TAG)
        if r.mode != "ensemble":
            # (ensemble trains nothing: it keeps RunSpec's weight, lr scale and epochs, as 02's ensemble
            # run does; they are part of the run's key, so the same selection is the same run)
            settings.update(weight=r.weight, finetune_lr_scale=r.lr_scale)
            # pretrained peers finetune for `finetune_epochs`; scratch peers train for `epochs`
            settings["epochs" if r.init == "scratch" else "finetune_epochs"] = r.epochs
        return settings

    def _paper_records(self, r: _Request, settings: dict) -> list[dict] | None:
        """The store's paper run of the same settings (the same run key but for the tag, which keeps
        exploration runs out of the tables), when there is one: the numbers the tables report."""
        spec = config.RunSpec.from_dict({**settings, "peers": tuple(r.peers), "tag": None})
        return runs.check_same_checkpoints(self.store.run_records(spec.key(self.data.fingerprint)))

    def _call_run_one(self, r: _Request) -> tuple[list[dict], bool]:
        """The one call into the experiments layer (after looking for the same paper run)."""
        settings = self._settings(r)
        paper = None if r.force else self._paper_records(r, settings)
        if paper:
            return paper, True
        return experiments.run_one(self.data, r.peers, store=self.store, force=r.force, out_dir=r.out_dir,
                                   callback=self._on_epoch, stop=self._stop, **settings)

    def _run(self, r: _Request) -> None:
        t0 = time.perf_counter()
        existed = r.out_dir.exists()
        self._running = r
        # a SelectMultiple picks each model once
        self._labels = [f"{p} (teacher)" if p == r.teacher else p for p in r.peers]
        try:
            records, skipped = self._call_run_one(r)
            # (a Stop pressed as the last step ended comes too late: the run is complete and stored)
            self._show_result(r, records, skipped, time.perf_counter() - t0)
        except RunStopped:
            self._announce_stopped(r, existed)
        except CtrkitError as e:
            self._show_error(str(e))
        except Exception as e:  # a failing run: shown in full inside the widget, never swallowed
            self._show_error(f"{type(e).__name__}: {e}", traceback.format_exc())
        finally:
            if r.out_dir.is_dir() and not any(r.out_dir.iterdir()):
                r.out_dir.rmdir()  # ours and empty: no trace of a run that did not train
            self._set_busy(False)
            self._refresh_after_run()

    def _refresh_after_run(self) -> None:
        # The training thread's last step: an exception here would be a traceback outside the widget
        # (the thread's), so a store that cannot be read goes to the red box like any other error.
        try:
            self.refresh_store_view()
        except CtrkitError as e:
            if self.last_error != str(e):
                self._show_error(f"the store view: {e}")
        except Exception as e:  # noqa: BLE001 -- shown with its traceback, never lost in the thread
            self._show_error(f"the store view: {type(e).__name__}: {e}", traceback.format_exc())

    def _announce_stopped(self, r: _Request, existed: bool) -> None:
        self.stopped = True
        if not existed and r.out_dir.is_dir():
            shutil.rmtree(r.out_dir)  # this click's partial run folder: nothing of it is kept
        self.status.value = (f"<b>stopped</b> by the Stop button in epoch {len(self.history) + 1} of {r.epochs} "
                             f"(after the current step): nothing was appended to the store")

    def _on_epoch(self, row: dict) -> None:
        """Per-epoch callback (training thread): append the row, redraw the curve (live in JupyterLab).
        Labelled by the run's own request: the controls may say something else by now."""
        r = self._running
        self.history.append(row)
        self._draw()
        self.status.value = f"training… epoch {row.get('epoch')} of {r.epochs if r else '?'}" + (
            self._teacher_words(r) if r else "")

    def _draw(self) -> None:
        if not self.history:
            return
        r = self._running
        what = f"{r.mode} ({r.init})" if r else "run"
        fig = curve_figure(self.history, self._labels, title=f"{what}: validation AUC per peer")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
        self.curve.value = buf.getvalue()
        self.curve.layout.display = None

    def _show_result(self, r: _Request, records: list[dict], skipped: bool, took: float) -> None:
        self.skipped = skipped
        self.paper_run = skipped and bool(records) and all(rec.get("tag") is None for rec in records)
        self.last_records = pd.DataFrame(records)
        self.result.value = self._result_html(records, r)
        ran = records[0].get("epochs") if records else None
        if self.paper_run:
            msg = ("already in the store as a paper run (the same settings, untagged: the run the tables report): "
                   "its numbers shown, not re-run; tick “re-run” to train it again as an exploration run")
        elif skipped:
            msg = ("already in the store (run before with these settings): shown, not re-run; tick "
                   "“re-run” to train it again")
        elif r.mode == "ensemble":
            msg = f"done in {took:.0f} s: the pretrained peers and their average evaluated (no training)"
        else:
            msg = f"done in {took:.0f} s: {len(records)} records appended to the store"
        if r.mode != "ensemble" and isinstance(ran, int) and ran < r.epochs:
            msg += (f"; <b>early stop</b>: {ran} of {r.epochs} epochs ran (every peer stopped improving on "
                    f"validation; best weights kept)")
        self.status.value = msg + (f"; KD teacher: {html.escape(r.teacher)}" if r.teacher else "")

    @staticmethod
    def _result_html(records: list[dict], r: _Request) -> str:
        """The run's records, one row per peer (the KD teacher marked), with the finetuning lr scale and
        the gain over the pretrained model; cells from the raw values (None: –, NaN: nan)."""
        rows = [{**rec, "role": ("teacher" if rec.get("peer") == r.teacher else "student") if r.teacher else None,
                 "delta_auc": None if rec.get("test_auc") is None or rec.get("pretrained_test_auc") is None
                 else rec["test_auc"] - rec["pretrained_test_auc"]} for rec in records]
        cols = [c for c in ("peer", "role", "init", "mode", "seed", "weight", "finetune_lr_scale", "epochs",
                            "best_epoch", "pretrained_test_auc", "valid_auc", "test_auc", "delta_auc", "test_logloss")
                if c != "role" or r.teacher]
        out = _records_table(rows, cols, headers={"finetune_lr_scale": "lr_scale"})
        ens = next((rec.get("ensemble_test_auc") for rec in records if rec.get("ensemble_test_auc") is not None), None)
        if ens is not None:
            words = "nan</b> (diverged)" if isinstance(ens, float) and math.isnan(ens) else f"{ens:.4f}</b>"
            out += f"<p>ensemble (mean p) test AUC: <b>{words}</p>"
        return out

    # ---- the store ---------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """Every run in the store, one row per peer: what was compared and the test AUCs (numbers as
        numbers: a missing AUC is NaN)."""
        df = self.store.to_frame()
        t = pd.DataFrame({c: df[c] if c in df.columns else pd.Series(dtype=object) for c in _STORE_COLUMNS})
        for c in _NUMERIC & set(t.columns):
            t[c] = pd.to_numeric(t[c], errors="coerce")
        return t.reset_index(drop=True)

    def refresh_store_view(self) -> W.HTML:
        """The runs-in-the-store widget (`store_view`), brought up to date; a sentence when empty."""
        recs = self.store.records()
        if not recs:
            self.store_view.value = (f"<p style='{_NOTE_STYLE}'>No runs in the store yet "
                                     f"(<code>{html.escape(str(self.store.path))}</code>): choose peers above "
                                     f"and press Train.</p>")
            return self.store_view
        # a reproduction's store holds hundreds of records: their counts, then the newest few in full
        t = self.table()
        counts = (t.assign(tag=t["tag"].fillna("paper")).groupby(["tag", "mode", "init"], dropna=False)
                  .size().rename("records").reset_index())
        # the newest from the records as stored: a NaN AUC (diverged) is not a missing one
        newest = [{**r, "tag": r.get("tag") or "paper"} for r in recs[::-1][:STORE_VIEW_ROWS]]
        self.store_view.value = (f"<p>{len(t)} record(s) in <code>{html.escape(str(self.store.path))}</code>"
                                 f" (one per peer per run; tag “{EXPLORATION_TAG}”: this widget's), by kind:</p>"
                                 + _html_table(counts)
                                 + f"<p>The newest {len(newest)}, newest first (<code>selector.table()</code>: "
                                   f"all of them):</p>" + _records_table(newest, _STORE_COLUMNS))
        return self.store_view
