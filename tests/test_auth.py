"""Request authentication, roles and error mapping over a real gRPC server (server/auth.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import FrozenInstanceError
from typing import Any

import grpc
import pytest

from server import auth, pki
from server.records import KeyRecord, Role
from shared import errors, signing, transport
from shared.market_identity import INSECURE_MARKET_ID, server_market_id
from shared.proto import market_pb2, market_pb2_grpc

TIMEOUT = 10.0
GET = auth.market_method("Get")
GET_X = signing.request_body(market_pb2.GetRequest(id="x"))


@contextlib.contextmanager
def status_on_error(context: grpc.ServicerContext) -> Iterator[None]:
    """An ``LwmError`` ends the call with ``auth.grpc_status`` and its message, as
    ``server.service`` answers (there on grpc.aio; this double is a plain gRPC server)."""
    try:
        yield
    except errors.LwmError as error:
        context.abort(auth.grpc_status(error), str(error))


class _Market(market_pb2_grpc.MarketServicer):
    """Thin handlers as the real service runs them: authenticate the call's credentials,
    then answer with the caller.

    ``Get`` with an id ``raise:NAME`` raises ``shared.errors.NAME`` to exercise the mapping.
    """

    def __init__(self, authenticator: auth.Authenticator) -> None:
        self._auth = authenticator

    def _require(self, context: grpc.ServicerContext, name: str, request: Any) -> auth.Caller:
        return self._auth.authenticate(
            auth.Credentials.of(context), auth.market_method(name), auth.MARKET_ROLES[name], request
        )

    def GetSchema(self, request, context):  # noqa: N802 (gRPC's names)
        return market_pb2.Schema(protocol_version="1")

    def Get(self, request, context):  # noqa: N802
        with status_on_error(context):
            if request.id.startswith("raise:"):
                raise getattr(errors, request.id.removeprefix("raise:"))("boom: one line")
            caller = self._require(context, "Get", request)
            return market_pb2.LearnwareInfo(
                contributor_key_id=caller.key_id,
                contributor_name=caller.name,
                name=caller.tls_common_name or "",
            )

    def Submit(self, request_iterator, context):  # noqa: N802
        with status_on_error(context):
            first = next(request_iterator, None)
            caller = self._require(context, "Submit", first)
            count = 1 + sum(1 for _ in request_iterator)
            return market_pb2.SubmitResponse(id=caller.key_id, reason=str(count))

    def Fetch(self, request, context):  # noqa: N802
        with status_on_error(context):
            caller = self._require(context, "Fetch", request)
        yield market_pb2.FetchChunk(header=market_pb2.FetchHeader(id=caller.key_id))


class Registry:
    """An in-memory key registry standing in for the store."""

    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}

    def add(self, role: Role, name: str, revoked: bool = False) -> signing.Ed25519PrivateKey:
        private, public = signing.generate_keypair()
        raw = signing.public_key_bytes(public)
        kid = signing.key_id(raw)
        self.records[kid] = KeyRecord(kid, raw, role, name, revoked=revoked)
        return private


@contextlib.contextmanager
def serve(servicer: _Market, credentials: grpc.ServerCredentials | None = None) -> Iterator[int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    market_pb2_grpc.add_MarketServicer_to_server(servicer, server)
    port = transport.add_port(server, "127.0.0.1:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait()


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


@pytest.fixture(scope="module")
def port(registry: Registry) -> Iterator[int]:
    with serve(_Market(auth.Authenticator(registry.records.get, INSECURE_MARKET_ID))) as bound:
        yield bound


@pytest.fixture(scope="module")
def keys(registry: Registry) -> dict[str, signing.Ed25519PrivateKey]:
    return {
        "user": registry.add(Role.USER, "ann"),
        "contributor": registry.add(Role.CONTRIBUTOR, "st-mary"),
        "admin": registry.add(Role.ADMIN, "root"),
        "revoked": registry.add(Role.USER, "gone", revoked=True),
    }


def stub(
    port: int, key: signing.Ed25519PrivateKey | None = None, clock: Callable[[], float] = time.time
) -> market_pb2_grpc.MarketStub:
    chan = transport.channel(f"127.0.0.1:{port}", insecure=True)
    if key is not None:
        signer = transport.SigningInterceptor(key, lambda: INSECURE_MARKET_ID, clock=clock)
        chan = grpc.intercept_channel(chan, signer)
    return market_pb2_grpc.MarketStub(chan)


def kid(key: signing.Ed25519PrivateKey) -> str:
    return signing.key_id(key.public_key())


def fails(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def submit(market: market_pb2_grpc.MarketStub) -> market_pb2.SubmitResponse:
    requests = iter([market_pb2.SubmitRequest(header=market_pb2.SubmitHeader())] * 3)
    return market.Submit(requests, timeout=TIMEOUT)


def fetch(market: market_pb2_grpc.MarketStub) -> list[market_pb2.FetchChunk]:
    return list(market.Fetch(market_pb2.FetchRequest(id="x"), timeout=TIMEOUT))


# ---------------------------------------------------------------- accepted


def test_signed_calls_of_every_shape_succeed(port: int, keys) -> None:
    user, contributor = stub(port, keys["user"]), stub(port, keys["contributor"])

    info = user.Get(market_pb2.GetRequest(id="x"), timeout=TIMEOUT)
    reply = submit(contributor)
    chunks = fetch(user)

    assert (info.contributor_key_id, info.contributor_name) == (kid(keys["user"]), "ann")
    assert info.name == ""  # no TLS peer on an insecure channel
    assert (reply.id, reply.reason) == (kid(keys["contributor"]), "3")
    assert [c.header.id for c in chunks] == [kid(keys["user"])]


def test_admin_may_do_everything(port: int, keys) -> None:
    admin = stub(port, keys["admin"])

    assert admin.Get(market_pb2.GetRequest(id="x"), timeout=TIMEOUT).contributor_name == "root"
    assert submit(admin).id == kid(keys["admin"])
    assert fetch(admin)[0].header.id == kid(keys["admin"])


def test_public_method_needs_no_key(port: int) -> None:
    assert stub(port).GetSchema(market_pb2.GetSchemaRequest(), timeout=TIMEOUT).protocol_version


def test_mtls_common_name_is_recorded(registry: Registry, keys, tmp_path) -> None:
    layout = pki.init_server_dir(tmp_path)
    cert, key = pki.issue_client_files(tmp_path, "hospital-a")
    creds = transport.server_credentials(layout, require_client_auth=True)

    authenticator = auth.Authenticator(registry.records.get, server_market_id(layout))
    with serve(_Market(authenticator), creds) as bound:
        chan = transport.channel(
            f"localhost:{bound}",
            ca=layout.ca_cert,
            client_cert=cert,
            client_key=key,
            signing_key=keys["user"],
        )
        info = market_pb2_grpc.MarketStub(chan).Get(market_pb2.GetRequest(id="x"), timeout=TIMEOUT)

    assert (info.name, info.contributor_key_id) == ("hospital-a", kid(keys["user"]))


# ---------------------------------------------------------------- refused


def test_unsigned_call_is_unauthenticated(port: int) -> None:
    error = fails(lambda: stub(port).Get(market_pb2.GetRequest(id="x"), timeout=TIMEOUT))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing lwm-key-id" in error.details()


@pytest.mark.parametrize("who", ["unregistered", "revoked"])
def test_unknown_and_revoked_keys_are_unauthenticated(port: int, keys, who: str) -> None:
    key = signing.generate_keypair()[0] if who == "unregistered" else keys["revoked"]

    error = fails(lambda: stub(port, key).Get(market_pb2.GetRequest(id="x"), timeout=TIMEOUT))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown or revoked key" in error.details()


def _signed(key: signing.Ed25519PrivateKey, method: str = GET) -> list[tuple[str, str]]:
    return signing.auth_metadata(key, method, GET_X, INSECURE_MARKET_ID)


def _tampered(key: signing.Ed25519PrivateKey, method: str) -> list[tuple[str, str]]:
    metadata = dict(_signed(key, method))
    sig = bytearray(bytes.fromhex(metadata[signing.AUTH_SIGNATURE]))
    sig[0] ^= 1
    metadata[signing.AUTH_SIGNATURE] = sig.hex()
    return list(metadata.items())


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda key: _tampered(key, GET), id="flipped-bit"),
        pytest.param(
            lambda key: _signed(key, auth.market_method("Fetch")),
            id="signed-for-another-method",
        ),
        pytest.param(
            lambda key: _signed(signing.generate_keypair()[0])[:1] + _signed(key)[1:],
            id="another-key-id",
        ),
    ],
)
def test_bad_signature_is_unauthenticated(port: int, keys, make) -> None:
    metadata = make(keys["user"])

    error = fails(
        lambda: stub(port).Get(market_pb2.GetRequest(id="x"), timeout=TIMEOUT, metadata=metadata)
    )

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_stale_timestamp_is_unauthenticated(port: int, keys) -> None:
    late = stub(port, keys["user"], clock=lambda: time.time() - 3600)

    error = fails(lambda: late.Get(market_pb2.GetRequest(id="x"), timeout=TIMEOUT))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "stale" in error.details()


def test_server_clock_is_injected(registry: Registry, keys) -> None:
    ahead = auth.Authenticator(
        registry.records.get, INSECURE_MARKET_ID, clock=lambda: time.time() + 301
    )

    with serve(_Market(ahead)) as bound:
        error = fails(
            lambda: stub(bound, keys["user"]).Get(market_pb2.GetRequest(id="x"), timeout=TIMEOUT)
        )

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_user_may_not_submit(port: int, keys) -> None:
    error = fails(lambda: submit(stub(port, keys["user"])))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "role USER may not Submit"


def test_repeated_auth_metadata_is_refused(port: int, keys) -> None:
    metadata = _signed(keys["user"]) + [(signing.AUTH_KEY_ID, "x")]

    error = fails(
        lambda: stub(port).Get(market_pb2.GetRequest(id="x"), timeout=TIMEOUT, metadata=metadata)
    )

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "more than once" in error.details()


# ---------------------------------------------------------------- error mapping


def _all_errors() -> list[type[errors.LwmError]]:
    found, todo = [], [errors.LwmError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


@pytest.mark.parametrize("error_class", _all_errors(), ids=lambda c: c.__name__)
def test_each_error_is_answered_with_its_status(port: int, error_class) -> None:
    market = stub(port)

    error = fails(
        lambda: market.Get(
            market_pb2.GetRequest(id=f"raise:{error_class.__name__}"), timeout=TIMEOUT
        )
    )

    assert error.code() == grpc.StatusCode[error_class.status]
    assert error.details() == "boom: one line"


def test_grpc_status_falls_back_to_internal() -> None:
    class Odd(errors.LwmError):
        status = "NOT_A_CODE"

    assert auth.grpc_status(Odd()) == grpc.StatusCode.INTERNAL
    assert auth.grpc_status(errors.DataError()) == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- without gRPC


def test_check_without_grpc_and_caller_is_frozen(registry: Registry, keys) -> None:
    authenticator = auth.Authenticator(registry.records.get, "m", clock=lambda: 1_790_000_000.0)

    def metadata() -> dict[str, str]:
        return dict(signing.auth_metadata(keys["contributor"], GET, b"", "m", now=1_790_000_100))

    caller = authenticator.check(metadata(), GET, {Role.CONTRIBUTOR}, b"", tls_common_name="cn")

    assert caller == auth.Caller(kid(keys["contributor"]), Role.CONTRIBUTOR, "st-mary", "cn")
    with pytest.raises(FrozenInstanceError):
        caller.role = Role.ADMIN  # type: ignore[misc]
    with pytest.raises(errors.PermissionDenied, match="role CONTRIBUTOR may not Get"):
        authenticator.check(metadata(), GET, {Role.USER}, b"")


def test_interceptor_replaces_spoofed_auth_and_keeps_other_metadata(keys) -> None:
    seen: list[Any] = []
    interceptor = transport.SigningInterceptor(
        keys["user"], lambda: "m", clock=lambda: 1_790_000_000.0
    )
    details = transport._ClientCallDetails(
        GET, 5.0, [("x-trace", "t1"), (signing.AUTH_KEY_ID, "spoof")], None, None, None
    )

    interceptor.intercept_unary_unary(lambda d, r: seen.append(d), details, None)

    metadata = dict(seen[0].metadata)
    assert metadata["x-trace"] == "t1"
    assert metadata[signing.AUTH_KEY_ID] == kid(keys["user"])
    assert metadata[signing.AUTH_TIMESTAMP] == "1790000000"
    assert seen[0].timeout == 5.0
