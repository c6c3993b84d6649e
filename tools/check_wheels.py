"""Check psycancel's wheels (tools/cross_wheels.py's) the ways that run on this Linux machine.

    python tools/check_wheels.py WHEEL...     # exit status 1 if any check fails

Run with an interpreter that has auditwheel, abi3audit, pyelftools and macholib
(build/wheel/tools-venv, tools/build_wheel.sh). For every wheel:

* its files: the library's packages and its .dist-info only, no code that builds
  or starts PostgreSQL, RECORD's hashes and sizes right, WHEEL's tags those of
  the file name; a platform wheel holds exactly one extension, the pure wheel none;
* Linux (ELF): the machine type of the tag, only PyInit__pq exported, DT_NEEDED only the C library
  (glibc: libc.so.6, libdl.so.2, libm.so.6; musl: libc.musl-<arch>.so.1), no
  RPATH/RUNPATH, and ``auditwheel show`` accepting the wheel's own platform
  tag (manylinux_2_17 / musllinux_1_2) with no external library;
* macOS (Mach-O, no macOS tool here): the CPU type of the tag, a dynamic
  library exporting only _PyInit__pq (and the linker's ___dso_handle,
  __mh_dylib_header), whose only dependency is
  /usr/lib/libSystem.B.dylib, minimum macOS
  (LC_BUILD_VERSION) equal to the tag's, an (ad hoc) code signature on
  arm64, and the undefined symbols listed: Python's (``_Py*``, checked by
  abi3audit) and the C library functions it calls;
* ``abi3audit --strict`` for the abi3 wheels (ELF and Mach-O alike).

One line per wheel: the tag, the size, the verdict; details above it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

GLIBC_LIBS = {"libc.so.6", "libdl.so.2", "libm.so.6"}
ELF_MACHINE = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64"}
MACHO_CPU = {"x86_64": 0x01000007, "arm64": 0x0100000C}
LIBSYSTEM = "/usr/lib/libSystem.B.dylib"
DEV_MARKERS = ("initdb", "pg_ctl", "build_postgres", "ThrowawayServer")
LIBRARY_TOPS = ("psycancel", "psycancel_c")


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def check_files(whl: zipfile.ZipFile, name: str, problems: list[str]) -> list[str]:
    """The file-level checks; returns the extension modules' names."""
    names = [n for n in whl.namelist() if not n.endswith("/")]
    dist_infos = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    if len(dist_infos) != 1:
        problems.append(f"{len(dist_infos)} .dist-info folders")
        return []
    (dist_info,) = dist_infos
    for n in names:
        top = n.split("/", 1)[0]
        if top not in LIBRARY_TOPS and top != dist_info:
            problems.append(f"{n}: outside the library's packages")
        elif n.endswith((".py", ".pyx", ".pxd", ".pxi", ".pyi")):
            text = whl.read(n).decode("utf-8", "replace")
            problems += [f"{n}: mentions {m!r}" for m in DEV_MARKERS if m in text]
    record = list(csv.reader(io.StringIO(whl.read(f"{dist_info}/RECORD").decode())))
    listed = {row[0] for row in record}
    if listed != set(names):
        problems.append(f"RECORD lists {sorted(listed ^ set(names))} wrongly")
    for row in record:
        if row[0].endswith("/RECORD") or row[0] not in names:
            continue
        data = whl.read(row[0])
        if row[1] != _record_hash(data) or int(row[2]) != len(data):
            problems.append(f"RECORD: wrong hash or size for {row[0]}")
    wheel_meta = whl.read(f"{dist_info}/WHEEL").decode()
    tags = {
        line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")
    }
    py, abi, plat = name[: -len(".whl")].split("-")[-3:]
    expected = {
        f"{a}-{b}-{c}" for a in py.split(".") for b in abi.split(".") for c in plat.split(".")
    }
    if tags != expected:
        problems.append(f"WHEEL tags {sorted(tags)} != file name's {sorted(expected)}")
    pure = "Root-Is-Purelib: true" in wheel_meta
    if pure != (plat == "any"):
        problems.append(f"Root-Is-Purelib does not fit the platform tag {plat}")
    return [n for n in names if n.endswith((".so", ".pyd", ".dylib"))]


def check_elf(data: bytes, plat: str, problems: list[str]) -> None:
    """DT_NEEDED, RPATH and machine of a Linux extension."""
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(data))
    arch = "aarch64" if plat.endswith("aarch64") else "x86_64"
    if elf["e_machine"] != ELF_MACHINE[arch]:
        problems.append(f"ELF machine {elf['e_machine']}, expected {ELF_MACHINE[arch]}")
    needed: list[str] = []
    for section in elf.iter_sections():
        if isinstance(section, DynamicSection):
            for tag in section.iter_tags():
                if tag.entry.d_tag == "DT_NEEDED":
                    needed.append(tag.needed)
                elif tag.entry.d_tag in ("DT_RPATH", "DT_RUNPATH"):
                    problems.append(f"{tag.entry.d_tag} set")
    dynsym = elf.get_section_by_name(".dynsym")
    exported = sorted(
        sym.name
        for sym in (dynsym.iter_symbols() if dynsym is not None else [])
        if sym["st_shndx"] != "SHN_UNDEF" and sym["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK")
    )
    if exported != ["PyInit__pq"]:
        problems.append(f"exports {exported}, expected only PyInit__pq")
    allowed = {f"libc.musl-{arch}.so.1"} if plat.startswith("musllinux") else GLIBC_LIBS
    if not set(needed) <= allowed:
        problems.append(f"DT_NEEDED {needed}: more than the C library {sorted(allowed)}")
    print(f"  ELF {arch}, DT_NEEDED {needed}, exports {exported}")


def check_auditwheel(path: Path, plat: str, problems: list[str]) -> None:
    """``auditwheel show``: the wheel's own tag, no external library."""
    # An empty search path: the host's own libraries (glibc, x86_64) are not the
    # target's; the C library is on the policy's list anyway.
    with tempfile.TemporaryDirectory() as empty:
        proc = subprocess.run(
            [sys.executable, "-m", "auditwheel", "show", "--json", "--ldpaths", empty, str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        problems.append(f"auditwheel show failed: {proc.stderr.strip()[-400:]}")
        return
    report = json.loads(proc.stdout)
    wanted = plat.split(".")[0]
    print(
        f"  auditwheel show: tag {report['overall_tag']!r}, external libraries "
        f"{sorted(report['external_libs'])}, versioned symbols {report['versioned_symbols']}"
    )
    if report["overall_tag"] != wanted:
        problems.append(f"auditwheel accepts {report['overall_tag']!r}, not {wanted!r}")
    if report["external_libs"]:
        problems.append(f"auditwheel: external libraries {sorted(report['external_libs'])}")


def check_macho(data: bytes, plat: str, problems: list[str]) -> None:
    """Load commands, minimum macOS and undefined symbols of a macOS extension."""
    from macholib import mach_o
    from macholib.MachO import MachO
    from macholib.SymbolTable import SymbolTable

    with tempfile.NamedTemporaryFile(suffix=".so") as tmp:
        tmp.write(data)
        tmp.flush()
        macho = MachO(tmp.name)
        (header,) = macho.headers
        arch = plat.rsplit("_", 1)[1] if not plat.endswith("x86_64") else "x86_64"
        if header.header.cputype != MACHO_CPU[arch]:
            problems.append(f"Mach-O CPU type {header.header.cputype:#x}, expected {arch}")
        if header.header.filetype not in (mach_o.MH_DYLIB, mach_o.MH_BUNDLE):
            problems.append(f"Mach-O file type {header.header.filetype}")
        dylibs: list[str] = []
        minos = ""
        signed = False
        for load, cmd, extra in header.commands:
            if load.cmd in (
                mach_o.LC_LOAD_DYLIB,
                mach_o.LC_LOAD_WEAK_DYLIB,
                mach_o.LC_REEXPORT_DYLIB,
            ):
                dylibs.append(extra.rstrip(b"\0").decode())
            elif load.cmd == mach_o.LC_BUILD_VERSION:
                minos = f"{cmd.minos >> 16}.{(cmd.minos >> 8) & 0xFF}"
            elif load.cmd in (mach_o.LC_RPATH,):
                problems.append("LC_RPATH set")
            elif load.cmd == mach_o.LC_CODE_SIGNATURE:
                signed = True
        symbols = SymbolTable(macho, header)
        undefined = sorted(name.decode() for _, name in symbols.undefsyms)
        exported = sorted(name.decode() for _, name in symbols.extdefsyms)
    major, minor = plat.split("_")[1:3]
    if minos != f"{major}.{minor}":
        problems.append(f"minimum macOS {minos!r}, tag says {major}.{minor}")
    if arch == "arm64" and not signed:
        problems.append("no LC_CODE_SIGNATURE: arm64 macOS runs signed code only (ad hoc will do)")
    if dylibs != [LIBSYSTEM]:
        problems.append(f"loads {dylibs}, expected only {LIBSYSTEM}")
    # The linker's own symbols of every Mach-O library, then the module's init.
    linker = {"___dso_handle", "__mh_dylib_header", "__mh_bundle_header"}
    if [s for s in exported if s not in linker] != ["_PyInit__pq"]:
        problems.append(f"exports {exported}, expected only _PyInit__pq")
    python = [s for s in undefined if s.startswith(("_Py", "__Py"))]
    libc = [s for s in undefined if s not in python]
    print(f"  Mach-O {arch}, minos {minos}, signed {signed}, loads {dylibs}, exports {exported}")
    print(f"  undefined: {len(python)} Python symbols, C library: {' '.join(libc)}")


def check_abi3(path: Path, problems: list[str]) -> None:
    """``abi3audit --strict`` on the wheel."""
    proc = subprocess.run(
        [sys.executable, "-m", "abi3audit", "--strict", "--summary", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, COLUMNS="400"),  # its console wraps at 80 columns otherwise
    )
    summary = " ".join(proc.stdout.split())
    print(f"  abi3audit --strict: {summary or proc.stderr.strip()[-300:]}")
    if proc.returncode != 0:
        problems.append("abi3audit --strict failed")


def check(path: Path) -> bool:
    """Every check of one wheel; prints its verdict line."""
    problems: list[str] = []
    py, abi, plat = path.name[: -len(".whl")].split("-")[-3:]
    print(f"{path.name}")
    with zipfile.ZipFile(path) as whl:
        extensions = check_files(whl, path.name, problems)
        if plat == "any":
            if extensions:
                problems.append(f"a pure wheel with extensions {extensions}")
        elif len(extensions) != 1:
            problems.append(f"{len(extensions)} extensions, expected 1")
        for ext in extensions:
            data = whl.read(ext)
            if plat.startswith(("manylinux", "musllinux", "linux")):
                check_elf(data, plat, problems)
            elif plat.startswith("macosx"):
                check_macho(data, plat, problems)
            else:
                problems.append(f"no check for platform {plat}")
    if plat.startswith(("manylinux", "musllinux")):
        check_auditwheel(path, plat, problems)
    if abi == "abi3":
        check_abi3(path, problems)
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    verdict = "ok" if not problems else "FAIL"
    print(f"  -> {py}-{abi}-{plat}  {path.stat().st_size} bytes  {verdict}")
    return not problems


def main() -> int:
    """Check every wheel named on the command line."""
    paths = [Path(p) for p in sys.argv[1:]]
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    results = [check(p) for p in paths]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
