"""The gRPC servicer: authenticate, convert, forward to ``Market``, convert back.

No logic lives here (STYLE: thin servicers). Every handler runs inside ``_guard``, which
maps the project's errors to status codes and any unexpected exception to INTERNAL with
a logged traceback, so a client always gets one readable line.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import grpc

from server import convert
from server.auth import MARKET_ROLES, Authenticator, Caller, abort_with, market_method
from server.market import Market
from server.records import LearnwareRecord, Role
from server.submission import Header
from shared.errors import InvalidInput, LwmError
from shared.models.refs import ModelRef
from shared.proto import market_pb2 as pb
from shared.proto import market_pb2_grpc

log = logging.getLogger("lwm.service")


class MarketService(market_pb2_grpc.MarketServicer):
    def __init__(self, market: Market, base_models: list[ModelRef]) -> None:
        self.market = market
        self.auth = Authenticator(market.key_of)
        self._schema = convert.schema_to_pb(market.schema, base_models, market.limits)
        self._infos: dict[str, tuple[object, pb.LearnwareInfo]] = {}

    def _info(self, record: LearnwareRecord) -> pb.LearnwareInfo:
        """LearnwareInfo of a record, cached by (id, updated_at): parsing and validating
        the manifest for every search hit would dominate Search latency."""
        cached = self._infos.get(record.id)
        if cached is not None and cached[0] == record.updated_at:
            return cached[1]
        info = convert.learnware_to_pb(record)
        self._infos[record.id] = (record.updated_at, info)
        return info

    @contextlib.contextmanager
    def _guard(self, context: grpc.ServicerContext) -> Iterator[None]:
        """Project errors -> their status; anything else -> INTERNAL, logged with traceback.

        (``context.abort`` raises from inside these except clauses, so it is not re-caught.)
        """
        try:
            yield
        except LwmError as error:
            abort_with(context, error)
        except Exception as exc:
            log.exception("internal error")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})")

    def _caller(self, context: grpc.ServicerContext, name: str) -> Caller:
        return self.auth.require(context, market_method(name), MARKET_ROLES[name])

    def GetSchema(self, request: pb.GetSchemaRequest, context: grpc.ServicerContext) -> pb.Schema:
        return self._schema

    def Submit(
        self, request_iterator: Iterable[pb.SubmitRequest], context: grpc.ServicerContext
    ) -> pb.SubmitResponse:
        with self._guard(context):
            caller = self._caller(context, "Submit")
            messages = iter(request_iterator)
            first = next(messages, None)
            if first is None or first.WhichOneof("msg") != "header":
                raise InvalidInput("a Submit stream must start with a header")
            h = first.header
            header = Header(
                h.manifest_json, h.signature, h.contributor_key_id, h.total_size, h.sha256
            )
            record = self.market.submit(caller, header, _chunks(messages))
            return pb.SubmitResponse(
                id=record.id, status=convert.learnware_to_pb(record).status, reason=record.reason
            )
        raise AssertionError("unreachable")

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.LearnwareInfo:
        with self._guard(context):
            caller = self._caller(context, "Get")
            return convert.learnware_to_pb(self.market.get(caller, request.id))
        raise AssertionError("unreachable")

    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:
        with self._guard(context):
            caller = self._caller(context, "List")
            flt = convert.filter_from_pb(request)
            page = self.market.list_page(caller, flt, request.page_size, request.page_token)
            return pb.ListResponse(
                learnwares=[convert.learnware_to_pb(r) for r in page.items],
                next_page_token=page.next_page_token,
            )
        raise AssertionError("unreachable")

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        with self._guard(context):
            caller = self._caller(context, "Search")
            query = convert.query_spec_from_pb(request.spec)
            hits = self.market.search(caller, query, request.top_k, convert.filter_from_pb(request))
            return pb.SearchResponse(
                results=[
                    pb.SearchResult(
                        learnware=self._info(h.record),
                        score=h.score,
                        distance=h.distance,
                        why=pb.Why(
                            kind=h.kind,
                            schema_id=h.schema_id,
                            rank=h.rank,
                            text=f"{h.kind} distance {h.distance:.5f} to the query's spec",
                        ),
                    )
                    for h in hits
                ]
            )
        raise AssertionError("unreachable")

    def Fetch(
        self, request: pb.FetchRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FetchChunk]:
        with self._guard(context):
            caller = self._caller(context, "Fetch")
            record, key, chunks = self.market.fetch(caller, request.id, request.offset)
            yield pb.FetchChunk(
                header=pb.FetchHeader(
                    id=record.id,
                    total_size=record.package_size,
                    sha256=record.package_sha256,
                    manifest_json=record.manifest_json,
                    signature=record.signature,
                    contributor_key_id=record.contributor_key_id,
                    contributor_public_key=key.public_key,
                    info=convert.learnware_to_pb(record),
                )
            )
            for offset, data in chunks:
                if not context.is_active():
                    return
                yield pb.FetchChunk(chunk=pb.Chunk(offset=offset, data=data))

    def Withdraw(
        self, request: pb.WithdrawRequest, context: grpc.ServicerContext
    ) -> pb.LearnwareInfo:
        with self._guard(context):
            caller = self._caller(context, "Withdraw")
            return convert.learnware_to_pb(self.market.withdraw(caller, request.id, request.reason))
        raise AssertionError("unreachable")

    def RegisterKey(
        self, request: pb.RegisterKeyRequest, context: grpc.ServicerContext
    ) -> pb.KeyInfo:
        with self._guard(context):
            self._caller(context, "RegisterKey")
            role = convert.role_from_pb(request.role)
            return convert.key_to_pb(
                self.market.register_key(request.public_key, role, request.name)
            )
        raise AssertionError("unreachable")

    def RevokeKey(self, request: pb.RevokeKeyRequest, context: grpc.ServicerContext) -> pb.KeyInfo:
        with self._guard(context):
            caller = self._caller(context, "RevokeKey")
            if request.key_id == caller.key_id and caller.role is Role.ADMIN:
                raise InvalidInput(
                    "an admin cannot revoke its own key (lock-out); use another admin"
                )
            return convert.key_to_pb(self.market.revoke_key(request.key_id))
        raise AssertionError("unreachable")

    def ListKeys(
        self, request: pb.ListKeysRequest, context: grpc.ServicerContext
    ) -> pb.ListKeysResponse:
        with self._guard(context):
            self._caller(context, "ListKeys")
            keys = self.market.store.list_keys(include_revoked=request.include_revoked)
            return pb.ListKeysResponse(keys=[convert.key_to_pb(k) for k in keys])
        raise AssertionError("unreachable")

    def GetStats(self, request: pb.GetStatsRequest, context: grpc.ServicerContext) -> pb.Stats:
        with self._guard(context):
            self._caller(context, "GetStats")
            s = self.market.stats()
            return pb.Stats(
                learnwares_by_status={k: int(v) for k, v in s["by_status"].items()},
                learnwares_by_kind={k: int(v) for k, v in s["specs_by_kind"].items()},
                learnwares_by_domain={k: int(v) for k, v in s["by_domain"].items()},
                learnwares_total=int(s["learnwares"]),
                blob_bytes=int(s["blob_bytes"]),
                blob_count=int(s["blob_count"]),
                keys_total=int(sum(s["keys_by_role"].values())),
                uptime_s=float(s["uptime_s"]),
                started_at=convert.timestamp(s["started_at"]),
                server_version="0.1.0",
            )
        raise AssertionError("unreachable")


def _chunks(messages: Iterator[pb.SubmitRequest]) -> Iterator[tuple[int, bytes]]:
    for message in messages:
        if message.WhichOneof("msg") != "chunk":
            raise InvalidInput("after the header a Submit stream carries only chunks")
        yield message.chunk.offset, message.chunk.data
