"""Django configured once, in a child process of the Django tests, for one backend.

Shared by ``django_child.py`` and ``django_deadline_child.py``: Django is
configured once per process and picks its driver at import, so each child
calls :func:`setup_django` first, before anything imports Django.
"""

from __future__ import annotations

import sys

from testing.conninfo import parse_conninfo


def setup_django(backend: str, dsn: str) -> None:
    """Configure Django's ``default`` database from ``dsn``, on ``backend``'s driver.

    ``backend`` is ``psycopg`` or ``psycopg2``: Django's PostgreSQL backend
    takes psycopg 3 when it can import it, so for psycopg2 ``import psycopg``
    is made to fail first. A ``hostaddr`` in ``dsn`` (the kernel fault's path:
    the namespace's address, the host name kept) is passed on to the driver.
    """
    if backend == "psycopg2":
        sys.modules["psycopg"] = None  # type: ignore[assignment]  # Django falls back to psycopg2

    import django
    from django.conf import settings

    params = parse_conninfo(dsn)
    options = {"sslmode": params.get("sslmode", "prefer")}
    if "hostaddr" in params:
        options["hostaddr"] = params["hostaddr"]
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": params.get("dbname", "postgres"),
                "USER": params.get("user", ""),
                "HOST": params["host"],
                "PORT": params["port"],
                "OPTIONS": options,
            }
        },
        USE_TZ=True,
    )
    django.setup()
