"""libpq conninfo strings: quote, build and parse ``key=value`` strings and URIs."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping

__all__ = ["ConninfoValue", "make_conninfo", "parse_conninfo", "quote_conninfo_value"]

#: A value accepted in a conninfo string built by :func:`make_conninfo`.
ConninfoValue = str | int | os.PathLike[str]


def quote_conninfo_value(value: ConninfoValue) -> str:
    """Render *value* for a libpq ``key=value`` conninfo string.

    Values that are empty or contain whitespace, a single quote or a backslash
    are single-quoted, with ``'`` and ``\\`` escaped by a backslash.
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if text and not any(c.isspace() or c in "'\\" for c in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def make_conninfo(params: Mapping[str, ConninfoValue]) -> str:
    """Join *params* into a libpq conninfo string, in the mapping's order."""
    return " ".join(f"{key}={quote_conninfo_value(value)}" for key, value in params.items())


def parse_conninfo(conninfo: str) -> dict[str, str]:
    """Parse a libpq conninfo string (``key=value`` form or a URI) into a dict.

    A small re-implementation of libpq's parser for the tests' own use; it
    raises :class:`ValueError` on syntax errors. URIs with several hosts keep
    the comma-separated ``host`` and ``port`` lists as they are.
    """
    if conninfo.startswith(("postgresql://", "postgres://")):
        return _parse_uri(conninfo)
    params: dict[str, str] = {}
    i, n = 0, len(conninfo)
    while True:
        while i < n and conninfo[i].isspace():
            i += 1
        if i >= n:
            return params
        start = i
        while i < n and conninfo[i] != "=" and not conninfo[i].isspace():
            i += 1
        key = conninfo[start:i]
        while i < n and conninfo[i].isspace():
            i += 1
        if i >= n or conninfo[i] != "=" or not key:
            raise ValueError(f"missing '=' after {key!r} in conninfo string")
        i += 1
        while i < n and conninfo[i].isspace():
            i += 1
        value: list[str] = []
        if i < n and conninfo[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted string in conninfo string")
                c = conninfo[i]
                if c == "\\" and i + 1 < n:
                    value.append(conninfo[i + 1])
                    i += 2
                elif c == "'":
                    i += 1
                    break
                else:
                    value.append(c)
                    i += 1
        else:
            while i < n and not conninfo[i].isspace():
                if conninfo[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(conninfo[i])
                i += 1
        params[key] = "".join(value)


def _parse_uri(uri: str) -> dict[str, str]:
    _, _, rest = uri.partition("://")
    netloc, _, tail = rest.partition("/")
    if "?" in netloc:  # postgresql://host?sslmode=... without a path
        netloc, _, query = netloc.partition("?")
        path = ""
    else:
        path, _, query = tail.partition("?")
    params: dict[str, str] = {}
    unquote = urllib.parse.unquote
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, sep, password = userinfo.partition(":")
        if user:
            params["user"] = unquote(user)
        if sep:
            params["password"] = unquote(password)
    hosts: list[str] = []
    ports: list[str] = []
    for item in netloc.split(",") if netloc else []:
        if item.startswith("["):
            host, _, after = item[1:].partition("]")
            port = after[1:] if after.startswith(":") else ""
        else:
            host, _, port = item.partition(":")
        hosts.append(unquote(host))
        ports.append(port)
    if any(hosts):
        params["host"] = ",".join(hosts)
    if any(ports):
        params["port"] = ",".join(ports)
    if path:
        params["dbname"] = unquote(path)
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        params[key] = value
    return params
