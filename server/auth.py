"""Who is calling and may they: request authentication, roles, and errors as gRPC status.

Why in the handlers and not in a server interceptor: a server interceptor sees the method
and metadata but not ``context.auth_context()`` (the TLS peer), and it cannot tell the
handler who the caller is. So each handler starts with
``caller = auth.require(context, METHOD, roles)``; ``abort_with`` is the one place project
errors become gRPC status codes on the server.

Every authenticated RPC needs the signed metadata of ``shared.signing`` (key id, timestamp,
signature over the method); an mTLS client certificate, when there is one, is recorded in
``Caller.tls_common_name`` for logs but never replaces the key: roles belong to keys, which
an admin registers and revokes, while certificates only say the connection is allowed.

The client side is ``shared.transport.SigningInterceptor``: ``shared.transport.channel(...,
signing_key=key)`` puts it on the channel and every call carries fresh auth metadata.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from server.records import KeyRecord, Role
from shared import signing
from shared.errors import LwmError, PermissionDenied, Unauthenticated
from shared.proto import market_pb2

__all__ = [
    "MARKET_ROLES",
    "MARKET_SERVICE",
    "Authenticator",
    "Caller",
    "abort_with",
    "grpc_status",
    "market_method",
    "status_on_error",
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
    "RegisterKey": frozenset(),
    "RevokeKey": frozenset(),
    "ListKeys": frozenset(),
    "GetStats": frozenset(),
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
    auth_keys = {signing.AUTH_KEY_ID, signing.AUTH_TIMESTAMP, signing.AUTH_SIGNATURE}
    for key, value in pairs or ():
        if key in result and key in auth_keys:
            raise Unauthenticated(f"{key} metadata given more than once")
        result.setdefault(key, value)
    return result


def _tls_common_name(auth_context: Mapping[str, Sequence[bytes]] | None) -> str | None:
    values = (auth_context or {}).get("x509_common_name") or []
    for value in values:
        return value.decode("utf-8", "replace")
    return None


class Authenticator:
    """Checks signed request metadata against the key registry and the allowed roles.

    ``lookup(key_id)`` returns the registered ``KeyRecord`` or ``None`` (it may also raise
    ``NotFound``); revoked records are refused here, so the store need not filter them.
    ``clock`` is injectable for tests; ``window_s`` bounds clock skew and replay time.
    """

    def __init__(
        self,
        lookup: Callable[[str], KeyRecord | None],
        clock: Callable[[], float] = time.time,
        window_s: float = 300.0,
    ) -> None:
        self._lookup = lookup
        self._clock = clock
        self._window_s = window_s

    def require(
        self, context: grpc.ServicerContext, method: str, roles: set[Role] | frozenset[Role]
    ) -> Caller:
        """Authenticate the call to ``method`` (full path) and check its role.

        Raises ``Unauthenticated`` (missing/unknown/revoked key, bad signature, stale
        timestamp) or ``PermissionDenied`` (role not in ``roles``; ADMIN always passes).
        The handler turns them into a status with ``abort_with`` / ``status_on_error``.
        """
        return self.check(
            _metadata(context.invocation_metadata()),
            method,
            roles,
            tls_common_name=_tls_common_name(context.auth_context()),
        )

    def check(
        self,
        metadata: Mapping[str, str | bytes],
        method: str,
        roles: set[Role] | frozenset[Role],
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

        kid = signing.check_auth_metadata(
            metadata, public_key, method, now=self._clock(), window_s=self._window_s
        )
        record = found[kid]
        if record.role is not Role.ADMIN and record.role not in roles:
            action = method.rsplit("/", 1)[-1]
            raise PermissionDenied(f"role {record.role.value} may not {action}")
        return Caller(kid, record.role, record.name, tls_common_name)


def grpc_status(error: LwmError) -> grpc.StatusCode:
    """The status code for ``error`` (``INTERNAL`` if its ``status`` names no code)."""
    try:
        return grpc.StatusCode[error.status]
    except KeyError:
        return grpc.StatusCode.INTERNAL


def abort_with(context: grpc.ServicerContext, error: LwmError) -> NoReturn:
    """End the RPC with ``error``'s status code and its one-line message."""
    context.abort(grpc_status(error), str(error))
    raise AssertionError("context.abort returned")  # it always raises; this is for mypy


@contextlib.contextmanager
def status_on_error(context: grpc.ServicerContext) -> Iterator[None]:
    """``with status_on_error(context): ...`` turns any ``LwmError`` into ``abort_with``.

    Other exceptions pass through: gRPC reports them as UNKNOWN without leaking details.
    """
    try:
        yield
    except LwmError as error:
        abort_with(context, error)
