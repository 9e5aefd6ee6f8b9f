"""`ctrkit reproduce`: run the notebooks in order with papermill, collect tables and figures, index them.

Also the small helpers the notebooks call so they stay thin (one `parameters` cell of literals, then
ctrkit calls): `settings()` turns the parameters + a profile into paths and sizes, `dataset()` gets the
data, `data_tables()` writes the data statistics as tidy CSV, `save_table()` writes CSV + Markdown,
`paper_table()` writes a `ctrkit.analysis.tables` table as CSV + Markdown + LaTeX, `figure_data()` the frame a
figure draws (shaped by `ctrkit.analysis.frames.figure_frame`), `caption()` the provenance line, `chosen()` the
finetuning setting the sweep chose on validation.

Relative paths (`out`, `data_dir`) mean the same folder from JupyterLab (kernel in notebooks/),
papermill (kernel in OUT) and any script of a clone: they are relative to the repository root
(`resolve_path`; outside a clone, to the working directory). `ctrkit reproduce --out DIR`, like any
command line, resolves DIR against the working directory before the notebooks see it.

Output layout (everything under OUT):
    data/<dataset>/            processed data (synthetic for smoke/quick, prepared from --data for full)
    <dataset>/pretrained/      pretrained checkpoints from 01, reused by 02-04 and the widget
    <dataset>/store.jsonl      the results store (one record per peer per run); results.csv its export
    tables/<dataset>_*.csv|md  every table          figures/<dataset>_*.png|svg   every figure
    notebooks/<dataset>/<nb>.ipynb  the executed notebooks 00-04; notebooks/<nb>.ipynb  05 and 06 (run once)
    .done/<job>.json           marker of a finished notebook with the hash of its parameters
    index.md, index.html       links to all of the above
"""
from __future__ import annotations

import hashlib
import html
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ctrkit.core.utils import CtrkitError, atomic_path, write_json_atomic

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
# The clone this ctrkit runs from (None for an installed package): relative notebook paths start here.
REPO_ROOT = NOTEBOOK_DIR.parent if (NOTEBOOK_DIR.parent / "pyproject.toml").is_file() and NOTEBOOK_DIR.is_dir() \
    else None
# The seed of the synthetic rows of the smoke/quick profiles (part of what `dataset()` checks).
SYNTH_SEED = 2021
DATASETS = ("criteo", "avazu")
# Also accepted: the other built-in schemas, and any schema file (.yaml, real data: --data required).
SMALL_DATASETS = ("frappe", "movielens")
SCHEMA_SUFFIXES = (".yaml", ".yml")
PER_DATASET = ("00_data", "01_baselines", "02_scratch_vs_finetune", "03_partners", "04_peer_count")
ONCE = ("05_architectures", "06_explore")
NOTEBOOKS = PER_DATASET + ONCE

# Sizes per profile, as data, so the notebooks' parameter cells stay plain literals.
#   rows: synthetic rows (None: the real data of --data); preset: model/train preset of ctrkit.training.presets;
#   epochs: the cap on pretraining (and from-scratch) epochs; patience: epochs without improvement on
#   validation before a baseline stops (large enough that one noisy epoch does not end it; a run that
#   reaches the cap is flagged in the baselines table); finetune_epochs: the cap of every finetuning run
#   (the pretrained weights are its epoch 0); seeds: every run's seeds (>= 5: the CIs are paired
#   t-intervals over them); models: the paper's four, the pool of every design (partner subsets, peer
#   count; FM/LR are not in it); sweep_weights x sweep_lr_scales: the finetuning grid, chosen on validation;
#   threads: torch CPU threads of every run. 1 for the synthetic profiles: their batches are small, and
#   with another busy process on the 2-core machine 2 threads ran FiBiNET's steps 17x slower than 1
#   (a fixed count also keeps the float summation order, so the results, the same on every load);
#   amp: the precision of every run. fp32 ("off") for the synthetic profiles: "auto" is bf16 on a CPU
#   with AMX and fp32 elsewhere, so the tables would depend on the CPU that ran them (no bf16 hardware
#   was at hand to measure by how much); `full` keeps "auto" (bf16 on a GPU).
# quick/paper run the `smoke` model preset (small embeddings, batch 512): FiBiNET's bilinear layer
# dominates the 2-core CPU budget, so the rows are sized for it (quick: <= 20 minutes for both datasets).
PROFILES: dict[str, dict] = {
    "smoke": {
        "rows": 1000, "preset": "smoke", "epochs": 2, "patience": 1, "finetune_epochs": 1, "seeds": [2021, 2022],
        "models": ["DeepFM", "DCN", "PNN", "FiBiNET"], "sweep_weights": [1.0, 10.0], "sweep_lr_scales": [1.0],
        "threads": 1, "amp": "off", "execution_timeout": 900,
    },
    "quick": {
        "rows": 8000, "preset": "smoke", "epochs": 8, "patience": 2, "finetune_epochs": 1,
        "seeds": [2021, 2022, 2023, 2024, 2025], "models": ["DeepFM", "DCN", "PNN", "FiBiNET"],
        "sweep_weights": [0.3, 1.0, 3.0, 10.0, 30.0], "sweep_lr_scales": [0.1, 1.0], "threads": 1, "amp": "off",
        "execution_timeout": 3600,
    },
    "paper": {
        "rows": 200000, "preset": "smoke", "epochs": 20, "patience": 3, "finetune_epochs": 2,
        "seeds": [2021, 2022, 2023, 2024, 2025, 2026, 2027, 2028, 2029, 2030],
        "models": ["DeepFM", "DCN", "PNN", "FiBiNET"], "sweep_weights": [0.3, 1.0, 3.0, 10.0, 30.0],
        "sweep_lr_scales": [0.1, 1.0], "threads": 1, "amp": "off", "execution_timeout": None,
    },
    "full": {
        "rows": None, "preset": "bars", "epochs": None, "patience": None, "finetune_epochs": 2,
        "seeds": [2021, 2022, 2023, 2024, 2025], "models": ["DeepFM", "DCN", "PNN", "FiBiNET"],
        "sweep_weights": [0.3, 1.0, 3.0, 10.0, 30.0], "sweep_lr_scales": [0.1, 1.0], "threads": "auto",
        "amp": "auto", "execution_timeout": None,
    },
}


def profile(name: str) -> dict:
    """A copy of one profile's sizes; CtrkitError listing the valid names otherwise."""
    if name not in PROFILES:
        raise CtrkitError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    return json.loads(json.dumps(PROFILES[name]))


@dataclass(frozen=True)
class Settings:
    """Resolved parameters of one notebook run: the profile's sizes plus where everything goes."""

    dataset: str
    profile: str
    out: Path
    device: str = "auto"
    data_dir: Path | None = None
    rows: int | None = None
    preset: str = "quick"
    epochs: int | None = None
    finetune_epochs: int = 1
    seeds: list[int] = field(default_factory=lambda: [2021])
    models: list[str] = field(default_factory=list)
    patience: int | None = None
    sweep_weights: list[float] = field(default_factory=lambda: [1.0])
    sweep_lr_scales: list[float] = field(default_factory=lambda: [0.1])
    threads: int | str = "auto"
    amp: str = "auto"
    progress: bool = False
    schema: str | None = None  # a schema file's path (dataset is then the schema's name)

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
        """Train-config keys the profile sets on every baseline (its patience)."""
        return {"patience": self.patience} if self.patience is not None else {}

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def resolve_path(path: str | Path) -> Path:
    """A notebook's path parameter as an absolute path: relative paths are relative to the repository
    root, whatever the kernel's working directory (JupyterLab starts it in notebooks/, papermill in OUT);
    outside a clone (an installed ctrkit) relative to the working directory."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (REPO_ROOT if REPO_ROOT is not None else Path.cwd()) / p
    return p.resolve()


def settings(
    *, dataset: str, profile: str = "quick", out: str = "results", data_dir: str | None = None,
    device: str = "auto", rows: int | None = None, seeds: Sequence[int] | None = None,
    epochs: int | None = None, progress: bool = False,
) -> Settings:
    """The notebooks' first call: parameters (None = the profile's value) -> resolved Settings."""
    schema = None
    if str(dataset).endswith(SCHEMA_SUFFIXES):
        from ctrkit.data import load_schema

        schema = str(resolve_path(dataset))
        dataset = load_schema(schema).name
    elif dataset not in DATASETS + SMALL_DATASETS:
        raise CtrkitError(f"parameter dataset={dataset!r}; valid: {', '.join(DATASETS + SMALL_DATASETS)} "
                          f"or a schema file (.yaml)")
    prof = globals()["profile"](profile)
    if profile == "full" and not data_dir:
        raise CtrkitError("profile full runs the BARS protocol on real data: pass data_dir (--data DIR)")
    if seeds is not None and (not seeds or not all(isinstance(s, int) for s in seeds)):
        raise CtrkitError(f"parameter seeds must be a non-empty list of integers, got {seeds!r}")
    for name, value in (("rows", rows), ("epochs", epochs)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise CtrkitError(f"parameter {name} must be a positive integer or None, got {value!r}")
    return Settings(
        dataset=dataset, profile=profile, out=resolve_path(out), device=device,
        data_dir=resolve_path(data_dir) if data_dir else None,
        rows=rows if rows is not None else prof["rows"], preset=prof["preset"],
        epochs=epochs if epochs is not None else prof["epochs"], finetune_epochs=prof["finetune_epochs"],
        seeds=list(seeds) if seeds is not None else prof["seeds"], models=prof["models"],
        patience=prof["patience"], sweep_weights=prof["sweep_weights"], sweep_lr_scales=prof["sweep_lr_scales"],
        threads=prof["threads"], amp=prof["amp"], progress=progress, schema=schema,
    )


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
                                         progress=cfg.progress)
    if not cfg.data_dir.exists():
        raise CtrkitError(f"--data {cfg.data_dir}: no such file or directory")
    if (cfg.data_dir / "feature_map.json").exists():
        return ctrdata.load(cfg.data_dir)
    # Raw files: prepare once into OUT/data/<dataset>/data, the layout synthetic data gets too.
    target = cfg.data_path / "data"
    if (target / "feature_map.json").exists():
        _check_prepared_from(target, cfg.data_dir)
        return ctrdata.load(target)
    _check_synthetic_absent(cfg)
    return ctrdata.load(ctrdata.prepare(cfg.schema or cfg.dataset, cfg.data_dir, target, progress=cfg.progress))


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
    want = {"dataset": cfg.dataset, "rows": int(cfg.rows), "seed": SYNTH_SEED}
    if have != want:
        diff = ", ".join(f"{k} {have.get(k)!r} (asked: {v!r})" for k, v in want.items() if have.get(k) != v)
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


def save_table(df: pd.DataFrame, stem: str | Path, *, floatfmt: str = ".4f") -> pd.DataFrame:
    """Write a table as <stem>.csv and <stem>.md (atomically) and return it for display."""
    stem = Path(stem)
    with atomic_path(stem.with_name(stem.name + ".csv")) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(stem.with_name(stem.name + ".md")) as tmp:
        tmp.write_text(df.to_markdown(index=False, floatfmt=floatfmt) + "\n")
    return df


def bars_source() -> dict:
    """Where the BARS reference numbers of `ctrkit/training/bars.json` come from (shown under the baselines table)."""
    from importlib import resources

    try:
        meta = json.loads(resources.files("ctrkit.training").joinpath("bars.json").read_text())
    except (FileNotFoundError, OSError):
        return {"about": "ctrkit/training/bars.json is not installed: no BARS reference numbers"}
    return {k: meta[k] for k in ("about", "source") if k in meta}


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
    save_table(pd.DataFrame(splits), cfg.table("data_splits"))
    save_table(vocab, cfg.table("data_vocab"))
    freq_csv = cfg.table("data_frequency").with_name(cfg.table("data_frequency").name + ".csv")
    with atomic_path(freq_csv) as tmp:
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


def caption(cfg: Settings, *, figure: bool = True) -> str:
    """The provenance line of this run's figures and tables: data, rows, seeds, precision, profile
    (and for a figure, what its error bars are)."""
    from ctrkit.analysis import plots, records

    kind = "real" if cfg.data_dir is not None else "synthetic"
    prec = records.precision(_need_results(cfg)) if cfg.results_csv.exists() else "unrecorded"
    return plots.provenance(data=f"{kind} {cfg.dataset.capitalize()}-shaped data" if kind == "synthetic"
                            else f"real {cfg.dataset.capitalize()} data", rows=cfg.rows, seeds=len(cfg.seeds),
                            precision=prec, profile=cfg.profile, error_bars=figure)


def paper_table(cfg: Settings, name: str) -> pd.DataFrame:
    """One of the paper's tables (`ctrkit.analysis.tables`) from the results CSV, written as
    tables/<dataset>_<name>.csv (numeric, tidy), .md and .tex (human form, captioned with the
    provenance line); returned in the human form for display."""
    from ctrkit.analysis import render, tables

    df = tables.table(name, _need_results(cfg))
    df = df[df["dataset"] == cfg.dataset].reset_index(drop=True) if "dataset" in df.columns and len(df) else df
    cap = f"{render.CAPTIONS[name]} ({caption(cfg, figure=False)})"
    stem = cfg.table(name)
    for fmt in render.FORMATS:
        with atomic_path(stem.with_name(f"{stem.name}.{fmt}")) as tmp:
            tmp.write_text(render.render(name, df, fmt, caption=cap) + ("\n" if fmt != "csv" else ""))
    return render.display(name, df) if len(df) else df


def figure_data(cfg: Settings, kind: str) -> pd.DataFrame:
    """The tidy frame of one figure (`ctrkit.analysis.frames.figure_frame`) for this dataset, also written as
    tables/<dataset>_fig_<kind>.csv so every figure's numbers are on disk beside it."""
    from ctrkit.analysis import frames

    df = frames.figure_frame(_need_results(cfg), kind, dataset=cfg.dataset)
    stem = cfg.table(f"fig_{kind}")
    with atomic_path(stem.with_name(stem.name + ".csv")) as tmp:
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


# ---------------------------------------------------------------------------------------------------
# The runner.

def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Job:
    notebook: str
    dataset: str
    parameters: dict

    @property
    def name(self) -> str:
        return f"{self.dataset}_{self.notebook}" if self.notebook in PER_DATASET else self.notebook

    def executed(self, out: Path) -> Path:
        """Where the executed notebook lands: OUT/notebooks/<dataset>/<nb>.ipynb for 00-04, and
        OUT/notebooks/<nb>.ipynb for 05/06, which run once (on the first dataset)."""
        folder = out / "notebooks" / self.dataset if self.notebook in PER_DATASET else out / "notebooks"
        return folder / f"{self.notebook}.ipynb"


def plan(*, dataset: str = "both", profile: str = "quick", data: str | None = None, out: str = "results",
         device: str = "auto") -> list[Job]:
    """The notebook runs of a reproduction, in order, each with its papermill parameters."""
    globals()["profile"](profile)
    if dataset not in (*DATASETS, *SMALL_DATASETS, "both") and not str(dataset).endswith(SCHEMA_SUFFIXES):
        raise CtrkitError(f"--dataset {dataset!r}; valid: {', '.join(DATASETS + SMALL_DATASETS)}, both, "
                          f"or a schema file (.yaml)")
    if str(dataset).endswith(SCHEMA_SUFFIXES):
        if not data:
            raise CtrkitError(f"--dataset {dataset}: a schema file describes your own data: --data FILE_OR_DIR is required")
        dataset = str(Path(dataset).resolve())
    datasets = list(DATASETS) if dataset == "both" else [dataset]
    if profile == "full" and not data:
        raise CtrkitError("--profile full is the BARS protocol on real data: --data DIR is required "
                          "(a processed dataset dir or raw files; with --dataset both, DIR/criteo and DIR/avazu)")
    out = str(Path(out).resolve())
    jobs = []
    for ds in datasets:
        data_dir = None
        if data:
            data_dir = Path(data).resolve()
            if len(datasets) > 1:
                data_dir = data_dir / ds
            if not data_dir.exists():
                raise CtrkitError(f"--data: {data_dir} does not exist"
                                  + (" (with --dataset both, --data DIR needs DIR/criteo and DIR/avazu)"
                                     if len(datasets) > 1 else ""))
            data_dir = str(data_dir)
        params = {"dataset": ds, "data_dir": data_dir, "profile": profile, "device": device, "out": out}
        name = _schema_name(ds) if ds.endswith(SCHEMA_SUFFIXES) else ds
        jobs += [Job(nb, name, dict(params)) for nb in PER_DATASET]
    # Dataset-independent notebooks run once, on the first dataset (06 needs its data and checkpoints).
    first = jobs[0].parameters
    jobs += [Job(nb, first["dataset"], dict(first)) for nb in ONCE]
    return jobs


def _schema_name(path: str) -> str:
    from ctrkit.data import load_schema

    return load_schema(path).name


def _notebook_path(name: str, notebooks_dir: Path) -> Path:
    path = notebooks_dir / f"{name}.ipynb"
    if not path.exists():
        raise CtrkitError(f"notebook {path} is missing (run from a full clone of ctrkit)")
    return path


def run(
    *, dataset: str = "both", profile: str = "quick", data: str | None = None, out: str = "results",
    figures: str | None = None, device: str = "auto", force: bool = False, progress: bool = True,
    notebooks_dir: str | Path | None = None, only: Sequence[str] | None = None, log=print,
) -> dict:
    """Run the notebooks of `plan()` with papermill; skip those already done with the same parameters.

    A failing notebook raises CtrkitError naming the notebook, the cell and the error; the partly
    executed notebook is kept as <name>.failed.ipynb and finished notebooks stay done.
    Returns {"out", "index", "tables", "figures", "notebooks", "ran", "skipped", "seconds"}.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from ctrkit.core.utils import resolve_device

    resolve_device(device)  # fail early on --device cuda without CUDA
    nb_dir = Path(notebooks_dir) if notebooks_dir else NOTEBOOK_DIR
    jobs = plan(dataset=dataset, profile=profile, data=data, out=out, device=device)
    if only:
        unknown = sorted(set(only) - set(NOTEBOOKS))
        if unknown:
            raise CtrkitError(f"unknown notebook(s) {unknown}; valid: {', '.join(NOTEBOOKS)}")
        jobs = [j for j in jobs if j.notebook in only]
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    timeout = PROFILES[profile]["execution_timeout"]
    ran, skipped, t0 = [], [], time.perf_counter()
    for i, job in enumerate(jobs, 1):
        src = _notebook_path(job.notebook, nb_dir)
        # The profile's sizes are part of the hash: editing PROFILES re-runs the notebooks it changes.
        digest = _sha({"parameters": job.parameters, "profile": PROFILES[profile],
                       "notebook": hashlib.sha256(src.read_bytes()).hexdigest()})
        marker = out_dir / ".done" / f"{job.name}.json"
        dest = job.executed(out_dir)
        if not force and marker.exists() and dest.exists():
            try:
                done = json.loads(marker.read_text()).get("hash")
            except (OSError, json.JSONDecodeError):
                done = None
            if done == digest:
                log(f"[{i}/{len(jobs)}] {job.name}: done before with the same parameters, skipped")
                skipped.append(job.name)
                continue
        log(f"[{i}/{len(jobs)}] {job.name} ...")
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.stem}.partial.ipynb")
        failed = dest.with_name(f"{dest.stem}.failed.ipynb")
        marker.unlink(missing_ok=True)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(src), str(partial), parameters=job.parameters, kernel_name="python3",
                cwd=str(out_dir), progress_bar=progress, log_output=False, execution_timeout=timeout,
            )
        except PapermillExecutionError as e:
            partial.replace(failed) if partial.exists() else None
            evalue = " ".join(str(e.evalue).split())[:300]
            first = next((ln.strip() for ln in str(getattr(e, "source", "")).splitlines() if ln.strip()), "")
            first = first if len(first) <= 60 else first[:57] + "..."
            # cell_index counts the cells of the executed notebook (papermill adds the injected
            # parameters cell), the one kept as .failed.ipynb; the code line identifies it anyway.
            raise CtrkitError(f"notebook {job.notebook} ({job.dataset}) failed in cell {e.cell_index} "
                              f"[{first}]: {e.ename}: {evalue} (executed notebook: {failed})") from None
        except Exception as e:  # kernel died, timeout, missing kernel: still name the notebook
            partial.replace(failed) if partial.exists() else None
            msg = " ".join(str(e).split())[:300]
            raise CtrkitError(f"notebook {job.notebook} ({job.dataset}) did not run: {type(e).__name__}: {msg}") from None
        partial.replace(dest)
        failed.unlink(missing_ok=True)
        seconds = time.perf_counter() - start
        write_json_atomic(marker, {"hash": digest, "parameters": job.parameters, "seconds": round(seconds, 1),
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        log(f"[{i}/{len(jobs)}] {job.name}: {seconds:.0f} s -> {dest}")
        ran.append(job.name)
    result = write_index(out_dir, profile=profile)
    if figures:
        result["copied_figures"] = copy_figures(out_dir / "figures", figures, tables_src=out_dir / "tables")
    result.update(ran=ran, skipped=skipped, seconds=round(time.perf_counter() - t0, 1))
    return result


def copy_figures(src: str | Path, dest: str | Path, *, tables_src: str | Path | None = None) -> list[str]:
    """Copy every PNG/SVG figure from `src` into `dest`, and with `tables_src` its Markdown tables
    into `dest/tables` (what the repository commits beside the figures), atomically per file."""
    pairs = [(p, Path(dest) / p.name) for p in sorted(Path(src).glob("*")) if p.suffix in (".png", ".svg")]
    if tables_src is not None:
        pairs += [(p, Path(dest) / "tables" / p.name) for p in sorted(Path(tables_src).glob("*.md"))]
    for path, target in pairs:
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
    return [str(t) for _, t in pairs]


def write_index(out: str | Path, *, profile: str | None = None) -> dict:
    """OUT/index.md and OUT/index.html linking the executed notebooks, tables and figures."""
    out = Path(out)
    notebooks = sorted(p for p in (out / "notebooks").rglob("*.ipynb") if not p.name.startswith("."))
    tables = sorted((out / "tables").glob("*.csv"))
    figures = sorted((out / "figures").glob("*.png"))
    rel = lambda p: p.relative_to(out).as_posix()  # noqa: E731
    md = [f"# ctrkit reproduction{f' (profile {profile})' if profile else ''}", "",
          f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "", "## Notebooks", ""]
    md += [f"- [{rel(p)}]({rel(p)})" + (" (FAILED)" if p.stem.endswith(".failed") else "") for p in notebooks]
    md += ["", "## Tables", ""]
    for p in tables:
        mdp = p.with_suffix(".md")
        md.append(f"- [{p.stem}]({rel(p)}) (CSV)" + (f", [Markdown]({rel(mdp)})" if mdp.exists() else ""))
    md += ["", "## Figures", ""]
    for p in figures:
        svg = p.with_suffix(".svg")
        md += [f"### {p.stem}", "", f"![{p.stem}]({rel(p)})", "",
               f"[PNG]({rel(p)})" + (f" · [SVG]({rel(svg)})" if svg.exists() else ""), ""]
    with atomic_path(out / "index.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    # HTML: same content, tables inlined (Markdown tables rendered by pandas), figures as <img>.
    h = [f"<!doctype html><meta charset='utf-8'><title>ctrkit reproduction</title>",
         "<style>body{font-family:sans-serif;max-width:960px;margin:auto}img{max-width:100%}"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
         f"<h1>ctrkit reproduction{html.escape(f' (profile {profile})' if profile else '')}</h1>", "<h2>Notebooks</h2><ul>"]
    h += [f"<li><a href='{html.escape(rel(p))}'>{html.escape(rel(p))}</a></li>" for p in notebooks]
    h.append("</ul><h2>Tables</h2>")
    for p in tables:
        h.append(f"<h3><a href='{html.escape(rel(p))}'>{html.escape(p.stem)}</a></h3>")
        if p.with_suffix(".md").exists():  # only the small tables have a Markdown twin; inline those
            try:
                h.append(pd.read_csv(p).to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0))
            except (pd.errors.ParserError, pd.errors.EmptyDataError):
                pass
    h.append("<h2>Figures</h2>")
    for p in figures:
        h.append(f"<h3>{html.escape(p.stem)}</h3><img src='{html.escape(rel(p))}' alt='{html.escape(p.stem)}'>")
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text("\n".join(h) + "\n")
    return {"out": str(out), "index": str(out / "index.md"), "html": str(out / "index.html"),
            "notebooks": [str(p) for p in notebooks], "tables": [str(p) for p in tables],
            "figures": [str(p) for p in figures]}
