"""A captured request signature is good for one request at one market (issue 12, item 3).

Every authenticated RPC is called for real through ``MarketClient`` against a real market on
loopback (TLS, as ``lwm`` talks to it), while an interceptor under the signing one records
what went on the wire: the auth metadata and the request. Then each capture is sent again:
as it was (refused: a replay), with another body (refused: the signature covers the body;
an admin's RegisterKey must not register the attacker's key), and the signatures a fake
market collected are sent to the real one (refused: they name the fake's certificate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from builders import (
    build_learnware,
    random_rkme_spec,
    rkme_schema,
    train_lora_adapter,
    write_specs,
)
from market_fixtures import MarketUnderTest, market_server

from client.market import Connection, MarketClient
from server import auth, pki
from server.records import Role
from shared import signing, transport
from shared.errors import ResourceExhausted, Unauthenticated
from shared.models import model_ref
from shared.proto import market_pb2 as pb
from shared.proto import market_pb2_grpc

TIMEOUT = 30.0
AUTHENTICATED = sorted(auth.MARKET_ROLES)


@dataclass(frozen=True)
class Capture:
    """One call as it left the client: its auth metadata and request (a list for a stream)."""

    method: str
    metadata: tuple[tuple[str, str], ...]
    request: Any


class Recorder(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
):
    """Keeps the first call of each method; it sits under the signing interceptor."""

    def __init__(self) -> None:
        self.calls: dict[str, Capture] = {}

    def _keep(self, details: Any, request: Any) -> None:
        name = details.method.rsplit("/", 1)[-1]
        auth_only = tuple((k, v) for k, v in details.metadata or () if k in signing.AUTH_ENTRIES)
        self.calls.setdefault(name, Capture(details.method, auth_only, request))

    def intercept_unary_unary(self, continuation, details, request):
        self._keep(details, request)
        return continuation(details, request)

    def intercept_unary_stream(self, continuation, details, request):
        self._keep(details, request)
        return continuation(details, request)

    def intercept_stream_unary(self, continuation, details, requests):
        messages = list(requests)
        self._keep(details, messages)
        return continuation(details, iter(messages))


def send(channel: grpc.Channel, capture: Capture, request: Any = None) -> Any:
    """Send ``request`` (default: the captured one) with the captured auth metadata only."""
    request = capture.request if request is None else request
    options: dict[str, Any] = {"metadata": capture.metadata, "timeout": TIMEOUT}
    shape = {"Submit": channel.stream_unary, "Fetch": channel.unary_stream}
    call = shape.get(capture.method.rsplit("/", 1)[-1], channel.unary_unary)(
        capture.method,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=lambda raw: raw,
    )
    if isinstance(request, list):
        return call(iter(request), **options)
    answer = call(request, **options)
    return answer if isinstance(answer, bytes) else list(answer)


def refused(call: Callable[[], Any]) -> str:
    """The details of the UNAUTHENTICATED status ``call`` must end with."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value.details()
    return info.value.details()


@dataclass
class World:
    market: MarketUnderTest
    calls: dict[str, Capture]
    other_id: str  # a second learnware of the same contributor
    mallory: bytes  # an attacker's public key
    alice_kid: str

    def raw(self) -> grpc.Channel:
        """A channel that signs nothing: only the replayed metadata authenticates."""
        return transport.channel(self.market.address, ca=self.market.layout.ca_cert)


def _package(tmp: Path, lwm_home, adapter: Path, key: signing.Ed25519PrivateKey, seed: int):
    spec = random_rkme_spec(rkme_schema(lwm_home), seed=seed)
    (tmp / f"p{seed}").mkdir()
    spec_file = write_specs(tmp / f"p{seed}" / "spec.safetensors", [spec])
    return build_learnware(
        tmp / f"p{seed}" / "lw",
        adapter=adapter,
        spec_file=spec_file,
        base=model_ref("tiny", lwm_home),
        private_key=key,
        name=f"lw-{seed}",
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory, lwm_home) -> Iterator[World]:
    """One real call of every authenticated RPC, each recorded as it left the client."""
    tmp = tmp_path_factory.mktemp("replay")
    adapter = train_lora_adapter(lwm_home, tmp / "adapter", steps=0)
    recorder = Recorder()
    real_channel = grpc.secure_channel
    with (
        market_server(tmp, lwm_home, run_smoke=False) as market,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setattr(
            grpc,
            "secure_channel",
            lambda *a, **kw: grpc.intercept_channel(real_channel(*a, **kw), recorder),
        )
        admin = market.client("admin")
        alice_key = market.new_key("alice", None)
        alice_pub = signing.public_key_bytes(alice_key.public_key())
        admin.register_key(alice_pub, "contributor", "alice")
        market.new_key("uma", Role.USER)
        victim = market.new_key("victim", Role.USER)
        admin.revoke_key(signing.key_id(victim.public_key()), "left")
        admin.list_keys()
        admin.stats()
        alice, uma = market.client("alice"), market.client("uma")
        first = alice.submit(_package(tmp, lwm_home, adapter, alice_key, seed=1))
        other = alice.submit(_package(tmp, lwm_home, adapter, alice_key, seed=2))
        uma.get(first.id)
        uma.whoami()
        uma.history(first.id)
        list(uma.iter_learnwares())
        uma.search(random_rkme_spec(rkme_schema(lwm_home), seed=1))
        uma.fetch(first.id, tmp / "fetched.tar")
        alice.withdraw(first.id, "superseded")
        mp.undo()
        mallory = signing.public_key_bytes(signing.generate_keypair()[1])
        yield World(market, recorder.calls, other.id, mallory, signing.key_id(alice_pub))


def other_body(world: World, name: str, request: Any) -> Any:
    """The captured request changed the way an attacker would change it."""
    if name == "Submit":
        header = pb.SubmitHeader()
        header.CopyFrom(request[0].header)
        header.total_size += 1
        return [pb.SubmitRequest(header=header), *request[1:]]
    changed = type(request)()
    changed.CopyFrom(request)
    if name in ("Get", "GetHistory", "Fetch", "Withdraw"):
        changed.id = world.other_id  # the same user signature for another learnware
    elif name == "RegisterKey":
        changed.public_key, changed.role, changed.name = world.mallory, pb.ROLE_ADMIN, "root2"
    elif name == "RevokeKey":
        changed.key_id = world.alice_kid
    elif name == "ListKeys":
        changed.include_revoked = not changed.include_revoked
    elif name == "List":
        changed.page_size = 7
    elif name == "Search":
        changed.top_k = 50
    elif name in ("GetStats", "WhoAmI"):  # no fields: an unknown one changes the signed bytes
        changed = type(request).FromString(b"\x08\x01")
    return changed


def test_every_authenticated_rpc_was_captured(world: World) -> None:
    assert set(AUTHENTICATED) <= set(world.calls)
    assert all(dict(c.metadata).get(signing.AUTH_NONCE) for c in world.calls.values())


@pytest.mark.parametrize("name", AUTHENTICATED)
def test_a_replay_with_the_same_body_is_refused(world: World, name: str) -> None:
    details = refused(lambda: send(world.raw(), world.calls[name]))

    assert "replayed request" in details


@pytest.mark.parametrize("name", AUTHENTICATED)
def test_a_replay_with_another_body_is_refused(world: World, name: str) -> None:
    capture = world.calls[name]

    details = refused(lambda: send(world.raw(), capture, other_body(world, name, capture.request)))

    assert "bad request signature" in details


def test_a_replayed_admin_signature_registers_no_key(world: World) -> None:
    capture = world.calls["RegisterKey"]

    refused(lambda: send(world.raw(), capture, other_body(world, "RegisterKey", capture.request)))

    market = world.market.running.market
    assert market.key_of(signing.key_id(world.mallory)) is None
    assert not market.key_of(world.alice_kid).revoked  # RevokeKey's replay did nothing either


def test_a_user_signature_fetches_no_other_learnware(world: World) -> None:
    fetch = world.calls["Fetch"]

    details = refused(lambda: send(world.raw(), fetch, pb.FetchRequest(id=world.other_id)))

    assert "bad request signature" in details


class FakeMarket(market_pb2_grpc.MarketServicer):
    """A market of its own (its own CA and certificate) that keeps what clients send."""

    def __init__(self) -> None:
        self.calls: dict[str, Capture] = {}

    def _keep(self, name: str, request: Any, context: grpc.ServicerContext) -> None:
        metadata = tuple(
            (k, v) for k, v in context.invocation_metadata() if k in signing.AUTH_ENTRIES
        )
        self.calls[name] = Capture(auth.market_method(name), metadata, request)

    def Get(self, request, context):  # noqa: N802 (gRPC's names)
        self._keep("Get", request, context)
        return pb.LearnwareInfo()

    def RegisterKey(self, request, context):  # noqa: N802
        self._keep("RegisterKey", request, context)
        return pb.KeyInfo()


def test_signatures_collected_by_a_fake_market_are_refused_by_the_real_one(
    world: World, tmp_path
) -> None:
    layout = pki.init_server_dir(tmp_path / "fake")
    fake = FakeMarket()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    market_pb2_grpc.add_MarketServicer_to_server(fake, server)
    port = transport.add_port(server, "127.0.0.1:0", transport.server_credentials(layout, False))
    server.start()
    real = world.market
    try:
        for name in ("admin", "uma"):  # each signs a call for the fake market
            key = real.layout.admin_key if name == "admin" else real.keys_dir / f"{name}.key"
            conn = Connection(f"localhost:{port}", key_path=key, ca=layout.ca_cert)
            with MarketClient(conn) as client:
                if name == "admin":
                    client.register_key(world.mallory, "admin", "root2")
                else:
                    client.get(world.other_id)
    finally:
        server.stop(0).wait()

    for name in ("RegisterKey", "Get"):
        details = refused(lambda name=name: send(world.raw(), fake.calls[name]))
        assert "bad request signature" in details
    assert real.running.market.key_of(signing.key_id(world.mallory)) is None


# ---------------------------------------------------------------- the replay cache alone


def _signed(nonce: int, timestamp: int = 1_000) -> signing.SignedRequest:
    return signing.SignedRequest("0123456789abcdef", timestamp, f"{nonce:032x}")


def test_replay_cache_forgets_after_the_window_and_refuses_to_grow() -> None:
    cache = auth.ReplayCache(window_s=300, started_at=1_000.5, max_entries=2)
    cache.admit(_signed(1), now=1_000)
    cache.admit(_signed(2), now=1_000)

    with pytest.raises(ResourceExhausted, match="too many signed requests"):
        cache.admit(_signed(3), now=1_000)
    with pytest.raises(Unauthenticated, match="replayed request"):
        cache.admit(_signed(1), now=1_300)  # still inside the window
    cache.admit(_signed(3), now=1_301)  # 1 and 2 can no longer be replayed: forgotten
    assert len(cache) == 1


def test_replay_cache_refuses_what_was_signed_before_the_server_started() -> None:
    cache = auth.ReplayCache(window_s=300, started_at=1_000.5, max_entries=10)

    with pytest.raises(Unauthenticated, match="before this market started"):
        cache.admit(_signed(1, timestamp=999), now=1_000)
    cache.admit(_signed(2, timestamp=1_000), now=1_000)  # the second it started in is fine
