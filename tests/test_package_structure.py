"""The experiments package keeps the clarity of the core: no module imports another that imports it
back (directly or through others), counting the imports made inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import deepinv_deq.experiments as experiments


def _graph() -> dict[str, set[str]]:
    folder = Path(experiments.__file__).parent
    names = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    graph = {}
    for name in names:
        tree = ast.parse((folder / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:  # from . import a, b
                    found |= {a.name for a in node.names}
        graph[name] = found & names
    return graph


def _cycle(graph):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path + [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_the_experiments_package_has_no_import_cycle():
    graph = _graph()
    assert {"cli", "commands", "claims", "results", "figures", "runner"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
