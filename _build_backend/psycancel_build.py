"""psycancel's build backend: setuptools, asking for Cython only when it is needed.

``[build-system] requires`` cannot depend on the environment, so this small
in-tree backend (``backend-path`` in ``pyproject.toml``) wraps
``setuptools.build_meta`` and adds ``Cython`` to the build requirements only
when the compiled twin must be generated from its ``.pyx`` sources:

* ``PSYCANCEL_NO_EXT=1``: nothing is compiled, Cython is never needed;
* the generated ``psycancel_c/_pq.c`` is present and newer than every Cython
  source (an sdist ships it): it is compiled as it is, no Cython;
* ``PSYCANCEL_CYTHONIZE=1``, or the C file is missing or stale (a git
  checkout): Cython is needed;
* building an sdist always needs Cython: the sdist ships a fresh ``_pq.c``.

``setup.py`` imports the same decision (:func:`cython_needed`) from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from setuptools import build_meta as _orig
from setuptools.build_meta import *  # noqa: F403  (the PEP 517 hooks we do not change)

ROOT = Path(__file__).resolve().parent.parent
"""The project's root (``setup.py``, ``pyproject.toml``)."""

SOURCES = ROOT / "psycancel_c"
GENERATED = SOURCES / "_pq.c"
"""Cython's output for ``_pq.pyx`` (shipped in the sdist, not in git)."""

CYTHON_REQUIREMENT = "Cython>=3.1"


def flag(name: str) -> bool:
    """True if the environment variable ``name`` is set to 1/true/yes/on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def generated_c_is_fresh() -> bool:
    """True if ``_pq.c`` exists and is newer than every ``.pyx``/``.pxd``/``.pxi``."""
    try:
        generated = GENERATED.stat().st_mtime
    except OSError:
        return False
    sources = [p for ext in ("*.pyx", "*.pxd", "*.pxi") for p in SOURCES.glob(ext)]
    return all(p.stat().st_mtime <= generated for p in sources)


def cython_needed() -> bool:
    """True if building the wheel must run Cython (see the module documentation)."""
    if flag("PSYCANCEL_NO_EXT"):
        return False
    if flag("PSYCANCEL_CYTHONIZE"):
        return True
    return not generated_c_is_fresh()


def _with_cython(requires: list[str], needed: bool) -> list[str]:
    return [*requires, CYTHON_REQUIREMENT] if needed else list(requires)


DISCOVERING = "PSYCANCEL_DISCOVERING_REQUIRES"
"""Set while setuptools runs setup.py only to list requirements: setup.py then
describes no extension, since Cython, which describing one may need, is what
is being asked for (a fresh checkout with PSYCANCEL_REQUIRE_EXT=1 failed here)."""


def _discovering(hook: Any, config_settings: dict[str, Any] | None) -> list[str]:
    previous = os.environ.get(DISCOVERING)
    os.environ[DISCOVERING] = "1"
    try:
        requires: list[str] = hook(config_settings)
        return requires
    finally:
        if previous is None:
            del os.environ[DISCOVERING]
        else:
            os.environ[DISCOVERING] = previous


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    """setuptools' requirements, plus Cython when the ``.pyx`` must be compiled."""
    return _with_cython(
        _discovering(_orig.get_requires_for_build_wheel, config_settings), cython_needed()
    )


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    """As :func:`get_requires_for_build_wheel`, for ``pip install -e``."""
    return _with_cython(
        _discovering(_orig.get_requires_for_build_editable, config_settings), cython_needed()
    )


def get_requires_for_build_sdist(config_settings: dict[str, Any] | None = None) -> list[str]:
    """setuptools' requirements and Cython: the sdist ships a freshly generated ``_pq.c``."""
    return _with_cython(_discovering(_orig.get_requires_for_build_sdist, config_settings), True)
