"""``python -m testing.demo``: the quick start's demo, against a throwaway server.

Starts a throwaway TLS server (building PostgreSQL on first use), then runs
``python -m psycancel demo`` with its plain and its verify-full DSN. The
demo loads psycancel's default libpq; unless ``$PSYCANCEL_LIBPQ`` says
otherwise, that is the server build's libpq here.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .installation import find_postgres_prefix
from .server import ThrowawayServer

__all__ = ["main"]


def main() -> int:
    """Run the demo; its exit status."""
    with ThrowawayServer(find_postgres_prefix()) as server:
        env = dict(os.environ)
        env.setdefault("PSYCANCEL_LIBPQ", str(server.libpq_path))
        print(f"throwaway PostgreSQL on 127.0.0.1:{server.port}", flush=True)
        command = [sys.executable, "-m", "psycancel", "demo"]
        command += ["--dsn", server.dsn_plain, "--dsn", server.dsn_verify]
        return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
