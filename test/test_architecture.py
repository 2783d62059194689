"""The package's layering: core <- io <- workflows <- nodes / tools, no cycles, no private names across modules.

Read from the source with ``ast`` (nothing is imported), so a new import that breaks the layering
fails here even when it sits inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "semanom_ros"
# What each layer may import from the package (besides itself).
ALLOWED = {
    "core": set(),
    "io": {"core"},
    "workflows": {"core", "io"},
    "nodes": {"core", "io", "workflows"},
    "tools": {"core", "io", "workflows"},
}
ROS_MODULES = ("rclpy", "std_msgs", "sensor_msgs", "diagnostic_msgs", "vision_msgs", "lifecycle_msgs",
               "rcl_interfaces", "builtin_interfaces", "std_srvs", "geometry_msgs")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, list[str], bool]]:
    """(imported module, names, at module level) for every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [a.name for a in node.names], id(node) in top_level))
        elif isinstance(node, ast.Import):
            found.extend((a.name, [], id(node) in top_level) for a in node.names)
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(p) for p in SOURCES}


def resolve(base: str, name: str) -> str:
    """The package module an ``from base import name`` reaches: a submodule when name is one."""
    return f"{base}.{name}" if f"{base}.{name}" in MODULES else base


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_layer_imports_only_the_layers_below(path):
    layer = layer_of(module_name(path))
    if layer is None:
        return
    for base, names, _ in imports_of(path):
        for target in [resolve(base, n) for n in names] or [base]:
            if not target.startswith("semanom_ros."):
                continue
            other = layer_of(target)
            assert other in (None, layer) or other in ALLOWED[layer], (
                f"{module_name(path)} ({layer}) imports {target} ({other}); {layer} may import {sorted(ALLOWED[layer])}"
            )
        if layer in ("core", "io", "workflows", "tools"):
            assert not base.split(".")[0] in ROS_MODULES or layer == "io", f"{module_name(path)} imports ROS {base}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_is_imported_from_another_module(path):
    for base, names, _ in imports_of(path):
        if base.startswith("semanom_ros"):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            assert not private, f"{module_name(path)} imports private {private} from {base}"


def test_no_import_cycle_among_package_modules():
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        module = module_name(path)
        targets = set()
        for base, names, _ in imports_of(path):
            if base.startswith("semanom_ros"):
                targets.update(resolve(base, n) for n in names or [""])
        # A package's __init__ importing its own submodules is how re-exports work, not a cycle.
        graph[module] = {t for t in targets if t in MODULES and t != module and not module.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_core_imports_nothing_from_ros():
    for path in (PACKAGE / "core").rglob("*.py"):
        for base, _, _ in imports_of(path):
            assert base.split(".")[0] not in ROS_MODULES, f"{module_name(path)} imports {base}"
