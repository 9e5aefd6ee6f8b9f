"""The package layering, read from the folders: one subpackage per layer, bottom to top
core -> data -> models -> kernels -> training -> experiments -> analysis -> notebook -> cli; nothing
imports upward and nothing imports in a circle (imports inside functions included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "ctrkit"

# Bottom to top: each is a folder of ctrkit (cli: the module ctrkit/cli.py). The package's own
# __init__ sits at the bottom (it imports only ctrkit.core.errors).
LAYERS = ["core", "data", "models", "kernels", "training", "experiments", "analysis", "notebook", "cli"]


def layer_of(module: str) -> int | None:
    """Index of the layer holding `module` (ctrkit.<layer>[.<rest>]); the bare package is layer 0."""
    parts = module.split(".")
    if parts == ["ctrkit"]:
        return 0
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the ctrkit modules it imports}, read from the source (no import is executed).
    `from ctrkit.x import y` counts as importing `ctrkit.x.y` when that is a module, else `ctrkit.x`."""
    modules = {module_name(p, root) for p in root.rglob("*.py")}
    graph = {}
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                    (node.module == "ctrkit" or node.module.startswith("ctrkit.")):
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules
                deps |= subs or {node.module}
                if len(subs) < len(node.names):
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
            out.append(f"{module}: in no layer (a folder of LAYERS)")
            continue
        for dep in sorted(deps):
            theirs = layer_of(dep)
            if theirs is None or theirs > mine:
                out.append(f"{module} ({LAYERS[mine]}) imports {dep} "
                           f"({LAYERS[theirs] if theirs is not None else 'no layer'})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), plus self-loops: the import
    cycles. A package's __init__ importing its own modules is not a cycle unless they import it back."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_nothing_imports_upward():
    graph = import_graph()
    assert {"ctrkit.training.loop", "ctrkit.experiments.runs", "ctrkit.data.loading", "ctrkit.cli"} <= set(graph)
    assert violations(graph) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_every_layer_is_a_folder_with_a_docstring():
    import ast as _ast
    for name in LAYERS[:-1]:
        init = ROOT / name / "__init__.py"
        assert init.is_file(), name
        doc = _ast.get_docstring(_ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 12, f"{name}/__init__.py: say what the layer owns"
    assert (ROOT / "cli.py").is_file()
    assert sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS[:-1])


@pytest.mark.parametrize("module, dep", [("ctrkit.training.loop", "ctrkit.analysis.tables"),
                                         ("ctrkit.data.loading", "ctrkit.models"),
                                         ("ctrkit.experiments.runs", "ctrkit.analysis.plots")])
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
    assert found == [f"{module} ({LAYERS[layer_of(module)]}) imports {dep} ({LAYERS[layer_of(dep)]})"]


def test_a_cycle_inside_a_layer_is_caught(tmp_path):
    """Two modules of one layer importing each other (inside a function) is a cycle."""
    import shutil

    copy = tmp_path / "ctrkit"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "data" / "keys.py"
    target.write_text(target.read_text() + "\n\ndef _late():\n    from ctrkit.data import ingest  # noqa\n")
    assert ["ctrkit.data.ingest", "ctrkit.data.keys"] in [sorted(set(c) & {"ctrkit.data.ingest", "ctrkit.data.keys"})
                                                          for c in cycles(import_graph(copy))]


def test_package_docstring_names_the_layers():
    doc = (ROOT / "__init__.py").read_text()
    assert " -> ".join(LAYERS) in doc
