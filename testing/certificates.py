"""A throwaway CA and server certificates, made with the ``openssl`` command."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

__all__ = ["make_ca", "make_server_cert"]

_LOOPBACK = "127.0.0.1"

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = psycancel

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError(
            "the 'openssl' command is needed to make the throwaway TLS "
            "certificates, and it is not on PATH (install OpenSSL)"
        )
    proc = subprocess.run(
        [exe, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"openssl {' '.join(args[:2])} failed (exit status {proc.returncode}):\n"
            f"{proc.stderr.strip()}"
        )


def _write_openssl_config(path: Path, san: str) -> None:
    path.write_text(_OPENSSL_CONFIG.format(san=san or "DNS:localhost"))


def make_ca(
    directory: Path, name: str = "ca", *, common_name: str | None = None
) -> tuple[Path, Path]:
    """Make a self-signed CA with ``openssl``; return ``(cert_file, key_file)``.

    The files are ``<directory>/<name>.crt`` and ``<directory>/<name>.key``
    (mode 0600); the certificate is valid for a week.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"{name}.cnf"
    _write_openssl_config(config, "")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-new", "-config", str(config), "-extensions", "v3_ca",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "7",
        "-subj", f"/CN={common_name or f'psycancel throwaway CA {secrets.token_hex(4)}'}",
        cwd=directory,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def make_server_cert(
    directory: Path,
    ca_cert: Path,
    ca_key: Path,
    name: str = "server",
    *,
    dns_names: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = (_LOOPBACK,),
) -> tuple[Path, Path]:
    """Make a server certificate signed by the given CA; return ``(cert, key)``.

    The subject alternative names are *dns_names* and *ip_addresses*; the
    common name is the first DNS name. The key file has mode 0600.
    """
    directory.mkdir(parents=True, exist_ok=True)
    san = ", ".join([f"DNS:{d}" for d in dns_names] + [f"IP:{ip}" for ip in ip_addresses])
    config = directory / f"{name}.cnf"
    _write_openssl_config(config, san)
    cert, key, csr = (directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
    common_name = dns_names[0] if dns_names else (ip_addresses[0] if ip_addresses else name)
    _openssl(
        "req", "-new", "-config", str(config),
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={common_name}",
        cwd=directory,
    )  # fmt: skip
    key.chmod(0o600)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-set_serial", str(secrets.randbits(62) + 1), "-days", "7", "-sha256",
        "-extfile", str(config), "-extensions", "v3_server", "-out", str(cert),
        cwd=directory,
    )  # fmt: skip
    csr.unlink()
    return cert, key


# --- the server ------------------------------------------------------------------------
