"""TLS, mutual TLS and the loopback-only insecure rule over a real server (server/transport.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server import pki
from shared import transport
from shared.errors import InvalidInput, NotFound
from shared.proto import market_pb2, market_pb2_grpc

BIG = 6 * 1024 * 1024  # over gRPC's 4 MiB default, under transport.MAX_MESSAGE_BYTES
TIMEOUT = 10.0


class _Market(market_pb2_grpc.MarketServicer):
    """GetSchema only: echoes the TLS peer's common name, or a big reply when asked."""

    def GetSchema(self, request, context):  # noqa: N802 (gRPC's name)
        names = context.auth_context().get("x509_common_name") or [b""]
        big = dict(context.invocation_metadata()).get("want-big") == "1"
        kind = market_pb2.SpecKindSchema(kind="rkme", params_json="x" * BIG if big else "{}")
        return market_pb2.Schema(
            protocol_version="1", default_spec_kind=names[0].decode(), spec_kinds=[kind]
        )


@contextlib.contextmanager
def serve(
    credentials: grpc.ServerCredentials | None, address: str = "127.0.0.1:0"
) -> Iterator[int]:
    """A real server with the market's message limits and health; yields the bound port."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=2), options=transport.message_size_options()
    )
    market_pb2_grpc.add_MarketServicer_to_server(_Market(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = transport.add_port(server, address, credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait()


def get_schema(chan: grpc.Channel, **metadata: str) -> market_pb2.Schema:
    with chan:
        stub = market_pb2_grpc.MarketStub(chan)
        return stub.GetSchema(
            market_pb2.GetSchemaRequest(), timeout=TIMEOUT, metadata=list(metadata.items())
        )


@dataclass(frozen=True)
class Pki:
    layout: pki.ServerDirLayout
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_cert: Path
    other_key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Our market's dir with one client, and a second, unrelated CA with its own client."""
    layout = pki.init_server_dir(tmp_path_factory.mktemp("srv"))
    cert, key = pki.issue_client_files(layout.dir, "hospital-a")
    other = pki.init_server_dir(tmp_path_factory.mktemp("other"))
    other_cert, other_key = pki.issue_client_files(other.dir, "mallory")
    return Pki(layout, cert, key, other.ca_cert, other_cert, other_key)


@pytest.fixture(scope="module")
def tls_port(certs: Pki) -> Iterator[int]:
    with serve(transport.server_credentials(certs.layout, require_client_auth=False)) as port:
        yield port


@pytest.fixture(scope="module")
def mtls_port(certs: Pki) -> Iterator[int]:
    with serve(transport.server_credentials(certs.layout, require_client_auth=True)) as port:
        yield port


def _refused(chan: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        get_schema(chan)
    return info.value.code()


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("127.0.0.1:50051", "127.0.0.1", 50051),
        ("[::1]:0", "::1", 0),
        ("localhost:8443", "localhost", 8443),
        ("market.example.org:443", "market.example.org", 443),
    ],
)
def test_parse_address(address: str, host: str, port: int) -> None:
    assert transport.parse_address(address) == transport.Address(host, port)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "::1:50051", "[::1]50051", ":50051", "localhost:http", "localhost:70000", "[::1"],
)
def test_parse_address_refuses_malformed(address: str) -> None:
    with pytest.raises(InvalidInput, match="bad address"):
        transport.parse_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:1",
        "127.8.9.10:1",
        "localhost:1",
        "LOCALHOST:1",
        "[::1]:1",
        "[::ffff:127.0.0.1]:1",
    ],
)
def test_insecure_allowed_on_loopback(address: str) -> None:
    assert transport.check_insecure_address(address).is_loopback


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0:1",
        "[::]:1",
        "192.168.1.20:1",
        "10.0.0.1:1",
        "market.lan:1",
        "localhost.evil.com:1",
        "[fe80::1]:1",
    ],
)
def test_insecure_refused_elsewhere_with_one_line_reason(address: str) -> None:
    with pytest.raises(InvalidInput, match="only allowed on loopback") as info:
        transport.check_insecure_address(address)
    assert "\n" not in str(info.value)


def test_insecure_server_and_channel_refuse_non_loopback() -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=1))

    with pytest.raises(InvalidInput):
        transport.add_port(server, "0.0.0.0:0", None)
    with pytest.raises(InvalidInput):
        transport.channel("192.168.1.20:50051", insecure=True)
    server.stop(0)


@pytest.mark.parametrize("address", ["127.0.0.1:0", "localhost:0", "[::1]:0"])
def test_insecure_on_loopback_serves_health(address: str) -> None:
    with serve(None, address) as port:
        host = transport.parse_address(address).host
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        with transport.channel(target, insecure=True) as chan:
            reply = health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT
            )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------- TLS and mTLS


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_works_with_the_market_ca(certs: Pki, tls_port: int, host: str) -> None:
    schema = get_schema(transport.channel(f"{host}:{tls_port}", ca=certs.layout.ca_cert))

    assert schema.protocol_version == "1"
    assert schema.default_spec_kind == ""  # no client certificate under plain TLS


def test_tls_client_trusting_another_ca_fails(certs: Pki, tls_port: int) -> None:
    chan = transport.channel(f"127.0.0.1:{tls_port}", ca=certs.other_ca)

    assert _refused(chan) == grpc.StatusCode.UNAVAILABLE


def test_tls_client_dialling_a_name_not_in_the_certificate_fails(certs: Pki, tls_port: int) -> None:
    options = [("grpc.ssl_target_name_override", "market.elsewhere.org")]
    chan = transport.channel(f"127.0.0.1:{tls_port}", ca=certs.layout.ca_cert, options=options)

    assert _refused(chan) == grpc.StatusCode.UNAVAILABLE


def test_mtls_works_and_the_server_sees_the_client_name(certs: Pki, mtls_port: int) -> None:
    chan = transport.channel(
        f"127.0.0.1:{mtls_port}",
        ca=certs.layout.ca_cert,
        client_cert=certs.client_cert,
        client_key=certs.client_key,
    )

    assert get_schema(chan).default_spec_kind == "hospital-a"


def test_mtls_refuses_a_client_without_certificate(certs: Pki, mtls_port: int) -> None:
    chan = transport.channel(f"127.0.0.1:{mtls_port}", ca=certs.layout.ca_cert)

    assert _refused(chan) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_certificate_from_another_ca(certs: Pki, mtls_port: int) -> None:
    chan = transport.channel(
        f"127.0.0.1:{mtls_port}",
        ca=certs.layout.ca_cert,
        client_cert=certs.other_cert,
        client_key=certs.other_key,
    )

    assert _refused(chan) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_certificate_with_the_wrong_key(certs: Pki, mtls_port: int) -> None:
    chan = transport.channel(  # BoringSSL refuses the mismatched pair before connecting
        f"127.0.0.1:{mtls_port}",
        ca=certs.layout.ca_cert,
        client_cert=certs.client_cert,
        client_key=certs.other_key,
    )

    assert _refused(chan) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_the_server_certificate_as_a_client_one(certs: Pki, mtls_port: int) -> None:
    chan = transport.channel(  # same CA, but its extended key usage is SERVER_AUTH only
        f"127.0.0.1:{mtls_port}",
        ca=certs.layout.ca_cert,
        client_cert=certs.layout.server_cert,
        client_key=certs.layout.server_key,
    )

    assert _refused(chan) == grpc.StatusCode.UNAVAILABLE


def test_message_limit_is_lifted_on_both_sides(certs: Pki, tls_port: int) -> None:
    chan = transport.channel(f"127.0.0.1:{tls_port}", ca=certs.layout.ca_cert)

    schema = get_schema(chan, **{"want-big": "1"})

    assert len(schema.spec_kinds[0].params_json) == BIG


def test_default_grpc_limit_would_refuse_the_same_reply(certs: Pki, tls_port: int) -> None:
    creds = transport.channel_credentials(certs.layout.ca_cert)
    chan = grpc.secure_channel(f"127.0.0.1:{tls_port}", creds)

    with pytest.raises(grpc.RpcError) as info:
        get_schema(chan, **{"want-big": "1"})
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_credentials_refuse_half_a_client_identity_and_missing_files(
    certs: Pki, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="needs its key"):
        transport.channel_credentials(certs.layout.ca_cert, client_cert=certs.client_cert)
    with pytest.raises(InvalidInput, match="cannot be combined"):
        transport.channel("127.0.0.1:1", insecure=True, ca=certs.layout.ca_cert)
    with pytest.raises(NotFound):
        transport.channel("127.0.0.1:1", ca=tmp_path / "nope.pem")
    paths = transport.ServerTlsPaths(tmp_path / "ca.pem", tmp_path / "s.pem", tmp_path / "s.key")
    with pytest.raises(NotFound):
        transport.server_credentials(paths, require_client_auth=False)
