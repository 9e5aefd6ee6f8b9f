"""The results store as tidy records: one row per peer per run, with the ids that say which runs compare.

`records()` fills fields older records lack, and computes `settings_key` (every setting that changes a
result except the seed), `setting_id` (the same without the peer set) and `control_id` (what an alone
control must share with its treatment). Runs tagged "exploration" (the widget) are left out unless asked.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import inspect
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ctrkit.core.utils import CtrkitError, file_stamp
from ctrkit.experiments.record import Record
from ctrkit.experiments.store import ResultsStore, read_results

EXPLORATION = "exploration"
# Tags of runs the paper's tables leave out: the widget's, the variants notebook's (07).
OFF_PAPER = (EXPLORATION, "variants")

# What defines a setting apart from the peer set (so designs over several peer sets share it) ...
SETTING_FIELDS = ("dataset", "fingerprint", "init", "mode", "weight", "divergence", "warmup_steps", "preset",
                  "max_epochs", "finetune_lr_scale", "finetune_epochs", "finetune_monitor", "batch_size", "overrides",
                  "amp")
# ... and what a control must share with its treatment (weight, divergence, warm-up are moot at weight 0;
# the batch the run resolved and the pretrained start are checked per pair: `analysis.pairing`).
CONTROL_FIELDS = ("dataset", "fingerprint", "init", "preset", "max_epochs", "finetune_lr_scale",
                  "finetune_epochs", "finetune_monitor", "batch_size", "overrides", "amp", "share_embedding")
_CONFIG_FIELDS = {"finetune_lr_scale": "finetune_lr_scale", "finetune_epochs": "finetune_epochs",
                  "warmup_steps": "warmup_steps", "max_epochs": "epochs", "finetune_monitor": "finetune_monitor",
                  "batch_size": "batch_size", "overrides": "overrides"}


def _hash(values) -> str:
    text = json.dumps([None if (isinstance(v, float) and np.isnan(v)) else v for v in values], default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _config(cfg) -> dict | None:
    """A record's config: a dict or its JSON text; None when it is neither."""
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            return None
    return cfg if isinstance(cfg, dict) else None


def _config_value(cfg, *path):
    """The value at `path` in a config (a dict or its JSON text at each level); None when absent."""
    for key in path:
        cfg = _config(cfg)
        cfg = cfg.get(key) if cfg is not None else None
    return cfg


# Config entries that do not change what a model learns (or are the seed): left out of `flat_settings`.
_NOT_SETTINGS = ("seed", "progress", "device", "threads", "check_every", "eval_batch_size")


def flat_settings(row) -> dict:
    """What a record's run was trained with, as one flat {name: value}: its preset and data
    fingerprint, then its config's model and train entries (the seed and bookkeeping left out); a
    record without a config gives its setting fields instead. Tables name the ones that differ."""
    cfg = _config(row.get("config"))
    if cfg is None:
        return {f: row.get(f) for f in SETTING_FIELDS if f not in ("dataset", "mode", "init")}
    out = {"preset": row.get("preset"), "fingerprint": row.get("fingerprint")}
    for part in ("model", "train"):
        out.update({k: v for k, v in (_config(cfg.get(part)) or {}).items() if k not in _NOT_SETTINGS})
    return out


_MEMO_SIZE = 8


def per_file_version(fn):
    """Memoise `fn(source, **keywords)` per version of the file `source` names (path, inode, size,
    mtime: an atomic export is a new inode, an append a new size), the last `_MEMO_SIZE` versions
    (`functools.lru_cache`); each call gets its own copy. Any other source (a DataFrame, a
    ResultsStore) is computed each time. A notebook's tables, figures and captions read one results
    file dozens of times between two exports, and each read parsed the CSV and every row's config again."""

    @functools.lru_cache(maxsize=_MEMO_SIZE)
    def cached(version: tuple, keywords: tuple):
        return fn(version[0], **dict(keywords))

    # keyed by every keyword with its default filled in: f(src) and f(src, peers=None) are one entry
    defaults = {name: p.default for name, p in inspect.signature(fn).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}

    @functools.wraps(fn)
    def wrapper(source, **keywords):
        version = file_version(source)
        if version is None:
            return fn(source, **keywords)
        return cached(version, tuple(sorted({**defaults, **keywords}.items()))).copy()

    wrapper.cache_info = cached.cache_info
    return wrapper


def file_version(source) -> tuple | None:
    """(resolved path, `file_stamp`) of a results file; None for anything else or a file not there
    (then the reader says so)."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    try:
        st = os.stat(source)
    except OSError:
        return None
    return str(Path(source).resolve()), *file_stamp(st)


@per_file_version
def records(source, *, include_exploration: bool = False, dataset: str | None = None) -> pd.DataFrame:
    """The store as one tidy row per peer per run, with every column the tables read (older records
    lacking a field get None/NaN), `settings_key` (computed from the settings when the record has
    none), `setting_id` (the settings without the peer set) and `control_id` (what a control shares).
    A file is read once per version (`per_file_version`)."""
    if isinstance(source, pd.DataFrame) and {"setting_id", "control_id"} <= set(source.columns):
        df = source  # already normalised (tables calling tables): only filter
        df = df if dataset is None else df[df["dataset"] == dataset]
        return df if include_exploration else df[~df["tag"].astype(str).isin(OFF_PAPER)]
    df = read_results(source)
    check_numbers(df, source)
    return _normalised(df, include_exploration, dataset)


# The record fields that hold a number (an int or a float in `Record`, so a new one is checked too).
NUMERIC_FIELDS = tuple(f.name for f in dataclasses.fields(Record) if str(f.type).split(" |")[0] in ("int", "float"))
FLOAT_FIELDS = tuple(f.name for f in dataclasses.fields(Record) if str(f.type).split(" |")[0] == "float")
# Text that means "no value" as pandas reads a CSV cell (a JSONL record may hold it as a string).
_NO_VALUE = {"", "nan", "none", "null", "na", "n/a", "<na>"}


def check_numbers(df: pd.DataFrame, source) -> None:
    """Fail, naming the file, line, column and value, when a numeric field holds something that is
    not a number (`abc` typed into a CSV): coerced to NaN it silently left that seed out of a mean
    while n_seeds still counted it. Empty, NaN and null stay missing (older records lack fields; a
    diverged run stores NaN). Vectorised, as records() reads ~1000-row stores often: a column is
    looked at cell by cell only where coercion made a NaN the original did not have."""
    bad = []  # (row position, column, value)
    for col in NUMERIC_FIELDS:
        if col not in df.columns or pd.api.types.is_numeric_dtype(df[col]):
            continue  # absent, or already numbers (NaN included): nothing to coerce
        values = df[col].to_numpy()
        lost = pd.to_numeric(df[col], errors="coerce").isna().to_numpy() & ~df[col].isna().to_numpy()
        bad += [(i, col, values[i]) for i in np.flatnonzero(lost)
                if not (isinstance(values[i], str) and values[i].strip().lower() in _NO_VALUE)]
    if not bad:
        return
    row, col, value = min(bad, key=lambda b: b[0])  # the first in file order
    more = f" ({len(bad) - 1} more such value(s))" if len(bad) > 1 else ""
    text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise CtrkitError(f"{_where(df, source, row, col, value)}, column {col}: {text} is not a number "
                      f"(leave the cell empty for a missing value){more}")


def _where(df: pd.DataFrame, source, row: int, col: str, value) -> str:
    """'results file PATH: line N' for the row at position `row` of what `source` held (a CSV export,
    a JSONL store, a ResultsStore); 'results frame: row N' for a DataFrame. Only on an error."""
    path = source.path if isinstance(source, ResultsStore) else source
    if not isinstance(path, (str, os.PathLike)):
        return f"results frame: row {row}"
    path = Path(path)
    if path.suffix == ".csv":
        line = _csv_line(path, row)
        return f"results file {path}: " + (f"line {line}" if line else f"data row {row + 1}")
    line = _jsonl_line(path, df.iloc[row], col, value)
    return f"results store {path}: " + (f"line {line}" if line else f"record {row + 1}")


def _csv_line(path: Path, row: int) -> int | None:
    """The line of `path` where data row `row` (0-based, as pandas read it) starts: a quoted cell (a
    config) may span lines, and pandas skips blank lines, so the row number alone can be off."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader, end, k = csv.reader(f), 0, -1  # k = -1: the header
            for cells in reader:
                start, end = end + 1, reader.line_num
                if not cells:
                    continue
                if k == row:
                    return start
                k += 1
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return None


def _jsonl_line(path: Path, rec: pd.Series, col: str, value) -> int | None:
    """The line of the JSONL store at `path` holding the record `rec` (the frame's row): the first
    with its bad `value` in `col` and the same run, append and peer. The frame has no line numbers
    (torn appends and re-runs are dropped on read), so the file is scanned, on this error only."""
    ids = {k: rec[k] for k in ("run_key", "append_id", "peer") if k in rec.index and isinstance(rec[k], str)}
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError:
        return None
    for n, line in enumerate(lines, 1):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if not isinstance(r, dict) or any(r.get(k) != v for k, v in ids.items()):
            continue
        cell = r.get(col)
        if cell == value or (isinstance(cell, (dict, list)) and json.dumps(cell, sort_keys=True, default=str) == value):
            return n
    return None


def _normalised(df: pd.DataFrame, include_exploration: bool, dataset: str | None) -> pd.DataFrame:
    df = df.copy()
    for c in ("mode", "init", "dataset", "fingerprint", "peer", "peers", "model", "preset", "weight", "divergence",
              "protocol", "pretrained_test_auc", "pretrained_valid_auc", "ensemble_test_auc", "ensemble_valid_auc",
              "peer_index", "partners", "partners_pretrained_auc", "n_peers", "settings_key", "tag", "amp",
              "stopped_early", "epoch_cap_hit", "epochs", "best_epoch", "checkpoint", "valid_auc", "valid_logloss", "test_auc",
              "test_logloss", "seed", "config", "share_embedding", "run_batch_size", *_CONFIG_FIELDS):
        if c not in df.columns:
            df[c] = None
    df["share_embedding"] = df["share_embedding"].eq(True)  # stored only when true
    df["model"] = df["model"].where(df["model"].notna(), df["peer"])  # hand-made stores: model = label
    # older records keep these inside `config` only; each row's config is parsed once, when a column needs it
    paths = {**{col: (key,) for col, key in _CONFIG_FIELDS.items()}, "amp": ("train", "amp")}
    configs: dict[int, dict] = {}  # row -> its parsed config, for the rows that lack a column only
    raw = df["config"].to_numpy()
    for col, path in paths.items():
        missing = df[col].isna().to_numpy()
        if missing.any():
            fill = np.full(len(df), None, dtype=object)
            for i in np.flatnonzero(missing):
                if i not in configs:
                    configs[i] = _config(raw[i])
                fill[i] = _config_value(configs[i], *path)
            df[col] = df[col].where(~missing, list(fill))
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    if not include_exploration:
        df = df[~df["tag"].astype(str).isin(OFF_PAPER)]
    df = df.copy()
    # `check_numbers` let through only numbers and missing values (some as text: "", "NaN"), so coercing
    # loses nothing; every float field, so no table meets a "NaN" string (the int fields stay as stored:
    # some are hashed into the setting ids, and an int column with a gap would turn 8 into 8.0)
    for c in (*FLOAT_FIELDS, "run_batch_size"):
        if c in df.columns and not pd.api.types.is_numeric_dtype(df[c]):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    fields = lambda r, names: [r.get(f) for f in names]  # noqa: E731
    # only the hashed columns as dicts: the whole frame's ~60 columns cost most of the time here
    rows = df[[c for c in dict.fromkeys((*SETTING_FIELDS, *CONTROL_FIELDS, "peers")) if c in df.columns]].to_dict("records")
    df["setting_id"] = [_hash(fields(r, SETTING_FIELDS)) for r in rows]
    df["control_id"] = [_hash(fields(r, CONTROL_FIELDS)) for r in rows]
    computed = [_hash(fields(r, SETTING_FIELDS) + [r.get("peers")]) for r in rows]
    df["settings_key"] = df["settings_key"].where(df["settings_key"].notna(), computed)
    df["dataset"] = data_labels(df)
    return df.reset_index(drop=True)


def data_labels(df: pd.DataFrame) -> pd.Series:
    """Each row's dataset as the tables group it: its name, and where one name covers runs on different
    data (a 200-row sample and the synthetic table, both `criteo`) the name with its data's fingerprint,
    `criteo [40e3d40b]`: pooled under one name, a sweep would choose between datasets on validation
    and a mean would mix them. Records without a fingerprint (older ones) keep the name."""
    prints = df.dropna(subset=["fingerprint"]).groupby("dataset")["fingerprint"].nunique()
    mixed = set(prints[prints > 1].index)
    if not mixed:
        return df["dataset"]
    return pd.Series([f"{d} [{str(f)[:8]}]" if d in mixed and isinstance(f, str) else d
                      for d, f in zip(df["dataset"], df["fingerprint"])], index=df.index, dtype=object)


def provenance(source, *, include_exploration: bool = False, datasets=None) -> str:
    """What a store's tables rest on, in one line: per dataset (of `datasets` when given: a table's)
    its runs, seeds (and their range), model presets, precision and data fingerprints (a store knows
    no row counts: `ctrkit info` on the data folder says them)."""
    df = records(source, include_exploration=include_exploration)
    if datasets is not None:
        df = df[df["dataset"].isin(list(datasets))]
    if df.empty:
        return "no runs"
    parts = []
    for ds, d in df.groupby("dataset", sort=True):
        seeds = sorted(pd.to_numeric(d["seed"], errors="coerce").dropna().astype(int).unique())
        span = f" ({seeds[0]}-{seeds[-1]})" if len(seeds) > 1 else (f" ({seeds[0]})" if seeds else "")
        presets = ", ".join(sorted(str(p) for p in d["preset"].dropna().unique())) or "unrecorded"
        prints = ", ".join(sorted(str(f)[:12] for f in d["fingerprint"].dropna().unique()))
        parts.append(f"{ds}: {d['run_key'].nunique() if 'run_key' in d else '?'} runs, {len(seeds)} seeds{span}, "
                     f"preset {presets}, {precision(d)}, data fingerprint {prints}")
    return "; ".join(parts)


def precision(source, *, include_exploration: bool = False) -> str:
    """The precision of the trained runs ("fp32", "bf16", or "mixed: ..."; "unrecorded" for old records)."""
    df = records(source, include_exploration=include_exploration)
    amp = {("fp32" if str(a) in ("off", "fp32", "False") else str(a)) for a in df["amp"].dropna()}
    return "unrecorded" if not amp else (amp.pop() if len(amp) == 1 else "mixed: " + ", ".join(sorted(amp)))
