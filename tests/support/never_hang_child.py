"""Child process of tests/test_never_hang.py: every entry point, one timeout value.

Usage: ``python never_hang_child.py SPEC_JSON``. The spec gives the DSNs, the
libpq files, and ``timeout`` as text (``repr`` of an int or a float, evaluated
here with ``ast.literal_eval`` so that ints beyond the float range survive).
Each entry point is called with that timeout on an idle connection (cancelling
an idle connection is harmless) and its outcome printed as one JSON object:
``{"case": outcome}`` where outcome is ``"ok"`` or the exception's class name
(with its message after a colon). The parent bounds the whole run with a
timeout: a hang is a failure there, never here.
"""

from __future__ import annotations

import ast
import asyncio
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any


def _outcome(call: Callable[[], object]) -> str:
    try:
        call()
    except BaseException as ex:  # reported, never hidden
        return f"{type(ex).__name__}: {ex}"
    return "ok"


def main(spec: dict[str, Any]) -> dict[str, str]:
    import trio

    import psycancel
    from psycancel.pq import Libpq
    from testing import client
    from testing.client import Client

    warnings.simplefilter("ignore", psycancel.InsecureCancelWarning)
    timeout = ast.literal_eval(spec["timeout"])
    new = Libpq.load(spec["new_libpq"])
    conns = {
        "plain": client.connect(spec["dsn_plain"], libpq=new),
        "tls": client.connect(spec["dsn_tls"], libpq=new),
    }
    if spec["legacy_libpq"]:  # "": none on this machine ($PSYCANCEL_TEST_LEGACY_LIBPQ=none)
        old = Libpq.load(spec["legacy_libpq"])
        conns["legacy-plain"] = client.connect(spec["dsn_plain"], libpq=old)
        conns["legacy-tls"] = client.connect(spec["dsn_tls"], libpq=old)
    out: dict[str, str] = {}
    for name, conn in conns.items():
        out[f"{name}/sync"] = _outcome(lambda c=conn: psycancel.cancel(c, timeout=timeout))
        for offload in (None, True, False):
            out[f"{name}/asyncio-offload={offload}"] = _outcome(
                lambda c=conn, o=offload: asyncio.run(
                    asyncio.wait_for(psycancel.cancel_async(c, timeout=timeout, offload=o), 30)
                )
            )
        out[f"{name}/trio"] = _outcome(lambda c=conn: trio.run(_trio_cancel, c, timeout, psycancel))

        def after_sync(c: Client = conn) -> None:
            with psycancel.cancel_after(c, timeout, timeout=timeout):
                pass

        async def after_async(c: Client = conn) -> None:
            async with psycancel.cancel_after(c, timeout, timeout=timeout):
                await asyncio.sleep(0)

        out[f"{name}/cancel_after-sync"] = _outcome(after_sync)
        out[f"{name}/cancel_after-asyncio"] = _outcome(lambda: asyncio.run(after_async()))
    for conn in conns.values():
        conn.finish()
    return out


async def _trio_cancel(conn: object, timeout: object, psycancel: Any) -> None:
    import trio

    with trio.fail_after(30):
        await psycancel.cancel_async(conn, timeout=timeout)


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
