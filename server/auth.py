"""Who is calling and may they: request authentication, roles, and errors as gRPC status.

Why in the handlers and not in a server interceptor: a server interceptor sees the method
and metadata but not ``context.auth_context()`` (the TLS peer), and it cannot tell the
handler who the caller is. So the service (``server.service``) reads a call's
``Credentials`` and runs ``Authenticator.authenticate`` before any work; ``grpc_status``
names the status each project error is answered with.

Every authenticated RPC needs the signed metadata of ``shared.signing`` (key id, timestamp,
nonce, signature over the method, the request body's hash and this market's id); an mTLS
client certificate, when there is one, is recorded in ``Caller.tls_common_name`` for logs
but never replaces the key: roles belong to keys, which an admin registers and revokes,
while certificates only say the connection is allowed. The body is only there once the
request message is, which is why the check runs in the handler and not in an interceptor.

``ReplayCache`` refuses a second use of a signature: it remembers each (key id, nonce) until
its timestamp leaves the window, within a fixed number of entries.

The client side is ``shared.transport.SigningInterceptor``: ``shared.transport.channel(...,
signing_key=key)`` puts it on the channel and every call carries fresh auth metadata.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from server.records import KeyRecord, Role
from shared import signing
from shared.errors import LwmError, PermissionDenied, ResourceExhausted, Unauthenticated
from shared.proto import market_pb2

__all__ = [
    "MARKET_ROLES",
    "MARKET_SERVICE",
    "Authenticator",
    "Caller",
    "Credentials",
    "ReplayCache",
    "grpc_status",
    "market_method",
]

MARKET_SERVICE: str = market_pb2.DESCRIPTOR.services_by_name["Market"].full_name


def market_method(name: str) -> str:
    """The full gRPC path the signature covers: ``market_method("Submit")`` is
    ``"/learnware.market.v1.Market/Submit"``."""
    return f"/{MARKET_SERVICE}/{name}"


_C, _U = Role.CONTRIBUTOR, Role.USER
MARKET_ROLES: Mapping[str, frozenset[Role]] = {
    # The roles besides ADMIN (always allowed) that may call each RPC (market.proto).
    # Ownership rules (withdraw own, a contributor fetching its own) are the handler's.
    "Submit": frozenset({_C}),
    "Get": frozenset({_U, _C}),
    "List": frozenset({_U, _C}),
    "Search": frozenset({_U}),
    "Fetch": frozenset({_U, _C}),
    "Withdraw": frozenset({_C}),
    "GetHistory": frozenset({_U, _C}),
    "RegisterKey": frozenset(),
    "RevokeKey": frozenset(),
    "ListKeys": frozenset(),
    "GetStats": frozenset(),
    "WhoAmI": frozenset({_U, _C}),
}
"""GetSchema is absent on purpose: it needs no key."""


# ---------------------------------------------------------------- server side


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its registered key and, under mTLS, its certificate's CN."""

    key_id: str
    role: Role
    name: str
    tls_common_name: str | None = None


def _metadata(pairs: Sequence[Any] | None) -> dict[str, str | bytes]:
    """Invocation metadata as a dict; a repeated auth entry is refused, not guessed at."""
    result: dict[str, str | bytes] = {}
    for key, value in pairs or ():
        if key in result and key in signing.AUTH_ENTRIES:
            raise Unauthenticated(f"{key} metadata given more than once")
        result.setdefault(key, value)
    return result


def _tls_common_name(auth_context: Mapping[str, Sequence[bytes]] | None) -> str | None:
    values = (auth_context or {}).get("x509_common_name") or []
    for value in values:
        return value.decode("utf-8", "replace")
    return None


@dataclass(frozen=True)
class Credentials:
    """What a call presents: its metadata and, under mTLS, the client certificate's CN."""

    metadata: tuple[tuple[str, str | bytes], ...]
    tls_common_name: str | None

    @classmethod
    def of(cls, context: grpc.ServicerContext | grpc.aio.ServicerContext) -> Credentials:
        """Read from a call's context (a plain or an asyncio one)."""
        return cls(
            tuple(context.invocation_metadata() or ()),
            _tls_common_name(context.auth_context()),
        )


class ReplayCache:
    """The (key id, nonce) pairs of the signatures accepted while they could be replayed.

    A signature is valid while its timestamp is within ``window_s`` of the server's clock,
    and a replay carries the same signed timestamp, so pairs are kept in one set per signed
    second, and a second's set is dropped once that second is more than ``window_s`` ago:
    memory follows the request rate over one window, never the server's uptime (about 100
    bytes a request). Past ``max_entries`` live pairs a new request is refused with
    ``ResourceExhausted`` instead of growing: the default holds 3,300 signed requests a
    second over a 300 s window, more than twice what one server was measured to answer.
    Requests signed before ``started_at`` are refused: a restarted server has forgotten
    the nonces it saw before, so it cannot tell a replay of them.
    """

    def __init__(self, window_s: float, started_at: float, max_entries: int = 1_000_000) -> None:
        self._window_s = window_s
        self._oldest_allowed = int(started_at)  # whole seconds, as requests are signed
        self._max_entries = max_entries
        self._by_second: dict[int, set[bytes]] = {}
        self._seconds: list[int] = []  # heap of the keys of _by_second
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def admit(self, request: signing.SignedRequest, now: float) -> None:
        """Record ``request``'s nonce; ``Unauthenticated`` if it was seen (a replay) or
        predates this server, ``ResourceExhausted`` if the cache is full."""
        if request.timestamp < self._oldest_allowed:
            raise Unauthenticated(
                f"request signed at {request.timestamp}, before this market started "
                f"({self._oldest_allowed}): sign it again (or check your clock)"
            )
        pair = bytes.fromhex(request.key_id + request.nonce)  # both checked hex already
        with self._lock:
            self._forget_expired(now)
            seen = self._by_second.get(request.timestamp)
            if seen is not None and pair in seen:
                raise Unauthenticated(
                    f"replayed request: key {request.key_id} already used nonce "
                    f"{request.nonce} within the last {self._window_s:.0f} s"
                )
            if self._size >= self._max_entries:
                raise ResourceExhausted(
                    f"too many signed requests in the last {self._window_s:.0f} s "
                    f"({self._max_entries}); retry later"
                )
            if seen is None:
                seen = self._by_second[request.timestamp] = set()
                heapq.heappush(self._seconds, request.timestamp)
            seen.add(pair)
            self._size += 1

    def _forget_expired(self, now: float) -> None:
        while self._seconds and self._seconds[0] + self._window_s < now:
            self._size -= len(self._by_second.pop(heapq.heappop(self._seconds)))


class Authenticator:
    """Checks signed request metadata against the key registry, this market's id, the replay
    cache and the allowed roles.

    ``lookup(key_id)`` returns the registered ``KeyRecord`` or ``None`` (it may also raise
    ``NotFound``); revoked records are refused here, so the store need not filter them.
    ``market_id`` is what clients sign for (``shared.transport.server_market_id``).
    ``clock`` is injectable for tests; ``window_s`` bounds clock skew and how long a nonce
    is remembered; ``max_nonces`` caps the replay cache.
    """

    def __init__(
        self,
        lookup: Callable[[str], KeyRecord | None],
        market_id: str,
        clock: Callable[[], float] = time.time,
        window_s: float = 300.0,
        max_nonces: int = 1_000_000,
    ) -> None:
        self._lookup = lookup
        self._market_id = market_id
        self._clock = clock
        self._window_s = window_s
        self._replays = ReplayCache(window_s, clock(), max_nonces)

    def authenticate(
        self,
        credentials: Credentials,
        method: str,
        roles: set[Role] | frozenset[Role],
        request: Message | None,
    ) -> Caller:
        """Authenticate the call to ``method`` (full path) carrying ``request`` (of a
        client stream: its first message, ``None`` if it sent none) and check its role.
        The server reads ``credentials`` on its event loop and checks them in a worker.

        Raises ``Unauthenticated`` (missing/unknown/revoked key, bad signature, stale
        timestamp, replay), ``ResourceExhausted`` (replay cache full) or
        ``PermissionDenied`` (role not in ``roles``; ADMIN always passes).
        """
        return self.check(
            _metadata(credentials.metadata),
            method,
            roles,
            signing.request_body(request),
            tls_common_name=credentials.tls_common_name,
        )

    def check(
        self,
        metadata: Mapping[str, str | bytes],
        method: str,
        roles: set[Role] | frozenset[Role],
        body: bytes,
        *,
        tls_common_name: str | None = None,
    ) -> Caller:
        """``require`` without gRPC: for tests and for handlers that already hold metadata."""
        found: dict[str, KeyRecord] = {}

        def public_key(kid: str) -> signing.Ed25519PublicKey | None:
            record = self._lookup(kid)
            if record is None or record.revoked:
                return None
            found[kid] = record
            return signing.load_public_key(record.public_key)

        now = self._clock()
        signed = signing.check_auth_metadata(
            metadata, public_key, method, body, self._market_id, now=now, window_s=self._window_s
        )
        self._replays.admit(signed, now)
        record = found[signed.key_id]
        if record.role is not Role.ADMIN and record.role not in roles:
            action = method.rsplit("/", 1)[-1]
            raise PermissionDenied(f"role {record.role.value} may not {action}")
        return Caller(signed.key_id, record.role, record.name, tls_common_name)


def grpc_status(error: LwmError) -> grpc.StatusCode:
    """The status code for ``error`` (``INTERNAL`` if its ``status`` names no code)."""
    try:
        return grpc.StatusCode[error.status]
    except KeyError:
        return grpc.StatusCode.INTERNAL
