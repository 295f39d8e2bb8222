"""Which market a request is signed for: the one that presents this TLS certificate.

Every request signature covers the market's id (``shared.signing``), so a signature a
client made for one market is refused by every other. The id is ``tls-cert-sha256:<hex>``
of the DER leaf certificate the market presents in its TLS handshake: the server reads it
from the certificate file it serves (``server_market_id``), the client takes it from a TLS
handshake it verifies as its gRPC channel does: same CA (or system roots), same host name,
same client certificate (``MarketIdentity``). A fake market cannot present the real one's
certificate without the real one's private key, and what a client signs for the fake one
names the fake one's certificate, so it is worthless at the real one.

Why not an id the market announces (say in GetSchema): a fake market would announce the real
one's. Without TLS a market can prove nothing, and the id is the constant
``INSECURE_MARKET_ID``: a fake plain-text market on the same machine could replay what it is
sent to a real plain-text market there, one more reason plain text is loopback-only.

Standard library only (no grpc), so the CLI stays quick to start.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from pathlib import Path
from typing import Protocol

from shared.errors import InvalidInput, Unavailable
from shared.files import read_file

__all__ = [
    "INSECURE_MARKET_ID",
    "MarketIdentity",
    "certificate_market_id",
    "presented_certificate",
    "server_market_id",
]

INSECURE_MARKET_ID = "insecure-loopback"
PROBE_TIMEOUT_S = 10.0
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"


class _HasServerCert(Protocol):
    @property
    def server_cert(self) -> Path: ...


def certificate_market_id(certificate_der: bytes) -> str:
    """The id of a market presenting ``certificate_der`` (its DER leaf certificate)."""
    return "tls-cert-sha256:" + hashlib.sha256(certificate_der).hexdigest()


def server_market_id(files: _HasServerCert | None) -> str:
    """The id this server's clients sign for: of the first certificate in
    ``files.server_cert`` (the leaf it presents), or ``INSECURE_MARKET_ID`` without TLS."""
    if files is None:
        return INSECURE_MARKET_ID
    pem = read_file(files.server_cert, "server certificate").decode("ascii", "replace")
    start = pem.find(_PEM_BEGIN)
    end = pem.find(_PEM_END, max(start, 0))
    if start < 0 or end < 0:
        raise InvalidInput(f"{files.server_cert} holds no PEM certificate")
    return certificate_market_id(ssl.PEM_cert_to_DER_cert(pem[start : end + len(_PEM_END)]))


def presented_certificate(
    host: str,
    port: int,
    *,
    ca: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
    server_name: str | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> bytes:
    """The DER leaf certificate the market at ``host:port`` presents, verified against
    ``ca`` (``None``: the system roots) and for the host name (``server_name`` when the
    channel overrides it). Raises ``Unavailable`` when it cannot be reached or verified."""
    context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    # gRPC's BoringSSL does not apply Python 3.13's strict X.509 checks; neither do we.
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    context.set_alpn_protocols(["h2"])
    if client_cert is not None and client_key is not None:
        context.load_cert_chain(str(client_cert), str(client_key))
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=server_name or host) as tls,
        ):
            certificate = tls.getpeercert(binary_form=True)
    except OSError as err:  # ssl.SSLError is an OSError
        raise Unavailable(f"cannot reach the market at {where}: {err}") from err
    if not certificate:
        raise Unavailable(f"the market at {where} presented no certificate")
    return certificate


class MarketIdentity:
    """The id of the market at ``host:port``, found on first use and then kept: one extra
    TLS handshake per channel (``INSECURE_MARKET_ID`` at once for plain text)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ca: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        insecure: bool = False,
        server_name: str | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._ca, self._client_cert, self._client_key = ca, client_cert, client_key
        self._server_name = server_name
        self._value = INSECURE_MARKET_ID if insecure else None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._value is None:
                der = presented_certificate(
                    self._host,
                    self._port,
                    ca=self._ca,
                    client_cert=self._client_cert,
                    client_key=self._client_key,
                    server_name=self._server_name,
                )
                self._value = certificate_market_id(der)
            return self._value
