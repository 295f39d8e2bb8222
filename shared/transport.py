"""gRPC transport for the market and its clients: TLS/mTLS credentials, the loopback-only
rule for ``--insecure``, and the message-size options both sides must agree on.

Why the loopback rule: without TLS, anyone on the path could read what is sent and alter
downloads in flight, and nothing would say which market answers. On 127.0.0.0/8 or ::1
nothing leaves the machine, so plain text is acceptable for tests and demos; anywhere else
it is refused, never merely warned about. Host names other than ``localhost`` are refused
without a DNS lookup: what a name resolves to can change.

With a signing key, every call is signed for the market the channel reaches
(``shared.market_identity``: the sha256 of the TLS certificate it presents).

This module imports only grpc and the standard library so the CLI can use it cheaply.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import grpc

from shared import signing
from shared.errors import InvalidInput, LwmError, Unavailable, error_for_status
from shared.files import read_file
from shared.market_identity import MarketIdentity
from shared.signing import Ed25519PrivateKey

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Address",
    "ServerTlsFiles",
    "ServerTlsPaths",
    "SigningInterceptor",
    "as_lwm_error",
    "add_port",
    "channel",
    "channel_credentials",
    "check_insecure_address",
    "message_size_options",
    "parse_address",
    "server_credentials",
]

log = logging.getLogger("lwm.transport")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""gRPC send and receive limit on both sides; stream chunks must stay well below it."""

GrpcOptions = Sequence[tuple[str, Any]]


def message_size_options(max_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Channel/server options that lift gRPC's 4 MiB default receive limit to ``max_bytes``."""
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
    ]


# ---------------------------------------------------------------- addresses


@dataclass(frozen=True)
class Address:
    """A parsed ``HOST:PORT``; ``host`` is without brackets (``::1``, not ``[::1]``)."""

    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        if self.host.lower() == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback


def parse_address(address: str) -> Address:
    """Parse ``HOST:PORT`` or ``[IPV6]:PORT`` (port 0..65535; 0 lets the server pick)."""
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise InvalidInput(f"bad address {address!r}: write IPv6 as [ADDR]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise InvalidInput(f"bad address {address!r}: expected HOST:PORT (IPv6 as [ADDR]:PORT)")
    if not host:
        raise InvalidInput(f"bad address {address!r}: the host is empty")
    if not (port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535):
        raise InvalidInput(f"bad address {address!r}: the port must be 0..65535")
    return Address(host, int(port_text))


def check_insecure_address(address: str) -> Address:
    """Allow plain text only on loopback; raise ``InvalidInput`` with the reason otherwise."""
    parsed = parse_address(address)
    if not parsed.is_loopback:
        raise InvalidInput(
            f"--insecure is only allowed on loopback (127.0.0.1, ::1, localhost), "
            f"not {parsed.host}: use TLS (--ca) for anything reachable from another machine"
        )
    return parsed


# ---------------------------------------------------------------- credentials


class ServerTlsFiles(Protocol):
    """What ``server_credentials`` reads; ``pki.ServerDirLayout`` satisfies it."""

    @property
    def ca_cert(self) -> Path: ...

    @property
    def server_cert(self) -> Path: ...

    @property
    def server_key(self) -> Path: ...


@dataclass(frozen=True)
class ServerTlsPaths:
    """TLS files from elsewhere (e.g. a certificate from the organisation's own CA)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def server_credentials(files: ServerTlsFiles, require_client_auth: bool) -> grpc.ServerCredentials:
    """TLS for the server; with ``require_client_auth`` only clients holding a certificate
    signed by ``files.ca_cert`` can even open a connection (mutual TLS)."""
    key = read_file(files.server_key, "server key")
    certificate = read_file(files.server_cert, "server certificate")
    return grpc.ssl_server_credentials(
        [(key, certificate)],
        root_certificates=read_file(files.ca_cert, "CA certificate"),
        require_client_auth=require_client_auth,
    )


def channel_credentials(
    ca_pem_path: str | Path | None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """TLS for a client trusting ``ca_pem_path`` (``None``: the system's roots); with
    ``client_cert`` and ``client_key`` (both or neither) it also proves itself for mTLS."""
    if (client_cert is None) != (client_key is None):
        raise InvalidInput("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=None if ca_pem_path is None else read_file(ca_pem_path, "CA certificate"),
        private_key=None if client_key is None else read_file(client_key, "client key"),
        certificate_chain=(
            None if client_cert is None else read_file(client_cert, "client certificate")
        ),
    )


# ---------------------------------------------------------------- servers and channels


def add_port(
    server: grpc.Server | grpc.aio.Server,
    address: str,
    credentials: grpc.ServerCredentials | None,
) -> int:
    """Bind ``server`` to ``address``; ``credentials=None`` means plain text, loopback only.

    Returns the bound port (useful with port 0). Raises ``InvalidInput`` when the address is
    refused or cannot be bound, so ``lwm server start`` ends with a one-line reason.
    """
    if credentials is None:
        check_insecure_address(address)
        log.warning("INSECURE: serving without TLS on %s (loopback only)", address)
    else:
        parse_address(address)
    try:
        port = (
            server.add_insecure_port(address)
            if credentials is None
            else server.add_secure_port(address, credentials)
        )
    except RuntimeError as err:
        raise InvalidInput(f"cannot listen on {address}: {err}") from err
    if port == 0:
        raise InvalidInput(f"cannot listen on {address} (in use or not a local address?)")
    return port


def channel(
    address: str,
    *,
    ca: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
    insecure: bool = False,
    signing_key: Ed25519PrivateKey | None = None,
    options: GrpcOptions = (),
) -> grpc.Channel:
    """A client channel to the market with the shared message limits.

    TLS by default (trusting ``ca``, or the system roots when ``ca`` is None); mTLS when
    ``client_cert``/``client_key`` are given. ``insecure`` is refused unless ``address`` is
    loopback. With ``signing_key`` every call carries fresh signed auth metadata.
    """
    all_options = [*message_size_options(), *options]
    if insecure:
        if ca or client_cert or client_key:
            raise InvalidInput("--insecure cannot be combined with --ca or a client certificate")
        parsed = check_insecure_address(address)
        log.warning("INSECURE: connecting without TLS to %s (loopback only)", address)
        chan = grpc.insecure_channel(address, options=all_options)
    else:
        parsed = parse_address(address)
        creds = channel_credentials(ca, client_cert, client_key)
        chan = grpc.secure_channel(address, creds, options=all_options)
    if signing_key is None:
        return chan
    identity = MarketIdentity(
        parsed.host,
        parsed.port,
        ca=ca,
        client_cert=client_cert,
        client_key=client_key,
        insecure=insecure,
        server_name=dict(options).get("grpc.ssl_target_name_override"),
    )
    return grpc.intercept_channel(chan, SigningInterceptor(signing_key, identity))


# ---------------------------------------------------------------- client side


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):
    """grpc.ClientCallDetails is abstract with no constructor; this is the usual recipe."""


class SigningInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``shared.signing.auth_metadata`` for the called method, the request (of a client
    stream: its first message) and the market ``market_id()`` names to every outgoing call.

    Signed at call start with a fresh timestamp and nonce, so a long stream stays valid;
    public RPCs (GetSchema, health) get it too, which the server simply ignores.
    """

    def __init__(
        self,
        private_key: signing.Ed25519PrivateKey,
        market_id: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = private_key
        self._market_id = market_id
        self._clock = clock

    def _sign(self, details: grpc.ClientCallDetails, request: Any) -> grpc.ClientCallDetails:
        method = details.method
        if isinstance(method, bytes):
            method = method.decode("ascii")
        metadata = [(k, v) for k, v in (details.metadata or ()) if k not in signing.AUTH_ENTRIES]
        body = signing.request_body(request)
        metadata.extend(
            signing.auth_metadata(self._key, method, body, self._market_id(), now=self._clock())
        )
        return _ClientCallDetails(
            method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._sign(details, request), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._sign(details, request), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        first, requests = _peek(requests)
        return continuation(self._sign(details, first), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        first, requests = _peek(requests)
        return continuation(self._sign(details, first), requests)


def _peek(requests: Any) -> tuple[Any, Iterator[Any]]:
    """The first message of a request stream (None if empty) and the whole stream again."""
    iterator = iter(requests)
    first = next(iterator, None)
    return first, iterator if first is None else itertools.chain([first], iterator)


def as_lwm_error(err: grpc.RpcError, address: str) -> LwmError:
    """The client side of the status mapping: a failed call -> the project's error, with
    the server's one-line message (UNAVAILABLE says which address could not be reached)."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"cannot reach the market at {address}: {details}")
    return error_for_status(code.name if code else "UNKNOWN", details or "no details")
