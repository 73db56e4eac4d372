"""The shape of the code, read from its imports: every arrow points down.

- No import cycle inside controller/, proxy/ or common/ (lazy imports inside
  functions count: they are arrows all the same).
- proxy/ takes from the controller only its shared model (controller.spec).
- Only the composition root (controller.cli) imports both the controller and
  the proxy; common/ imports neither.
- No module of controller/, proxy/ or common/ is longer than 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("controller", "proxy", "common")
MAX_LINES = 400
# What proxy/ may take from the controller: the shared model only.
PROXY_MAY_IMPORT = ("controller.spec",)
COMPOSITION_ROOT = "controller.cli"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that `name` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets.add(module)
            # `from controller import spec` names a module, not a symbol.
            targets.update(f"{module}.{alias.name}" for alias in node.names
                           if f"{module}.{alias.name}" in modules)
    return {target for target in targets if target in modules and target != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without the arrows from a package to its own submodules.

    `controller/config/__init__.py` re-exporting `controller.config.reader` is
    the package's face, not a dependency: leaving those arrows in would call
    every `from controller.config import x` inside the package a cycle.
    """
    return {name: {t for t in targets if not _within(t, name)}
            for name, targets in graph.items()}


def test_no_import_cycle() -> None:
    assert _cycles(_package_parents(_graph())) == []


def test_proxy_takes_only_the_shared_model_from_the_controller() -> None:
    wrong = sorted(
        f"{name} -> {target}"
        for name, targets in _graph().items() if _within(name, "proxy")
        for target in targets
        if _within(target, "controller")
        and not any(_within(target, allowed) for allowed in PROXY_MAY_IMPORT)
    )
    assert wrong == []


def test_only_the_composition_root_imports_both_parts() -> None:
    wrong = sorted(
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if _within(name, "controller") and not _within(name, COMPOSITION_ROOT)
        for target in targets if _within(target, "proxy")
    )
    wrong += sorted(
        f"{name} -> {target}"
        for name, targets in _graph().items() if _within(name, "common")
        for target in targets if not _within(target, "common")
    )
    assert wrong == []


def test_no_module_is_a_god_module() -> None:
    long = sorted(
        f"{path.relative_to(ROOT)}: {lines} lines"
        for path in _modules().values()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    )
    assert long == []


def test_the_walker_sees_a_cycle() -> None:
    """The check above must be able to fail: a made-up cycle is found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
