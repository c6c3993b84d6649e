"""The examples of docs/timeouts-*.md compile and name only what exists (issue 23).

Each page's Python blocks are compiled (top-level ``await`` allowed: the
asyncio snippets), and every attribute they take from ``psycancel``, from
the page's integration module (imported ``as deadlines``) and from
``psycancel.integrations`` must exist: an example cannot drift from the API
unseen. (The examples themselves are run, piece by piece, by the framework
tests of this directory.)
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from tests.support.drivers import ROOT, need

PAGES = sorted((ROOT / "docs").glob("timeouts-*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_examples_compile_and_name_what_exists(page: Path) -> None:
    for module in ("django", "sqlalchemy", "psycopg", "psycopg2"):
        need(module)
    blocks = BLOCK.findall(page.read_text())
    assert blocks, f"{page.name} has no Python example"
    aliases: dict[str, str] = {"psycancel": "psycancel"}
    for code in blocks:
        tree = compile(code, page.name, "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("psycancel")
            ):
                for alias in node.names:
                    module = importlib.import_module(node.module)
                    target = getattr(module, alias.name, None)
                    if target is None:
                        target = importlib.import_module(f"{node.module}.{alias.name}")
                    if isinstance(target, type(importlib)):
                        aliases[alias.asname or alias.name] = target.__name__
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                module = importlib.import_module(aliases[node.value.id])
                assert hasattr(module, node.attr), f"{page.name}: {node.value.id}.{node.attr}"
