"""The package's import rules (docs/design-notes.md, "Layers and packages"): no import cycle
between modules, and no import from a lower layer to a higher one. Lazy imports inside
functions count: they are dependencies all the same."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "jaxalign"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = [
    ["jaxalign.errors", "jaxalign.algorithms.registry"],  # no jaxalign imports at all
    ["jaxalign.losses"],
    ["jaxalign.models"],
    ["jaxalign.parallel"],
    ["jaxalign.io"],
    ["jaxalign.data"],
    ["jaxalign.config"],
    ["jaxalign.rewards"],
    ["jaxalign.rollout"],
    ["jaxalign.train"],
    ["jaxalign.algorithms"],
    ["jaxalign.examples", "jaxalign.ape"],
    ["jaxalign.cli"],
    ["jaxalign.api", "jaxalign"],  # the users' façade: nothing inside imports it
]


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


MODULES = modules()


def resolve(name: str) -> str | None:
    """The module an import of ``name`` loads last (``a.b.c`` -> ``a.b`` when c is a name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(resolve(a.name) for a in node.names if a.name.startswith("jaxalign"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("jaxalign"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                found.add(full if full in MODULES else resolve(node.module))
    found.discard(None)
    return found


GRAPH = {m: imports_of(f) - {m} for m, f in MODULES.items()}


def layer(module: str) -> int:
    """Index of the most specific layer prefix that ``module`` falls under."""
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def back_edges(graph) -> list[str]:
    return sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                  for a, bs in graph.items() for b in bs if layer(b) > layer(a))


def cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_in_a_layer():
    for m in MODULES:
        layer(m)


def test_no_import_goes_up_a_layer():
    assert back_edges(GRAPH) == []


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_nothing_inside_imports_the_users_facade():
    users = sorted(m for m, deps in GRAPH.items() if "jaxalign.api" in deps and m != "jaxalign")
    assert users == []


def test_the_checks_can_fail():
    """The checkers find a planted back-edge and a planted cycle."""
    planted = {"jaxalign.losses.dpo": {"jaxalign.train.loop"}, "jaxalign.train.loop": {"jaxalign.train.state"},
               "jaxalign.train.state": {"jaxalign.train.loop"}}
    assert back_edges(planted) == ["jaxalign.losses.dpo (layer 1) imports jaxalign.train.loop (layer 9)"]
    assert cycles(planted) == [["jaxalign.train.loop", "jaxalign.train.state"]]
    with pytest.raises(AssertionError):
        layer("numpy.linalg")
