"""The optional extras: the library layers import without the notebook stack and `datasets`; a
command that needs a missing extra says which one to install, in one line; and the short README
points only at docs pages that exist."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ctrkit.core import extras
from ctrkit.core.errors import CtrkitError

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = ("papermill", "ipywidgets", "jupyterlab", "datasets", "seaborn")
LIBRARY = ("ctrkit.data", "ctrkit.models", "ctrkit.training.loop", "ctrkit.experiments.runs",
           "ctrkit.analysis.tables")

@pytest.fixture
def run_blocked(tmp_path, without_modules):
    """run(blocked, args) -> `python *args` in tmp_path with those packages unimportable."""
    def run(blocked, args, timeout=300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                              env=without_modules(blocked), cwd=tmp_path)
    return run


def test_library_layers_import_without_the_optional_stack(run_blocked):
    code = textwrap.dedent(f"""
        import sys, sitecustomize
        for m in {LIBRARY!r}:
            __import__(m)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {OPTIONAL!r})
        print("attempted:", sorted(set(a.split(".")[0] for a in sitecustomize.ATTEMPTS)))
        print("loaded:", loaded)
    """)
    r = run_blocked(OPTIONAL, ["-c", code])
    assert r.returncode == 0, r.stderr[-3000:]
    # not only importable without them: the layers do not even try to import them
    assert "attempted: []" in r.stdout and "loaded: []" in r.stdout, r.stdout


def test_library_layers_do_not_load_the_optional_stack_when_it_is_installed():
    code = (f"import sys\nfor m in {LIBRARY!r}: __import__(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {OPTIONAL!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_reproduce_without_papermill_names_the_notebooks_extra(run_blocked, tmp_path):
    r = run_blocked(["papermill"], ["-m", "ctrkit.cli", "reproduce", "--profile", "smoke",
                                    "--dataset", "criteo", "--out", str(tmp_path / "out")])
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("ctrkit: error: ") and "papermill" in lines[0]
    assert "'notebooks' extra" in lines[0] and "pip install 'ctrkit[notebooks]'" in lines[0]
    assert not (tmp_path / "out").exists()  # stopped before doing anything


def test_hub_input_without_datasets_names_the_hub_extra(run_blocked, tmp_path):
    r = run_blocked(["datasets"], ["-m", "ctrkit.cli", "prepare", "criteo", "--raw", "hf://reczoo/Criteo_x4",
                                   "--out", str(tmp_path / "out")])
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "hf://reczoo/Criteo_x4" in lines[0] and "'hub' extra" in lines[0] and "ctrkit[hub]" in lines[0]


def test_a_missing_base_dependency_is_one_line_naming_it(run_blocked, tmp_path, criteo_small):
    """ctrkit run from a tree on a machine without pyarrow (a bare GPU machine): the data commands say
    what is missing in one line; training from a prepared dataset does not need it."""
    r = run_blocked(["pyarrow"], ["-m", "ctrkit.cli", "synth", "criteo", "--rows", "100", "--out", str(tmp_path / "raw")])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("ctrkit: error: ") and "'pyarrow'" in line and "pip install" in line
    r = run_blocked(["pyarrow"], ["-m", "ctrkit.cli", "pretrain", "--data", str(criteo_small.path), "--model", "DeepFM",
                                  "--preset", "smoke", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "ck")])
    assert r.returncode == 0 and (tmp_path / "ck" / "best.pt").is_file(), r.stderr[-2000:]


def test_plots_and_widgets_without_their_modules_name_the_notebooks_extra(run_blocked):
    code = textwrap.dedent("""
        from ctrkit.core.errors import CtrkitError
        for m in ("ctrkit.analysis.plots", "ctrkit.notebook.widgets"):
            try:
                __import__(m)
            except CtrkitError as e:
                print(m, "->", e)
    """)
    r = run_blocked(["seaborn", "ipywidgets"], ["-c", code])
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.strip().splitlines()
    assert len(out) == 2 and all("'notebooks' extra" in line for line in out), r.stdout
    assert "seaborn" in out[0] and "ctrkit.notebook" in out[1]


def test_require_and_check():
    assert extras.require("notebooks", "seaborn").__name__ == "seaborn"
    assert extras.missing("json", "ctrkit_no_such_module") == ["ctrkit_no_such_module"]
    with pytest.raises(CtrkitError, match=r"^thing needs the 'hub' extra \(ctrkit_no_such_module is not installed\): "
                                          r"pip install 'ctrkit\[hub\]'$"):
        extras.require("hub", "ctrkit_no_such_module", what="thing")
    with pytest.raises(CtrkitError, match="'notebooks' extra"):
        extras.check("notebooks", "json", "ctrkit_no_such_module")
    extras.check("notebooks", "json")  # present: no error
    with pytest.raises(ValueError, match="unknown extra"):
        extras.require("gpu", "json")


def test_every_extra_named_in_code_is_declared_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    for extra in extras.EXTRAS:
        assert re.search(rf"^{extra} = \[", text, re.M), extra
    deps = text.split("[project.optional-dependencies]")[0]
    for module in OPTIONAL:  # none of them is a base dependency
        assert f'"{module}' not in deps, module


def test_readme_is_short_and_its_docs_links_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\((docs/[^)#\s]+)", readme)
    assert len(links) >= 8, links  # it points at the docs instead of holding them
    for link in links:
        assert (ROOT / link).is_file(), f"README links to missing {link}"
    nav = (ROOT / "mkdocs.yml").read_text()
    for link in links:  # and every linked page is in the site's navigation
        assert link.removeprefix("docs/") in nav, link
