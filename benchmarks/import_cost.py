"""What ``import psycancel`` costs a program, against ``import psycopg2``, in one run.

    python benchmarks/import_cost.py              # 15 rounds
    python benchmarks/import_cost.py --quick      # smoke form (correctness only)
    python benchmarks/import_cost.py --json out.json
    python benchmarks/import_cost.py --root /tmp/old-tree   # another checkout's psycancel

Each round runs each contender in a fresh interpreter (``python -X importtime
-c "import NAME"``), the contenders in a new random order every round so that
noise hits them alike, and sums the cumulative times of the top-level imports
in the ``-X importtime`` report (microseconds spent importing each module and
everything it imported that was not imported yet), the interpreter's own
start-up imports left out. It prints the medians, the ratio psycancel / psycopg2 (target of
issue 20: at most 1.5), and which of the heavy standard modules (asyncio,
ssl, subprocess, tempfile, bz2, lzma, concurrent.futures, logging) and
framework packages the import loaded, with the count of modules each import
added.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""Where psycancel is imported from (``--root``): this checkout by default."""
TARGET_RATIO = 1.5
CONTENDERS = {
    "psycancel": "import psycancel",
    "psycopg2": "import psycopg2",
    "psycancel.cancel": "import psycancel; psycancel.cancel",
    "+ asyncio path": "import psycancel, psycancel._engine.asyncio_loop; psycancel.cancel",
}
"""What each contender runs. The last two are not imports a driver pays for by
importing psycancel: they are what the first blocking cancel, and the first
asynchronous one under asyncio, import then (the ratio is about the first)."""
HEAVY = (
    "asyncio",
    "ssl",
    "subprocess",
    "tempfile",
    "bz2",
    "lzma",
    "concurrent.futures",
    "logging",
    "anyio",
    "trio",
    "gevent",
    "django",
    "sqlalchemy",
)
_LINE = re.compile(r"^import time:\s*(\d+)\s*\|\s*(\d+)\s*\|(\s*)(\S+)\s*$")


def _top_level(code: str) -> dict[str, int]:
    """Top-level modules ``code`` imported, with their cumulative microseconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,  # (sys.path[0] of -c is the working directory)
        timeout=120,
        check=True,
    )
    found: dict[str, int] = {}
    for line in done.stderr.splitlines():
        match = _LINE.match(line)
        if match and len(match.group(3)) == 1:
            found[match.group(4)] = int(match.group(2))
    return found


_STARTUP: set[str] = set()


def import_us(code: str) -> int:
    """Microseconds ``code`` spent importing, in a fresh interpreter.

    The sum of the cumulative times of the top-level imports that the
    interpreter's start-up (``-c pass``) does not make.
    """
    if not _STARTUP:
        _STARTUP.update(_top_level("pass"))
    return sum(us for name, us in _top_level(code).items() if name not in _STARTUP)


def loaded(statement: str) -> tuple[int, list[str]]:
    """(modules ``statement`` added, the heavy ones among them), in a fresh interpreter."""
    code = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "added = set(sys.modules) - before\n"
        f"heavy = [m for m in {HEAVY!r} if m in added]\n"
        "print(json.dumps([len(added), heavy]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    ).stdout
    count, heavy = json.loads(out)
    return int(count), list(heavy)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 rounds (smoke form)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument(
        "--root", type=Path, help="import psycancel from this checkout (e.g. an older commit's)"
    )
    args = parser.parse_args()
    if args.root:
        global ROOT
        ROOT = args.root.resolve()
    rounds = 3 if args.quick else args.rounds

    samples: dict[str, list[int]] = {name: [] for name in CONTENDERS}
    for _ in range(rounds):
        order = list(CONTENDERS)
        random.shuffle(order)
        for name in order:
            samples[name].append(import_us(CONTENDERS[name]))

    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratio = medians["psycancel"] / medians["psycopg2"]
    print(
        f"python {sys.version.split()[0]}, {rounds} rounds, -X importtime (cumulative), "
        f"psycancel from {ROOT}, PSYCANCEL_IMPL={os.environ.get('PSYCANCEL_IMPL', 'auto')}"
    )
    print(f"{'contender':<17} {'median ms':>9} {'min ms':>7} {'max ms':>7}  modules added, heavy")
    report: dict[str, object] = {"rounds": rounds, "ratio": ratio, "target": TARGET_RATIO}
    for name in CONTENDERS:
        values = samples[name]
        count, heavy = loaded(CONTENDERS[name])
        print(
            f"{name:<17} {medians[name] / 1000:>9.1f} {min(values) / 1000:>7.1f} "
            f"{max(values) / 1000:>7.1f}  {count}, {', '.join(heavy) or 'none'}"
        )
        report[name] = {
            "median_us": medians[name],
            "samples_us": values,
            "modules": count,
            "heavy": heavy,
        }
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"ratio psycancel / psycopg2: {ratio:.2f}x (target <= {TARGET_RATIO}x: {verdict})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
