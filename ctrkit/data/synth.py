"""Synthetic Criteo-, Avazu-, Frappe- and MovieLens-shaped raw files with a hidden ground-truth
click model.

The files have the raw formats (Criteo: Kaggle `train.txt`, tab-separated, no header, 40 columns;
Avazu: raw `train.csv` with the `id,click,hour,...` header; Frappe/MovieLens: a `train.csv` with the
BARS `label,<fields>` header), so they go through exactly the same `ctrkit prepare` path as the
real data. The labels come from a hidden logistic model with
per-value effects, FM-style pairwise terms, a three-way interaction table and a non-linear
(MLP-like) term, so LR, FM/cross and deep models each have something of their own to capture.

Deterministic for a seed (same numpy version): all parameters of the hidden model come from one
generator; rows are generated in fixed-size chunks, each from its own seeded generator.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ctrkit.core.utils import CtrkitError, seed_problem, write_json_atomic
from ctrkit.data import outdir
from ctrkit.data.sources import check_utf8_name

CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
AVAZU_CAT = ["C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
             "app_category", "device_id", "device_ip", "device_model", "device_type",
             "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]
AVAZU_COLUMNS = ["id", "click", "hour"] + AVAZU_CAT

# Distinct values of each field in the full real datasets (Criteo 45M rows, Avazu 40M rows);
# the generator scales them down with the number of rows and caps them at about a million.
_CRITEO_CARD = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
                27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
# Missing rate of each field in real Criteo (I1..I13, then C1..C26), rounded.
_CRITEO_INT_MISSING = [0.45, 0.0, 0.21, 0.22, 0.03, 0.23, 0.04, 0.0, 0.04, 0.45, 0.04, 0.76, 0.22]
_CRITEO_CAT_MISSING = [0.0] * 12 + [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.44, 0.44, 0.0, 0.76, 0.0,
                                    0.0, 0.44, 0.44]
# Scale (median) of each integer field; heavy tails come from a log-normal.
_CRITEO_INT_SCALE = [3, 30, 20, 7, 18000, 120, 10, 12, 100, 1, 3, 2, 8]
_AVAZU_CARD = [7, 7, 4737, 7745, 26, 8552, 559, 36, 2686408, 6729486, 8251, 5, 4, 2626, 8, 9, 435,
               4, 68, 172, 60]
# Avazu's numeric-looking fields are written as decimal integers, the others as 8-hex hashes.
_AVAZU_NUMERIC = {"C1", "banner_pos", "device_type", "device_conn_type", "C14", "C15", "C16",
                  "C17", "C18", "C19", "C20", "C21"}

# Spread (std of the logit) of the hidden model's parts: main effects, pairwise (FM-style),
# three-way and MLP-like terms; the interaction parts are centred, so LR cannot use them. With
# these, on 40-50k rows: Bayes AUC ~0.86; one-hot LR ~0.75-0.78; LR given the true pair crosses
# ~0.81-0.85 (the reach of FM/cross/deep models).
_PART_STD = (1.4, 1.1, 0.4, 0.4)
_CHUNK = 250_000  # rows per generation chunk; fixed so the output does not depend on memory
# Frappe_x1 / MovielensLatest_x1 (BARS): all-categorical, two sampled negatives per positive, so
# CTR ~1/3. Field sizes of the real data (Frappe: 957 users, 4,082 apps, context fields; MovieLens:
# 17,045 users, 23,743 movies, 49,657 tags; as reported for these sets in the NFM paper).
_CATEGORICAL = {
    "frappe": dict(zip(["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather",
                        "country", "city"], [957, 4082, 7, 7, 2, 3, 2, 10, 80, 233])),
    "movielens": {"user_id": 17045, "item_id": 23743, "tag_id": 49657},
}
BASE_CTR = {"criteo": 0.25, "avazu": 0.17, "frappe": 0.33, "movielens": 0.33}
_FILE = {"criteo": "train.txt", "avazu": "train.csv", "frappe": "train.csv", "movielens": "train.csv"}
# The most rows one call writes: 20x the largest real CTR set imitated here (Criteo, 45M rows) and
# already ~250 GB of Criteo text, ~150 GB of int32 arrays once prepared (39 fields x 4 bytes a row),
# more than a machine holds in memory to train on. A fixed number, not this machine's free memory
# or disk, so the same command means the same everywhere; a typo of a few zeros fails at once
# instead of filling the disk for hours.
MAX_ROWS = 10**9
MARKER = ".ctrkit-synth.json"  # the files this folder got from `ctrkit synth` (may be replaced)


@dataclass
class _Field:
    name: str
    card: int
    zipf: float
    missing: float
    effect: np.ndarray        # per-value main effect, [card]
    latent: np.ndarray        # per-value latent vector for the pairwise/MLP terms, [card, k]
    cdf: np.ndarray | None = None  # Zipf CDF over ranks (None: value drawn by another model)


def _scaled_card(base: int, rows: int) -> int:
    # Small fields keep their size; large ones grow with the data, from a handful to ~1M.
    return int(max(min(base, 8), min(base, 1_000_000, rows // 4)))


class _Truth:
    """The hidden click model: parameters drawn once per (dataset, seed, rows)."""

    def __init__(self, dataset: str, rows: int, seed: int):
        # One generator for every parameter, drawn in a fixed order: fields, then interactions.
        rng = np.random.default_rng([seed, 7919])
        self.dataset = dataset
        self.k = 4
        self.fields: list[_Field] = self._fields(rng, dataset, rows)
        self._interactions(rng)
        self.bias = 0.0
        self.scales = [1.0, 1.0, 1.0, 1.0]
        self._centre_and_scale(np.random.default_rng([seed, 104729]), rows)

    def _fields(self, rng: np.random.Generator, dataset: str, rows: int) -> list[_Field]:
        """Every field's size, frequencies, missing rate and per-value effects."""
        fields = []
        if dataset == "criteo":
            # Integer fields are bucketed like the BARS protocol does, so their effect is per bucket.
            for name, miss in zip(CRITEO_INT, _CRITEO_INT_MISSING):
                fields.append(self._field(rng, name, 64, 0.0, miss, 0.35))
            for name, base, miss in zip(CRITEO_CAT, _CRITEO_CARD, _CRITEO_CAT_MISSING):
                card = _scaled_card(base, rows)
                fields.append(self._field(rng, name, card, 1.05 + 0.3 * rng.random(), miss,
                                          0.6 if card < 5000 else 0.3))
        elif dataset in _CATEGORICAL:
            for name, base in _CATEGORICAL[dataset].items():
                card = _scaled_card(base, rows)
                fields.append(self._field(rng, name, card, 0.9 + 0.4 * rng.random(), 0.0,
                                          0.6 if card < 5000 else 0.4))
        else:
            fields.append(self._field(rng, "hour_of_day", 24, 0.0, 0.0, 0.3))
            for name, base in zip(AVAZU_CAT, _AVAZU_CARD):
                card = _scaled_card(base, rows)
                # device_id/device_ip: one dominant value, like real Avazu ('a99f214a' ~ 83%).
                zipf = 2.2 if name in ("device_id", "device_ip") else 1.05 + 0.4 * rng.random()
                fields.append(self._field(rng, name, card, zipf, 0.0,
                                          0.6 if card < 5000 else 0.3))
        return fields

    def _interactions(self, rng: np.random.Generator) -> None:
        """The pairwise, three-way and MLP-like terms: which fields they read and their weights."""
        # Interactions live on fields of moderate size: values frequent enough to be learnt from
        # tens of thousands of rows (as in real CTR data, where rare ids carry little signal).
        mid = [i for i, f in enumerate(self.fields) if f.card <= 30 and f.missing < 0.3]
        if len(mid) < 2:  # MovieLens: only large id fields; interactions are then user x item (MF-like)
            mid = list(range(len(self.fields)))
        # Pairwise (FM-style) terms on a random subset of those fields' pairs.
        pairs = [(i, j) for a, i in enumerate(mid) for j in mid[a + 1:]]
        pick = rng.choice(len(pairs), size=min(len(pairs), 12), replace=False)
        self.pairs = [pairs[p] for p in sorted(pick)]
        self.pair_w = rng.normal(0, 1.0, size=len(self.pairs))
        # A three-way table over three small fields: only a cross/deep model can fit it.
        small = [i for i, f in enumerate(self.fields) if f.card <= 64]
        if len(small) < 3:
            small = sorted(range(len(self.fields)), key=lambda i: self.fields[i].card)[:3]
        self.triple = tuple(rng.choice(small, size=3, replace=False))
        # A pure three-way term: product of three per-value factors, each centred below.
        self.triple_tab = [rng.normal(0, 1, size=16) for _ in range(3)]
        # A small random MLP on the concatenated latents of a few fields (higher-order, smooth).
        self.mlp_fields = sorted(rng.choice(mid, size=min(len(mid), 6), replace=False).tolist())
        self.W1 = rng.normal(0, 1.0 / np.sqrt(self.k), size=(len(self.mlp_fields) * self.k, 16))
        self.w2 = rng.normal(0, 1.0, size=16)

    def _centre_and_scale(self, rng: np.random.Generator, rows: int) -> None:
        """Centre the interaction terms, scale each part and calibrate the bias on a sample of rows."""
        ranks, _ = self._ranks(rng, min(200_000, max(20_000, rows)))
        # Centre the latent vectors and the three-way factors under the data's own (Zipf) value
        # frequencies, so interaction terms have no main-effect part an LR could pick up: with a
        # dominant value, an uncentred <e_i, e_j> would act as a per-value effect of field i.
        for r, f in zip(ranks, self.fields):
            ok = r >= 0
            if ok.any():
                f.latent -= f.latent[r[ok]].mean(axis=0)
        for t, tab in zip(self.triple, self.triple_tab):
            tab -= tab[np.where(ranks[t] >= 0, ranks[t], 0) % 16].mean()
        # Each part scaled to a fixed spread (std on the logit scale), so every seed and size gets
        # the same mix of signal: LR sees only the main part, FM/cross/deep models more.
        self.scales = [t / max(float(p.std()), 1e-9) for t, p in zip(_PART_STD, self._parts(ranks))]
        self.bias = self._calibrate(self._logit(ranks), BASE_CTR[self.dataset])

    @staticmethod
    def _field(rng, name, card, zipf, missing, scale) -> _Field:
        cdf = None
        if zipf:
            p = 1.0 / np.arange(1, card + 1) ** zipf
            cdf = np.cumsum(p / p.sum())
        return _Field(name, card, zipf, missing, rng.normal(0, scale, size=card),
                      rng.normal(0, 1, size=(card, 4)).astype(np.float64), cdf)

    @staticmethod
    def _calibrate(logit: np.ndarray, ctr: float) -> float:
        lo, hi = -20.0, 20.0
        for _ in range(60):  # bisection: mean(sigmoid(logit + b)) is monotone in b
            mid = (lo + hi) / 2
            if np.mean(1 / (1 + np.exp(-(logit + mid)))) < ctr:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    def draw(self, rng: np.random.Generator, n: int, hour_of_day: np.ndarray | None = None) -> dict:
        """Ranks per field (-1 = missing), raw integers (criteo) and the logit of each row."""
        ranks, ints = self._ranks(rng, n, hour_of_day)
        return {"ranks": ranks, "ints": ints, "logit": self._logit(ranks)}

    def _ranks(self, rng: np.random.Generator, n: int, hour_of_day: np.ndarray | None = None):
        ranks = []
        for f in self.fields:
            if f.zipf == 0.0:
                r = None  # filled by the caller's integer/hour model
            else:
                r = np.searchsorted(f.cdf, rng.random(n), side="right")
                r = np.minimum(r, f.card - 1)
            ranks.append(r)
        if self.dataset == "criteo":
            ints = []
            for i, f in enumerate(self.fields[:13]):
                v = np.floor(rng.lognormal(np.log(_CRITEO_INT_SCALE[i]), 1.3, size=n)).astype(np.int64)
                if i == 1:  # I2 has small negative values in real Criteo
                    v = v - (rng.random(n) < 0.05)
                ints.append(v)
                ranks[i] = np.clip(_bucket(v), 0, f.card - 1)
        else:
            ints = None
            if self.dataset == "avazu":
                ranks[0] = rng.integers(0, 24, size=n) if hour_of_day is None else hour_of_day
        for i, f in enumerate(self.fields):
            if f.missing > 0:
                ranks[i] = np.where(rng.random(n) < f.missing, -1, ranks[i])
        return ranks, ints

    def _parts(self, ranks: list) -> list:
        """The logit's four parts (main, pairwise, three-way, MLP), unscaled."""
        n = len(ranks[0])
        main = np.zeros(n)
        lat = []
        for r, f in zip(ranks, self.fields):
            ok = r >= 0
            idx = np.where(ok, r, 0)
            main += np.where(ok, f.effect[idx], 0.0)
            lat.append(np.where(ok[:, None], f.latent[idx], 0.0))
        pair = np.zeros(n)
        for (i, j), w in zip(self.pairs, self.pair_w):
            pair += w * np.einsum("nk,nk->n", lat[i], lat[j]) / self.k
        u = [tab[np.where(ranks[t] >= 0, ranks[t], 0) % 16] for t, tab in zip(self.triple, self.triple_tab)]
        triple = u[0] * u[1] * u[2]
        mlp = np.tanh(np.concatenate([lat[t] for t in self.mlp_fields], axis=1) @ self.W1) @ self.w2
        return [main, pair, triple, mlp]

    def _logit(self, ranks: list) -> np.ndarray:
        return self.bias + sum(s * p for s, p in zip(self.scales, self._parts(ranks)))


def _bucket(v: np.ndarray) -> np.ndarray:
    out = v.astype(np.int64)
    big = v > 2
    out[big] = np.floor(np.log(v[big].astype(np.float64)) ** 2).astype(np.int64)
    return out


def _hex_tokens(field_index: int, card: int, seed: int) -> np.ndarray:
    """8-hex tokens per rank, like Criteo's/Avazu's hashed values; unique within a field."""
    rng = np.random.default_rng([seed, 31337, field_index])
    codes = rng.choice(2**32, size=card, replace=False) if card < 2**20 else \
        np.unique(rng.integers(0, 2**32, size=int(card * 1.01) + 64, dtype=np.uint64))[:card]
    rng.shuffle(codes)
    return np.char.zfill(np.char.mod("%x", codes.astype(np.uint64)), 8).astype("S8")


def _num_tokens(field_index: int, card: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 4242, field_index])
    base = int(rng.integers(0, 20000)) if card > 10 else 0
    return np.char.mod("%d", np.arange(base, base + card)).astype("S")


def _tokens(truth: _Truth, dataset: str, seed: int) -> list:
    """Per field, the raw token of each rank (None: an integer or hour field, written as a number)."""
    tokens = []
    for i, f in enumerate(truth.fields):
        if (dataset == "criteo" and i < 13) or (dataset == "avazu" and i == 0):
            tokens.append(None)
        elif (dataset == "avazu" and f.name in _AVAZU_NUMERIC) or (dataset in _CATEGORICAL and f.card <= 100):
            tokens.append(_num_tokens(i, f.card, seed))
        else:
            tokens.append(_hex_tokens(i, f.card, seed))
    return tokens


def _chunk(truth: _Truth, dataset: str, tokens: list, seed: int, chunk_no: int, done: int, n: int, rows: int):
    """The Arrow table of rows done .. done+n (chunk `chunk_no`, its own generator)."""
    import pyarrow as pa

    rng = np.random.default_rng([seed, 2, chunk_no])
    # Avazu rows are in time order over 10 days (2014-10-21 .. 30), like the real file.
    pos = (done + np.arange(n)) * 240 // rows
    d = truth.draw(rng, n, hour_of_day=pos % 24 if dataset == "avazu" else None)
    y = (rng.random(n) < 1 / (1 + np.exp(-d["logit"]))).astype(np.int8)
    cols, names = [], []
    if dataset == "avazu":
        ids = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * 2 + 1
        cols.append(pa.array(ids.astype(str), pa.string()))
        hour = 14102100 + (pos // 24) * 100 + pos % 24
        cols += [pa.array(y), pa.array(hour)]
        names += ["id", "click", "hour"]
    else:
        cols.append(pa.array(y))
        names.append("label")
    for i, f in enumerate(truth.fields):
        r = d["ranks"][i]
        if dataset == "avazu" and i == 0:
            continue
        mask = r < 0
        if dataset == "criteo" and i < 13:
            cols.append(pa.array(d["ints"][i], mask=mask))
        else:
            cols.append(pa.array(tokens[i][np.where(mask, 0, r)], pa.string(),
                                 mask=mask if mask.any() else None))
        names.append(f.name)
    return pa.table(cols, names=names)


def _marker(out: Path) -> dict | None:
    """The folder's marker (None: none, or not readable as one)."""
    import json

    try:
        m = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _marked(out: Path) -> set | None:
    """The file names the folder's marker lists as written by ctrkit synth (None: no readable marker)."""
    m = _marker(out)
    try:
        return None if m is None else set(m.get("files", []))
    except TypeError:  # "files" is not a list of names
        return None


def _written(out: Path) -> dict:
    """{file name: what was written there} of the files a finished ctrkit synth left as it wrote them:
    its settings and the file's size and mtime then (`_record`)."""
    w = (_marker(out) or {}).get("written")
    return w if isinstance(w, dict) else {}


def written_before(dataset: str, rows: int, out, seed: int = 2021, gzip: bool = False) -> Path | None:
    """The file `generate` with these settings would write, when a finished ctrkit synth of the same
    dataset, rows, seed and format wrote it there and it is unchanged since (its size and mtime as
    the marker recorded them): writing it again would give the same bytes. Else None."""
    out = Path(out)
    name = _FILE.get(dataset, "") + (".gz" if gzip else "")
    path = out / name
    was = _written(out).get(name)
    try:
        st = path.lstat()  # a link is not what synth wrote there
    except OSError:
        return None
    now = {"dataset": dataset, "rows": int(rows), "seed": int(seed), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    return path if stat.S_ISREG(st.st_mode) and was == now else None


def _claim(out: Path, name: str, force: bool) -> None:
    """Refuse to replace a file unless --force and ctrkit synth (or synthetic_dataset) wrote it."""
    path = out / name
    if not path.exists():
        return
    if not force:
        raise CtrkitError(f"{path}: exists; pass --force (force=True from Python) to replace it "
                          f"(only a file ctrkit synth wrote)")
    files = _marked(out)
    # without a marker: a folder of synthetic_dataset from before the marker
    ours = name in files if files is not None else (out / "synth.json").is_file()
    if not ours or not path.is_file():
        raise CtrkitError(f"{path}: exists and was not written by ctrkit synth; not replacing it")


def _mark(out: Path, name: str) -> None:
    """List `name` in the marker, before the file is written: a file (or a temp file) that a full
    disk or a kill leaves half-written is then known as ours, and replaced by the next run. What
    `name` held is no longer recorded as written (`_record` does when the new one is in place)."""
    _write_marker(out, sorted((_marked(out) or set()) | {name}), {k: v for k, v in _written(out).items() if k != name})


def _record(out: Path, name: str, settings: dict) -> None:
    """Record that the finished file `name` holds `settings`, with its size and mtime: a rerun with the
    same settings finds it unchanged and writes nothing (`written_before`)."""
    st = (out / name).stat()
    written = {**_written(out), name: {**settings, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}}
    _write_marker(out, sorted((_marked(out) or set()) | {name}), written)


def _write_marker(out: Path, files: list, written: dict) -> None:
    try:
        write_json_atomic(out / MARKER, {"written_by": "ctrkit synth", "files": files, "written": written})
    except OSError as e:
        raise outdir.os_error(out, e, out / MARKER) from None


def _remove_stale(out: Path, name: str) -> None:
    """The temp file of `name` left by a killed run (its pid gone; see `_write`), when the marker
    lists `name`: prepare's mechanism (outdir.stale), for one file."""
    if name not in (_marked(out) or set()):
        return
    for p in outdir.stale(out, name, kinds=("tmp",)):
        if p.is_file():
            p.unlink(missing_ok=True)


def generate(dataset: str, rows: int, out, seed: int = 2021, gzip: bool = False,
             progress: bool = False, force: bool = False) -> Path:
    """Write `out/train.txt` (criteo) or `out/train.csv` (avazu, frappe, movielens), optionally
    gzipped; return the file. An existing file is replaced only with `force`, and only when ctrkit
    wrote it; without `force`, a file a finished call with the same settings wrote is left as it is
    (`written_before`: it would be written again byte for byte).

    Realistic in shape: Zipf-like categorical frequencies, cardinalities scaled with `rows`,
    missing values, heavy-tailed integers, base CTR ~0.25 (criteo) / ~0.17 (avazu) / ~0.33
    (frappe, movielens: one positive per two sampled negatives, as in BARS).
    """
    from tqdm.auto import tqdm

    if dataset not in BASE_CTR:
        raise CtrkitError(f"unknown dataset {dataset!r}; valid: {', '.join(BASE_CTR)}")
    if not isinstance(rows, (int, np.integer)) or isinstance(rows, bool) or rows < 1:
        raise CtrkitError(f"--rows must be a positive integer, got {rows!r}")
    if rows > MAX_ROWS:
        raise CtrkitError(f"--rows {rows}: too many; ctrkit synth writes at most {MAX_ROWS:,} rows "
                          f"(20x the real Criteo)")
    # numpy's seeds are >= 0 (and the [seed, k] lists below < 2**64); < 2**63 keeps it an int64 wherever stored
    if seed_problem(seed):
        raise CtrkitError(f"--seed: {seed_problem(seed)}")
    out = Path(out)
    name = _FILE[dataset] + (".gz" if gzip else "")
    path = out / name
    if not force and written_before(dataset, rows, out, seed, gzip) is not None:
        return path  # the same file again: nothing to write (the CLI says so)
    _prepare_out(out, name, force)
    _mark(out, name)
    truth = _Truth(dataset, int(rows), seed)
    tokens = _tokens(truth, dataset, seed)
    bar = tqdm(total=int(rows), unit="rows", desc=f"synth {dataset}", disable=not progress)
    try:
        _write(path, dataset, _tables(truth, tokens, seed, int(rows), bar), gzip=gzip)
    except OSError as e:
        raise outdir.os_error(out, e, path) from None
    finally:
        bar.close()
    _record(out, name, {"dataset": dataset, "rows": int(rows), "seed": int(seed)})
    return path


def _prepare_out(out: Path, name: str, force: bool) -> None:
    """The output folder exists and `name` in it may be written (see `_claim`)."""
    check_utf8_name(out, "--out ")
    if out.exists() and not out.is_dir():
        raise CtrkitError(f"--out {out}: is a file, not a folder")
    _claim(out, name, force)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CtrkitError(f"--out {out}: cannot create: {e.strerror or e}") from None
    _remove_stale(out, name)


def _tables(truth: _Truth, tokens: list, seed: int, rows: int, bar) -> Iterator:
    """The rows as Arrow tables, one per chunk of `_CHUNK` rows, in order (the progress bar follows)."""
    done = chunk_no = 0
    while done < rows:
        n = min(_CHUNK, rows - done)
        yield _chunk(truth, truth.dataset, tokens, seed, chunk_no, done, n, rows)
        done += n
        chunk_no += 1
        bar.update(n)


def _write(path: Path, dataset: str, tables: Iterable, *, gzip: bool) -> None:
    """Write the tables as the dataset's raw CSV (header by hand: Arrow would quote the column
    names; Criteo has none), gzipped when asked, atomically: into `.<name>.tmp-<pid>`, renamed at
    the end (the pid in the name lets the next run remove the temp file of a killed one)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    write_opts = pacsv.WriteOptions(include_header=False, delimiter="\t" if dataset == "criteo" else ",",
                                    quoting_style="none")
    header = None if dataset == "criteo" else (AVAZU_COLUMNS if dataset == "avazu" else
                                               ["label"] + list(_CATEGORICAL[dataset]))
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        sink = pa.CompressedOutputStream(str(tmp), "gzip") if gzip else pa.OSFile(str(tmp), "wb")
        writer = None
        try:
            if header:
                sink.write((",".join(header) + "\n").encode())
            for table in tables:
                if writer is None:
                    writer = pacsv.CSVWriter(sink, table.schema, write_options=write_opts)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
            sink.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
