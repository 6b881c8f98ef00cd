"""
The rules of the house on imports, checked on the source: C{model} knows
nothing of HTTP or the reactor, and its modules import each other without
cycles (a cycle forces function-local imports and an import order).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import devpi_tx

PACKAGE = pathlib.Path(devpi_tx.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
    """
    The absolute names of the modules a source file imports, anywhere in it.
    """
    package = "devpi_tx." + ".".join(path.relative_to(PACKAGE).parent.parts)
    package = package.rstrip(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
                if node.module is None:
                    found.update(f"{base}.{alias.name}" for alias in node.names)
            else:
                module = node.module
            found.add(module)
    return found


def _model_modules() -> dict[str, pathlib.Path]:
    return {f"devpi_tx.model.{path.stem}": path for path in (PACKAGE / "model").glob("*.py")}


def test_model_imports_neither_twisted_nor_the_web_layer():
    for name, path in _model_modules().items():
        for imported in _imports(path):
            assert not imported.startswith("twisted"), (name, imported)
            assert not imported.startswith(("devpi_tx.web", "devpi_tx.mirror", "klein")), (name, imported)


def test_model_modules_import_each_other_without_cycles():
    modules = _model_modules()
    graph = {
        name: {m for m in _imports(path) if m in modules and m != name and not m.endswith(".__init__")}
        for name, path in modules.items()
        if not name.endswith(".__init__")
    }
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", " -> ".join([*trail, name])
        state[name] = "open"
        for other in sorted(graph[name]):
            visit(other, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


#: What each layer may not import: web and mirror above model, model above
#: storage; nothing below imports the composition root.
FORBIDDEN = {
    "model": ("devpi_tx.web", "devpi_tx.mirror", "devpi_tx.service", "devpi_tx.storage", "twisted", "klein"),
    "storage": ("devpi_tx.web", "devpi_tx.mirror", "devpi_tx.service", "devpi_tx.model", "klein"),
    "auth": ("devpi_tx.web", "devpi_tx.mirror", "devpi_tx.service", "klein"),
    "customizers": ("devpi_tx.web", "devpi_tx.mirror", "devpi_tx.service", "klein"),
    "mirror": ("devpi_tx.web", "devpi_tx.service", "klein"),
    "remote": ("devpi_tx.web", "devpi_tx.service", "klein"),
    "replica": ("devpi_tx.web", "devpi_tx.service", "devpi_tx.cli", "klein"),
    "web": ("devpi_tx.service", "devpi_tx.cli"),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_downward(layer):
    offences = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for module in sorted(_imports(path)):
            if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                offences.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert offences == []


def test_no_source_file_is_over_about_500_lines():
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert {name: lines for name, lines in sizes.items() if lines > 520} == {}
