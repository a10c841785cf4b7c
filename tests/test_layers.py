"""The package's layers, read from its source with ``ast``: no module of ``nas`` imports
another that (through any chain) imports it back, at module level or inside a function; no
module imports another's private name; no function is longer than a screen (80 lines)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nas"
LONGEST = 80


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def imported(tree: ast.Module, names: set[str]) -> dict[str, list[str]]:
    """{module of nas: [names taken from it]} for every import in ``tree``, at any depth;
    ``from . import x`` counts as importing module ``x`` when there is one, else the package."""
    out: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.setdefault(node.module.split(".")[0], []).extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            for alias in node.names:
                target = alias.name if alias.name in names else "__init__"
                out.setdefault(target, []).append(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "nas":
            parts = node.module.split(".")
            out.setdefault(parts[1] if len(parts) > 1 else "__init__", []).extend(
                a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "nas":
                    out.setdefault(parts[1] if len(parts) > 1 else "__init__", [])
    return out


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path (first module repeated at its end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    tree = {"a": ast.parse("from .b import f\n"),
            "b": ast.parse("def f():\n    from .c import g\n"),
            "c": ast.parse("import nas.a\n"), "d": ast.parse("from . import a\n")}
    graph = {name: set(imported(t, set(tree))) for name, t in tree.items()}
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycle(graph) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_of_nas_imports_itself_back():
    trees = modules()
    graph = {name: {m for m in imported(tree, set(trees)) if m in trees and m != "__init__"}
             for name, tree in trees.items()}
    assert {"search", "fewshot", "steps", "train", "profiling"} <= graph.keys()
    assert "steps" in graph["fewshot"] and "steps" in graph["search"]  # the layer below both
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_no_module_imports_a_private_name_of_another():
    trees = modules()
    private = [f"nas/{name}.py imports {source}.{taken}"
               for name, tree in trees.items()
               for source, names in imported(tree, set(trees)).items()
               for taken in names if taken.startswith("_") and not taken.startswith("__")]
    assert private == []


@pytest.mark.parametrize("name", sorted(p.stem for p in PACKAGE.glob("*.py")))
def test_every_function_fits_in_a_screen(name):
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, from line {node.lineno})"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST]
    assert long == []
