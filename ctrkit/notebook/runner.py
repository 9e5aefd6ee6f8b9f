"""`ctrkit reproduce`: run the notebooks in order with papermill, collect tables and figures, index them.

A notebook already run with the same parameters, profile sizes and notebook file (its `.done` marker
holds their hash) is skipped; a failing one stops the run with one line naming the notebook and cell.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ctrkit.core.utils import CtrkitError, atomic_path, write_json_atomic
from ctrkit.notebook import profiles
from ctrkit.notebook.profiles import (DATASETS, NOTEBOOK_DIR, NOTEBOOKS, ONCE, PER_DATASET, PROFILES,
                                      SCHEMA_SUFFIXES, SMALL_DATASETS)


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
    profiles.profile(profile)
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


@dataclass(frozen=True, kw_only=True)
class Reproduction:
    """What `ctrkit reproduce` is asked for: the notebooks' parameters and what to do with the results."""

    dataset: str = "both"
    profile: str = "quick"
    data: str | None = None
    out: str = "results"
    device: str = "auto"
    figures: str | None = None  # also copy the figures (and the Markdown tables) here
    force: bool = False  # re-run the notebooks already done with the same parameters
    only: Sequence[str] | None = None  # run only these notebooks of the plan


def run(request: Reproduction, *, progress: bool = True, notebooks_dir: str | Path | None = None,
        log=print) -> dict:
    """Run the notebooks of `plan()` with papermill; skip those already done with the same parameters.

    A failing notebook raises CtrkitError naming the notebook, the cell and the error; the partly
    executed notebook is kept as <name>.failed.ipynb and finished notebooks stay done.
    Returns {"out", "index", "tables", "figures", "notebooks", "ran", "skipped", "seconds"}.
    """
    from ctrkit.core.utils import resolve_device

    resolve_device(request.device)  # fail early on --device cuda without CUDA
    nb_dir = Path(notebooks_dir) if notebooks_dir else NOTEBOOK_DIR
    jobs = _jobs(request)
    out_dir = Path(request.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = PROFILES[request.profile]
    ran, skipped, t0 = [], [], time.perf_counter()
    for i, job in enumerate(jobs, 1):
        src = _notebook_path(job.notebook, nb_dir)
        # The profile's sizes are part of the hash: editing PROFILES re-runs the notebooks it changes.
        digest = _sha({"parameters": job.parameters, "profile": sizes,
                       "notebook": hashlib.sha256(src.read_bytes()).hexdigest()})
        marker = out_dir / ".done" / f"{job.name}.json"
        step = f"[{i}/{len(jobs)}] {job.name}"
        if not request.force and _done_before(marker, job.executed(out_dir), digest):
            log(f"{step}: done before with the same parameters, skipped")
            skipped.append(job.name)
            continue
        log(f"{step} ...")
        marker.unlink(missing_ok=True)
        start = time.perf_counter()
        dest = _execute(job, src, out_dir, timeout=sizes["execution_timeout"], progress=progress)
        seconds = time.perf_counter() - start
        write_json_atomic(marker, {"hash": digest, "parameters": job.parameters, "seconds": round(seconds, 1),
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        log(f"{step}: {seconds:.0f} s -> {dest}")
        ran.append(job.name)
    result = write_index(out_dir, profile=request.profile)
    if request.figures:
        result["copied_figures"] = copy_figures(out_dir / "figures", request.figures, tables_src=out_dir / "tables")
    result.update(ran=ran, skipped=skipped, seconds=round(time.perf_counter() - t0, 1))
    return result


def _jobs(request: Reproduction) -> list[Job]:
    """The plan's jobs, only the notebooks named in `request.only` when given."""
    jobs = plan(dataset=request.dataset, profile=request.profile, data=request.data, out=request.out,
                device=request.device)
    if request.only:
        unknown = sorted(set(request.only) - set(NOTEBOOKS))
        if unknown:
            raise CtrkitError(f"unknown notebook(s) {unknown}; valid: {', '.join(NOTEBOOKS)}")
        jobs = [j for j in jobs if j.notebook in request.only]
    return jobs


def _done_before(marker: Path, dest: Path, digest: str) -> bool:
    """The job's executed notebook is there and its .done marker holds the same hash."""
    if not (marker.exists() and dest.exists()):
        return False
    try:
        return json.loads(marker.read_text()).get("hash") == digest
    except (OSError, json.JSONDecodeError):
        return False


def _execute(job: Job, src: Path, out_dir: Path, *, timeout: int | None, progress: bool) -> Path:
    """Execute one notebook with papermill into its place under OUT (via a hidden partial file, so a
    notebook is there only when it finished); a failure keeps <name>.failed.ipynb and raises CtrkitError."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    dest = job.executed(out_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.stem}.partial.ipynb")
    failed = dest.with_name(f"{dest.stem}.failed.ipynb")
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
    return dest


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


def _data_statement(out: Path, dataset: str) -> str:
    """One sentence on one dataset as loaded: its name, synthetic or real, rows per split and CTR."""
    kind = "synthetic (ctrkit's hidden click model)" if (out / "data" / dataset / "raw" / "synth.json").exists() \
        else "real"
    try:
        s = pd.read_csv(out / "tables" / f"{dataset}_data_splits.csv")
        rows = " / ".join(f"{r.split} {int(r.rows):,}" for r in s.itertuples())
        ctr = " / ".join(f"{r.ctr:.3f}" for r in s.itertuples())
        return f"{dataset}: {kind} data, {int(s['rows'].sum()):,} rows as loaded ({rows}), CTR {ctr}."
    except (OSError, KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return f"{dataset}: {kind} data (no data table: 00_data did not run)."


def _lead(out: Path) -> tuple[list[str], list[str]]:
    """What index.md/index.html open with: the data statement and the headline table of each dataset
    (mutual - alone at the setting chosen on validation), before the lists of everything else."""
    from ctrkit.analysis import render

    md, h = ["## Headline", ""], ["<h2>Headline</h2>"]
    for csv in sorted((out / "tables").glob("*_headline.csv")):
        dataset = csv.name[: -len("_headline.csv")]
        statement = _data_statement(out, dataset)
        md += [statement, ""]
        h.append(f"<p>{html.escape(statement)}</p>")
        mdp = csv.with_suffix(".md")
        if mdp.exists():
            md += [mdp.read_text().strip(), ""]
        try:
            df = pd.read_csv(csv)
            shown, line = render.constant_settings(render.display("headline", df)) if len(df) else (df, "")
            h.append(shown.to_html(index=False, border=0) if len(df) else "")
            h.append(f"<p>{html.escape(f'Settings: {line}. ' if line else '')}{html.escape(render.CAPTIONS['headline'])}</p>")
        except (pd.errors.ParserError, pd.errors.EmptyDataError):
            pass
    return (md, h) if len(md) > 2 else ([], [])


def write_index(out: str | Path, *, profile: str | None = None) -> dict:
    """OUT/index.md and OUT/index.html linking the executed notebooks, tables and figures."""
    out = Path(out)
    notebooks = sorted(p for p in (out / "notebooks").rglob("*.ipynb") if not p.name.startswith("."))
    tables = sorted((out / "tables").glob("*.csv"))
    figures = sorted((out / "figures").glob("*.png"))
    rel = lambda p: p.relative_to(out).as_posix()  # noqa: E731
    md = [f"# ctrkit reproduction{f' (profile {profile})' if profile else ''}", "",
          f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    lead_md, lead_html = _lead(out)
    md += lead_md + ["## Notebooks", ""]
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
         f"<h1>ctrkit reproduction{html.escape(f' (profile {profile})' if profile else '')}</h1>", *lead_html,
         "<h2>Notebooks</h2><ul>"]
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
