"""The package layering, checked on the import graph: data -> models -> training -> results ->
notebooks -> cli, nothing importing upward (imports inside functions included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "ctrkit"

# Bottom to top. A module may import its own layer or a lower one; a new module must be placed here.
LAYERS = [
    ("utils", {"ctrkit", "ctrkit.errors", "ctrkit.utils", "ctrkit.cpublas"}),
    ("data", {"ctrkit.data", "ctrkit.synth"}),
    ("models", {"ctrkit.layers", "ctrkit.models", "ctrkit.metrics"}),
    ("training", {"ctrkit.presets", "ctrkit.losses", "ctrkit.protocol", "ctrkit.checkpoint", "ctrkit.train",
                  "ctrkit.mutual", "ctrkit.distributed"}),
    ("results", {"ctrkit.store", "ctrkit.runs", "ctrkit.experiments", "ctrkit.designs", "ctrkit.tables"}),
    ("notebooks", {"ctrkit.plots", "ctrkit.widgets", "ctrkit.reproduce"}),
    ("cli", {"ctrkit.cli"}),
]


def layer_of(module: str) -> int | None:
    """Index of the layer holding `module` (a subpackage's modules belong to its layer)."""
    for i, (_, members) in enumerate(LAYERS):
        if module in members or any(module.startswith(m + ".") for m in members if m != "ctrkit"):
            return i
    return None


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the ctrkit modules it imports}, read from the source (no import is executed)."""
    graph = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "ctrkit":
                    deps |= {f"ctrkit.{a.name}" for a in node.names}
                elif node.module.startswith("ctrkit."):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("ctrkit.")}
        graph[module] = deps - {module}
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, deps in sorted(graph.items()):
        mine = layer_of(module)
        if mine is None:
            out.append(f"{module}: in no layer (add it to LAYERS)")
            continue
        for dep in sorted(deps):
            theirs = layer_of(dep)
            if theirs is None or theirs > mine:
                out.append(f"{module} ({LAYERS[mine][0]}) imports {dep} "
                           f"({LAYERS[theirs][0] if theirs is not None else 'no layer'})")
    return out


def test_nothing_imports_upward():
    graph = import_graph()
    assert {"ctrkit.train", "ctrkit.runs", "ctrkit.data.loading", "ctrkit.cli"} <= set(graph)
    assert violations(graph) == []


@pytest.mark.parametrize("module, dep", [("ctrkit.train", "ctrkit.tables"), ("ctrkit.data.loading", "ctrkit.models"),
                                         ("ctrkit.runs", "ctrkit.plots")])
def test_an_upward_import_is_caught(tmp_path, module, dep):
    """The check reads real files: a copy of the package with one upward import added fails it."""
    import shutil

    copy = tmp_path / "ctrkit"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    parts = module.split(".")[1:]
    target = copy.joinpath(*parts).with_suffix(".py")
    if not target.exists():
        target = copy.joinpath(*parts, "__init__.py")
    target.write_text(target.read_text() + f"\n\ndef _late():\n    import {dep}  # noqa\n")
    found = violations(import_graph(copy))
    assert found == [f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"]


def test_package_docstring_names_the_same_layers():
    doc = (ROOT / "__init__.py").read_text()
    for name, _ in LAYERS:
        assert name in doc
