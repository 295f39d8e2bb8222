"""The wire contract: generated code is fresh, messages round-trip, the service wiring works."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf import json_format

from shared import signing
from shared.proto import generate, market_pb2, market_pb2_grpc

SERVICE = "learnware.market.v1.Market"


def test_generated_code_is_not_stale() -> None:
    assert generate.stale_files() == [], "run `python -m shared.proto.generate` and commit"


def test_generated_grpc_module_imports_the_package_module() -> None:
    source = (generate.OUT_DIR / "market_pb2_grpc.py").read_text()

    assert "from shared.proto import market_pb2" in source
    assert "from learnware.market.v1" not in source


def test_service_has_every_rpc_with_its_streaming_shape() -> None:
    service = market_pb2.DESCRIPTOR.services_by_name["Market"]
    shapes = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}

    assert service.full_name == SERVICE
    assert shapes == {
        "GetSchema": (False, False),
        "Submit": (True, False),
        "Get": (False, False),
        "List": (False, False),
        "Search": (False, False),
        "Fetch": (False, True),
        "Withdraw": (False, False),
        "GetHistory": (False, False),
        "RegisterKey": (False, False),
        "RevokeKey": (False, False),
        "ListKeys": (False, False),
        "GetStats": (False, False),
        "WhoAmI": (False, False),
    }


def test_submit_messages_round_trip() -> None:
    header = market_pb2.SubmitRequest(
        header=market_pb2.SubmitHeader(
            manifest_json=b'{"name":"x"}',
            signature=bytes(range(64)),
            contributor_key_id="0123456789abcdef",
            total_size=10240,
            sha256="ab" * 32,
        )
    )
    chunk = market_pb2.SubmitRequest(chunk=market_pb2.Chunk(offset=5, data=b"\x00\xff"))

    back_header = market_pb2.SubmitRequest.FromString(header.SerializeToString())
    back_chunk = market_pb2.SubmitRequest.FromString(chunk.SerializeToString())

    assert back_header == header and back_header.WhichOneof("msg") == "header"
    assert back_chunk.WhichOneof("msg") == "chunk" and back_chunk.chunk.data == b"\x00\xff"


def test_learnware_info_round_trips_with_optional_epsilon_and_timestamps() -> None:
    info = market_pb2.LearnwareInfo(
        id="lw-1",
        name="icd-circulatory",
        status=market_pb2.LEARNWARE_STATUS_USABLE,
        base_model=market_pb2.BaseModel(model_id="tiny", sha256="cd" * 32),
        specs=[market_pb2.SpecInfo(kind="rkme", schema_id="rkme-v1", dim=512, epsilon=4.0, n=300)],
        dp=market_pb2.DpSummary(
            parts=[
                market_pb2.DpPart(what="spec:rkme", epsilon=4.0, delta=1e-5, mechanism="gaussian"),
                market_pb2.DpPart(what="adapter", mechanism="none"),
            ],
            accountant="rdp",
        ),
    )
    info.created_at.FromSeconds(1_790_000_000)

    back = market_pb2.LearnwareInfo.FromString(info.SerializeToString())

    assert back == info
    assert back.created_at.ToSeconds() == 1_790_000_000
    assert back.dp.parts[0].HasField("epsilon")
    assert not back.dp.parts[1].HasField("epsilon")  # no DP is distinguishable from 0
    assert not back.dp.HasField("total_epsilon")
    assert json_format.MessageToDict(back)["status"] == "LEARNWARE_STATUS_USABLE"


def test_search_request_carries_a_packed_float32_vector() -> None:
    vector = [0.5, -1.25, 3.0]
    request = market_pb2.SearchRequest(
        spec=market_pb2.QuerySpec(
            kind="rkme",
            schema_id="rkme-v1",
            vector=struct.pack("<3f", *vector),
            dim=3,
            metadata_json='{"n":30,"sigma":1.16}',
        ),
        top_k=5,
        domain="medicine",
    )

    back = market_pb2.SearchRequest.FromString(request.SerializeToString())

    assert list(struct.unpack(f"<{back.spec.dim}f", back.spec.vector)) == vector


# ---------------------------------------------------------------- a real server


class _Servicer(market_pb2_grpc.MarketServicer):
    """GetSchema checks signed metadata; Submit counts streamed bytes; the rest unimplemented."""

    def __init__(self, public_key: signing.Ed25519PublicKey) -> None:
        self._keys = {signing.key_id(public_key): public_key}

    def GetSchema(self, request, context):  # noqa: N802 (gRPC's method names)
        metadata = dict(context.invocation_metadata())
        method, body = f"/{SERVICE}/GetSchema", signing.request_body(request)
        caller = signing.check_auth_metadata(metadata, self._keys.get, method, body, "m").key_id
        return market_pb2.Schema(
            spec_kinds=[
                market_pb2.SpecKindSchema(kind="rkme", schema_id="rkme-v1", params_json="{}")
            ],
            default_spec_kind="rkme",
            protocol_version=f"1;caller={caller}",
            limits=market_pb2.Limits(max_chunk_bytes=1 << 20),
        )

    def Submit(self, request_iterator: Iterator[market_pb2.SubmitRequest], context):  # noqa: N802
        first = next(request_iterator)
        assert first.WhichOneof("msg") == "header"
        received = sum(len(req.chunk.data) for req in request_iterator)
        return market_pb2.SubmitResponse(
            id=f"{received}/{first.header.total_size}",
            status=market_pb2.LEARNWARE_STATUS_PENDING,
        )


@pytest.fixture
def market() -> Iterator[tuple[market_pb2_grpc.MarketStub, signing.Ed25519PrivateKey]]:
    private, public = signing.generate_keypair()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    market_pb2_grpc.add_MarketServicer_to_server(_Servicer(public), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield market_pb2_grpc.MarketStub(channel), private
    finally:
        channel.close()
        server.stop(grace=None)


def test_real_server_answers_get_schema_with_signed_metadata(market) -> None:
    stub, private = market
    metadata = signing.auth_metadata(private, f"/{SERVICE}/GetSchema", b"", "m")

    schema = stub.GetSchema(market_pb2.GetSchemaRequest(), metadata=metadata, timeout=10)

    assert schema.default_spec_kind == "rkme"
    assert schema.spec_kinds[0].schema_id == "rkme-v1"
    assert schema.protocol_version == f"1;caller={signing.key_id(private.public_key())}"


def test_real_server_streams_a_submission(market) -> None:
    stub, _ = market
    payload = b"x" * 2500
    header = market_pb2.SubmitHeader(total_size=len(payload), sha256="00" * 32)
    requests = [market_pb2.SubmitRequest(header=header)] + [
        market_pb2.SubmitRequest(chunk=market_pb2.Chunk(offset=i, data=payload[i : i + 1000]))
        for i in range(0, len(payload), 1000)
    ]

    response = stub.Submit(iter(requests), timeout=10)

    assert response.id == "2500/2500"
    assert response.status == market_pb2.LEARNWARE_STATUS_PENDING


def test_real_server_reports_unimplemented_rpcs(market) -> None:
    stub, _ = market

    with pytest.raises(grpc.RpcError) as caught:
        stub.Get(market_pb2.GetRequest(id="nope"), timeout=10)

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
