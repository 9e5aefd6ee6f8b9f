"""The small helpers the notebooks call, so each notebook stays thin (a `parameters` cell, then ctrkit calls).

`settings()` turns the parameters + a profile (`ctrkit.notebook.profiles`) into paths and sizes,
`dataset()` gets the data, `data_tables()` writes the data statistics as tidy CSV, `save_table()` writes
CSV + Markdown, `paper_table()` writes a `ctrkit.analysis.tables` table as CSV + Markdown + LaTeX,
`figure_data()` the frame a figure draws (shaped by `ctrkit.analysis.frames.figure_frame`), `caption()`
the provenance line, `chosen()` the finetuning setting the sweep chose on validation, `kd_peers()` the
KD control's teacher and students. `ctrkit reproduce` itself (papermill) is `ctrkit.notebook.runner`.

Relative paths (`out`, `data_dir`) mean the same folder from JupyterLab (kernel in notebooks/),
papermill (kernel in OUT) and any script of a clone: they are relative to the repository root
(`resolve_path`; outside a clone, to the working directory). `ctrkit reproduce --out DIR`, like any
command line, resolves DIR against the working directory before the notebooks see it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ctrkit.core.owned import owned_path
from ctrkit.core.utils import CtrkitError, as_int
from ctrkit.notebook import profiles
from ctrkit.notebook.profiles import (DATASETS, PROFILES, SCHEMA_SUFFIXES, SMALL_DATASETS, SYNTH_SEED,
                                      check_device, resolve_path)


def _owned(path: str | Path):
    """The atomic write of a table: a file of that name that ctrkit did not write stays (`owned`)."""
    return owned_path(path, where=", or use another out folder")


def _adopt_legacy(out: Path) -> None:
    """The outputs of a reproduction made before `owned` records existed are ctrkit's: recorded as
    such (`outputs.adopt_legacy`, as `ctrkit reproduce` does as it starts), so a notebook run by hand
    there replaces them. Unreadable: the write says so, naming its file."""
    from ctrkit.notebook.outputs import adopt_legacy

    try:
        adopt_legacy(out)
    except OSError:
        pass


@dataclass(frozen=True)
class Shown:
    """A written table as a notebook shows it: the Markdown file ctrkit wrote beside the CSV (the human
    form, its settings line and its caption: data, seeds, precision, profile), read back, so the cell
    shows what is on disk, every column and the caption included; `frame` is the human-form DataFrame."""

    frame: pd.DataFrame
    markdown: str

    def _repr_markdown_(self) -> str:
        return self.markdown

    def __len__(self) -> int:
        return len(self.frame)


def _shown(frame: pd.DataFrame, md: Path) -> Shown:
    return Shown(frame, md.read_text())


def _markdown(human: pd.DataFrame) -> str:
    """A human-form table as Markdown (cells as written), or "(no runs)"."""
    return human.to_markdown(index=False, disable_numparse=True) if len(human) else "(no runs)"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Resolved parameters of one notebook run: the profile's sizes plus where everything goes."""

    dataset: str
    profile: str
    out: Path
    device: str = "auto"
    data_dir: Path | None = None
    rows: int | None = None
    split: list[int] | None = None  # train/valid/test ratios of synthetic rows (study); None = the protocol's
    preset: str = "quick"
    epochs: int | None = None
    finetune_epochs: int = 1
    seeds: list[int] = field(default_factory=lambda: [2021])
    models: list[str] = field(default_factory=list)
    patience: int | None = None
    sweep_weights: list[float] = field(default_factory=lambda: [1.0])
    sweep_lr_scales: list[float] = field(default_factory=lambda: [0.1])
    threads: int | str = "auto"
    workers: int | str = 1  # processes a grid's runs are spread over (profiles: "auto"; ctrkit.experiments.workers)
    amp: str = "auto"
    graph: str = "auto"  # CUDA graph mode of every run (profiles' `graph`; ctrkit.training.graph)
    progress: bool = False
    schema: str | None = None  # a schema file's path (dataset is then the schema's name)
    tune: list[dict] = field(default_factory=list)  # candidates of the baselines' search (study); [] = none
    tune_seeds: list[int] = field(default_factory=list)
    tune_widen: int = 0  # rounds of the search that step past its edges (study); 0 = the candidates only
    sizes: list[str] = field(default_factory=list)  # model presets of 02's strength comparison (quick, study); [] = none
    min_steps: int | None = None  # the batch rule of profiles.batch_size (study); None = the preset's batch
    variant_seeds: list[int] = field(default_factory=list)  # 07's seeds (study); [] = `seeds`

    @property
    def seed(self) -> int:
        return self.seeds[0]

    @property
    def data_path(self) -> Path:
        return self.out / "data" / self.dataset

    @property
    def run_dir(self) -> Path:
        return self.out / self.dataset

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "pretrained"

    @property
    def store(self) -> Path:
        return self.run_dir / "store.jsonl"

    @property
    def results_csv(self) -> Path:
        return self.run_dir / "results.csv"

    @property
    def tables(self) -> Path:
        return self.out / "tables"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    def table(self, name: str) -> Path:
        """Stem of a table file: tables/<dataset>_<name> (.csv and .md are added by save_table)."""
        return self.tables / f"{self.dataset}_{name}"

    def figure(self, name: str) -> Path:
        """Stem of a figure file: figures/<dataset>_<name> (.png and .svg are added by ctrkit.analysis.plots)."""
        return self.figures / f"{self.dataset}_{name}"

    @property
    def pairs(self) -> list[list[str]]:
        """Every pair of the main models (03's partner matrix)."""
        return [[a, b] for i, a in enumerate(self.models) for b in self.models[i + 1:]]

    @property
    def peer_sets(self) -> list[list[str]]:
        """The peer sets of 04: every subset of the models of 2..all of them, so that each target's
        mean over all its partner subsets is measured for every N (N = 1 is the alone control)."""
        from ctrkit.experiments import designs

        return designs.peer_count_sets(pool=self.models)

    @property
    def overrides(self) -> dict:
        """Train-config keys the profile sets on every baseline and run from scratch: its patience, and
        with `min_steps` the batch that rule gives on the prepared data's train rows (finetuning keeps
        its checkpoint's batch)."""
        out = {"patience": self.patience} if self.patience is not None else {}
        if self.min_steps:
            from ctrkit.training import presets

            sizes = {"min_steps": self.min_steps}
            out["batch_size"] = profiles.batch_size(sizes, presets.get(self.models[0], self.preset).train["batch_size"],
                                                    train_rows(self))
        return out

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def _repr_markdown_(self) -> str:
        """What a notebook shows for `cfg`: the resolved settings in words (the device as resolved, 07's
        seeds as they run), not the dataclass's repr of paths and empty lists."""
        from ctrkit.core.utils import resolve_device

        seeds = lambda s: f"{len(s)} ({', '.join(map(str, s))})"  # noqa: E731
        rows = [("dataset", self.dataset + (f" (schema {self.schema})" if self.schema else "")),
                ("data", f"{self.data_path}" + ("" if self.data_dir is None else f", prepared from {self.data_dir}")
                 + (f", train/valid/test split {':'.join(map(str, self.split))}" if self.split and self.data_dir is None
                    else "")),
                ("profile", f"{self.profile}: models {', '.join(self.models)} at preset `{self.preset}`"),
                ("seeds", seeds(self.seeds) + (f"; 07's: {seeds(self.variant_seeds)}" if self.variant_seeds else "")),
                ("epochs", f"cap {self.epochs or 'the preset’s'}, patience {self.patience or 'the preset’s'}; "
                           f"finetuning at most {self.finetune_epochs}"),
                ("sweep", f"weight {', '.join(f'{w:g}' for w in self.sweep_weights)} x finetuning lr scale "
                          f"{', '.join(f'{x:g}' for x in self.sweep_lr_scales)}, chosen on validation"),
                ("search", f"{len(self.tune)} candidates per model" + (f", then up to {self.tune_widen} round(s) x3 "
                                                                  "past an edge" if self.tune_widen else "")
                 if self.tune else "none (the preset)"),
                ("sizes", ", ".join(self.sizes) if self.sizes else "the profile's preset only"),
                ("compute", f"{resolve_device(self.device)} (asked: {self.device}), amp {self.amp}, graph {self.graph}, "
                            f"threads per run {self.threads}, workers {self.workers}"),
                ("output", str(self.out))]
        return "| setting | value |\n|:--|:--|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def settings(
    *, dataset: str, profile: str = "quick", out: str = "results", data_dir: str | None = None,
    device: str = "auto", rows: int | None = None, seeds: Sequence[int] | None = None,
    epochs: int | None = None, amp: str | None = None,
) -> Settings:
    """The notebooks' first call: parameters (None = the profile's value) -> resolved Settings.
    `amp` overrides the profile's precision (e.g. "bf16" to see whether bf16 moves a conclusion;
    `ctrkit compare` sets two such outputs side by side). Progress bars stay off
    (`dataclasses.replace(cfg, progress=True)` turns them on)."""
    if isinstance(seeds, Iterable) and not isinstance(seeds, (str, bytes)):
        seeds = list(seeds)  # read once: range(...), np.arange(...) or a generator
    _check_parameters(profile=profile, out=out, data_dir=data_dir, device=device, seeds=seeds, sizes=dict(
        rows=rows, epochs=epochs))
    schema = None
    if str(dataset).endswith(SCHEMA_SUFFIXES):
        from ctrkit.data import load_schema

        schema = str(resolve_path(dataset))
        dataset = load_schema(schema).name
    elif dataset not in DATASETS + SMALL_DATASETS:
        raise CtrkitError(f"parameter dataset={dataset!r}; valid: {', '.join(DATASETS + SMALL_DATASETS)} "
                          f"or a schema file (.yaml)")
    prof = profiles.profile(profile)
    if profile == "full" and not data_dir:
        raise CtrkitError("profile full runs the BARS protocol on real data: pass data_dir (--data DIR)")
    from ctrkit.training.precision import AMP_CHOICES

    if amp is not None and amp not in AMP_CHOICES:
        raise CtrkitError(f"parameter amp must be one of {', '.join(AMP_CHOICES)} or None, got {amp!r}")
    _adopt_legacy(resolve_path(out))  # once, before any table or figure of this notebook is written
    return Settings(
        dataset=dataset, profile=profile, out=resolve_path(out), device=device,
        data_dir=resolve_path(data_dir) if data_dir else None,
        rows=int(rows) if rows is not None else prof["rows"], split=prof.get("split"), preset=prof["preset"],
        epochs=int(epochs) if epochs is not None else prof["epochs"], finetune_epochs=prof["finetune_epochs"],
        seeds=[int(x) for x in seeds] if seeds is not None else prof["seeds"], models=prof["models"],
        patience=prof["patience"], sweep_weights=prof["sweep_weights"], sweep_lr_scales=prof["sweep_lr_scales"],
        threads=prof["threads"], workers=prof.get("workers", 1), amp=amp if amp is not None else prof["amp"],
        graph=prof.get("graph", "auto"), schema=schema,
        tune=prof.get("tune", []), tune_seeds=prof.get("tune_seeds", []),
        tune_widen=prof.get("tune_widen", 0), sizes=prof.get("sizes", []),
        min_steps=prof.get("min_steps"),
        variant_seeds=_variant_seeds(prof, seeds),
    )


def _check_parameters(*, profile, out, data_dir, device, seeds, sizes: dict) -> None:
    """One line naming the parameter for a value settings() cannot use, before it is used: papermill
    passes what was typed (`-p seeds 2021` is an int, `-p out ''` an empty path, which would put the
    data into the repository root)."""
    from ctrkit.core.utils import seeds_problem

    try:
        profiles.profile(profile)  # the profile's own rule, said as the notebook parameter's
    except CtrkitError as e:
        raise CtrkitError(f"parameter profile: {e}") from None
    for name, value in (("out", out), ("data_dir", data_dir)):
        if name == "data_dir" and value in (None, ""):  # no data_dir: synthetic data
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise CtrkitError(f"parameter {name}: expected a folder path, got {value!r}")
        if not str(value).strip():
            raise CtrkitError(f"parameter {name}: an empty path is the repository root; give a folder, e.g. "
                              f"{'results' if name == 'out' else 'data/criteo'!r}")
    check_device(device)
    for name, value in sizes.items():
        if value is not None and (as_int(value) is None or value < 1):
            raise CtrkitError(f"parameter {name}: expected a positive integer or None, got {value!r}")
    if seeds is None:
        return
    if not isinstance(seeds, list) or not seeds:  # settings() made any iterable a list
        raise CtrkitError(f"parameter seeds: expected a non-empty list of seeds, e.g. [2021], got {seeds!r}")
    if seeds_problem(seeds):
        raise CtrkitError(f"parameter seeds: {seeds_problem(seeds)}")


def _variant_seeds(prof: dict, seeds: Sequence[int] | None) -> list[int]:
    """07's seeds: the profile's (`variant_seeds`; [] = all of `seeds`); with `seeds` given, as many of
    them as the profile has, the profile's own where given, so they stay a subset of the run's seeds."""
    own = prof.get("variant_seeds") or []
    if not own or seeds is None:
        return list(own)
    kept = [s for s in own if s in seeds]
    return kept if len(kept) == len(own) else list(seeds)[:len(own)]


def prepared_feature_map(cfg: Settings) -> dict | None:
    """The feature map of the prepared data (`data_dir`'s, else OUT/data/<dataset>/data's); None
    before `dataset(cfg)` has prepared it."""
    for folder in ([cfg.data_dir] if cfg.data_dir else []) + [cfg.data_path / "data"]:
        try:
            fm = json.loads((Path(folder) / "feature_map.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(fm, dict):
            return fm
    return None


def train_rows(cfg: Settings) -> int:
    """The train rows of the prepared data, for rules sized by the data; one-line CtrkitError before
    `dataset(cfg)` has prepared it."""
    try:
        return int(prepared_feature_map(cfg)["rows"]["train"])
    except (TypeError, KeyError, ValueError):
        raise CtrkitError(f"profile {cfg.profile}: the data of {cfg.dataset} is not prepared yet "
                          f"(call dataset(cfg) first)") from None


def dataset(cfg: Settings):
    """The CTRData of a run: synthetic rows (smoke/quick), or the user's data (processed dir or raw).

    Data already under OUT is used only when it was made with the same settings; anything else stops
    with one line saying what differs (it is never regenerated or overwritten: the checkpoints and the
    store of OUT belong to it)."""
    from ctrkit import data as ctrdata

    if cfg.data_dir is None:
        if cfg.schema is not None:
            raise CtrkitError(f"dataset {cfg.schema}: a schema file describes your own data: pass data_dir (--data)")
        if not cfg.rows:
            raise CtrkitError(f"profile {cfg.profile}: no data_dir and no synthetic row count")
        _check_synthetic(cfg)
        return ctrdata.synthetic_dataset(cfg.dataset, cfg.rows, cfg.data_path, seed=SYNTH_SEED,
                                         progress=cfg.progress, split=cfg.split)
    if not cfg.data_dir.exists():
        raise CtrkitError(f"--data {cfg.data_dir}: no such file or directory")
    if (cfg.data_dir / "feature_map.json").exists():
        return _checked(cfg, ctrdata.load(cfg.data_dir))
    # Raw files: prepare once into OUT/data/<dataset>/data, the layout synthetic data gets too.
    target = cfg.data_path / "data"
    if (target / "feature_map.json").exists():
        _check_prepared_from(target, cfg.data_dir)
        return _checked(cfg, ctrdata.load(target))
    _check_synthetic_absent(cfg)
    return ctrdata.load(ctrdata.prepare(cfg.schema or cfg.dataset, cfg.data_dir, target, progress=cfg.progress))


def _checked(cfg: Settings, data):
    """The loaded folder is the dataset the parameters claim (the schema's name and fields)."""
    from ctrkit.data import load_schema
    from ctrkit.data.loading import check_matches

    if cfg.schema is not None:
        check_matches(data, name=cfg.dataset, fields=load_schema(cfg.schema).fields, claimed_by=f"schema {cfg.schema}")
    else:
        check_matches(data, name=cfg.dataset, claimed_by="parameter dataset")
    return data


def _profiles_with_rows(rows) -> str:
    names = [n for n, p in PROFILES.items() if p["rows"] == rows]
    return f" (the size of profile {' / '.join(names)})" if names else ""


def _check_synthetic(cfg: Settings) -> None:
    """Refuse to replace data under OUT/data/<dataset> that other settings (or not ctrkit) made."""
    folder = cfg.data_path
    if not folder.exists() or not any(folder.iterdir()):
        return
    meta = folder / "raw" / "synth.json"
    try:
        have = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        raise CtrkitError(f"{folder} holds data that is not ctrkit's synthetic data ({meta} is missing or "
                          f"unreadable): it is not overwritten; pass data_dir={str(folder / 'data')!r} "
                          f"to use it, or another out folder") from None
    from ctrkit.data.ingest import synth_settings

    want = synth_settings(cfg.dataset, cfg.rows, SYNTH_SEED, cfg.split)
    if have != want:
        have = have if isinstance(have, dict) else {}
        diff = ", ".join(f"{k} {have.get(k)!r} (asked: {want.get(k)!r})" for k in dict.fromkeys([*want, *have])
                         if have.get(k) != want.get(k))
        raise CtrkitError(f"{folder} holds synthetic data made with other settings: {diff}"
                          f"{_profiles_with_rows(have.get('rows'))}; it is not regenerated: set the profile "
                          f"or rows that made it, or another out folder")


def _check_synthetic_absent(cfg: Settings) -> None:
    if (cfg.data_path / "raw" / "synth.json").exists():
        raise CtrkitError(f"{cfg.data_path} holds synthetic data; data_dir={str(cfg.data_dir)!r} (real data) "
                          f"needs another out folder")


def _check_prepared_from(target: Path, data_dir: Path) -> None:
    """The data prepared under OUT came from `data_dir` (not from other raw files)."""
    try:
        files = json.loads((target / "feature_map.json").read_text()).get("source", {}).get("files") or []
    except (OSError, json.JSONDecodeError, AttributeError):
        files = []
    outside = [f for f in files if Path(f).resolve() != data_dir and data_dir not in Path(f).resolve().parents]
    if outside:
        raise CtrkitError(f"{target} was prepared from {outside[0]}, not from data_dir={str(data_dir)!r}: "
                          f"it is not overwritten; use another out folder")


def save_table(df: pd.DataFrame, stem: str | Path, *, floatfmt: str = ".4f", caption: str | None = None) -> pd.DataFrame:
    """Write a table as <stem>.csv and <stem>.md (atomically; the Markdown ends with `caption`, as the
    paper tables do) and return it for display."""
    stem = Path(stem)
    for suffix in (".csv", ".md"):
        path = stem.with_name(stem.name + suffix)
        try:
            with _owned(path) as tmp:
                if suffix == ".csv":
                    df.to_csv(tmp, index=False)
                else:
                    tmp.write_text(df.to_markdown(index=False, floatfmt=floatfmt) + (f"\n\n{caption}" if caption else "")
                                   + "\n")
        except OSError as e:
            raise CtrkitError(f"{path}: cannot write the table ({e.strerror or e})") from None
    return df


def bars_source() -> str:
    """Where the BARS reference numbers of `ctrkit/training/bars.json` come from: a sentence that ends
    the baselines table's caption."""
    from importlib import resources

    try:
        meta = json.loads(resources.files("ctrkit.training").joinpath("bars.json").read_text())
    except (FileNotFoundError, OSError):
        return "ctrkit/training/bars.json is not installed: no BARS reference numbers."
    source = meta.get("source", "not recorded").split(" (copied")[0]  # the public source, not our copy's path
    return (f"BARS columns (real data, comparable to ours only under the `full` profile): "
            f"{meta.get('about', '').strip()} Source: {source}.")


def read_table(stem: str | Path) -> pd.DataFrame:
    path = Path(stem)
    path = path if path.suffix == ".csv" else path.with_name(path.name + ".csv")
    if not path.exists():
        raise CtrkitError(f"table {path} does not exist: run the notebook that writes it first")
    return pd.read_csv(path)


def data_tables(data, cfg: Settings, *, top_fields: int = 6) -> dict[str, Path]:
    """Data statistics as tidy CSV: rows and CTR per split, vocabulary sizes, rank-frequency of fields.

    The frequency table covers the `top_fields` fields with the largest vocabularies (the long tails).
    """
    splits = []
    for split in ("train", "valid", "test"):
        _, y = data.numpy(split)
        splits.append({"dataset": cfg.dataset, "split": split, "rows": int(len(y)),
                       "clicks": int(np.asarray(y).sum()), "ctr": float(np.asarray(y).mean()) if len(y) else np.nan})
    fields = [f["name"] for f in data.feature_map["fields"]]
    vocab = pd.DataFrame({"dataset": cfg.dataset, "field": fields, "vocab_size": data.field_sizes})
    X, _ = data.numpy("train")
    freq = []
    # Categorical fields first (Criteo's I1-I13 are bucketised numbers), largest vocabularies first.
    sizes = np.asarray(data.field_sizes)
    numeric = np.array([cfg.dataset == "criteo" and f.startswith("I") for f in fields])
    for i in np.lexsort((-sizes, numeric))[:top_fields]:
        # Indices 0 (padding) and 1 (OOV: every value rarer than the min-count) are not values.
        counts = np.sort(np.bincount(np.asarray(X[:, i]), minlength=2)[2:])[::-1]
        counts = counts[counts > 0]
        freq.append(pd.DataFrame({"dataset": cfg.dataset, "field": fields[i],
                                  "rank": np.arange(1, len(counts) + 1), "count": counts}))
    cap = caption(cfg, figure=False, runs=False)
    save_table(pd.DataFrame(splits), cfg.table("data_splits"), caption=f"Rows, clicks and CTR per split ({cap})")
    save_table(vocab, cfg.table("data_vocab"), caption=f"Vocabulary size per field, padding and OOV included ({cap})")
    freq_csv = cfg.table("data_frequency").with_name(cfg.table("data_frequency").name + ".csv")
    with _owned(freq_csv) as tmp:
        pd.concat(freq, ignore_index=True).to_csv(tmp, index=False)  # long: CSV only, no Markdown
    return {"splits": cfg.table("data_splits").with_name(f"{cfg.dataset}_data_splits.csv"),
            "vocab": cfg.table("data_vocab").with_name(f"{cfg.dataset}_data_vocab.csv"),
            "frequency": freq_csv}


def export_results(cfg: Settings) -> Path:
    """Export the run's results store to its tidy CSV (`<dataset>/results.csv`); tables/figures read that."""
    from ctrkit.experiments.store import ResultsStore

    if not cfg.store.exists():
        raise CtrkitError(f"results store {cfg.store} does not exist: run 01_baselines first")
    return ResultsStore(cfg.store).to_csv(cfg.results_csv)


def _need_results(cfg: Settings) -> Path:
    if not cfg.results_csv.exists():
        raise CtrkitError(f"{cfg.results_csv} does not exist: call reproduce.export_results(cfg) first")
    return cfg.results_csv


def loaded_data(cfg: Settings) -> dict | None:
    """What this run's data is as loaded: {"name": the dataset's own name (its schema's), "rows": rows
    per split}, read from the processed folder's feature map; None before the data is prepared."""
    folders = ([cfg.data_dir] if cfg.data_dir is not None else []) + [cfg.data_path / "data"]
    for folder in folders:
        try:
            fm = json.loads((Path(folder) / "feature_map.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(fm, dict) and isinstance(fm.get("rows"), dict):
            return {"name": str(fm.get("dataset") or cfg.dataset), "rows": {k: int(v) for k, v in fm["rows"].items()}}
    return None


def caption(cfg: Settings, *, figure: bool = True, source: Path | pd.DataFrame | None = None, runs: bool = True) -> str:
    """The provenance line of this run's figures and tables: the data by its own name, its rows per
    split as loaded (the profile's synthetic count only before the data exists), seeds, precision
    (of the runs in `source`, a store or results CSV, else this run's results), profile (and for a
    figure, what its error bars are). `runs` False: the data and profile only (00's data statistics)."""
    from ctrkit.analysis import plots, records

    source = source if source is not None else (cfg.results_csv if cfg.results_csv.exists() else None)
    prec = records.precision(source) if source is not None else "unrecorded"
    loaded = loaded_data(cfg)
    name = loaded["name"] if loaded else cfg.dataset
    data = (f"synthetic {name.capitalize()}-shaped data" if cfg.data_dir is None and cfg.schema is None
            else f"real data: {name}")
    return plots.provenance(data=data, rows=None if loaded else cfg.rows, splits=loaded["rows"] if loaded else None,
                            seeds=len(cfg.seeds) if runs else None, precision=prec if runs else None,
                            profile=cfg.profile, error_bars=figure)


def paper_table(cfg: Settings, name: str) -> Shown:
    """One of the paper's tables (`ctrkit.analysis.tables`) from the results CSV, written as
    tables/<dataset>_<name>.csv (numeric, tidy), .md and .tex (human form, captioned with the
    provenance line); returned as the notebook shows it (the Markdown read back)."""
    from ctrkit.analysis import render, tables

    df = tables.table(name, _need_results(cfg))
    df = df[df["dataset"] == cfg.dataset].reset_index(drop=True) if "dataset" in df.columns and len(df) else df
    cap = f"{render.CAPTIONS[name]} ({caption(cfg, figure=False)})"
    if name == "baselines":  # its BARS columns are published real-data numbers: say whose
        cap += f" {bars_source()}"
    stem = cfg.table(name)
    for fmt in render.FORMATS:
        with _owned(stem.with_name(f"{stem.name}.{fmt}")) as tmp:
            tmp.write_text(render.render(name, df, fmt, caption=cap) + ("\n" if fmt != "csv" else ""))
    return _shown(render.display(name, df) if len(df) else df, stem.with_name(f"{stem.name}.md"))


def figure_data(cfg: Settings, kind: str) -> pd.DataFrame:
    """The tidy frame of one figure (`ctrkit.analysis.frames.figure_frame`) for this dataset, also written as
    tables/<dataset>_fig_<kind>.csv so every figure's numbers are on disk beside it."""
    from ctrkit.analysis import frames

    df = frames.figure_frame(_need_results(cfg), kind, dataset=cfg.dataset)
    stem = cfg.table(f"fig_{kind}")
    with _owned(stem.with_name(stem.name + ".csv")) as tmp:
        df.to_csv(tmp, index=False)
    return df


def chosen(cfg: Settings) -> dict:
    """The finetuning setting the sweep of 02 chose on validation ({"weight", "finetune_lr_scale", ...});
    03, 04 and the KD control run at it."""
    from ctrkit.analysis import tables

    return tables.chosen_setting(_need_results(cfg), dataset=cfg.dataset)


def kd_peers(cfg: Settings) -> list[str]:
    """The KD control's peers: the teacher first (the best baseline on validation), then the students."""
    from ctrkit.experiments import designs
    from ctrkit.analysis import records

    base = records.records(_need_results(cfg), dataset=cfg.dataset)
    teacher = designs.best_model(base[(base["mode"] == "baseline") & base["model"].isin(cfg.models)])
    return [teacher] + [m for m in cfg.models if m != teacher]


# ---------------------------------------------------------------- 07: the variants


def variant_grid(cfg: Settings) -> list[dict]:
    """The runs of 07, as `experiments.run` keyword arguments (peer sets and settings), tagged
    "variants" (kept out of the paper's tables). Finetuning at the setting the sweep of 02 chose,
    from scratch at 02's weight (1) with the baselines' epoch cap and patience; the paper's mutual
    (MSE), alone and KD finetuning and mutual/alone from scratch are 02's runs (the store)."""
    best = chosen(cfg)
    common = dict(seeds=cfg.variant_seeds or cfg.seeds, store=cfg.store, ckpt_dir=cfg.ckpt_dir, preset=cfg.preset,
                  device=cfg.device, threads=cfg.threads, workers=cfg.workers, amp=cfg.amp, graph=cfg.graph,
                  progress=cfg.progress, tag="variants")
    tuned = dict(inits=["pretrained"], weight=best["weight"], finetune_lr_scale=best["finetune_lr_scale"],
                 finetune_epochs=cfg.finetune_epochs, **common)
    scratch = dict(inits=["scratch"], epochs=cfg.epochs, overrides=cfg.overrides, weight=SCRATCH_WEIGHT, **common)
    models = [cfg.models]
    return [dict(peer_sets=models, modes=["ensemble_teacher", "ektf"], **tuned),
            dict(peer_sets=models, modes=["mutual"], divergence="kl", **tuned),
            dict(peer_sets=models, modes=["ensemble_teacher", "ektf"], **scratch),
            dict(peer_sets=models, modes=["mutual"], divergence="kl", **scratch),
            dict(peer_sets=[kd_peers(cfg)], modes=["kd"], **scratch),
            dict(peer_sets=models, modes=["alone", "mutual", "ensemble_teacher", "ektf"], share_embedding=True,
                 **scratch),
            dict(peer_sets=models, modes=["mutual"], divergence="kl", share_embedding=True, **scratch)]


def for_variants(cfg: Settings) -> Settings:
    """The settings of 07's table and figure: its seeds (`variant_seeds`, when the profile has them)."""
    return replace(cfg, seeds=cfg.variant_seeds) if cfg.variant_seeds else cfg


# The weight of every run from scratch (02's scratch runs use experiments.run's default).
SCRATCH_WEIGHT = 1.0


def variants_table(cfg: Settings) -> Shown:
    """The variants table (`ctrkit.analysis.variants`) of this dataset: tables/<dataset>_variants.csv
    (numeric), .md (human form, captioned), _variants_pairs.csv (per seed: what the summary across
    datasets reads) and _fig_variants.csv (what the figure draws); returned as the notebook shows it."""
    from ctrkit.analysis import render, variants
    from ctrkit.analysis.stats import CI_NAME
    from ctrkit.experiments import churn

    p = variants.pairs(_need_results(cfg), dataset=cfg.dataset, models=cfg.models, finetune=chosen(cfg),
                       scratch_weight=SCRATCH_WEIGHT)
    cfg = for_variants(cfg)  # 02's runs may have more seeds: every row of the table on 07's
    p = p[p["seed"].isin(cfg.seeds)].reset_index(drop=True)
    t = variants.table(p, variants.seed_churn(p, churn.predictions_dir(cfg.store)))
    for name, df in (("variants_pairs", p), ("variants", t), ("fig_variants", variants.figure_frame(t))):
        with _owned(cfg.table(name).with_name(cfg.table(name).name + ".csv")) as tmp:
            df.to_csv(tmp, index=False)
    human = variants.display(t)
    cap = (f"Variants minus alone, paired by seed [{CI_NAME}]; p_holm: paired t-test of the AUC difference, Holm "
           f"across every row of the dataset; churn: mean |p_a - p_b| on test, within a run (peers) and "
           f"between consecutive seeds of one configuration, treatment/control (t/c); churn_seeds_diff and "
           f"top10_flip_seeds_diff: treatment minus control of the seed churn and of the share of test rows "
           f"that enter or leave the top 10% of scores from one seed to the next (consecutive pairs share a "
           f"seed, so their interval, which treats them as independent, is approximate); {render.MDE_WORDS} "
           f"({caption(cfg, figure=False)})")
    md = cfg.table("variants").with_name(cfg.table("variants").name + ".md")
    with _owned(md) as tmp:
        tmp.write_text(f"{_markdown(human)}\n\n{cap}\n")
    return _shown(human, md)


def variants_summary(cfg: Settings) -> Shown:
    """IQM and probability of improvement over alone across every dataset whose variants were run into
    this output folder (`ctrkit.analysis.aggregate`), written as tables/variants_summary.csv and .md
    (each estimate with its interval; the caption gives each dataset's provenance) when there are two
    or more. With one so far (another dataset's 07 not run yet), its rows alone, shown, not written,
    and said so (`ctrkit reproduce` writes the summary again after the last dataset)."""
    from ctrkit.analysis import aggregate

    found = sorted(cfg.tables.glob("*_variants_pairs.csv"))
    p = pd.concat([pd.read_csv(f) for f in found], ignore_index=True) if found else pd.DataFrame()
    out, names = aggregate.summary(p), sorted(p["dataset"].unique()) if len(p) else []
    human = aggregate.display(out)
    text = _markdown(human) + (
        f"\n\nPooled over {len(names)} dataset{'s' * (len(names) != 1)} ({', '.join(names)}), each as its variants "
        f"table states: "
        f"interquartile mean of the relative test-AUC difference (treatment - alone, paired by seed) and the "
        f"probability of improvement, [95% cluster bootstrap interval: a dataset's seeds drawn with replacement, each "
        f"with every model of its run, the peers of one seed sharing their run]. "
        + "; ".join(f"{d}: {caption(for_variants(replace(cfg, dataset=d)), figure=False)}" for d in names) + ".\n")
    if len(names) < 2:
        return Shown(human, text + "\nOne dataset so far: tables/variants_summary.md is written once a second "
                                   "dataset's 07 has run.\n")
    stem = cfg.tables / "variants_summary"
    with _owned(stem.with_suffix(".csv")) as tmp:
        out.to_csv(tmp, index=False)
    with _owned(stem.with_suffix(".md")) as tmp:
        tmp.write_text(text)
    return _shown(human, stem.with_suffix(".md"))


def tune(cfg: Settings, data) -> dict[str, dict]:
    """The baselines' search of the profile (`tune`), chosen on validation only: every model under
    every candidate (overrides beside the preset) for `tune_seeds`, in OUT/<dataset>/tuning/ with its
    own store (the other tables never see the candidates); then up to `tune_widen` rounds that step
    past an edge of the search (`_widen`). Writes tables/<dataset>_tuning.* and returns each model's
    chosen overrides, for 01's baselines ({} without a search: the preset)."""
    from ctrkit import experiments
    from ctrkit.analysis import records, render, tables

    if not cfg.tune:
        return {}
    root, seeds = cfg.run_dir / "tuning", cfg.tune_seeds or cfg.seeds[:2]

    def run(folder: str, per_model: dict[str, dict]) -> None:
        experiments.pretrain_baselines(data, list(per_model), root / folder, preset=cfg.preset, seeds=seeds,
                                       epochs=cfg.epochs, overrides=cfg.overrides, per_model=per_model,
                                       store=root / "store.jsonl", device=cfg.device, threads=cfg.threads,
                                       workers=cfg.workers, amp=cfg.amp, graph=cfg.graph, progress=cfg.progress)
        tried.update({(folder, m): c for m, c in per_model.items()})

    tried: dict[tuple[str, str], dict] = {}  # (candidate folder, model) -> its overrides
    for i, c in enumerate(cfg.tune):
        run(f"candidate{i}", {m: {**cfg.overrides, **c} for m in cfg.models})
    for r in range(1, cfg.tune_widen + 1):
        steps = _widen(cfg, _chosen(records.records(root / "store.jsonl", dataset=cfg.dataset), root, tried), tried)
        for j in range(max(map(len, steps.values()), default=0)):
            run(f"widen{r}_{j}", {m: c[j] for m, c in steps.items() if len(c) > j})
    df = records.records(root / "store.jsonl", dataset=cfg.dataset)  # the table and the choice read it once
    table = tables.tuning(df)
    cap = f"{render.CAPTIONS['tuning']} ({caption(replace(cfg, seeds=seeds), figure=False, source=root / 'store.jsonl')})"
    stem = cfg.table("tuning")
    for fmt in render.FORMATS:
        with _owned(stem.with_name(f"{stem.name}.{fmt}")) as tmp:
            tmp.write_text(render.render("tuning", table, fmt, caption=cap) + ("\n" if fmt != "csv" else ""))
    return {m: tried[(folder, m)] for m, folder in _chosen(df, root, tried).items()}


def _chosen(df: pd.DataFrame, root: Path, tried: dict[tuple[str, str], dict]) -> dict[str, str]:
    """Each model's candidate folder with the best validation AUC over the search so far (`df`: the
    records of its store)."""
    from ctrkit.experiments import designs

    # a checkpoint's first folder under the search's root names its candidate
    df = df[df["mode"] == "baseline"].assign(cand=[Path(os.path.relpath(str(c), root)).parts[0]
                                                   for c in df["checkpoint"]])
    df = df[[(c, m) in tried for c, m in zip(df["cand"], df["model"])]]
    return {r.model: r.cand for r in designs.choose_on_validation(df, keys=["cand"], by=["model"]).itertuples()}


def _widen(cfg: Settings, chosen: dict[str, str], tried: dict[tuple[str, str], dict]) -> dict[str, list[dict]]:
    """Per model whose chosen candidate sits at an edge of what its search tried, on a key the profile
    searches (`designs.beyond_edges`, on each candidate's values: its overrides, else the preset's),
    the next candidates as overrides; {} once every choice is bracketed. Why: a baseline tuned to the
    edge of its grid may be weaker than the grid could show, and a gain over it no evidence."""
    from ctrkit.experiments import designs
    from ctrkit.training import presets

    keys = sorted({k for c in cfg.tune for k in c})
    out = {}
    for model, folder in chosen.items():
        p = presets.get(model, cfg.preset)
        value = lambda c: {k: c.get(k, p.train.get(k, p.model.get(k))) for k in keys}  # noqa: E731
        mine = [c for (_, m), c in tried.items() if m == model]
        base = tried[(folder, model)]
        steps = [{**base, **s} for s in designs.beyond_edges(value(base), [value(c) for c in mine])]
        if steps:
            out[model] = steps
    return out


def size_runs(cfg: Settings, data, size: str) -> Path:
    """One extra size of the strength comparison (a preset other than the profile's, or a preset on a
    share of the training rows: `ctrkit.analysis.strength.size_parts`): its baselines (the profile's
    seeds, epoch cap and patience; no search) and alone + mutual finetuning over the profile's sweep, so
    that its tables choose its own setting on its own validation scores (a setting chosen for another
    size would favour that size), in OUT/<dataset>/sizes/<size>/ with its own store (the paper's tables
    never see it); runs already there are skipped. A share trains on `ctrkit.data.subset.train_share`'s
    rows in sizes/<size>/data, at `_share_budget`. Returns the store."""
    from ctrkit import experiments
    from ctrkit.analysis.strength import size_parts

    preset, share = size_parts(size)
    root = cfg.run_dir / "sizes" / size
    store = root / "store.jsonl"
    epochs, overrides, finetune_epochs = cfg.epochs, cfg.overrides, cfg.finetune_epochs
    if share < 1:
        from ctrkit.data.subset import train_share

        data = train_share(data, root / "data", share)
        epochs, overrides, finetune_epochs = _share_budget(cfg, preset, share, data.feature_map)
    common = dict(seeds=cfg.seeds, store=store, preset=preset, device=cfg.device, threads=cfg.threads,
                  workers=cfg.workers, amp=cfg.amp, graph=cfg.graph, progress=cfg.progress)
    experiments.pretrain_baselines(data, cfg.models, root / "pretrained", epochs=epochs, overrides=overrides,
                                   **common)
    experiments.run(data, [cfg.models], inits=["pretrained"], modes=["alone", "mutual"], ckpt_dir=root / "pretrained",
                    weight=cfg.sweep_weights, finetune_lr_scale=cfg.sweep_lr_scales,
                    finetune_epochs=finetune_epochs, **common)
    return store


def _share_budget(cfg: Settings, preset: str, share: float, fm: dict) -> tuple[int, dict, int]:
    """(epoch cap, train overrides, finetuning epochs) of a size on a share of the training rows: the
    profile's (else the preset's) epoch cap, patience and finetuning epochs, each x ceil(1 / share), so
    a baseline gets at least the optimizer steps (and patience in steps) it has on all the rows, at the
    same batch: weaker for less data, not for less training. `fm`: the data's feature map (a `bars` preset
    is the one of its dataset and protocol)."""
    from math import ceil

    from ctrkit.training import presets

    k = ceil(1 / share - 1e-9)
    train = presets.get(cfg.models[0], preset, fm["dataset"], fm["protocol"]).train
    epochs, patience = cfg.epochs or train["epochs"], cfg.patience or train["patience"]
    return epochs * k, {**cfg.overrides, "patience": patience * k}, cfg.finetune_epochs * k


def _shares_note(cfg: Settings) -> str:
    """What a caption owes a size on a share of the training rows: its rows and budget ("" without one)."""
    from ctrkit.analysis.strength import size_parts

    said = []
    for size in cfg.sizes:
        preset, share = size_parts(size)
        if share < 1:
            fm = json.loads((cfg.run_dir / "sizes" / size / "data" / "feature_map.json").read_text())
            epochs, overrides, ft = _share_budget(cfg, preset, share, fm)
            said.append(f"{size}: the {preset} preset on a fixed {share:.0%} of the training rows "
                        f"({fm['rows']['train']:,} of {fm['source']['train_share']['of_rows']:,}; the same "
                        f"validation and test rows), epoch cap {epochs}, patience {overrides['patience']}, "
                        f"finetuning at most {ft} epochs: the steps of all the rows")
    return "; ".join(said)


def strength(cfg: Settings, data) -> tuple[Shown, list[Path]]:
    """The headline at each model size of the profile (`sizes`) side by side, and the gain against the
    baseline's pretrained test AUC (`ctrkit.analysis.strength`): the profile's own preset from this
    run's results (its tuned baselines, its sweep's choice), every other size from `size_runs`.
    Writes tables/<dataset>_strength.csv (numeric) and .md (side by side, captioned), the paired test of
    whether the gain changes with strength (`strength_contrast`, `_strength_contrast_table`) and
    figures/<dataset>_gain_vs_strength; returns (the side-by-side table and the contrast, the figure's
    paths). Without sizes nothing is run or written: (a sentence saying so, [])."""
    from ctrkit.analysis import plots, records
    from ctrkit.analysis import strength as st

    if not cfg.sizes:
        return Shown(pd.DataFrame(), f"Not run under profile `{cfg.profile}`: only a profile with model `sizes` "
                                     f"(`quick`, `study`) compares the gain across baseline strengths."), []
    sources = {size: (_need_results(cfg) if size == cfg.preset else size_runs(cfg, data, size)) for size in cfg.sizes}
    t = st.table(sources, dataset=cfg.dataset)
    stem = cfg.table("strength")
    with _owned(stem.with_name(stem.name + ".csv")) as tmp:
        t.to_csv(tmp, index=False)
    every = pd.concat([records.records(s) for s in sources.values()])  # the precision of every size's runs
    prov, shares = caption(cfg, figure=False, source=every), _shares_note(cfg)
    cap = (f"Mutual - alone finetuning per model size, paired by seed within each size, each size at the "
           f"setting its own sweep chose on its own validation scores "
           f"({st.sizes_note(sources, t, dataset=cfg.dataset)}); "
           f"{shares + '; ' if shares else ''}the pretrained test "
           f"AUC is the baseline's; p (Holm): Holm across the models of one size; kept pretrained: runs whose "
           f"best epoch was 0, so that arm is the pretrained model ({prov})")
    human = st.display(t)
    c, contrast_md = _strength_contrast_table(cfg, sources, prov)
    with _owned(stem.with_name(stem.name + ".md")) as tmp:
        tmp.write_text(f"{_markdown(human)}\n\n{cap}\n\n{contrast_md}")
    paths = plots.gain_vs_strength(t, cfg.figure("gain_vs_strength"), contrast=c,
                                   caption=caption(cfg, source=every) + (f"; {shares}" if shares else ""),
                                   title=f"Mutual finetuning gain vs the baseline's strength ({cfg.dataset})")
    return _shown(human, stem.with_name(stem.name + ".md")), paths


def _strength_contrast_table(cfg: Settings, sources: dict, prov: str) -> tuple[pd.DataFrame, str]:
    """tables/<dataset>_strength_contrast.csv (numeric) and .md (human form, captioned): does the gain
    change with the baseline's strength, paired by seed across the sizes; returns (the numeric table,
    the Markdown written, which the strength table's Markdown also ends with)."""
    from ctrkit.analysis import strength as st
    from ctrkit.analysis.stats import CI_NAME, POWER

    c = st.contrast(sources, dataset=cfg.dataset)
    stem = cfg.table("strength_contrast")
    with _owned(stem.with_name(stem.name + ".csv")) as tmp:
        c.to_csv(tmp, index=False)
    left = int(c["n_left_out"].max()) if len(c) else 0
    cap = (f"Does the gain change with the baseline's strength? Per model, the gain (mutual - alone finetuning, "
           f"rel %, each size at the setting its own sweep chose) at size A minus at size B, seed by seed (the "
           f"same pairs as the strength table; seeds of one size only left out: "
           f"{f'at most {left} per model' if left else 'none'}), mean [{CI_NAME}]; a seed's two sizes share "
           f"its seed, not its batches (each size trains on its own: its rows, batch size and schedule), so the "
           f"pairing is by seed only; beside it how much stronger A's pretrained model is (test AUC, A - B, the same seeds, "
           f"[{CI_NAME}]); p: one-sample t-test of the per-seed differences, p (Holm): Holm across the rows of "
           f"the dataset (its models, for each pair of sizes); MDE: the smallest true difference that test finds "
           f"with {POWER:.0%} power at these pairs' number and spread (a null result does not rule out less); "
           f"note: how many pairs kept the pretrained weights at each size ({prov})")
    text = f"{_markdown(st.display_contrast(c))}\n\n{cap}\n"
    with _owned(stem.with_name(stem.name + ".md")) as tmp:
        tmp.write_text(text)
    return c, text
