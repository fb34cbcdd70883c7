"""The package's layout is its data flow: imports go from the later pipeline stages to the earlier ones
only, and no module imports itself back through others (read from the source with ``ast``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "adbench"
# config → data → features → method → scores → metrics → record → report; a part may import its own rank or lower
RANK = {
    "adbench": 0, "errors": 0, "files": 0, "scores": 0,
    "data": 1, "features": 1,
    "methods": 2,
    "metrics": 3, "config": 3,
    "pipeline": 4,
    "results": 5,
    "serving": 6,
    "runner": 7,
    "cli": 8, "__main__": 8, "report": 8, "predict": 8, "api": 8, "importer": 8, "gallery": 8, "migrate": 8,
    "plugins": 0,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The adbench modules ``path`` imports, relative imports resolved; ``from X import y`` counts X.y when
    that is a module, else X."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "adbench"}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] == "adbench":
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path, set(modules)) if m in modules and m != name} for name, path in modules.items()}


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_part_has_a_rank() -> None:
    assert {part(m) for m in graph()} <= set(RANK), "a new top-level module or folder needs its place in RANK"


def test_imports_point_back_along_the_pipeline() -> None:
    upward = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets if RANK[part(b)] > RANK[part(a)])
    assert not upward, upward


def test_no_import_cycles() -> None:
    edges, state, cycles = graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_methods_never_reach_the_runner_or_the_dataset_config() -> None:
    for name, targets in graph().items():
        if part(name) == "methods":
            assert not {part(t) for t in targets} & {"runner", "cli", "config", "data", "results"}, name


def test_scores_never_climb_back_to_the_config() -> None:
    """Scores flow down: config reads data and builds objects but never handles scores (the per-category split
    of a scoring pass is :mod:`adbench.metrics.parts`), metrics take the ``Scored`` container from
    :mod:`adbench.scores`, not from the methods, and results never reach back to config or the pipeline."""
    for name, targets in graph().items():
        if part(name) == "config":
            assert not {t for t in targets if t == "adbench.scores" or t.startswith(("adbench.methods.scoring", "adbench.metrics"))}, name
        if part(name) == "metrics":
            assert not {part(t) for t in targets} & {"methods", "config"}, name
        if part(name) == "results":
            assert not {part(t) for t in targets} & {"config", "pipeline", "runner"}, name
