"""Two reproductions side by side: which conclusions a change of precision, device, version or data moved.

Each claim table of a reproduction's `tables/` folder (what `ctrkit reproduce` writes) states its
conclusions as estimates with a 95% confidence interval. `conclusions` joins the two folders' rows
of every claim table by their identity (model, arm, variant, ...) and reads each interval as a
verdict: "gain" (the interval above 0), "loss" (below 0) or "no clear difference" (it spans 0). A
row whose verdict differs between the two is a conclusion the change moved. The intervals are the
tables' own (per row, not corrected across rows; the tables' `p_holm` stands beside them).
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ctrkit.analysis.records import precision
from ctrkit.core.utils import CtrkitError, sha256_file, write_json_atomic
from ctrkit.data import outdir

# claim table -> (the columns that identify a row, its estimate's (mean, low, high) columns). The
# per-dataset tables are `tables/<dataset>_<name>.csv`; the summary across datasets has no prefix.
CLAIMS: dict[str, tuple[tuple[str, ...], tuple[str, str, str]]] = {
    "scratch": (("model",), ("rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high")),
    "headline": (("model",), ("rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high")),
    "controls": (("arm", "unit"), ("rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high")),
    "alternatives": (("unit",), ("rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high")),
    "partner_slopes": (("target",), ("slope_mean", "slope_ci_low", "slope_ci_high")),
    "peer_count": (("model", "n_peers"), ("rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high")),
    "variants": (("init", "embedding", "variant", "model"), ("rel_pct_mean", "rel_pct_ci_low", "rel_pct_ci_high")),
    "variants_summary": (("init", "embedding", "variant"), ("iqm_rel_pct", "iqm_ci_low", "iqm_ci_high")),
}
ACROSS_DATASETS = ("variants_summary",)
# the chosen finetuning setting, shown beside a row when its table has it (it can differ between the two)
SETTING = ("weight", "finetune_lr_scale")
# "no interval", not "n/a": pandas reads "n/a" back from compare.csv as a missing value
NO_INTERVAL = "no interval"
VERDICTS = ("gain", "loss", "no clear difference", NO_INTERVAL)


def verdict(mean: float, low: float, high: float) -> str:
    """What an estimate with its 95% interval says: gain (low > 0), loss (high < 0), no clear
    difference (it spans 0), no interval (missing, e.g. a control row or one side only)."""
    if any(v is None or not np.isfinite(v) for v in (mean, low, high)):
        return NO_INTERVAL
    return "gain" if low > 0 else "loss" if high < 0 else "no clear difference"


def _tables_dir(out) -> Path:
    d = Path(out).expanduser() / "tables"
    if not Path(out).expanduser().exists():
        raise CtrkitError(f"{out}: no such directory (give the --out folder of a `ctrkit reproduce` run)")
    if not d.is_dir():
        raise CtrkitError(f"{d}: no tables folder (give the --out folder of a `ctrkit reproduce` run)")
    return d


def _claim_files(tables: Path) -> dict[tuple[str, str], Path]:
    """(dataset, table) -> CSV of every claim table in a tables folder ("" = across datasets). The
    datasets are those whose data table 00 wrote (`<dataset>_data_splits.csv`)."""
    datasets = sorted(p.name.removesuffix("_data_splits.csv") for p in tables.glob("*_data_splits.csv"))
    found = {}
    for name in CLAIMS:
        for dataset in [""] if name in ACROSS_DATASETS else datasets:
            path = tables / (f"{dataset}_{name}.csv" if dataset else f"{name}.csv")
            if path.is_file():
                found[(dataset, name)] = path
    return found


def _read(path: Path, name: str) -> pd.DataFrame:
    keys, est = CLAIMS[name]
    try:
        _same_field_counts(path)
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise CtrkitError(f"{path}: cannot read ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    missing = [c for c in (*keys, *est) if c not in df.columns]
    if missing:
        raise CtrkitError(f"{path}: not a {name} table (no column {', '.join(missing)})")
    setting = [c for c in SETTING if c in df.columns]
    out = pd.DataFrame({"row": [" · ".join(_text(v) for v in r) for r in df[list(keys)].itertuples(index=False)]})
    values = df[list(est)].apply(pd.to_numeric, errors="coerce")
    bad = values.isna() & df[list(est)].notna()
    if bad.any().any():
        line = int(bad.any(axis=1).to_numpy().argmax()) + 2  # + the header, 1-based
        raise CtrkitError(f"{path}, line {line}: {', '.join(c for c in est if bad[c].any())} is not a number")
    out[["mean", "low", "high"]] = values.to_numpy(dtype=float)
    out["setting"] = [", ".join(f"{c} {_text(v)}" for c, v in zip(setting, r) if _text(v)) for r in
                      df[setting].itertuples(index=False)] if setting else ""
    if out["row"].duplicated().any():
        raise CtrkitError(f"{path}: rows repeat the same {', '.join(keys)}; cannot pair them")
    return out.set_index("row")


def _same_field_counts(path: Path) -> None:
    """A row with more fields than the header would become pandas' index and shift every column."""
    with open(path, newline="") as f:
        rows = csv.reader(f)
        width = len(next(rows, []))
        for line, row in enumerate(rows, 2):
            if row and len(row) != width:
                raise CtrkitError(f"{path}, line {line}: {len(row)} fields, the header has {width}")


def _text(v) -> str:
    """A key or setting value as text: numbers without trailing zeros, missing as ''."""
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else f"{v:g}"
    return "" if v is None else str(v)


def conclusions(a, b, *, labels: Sequence[str] = ("a", "b")) -> pd.DataFrame:
    """Every claim row of the reproductions in folders `a` and `b`, side by side (tidy, numeric):
    dataset, table, row, estimate, then per side (its label as prefix) mean, ci_low, ci_high,
    verdict and the chosen setting; `shift` (b mean - a mean) and `same` (the verdicts agree).
    Rows only one side has are kept, the other side "no interval"."""
    la, lb = _labels(labels)
    fa, fb = _claim_files(_tables_dir(a)), _claim_files(_tables_dir(b))
    if not set(fa) & set(fb):
        raise CtrkitError(f"{a} and {b} have no claim table in common ({', '.join(CLAIMS)})")
    parts = []
    for dataset, name in sorted(set(fa) | set(fb), key=lambda k: (k[0] == "", k[0], list(CLAIMS).index(k[1]))):
        sides = [_read(f[(dataset, name)], name) if (dataset, name) in f else None for f in (fa, fb)]
        rows = list(dict.fromkeys([r for s in sides if s is not None for r in s.index]))
        part = pd.DataFrame({"dataset": dataset or "all", "table": name, "row": rows,
                             "estimate": CLAIMS[name][1][0].removesuffix("_mean")})
        for label, side in zip((la, lb), sides):
            side = (side if side is not None else pd.DataFrame(columns=["mean", "low", "high", "setting"])).reindex(rows)
            part[f"{label}_mean"] = side["mean"].to_numpy(dtype=float)
            part[f"{label}_ci_low"] = side["low"].to_numpy(dtype=float)
            part[f"{label}_ci_high"] = side["high"].to_numpy(dtype=float)
            part[f"{label}_verdict"] = [verdict(*v) for v in side[["mean", "low", "high"]].to_numpy(dtype=float)]
            part[f"{label}_setting"] = side["setting"].fillna("").to_numpy()
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    df["shift"] = df[f"{lb}_mean"] - df[f"{la}_mean"]
    df["same"] = df[f"{la}_verdict"] == df[f"{lb}_verdict"]
    return df


def _labels(labels: Sequence[str]) -> tuple[str, str]:
    labels = [str(x).strip() for x in labels]
    if len(labels) != 2 or not all(labels) or labels[0] == labels[1] or not all(x.isidentifier() for x in labels):
        raise CtrkitError(f"labels must be two different names (letters, digits, _), got {list(labels)!r}")
    return labels[0], labels[1]


def summary(df: pd.DataFrame, labels: Sequence[str] = ("a", "b")) -> str:
    """One paragraph: how many conclusions agree, and each one that moved."""
    la, lb = _labels(labels)
    c = counts(df, labels)
    text = (f"{c['agree']} of {c['compared']} conclusions agree between {la} and {lb} "
            f"({len(df) - c['compared']} rows without an interval on one side left out).")
    for r in c["moved"]:
        text += (f"\n- {r['dataset']} {r['table']} {r['row']}: {r[f'{la}_verdict']} under {la}, "
                 f"{r[f'{lb}_verdict']} under {lb}")
    return text


def counts(df: pd.DataFrame, labels: Sequence[str] = ("a", "b")) -> dict:
    """The comparison as one JSON-ready dict: rows compared (an interval on both sides), how many
    agree, and each moved row (dataset, table, row, both verdicts)."""
    la, lb = _labels(labels)
    both = df[(df[f"{la}_verdict"] != NO_INTERVAL) & (df[f"{lb}_verdict"] != NO_INTERVAL)]
    moved = both.loc[~both["same"], ["dataset", "table", "row", f"{la}_verdict", f"{lb}_verdict"]]
    return {"compared": len(both), "agree": int(both["same"].sum()), "moved": moved.to_dict("records")}


def provenance(out) -> str:
    """What each dataset's runs in a reproduction folder are: the provenance line its tables carry
    (data, rows as loaded, seeds, precision, profile: the last parenthesis of `<dataset>_headline.md`
    or `_scratch.md`), else the precision of its `<dataset>/results.csv`."""
    out = Path(out).expanduser()
    parts = [f"{d}: {line or precision(out / d / 'results.csv')}" for d, line in _provenances(out).items()]
    return f"{out} ({'; '.join(parts) or 'no results.csv'})"


def _provenances(out) -> dict[str, str]:
    """Per dataset with a results.csv in `out`: the provenance line of its headline (else scratch) table, or ''."""
    out = Path(out).expanduser()
    return {r.parent.name: next((_last_parenthesis(p) for p in (out / "tables" / f"{r.parent.name}_headline.md",
                                                                 out / "tables" / f"{r.parent.name}_scratch.md")
                                 if p.is_file()), "") for r in sorted(out.glob("*/results.csv"))}


def _protocol(line: str) -> list[str]:
    """A provenance line's parts less its seeds and precision: what two runs of one protocol share."""
    return [p for p in line.split(" · ") if "seed" not in p and not p.startswith(("fp32", "bf16", "mixed", "unrecorded"))]


def not_comparable(a, b) -> list[str]:
    """What makes two reproductions other than the same protocol under another seed or precision: a
    dataset on one side only, or other data, rows or profile (the provenance lines without their seeds
    and precision). One sentence each; none when only seeds or precision differ (what compare is for)."""
    pa, pb = _provenances(a), _provenances(b)
    said = [f"{d}: only in {a if d in pa else b}" for d in sorted(set(pa) ^ set(pb))]
    for d in sorted(set(pa) & set(pb)):
        if pa[d] and pb[d] and _protocol(pa[d]) != _protocol(pb[d]):
            said.append(f"{d}: other data, rows or profile "
                        f"({' · '.join(_protocol(pa[d]))} vs {' · '.join(_protocol(pb[d]))})")
    return said


def _last_parenthesis(path: Path) -> str:
    """The text inside the parenthesis that closes a table's caption (its provenance), or ''."""
    lines = path.read_text(errors="replace").rstrip().splitlines()
    text = lines[-1] if lines else ""
    if not text.endswith(")"):
        return ""
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            return text[i + 1:-1]
    return ""


def to_markdown(df: pd.DataFrame, labels: Sequence[str], *, caption: str) -> str:
    """The human form: estimate [95% CI] and verdict per side, the chosen setting (once when both
    sides chose the same), and `moved` (yes: the verdicts differ; "one side": only one has one)."""
    la, lb = _labels(labels)

    def interval(r, s: str) -> str:
        m, lo, hi = r[f"{s}_mean"], r[f"{s}_ci_low"], r[f"{s}_ci_high"]
        return "–" if not np.isfinite(m) else f"{m:+.3f}" + (f" [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else "")

    rows = [r for _, r in df.iterrows()]
    one_side = (df[f"{la}_verdict"] == NO_INTERVAL) != (df[f"{lb}_verdict"] == NO_INTERVAL)
    human = pd.DataFrame({
        "dataset": df["dataset"], "table": df["table"], "row": df["row"], "estimate": df["estimate"],
        la: [interval(r, la) for r in rows], f"{la} verdict": df[f"{la}_verdict"],
        lb: [interval(r, lb) for r in rows], f"{lb} verdict": df[f"{lb}_verdict"],
        "setting": [r[f"{la}_setting"] if r[f"{la}_setting"] == r[f"{lb}_setting"]
                    else f"{la}: {r[f'{la}_setting'] or '–'}; {lb}: {r[f'{lb}_setting'] or '–'}" for r in rows],
        "moved": np.where(one_side, "one side", np.where(df["same"], "", "**yes**"))})
    return human.to_markdown(index=False) + f"\n\n{caption}\n"


# What `write` wrote, with each file's SHA-256: only a file listed with the same content is replaced,
# so a user's compare.csv (e.g. `conclusions(...).to_csv`, same header) or figure is never overwritten.
# Hidden: bookkeeping, not a result. An output of a ctrkit from before the list cannot be told from a
# user's file, so it is refused like one (the user removes it or chooses another --out).
MANIFEST = ".compare-manifest.json"
_WRITER = "ctrkit compare"
OUTPUTS = ("compare.csv", "compare.md", "compare.png", "compare.svg")
# compare.md's first line: marks the human form as generated
_MD_SIGNATURE = "<!-- ctrkit compare -->"


def write(df: pd.DataFrame, out_dir, labels: Sequence[str], *, caption: str, figure=None) -> dict[str, Path]:
    """compare.csv (tidy, numeric), compare.md (human form, with `caption`) and, with `figure`
    (stem -> the paths it saved: `plots.compared`), compare.png and .svg in `out_dir`; their paths by
    suffix. An existing output is replaced only when `MANIFEST` lists it as written here and unchanged
    since; every file is staged first and moved in, so a failure leaves the earlier ones whole."""
    out_dir = Path(out_dir).expanduser()
    texts = {"compare.csv": df.to_csv(index=False),
             "compare.md": _MD_SIGNATURE + "\n" + to_markdown(df, labels, caption=caption)}
    names = OUTPUTS if figure is not None else tuple(texts)
    with _named(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    present = _refuse_foreign(out_dir, names, _earlier(out_dir))
    with _staging(out_dir, names[0]) as tmp:
        staged = _stage(tmp, texts, figure, out_dir)
        new = {name: sha256_file(path) for name, path in staged.items()}
        kept = {n: [h] for n, h in present.items() if n not in new}
        # while files move in, the old content and the new are both ours: a kill here refuses nothing
        _write_manifest(out_dir, {**kept, **{n: sorted({new[n], present.get(n, new[n])}) for n in new}})
        for name, path in staged.items():
            with _named(out_dir / name):
                os.replace(path, out_dir / name)
        _write_manifest(out_dir, {**kept, **{n: [h] for n, h in new.items()}})
    return {name.rsplit(".", 1)[1]: out_dir / name for name in staged}


# The staging folder `.compare.tmp-<pid>`: one a killed `write` left (its process gone, nothing
# in it but outputs) is removed by the next; the pid keeps two live writers apart.
_STAGING = "compare"


@contextlib.contextmanager
def _staging(out_dir: Path, first: str):
    """A fresh staging folder in `out_dir`, removed afterwards (success or failure)."""
    for p in outdir.stale(out_dir, _STAGING, kinds=("tmp",)):
        _remove_if_staging(p)
    tmp = out_dir / f".{_STAGING}.tmp-{os.getpid()}"
    _remove_if_staging(tmp)  # this pid's own, from an earlier process that had it
    with _named(out_dir / first):  # the first output is what a read-only folder fails to take
        tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_if_staging(p: Path) -> None:
    """Remove `p` if it is a staging folder (a real folder holding nothing but outputs)."""
    if p.is_dir() and not p.is_symlink() and all(
            c.name in OUTPUTS and c.is_file() and not c.is_symlink() for c in p.iterdir()):
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _named(path: Path):
    """An OS error as one line naming `path` (the output), not the temp file that met it."""
    try:
        yield
    except OSError as e:
        raise CtrkitError(f"{path}: cannot write ({e.strerror or e})") from None


def _earlier(out_dir: Path) -> dict[str, list[str]]:
    """Output name -> the SHA-256s an earlier `write` listed in `out_dir`'s manifest ({} without one)."""
    path = out_dir / MANIFEST
    if not os.path.lexists(path):
        return {}
    try:
        m = json.loads(path.read_text())
        files = m["files"] if isinstance(m, dict) and m.get("written_by") == _WRITER else None
    except (OSError, ValueError, KeyError):
        files = None
    if not isinstance(files, dict) or not all(isinstance(v, list) for v in files.values()):
        raise CtrkitError(f"{path}: exists and is not {_WRITER}'s list of its files; choose another --out")
    return files


def _listed(ours: dict[str, list[str]], out_dir: Path) -> dict[str, str]:
    """Of the outputs the manifest lists, those still in `out_dir` as written: name -> SHA-256."""
    found = {}
    for name in OUTPUTS:
        path = out_dir / name
        if path.is_file() and not path.is_symlink():
            digest = sha256_file(path)
            if digest in ours.get(name, []):
                found[name] = digest
    return found


def _refuse_foreign(out_dir: Path, names: Sequence[str], ours: dict[str, list[str]]) -> dict[str, str]:
    """One line for the first of `names` in `out_dir` that `write` did not write (or that changed
    since): ctrkit replaces only its own files. Else `_listed`: the outputs present and ours."""
    with _named(out_dir):
        listed = _listed(ours, out_dir)
    for name in names:
        path = out_dir / name
        if os.path.lexists(path) and name not in listed:
            raise CtrkitError(f"{path}: exists and is not an earlier comparison's file (or changed since "
                              f"ctrkit wrote it); choose another --out")
    return listed


def _stage(tmp: Path, texts: dict[str, str], figure, out_dir: Path) -> dict[str, Path]:
    """Every output written into the staging folder `tmp`: name -> its staged path."""
    staged = {}
    for name, text in texts.items():
        with _named(out_dir / name):
            (tmp / name).write_text(text)
        staged[name] = tmp / name
    if figure is not None:
        with _named(out_dir / "compare.png"):
            saved = [Path(p) for p in figure(tmp / "compare")]
        staged.update({p.name: p for p in saved})
    return staged


def _write_manifest(out_dir: Path, files: dict[str, list[str]]) -> None:
    with _named(out_dir / MANIFEST):
        write_json_atomic(out_dir / MANIFEST, {"written_by": _WRITER, "files": dict(sorted(files.items()))})
