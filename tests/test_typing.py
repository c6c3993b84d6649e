"""``mypy --strict`` on tests/typing_sample.py: the public types accept connections only."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).with_name("typing_sample.py")
MARK = re.compile(r"#\s*E:\s*([a-z-]+)\s*$")
ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<text>.*)\[(?P<code>[a-z-]+)\]$")


def expected_errors() -> set[tuple[int, str]]:
    """``(line, error code)`` of every ``# E: code`` marker in the sample."""
    found = set()
    for number, line in enumerate(SAMPLE.read_text().splitlines(), start=1):
        mark = MARK.search(line)
        if mark:
            found.add((number, mark.group(1)))
    return found


def mypy_cache(tmp_path: Path) -> Path:
    """mypy's incremental cache: kept in the venv (the test's 6 CPU-s fall to about
    1 from the second run on, e.g. the other twin's), else in ``tmp_path``."""
    kept = Path(sys.prefix) / ".psycancel-mypy-cache"
    try:
        kept.mkdir(exist_ok=True)
    except OSError:
        return tmp_path / "mypy-cache"
    return kept if os.access(kept, os.W_OK) else tmp_path / "mypy-cache"


def test_mypy_rejects_what_is_not_a_connection(tmp_path: Path) -> None:
    for name in ("mypy", "psycopg2", "psycopg", "aiopg"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (the test and drivers extras)")
    try:
        importlib.metadata.distribution("types-psycopg2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("types-psycopg2 is not installed (the test extra)")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--no-color-output",
            "--cache-dir",
            str(mypy_cache(tmp_path)),
            str(SAMPLE),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=SAMPLE.parent.parent,
    )
    errors = set()
    other = []
    for line in done.stdout.splitlines():
        match = ERROR.match(line)
        if match and Path(match["file"]).name == SAMPLE.name:
            errors.add((int(match["line"]), match["code"]))
        elif ": note:" not in line:
            other.append(line)
    assert not other, done.stdout + done.stderr
    assert errors == expected_errors(), done.stdout
    assert done.returncode == 1, done.stdout + done.stderr  # 1: type errors found (not a crash)
    assert len(errors) == 10
