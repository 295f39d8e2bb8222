"""The market's own small PKI: a local CA, the server's TLS certificate, mTLS client certs.

Why a local CA: a market run by a hospital consortium has no public DNS name a public CA
would vouch for, and clients must pin *this* market anyway. ``lwm server init --dir DIR``
calls ``init_server_dir``; clients get ``DIR/ca.pem`` out of band (``--ca FILE``).

Why ECDSA P-256 for TLS: every TLS stack (BoringSSL inside gRPC included) speaks it, keys are
small and fast to make. Ed25519 stays for learnware signatures and request authentication
(``shared.signing``); the two never mix, so a leaked TLS key cannot sign a learnware.

Private keys are written PEM PKCS8 unencrypted with mode 0600, atomically (temp file, then
a link or rename), and never overwrite an existing file unless asked.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared import signing
from shared.errors import AlreadyExists, InvalidInput, NotFound
from shared.files import write_atomically

__all__ = [
    "DEFAULT_HOSTS",
    "ServerDirLayout",
    "create_ca",
    "init_server_dir",
    "issue_client_cert",
    "issue_client_files",
    "issue_server_cert",
    "load_cert",
    "load_tls_key",
    "open_server_dir",
    "save_cert",
    "save_tls_key",
]

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest leaf lifetime mainstream TLS clients still accept
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clients whose clock is a little behind
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

TlsKey = ec.EllipticCurvePrivateKey


# ---------------------------------------------------------------- certificates


def _new_key() -> TlsKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    if not common_name or len(common_name) > 64:
        raise InvalidInput(f"a certificate common name needs 1..64 characters: {common_name!r}")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def create_ca(common_name: str, *, days: int = CA_DAYS) -> tuple[TlsKey, x509.Certificate]:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = _new_key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    ca_key: TlsKey,
    ca_cert: x509.Certificate,
    common_name: str,
    usage: x509.ObjectIdentifier,
    days: int,
) -> tuple[TlsKey, x509.CertificateBuilder]:
    key = _new_key()
    ca_public = ca_cert.public_key()
    if not isinstance(ca_public, ec.EllipticCurvePublicKey):
        raise InvalidInput("the CA certificate does not hold an EC public key")
    builder = (
        _builder(_name(common_name), ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
    )
    return key, builder


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host):
        raise InvalidInput(f"not a host name or IP address: {host!r}")
    return x509.DNSName(host.lower())


def issue_server_cert(
    ca_key: TlsKey,
    ca_cert: x509.Certificate,
    hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS,
    *,
    days: int = LEAF_DAYS,
) -> tuple[TlsKey, x509.Certificate]:
    """A TLS server certificate for ``hosts`` (DNS names and IP literals, all in the SAN).

    Clients check the name they dial against the SAN, so list every name and address the
    market is reached by; the first host is also the subject's common name.
    """
    if not hosts:
        raise InvalidInput("a server certificate needs at least one host name or address")
    names = [_general_name(h.strip()) for h in hosts]
    key, builder = _leaf(ca_key, ca_cert, hosts[0].strip(), ExtendedKeyUsageOID.SERVER_AUTH, days)
    cert = builder.add_extension(x509.SubjectAlternativeName(names), critical=False).sign(
        ca_key, hashes.SHA256()
    )
    return key, cert


def issue_client_cert(
    ca_key: TlsKey, ca_cert: x509.Certificate, common_name: str, *, days: int = LEAF_DAYS
) -> tuple[TlsKey, x509.Certificate]:
    """An mTLS client certificate; the server sees ``common_name`` as ``x509_common_name``."""
    key, builder = _leaf(ca_key, ca_cert, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, days)
    return key, builder.sign(ca_key, hashes.SHA256())


# ---------------------------------------------------------------- PEM files


def save_cert(path: Path, cert: x509.Certificate, *, overwrite: bool = False) -> Path:
    """Write ``cert`` as PEM, mode 0644 (certificates are public)."""
    write_atomically(path, cert.public_bytes(serialization.Encoding.PEM), overwrite=overwrite)
    return path


def save_tls_key(path: Path, key: TlsKey, *, overwrite: bool = False) -> Path:
    """Write ``key`` as unencrypted PEM PKCS8, mode 0600: the server must start unattended."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(path, pem, mode=0o600, overwrite=overwrite)
    return path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise NotFound(f"{what} not found: {path}") from err
    except OSError as err:
        raise InvalidInput(f"cannot read {what} {path}: {err.strerror}") from err


def load_cert(path: Path) -> x509.Certificate:
    """Read one PEM certificate; ``NotFound`` or ``InvalidInput`` with the path otherwise."""
    try:
        return x509.load_pem_x509_certificate(_read(path, "certificate"))
    except ValueError as err:
        raise InvalidInput(f"{path} is not a PEM certificate: {err}") from err


def load_tls_key(path: Path) -> TlsKey:
    """Read an unencrypted PEM EC private key (as ``save_tls_key`` writes)."""
    try:
        key = serialization.load_pem_private_key(_read(path, "TLS key"), password=None)
    except (ValueError, TypeError) as err:
        raise InvalidInput(f"{path} is not an unencrypted PEM private key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInput(f"{path} holds a {type(key).__name__}, not an EC (P-256) key")
    return key


# ---------------------------------------------------------------- server directory


@dataclass(frozen=True)
class ServerDirLayout:
    """Where ``lwm server init`` puts things; ``lwm server start`` reads the same paths."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    admin_key: Path
    admin_pub: Path
    clients_dir: Path
    admin_key_id: str

    @classmethod
    def paths(cls, directory: Path, admin_key_id: str = "") -> ServerDirLayout:
        """The layout of ``directory`` without touching the disk."""
        d = Path(directory)
        return cls(
            dir=d,
            ca_cert=d / "ca.pem",
            ca_key=d / "ca.key",
            server_cert=d / "server.pem",
            server_key=d / "server.key",
            admin_key=d / "admin.key",
            admin_pub=d / "admin.pub",
            clients_dir=d / "clients",
            admin_key_id=admin_key_id,
        )

    def files(self) -> tuple[Path, ...]:
        return (
            self.ca_cert,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.admin_key,
            self.admin_pub,
        )


def init_server_dir(
    directory: Path,
    hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS,
    overwrite: bool = False,
    *,
    ca_name: str = "lwm market local CA",
) -> ServerDirLayout:
    """Make the CA, the server certificate for ``hosts`` and the admin Ed25519 key pair.

    Refuses (``AlreadyExists``) when any of those files is there already and ``overwrite`` is
    false: re-initialising would orphan every client that trusts the old CA and every key the
    old admin registered. Private keys get mode 0600; the directory itself 0700.
    """
    layout = ServerDirLayout.paths(directory)
    present = [p.name for p in layout.files() if p.exists()]
    if present and not overwrite:
        raise AlreadyExists(
            f"{layout.dir} is already initialised ({', '.join(present)}); "
            "refusing to replace its CA and admin key"
        )
    layout.dir.mkdir(parents=True, exist_ok=True)
    layout.dir.chmod(0o700)
    ca_key, ca_cert = create_ca(ca_name)
    server_key, server_cert = issue_server_cert(ca_key, ca_cert, hosts)
    admin_private, admin_public = signing.generate_keypair()
    # Keys first, certificates last: a crash midway leaves a dir that still refuses re-init
    # without overwrite instead of a CA cert whose key was never written.
    save_tls_key(layout.ca_key, ca_key, overwrite=overwrite)
    save_tls_key(layout.server_key, server_key, overwrite=overwrite)
    signing.save_private_key(layout.admin_key, admin_private, overwrite=overwrite)
    signing.save_public_key(layout.admin_pub, admin_public, overwrite=overwrite)
    save_cert(layout.ca_cert, ca_cert, overwrite=overwrite)
    save_cert(layout.server_cert, server_cert, overwrite=overwrite)
    return ServerDirLayout.paths(layout.dir, signing.key_id(admin_public))


def open_server_dir(directory: Path) -> ServerDirLayout:
    """The layout of an initialised dir, with its admin key id; ``NotFound`` if incomplete."""
    layout = ServerDirLayout.paths(directory)
    missing = [p.name for p in layout.files() if not p.exists()]
    if missing:
        raise NotFound(
            f"{layout.dir} is not an initialised server dir (missing {', '.join(missing)}); "
            f"run `lwm server init --dir {layout.dir}` first"
        )
    admin_id = signing.key_id(signing.load_public_key(layout.admin_pub))
    return ServerDirLayout.paths(layout.dir, admin_id)


def issue_client_files(directory: Path, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Issue an mTLS client certificate named ``name``: ``DIR/clients/NAME.pem`` and ``.key``.

    ``name`` becomes the certificate's common name (what the server logs as the TLS peer),
    so it is limited to a safe file name. Returns ``(cert_path, key_path)``.
    """
    if not _CLIENT_NAME.match(name):
        raise InvalidInput(
            f"client name must be 1-64 of letters, digits, '.', '_', '-' "
            f"and start with a letter or digit: {name!r}"
        )
    layout = open_server_dir(directory)
    cert_path = layout.clients_dir / f"{name}.pem"
    key_path = layout.clients_dir / f"{name}.key"
    if not overwrite and (cert_path.exists() or key_path.exists()):
        raise AlreadyExists(f"client {name!r} already has files in {layout.clients_dir}")
    ca_key, ca_cert = load_tls_key(layout.ca_key), load_cert(layout.ca_cert)
    key, cert = issue_client_cert(ca_key, ca_cert, name)
    layout.clients_dir.mkdir(mode=0o700, exist_ok=True)
    save_tls_key(key_path, key, overwrite=overwrite)
    save_cert(cert_path, cert, overwrite=overwrite)
    return cert_path, key_path
