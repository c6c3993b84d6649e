"""Build script: the compiled twin ``psycancel_c._pq`` is optional.

* ``PSYCANCEL_NO_EXT=1``: do not build it (pure-Python install).
* ``PSYCANCEL_REQUIRE_EXT=1``: a failed build is an error (CI, wheels).
* otherwise: build it when a compiler works, else install without it.

The extension needs no libpq to build: it resolves libpq's symbols at run
time with dlopen/dlsym. Cython (>= 3.1) is a build requirement
(``pyproject.toml``); the sdist ships the ``.pyx`` only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
PYX = HERE / "psycancel_c" / "_pq.pyx"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class OptionalBuildExt(build_ext):  # type: ignore[misc]
    """``build_ext`` that tolerates a failure unless PSYCANCEL_REQUIRE_EXT is set."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as ex:
            self._failed(ex)

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)
        except Exception as ex:
            self._failed(ex)

    def _failed(self, ex: Exception) -> None:
        if _flag("PSYCANCEL_REQUIRE_EXT"):
            raise
        print(
            f"WARNING: the compiled twin was not built ({ex}); "
            "psycancel will use its ctypes twin",
            file=sys.stderr,
        )


def _extensions() -> list[object]:
    if _flag("PSYCANCEL_NO_EXT"):
        return []
    if not PYX.exists():
        if _flag("PSYCANCEL_REQUIRE_EXT"):
            raise SystemExit(f"PSYCANCEL_REQUIRE_EXT is set but {PYX} is missing")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if _flag("PSYCANCEL_REQUIRE_EXT"):
            raise
        print("WARNING: Cython is not available; skipping the compiled twin", file=sys.stderr)
        return []
    from setuptools import Extension

    libraries = ["dl"] if sys.platform.startswith("linux") else []
    ext = Extension("psycancel_c._pq", [str(PYX.relative_to(HERE))], libraries=libraries)
    return list(
        cythonize(
            [ext],
            compiler_directives={"language_level": "3", "binding": True, "embedsignature": True},
        )
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
