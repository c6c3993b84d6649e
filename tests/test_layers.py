"""The package's imports go one way: pq <- engine, drivers <- the public API <- the CLI.

Every module of ``psycancel`` (and every ``.pyx``/``.pxd`` of ``psycancel_c``) is
parsed, not imported, so the test sees imports inside functions too. It fails
on an import that goes up a layer, on the engine and the drivers importing each
other (they are siblings, joined only by ``_procedure``), on the compiled twin
importing more of psycancel than the interface modules, and on any cycle
between modules. ``docs/architecture.md`` draws the same picture.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import psycancel

PACKAGE = Path(psycancel.__file__).resolve().parent
ROOT = PACKAGE.parent
COMPILED = ROOT / "psycancel_c"

LAYERS: dict[str, int] = {
    "psycancel.errors": 0,
    "psycancel.pq": 1,
    "psycancel._engine": 2,
    "psycancel._drivers": 2,
    "psycancel": 3,  # __init__, _api, _after, _procedure, __main__
    "psycancel._cli": 4,
    "psycancel.__main__": 5,  # python -m psycancel: runs the CLI
}
"""Rank of each layer: a module imports only layers of a lower rank or its own layer."""

COMPILED_MAY_IMPORT = {
    "psycancel.errors",
    "psycancel.pq.abc",
    "psycancel.pq.enums",
    "psycancel.pq.messages",
    "psycancel.pq.libfind",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(name: str) -> bool:
    return (ROOT / Path(*name.split(".")) / "__init__.py").exists()


def exists(name: str) -> bool:
    base = ROOT / Path(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports_of(path: Path) -> set[str]:
    """The psycancel modules ``path`` imports, resolved to module names."""
    name = module_name(path)
    package = name if is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if exists(sub) else base)
        else:
            continue
        found.update(t for t in targets if t == "psycancel" or t.startswith("psycancel."))
    found.discard(name)
    return found


def layer_of(name: str) -> str:
    """The longest LAYERS key that ``name`` belongs to."""
    for key in sorted(LAYERS, key=len, reverse=True):
        if name == key or name.startswith(key + "."):
            return key
    raise AssertionError(f"{name} is in no layer: add it to LAYERS")


def graph() -> dict[str, set[str]]:
    return {
        module_name(path): imports_of(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def test_the_graph_is_not_trivial() -> None:
    g = graph()
    assert len(g) > 30
    assert "psycancel._engine.machine" in g["psycancel._engine.isolated"]
    assert "psycancel._procedure" in g["psycancel._api"]


def test_imports_only_go_down() -> None:
    wrong = []
    for module, targets in graph().items():
        mine = layer_of(module)
        for target in targets:
            theirs = layer_of(target)
            if theirs == mine:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{module} -> {target} ({mine} may not import {theirs})")
    assert not wrong, "\n".join(wrong)


def test_the_package_has_no_import_cycle() -> None:
    g = graph()
    # Importing psycancel.x.y first runs psycancel.x: a package's __init__ is
    # imported by its submodules implicitly, so only explicit edges count here.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


def test_the_ctypes_twin_never_imports_the_compiled_one() -> None:
    for path in (PACKAGE / "pq" / "_ctypes").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [alias.name for alias in node.names]
                assert not any(n.startswith("psycancel_c") for n in names), path


_CYTHON_IMPORT = re.compile(
    r"^\s*(?:from\s+(?P<from>[\w.]+)\s+c?import\s+\(?\s*(?P<name>\w+)|c?import\s+(?P<imp>[\w.]+))",
    re.M,
)


@pytest.mark.skipif(not COMPILED.is_dir(), reason="the compiled twin's sources are not here")
def test_the_compiled_twin_imports_only_the_interface() -> None:
    sources = sorted([*COMPILED.glob("*.pyx"), *COMPILED.glob("*.pxd"), *COMPILED.glob("*.pxi")])
    assert sources, "no Cython sources found"
    seen: set[str] = set()
    for path in sources:
        for match in _CYTHON_IMPORT.finditer(path.read_text()):
            target = match.group("from") or match.group("imp")
            if match.group("from") and exists(f"{target}.{match.group('name')}"):
                target = f"{target}.{match.group('name')}"  # from package import module
            if target.startswith("psycancel.") or target == "psycancel":
                seen.add(target)
                assert target in COMPILED_MAY_IMPORT, f"{path.name} imports {target}"
    assert seen, "expected the compiled twin to import psycancel's interface modules"


def test_the_package_never_imports_the_test_helpers() -> None:
    """``testing`` (the throwaway server, the query client) and ``tests`` are not installed."""
    sources = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    sources += sorted(COMPILED.glob("*.py*")) if COMPILED.is_dir() else []
    for path in sources:
        if path.suffix not in (".py", ".pyx", ".pxd", ".pyi"):
            continue
        text = path.read_text()
        for match in _CYTHON_IMPORT.finditer(text):
            target = match.group("from") or match.group("imp") or ""
            root = target.split(".")[0]
            assert root not in ("testing", "tests"), f"{path} imports {target}"
