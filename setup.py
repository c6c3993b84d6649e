"""Build script: the compiled twin ``psycancel_c._pq`` is optional.

* ``PSYCANCEL_NO_EXT=1``: do not build it (pure-Python install; nothing is
  compiled and neither Cython nor a C compiler is needed).
* ``PSYCANCEL_REQUIRE_EXT=1``: a failed build is an error (CI, wheels).
* otherwise: build it when a C compiler works, else install without it (the
  ctypes twin is then used).

Cython is needed only to generate ``psycancel_c/_pq.c`` from the ``.pyx``
sources. The sdist ships that generated C file (fresh: made when the sdist
is built), so installing from the sdist needs a C compiler but no Cython; a
git checkout has no ``_pq.c`` (or a stale one) and needs Cython.
``PSYCANCEL_CYTHONIZE=1`` regenerates the C file from the ``.pyx`` whatever
its age. The in-tree build backend (``_build_backend/psycancel_build.py``)
makes the same decision to ask for Cython only then.

The extension needs no libpq to build and links none: it links nothing but
the C library (and libdl where dlopen lives there), and resolves libpq's
symbols at run time with dlopen/dlsym, in the libpq of the driver whose
connection it cancels. No wheel bundles a libpq.

Binary wheels (``docs/wheels.md``):

* ``PSYCANCEL_LIMITED_API=1``: build against CPython's Limited API
  (``Py_LIMITED_API`` = 3.10, abi3 wheel tag ``cp310-abi3``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PYX = HERE / "psycancel_c" / "_pq.pyx"
sys.path.insert(0, str(HERE / "_build_backend"))

from psycancel_build import GENERATED, cython_needed  # noqa: E402
from psycancel_build import flag as _flag  # noqa: E402

COMPILER_DIRECTIVES = {"language_level": "3", "binding": True, "embedsignature": True}
"""Cython's directives for ``_pq.pyx`` (the sdist's ``_pq.c`` is made with these)."""


def _limited_api() -> bool:
    return _flag("PSYCANCEL_LIMITED_API")


LIMITED_API_VERSION = (3, 10)
"""Oldest CPython the abi3 build supports (``requires-python``)."""


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
            f"WARNING: the compiled twin was not built ({ex}); psycancel will use its ctypes twin",
            file=sys.stderr,
        )


def _extensions() -> list[object]:
    if os.environ.get("PSYCANCEL_DISCOVERING_REQUIRES"):
        return []  # only listing requirements (the build backend): Cython may be missing yet
    if _flag("PSYCANCEL_NO_EXT"):
        return []
    if not PYX.exists():
        if _flag("PSYCANCEL_REQUIRE_EXT"):
            raise SystemExit(f"PSYCANCEL_REQUIRE_EXT is set but {PYX} is missing")
        return []
    from setuptools import Extension

    options: dict[str, Any] = {}
    if sys.platform.startswith("linux"):
        options["libraries"] = ["dl"]  # dlopen/dlsym (in libc itself since glibc 2.34)
    if _limited_api():
        major, minor = LIMITED_API_VERSION
        options["define_macros"] = [("Py_LIMITED_API", f"0x{major:02X}{minor:02X}0000")]
        options["py_limited_api"] = True
    if not cython_needed():
        # The generated C file (an sdist's, or one fresher than every .pyx).
        return [Extension("psycancel_c._pq", [str(GENERATED.relative_to(HERE))], **options)]
    try:
        from Cython.Build import cythonize
    except ImportError:
        if _flag("PSYCANCEL_REQUIRE_EXT"):
            raise
        print(
            f"WARNING: Cython is not available and {GENERATED.name} is missing or older "
            "than the .pyx sources; skipping the compiled twin",
            file=sys.stderr,
        )
        return []
    ext = Extension("psycancel_c._pq", [str(PYX.relative_to(HERE))], **options)
    return list(
        cythonize(
            [ext],
            compiler_directives=COMPILER_DIRECTIVES,
            force=_flag("PSYCANCEL_CYTHONIZE"),
        )
    )


class SdistWithC(sdist):  # type: ignore[misc]
    """``sdist`` that first regenerates ``psycancel_c/_pq.c`` (shipped: see MANIFEST.in)."""

    def run(self) -> None:
        from Cython.Build import cythonize  # a build requirement of the sdist

        cythonize([str(PYX.relative_to(HERE))], compiler_directives=COMPILER_DIRECTIVES, force=True)
        super().run()


def _options() -> dict[str, Any]:
    if not _limited_api():
        return {}
    major, minor = LIMITED_API_VERSION
    return {"bdist_wheel": {"py_limited_api": f"cp{major}{minor}"}}


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "sdist": SdistWithC},
    options=_options(),
)
