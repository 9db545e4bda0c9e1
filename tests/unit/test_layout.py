"""The package's layout as rules that can fail: no import cycles, data flowing down the layers, a thin CLI.

Layers, bottom to top (README "Layout"): the leaves (`errors`, `progress`, `dtypes`, `devices`, `limits`,
`units`, `threads`, and the shipped `runtime/`, which imports nothing of ours), `maths`, `formats`, `stages`,
`publish`, then `release` and `api`, then `cli`. A module may import its own layer and the layers below; `cli` imports
only the facade `packager.api` (and `packager` for the version). Every import counts, also one inside a
function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "packager"

#: Top-level parts of `packager`, by layer (a part is a subpackage or a top-level module).
LAYERS = [
    {"__init__", "errors", "progress", "dtypes", "devices", "limits", "units", "threads", "runtime"},
    {"maths"},
    {"formats"},
    {"stages"},
    {"publish"},
    {"release", "recipients", "api"},
    {"cli"},
]
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}
#: The longest a module may be without saying why in its docstring.
MAX_LINES = 500
LONG_REASON = "This module is long because"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every `packager` module `name` imports, wherever the import statement stands."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in known and target != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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
            component = []
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


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(name) for name in _modules()}
    assert parts <= set(LAYER_OF), f"parts without a layer: {sorted(parts - set(LAYER_OF))}"


def test_no_import_cycle_among_modules():
    assert _cycles(_graph()) == []


def test_imports_only_go_down_the_layers():
    wrong = []
    for module, targets in _graph().items():
        for target in targets:
            if LAYER_OF[_part(target)] > LAYER_OF[_part(module)]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_runtime_imports_nothing_of_the_package():
    runtime = {name: targets for name, targets in _graph().items() if _part(name) == "runtime"}
    assert all(target.startswith("packager.runtime") for targets in runtime.values() for target in targets)


def test_cli_imports_only_the_facade():
    wrong = []
    for module, targets in _graph().items():
        if _part(module) != "cli":
            continue
        wrong += [f"{module} -> {t}" for t in targets if t not in ("packager", "packager.api")
                  and not t.startswith("packager.cli")]
    assert wrong == []


def test_long_modules_say_why():
    silent = []
    for name, path in _modules().items():
        if _part(name) == "runtime":
            continue
        lines = len(path.read_text().splitlines())
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and LONG_REASON not in docstring:
            silent.append(f"{name} ({lines} lines)")
    assert silent == []
