"""Ed25519 identities: key files, learnware signatures and signed gRPC request metadata.

Why Ed25519: small (32-byte keys, 64-byte signatures), deterministic, no parameters to get
wrong. Keys are identified by ``key_id`` (first 16 hex chars of sha256 of the raw 32-byte
public key) everywhere: manifests, the market's key registry and request metadata.

Request authentication (no grpc import here; the server's ``Authenticator`` and the client's
``SigningInterceptor`` call these): the caller sends four ASCII metadata entries

* ``lwm-key-id``: its key id,
* ``lwm-timestamp``: Unix time in whole seconds, decimal,
* ``lwm-nonce``: 128 random bits as 32 lowercase hex chars, fresh for every call,
* ``lwm-signature``: hex of Ed25519 over ``auth_payload``: the lines ``lwm-auth-v2``,
  method, body sha256, market id, timestamp and nonce, joined by ``\n``.

``method`` is the full gRPC method path (``"/learnware.market.v1.Market/Submit"``). The
body is ``request_body(message)``: the request message's deterministic protobuf bytes (of a
client stream, its first message: Submit's header names the package's sha256 and size, so
the chunks are bound through it). The market id is ``shared.transport``'s name for the
market the client meant to reach (the sha256 of its TLS certificate), so a signature
captured by one market is worthless at another. Why all of it: a signature over method and
time alone could be replayed with another body (an admin's RegisterKey registering the
attacker's key) or at another market; the nonce lets the market refuse a second use of the
same signature inside the ±``window_s`` time window (``server.auth.ReplayCache``).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import IntegrityError, InvalidInput, NotFound, Unauthenticated
from shared.files import read_file, write_atomically

__all__ = [
    "AUTH_ENTRIES",
    "AUTH_KEY_ID",
    "AUTH_NONCE",
    "AUTH_SIGNATURE",
    "AUTH_TIMESTAMP",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "SignedRequest",
    "auth_metadata",
    "auth_payload",
    "check_auth_metadata",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_key_bytes",
    "request_body",
    "save_private_key",
    "save_public_key",
    "sign",
    "verify",
]

AUTH_KEY_ID = "lwm-key-id"
AUTH_TIMESTAMP = "lwm-timestamp"
AUTH_SIGNATURE = "lwm-signature"
AUTH_NONCE = "lwm-nonce"
AUTH_ENTRIES = (AUTH_KEY_ID, AUTH_TIMESTAMP, AUTH_NONCE, AUTH_SIGNATURE)
"""Every metadata name a signed request carries, in the order ``auth_metadata`` sends them."""
_AUTH_TAG = "lwm-auth-v2"
NONCE_HEX_CHARS = 32  # 128 bits
RAW_KEY_BYTES = 32
SIGNATURE_BYTES = 64


# ---------------------------------------------------------------- keys


def generate_keypair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    """A fresh Ed25519 key pair from the OS's random source."""
    private = Ed25519PrivateKey.generate()
    return private, private.public_key()


def public_key_bytes(public_key: Ed25519PublicKey) -> bytes:
    """The raw 32-byte encoding (what the proto carries and ``key_id`` hashes)."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey | bytes) -> str:
    """First 16 hex chars (64 bits) of sha256 of the raw public key: a short, stable name."""
    raw = public_key if isinstance(public_key, bytes) else public_key_bytes(public_key)
    if len(raw) != RAW_KEY_BYTES:
        raise InvalidInput(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return hashlib.sha256(raw).hexdigest()[:16]


def save_private_key(
    path: str | Path,
    key: Ed25519PrivateKey,
    *,
    overwrite: bool = False,
    password: bytes | None = None,
) -> Path:
    """Write ``key`` as PEM PKCS8 with mode 0600, atomically; encrypted when ``password``.

    Raises ``AlreadyExists`` if the file exists and ``overwrite`` is false.
    """
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    target = Path(path)
    write_atomically(target, pem, mode=0o600, overwrite=overwrite)
    return target


def save_public_key(
    path: str | Path, public_key: Ed25519PublicKey, *, overwrite: bool = False
) -> Path:
    """Write ``public_key`` as PEM SubjectPublicKeyInfo (mode 0644), atomically."""
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    target = Path(path)
    write_atomically(target, pem, mode=0o644, overwrite=overwrite)
    return target


def load_private_key(path: str | Path, *, password: bytes | None = None) -> Ed25519PrivateKey:
    """Read a PEM (PKCS8) Ed25519 private key; ``InvalidInput`` for anything else."""
    data = read_file(path, "private key file")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as err:
        raise InvalidInput(f"{path} is not a readable PEM private key: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(source: str | Path | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from a file path (``str``/``Path``) or from ``bytes``.

    The bytes (or file content) are either the raw 32-byte key or a PEM SubjectPublicKeyInfo.
    """
    data = source if isinstance(source, bytes) else read_file(source, "public key file")
    if len(data) == RAW_KEY_BYTES:
        return Ed25519PublicKey.from_public_bytes(data)
    where = "the given bytes" if isinstance(source, bytes) else str(source)
    if not data.lstrip().startswith(b"-----BEGIN"):
        raise InvalidInput(
            f"{where}: expected a raw 32-byte Ed25519 key or PEM, got {len(data)} bytes"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as err:
        raise InvalidInput(f"{where} is not a readable PEM public key: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{where} holds a {type(key).__name__}, not an Ed25519 key")
    return key


# ---------------------------------------------------------------- signatures


def sign(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """The raw 64-byte Ed25519 signature of ``payload``."""
    return key.sign(payload)


def verify(public_key: Ed25519PublicKey, signature: bytes, payload: bytes) -> None:
    """Raise ``IntegrityError`` unless ``signature`` is ``public_key``'s over ``payload``."""
    if len(signature) != SIGNATURE_BYTES:
        raise IntegrityError(
            f"an Ed25519 signature has {SIGNATURE_BYTES} bytes, got {len(signature)}"
        )
    try:
        public_key.verify(signature, payload)
    except InvalidSignature as err:
        raise IntegrityError(
            f"signature does not verify with key {key_id(public_key)} "
            "(tampered data or another signer)"
        ) from err


# ---------------------------------------------------------------- request metadata


class _Message(Protocol):
    """A protobuf message, as far as signing needs one (no protobuf import here)."""

    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...  # noqa: N802


def request_body(message: _Message | None) -> bytes:
    """The bytes a request signature hashes: ``message``'s deterministic serialization
    (``b""`` for none: a client stream that sends nothing). Client and server both call this,
    the server on the message it parsed, so both sides hash the same bytes."""
    return b"" if message is None else message.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class SignedRequest:
    """What a verified request signature says: who, when and with which one-time nonce."""

    key_id: str
    timestamp: int
    nonce: str


def auth_payload(method: str, body: bytes, market_id: str, timestamp: str, nonce: str) -> bytes:
    """The bytes a request signature covers (layout in the module docstring)."""
    fields = (_AUTH_TAG, method, hashlib.sha256(body).hexdigest(), market_id, timestamp, nonce)
    if any("\n" in field for field in fields):
        raise InvalidInput("request signature fields may not contain a newline")
    return "\n".join(fields).encode("utf-8")


def auth_metadata(
    private_key: Ed25519PrivateKey,
    method: str,
    body: bytes,
    market_id: str,
    now: float | None = None,
) -> list[tuple[str, str]]:
    """gRPC metadata that authenticates one call to ``method`` (full path) carrying
    ``body`` (``request_body`` of its message) at the market ``market_id``, at ``now``."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(NONCE_HEX_CHARS // 2)
    signature = sign(private_key, auth_payload(method, body, market_id, timestamp, nonce))
    return [
        (AUTH_KEY_ID, key_id(private_key.public_key())),
        (AUTH_TIMESTAMP, timestamp),
        (AUTH_NONCE, nonce),
        (AUTH_SIGNATURE, signature.hex()),
    ]


def _entry(metadata: Mapping[str, str | bytes], name: str) -> str:
    value = metadata.get(name)
    if value is None or value == "" or value == b"":
        raise Unauthenticated(f"missing {name} metadata: sign requests with your key")
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError as err:
            raise Unauthenticated(f"{name} metadata is not ASCII") from err
    return value


def _parse_timestamp(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
        raise Unauthenticated(f"{AUTH_TIMESTAMP} must be whole Unix seconds, got {raw[:20]!r}")
    return int(raw)


def _check_nonce(raw: str) -> str:
    hex_digits = set("0123456789abcdef")
    size_ok = NONCE_HEX_CHARS <= len(raw) <= 2 * NONCE_HEX_CHARS and len(raw) % 2 == 0
    if not (size_ok and set(raw) <= hex_digits):
        raise Unauthenticated(
            f"{AUTH_NONCE} must be {NONCE_HEX_CHARS} to {2 * NONCE_HEX_CHARS} lowercase hex "
            "chars, whole bytes (at least 128 random bits)"
        )
    return raw


def _lookup(
    lookup_public_key: Callable[[str], Ed25519PublicKey | None], kid: str
) -> Ed25519PublicKey | None:
    try:
        return lookup_public_key(kid)
    except NotFound:
        return None


def check_auth_metadata(
    metadata: Mapping[str, str | bytes],
    lookup_public_key: Callable[[str], Ed25519PublicKey | None],
    method: str,
    body: bytes,
    market_id: str,
    now: float | None = None,
    window_s: float = 300.0,
) -> SignedRequest:
    """Authenticate one call; return what its signature says or raise ``Unauthenticated``.

    ``lookup_public_key(key_id)`` returns the registered, *unrevoked* key or ``None`` (it may
    also raise ``NotFound``). Refused: missing entries, a malformed nonce, a timestamp more
    than ``window_s`` seconds from ``now`` (either way: clocks drift), an unknown key, a
    signature that is not over this ``method``, ``body`` and ``market_id``. Whether the nonce
    was used before (replay) and authorisation (roles) are the caller's next steps.
    """
    kid = _entry(metadata, AUTH_KEY_ID)
    raw_ts = _entry(metadata, AUTH_TIMESTAMP)
    nonce = _check_nonce(_entry(metadata, AUTH_NONCE))
    raw_sig = _entry(metadata, AUTH_SIGNATURE)
    timestamp = _parse_timestamp(raw_ts)
    skew = timestamp - (time.time() if now is None else now)
    if abs(skew) > window_s:
        raise Unauthenticated(
            f"stale {AUTH_TIMESTAMP}: {skew:+.0f} s from the server's clock "
            f"(allowed ±{window_s:.0f} s); check your clock"
        )
    public_key = _lookup(lookup_public_key, kid)
    if public_key is None or key_id(public_key) != kid:
        raise Unauthenticated(f"unknown or revoked key id {kid[:32]!r}")
    try:
        signature = bytes.fromhex(raw_sig)
    except ValueError as err:
        raise Unauthenticated(f"{AUTH_SIGNATURE} is not hex") from err
    try:
        verify(public_key, signature, auth_payload(method, body, market_id, raw_ts, nonce))
    except IntegrityError as err:
        raise Unauthenticated(
            f"bad request signature for key {kid} on {method}: not made for this request "
            "body at this market"
        ) from err
    return SignedRequest(kid, timestamp, nonce)
