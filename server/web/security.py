"""What keeps the web page safe: headers, admin login by token, sessions, CSRF.

* Every response carries ``SECURITY_HEADERS`` (``SecurityHeaders``): a CSP that allows
  nothing but this origin (no inline script at all: the page has none), no framing, no
  MIME sniffing, no referrer; HSTS when served over TLS.
* An admin logs in with a token minted by ``lwm admin web-token`` (``shared.web_token``):
  ``AdminLogin`` checks its signature and market id, that its key is a registered,
  unrevoked ADMIN, its expiry, and that its nonce was never used (``ReplayCache``, as for
  signed requests: a token is one login).
* A login opens a server-side ``Session``: the cookie holds only its 256-bit random id
  (HttpOnly, SameSite=Strict, Secure under TLS). Why not a signed cookie holding the
  session: logout must end it for good, and a signed cookie stays valid until it expires
  whatever the server forgets. Sessions live ``WebLimits.session_s`` and are bounded in
  number.
* CSRF: each session has its own token, which every POST form carries and the server
  compares (``hmac.compare_digest``). The login form, before any session, carries a token
  bound to a random cookie by an HMAC under a key of this process (``LoginForms``), so
  opening the login page stores nothing on the server: no GET changes state.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.auth import ReplayCache
from server.market import Market
from server.records import KeyRecord, Role
from shared import signing
from shared.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from shared.web_token import MAX_TTL_S, WebToken

SESSION_COOKIE = "lwm_session"
LOGIN_COOKIE = "lwm_login"

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
HSTS = (b"strict-transport-security", b"max-age=31536000")


@dataclass(frozen=True)
class WebLimits:
    """What the web page serves and keeps: catalogue page size, session life and count, the
    largest form body read."""

    page_size: int = 50
    session_s: float = 3600.0
    max_sessions: int = 1000
    max_form_bytes: int = 8192


class SecurityHeaders:
    """ASGI middleware adding ``SECURITY_HEADERS`` (and HSTS when ``tls``) to every response."""

    def __init__(self, app: ASGIApp, tls: bool) -> None:
        self.app = app
        self.headers = SECURITY_HEADERS + ((HSTS,) if tls else ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass(frozen=True)
class Session:
    """An admin's login: whose key, this session's CSRF token, until when."""

    sid: str
    key_id: str
    csrf: str
    expires_at: float


class Sessions:
    """The open admin sessions, by their random id, each for ``WebLimits.session_s``."""

    def __init__(self, limits: WebLimits, clock: Callable[[], float] = time.time) -> None:
        self._limits, self._clock = limits, clock
        self._open: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, key_id: str) -> Session:
        """A new session of ``key_id``; ``ResourceExhausted`` when too many are open."""
        now = self._clock()
        session = Session(
            sid=secrets.token_urlsafe(32),
            key_id=key_id,
            csrf=secrets.token_urlsafe(32),
            expires_at=now + self._limits.session_s,
        )
        with self._lock:
            for sid in [s.sid for s in self._open.values() if s.expires_at <= now]:
                del self._open[sid]
            if len(self._open) >= self._limits.max_sessions:
                raise ResourceExhausted("too many admin sessions open; retry later")
            self._open[session.sid] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        """The live session ``sid`` names, or None (unknown, ended or expired)."""
        with self._lock:
            session = self._open.get(sid or "")
            if session is not None and session.expires_at <= self._clock():
                del self._open[session.sid]
                return None
            return session

    def close(self, sid: str) -> None:
        with self._lock:
            self._open.pop(sid, None)


def same_token(expected: str, given: str | None) -> bool:
    """Whether a form's CSRF token is the one expected (constant time)."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


class LoginForms:
    """CSRF tokens for the login form, which comes before any session: the form's token is
    an HMAC of the ``LOGIN_COOKIE`` under a key that lives as long as this process."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(32)

    def token(self, cookie: str) -> str:
        return hmac.new(self._key, cookie.encode(), hashlib.sha256).hexdigest()

    def check(self, cookie: str | None, given: str | None) -> None:
        if not cookie or not same_token(self.token(cookie), given):
            raise PermissionDenied("the login form expired or came from elsewhere: reload it")


class AdminLogin:
    """Checks login tokens for the market whose clients sign for ``market_id``."""

    def __init__(
        self, market: Market, market_id: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._market, self._market_id, self._clock = market, market_id, clock
        # Keyed by the token's issue time: a token lives at most MAX_TTL_S after it, so a
        # nonce is remembered for as long as its token could be used.
        self._used = ReplayCache(MAX_TTL_S, clock(), max_entries=100_000)

    def check(self, text: str) -> KeyRecord:
        """The admin key that signed the token ``text``; ``Unauthenticated`` (malformed,
        expired, wrong market, unknown or revoked key, used before) or ``PermissionDenied``
        (not an admin's key)."""
        token = WebToken.parse(text)
        now = self._clock()
        key = self._market.key_of(token.key_id)
        if key is None or key.revoked:
            raise Unauthenticated(f"key {token.key_id} is not registered or was revoked")
        token.verify(signing.load_public_key(key.public_key), self._market_id, now)
        if key.role is not Role.ADMIN:
            raise PermissionDenied(f"key {key.key_id} ({key.name}) is not an admin's")
        self._used.admit(signing.SignedRequest(key.key_id, token.issued_at, token.nonce), now)
        return key

    def still_admin(self, key_id: str) -> bool:
        """Whether a session's key is still a registered, unrevoked ADMIN (checked on every
        admin page: a revocation ends the sessions of the key at once)."""
        key = self._market.key_of(key_id)
        return key is not None and not key.revoked and key.role is Role.ADMIN
