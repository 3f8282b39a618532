"""The package's imports flow one way along the data path (issue 16).

Layers, lowest first::

    foundations  config, norms, losses, data, models, the run store, process set-up
    algorithms   tensors in, tensors out: the penalty, training methods, attacks, bound estimators, theory
    metrics      best distances, error curves, certified error, the bound audit, the attack checks
    stages       one run-or-load per stage: training, attack suite, bounds, certification
    grid, cli    the paper's grid (reproduce) and the command line
    report       tables, figures and pages, from stage results only

A module may import its own layer or lower ones; no import cycles, also not through imports hidden inside
functions; the algorithms import neither pandas nor the run store. ``ALLOWED`` lists today's violations: the
test fails on a new one, and also on a listed one that is gone (so the list only shrinks, to empty).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "paperlib"

LAYERS: dict[str, tuple[str, ...]] = {
    "foundations": ("paperlib.config", "paperlib.norms", "paperlib.losses", "paperlib.data", "paperlib.models",
                    "paperlib.runs", "paperlib.training.distributed", "paperlib.attacks.norms", "paperlib.evaluation"),
    "algorithms": ("paperlib.regularizers", "paperlib.training.methods", "paperlib.attacks.base",
                   "paperlib.attacks.pgd", "paperlib.attacks.cw", "paperlib.attacks.boundary",
                   "paperlib.attacks.logbarrier", "paperlib.attacks.reference", "paperlib.bounds.evt", "paperlib.bounds.sampling",
                   "paperlib.bounds.statistics", "paperlib.bounds.lipschitz", "paperlib.bounds.omega",
                   "paperlib.bounds.adversarial", "paperlib.theory"),
    "metrics": ("paperlib.attacks.checks", "paperlib.bounds.audit", "paperlib.metrics"),
    "stages": ("paperlib.training.engine", "paperlib.training", "paperlib.attacks.suite", "paperlib.attacks",
               "paperlib.bounds.stage", "paperlib.bounds.smoothing", "paperlib.bounds", "paperlib.stages"),
    "grid, cli": ("paperlib.reproduce", "paperlib.cli", "paperlib.options", "paperlib.attacks.cli",
                  "paperlib.bounds.cli", "paperlib.training.cli", "paperlib.__main__"),
    "report": ("paperlib.report",),
}
#: The package root only re-exports lazily (``paperlib.GradientPenalty`` etc.): it belongs to no layer.
EXEMPT = {"paperlib"}
ALGORITHMS_MUST_NOT_IMPORT = ("pandas", "paperlib.runs")

#: Today's violations, (importer, imported, rule). Remove an entry when its import goes.
ALLOWED: set[tuple[str, str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """Index of the layer owning ``module`` (longest matching prefix), None for the exempt root."""
    if module in EXEMPT:
        return None
    best, index = -1, None
    for i, prefixes in enumerate(LAYERS.values()):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, index = len(p), i
    return index


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """``(imported module, inside a function)`` for every import statement of a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.append((child.module, in_function))
                out.extend((f"{child.module}.{a.name}", in_function) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for m, p in modules.items():
        for target, _ in imports_of(p):
            if target in modules and target != m:
                edges[m].add(target)
            elif target.split(".")[0] != "paperlib":
                edges[m].add(target.split(".")[0])  # third-party: by top-level package
    return edges


def violations() -> set[tuple[str, str, str]]:
    edges = graph()
    internal = {m for m in edges}
    found: set[tuple[str, str, str]] = set()
    algorithms = list(LAYERS).index("algorithms")
    for m, targets in edges.items():
        lm = layer_of(m)
        for t in targets:
            if t in internal:
                lt = layer_of(t)
                if lm is not None and lt is not None and lt > lm:
                    found.add((m, t, "upward"))
            if lm == algorithms and any(t == f or t.startswith(f + ".") for f in ALGORITHMS_MUST_NOT_IMPORT):
                found.add((m, t, "algorithm-imports"))
    # Cycles: every edge inside a strongly connected component of more than one module (Tarjan).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[set[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v] & internal:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            sccs.append(comp)

    for v in sorted(internal):
        if v not in index:
            strong(v)
    for comp in sccs:
        if len(comp) > 1:
            for m in comp:
                for t in edges[m] & comp:
                    if layer_of(m) is None or layer_of(t) is None:
                        continue
                    found.add((m, t, "cycle"))
    return {v for v in found if v[0] not in EXEMPT and v[1] not in EXEMPT}


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in map(module_name, PACKAGE.rglob("*.py")) if m not in EXEMPT and layer_of(m) is None)
    assert not unplaced, f"modules in no layer of tests/test_layers.py: {unplaced}"


def test_imports_flow_one_way_and_never_in_a_cycle():
    found = violations()
    new = sorted(found - ALLOWED)
    gone = sorted(ALLOWED - found)
    assert not new, "imports against the layers (importer, imported, rule):\n" + "\n".join(map(str, new))
    assert not gone, "these allowed violations are gone; remove them from ALLOWED:\n" + "\n".join(map(str, gone))


def test_the_scanner_sees_upward_imports_cycles_and_hidden_imports(tmp_path):
    src = "def f():\n    from paperlib.report import results\nimport pandas\n"
    p = tmp_path / "mod.py"
    p.write_text(src)
    assert imports_of(p) == [("paperlib.report", True), ("paperlib.report.results", True), ("pandas", False)]
    assert layer_of("paperlib.report.results") > layer_of("paperlib.attacks.suite") > layer_of("paperlib.runs")
