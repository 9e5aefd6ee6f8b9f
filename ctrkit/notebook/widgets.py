"""The peer selector: pick peers and settings, press Train, watch each peer's validation AUC, read
the result table. Every run goes through `ctrkit.experiments.run_one` (one call, `_call_run_one`),
tagged `exploration`, so it lands in the results store next to the notebooks' runs without entering
the paper's tables, and a run already there is shown, not repeated, unless "re-run" is ticked.

    from ctrkit.notebook import widgets
    widgets.PeerSelector(data, store="results/criteo/store.jsonl", ckpt_dir="results/criteo/pretrained")

It is an ipywidgets VBox. Training runs in a background thread, so the kernel keeps answering the
Stop button (a click is a message the kernel handles while the thread trains); a test drives it
headless by setting the controls, calling `selector.train_button.click()` and `selector.wait()`.
"""
from __future__ import annotations

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
from ctrkit.models import MODELS
from ctrkit.experiments.store import ResultsStore
from ctrkit.training import config
from ctrkit.training.loop import RunStopped
from ctrkit.training.losses import check_weight
from ctrkit.core.extras import require
from ctrkit.core.utils import CtrkitError

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
# The choices (RunSpec's), pretrained first: the widget's default when checkpoints exist.
INITS = tuple(sorted(config.INITS, key=lambda init: init != "pretrained"))
MODES = config.MODES


@dataclass(frozen=True)
class _Request:
    """One Train click, validated: what run_one gets."""

    peers: list[str]
    init: str
    mode: str
    seed: int
    weight: float
    epochs: int
    force: bool
    ckpt_folder: Path | None
    out_dir: Path


def _cell(value, column: str) -> str:
    """One table cell as text: a missing number is an en dash, never "None" or "nan"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return str(int(value)) if column in _INTEGER else f"{value:g}" if column == "weight" else f"{value:.4f}"
    return str(value)


_TABLE_CSS = ("<style>.ctrkit-table{border-collapse:collapse}.ctrkit-table th,.ctrkit-table td"
              "{padding:2px 6px;text-align:right}</style>")


STORE_VIEW_ROWS = 20  # the store's newest records the view shows in full


def _html_table(df: pd.DataFrame) -> str:
    text = pd.DataFrame({c: [_cell(v, c) for v in df[c]] for c in df.columns})
    return _TABLE_CSS + text.to_html(index=False, border=0, classes="ctrkit-table")


def _seed_of(folder: str | Path | None) -> int | None:
    m = re.fullmatch(r"seed(\d+)", Path(folder).name) if folder else None
    return int(m.group(1)) if m else None


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
    """Peers (models; pretrained checkpoints from a `pretrain_baselines` folder), init, mode, weight,
    epochs, seed; Train and Stop; a live per-peer validation-AUC curve; the run's result table.

    Errors (bad choices, missing checkpoints, a failing run) appear in the red box inside the
    widget and in `last_error`; nothing is swallowed silently. `background=False` trains in the
    caller's thread (no Stop then).
    """

    def __init__(self, data, *, store: str | Path, ckpt_dir: str | Path | None = None, preset: str = "quick",
                 device: str = "auto", models: Sequence[str] | None = None, runs_dir: str | Path | None = None,
                 background: bool = True):
        self.data = data
        self.store = ResultsStore(store)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.preset, self.device, self.background = preset, device, background
        # Per-run folders (mutual_fit's result.json with the epoch history) live next to the store;
        # one is created only when a run really trains.
        self.runs_dir = Path(runs_dir) if runs_dir is not None else self.store.path.parent / "widget_runs"
        self.last_records: pd.DataFrame | None = None
        self.last_error: str | None = None
        self.history: list[dict] = []
        self.skipped = self.stopped = False
        self._busy = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._labels: list[str] = []
        self._build_controls(models)
        title = W.HTML(f"<b>Peer selector</b> — {html.escape(str(data.dataset))} data at "
                       f"<code>{html.escape(str(data.path))}</code>, preset <code>{html.escape(self.preset)}</code>, "
                       f"store <code>{html.escape(str(self.store.path))}</code> (runs tagged "
                       f"<code>{EXPLORATION_TAG}</code>, left out of the paper's tables)")
        controls = W.HBox([W.VBox([self.peers, self.checkpoints]),
                           W.VBox([self.init, self.mode, self.weight]),
                           W.VBox([self.epochs, self.seed, self.force])])
        super().__init__([title, controls, W.HBox([self.train_button, self.stop_button, self.status]),
                          self.error, self.curve, self.result])
        self.add_class("ctrkit-peer-selector")

    def _build_controls(self, models: Sequence[str] | None) -> None:
        names = list(models) if models else [m for m in MODELS if m != "LR"]
        self.peers = W.SelectMultiple(options=names, value=tuple(names[:2]), rows=min(6, len(names)),
                                      description="peers")
        self.checkpoints = W.Dropdown(options=self._checkpoint_sets(), description="checkpoints")
        have = bool(self.checkpoints.options[0][1])
        self.init = W.Dropdown(options=list(INITS), value="pretrained" if have else "scratch",
                               description="init")
        self.mode = W.Dropdown(options=list(MODES), value="mutual", description="mode")
        # unbounded fields, checked at Train: a bounded one would clamp a typed 1e9 to its max without a word
        self.weight = W.FloatText(value=1.0, step=0.1, description="weight")
        self.epochs = W.IntText(value=1, description="epochs")
        self.seed = W.IntText(value=_seed_of(self.checkpoints.value) or 2021, description="seed")
        self.force = W.Checkbox(value=False, description="re-run if already in the store", indent=False)
        self.train_button = W.Button(description="Train", button_style="primary", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.status, self.error, self.result = W.HTML(), W.HTML(), W.HTML()
        # hidden until there is a PNG: an empty Image shows the browser's broken-image icon
        self.curve = W.Image(format="png", layout=W.Layout(max_width="720px", display="none"))
        self.store_view = W.HTML()
        for name in ("peers", "checkpoints", "init", "mode", "weight", "epochs", "seed", "force", "train_button",
                     "stop_button", "status", "error", "curve", "result", "store_view"):
            getattr(self, name).add_class("ctrkit-" + name.replace("_button", "").replace("_", "-"))
        self.train_button.on_click(self._on_train)
        self.stop_button.on_click(self._on_stop)
        self.init.observe(self._describe_peers, names="value")
        self.checkpoints.observe(self._on_checkpoints, names="value")
        self.seed.observe(self._on_seed, names="value")
        self._describe_peers()

    # ---- choices -------------------------------------------------------------------------------
    def _checkpoint_sets(self) -> list[tuple[str, str]]:
        """(label, folder) of every `seed<S>` folder of ckpt_dir holding at least one best.pt."""
        sets = []
        if self.ckpt_dir is not None and self.ckpt_dir.is_dir():
            for d in sorted(self.ckpt_dir.iterdir()):
                models = sorted(p.parent.name for p in d.glob("*/best.pt")) if d.is_dir() else []
                if models:
                    sets.append((f"{d.name}: {', '.join(models)}", str(d)))
        return sets or [("(no pretrained checkpoints)", "")]

    def _available(self) -> set[str]:
        folder = self.checkpoints.value
        return {p.parent.name for p in Path(folder).glob("*/best.pt")} if folder else set()

    def _describe_peers(self, change=None) -> None:
        # Mark the models that have a checkpoint, so a pretrained choice is informed before Train.
        have, chosen = self._available(), self.peers.value
        self.peers.options = [(f"{m}  ✓ pretrained" if m in have else m, m) for m in
                              [o[1] if isinstance(o, tuple) else o for o in self.peers.options]]
        self.peers.value = chosen  # new options reset the selection

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
        peers = list(self.peers.value)
        mode, init, seed = self.mode.value, self.init.value, int(self.seed.value)
        check_weight(float(self.weight.value))
        if not 0 <= seed <= config.MAX_SEED:
            raise CtrkitError(f"seed must be in 0..{config.MAX_SEED}, got {seed}")
        if int(self.epochs.value) < 1:
            raise CtrkitError(f"epochs must be >= 1, got {self.epochs.value}")
        need = config.min_peers(mode)
        if len(peers) < need:
            raise CtrkitError(f"mode {mode!r} needs at least {need} peers; {len(peers)} selected")
        folder = Path(self.checkpoints.value) if self.checkpoints.value else None
        if init == "pretrained" or mode in ("kd", "ensemble"):
            if folder is None:
                raise CtrkitError(f"init {init!r} / mode {mode!r} needs pretrained checkpoints and none were "
                                  f"found under {self.ckpt_dir} (run 01_baselines first)")
            if _seed_of(folder) not in (None, seed):
                raise CtrkitError(self._seed_mismatch(folder, seed))
            need_ckpt = peers if init == "pretrained" else peers[:1]
            missing = [p for p in need_ckpt if not (folder / p / "best.pt").is_file()]  # pretrain_baselines' layout
            if missing:
                raise CtrkitError(f"missing checkpoint(s) for {', '.join(missing)} in {folder} "
                                  f"(pretrain them in 01_baselines, or pick init 'scratch')")
        out_dir = self.runs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        return _Request(peers=peers, init=init, mode=mode, seed=seed, weight=float(self.weight.value),
                        epochs=int(self.epochs.value), force=bool(self.force.value), ckpt_folder=folder,
                        out_dir=out_dir)

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
        self.skipped = self.stopped = False

    def _show_error(self, message: str, details: str | None = None) -> None:
        self.last_error = message
        body = html.escape(message)
        if details:
            body += f"<details><summary>traceback</summary>{html.escape(details)}</details>"
        self.error.value = f"<div class='ctrkit-error-box' style='{_ERROR_STYLE}'><b>Error:</b> {body}</div>"
        self.status.value = "<span style='color:#c0392b'>failed</span>"

    def _on_train(self, button=None) -> None:
        if self._busy:
            return  # a second click while a run trains (a double-click) is not a second run
        self._clear()
        try:
            request = self._validate()
        except CtrkitError as e:
            self._show_error(str(e))
            return
        self._busy = True
        self._stop.clear()
        self.train_button.disabled, self.stop_button.disabled = True, not self.background
        self.status.value = "training…"
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(request,), name="ctrkit-peer-selector",
                                            daemon=True)
            self._thread.start()
        else:
            self._run(request)

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

    def _call_run_one(self, r: _Request) -> tuple[list[dict], bool]:
        """The one call into the experiments layer."""
        settings = dict(init=r.init, mode=r.mode, seed=r.seed, ckpt_dir=r.ckpt_folder, preset=self.preset,
                        device=self.device, weight=r.weight, progress=False, tag=EXPLORATION_TAG)
        # pretrained peers finetune for `finetune_epochs`; scratch peers train for `epochs`
        settings["epochs" if r.init == "scratch" else "finetune_epochs"] = r.epochs
        return experiments.run_one(self.data, r.peers, store=self.store, force=r.force, out_dir=r.out_dir,
                                   callback=self._on_epoch, stop=self._stop, **settings)

    def _run(self, r: _Request) -> None:
        t0 = time.perf_counter()
        existed = r.out_dir.exists()
        self._labels = list(r.peers)  # a SelectMultiple picks each model once
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
            self._busy = False
            self.train_button.disabled, self.stop_button.disabled = False, True
            self.refresh_store_view()

    def _announce_stopped(self, r: _Request, existed: bool) -> None:
        self.stopped = True
        if not existed and r.out_dir.is_dir():
            shutil.rmtree(r.out_dir)  # this click's partial run folder: nothing of it is kept
        self.status.value = (f"<b>stopped</b> by the Stop button in epoch {len(self.history) + 1} of {r.epochs} "
                             f"(after the current step): nothing was appended to the store")

    def _on_epoch(self, row: dict) -> None:
        """Per-epoch callback (training thread): append the row, redraw the curve (live in JupyterLab)."""
        self.history.append(row)
        self._draw()
        self.status.value = f"training… epoch {row.get('epoch')} of {int(self.epochs.value)}"

    def _draw(self) -> None:
        if not self.history:
            return
        fig = curve_figure(self.history, self._labels,
                           title=f"{self.mode.value} ({self.init.value}): validation AUC per peer")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
        self.curve.value = buf.getvalue()
        self.curve.layout.display = None

    def _show_result(self, r: _Request, records: list[dict], skipped: bool, took: float) -> None:
        self.skipped = skipped
        self.last_records = pd.DataFrame(records)
        self.result.value = self._result_html(self.last_records)
        ran = records[0].get("epochs") if records else None
        if skipped:
            msg = ("already in the store (run before with these settings): shown, not re-run; tick "
                   "“re-run” to train it again")
        elif r.mode == "ensemble":
            msg = f"done in {took:.0f} s: the pretrained peers and their average evaluated (no training)"
        else:
            msg = f"done in {took:.0f} s: {len(records)} records appended to the store"
        if r.mode != "ensemble" and isinstance(ran, int) and ran < r.epochs:
            msg += (f"; <b>early stop</b>: {ran} of {r.epochs} epochs ran (every peer stopped improving on "
                    f"validation; best weights kept)")
        self.status.value = msg

    @staticmethod
    def _result_html(df: pd.DataFrame) -> str:
        cols = [c for c in ("peer", "init", "mode", "seed", "weight", "epochs", "best_epoch", "pretrained_test_auc",
                            "valid_auc", "test_auc", "test_logloss") if c in df.columns]
        t = df[cols].copy()
        if "pretrained_test_auc" in t:
            t["delta_auc"] = pd.to_numeric(t["test_auc"], errors="coerce") - pd.to_numeric(
                t["pretrained_test_auc"], errors="coerce")
        out = _html_table(t)
        ens = pd.to_numeric(df.get("ensemble_test_auc", pd.Series(dtype=float)), errors="coerce").dropna()
        if len(ens):
            out += f"<p>ensemble (mean p) test AUC: <b>{ens.iloc[0]:.4f}</b></p>"
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
        t = self.table()
        if t.empty:
            self.store_view.value = (f"<p style='{_NOTE_STYLE}'>No runs in the store yet "
                                     f"(<code>{html.escape(str(self.store.path))}</code>): choose peers above "
                                     f"and press Train.</p>")
        else:
            # a reproduction's store holds hundreds of records: their counts, then the newest few in full
            counts = (t.assign(tag=t["tag"].fillna("paper")).groupby(["tag", "mode", "init"], dropna=False)
                      .size().rename("records").reset_index())
            newest = t.iloc[::-1].head(STORE_VIEW_ROWS)
            self.store_view.value = (f"<p>{len(t)} record(s) in <code>{html.escape(str(self.store.path))}</code>"
                                     f" (one per peer per run; tag “{EXPLORATION_TAG}”: this widget's), by kind:</p>"
                                     + _html_table(counts)
                                     + f"<p>The newest {len(newest)}, newest first (<code>selector.table()</code>: "
                                       f"all of them):</p>" + _html_table(newest))
        return self.store_view
