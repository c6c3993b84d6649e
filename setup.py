"""Build script: the compiled twin ``psycancel_c._pq`` is optional.

* ``PSYCANCEL_NO_EXT=1``: do not build it (pure-Python install).
* ``PSYCANCEL_REQUIRE_EXT=1``: a failed build is an error (CI, wheels).
* otherwise: build it when a compiler works, else install without it.

The extension needs no libpq to build: it resolves libpq's symbols at run
time with dlopen/dlsym. Cython (>= 3.1) is a build requirement
(``pyproject.toml``); the sdist ships the ``.pyx`` only.

Binary wheels (``docs/wheels.md``):

* ``PSYCANCEL_BUNDLE_LIBPQ=<prefix>``: link the extension with
  ``<prefix>/lib``'s libpq (no header, no symbol is used: the link only
  records the dependency), so that the wheel repair tool (auditwheel,
  delocate, delvewheel) copies libpq and its TLS libraries into the wheel.
  At run time ``psycancel.pq.libfind`` finds that copy through the
  extension and ``Libpq.load()`` uses it by default. Implies
  ``PSYCANCEL_REQUIRE_EXT`` and a forced rebuild of the extension.
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

HERE = Path(__file__).parent
PYX = HERE / "psycancel_c" / "_pq.pyx"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _bundle_prefix() -> Path | None:
    """``$PSYCANCEL_BUNDLE_LIBPQ``: the prefix of the libpq to link (wheels)."""
    value = os.environ.get("PSYCANCEL_BUNDLE_LIBPQ", "").strip()
    if not value:
        return None
    prefix = Path(value).resolve()
    lib = prefix / "lib"
    names = ("libpq.lib",) if sys.platform == "win32" else ("libpq.dylib", "libpq.so")
    if not any((lib / name).exists() for name in names):
        raise SystemExit(f"PSYCANCEL_BUNDLE_LIBPQ={value}: no shared libpq in {lib}")
    return prefix


def _limited_api() -> bool:
    return _flag("PSYCANCEL_LIMITED_API")


LIMITED_API_VERSION = (3, 10)
"""Oldest CPython the abi3 build supports (``requires-python``)."""


class OptionalBuildExt(build_ext):  # type: ignore[misc]
    """``build_ext`` that tolerates a failure unless PSYCANCEL_REQUIRE_EXT is set."""

    def run(self) -> None:
        if _bundle_prefix() is not None:
            # A previous build in build/ may be linked without libpq: relink.
            self.force = True
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
        if _flag("PSYCANCEL_REQUIRE_EXT") or _bundle_prefix() is not None:
            raise
        print(
            f"WARNING: the compiled twin was not built ({ex}); "
            "psycancel will use its ctypes twin",
            file=sys.stderr,
        )


def _link_options(prefix: Path | None) -> dict[str, Any]:
    """Extension keywords that link the bundled libpq (``PSYCANCEL_BUNDLE_LIBPQ``)."""
    if prefix is None:
        return {}
    lib = str(prefix / "lib")
    if sys.platform == "win32":
        return {"library_dirs": [lib], "libraries": ["libpq"]}
    if sys.platform == "darwin":
        # ld64 keeps every -l library; libpq's install name is absolute, which
        # delocate rewrites to @loader_path/.../.dylibs/.
        return {"library_dirs": [lib], "extra_link_args": ["-lpq"]}
    # GNU ld / lld: many toolchains default to --as-needed, which would drop a
    # library whose symbols the extension never references (it uses dlsym).
    # The RUNPATH lets the extension load from the build tree; auditwheel
    # replaces it with $ORIGIN/../psycancel.libs.
    return {
        "library_dirs": [lib],
        "runtime_library_dirs": [lib],
        "extra_link_args": ["-Wl,--push-state,--no-as-needed", "-lpq", "-Wl,--pop-state"],
    }


def _extensions() -> list[object]:
    bundle = _bundle_prefix()
    if _flag("PSYCANCEL_NO_EXT"):
        if bundle is not None:
            raise SystemExit("PSYCANCEL_BUNDLE_LIBPQ needs the extension: unset PSYCANCEL_NO_EXT")
        return []
    if not PYX.exists():
        if _flag("PSYCANCEL_REQUIRE_EXT") or bundle is not None:
            raise SystemExit(f"PSYCANCEL_REQUIRE_EXT is set but {PYX} is missing")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if _flag("PSYCANCEL_REQUIRE_EXT") or bundle is not None:
            raise
        print("WARNING: Cython is not available; skipping the compiled twin", file=sys.stderr)
        return []
    from setuptools import Extension

    options = _link_options(bundle)
    libraries = ["dl"] if sys.platform.startswith("linux") else []
    options["libraries"] = options.get("libraries", []) + libraries
    if _limited_api():
        major, minor = LIMITED_API_VERSION
        options["define_macros"] = [("Py_LIMITED_API", f"0x{major:02X}{minor:02X}0000")]
        options["py_limited_api"] = True
    ext = Extension("psycancel_c._pq", [str(PYX.relative_to(HERE))], **options)
    return list(
        cythonize(
            [ext],
            compiler_directives={"language_level": "3", "binding": True, "embedsignature": True},
        )
    )


def _options() -> dict[str, Any]:
    if not _limited_api():
        return {}
    major, minor = LIMITED_API_VERSION
    return {"bdist_wheel": {"py_limited_api": f"cp{major}{minor}"}}


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt}, options=_options())
