"""A PostgreSQL installation to run: ``$PSYCANCEL_PG_PREFIX``, or the cached build.

``tools/build_postgres.sh`` builds PostgreSQL (server and libpq, with
OpenSSL) once into a cache outside the clone; these functions find it,
build it on first use, and describe it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["cached_postgres_prefix", "find_postgres_prefix", "libpq_file", "postgres_version"]

_BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "build_postgres.sh"
_STAMP = ".psycancel-complete"


def cached_postgres_prefix() -> Path | None:
    """The prefix of an already finished build, without building anything.

    ``PSYCANCEL_PG_PREFIX`` if set, else the location ``tools/build_postgres.sh``
    uses by default, if its completion stamp exists; ``None`` otherwise.
    """
    env = os.environ.get("PSYCANCEL_PG_PREFIX")
    if env:
        return Path(env)
    cache = os.environ.get("PSYCANCEL_CACHE_DIR")
    if not cache:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cache = "/var/cache/psycancel"
        else:
            xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            cache = os.path.join(xdg, "psycancel")
    prefix = Path(cache) / f"postgresql-{os.environ.get('PSYCANCEL_PG_MAJOR', '18')}"
    if (prefix / _STAMP).is_file() and (prefix / "bin" / "postgres").is_file():
        return prefix
    return None


def libpq_file(prefix: Path) -> Path:
    """The shared libpq of the PostgreSQL installation at ``prefix``."""
    name = "libpq.5.dylib" if sys.platform == "darwin" else "libpq.so.5"
    return prefix / "lib" / name


def find_postgres_prefix(build: bool = True) -> Path:
    """Return a PostgreSQL installation prefix (with ``bin/``, ``lib/``).

    ``PSYCANCEL_PG_PREFIX`` if set; otherwise, when running from a source tree
    and *build* is true, the prefix printed by ``tools/build_postgres.sh``
    (which builds PostgreSQL on first use, showing progress on stderr).
    Raises :class:`RuntimeError` when neither is possible.
    """
    env = os.environ.get("PSYCANCEL_PG_PREFIX")
    if env:
        prefix = Path(env)
    elif build and _BUILD_SCRIPT.is_file():
        try:
            proc = subprocess.run(
                ["bash", str(_BUILD_SCRIPT)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=None,
                text=True,
                check=False,
            )
        except OSError as exc:
            raise RuntimeError(f"cannot run {_BUILD_SCRIPT}: {exc}") from exc
        lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(
                f"{_BUILD_SCRIPT} failed (exit status {proc.returncode}); see its "
                "output above, or set PSYCANCEL_PG_PREFIX to an existing "
                "PostgreSQL installation prefix"
            )
        prefix = Path(lines[-1])
    else:
        raise RuntimeError(
            "no PostgreSQL installation: set PSYCANCEL_PG_PREFIX to a PostgreSQL "
            "installation prefix (the directory holding bin/pg_ctl and "
            "lib/libpq), or run from a source checkout where "
            "tools/build_postgres.sh can build one"
        )
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (prefix / "bin" / tool).is_file():
            raise RuntimeError(
                f"{prefix} is not a PostgreSQL installation prefix: bin/{tool} is "
                "missing (check PSYCANCEL_PG_PREFIX)"
            )
    return prefix


def postgres_version(prefix: Path) -> str:
    """The output of ``<prefix>/bin/pg_config --version``, e.g. ``PostgreSQL 18.1``."""
    proc = subprocess.run(
        [str(prefix / "bin" / "pg_config"), "--version"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()
