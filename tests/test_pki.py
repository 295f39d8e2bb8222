"""The market's local CA, certificates and initialised server dir (server/pki.py)."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server import pki
from shared import signing
from shared.errors import AlreadyExists, InvalidInput, NotFound


@pytest.fixture(scope="module")
def ca() -> tuple[pki.TlsKey, x509.Certificate]:
    return pki.create_ca("test CA")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_is_a_p256_ca_that_signs_itself(ca) -> None:
    key, cert = ca

    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value

    assert isinstance(key.curve, ec.SECP256R1)
    assert constraints.critical and constraints.value.ca
    assert usage.key_cert_sign and usage.crl_sign
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert.verify_directly_issued_by(cert)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 3650


def test_server_cert_names_every_host_and_is_for_server_auth(ca) -> None:
    ca_key, ca_cert = ca

    _, cert = pki.issue_server_cert(ca_key, ca_cert, ["localhost", "127.0.0.1", "::1", "m.lan"])

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "m.lan"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca_cert)


def test_client_cert_carries_its_name_and_client_auth(ca) -> None:
    ca_key, ca_cert = ca

    _, cert = pki.issue_client_cert(ca_key, ca_cert, "st-mary")

    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert cn == "st-mary"
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(ca_cert)


@pytest.mark.parametrize("hosts", [[], ["bad host"], ["a/b"]])
def test_server_cert_refuses_bad_hosts(ca, hosts) -> None:
    with pytest.raises(InvalidInput):
        pki.issue_server_cert(ca[0], ca[1], hosts)


def test_pem_round_trip_with_private_mode_and_no_clobber(ca, tmp_path: Path) -> None:
    key, cert = ca
    key_path, cert_path = tmp_path / "x.key", tmp_path / "x.pem"

    pki.save_tls_key(key_path, key)
    pki.save_cert(cert_path, cert)

    assert _mode(key_path) == 0o600
    assert pki.load_cert(cert_path) == cert
    assert pki.load_tls_key(key_path).private_numbers() == key.private_numbers()
    with pytest.raises(AlreadyExists):
        pki.save_tls_key(key_path, key)
    pki.save_tls_key(key_path, key, overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_load_refuses_missing_and_wrong_files(tmp_path: Path) -> None:
    ed_key, _ = signing.generate_keypair()
    signing.save_private_key(tmp_path / "ed.key", ed_key)
    (tmp_path / "junk.pem").write_text("not pem")

    with pytest.raises(NotFound):
        pki.load_cert(tmp_path / "missing.pem")
    with pytest.raises(InvalidInput):
        pki.load_cert(tmp_path / "junk.pem")
    with pytest.raises(InvalidInput, match="not an EC"):
        pki.load_tls_key(tmp_path / "ed.key")


def test_init_server_dir_makes_everything_once(tmp_path: Path) -> None:
    directory = tmp_path / "srv"

    layout = pki.init_server_dir(directory, ["localhost", "127.0.0.1"])

    assert sorted(p.name for p in directory.iterdir()) == [
        "admin.key",
        "admin.pub",
        "ca.key",
        "ca.pem",
        "server.key",
        "server.pem",
    ]
    for private in (layout.ca_key, layout.server_key, layout.admin_key):
        assert _mode(private) == 0o600
    admin_public = signing.load_public_key(layout.admin_pub)
    assert layout.admin_key_id == signing.key_id(admin_public)
    assert signing.load_private_key(layout.admin_key).public_key() == admin_public
    pki.load_cert(layout.server_cert).verify_directly_issued_by(pki.load_cert(layout.ca_cert))
    assert pki.open_server_dir(directory) == layout
    with pytest.raises(AlreadyExists, match="already initialised"):
        pki.init_server_dir(directory)


def test_init_server_dir_overwrites_only_when_asked(tmp_path: Path) -> None:
    first = pki.init_server_dir(tmp_path)

    second = pki.init_server_dir(tmp_path, overwrite=True)

    assert second.admin_key_id != first.admin_key_id
    assert pki.open_server_dir(tmp_path).admin_key_id == second.admin_key_id


def test_open_server_dir_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="lwm server init"):
        pki.open_server_dir(tmp_path)


def test_issue_client_files(tmp_path: Path) -> None:
    layout = pki.init_server_dir(tmp_path)

    cert_path, key_path = pki.issue_client_files(tmp_path, "bank-1")

    assert (cert_path, key_path) == (
        layout.clients_dir / "bank-1.pem",
        layout.clients_dir / "bank-1.key",
    )
    assert _mode(key_path) == 0o600
    pki.load_cert(cert_path).verify_directly_issued_by(pki.load_cert(layout.ca_cert))
    with pytest.raises(AlreadyExists):
        pki.issue_client_files(tmp_path, "bank-1")
    for bad in ("../evil", ".hidden", "", "a b"):
        with pytest.raises(InvalidInput):
            pki.issue_client_files(tmp_path, bad)
