"""Short-lived admin login tokens for the market's web page (``lwm admin web-token``).

The admin's machine holds the admin key; the web page must not ask for it. So the admin
mints a token there: its key signs (domain tag, market id, key id, issued-at, expiry, nonce)
with ``shared.signing.sign``, and pastes the token into the page's login form. The market
checks it with ``WebToken.verify`` (signature, market id, times) and then that the key is a
registered, unrevoked ADMIN and that the nonce was never used (``server.auth.ReplayCache``).

Why each field: the market id (``shared.market_identity``, what every request is signed
for) makes a token minted for one market worthless at another; the expiry bounds a token
that leaks; the nonce makes it single use; the domain tag keeps a login signature from ever
meaning a request or a learnware signature. The text form is ASCII with dots, so it
survives copy and paste: ``lwmweb1.KEYID.ISSUED.EXPIRES.NONCE.SIGNATURE``.

Standard library and ``shared.signing`` only (no grpc), so ``lwm`` stays quick to start.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from shared import signing
from shared.errors import IntegrityError, InvalidInput, Unauthenticated

__all__ = ["DEFAULT_TTL_S", "MAX_TTL_S", "WebToken", "mint_web_token"]

_PREFIX = "lwmweb1"
_DOMAIN_TAG = "lwm-web-login-v1"
_NONCE_BYTES = 16
DEFAULT_TTL_S = 600
MAX_TTL_S = 3600
"""The longest life the market accepts (``lwm admin web-token --ttl``): a login token is a
bearer secret while it lives."""
_MAX_TOKEN_CHARS = 400


@dataclass(frozen=True)
class WebToken:
    """A parsed login token; ``verify`` says whether it holds."""

    key_id: str
    issued_at: int
    expires_at: int
    nonce: str
    signature: bytes

    def payload(self, market_id: str) -> bytes:
        """The bytes the admin key signs for the market ``market_id``."""
        fields = (_DOMAIN_TAG, market_id, self.key_id, str(self.issued_at))
        rest = (str(self.expires_at), self.nonce)
        return "\n".join((*fields, *rest)).encode("utf-8")

    def text(self) -> str:
        """The token as the admin pastes it."""
        parts = (self.key_id, str(self.issued_at), str(self.expires_at), self.nonce)
        return ".".join((_PREFIX, *parts, self.signature.hex()))

    @classmethod
    def parse(cls, text: str) -> WebToken:
        """The token in ``text``; ``Unauthenticated`` naming what is malformed."""
        raw = text.strip()
        parts = raw.split(".")
        if len(raw) > _MAX_TOKEN_CHARS or len(parts) != 6 or parts[0] != _PREFIX:
            raise Unauthenticated("not a login token: mint one with `lwm admin web-token`")
        _, key_id, issued, expires, nonce, signature = parts
        if not (_is_hex(key_id, 16) and _is_hex(nonce, 2 * _NONCE_BYTES)):
            raise Unauthenticated("login token: malformed key id or nonce")
        if not (_is_hex(signature, 2 * signing.SIGNATURE_BYTES) and _is_whole(issued, expires)):
            raise Unauthenticated("login token: malformed times or signature")
        return cls(key_id, int(issued), int(expires), nonce, bytes.fromhex(signature))

    def verify(
        self,
        public_key: signing.Ed25519PublicKey,
        market_id: str,
        now: float,
        skew_s: float = 300.0,
    ) -> None:
        """``Unauthenticated`` unless ``public_key`` signed this token for ``market_id`` and
        it lives at ``now``: not expired, issued at most ``skew_s`` ahead of this clock and
        for at most ``MAX_TTL_S``. Who the key is and whether the nonce is fresh are the
        caller's checks."""
        if self.expires_at <= now:
            raise Unauthenticated("login token expired: mint a new one")
        if self.issued_at > now + skew_s or self.expires_at - self.issued_at > MAX_TTL_S:
            raise Unauthenticated(
                f"login token issued in the future or living over {MAX_TTL_S} s "
                "(check your clock)"
            )
        try:
            signing.verify(public_key, self.signature, self.payload(market_id))
        except IntegrityError as err:
            raise Unauthenticated(
                "login token not signed by this key for this market"
            ) from err


def mint_web_token(
    private_key: signing.Ed25519PrivateKey, market_id: str, ttl_s: int, now: float
) -> WebToken:
    """A fresh token of ``private_key`` for the market ``market_id``, living ``ttl_s``."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise InvalidInput(f"--ttl must be 1..{MAX_TTL_S} seconds, got {ttl_s}")
    unsigned = WebToken(
        key_id=signing.key_id(private_key.public_key()),
        issued_at=int(now),
        expires_at=int(now) + ttl_s,
        nonce=secrets.token_hex(_NONCE_BYTES),
        signature=b"",
    )
    signature = signing.sign(private_key, unsigned.payload(market_id))
    return replace(unsigned, signature=signature)


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


def _is_whole(*texts: str) -> bool:
    return all(t.isascii() and t.isdigit() and len(t) <= 12 for t in texts)
