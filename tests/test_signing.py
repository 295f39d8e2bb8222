"""Ed25519 keys, signatures and signed request metadata (shared/signing.py)."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared import signing
from shared.errors import AlreadyExists, IntegrityError, InvalidInput, NotFound, Unauthenticated

METHOD = "/learnware.market.v1.Market/Submit"
NOW = 1_790_000_000.0
BODY = b"\x0a\x05header"
MARKET = "tls-cert-sha256:" + "ab" * 32


@pytest.fixture
def keypair() -> tuple[signing.Ed25519PrivateKey, signing.Ed25519PublicKey]:
    return signing.generate_keypair()


# ---------------------------------------------------------------- signatures


def test_sign_then_verify_accepts(keypair) -> None:
    private, public = keypair

    signature = signing.sign(private, b"payload")

    assert len(signature) == 64
    signing.verify(public, signature, b"payload")


def test_verify_rejects_tampered_payload_wrong_key_and_bad_length(keypair) -> None:
    private, public = keypair
    signature = signing.sign(private, b"payload")
    _, other = signing.generate_keypair()

    with pytest.raises(IntegrityError, match="does not verify"):
        signing.verify(public, signature, b"payloaD")
    with pytest.raises(IntegrityError, match="does not verify"):
        signing.verify(other, signature, b"payload")
    with pytest.raises(IntegrityError, match="64 bytes"):
        signing.verify(public, signature[:-1], b"payload")


def test_key_id_is_16_hex_of_sha256_of_raw_key(keypair) -> None:
    _, public = keypair
    raw = signing.public_key_bytes(public)

    kid = signing.key_id(public)

    assert len(raw) == 32
    assert kid == hashlib.sha256(raw).hexdigest()[:16]
    assert signing.key_id(raw) == kid
    with pytest.raises(InvalidInput, match="32 bytes"):
        signing.key_id(raw[:31])


# ---------------------------------------------------------------- key files


def test_private_key_file_is_0600_pem_and_round_trips(tmp_path: Path, keypair) -> None:
    private, public = keypair
    path = tmp_path / "keys" / "me.pem"

    signing.save_private_key(path, private)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = signing.load_private_key(path)
    assert signing.key_id(loaded.public_key()) == signing.key_id(public)
    assert [p.name for p in path.parent.iterdir()] == ["me.pem"]  # no temp file left


def test_private_key_refuses_overwrite_unless_asked(tmp_path: Path, keypair) -> None:
    private, _ = keypair
    path = tmp_path / "me.pem"
    signing.save_private_key(path, private)
    original = path.read_bytes()
    other, _ = signing.generate_keypair()

    with pytest.raises(AlreadyExists, match="refusing to overwrite"):
        signing.save_private_key(path, other)
    assert path.read_bytes() == original

    signing.save_private_key(path, other, overwrite=True)
    assert path.read_bytes() != original
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_encrypted_private_key_needs_its_password(tmp_path: Path, keypair) -> None:
    private, public = keypair
    path = signing.save_private_key(tmp_path / "me.pem", private, password=b"s3cret")

    loaded = signing.load_private_key(path, password=b"s3cret")

    assert signing.key_id(loaded.public_key()) == signing.key_id(public)
    with pytest.raises(InvalidInput):
        signing.load_private_key(path, password=b"wrong")
    with pytest.raises(InvalidInput):
        signing.load_private_key(path)


def test_load_private_key_refuses_missing_and_non_ed25519(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "ec.pem").write_bytes(pem)

    with pytest.raises(NotFound):
        signing.load_private_key(tmp_path / "absent.pem")
    with pytest.raises(InvalidInput, match="not an Ed25519"):
        signing.load_private_key(tmp_path / "ec.pem")


def test_public_key_loads_from_pem_file_pem_bytes_and_raw_bytes(tmp_path: Path, keypair) -> None:
    _, public = keypair
    path = signing.save_public_key(tmp_path / "me.pub", public)
    want = signing.key_id(public)

    assert signing.key_id(signing.load_public_key(path)) == want
    assert signing.key_id(signing.load_public_key(str(path))) == want
    assert signing.key_id(signing.load_public_key(path.read_bytes())) == want
    assert signing.key_id(signing.load_public_key(signing.public_key_bytes(public))) == want
    with pytest.raises(AlreadyExists):
        signing.save_public_key(path, public)


def test_load_public_key_refuses_garbage_and_other_key_types() -> None:
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = ec_pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    with pytest.raises(InvalidInput, match="raw 32-byte"):
        signing.load_public_key(b"x" * 31)
    with pytest.raises(InvalidInput, match="not an Ed25519"):
        signing.load_public_key(pem)
    with pytest.raises(InvalidInput, match="PEM"):
        signing.load_public_key(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


# ---------------------------------------------------------------- request metadata


def _registry(*publics: signing.Ed25519PublicKey):
    keys = {signing.key_id(p): p for p in publics}
    return keys.get


def test_auth_metadata_round_trips(keypair) -> None:
    private, public = keypair

    metadata = signing.auth_metadata(private, METHOD, BODY, MARKET, now=NOW)

    assert [name for name, _ in metadata] == [
        "lwm-key-id", "lwm-timestamp", "lwm-nonce", "lwm-signature"
    ]
    assert all(value.isascii() for _, value in metadata)
    signed = signing.check_auth_metadata(
        dict(metadata), _registry(public), METHOD, BODY, MARKET, now=NOW + 10
    )
    assert signed == signing.SignedRequest(
        signing.key_id(public), int(NOW), dict(metadata)["lwm-nonce"]
    )
    assert len(signed.nonce) == 32  # 128 bits, fresh each call
    assert signing.auth_metadata(private, METHOD, BODY, MARKET, now=NOW)[2][1] != signed.nonce


def test_auth_metadata_accepts_bytes_values(keypair) -> None:
    private, public = keypair
    signed = signing.auth_metadata(private, METHOD, BODY, MARKET, now=NOW)
    metadata = {k: v.encode() for k, v in signed}

    assert signing.check_auth_metadata(metadata, _registry(public), METHOD, BODY, MARKET, now=NOW)


def test_auth_rejects_unknown_key(keypair) -> None:
    private, _ = keypair
    _, stranger = signing.generate_keypair()
    metadata = dict(signing.auth_metadata(private, METHOD, BODY, MARKET, now=NOW))

    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        signing.check_auth_metadata(
            metadata, _registry(stranger), METHOD, BODY, MARKET, now=NOW
        )


def test_auth_treats_lookup_not_found_as_unknown(keypair) -> None:
    private, _ = keypair
    metadata = dict(signing.auth_metadata(private, METHOD, BODY, MARKET, now=NOW))

    def lookup(kid: str) -> signing.Ed25519PublicKey | None:
        raise NotFound(kid)

    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        signing.check_auth_metadata(metadata, lookup, METHOD, BODY, MARKET, now=NOW)


def test_auth_rejects_signature_for_another_method_or_tampered(keypair) -> None:
    private, public = keypair
    metadata = dict(signing.auth_metadata(private, METHOD, BODY, MARKET, now=NOW))
    lookup = _registry(public)

    with pytest.raises(Unauthenticated, match="bad request signature"):
        signing.check_auth_metadata(
            metadata, lookup, "/learnware.market.v1.Market/Withdraw", BODY, MARKET, NOW
        )
    flipped = dict(metadata, **{"lwm-signature": "00" + metadata["lwm-signature"][2:]})
    with pytest.raises(Unauthenticated, match="bad request signature"):
        signing.check_auth_metadata(flipped, lookup, METHOD, BODY, MARKET, now=NOW)
    not_hex = dict(metadata, **{"lwm-signature": "zz"})
    with pytest.raises(Unauthenticated, match="not hex"):
        signing.check_auth_metadata(not_hex, lookup, METHOD, BODY, MARKET, now=NOW)


@pytest.mark.parametrize("skew", [-301, 301, 10_000])
def test_auth_rejects_stale_or_future_timestamps(keypair, skew: int) -> None:
    private, public = keypair
    metadata = dict(signing.auth_metadata(private, METHOD, BODY, MARKET, now=NOW))

    with pytest.raises(Unauthenticated, match="stale"):
        signing.check_auth_metadata(
            metadata, _registry(public), METHOD, BODY, MARKET, now=NOW + skew
        )


def test_auth_rejects_missing_or_malformed_entries(keypair) -> None:
    private, public = keypair
    metadata = dict(signing.auth_metadata(private, METHOD, BODY, MARKET, now=NOW))
    lookup = _registry(public)

    for name in ("lwm-key-id", "lwm-timestamp", "lwm-nonce", "lwm-signature"):
        partial = {k: v for k, v in metadata.items() if k != name}
        with pytest.raises(Unauthenticated, match=f"missing {name}"):
            signing.check_auth_metadata(partial, lookup, METHOD, BODY, MARKET, now=NOW)
    for bad in ("1.5e9", "-5", "", "12a"):
        with pytest.raises(Unauthenticated):
            signing.check_auth_metadata(
                dict(metadata, **{"lwm-timestamp": bad}), lookup, METHOD, BODY, MARKET, NOW
            )


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"body": BODY + b"\x01"}, id="another-body"),
        pytest.param({"market_id": "tls-cert-sha256:" + "cd" * 32}, id="another-market"),
    ],
)
def test_auth_binds_body_and_market(keypair, change: dict) -> None:
    private, public = keypair
    metadata = dict(signing.auth_metadata(private, METHOD, BODY, MARKET, now=NOW))
    expected = {"body": BODY, "market_id": MARKET, **change}

    with pytest.raises(Unauthenticated, match="bad request signature"):
        signing.check_auth_metadata(
            metadata, _registry(public), METHOD, expected["body"], expected["market_id"], NOW
        )


@pytest.mark.parametrize("nonce", ["ab" * 8, "AB" * 16, "zz" * 16, "ab" * 33])
def test_auth_rejects_short_or_malformed_nonces(keypair, nonce: str) -> None:
    private, public = keypair
    metadata = dict(signing.auth_metadata(private, METHOD, BODY, MARKET, now=NOW))

    with pytest.raises(Unauthenticated, match="lwm-nonce must be"):
        signing.check_auth_metadata(
            dict(metadata, **{"lwm-nonce": nonce}), _registry(public), METHOD, BODY, MARKET, NOW
        )
