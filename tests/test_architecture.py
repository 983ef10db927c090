"""The house: packages by role, no import circle, nothing imports upward, no module over 400 lines.

The import graph is read from the source (every ``import`` and ``from ... import``, including the
ones inside functions, which are circles too), so these tests fail as soon as a change breaks a rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "gossip"

# Lower layers first; a module may import its own layer and the layers before it, never a later one.
LAYERS: list[tuple[str, ...]] = [
    ("gossip.errors", "gossip._proto"),
    ("gossip.config", "gossip.cli"),
    ("gossip.observe",),
    ("gossip.protocol",),
    ("gossip.training",),
    ("gossip.aggregation",),
    ("gossip.sim",),
    ("gossip.runtime",),
    ("gossip.experiments",),
]
# Thin command-line entry points at the top level (``python -m gossip.X``): they may import anything.
ENTRY_POINTS = {"gossip.peer", "gossip.launch", "gossip.dashboard", "gossip.baseline", "gossip.experiment",
                "gossip.analyze", "gossip.bench", "gossip.curve", "gossip.proto", "gossip"}
MAX_LINES = 400


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py") if "_proto" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            # resolve to the longest known module prefix (``from gossip.x import y`` may name a module y)
            parts = t.split(".")
            for k in range(len(parts), 0, -1):
                cand = ".".join(parts[:k])
                if cand in known and cand != name:
                    found.add(cand)
                    break
    # a package's __init__ is imported implicitly by its submodules; that is not a dependency edge
    return {m for m in found if not name.startswith(m + ".")}


def graph() -> dict[str, set[str]]:
    src = sources()
    known = set(src)
    return {name: imports_of(name, path, known) for name, path in src.items()}


def layer_of(name: str) -> int | None:
    for i, roots in enumerate(LAYERS):
        if any(name == r or name.startswith(r + ".") for r in roots):
            return i
    return None


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cyc := visit(m)):
                return cyc
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (cyc := visit(n)):
            return cyc
    return None


def test_the_graph_is_read_from_the_source():
    g = graph()
    assert "gossip.protocol.wire" in g["gossip.runtime.node"] or any(
        "gossip.protocol.wire" in g[m] for m in g if m.startswith("gossip.runtime"))
    # the checker itself must see a circle when there is one
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_every_module_has_a_layer_and_nothing_imports_upward():
    upward = []
    for name, deps in graph().items():
        if name in ENTRY_POINTS:
            continue
        mine = layer_of(name)
        assert mine is not None, f"{name} belongs to no layer: put it in a package by role"
        for dep in deps:
            theirs = layer_of(dep)
            if dep in ENTRY_POINTS or (theirs is not None and theirs > mine):
                upward.append(f"{name} -> {dep}")
    assert not upward, "imports upward: " + ", ".join(sorted(upward))


def test_top_level_holds_only_foundations_and_entry_points():
    flat = {module_name(p) for p in PKG.glob("*.py")}
    allowed = ENTRY_POINTS | {r for roots in LAYERS[:2] for r in roots}
    assert flat <= allowed, f"modules on the top floor that belong in a package: {sorted(flat - allowed)}"


@pytest.mark.parametrize("path", sorted(p for p in PKG.rglob("*.py") if "_proto" not in p.parts),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_400_lines(path: Path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (split it by reason to change)"
