"""Nobody can stall the market (issue 12, item 1).

Attacks from the issue, on a real market on loopback (TLS, SQLite): calls that open and
never send their first message (no key needed), an authenticated upload that sends its
header and 1 KB and goes silent, a download whose reader stops reading, and one address
opening more calls than it may. Each must be cut by the market (DEADLINE_EXCEEDED or
RESOURCE_EXHAUSTED) while health and honest Searches answer, and leave nothing behind.
Deadlines are short here (``CallLimits``) so the tests wait seconds, not minutes.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from builders import build_learnware, random_rkme_spec, rkme_schema, train_lora_adapter, write_specs
from grpc_health.v1 import health_pb2, health_pb2_grpc
from market_fixtures import MarketUnderTest, market_server

from client.market import upload_requests
from server.auth import market_method
from server.records import Role
from server.settings import CallLimits
from shared import signing, transport
from shared.models import model_ref
from shared.proto import market_pb2 as pb

FIRST_MESSAGE_S = 2.0
IDLE_S = 1.0
STALLED = 64
LIMITS = CallLimits(
    first_message_s=FIRST_MESSAGE_S,
    idle_s=IDLE_S,
    max_calls_per_address=STALLED + 16,
    max_streams_per_key=1,
)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    ends = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > ends:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.02)


class Stall:
    """Calls that send ``first`` (maybe nothing) and then nothing until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[grpc.Future] = []

    def _silent(self, first: list[object]) -> Iterator[object]:
        yield from first
        self.release.wait()

    def open(
        self, channel: grpc.Channel, method: str, first: list[object] | None = None
    ) -> grpc.Future:
        call = channel.stream_unary(market_method(method), request_serializer=_bytes).future(
            self._silent(first or []), timeout=60
        )
        self.calls.append(call)
        return call

    def errors(self, timeout_s: float) -> list[grpc.RpcError]:
        """How each call ended (``AssertionError`` if one is still open after ``timeout_s``)."""
        return [call.exception(timeout=timeout_s) for call in self.calls]  # type: ignore[misc]


def assert_cut(errors: list[grpc.RpcError], code: grpc.StatusCode, reason: str) -> None:
    assert {e.code() for e in errors} == {code}
    assert all(reason in e.details() for e in errors), errors[0].details()


def _bytes(message: pb.SubmitRequest | pb.FetchRequest) -> bytes:
    return message.SerializeToString()


@pytest.fixture
def stall() -> Iterator[Stall]:
    stall = Stall()
    yield stall
    stall.release.set()


@pytest.fixture(scope="module")
def market(tmp_path_factory, lwm_home) -> Iterator[MarketUnderTest]:
    with market_server(
        tmp_path_factory.mktemp("stalls"), lwm_home, run_smoke=False, calls=LIMITS
    ) as market:
        market.new_key("uma", Role.USER)
        market.new_key("carl", Role.CONTRIBUTOR)
        yield market


def raw_channel(market: MarketUnderTest) -> grpc.Channel:
    """A channel without a key: what a stranger has."""
    return transport.channel(market.address, ca=market.layout.ca_cert)


def in_flight(market: MarketUnderTest) -> tuple[int, int]:
    return market.running.service.admission.in_flight()


def health_check(market: MarketUnderTest, timeout_s: float) -> int:
    with raw_channel(market) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s).status


def test_calls_that_never_send_starve_nobody_and_are_cut(market, stall, lwm_home) -> None:
    channel = raw_channel(market)
    for i in range(STALLED):  # half uploads, half unary calls; no key, no first message
        stall.open(channel, "Submit" if i % 2 else "Search")
    wait_until(lambda: in_flight(market)[0] == STALLED, 10, f"{STALLED} calls in flight")

    assert health_check(market, timeout_s=1.0) == health_pb2.HealthCheckResponse.SERVING
    assert market.client("uma").search(random_rkme_spec(rkme_schema(lwm_home), seed=3)) == []
    assert market.client("uma").schema().max_chunk_bytes > 0

    errors = stall.errors(timeout_s=FIRST_MESSAGE_S + 10)
    assert_cut(errors, grpc.StatusCode.DEADLINE_EXCEEDED, f"within {FIRST_MESSAGE_S:g} s")
    wait_until(lambda: in_flight(market) == (0, 0), 5, "every slot given back")
    channel.close()


@pytest.fixture(scope="module")
def package(market, tmp_path_factory, lwm_home) -> Path:
    tmp = tmp_path_factory.mktemp("stall-package")
    key = signing.load_private_key(market.keys_dir / "carl.key")
    adapter = train_lora_adapter(lwm_home, tmp / "adapter", steps=0, r=512)
    spec = write_specs(tmp / "spec.safetensors", [random_rkme_spec(rkme_schema(lwm_home), seed=5)])
    return build_learnware(
        tmp / "lw",
        adapter=adapter,
        spec_file=spec,
        base=model_ref("tiny", lwm_home),
        private_key=key,
    )


def test_a_silent_upload_is_cut_and_leaves_nothing(market, package, stall) -> None:
    carl = market.client("carl")
    counts = market.learnware_count(), market.blob_count()
    with tempfile.TemporaryFile() as tar:
        header, first_chunk = list(upload_requests(package, tar, 1024))[:2]
    upload = stall.open(carl.channel, "Submit", [header, first_chunk])
    wait_until(lambda: in_flight(market)[1] == 1, 10, "the upload authenticated")

    with pytest.raises(grpc.RpcError) as second:  # one upload per key at a time (LIMITS)
        carl.stub.Submit(iter([header]), timeout=5)
    assert second.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "uploads and downloads of key" in second.value.details()

    error = upload.exception(timeout=IDLE_S + 10)
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
    assert f"no message for {IDLE_S:g} s" in error.details()
    wait_until(lambda: in_flight(market) == (0, 0), 5, "every slot given back")
    blobs = market.running.market.blobs
    assert not [p for p in blobs.temp_dir.rglob("*") if p.is_file()]  # no .part left
    assert not [p for p in blobs.work_dir.rglob("*") if p.is_file()]
    assert (market.learnware_count(), market.blob_count()) == counts


def test_a_reader_that_stops_reading_is_cut(market, package) -> None:
    learnware_id = market.client("carl").submit(package).id
    reader = transport.channel(
        market.address,
        ca=market.layout.ca_cert,
        signing_key=signing.load_private_key(market.keys_dir / "uma.key"),
        # a small, fixed receive window: the ~13 MB package cannot all sit in the client's
        # buffers, so the market blocks writing to a reader that takes nothing more
        options=(("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)),
    )
    fetch = reader.unary_stream(
        market_method("Fetch"),
        request_serializer=_bytes,
        response_deserializer=pb.FetchChunk.FromString,
    )
    stream = fetch(pb.FetchRequest(id=learnware_id), timeout=60)
    assert next(stream).WhichOneof("msg") == "header"
    wait_until(lambda: in_flight(market) == (0, 0), IDLE_S + 10, "the download cut")
    with pytest.raises(grpc.RpcError) as cut:  # what arrived before the cut, then its status
        for _ in stream:
            pass
    assert cut.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, cut.value.details()
    assert f"the client read nothing for {IDLE_S:g} s" in cut.value.details()
    reader.close()


def test_one_address_gets_its_share_and_health_still_answers(tmp_path, lwm_home, stall) -> None:
    limits = CallLimits(first_message_s=FIRST_MESSAGE_S, max_calls_per_address=4)
    with market_server(tmp_path, lwm_home, run_smoke=False, calls=limits) as market:
        channel = raw_channel(market)
        for _ in range(4):
            stall.open(channel, "GetSchema")
        wait_until(lambda: in_flight(market)[0] == 4, 10, "4 calls in flight")
        with pytest.raises(grpc.RpcError) as refused:
            market.client("admin").stub.GetSchema(pb.GetSchemaRequest(), timeout=3)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "address 127.0.0.1: 4 calls in flight, the limit is 4" in refused.value.details()
        assert health_check(market, timeout_s=1.0) == health_pb2.HealthCheckResponse.SERVING
        errors = stall.errors(FIRST_MESSAGE_S + 10)
        assert_cut(errors, grpc.StatusCode.DEADLINE_EXCEEDED, f"within {FIRST_MESSAGE_S:g} s")
        assert market.client("admin").schema().max_chunk_bytes > 0
        channel.close()


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.7:51234", "10.0.0.7"),
        ("ipv6:%5B::1%5D:51234", "::1"),
        ("ipv6:[2001:db8::2]:443", "2001:db8::2"),
        ("unix:/tmp/market.sock", "unix:/tmp/market.sock"),
    ],
)
def test_calls_are_counted_by_address_not_port(peer: str, address: str) -> None:
    from server.admission import peer_address

    assert peer_address(peer) == address
