"""The PostgreSQL wire format of the cancel handshake, to check recorded bytes.

SSLRequest, GSSENCRequest, CancelRequest and BackendKeyData: build them, find them in what a
proxy recorded, render bytes for assertion messages.
"""

from __future__ import annotations

import struct

SSL_REQUEST_CODE = 80877103
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST = struct.pack(">II", 8, SSL_REQUEST_CODE)
GSSENC_REQUEST_CODE = 80877104
GSSENC_REQUEST = struct.pack(">II", 8, GSSENC_REQUEST_CODE)
"""The GSSENCRequest: the first bytes of a GSS-encrypted connection."""
CANCEL_CODE = struct.pack(">I", CANCEL_REQUEST_CODE)
TLS_HANDSHAKE_RECORD = b"\x16\x03"
"""The first bytes of a TLS record of type handshake (a ClientHello)."""


def cancel_request(pid: int, key: bytes) -> bytes:
    """The plaintext CancelRequest packet for backend ``pid`` and ``key``."""
    return struct.pack(">III", 12 + len(key), CANCEL_REQUEST_CODE, pid) + key


def backend_key(server_bytes: bytes, pid: int) -> bytes:
    """The cancel key of backend ``pid`` in a *plaintext* session's server bytes.

    Parses the BackendKeyData message (``K``, length, pid, key) of the session's
    startup; the key is 4 bytes (protocol 3.0) or 32 (3.2, from PostgreSQL 18).
    """
    i = 0
    while i + 5 <= len(server_bytes):
        kind = server_bytes[i : i + 1]
        (length,) = struct.unpack_from(">I", server_bytes, i + 1)
        if kind == b"K" and length >= 8 and struct.unpack_from(">I", server_bytes, i + 5)[0] == pid:
            return server_bytes[i + 9 : i + 1 + length]
        if kind in (b"S", b"N") and i == 0 and length > 0x10000:
            i += 1  # a one-byte answer to an SSLRequest / GSSENCRequest
            continue
        i += 1 + length
    raise AssertionError(f"no BackendKeyData for pid {pid} in the session's bytes")


def plaintext_cancels(data: bytes) -> list[tuple[int, int, bytes]]:
    """Every plaintext CancelRequest header found in ``data``: (length, pid, key)."""
    found: list[tuple[int, int, bytes]] = []
    start = 0
    while True:
        i = data.find(CANCEL_CODE, start)
        if i < 0:
            return found
        if i >= 4:
            (length,) = struct.unpack_from(">I", data, i - 4)
            if 16 <= length <= 12 + 256 and i + 8 <= len(data):
                (pid,) = struct.unpack_from(">I", data, i + 4)
                found.append((length, pid, data[i + 8 : i - 4 + length]))
        start = i + 1


def tls_records_after_hello(data: bytes) -> list[bytes]:
    """The bodies of a client's TLS records after its ClientHello (``data`` starts with it).

    The ClientHello is clear text by design, and its extension list may spell a
    PID by chance: an empty extension before extended_master_secret
    (``00 00 00 17 00 00``) holds PID 5888 (``00 00 17 00``; seen once). Record
    headers are framing. What is left is sealed. A stream that does not parse as
    records is returned whole (a check then covers every byte).
    """
    parts: list[bytes] = []
    i = 0
    while i < len(data):
        if i + 5 > len(data):
            return [data]
        end = i + 5 + int.from_bytes(data[i + 3 : i + 5], "big")
        if end > len(data):
            return [data]
        if i > 0:
            parts.append(data[i + 5 : end])
        i = end
    return parts


def describe_bytes(data: bytes, limit: int = 48) -> str:
    """A short hex rendering of ``data`` for assertion messages."""
    more = f"... ({len(data)} bytes)" if len(data) > limit else ""
    return data[:limit].hex(" ") + more
