"""Notebooks and `ctrkit reproduce`: the committed notebooks are thin and output-free, the runner names
the failing notebook and cell, skips finished work, and the smoke profile runs every notebook."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ctrkit.analysis import compare
from ctrkit.notebook import profiles, reproduce, runner
from ctrkit.core.utils import CtrkitError

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", profiles.NOTEBOOKS)
def test_notebook_is_thin_parameterised_and_without_outputs(name):
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    params = [c for c in _code_cells(nb) if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{name}: exactly one cell tagged `parameters`"
    # The parameters cell holds plain literals only (papermill overrides them by name).
    names = set()
    for node in ast.parse(params[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        ast.literal_eval(node.value)
        names.add(node.targets[0].id)
    assert {"dataset", "data_dir", "profile", "device", "out"} <= names
    for cell in _code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: committed with outputs"
        tree = ast.parse(cell.source)
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        assert not defs, f"{name}: notebooks hold no def/class, found {[d.name for d in defs]}"
    assert len(_code_cells(nb)) <= 12


@pytest.mark.parametrize("name", profiles.NOTEBOOKS)
def test_papermill_sees_every_parameter(name):
    # papermill's own parser skips a line it cannot read (e.g. a second "=" in the comment) and then
    # warns "Passed unknown parameter" on every run that sets it
    import papermill

    cell = next(c for c in _code_cells(nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4))
                if "parameters" in c.metadata.get("tags", []))
    names = [n.targets[0].id for n in ast.parse(cell.source).body]
    assert list(papermill.inspect_notebook(str(NB_DIR / f"{name}.ipynb"))) == names


def test_committed_notebooks_match_their_generator():
    sys.path.insert(0, str(NB_DIR))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(NB_DIR))
    assert set(make_notebooks.NOTEBOOKS) == set(profiles.NOTEBOOKS)
    for name in make_notebooks.NOTEBOOKS:
        committed = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
        fresh = make_notebooks.build(name)
        assert [c.source for c in committed.cells] == [c.source for c in fresh.cells], \
            f"{name}.ipynb is stale: run `python notebooks/make_notebooks.py`"


def test_plan_and_bad_arguments(tmp_path):
    jobs = runner.plan(dataset="both", profile="smoke", out=str(tmp_path))
    k = len(profiles.PER_DATASET)
    assert [j.name for j in jobs[:k]] == [f"criteo_{n}" for n in profiles.PER_DATASET]
    assert [j.name for j in jobs[k:2 * k]] == [f"avazu_{n}" for n in profiles.PER_DATASET]
    assert [j.name for j in jobs[2 * k:]] == list(profiles.ONCE)
    assert jobs[k + 1].parameters == {"dataset": "avazu", "data_dir": None, "profile": "smoke", "device": "auto",
                                  "out": str(tmp_path.resolve())}
    with pytest.raises(CtrkitError, match="--data DIR is required"):
        runner.plan(profile="full")
    with pytest.raises(CtrkitError, match="unknown profile 'fast'; valid: smoke, quick, paper, study, full"):
        runner.plan(profile="fast")
    (tmp_path / "raw" / "criteo").mkdir(parents=True)
    with pytest.raises(CtrkitError, match="needs DIR/criteo and DIR/avazu"):
        runner.plan(profile="full", dataset="both", data=str(tmp_path / "raw"))
    assert runner.plan(profile="full", dataset="criteo", data=str(tmp_path))[0].parameters["data_dir"] == str(tmp_path)
    with pytest.raises(CtrkitError, match="parameter seeds"):
        reproduce.settings(dataset="criteo", profile="smoke", seeds=[])
    with pytest.raises(CtrkitError, match="valid: criteo, avazu"):
        reproduce.settings(dataset="nosuch")


def test_runner_skips_finished_notebooks_and_names_the_failing_cell(tmp_path, capfd):
    out = tmp_path / "out"
    logs = []
    res = runner.run(runner.Reproduction(dataset="criteo", profile="smoke", out=str(out), only=["05_architectures"],
                                         figures=str(tmp_path / "figs")), progress=False, log=logs.append)
    assert res["ran"] == ["05_architectures"]
    assert (out / ".done" / "05_architectures.json").exists()
    assert (out / "figures" / "fig2_mutual_learning.svg").exists()
    assert (tmp_path / "figs" / "fig1_knowledge_distillation.png").exists()
    index = (out / "index.md").read_text()
    assert "figures/fig2_mutual_learning.png" in index and "notebooks/05_architectures.ipynb" in index
    assert "<img src='figures/fig1_knowledge_distillation.png'" in (out / "index.html").read_text()
    executed = nbformat.read(out / "notebooks" / "05_architectures.ipynb", as_version=4)
    assert sum("image/png" in o.get("data", {}) for c in _code_cells(executed) for o in c.outputs) == 2

    again = runner.run(runner.Reproduction(dataset="criteo", profile="smoke", out=str(out), only=["05_architectures"]),
                       progress=False, log=logs.append)
    assert again["ran"] == [] and again["skipped"] == ["05_architectures"]

    # A notebook that fails: the error names the notebook, the cell and the exception; the finished
    # notebook's marker stays, the failed one gets none and is kept for inspection.
    bad_dir = tmp_path / "nbs"
    bad_dir.mkdir()
    nb = nbformat.read(NB_DIR / "00_data.ipynb", as_version=4)
    boom = nbformat.v4.new_code_cell("raise ValueError('boom: no such column')")
    noise = nbformat.v4.new_code_cell("import os\nos.write(2, b'kernel-side noise\\n')")  # as ipykernel's own
    nb.cells[4:4] = [noise, boom]
    nbformat.write(nb, bad_dir / "00_data.ipynb")
    capfd.readouterr()
    with pytest.raises(CtrkitError, match=r"notebook 00_data \(criteo\) failed in cell 6 "
                       r"\[raise ValueError\('boom: no such column'\)\]: ValueError: boom: no such column") as e:
        runner.run(runner.Reproduction(dataset="criteo", profile="smoke", out=str(out), only=["00_data"]),
                   progress=False, log=logs.append, notebooks_dir=bad_dir)
    # what the kernel process printed went to its log, named by the error, not to the runner's output
    kernel_log = out / "notebooks" / "criteo" / "00_data.kernel.log"
    assert str(kernel_log) in str(e.value) and "kernel-side noise" in kernel_log.read_text()
    assert "kernel-side noise" not in "".join(capfd.readouterr())
    assert not (out / ".done" / "criteo_00_data.json").exists()
    assert (out / "notebooks" / "criteo" / "00_data.failed.ipynb").exists()
    assert (out / ".done" / "05_architectures.json").exists()


def test_cli_reproduce_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ctrkit.cli", "reproduce", "--profile", "full", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["ctrkit: error: --profile full is the BARS protocol on real data: "
                                             "--data DIR is required (a processed dataset dir or raw files; "
                                             "with --dataset both, DIR/criteo and DIR/avazu)"]


PAPER_TABLES = ["baselines", "scratch", "sweep", "finetune", "headline", "controls", "partners", "partner_slopes",
                "peer_count"]
TABLES = ["data_splits", "data_vocab", "data_frequency", *PAPER_TABLES, "fig_gains", "fig_sweep", "fig_partners",
          "fig_partner_points", "fig_partner_slopes", "fig_peer_count", "variants", "variants_pairs", "fig_variants"]
FIGURES = ["data_ctr", "data_frequency", "sweep_gain", "paired_gains", "partner_matrix", "partner_slopes", "peer_count",
           "variants"]


@pytest.mark.slow
def test_reproduce_smoke_runs_every_notebook(tmp_path):
    """CI: `ctrkit reproduce --profile smoke --dataset both` executes all notebooks without error and
    writes every table, figure and the index; a second call finds everything done."""
    out, figs = tmp_path / "out", tmp_path / "figs"
    cmd = [sys.executable, "-m", "ctrkit.cli", "reproduce", "--profile", "smoke", "--dataset", "both",
           "--out", str(out), "--figures", str(figs), "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"index:     {out / 'index.md'}" in r.stdout
    for ds in ("criteo", "avazu"):
        for t in TABLES:
            assert (out / "tables" / f"{ds}_{t}.csv").stat().st_size > 0, (ds, t)
        for t in PAPER_TABLES:  # md + tex beside the CSV; the md copied beside the figures
            assert (out / "tables" / f"{ds}_{t}.tex").stat().st_size > 0, (ds, t)
            assert (figs / "tables" / f"{ds}_{t}.md").read_text() == (out / "tables" / f"{ds}_{t}.md").read_text()
        for f in FIGURES:
            for ext in ("png", "svg"):
                assert (out / "figures" / f"{ds}_{f}.{ext}").stat().st_size > 0, (ds, f, ext)
                assert (figs / f"{ds}_{f}.{ext}").exists()
        for nb in profiles.PER_DATASET:
            executed = nbformat.read(out / "notebooks" / ds / f"{nb}.ipynb", as_version=4)
            errors = [o for c in _code_cells(executed) for o in c.outputs if o.get("output_type") == "error"]
            assert not errors, (ds, nb, errors)
            shown = [o for c in _code_cells(executed) for o in c.outputs if "data" in o]
            # a table cell shows the Markdown written beside the CSV, caption included; `cfg`, its settings
            assert all("PosixPath" not in str(o["data"]["text/plain"]) for o in shown if set(o["data"]) == {"text/plain"}), \
                (ds, nb)  # (a rich output's text/plain twin is what a plain-text reader sees instead)
            assert any("| setting | value |" in o["data"].get("text/markdown", "") for o in shown), (ds, nb)
        headline = nbformat.read(out / "notebooks" / ds / "02_scratch_vs_finetune.ipynb", as_version=4)
        assert any(o.get("data", {}).get("text/markdown") == (out / "tables" / f"{ds}_headline.md").read_text()
                   for c in _code_cells(headline) for o in c.outputs)
        # the tables hold real numbers from the runs: 4 models x 2 seeds pretrained, every pair finetuned
        base = reproduce.read_table(out / "tables" / f"{ds}_baselines")
        assert set(base["model"]) == {"DeepFM", "DCN", "PNN", "FiBiNET"}  # FM is not in the paper's pool
        assert ((base["test_auc_mean"] > 0.3) & (base["test_auc_mean"] < 1.0)).all()
        points = reproduce.read_table(out / "tables" / f"{ds}_fig_partner_points")
        assert len(points) == 6 * 2 * 2  # 6 pairs, both members, 2 seeds
        fin = reproduce.read_table(out / "tables" / f"{ds}_finetune")
        assert len(fin) == 4 and (fin["n_pairs"] == 2).all() and fin["auc_diff_ci_low"].notna().all()
        sweep = reproduce.read_table(out / "tables" / f"{ds}_sweep")
        assert sweep.groupby("weight")["chosen"].first().sum() == 1  # one setting chosen on validation
        # every written table states its data: the data tables too
        shaped = f"synthetic {ds.capitalize()}-shaped data"
        assert all(shaped in (out / "tables" / f"{ds}_{t}.md").read_text() for t in ("data_splits", "data_vocab"))
        peer = reproduce.read_table(out / "tables" / f"{ds}_fig_peer_count")
        assert sorted(peer["n_peers"].unique()) == [1, 2, 3, 4] and set(peer[peer["n_peers"] == 3]["n_subsets"]) == {3}
    for f in ("fig1_knowledge_distillation", "fig2_mutual_learning"):
        assert (out / "figures" / f"{f}.png").exists() and (out / "figures" / f"{f}.svg").exists()
    assert (out / "notebooks" / "06_explore.ipynb").exists()
    # 07: every relative of mutual learning against alone, on both datasets, and the summary across them
    var = reproduce.read_table(out / "tables" / "criteo_variants")
    assert {"mutual (MSE)", "mutual (KL)", "ensemble teacher", "EKTF", "KD from the best", "shared table"} <= \
        set(var["variant"]) and set(var["init"]) == {"finetune", "from scratch"}
    assert var["peers_abs_t"].notna().all() and (var["n_pairs"] == 2).all()
    summary = reproduce.read_table(out / "tables" / "variants_summary")
    assert (summary["n_datasets"] == 2).all() and summary["p_improve"].between(0, 1).all()
    assert "Pooled over 2 datasets (avazu, criteo)" in (out / "tables" / "variants_summary.md").read_text()
    index = (out / "index.md").read_text()
    for link in ("tables/criteo_finetune.csv", "tables/avazu_partners.md", "figures/avazu_peer_count.png",
                 "notebooks/criteo/02_scratch_vs_finetune.ipynb"):
        assert link in index
    assert (out / "index.html").exists()
    # `ctrkit compare` reads every claim table the reproduction wrote (its columns are the tables' own)
    claims = compare.conclusions(out, out)
    assert set(claims["table"]) == set(compare.CLAIMS) and claims["same"].all()
    assert (claims["a_verdict"] != "no interval").sum() >= 2 * 4 * 2  # headline and scratch of both datasets at least

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"ran 0 notebook(s), skipped {2 * len(profiles.PER_DATASET) + len(profiles.ONCE)} already done" in again.stdout


@pytest.mark.parametrize("name", profiles.NOTEBOOKS)
def test_a_cell_shows_what_ctrkit_wrote_not_what_it_holds_in_memory(name):
    """Table and figure cells only read what ctrkit wrote: a cell's shown value is a name (settings, a
    table read back, the widget), a call of `reproduce`, `plots` or the widget, or a print, never a
    run's in-memory result (a frame returned by training, a list of the grid)."""
    for cell in _code_cells(nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)):
        body = ast.parse(cell.source).body
        shown = body[-1].value if body and isinstance(body[-1], ast.Expr) else None
        if shown is None or isinstance(shown, ast.Name):
            continue
        root = shown.func if isinstance(shown, ast.Call) else shown
        while isinstance(root, (ast.Attribute, ast.Call, ast.Subscript)):
            root = root.func if isinstance(root, ast.Call) else root.value
        assert isinstance(shown, ast.Call) and getattr(root, "id", None) in ("reproduce", "plots", "selector", "print"), \
            f"{name}: a cell shows {ast.unparse(shown)[:80]}"


def test_the_headline_tables_the_docs_quote_are_the_committed_ones():
    """README.md, docs/index.md and docs/results.md quote the quick headline tables: each quoted table
    is, line for line, one that `make reproduce` committed in figures/tables (a regeneration that
    changes a digit must change the docs too)."""
    root = NB_DIR.parent

    def blocks(text: str) -> list[list[str]]:
        out, cur = [], []
        for line in text.splitlines() + [""]:
            if line.startswith("|"):
                cur.append(line)
            elif cur:
                out.append(cur)
                cur = []
        return out

    committed = [blocks((root / "figures" / "tables" / f"{ds}_headline.md").read_text())[0] for ds in profiles.DATASETS]
    for doc in ("README.md", "docs/index.md", "docs/results.md"):
        quoted = [b for b in blocks((root / doc).read_text()) if b[0].split("|")[1:3] == committed[0][0].split("|")[1:3]]
        assert len(quoted) == 2, doc
        assert quoted == committed, f"{doc}: its headline tables differ from figures/tables/*_headline.md"
