"""The package's import graph (ast): no cycles, and no import that points up the documented layer order.

The order is the one in ``skymask_ray/__init__.py``'s docstring; imports under
``if TYPE_CHECKING:`` (annotations only) are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import skymask_ray

ROOT = Path(skymask_ray.__file__).parent

# layer of each top-level module or subpackage, bottom (0) to top, as the package docstring documents
LAYERS = {
    "errors": 0, "registry": 0, "seeding": 0, "params": 0, "storage": 0, "linalg": 0, "kernels": 0, "progress": 0,
    "markdown": 0, "procfs": 0,
    "config": 1, "ray_session": 1, "nodes": 1, "layout": 1, "actors": 1, "local_nodes": 1, "models": 1, "results": 1,
    "population": 1, "run_folder": 1, "context": 1,
    "data": 2, "evaluation": 2,
    "clients": 3, "skymask": 3, "attacks": 3, "defenses": 3,
    "experiment": 4, "simulation": 4, "recorders": 4, "preflight": 4,
    "tables": 5, "study": 5, "bench": 5, "pages": 5, "report": 5,
    "cli": 6,
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (relative and absolute, any depth, not TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("").parts
        mod = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
        pkg = mod if rel[-1] == "__init__" else mod.rsplit(".", 1)[0]
        out: set[str] = set()

        def visit(node: ast.AST) -> None:
            if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
                for n in node.orelse:
                    visit(n)
                return
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg
                    for _ in range(node.level - 1):
                        base = base.rsplit(".", 1)[0]
                    target = base + ("." + node.module if node.module else "")
                else:
                    target = node.module or ""
                if target.split(".")[0] == "skymask_ray":
                    out.add(target)
                    out.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.split(".")[0] == "skymask_ray")
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(ast.parse(path.read_text()))
        graph[mod] = out
    return {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}


def test_every_module_has_a_layer():
    units = {_unit(m) for m in _imports()} - {""}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS and the package docstring"


def test_imports_point_down_the_layers():
    up = sorted(f"{m} -> {t}" for m, ts in _imports().items() for t in ts
                if _unit(m) and _unit(t) and LAYERS[_unit(t)] > LAYERS[_unit(m)])
    assert not up


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def dfs(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for t in sorted(graph[m]):
            if t.startswith(m + "."):
                continue  # a package importing its own submodules (registration) is not a cycle
            if state.get(t) == 1:
                cycle.extend(stack[stack.index(t):] + [t])
                return True
            if state.get(t) is None and dfs(t, stack + [t]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if m not in state and dfs(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


def test_layers_are_documented():
    doc = skymask_ray.__doc__ or ""
    assert all(name in doc for name in LAYERS)
