"""The parent side of ``tests/support/gevent_child.py``: proxy, child, rounds (tests and benchmark).

The delaying proxy runs in this process, the monkey-patched child in its
own: the proxy's threads never compete with the hub being measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.proxy import ServerLike, TcpProxy

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("gevent_child.py")


def gevent_rounds(
    server: ServerLike,
    *,
    how: str,
    impl: str,
    delay: float,
    blackhole: bool = False,
    timeout: float = 30.0,
    sslmode: str = "disable",
    repeats: int = 1,
    pythonpath: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run ``repeats`` cancels in a gevent child (twin ``impl``); their results.

    Each cancel goes through a proxy that delays every chunk by ``delay``
    seconds each way, or (``blackhole``) never answers; set only for the
    cancel (the session was made before). ``timeout``: the cancel's.
    """
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join([*(pythonpath or []), str(ROOT)])
    child_env["PSYCANCEL_IMPL"] = impl
    child_env.update(env or {})
    results: list[dict[str, Any]] = []
    with TcpProxy(server.host, server.port).start() as proxy:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env,
            cwd=str(ROOT),
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            args = {
                "dsn": proxy.dsn(server, sslmode),
                "monitor_dsn": server.dsn("disable"),
                "how": how,
                "repeats": repeats,
                "timeout": timeout,
            }
            proc.stdin.write(json.dumps(args) + "\n")
            proc.stdin.flush()
            for line in proc.stdout:
                if line.startswith("READY"):
                    if blackhole:
                        proxy.blackhole()
                    else:
                        proxy.forward(delay)
                elif line.startswith("RESTORE"):
                    proxy.forward(0.0)
                elif line.startswith("RESULT "):
                    results.append(json.loads(line[len("RESULT ") :]))
                    continue
                elif line.startswith("DONE"):
                    break
                else:
                    continue
                proc.stdin.write("\n")
                proc.stdin.flush()
            proc.stdin.close()
            proc.stdin = None
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        if proc.returncode != 0 or len(results) != repeats:
            raise AssertionError(f"the gevent child failed (exit {proc.returncode})\n{err}")
    return results
