"""The peer selector: pick peers and settings, press Train, watch each peer's validation AUC, read
the result table. Every run goes through `ctrkit.experiments.run_one`, so it lands in the results
store exactly like the notebooks' runs (and a run already there is not repeated unless forced).

    from ctrkit import widgets
    widgets.PeerSelector(data, store="results/criteo/store.jsonl", ckpt_dir="results/criteo/pretrained")

It is an ipywidgets VBox: it shows in JupyterLab, and a test drives it headless by setting the
controls and calling `selector.train_button.click()`.
"""
from __future__ import annotations

import html
import inspect
import io
import tempfile
import time
import traceback
from pathlib import Path
from typing import Sequence

import ipywidgets as W
import pandas as pd

from ctrkit import experiments, mutual
from ctrkit.models import MODELS
from ctrkit.store import ResultsStore
from ctrkit.utils import CtrkitError

__all__ = ["PeerSelector"]

_ERROR_STYLE = ("border:1px solid #c0392b;background:#fdecea;color:#7b241c;padding:6px 8px;"
                "border-radius:4px;font-family:monospace;white-space:pre-wrap")


class PeerSelector(W.VBox):
    """Peers (models; pretrained checkpoints from a `pretrain_baselines` folder), init, mode, weight,
    epochs, seed; a Train button; a live per-peer validation-AUC curve; the run's result table.

    Errors (bad choices, missing checkpoints, a failing run) appear in the error box inside the
    widget and in `last_error`; nothing is swallowed silently.
    """

    def __init__(self, data, store: str | Path, ckpt_dir: str | Path | None = None, preset: str = "quick",
                 device: str = "auto", models: Sequence[str] | None = None, runs_dir: str | Path | None = None):
        self.data = data
        self.store = ResultsStore(store)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.preset = preset
        self.device = device
        # Per-run folders (mutual_fit's result.json with the epoch history) live next to the store.
        self.runs_dir = Path(runs_dir) if runs_dir is not None else self.store.path.parent / "widget_runs"
        self.last_records: pd.DataFrame | None = None
        self.last_error: str | None = None
        self.history: list[dict] = []
        self.skipped = False

        names = list(models) if models else [m for m in MODELS if m != "LR"]
        self.peers = W.SelectMultiple(options=names, value=tuple(names[:2]), rows=min(6, len(names)),
                                      description="peers")
        self.checkpoints = W.Dropdown(options=self._checkpoint_sets(), description="checkpoints")
        self.init = W.Dropdown(options=list(mutual.INITS), value="pretrained" if self.checkpoints.options[0][1]
                               else "scratch", description="init")
        self.mode = W.Dropdown(options=list(mutual.MODES), value="mutual", description="mode")
        self.weight = W.BoundedFloatText(value=1.0, min=0.0, max=100.0, step=0.1, description="weight")
        self.epochs = W.BoundedIntText(value=1, min=1, max=100, description="epochs")
        self.seed = W.BoundedIntText(value=2021, min=0, max=2**31 - 1, description="seed")
        self.force = W.Checkbox(value=False, description="re-run if already in the store", indent=False)
        self.train_button = W.Button(description="Train", button_style="primary", icon="play")
        self.status = W.HTML()
        self.error = W.HTML()
        self.curve = W.Image(format="png", layout=W.Layout(max_width="640px"))
        self.result = W.HTML()
        self.train_button.on_click(self._on_train)
        self.init.observe(self._describe_peers, names="value")
        self.checkpoints.observe(self._describe_peers, names="value")
        self._describe_peers()

        controls = W.HBox([W.VBox([self.peers, self.checkpoints]),
                           W.VBox([self.init, self.mode, self.weight]),
                           W.VBox([self.epochs, self.seed, self.force])])
        title = W.HTML(f"<b>Peer selector</b> — {html.escape(str(data.dataset))} data at "
                       f"<code>{html.escape(str(data.path))}</code>, preset <code>{html.escape(preset)}</code>, "
                       f"store <code>{html.escape(str(self.store.path))}</code>")
        super().__init__([title, controls, W.HBox([self.train_button, self.status]), self.error,
                          self.curve, self.result])

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

    # ---- running -------------------------------------------------------------------------------
    def _show_error(self, message: str, details: str | None = None) -> None:
        self.last_error = message
        body = html.escape(message)
        if details:
            body += f"<details><summary>traceback</summary>{html.escape(details)}</details>"
        self.error.value = f"<div style='{_ERROR_STYLE}'><b>Error:</b> {body}</div>"
        self.status.value = "<span style='color:#c0392b'>failed</span>"

    def _validate(self) -> tuple[list[str], Path | None]:
        peers = list(self.peers.value)
        mode, init = self.mode.value, self.init.value
        need = 1 if mode == "alone" else 2
        if len(peers) < need:
            raise CtrkitError(f"mode {mode!r} needs at least {need} peers; {len(peers)} selected")
        folder = Path(self.checkpoints.value) if self.checkpoints.value else None
        if init == "pretrained" or mode in ("kd", "ensemble"):
            if folder is None:
                raise CtrkitError(f"init {init!r} / mode {mode!r} needs pretrained checkpoints and none were "
                                  f"found under {self.ckpt_dir} (run 01_baselines first)")
            need_ckpt = peers if init == "pretrained" else peers[:1]
            missing = [p for p in need_ckpt if not mutual.checkpoint_path(folder, p).is_file()]
            if missing:
                raise CtrkitError(f"missing checkpoint(s) for {', '.join(missing)} in {folder} "
                                  f"(pretrain them in 01_baselines, or pick init 'scratch')")
        return peers, folder

    def _on_epoch(self, row: dict) -> None:
        """Per-epoch callback: append the row and redraw the curve (live in JupyterLab)."""
        self.history.append(row)
        self._draw(list(self.peers.value))
        self.status.value = f"training… epoch {row.get('epoch')}"

    def _draw(self, labels: Sequence[str]) -> None:
        import matplotlib.pyplot as plt

        from ctrkit import plots

        if not self.history:
            return
        with plots.style():
            fig, ax = plt.subplots(figsize=(plots.COLUMN * 1.3, 2.3))
            epochs = [r["epoch"] for r in self.history]
            for k, label in enumerate(labels):
                ax.plot(epochs, [r["peers"][k]["valid_auc"] for r in self.history], marker="o", label=label)
            ax.plot(epochs, [r["ensemble_valid_auc"] for r in self.history], linestyle="--", color="black",
                    label="ensemble (mean p)")
            ax.set(title=f"{self.mode.value} ({self.init.value}): validation AUC per peer", xlabel="epoch",
                   ylabel="validation AUC")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(loc="best", frameon=True)
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            plt.close(fig)
        self.curve.value = buf.getvalue()

    def _on_train(self, button=None) -> None:
        self.error.value, self.last_error, self.history, self.skipped = "", None, [], False
        self.train_button.disabled = True
        t0 = time.perf_counter()
        try:
            peers, folder = self._validate()
            self.status.value = "training…"
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            out_dir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=self.runs_dir))
            kwargs = dict(init=self.init.value, mode=self.mode.value, seed=int(self.seed.value), store=self.store,
                          ckpt_dir=folder, preset=self.preset, device=self.device, weight=float(self.weight.value),
                          force=bool(self.force.value), progress=False, out_dir=out_dir)
            # pretrained peers finetune for `finetune_epochs`; scratch peers train for `epochs`
            kwargs["epochs" if self.init.value == "scratch" else "finetune_epochs"] = int(self.epochs.value)
            live = "callback" in inspect.signature(experiments.run_one).parameters
            if live:
                kwargs["callback"] = self._on_epoch
            records, self.skipped = experiments.run_one(self.data, peers, **kwargs)
            result_json = out_dir / "result.json"
            if not live and result_json.is_file():
                # No per-epoch hook in this ctrkit: draw the run's epoch history once it is done.
                import json

                self.history = json.loads(result_json.read_text()).get("history", [])
                self._draw([r["peer"] for r in records])
            self.last_records = pd.DataFrame(records)
            self.result.value = self._result_html(self.last_records)
            took = time.perf_counter() - t0
            self.status.value = ("already in the store: shown, not re-run (tick the box to re-run)" if self.skipped
                                 else f"done in {took:.0f} s; {len(records)} records appended to the store")
        except CtrkitError as e:
            self._show_error(str(e))
        except Exception as e:  # a failing run: shown in full inside the widget, never swallowed
            self._show_error(f"{type(e).__name__}: {e}", traceback.format_exc())
        finally:
            self.train_button.disabled = False

    @staticmethod
    def _result_html(df: pd.DataFrame) -> str:
        cols = [c for c in ("peer", "init", "mode", "seed", "weight", "epochs", "pretrained_test_auc", "valid_auc",
                            "test_auc", "test_logloss", "ensemble_test_auc") if c in df.columns]
        t = df[cols].copy()
        if "pretrained_test_auc" in t and t["pretrained_test_auc"].notna().any():
            t["delta_auc"] = t["test_auc"] - t["pretrained_test_auc"]
        return t.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, na_rep="–")

    # ---- the store ---------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """Every run in the store, one row per peer: what was compared and the test AUCs."""
        df = self.store.to_frame()
        if df.empty:
            return df
        cols = ["mode", "init", "peers", "peer", "seed", "epochs", "pretrained_test_auc", "test_auc", "ensemble_test_auc"]
        return df[[c for c in cols if c in df.columns]].reset_index(drop=True)
