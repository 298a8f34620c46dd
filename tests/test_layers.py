"""
The package's layers (docs/architecture.md): every module imports only from
its own layer or the layers below, and no import cycle exists. Imports made
inside functions count; imports under C{if TYPE_CHECKING:} do not (they are
for the type checker only).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "server" / "appserver"

#: Bottom to top, as in docs/architecture.md. A name stands for that module
#: (or package C{__init__}) exactly; a name ending in C{.*} for a whole
#: subpackage.
LAYERS = [
    ("values", ["appserver._version", "appserver._core.envelope", "appserver._core.outbound", "appserver._core.bounds",
                "appserver._core.events", "appserver._core.names", "appserver._core.history",
                "appserver._core.streamlog"]),
    ("client", ["appserver._core.client"]),
    ("backplane interface", ["appserver._core.backplane"]),
    ("tracker", ["appserver._core.memory", "appserver._core.tracker", "appserver._core"]),
    ("adapters", ["appserver._redis", "appserver._redis.*"]),
    ("application and settings", ["appserver._server", "appserver._server.settings", "appserver._server.config",
                                  "appserver._server.origins", "appserver._server.proxies",
                                  "appserver._server.limits",
                                  "appserver._server.app", "appserver._server.logs",
                                  "appserver._server.coroutines"]),
    ("dispatch", ["appserver._server.dispatch"]),
    ("runtime", ["appserver._server.admission", "appserver._server.runtime", "appserver._server.persistence",
                 "appserver._server.metrics", "appserver._server.service"]),
    ("sites", ["appserver._web", "appserver._web.*"]),
    ("public", ["appserver.tap", "appserver.apps", "appserver.apps.*", "appserver"]),
    ("command", ["appserver._cli", "appserver.__main__"]),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer_of(module: str) -> int:
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            if module == name or (name.endswith(".*") and module.startswith(name[:-1])):
                return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """
    The appserver modules C{module} imports at run time.
    """
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("appserver"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("appserver"):
                found.add(base)
                # "from appserver._redis import scripts" imports a module too.
                found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(path): path for path in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = _imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def test_every_module_imports_only_from_its_layer_or_below():
    wrong = []
    for module, targets in _graph().items():
        for target in targets:
            if _layer_of(target) > _layer_of(module):
                wrong.append(f"{module} ({LAYERS[_layer_of(module)][0]}) imports {target} "
                             f"({LAYERS[_layer_of(target)][0]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target] if target in path else [module, target])
            elif target not in state:
                walk(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    # The package's own __init__ re-exports the public API: it imports from
    # everywhere and nothing inside the package imports it back.
    cycles = [cycle for cycle in cycles if "appserver" not in cycle]
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_bundled_apps_use_only_the_public_api():
    for path in (PACKAGE / "apps").glob("*.py"):
        for target in _imports(ast.parse(path.read_text()), _module_name(path), False):
            assert not any(part.startswith("_") for part in target.split(".")), f"{path.name} imports {target}"
