"""The package's import graph: no cycles, and no upward import from a lower stage into a higher one.

Every ``import`` / ``from ... import`` of a ``lartpc_bayes`` module is collected from the source
(module level and inside functions: a lazy import is still a dependency), resolved to the module
it names, and checked against the stage order of DESIGN.md section 1 (data flows
segments -> charge -> readout -> hits forward, hits -> likelihood -> model -> posterior back).
"""

from __future__ import annotations

import ast
from pathlib import Path

import lartpc_bayes

PKG = Path(lartpc_bayes.__file__).parent

#: stage of each room (a module may import from its own stage or lower ones only)
STAGE = {
    "data": 0, "detector": 0,
    "forward": 1, "io": 1,
    "likelihood": 2, "reco": 2,
    "model": 3,
    "infer": 4, "light": 4,
    "results": 5,
    "calibrate": 6,
    "validation": 7,
    "cli": 8,
    "calo": 0,  # the calorimeter sibling: self-contained
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(("lartpc_bayes", *parts))] = f
    return out


def _resolve(mod: str, is_pkg: bool, level: int, name: str | None) -> str:
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (submodules resolved where they exist)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = _resolve(m, is_pkg, node.level, node.module)
                elif (node.module or "").startswith("lartpc_bayes"):
                    base = node.module
                else:
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in mods else base)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("lartpc_bayes")]
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t != m and t in mods:
                    graph[m].add(t)
    return graph


def _room(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycles():
    graph = import_graph()
    # a subpackage __init__ re-exporting its own modules is not a dependency of those modules
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append([*stack[stack.index(t):], t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_upward_imports():
    graph = import_graph()
    bad = []
    for m, targets in graph.items():
        room = _room(m)
        if room not in STAGE:
            continue
        for t in targets:
            troom = _room(t)
            if troom in STAGE and troom != room and STAGE[troom] > STAGE[room]:
                bad.append(f"{m} (stage {STAGE[room]}) imports {t} (stage {STAGE[troom]})")
            if room == "calo" and troom not in ("calo",):
                bad.append(f"{m}: the calorimeter sibling imports {t}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_every_room_is_staged():
    rooms = {_room(m) for m in import_graph()} - {"__init__"}
    assert rooms <= set(STAGE), f"rooms without a stage: {sorted(rooms - set(STAGE))}"


def test_subpackages_declare_all():
    for init in PKG.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        names = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                 if isinstance(t, ast.Name)]
        assert "__all__" in names, f"{init.relative_to(PKG.parent)} has no __all__"
