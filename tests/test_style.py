"""The size rule of ctrkit/, read from the source with `ast`: short functions, few parameters, one job per module.

Every function (methods and nested functions too) is at most 60 lines and takes at most 8 parameters
(self/cls not counted; *args and **kwargs count one each). The only exceptions are the plot helpers
below, whose many parameters are column keyword arguments (which column is x, hue, the interval...).
Every module has a docstring that opens with one sentence saying its job.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ctrkit"
MAX_LINES = 60
MAX_PARAMS = 8
# Allowed over the parameter limit: plot helpers taking the frame's column names as keyword arguments (x=, y=, hue=, low=, high=...).
ALLOWED_MANY_PARAMS = {
    "ctrkit.analysis.plots._dodge",
    "ctrkit.analysis.plots.paired_gains",
    "ctrkit.analysis.plots.partner_heatmap",
    "ctrkit.analysis.plots.split_ctr",
    # A model's constructor: its keyword arguments ARE the model's hyperparameters (FuxiCTR's names),
    # read from the signature by models.hparam_defaults and stored in every checkpoint; FiBiNET has 8.
    "ctrkit.models.fibinet.FiBiNET.__init__",
    # The notebooks' first call: one keyword per papermill parameter of their parameters cell.
    "ctrkit.notebook.reproduce.settings",
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _functions(path: Path):
    """(qualified name, node) of every function in the module, methods and nested functions included."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}.{child.name}", child
                yield from walk(child, f"{prefix}.{child.name}")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}.{child.name}")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(path.read_text(), filename=str(path)), _name(path))


def _params(fn) -> list[str]:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def _lines(fn) -> int:
    return fn.end_lineno - fn.lineno + 1


def _summary_is_a_sentence(doc: str | None) -> bool:
    """The summary (the first paragraph; wrapped over lines when long) opens with one sentence: it starts
    like a sentence (a capital, a quote or backtick, or the lower-case name `ctrkit`) and a period ends
    its first sentence inside that paragraph."""
    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    if not para or (para[0].islower() and not para.startswith("ctrkit")):
        return False
    return re.search(r"\.(\s|$)", para) is not None


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_functions_are_short_with_few_parameters(path):
    long = [f"{q} ({_lines(f)} lines)" for q, f in _functions(path) if _lines(f) > MAX_LINES]
    many = [f"{q} ({len(_params(f))} parameters)" for q, f in _functions(path)
            if len(_params(f)) > MAX_PARAMS and q not in ALLOWED_MANY_PARAMS]
    assert not long and not many, f"over {MAX_LINES} lines: {long}; over {MAX_PARAMS} parameters: {many}"


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_module_docstring_says_its_job_in_a_sentence(path):
    doc = ast.get_docstring(ast.parse(path.read_text(), filename=str(path)))
    assert _summary_is_a_sentence(doc), f"{_name(path)}: first docstring line {(doc or '').splitlines()[:1]}"


def test_the_allow_list_names_real_functions_over_the_limit():
    # An entry that no longer exists or has come under the limit is dropped, so the list stays short and true.
    found = {q: f for p in _modules() for q, f in _functions(p)}
    assert all(q in found and len(_params(found[q])) > MAX_PARAMS for q in ALLOWED_MANY_PARAMS)


def test_the_rules_catch_what_they_forbid():
    # The checks themselves: a 61-line function, 9 parameters, and a docstring that is not a sentence.
    fn = ast.parse("def f(a, b, c, d, e, f, g, h, i):\n" + "    x = 1\n" * 60).body[0]
    assert _lines(fn) == 61 and len(_params(fn)) == 9
    meth = ast.parse("class C:\n    def m(self, *args, k=1, **kw):\n        pass\n").body[0].body[0]
    assert _params(meth) == ["k", "args", "kw"]
    assert _summary_is_a_sentence("Does one thing.\n\nMore.")
    assert _summary_is_a_sentence("Wraps onto\nthe next line.") and _summary_is_a_sentence("The loop. More here")
    assert not _summary_is_a_sentence("does one thing.") and not _summary_is_a_sentence("No period\n\nLater.")
    assert not _summary_is_a_sentence(None)
