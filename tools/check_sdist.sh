#!/usr/bin/env bash
# Check the source distribution as a user of the package index meets it.
#
#   bash tools/check_sdist.sh
#
# 1. build the sdist (python -m build, with build isolation);
# 2. its file list: the library, docs/, CHANGELOG.md, LICENSE, README.md, the
#    generated psycancel_c/_pq.c and the in-tree build backend; none of tests/,
#    testing/ (the throwaway server), tools/, benchmarks/, no build products;
# 3. twine check --strict (the README renders on the package page);
# 4. install it in fresh venvs, with build isolation, from a local wheel
#    directory that holds only setuptools (no Cython, no index):
#    (a) PSYCANCEL_NO_EXT=1           -> the ctypes twin, nothing compiled;
#    (b) no C compiler on PATH        -> a clean fallback to the ctypes twin;
#    (c) default                      -> the compiled twin, from the shipped C;
#    and (d) from a directory with setuptools and Cython, PSYCANCEL_CYTHONIZE=1
#    -> the compiled twin, regenerated from the sdist's .pyx sources.
#    Each venv runs `python -m psycancel info --json` and a real import.
#
# Environment: PYTHON (default .venv/bin/python if it exists, else python3);
# it needs `build` and `twine` (the "test" extra). C is compiled at -O0 here
# (CFLAGS): these builds prove the sdist, not the speed of the result.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
log() { printf '\n== check_sdist: %s\n' "$*" >&2; }
die() { printf 'check_sdist: error: %s\n' "$*" >&2; exit 1; }

if [ -n "${PYTHON:-}" ]; then python="$PYTHON"
elif [ -x .venv/bin/python ]; then python=.venv/bin/python
else python=python3; fi
"$python" -c 'import build, twine' 2>/dev/null ||
    die "$python needs the packages build and twine (pip install -e '.[test]')"

work="$(mktemp -d "${TMPDIR:-/tmp}/psycancel-sdist.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$SECONDS

log "sdist"
# (The lock alone: this writes psycancel_c/_pq.c again, which the editable
# builds of tools/matrix.sh read, sharing the lock.)
mkdir -p "$root/build"
flock "$root/build/.tree-build.lock" "$python" -m build --sdist --outdir "$work/dist" . >"$work/sdist.log" 2>&1 ||
    { tail -40 "$work/sdist.log" >&2; die "sdist failed"; }
sdist="$(ls "$work"/dist/psycancel-*.tar.gz)"
ls -l "$sdist" >&2

log "file list of $(basename "$sdist")"
"$python" - "$sdist" <<'PY' || die "the sdist's file list is wrong"
import sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    members = tar.getmembers()
top = members[0].name.split("/", 1)[0]
files = {m.name.split("/", 1)[1]: m.size for m in members if m.isfile()}
required = [
    "README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "setup.py", "PKG-INFO",
    "_build_backend/psycancel_build.py",
    "docs/drivers.md", "docs/offload.md", "docs/packaging.md", "docs/wheels.md",
    "psycancel/__init__.py", "psycancel/py.typed", "psycancel/pq/_ctypes/__init__.py",
    "psycancel_c/_pq.pyx", "psycancel_c/libpq.pxd", "psycancel_c/_pq.pyi",
    "psycancel_c/_pq.c",
]
bad = [f"missing: {name}" for name in required if name not in files]
for name in files:
    first = name.split("/", 1)[0]
    if first in ("tests", "testing", "tools", "benchmarks", "build", "dist", ".ci", ".venv"):
        bad.append(f"development file: {name}")
    if name.endswith((".so", ".pyd", ".o", ".pyc", ".html")) or "__pycache__" in name:
        bad.append(f"build product: {name}")
for name in files:
    if name.endswith((".py", ".pyx", ".pxd", ".pxi")) and name.startswith("psycancel"):
        with tarfile.open(sys.argv[1]) as tar:
            text = tar.extractfile(f"{top}/{name}").read().decode("utf-8", "replace")
        for marker in ("initdb", "pg_ctl", "build_postgres", "ThrowawayServer"):
            if marker in text:
                bad.append(f"{name}: mentions {marker!r} (code that runs PostgreSQL)")
for name in sorted(files):
    print(f"{files[name]:9d}  {name}", file=sys.stderr)
print(f"{len(files)} files, {sum(files.values())} bytes uncompressed", file=sys.stderr)
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
PY

log "twine check --strict"
"$python" -m twine check --strict "$sdist" >"$work/twine.log" 2>&1 ||
    { cat "$work/twine.log" >&2; die "twine check failed"; }
grep -qi warning "$work/twine.log" && { cat "$work/twine.log" >&2; die "twine warned"; }
cat "$work/twine.log" >&2

log "local wheel directories: setuptools only; setuptools and Cython"
"$python" -m pip download -q --no-deps -d "$work/only-setuptools" 'setuptools>=77' >&2
"$python" -m pip download -q --no-deps -d "$work/with-cython" 'setuptools>=77' 'Cython>=3.1' >&2
ls "$work/only-setuptools" "$work/with-cython" >&2

# No pip configuration or environment may add an index or other wheels.
clean=(env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT
       -u PIP_NO_INDEX -u PSYCANCEL_NO_EXT -u PSYCANCEL_REQUIRE_EXT -u PSYCANCEL_CYTHONIZE
       -u PSYCANCEL_BUNDLE_LIBPQ -u PSYCANCEL_LIMITED_API -u PSYCANCEL_IMPL -u PSYCANCEL_LIBPQ
       -u PYTHONPATH -u CC -u LDSHARED PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
       CFLAGS=-O0)
base_python="$("$python" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"

# install NAME WHEELDIR EXPECTED_TWIN [VAR=VALUE...]: a fresh venv, the sdist
# installed with build isolation from WHEELDIR only, then the checks.
install() {
    local name="$1" wheels="$2" twin="$3"; shift 3
    local venv="$work/venv-$name"
    log "($name) install with ${*:-defaults} from $(basename "$wheels"): expect the $twin twin"
    "$base_python" -m venv "$venv"
    "${clean[@]}" "$@" "$venv/bin/python" -m pip install -v --no-cache-dir --no-index \
        --find-links "$wheels" "$sdist" >"$work/install-$name.log" 2>&1 ||
        { tail -40 "$work/install-$name.log" >&2; die "($name) install failed"; }
    # Run outside the source tree, so that the installed copy is imported.
    (cd "$work" && "${clean[@]}" "$venv/bin/python" -m psycancel info --json >"info-$name.json")
    (cd "$work" && "${clean[@]}" "$venv/bin/python" - "$twin" "$venv" "info-$name.json" <<'PY')
import json, os, sys
twin, venv, info_file = sys.argv[1:]
info = json.load(open(info_file))
import psycancel, psycancel.pq as pq
from psycancel.pq import Libpq
assert os.path.realpath(psycancel.__file__).startswith(os.path.realpath(venv)), psycancel.__file__
assert pq.__impl__ == twin, (pq.__impl__, twin)
assert info["implementation"] == twin, info
lib = Libpq.load()
print(f"  psycancel {psycancel.__version__}: twin {pq.__impl__}, libpq {lib.version} at {lib.path}")
if twin == "c":
    import psycancel_c._pq as ext
    print(f"  compiled twin: {ext.__file__}")
else:
    import importlib.util
    assert importlib.util.find_spec("psycancel_c._pq") is None, "an extension was built"
PY
}

install a "$work/only-setuptools" python PSYCANCEL_NO_EXT=1
grep -q "Cython" "$work/install-a.log" && grep -n "Cython" "$work/install-a.log" >&2 &&
    die "(a) Cython was asked for"

nocc="$work/no-compiler-bin"
mkdir -p "$nocc"
install b "$work/only-setuptools" python PATH="$nocc"
grep -q "WARNING: the compiled twin was not built" "$work/install-b.log" ||
    { tail -20 "$work/install-b.log" >&2; die "(b) no warning about the compiled twin"; }
grep "WARNING: the compiled twin was not built" "$work/install-b.log" | cut -c1-160 >&2

install c "$work/only-setuptools" c

install d "$work/with-cython" c PSYCANCEL_CYTHONIZE=1
grep -q "Cythonizing\|Compiling psycancel_c/_pq.pyx" "$work/install-d.log" ||
    { tail -20 "$work/install-d.log" >&2; die "(d) the .pyx was not compiled by Cython"; }

log "sdist OK ($(basename "$sdist"), $((SECONDS - start)) s)"
