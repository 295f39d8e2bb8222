"""The gRPC servicer: authenticate, convert, forward to ``Market``, convert back.

No logic lives here (STYLE: thin servicers). Every handler runs inside ``_guard``, which
maps the project's errors to status codes and any unexpected exception to INTERNAL with
a logged traceback, so a client always gets one readable line.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from server import convert
from server.auth import MARKET_ROLES, Authenticator, Caller, abort_with, market_method
from server.market import Market
from server.records import LearnwareRecord
from shared.errors import InvalidInput, LwmError
from shared.models.refs import ModelRef
from shared.proto import market_pb2 as pb
from shared.proto import market_pb2_grpc

log = logging.getLogger("lwm.service")
T = TypeVar("T")


class MarketService(market_pb2_grpc.MarketServicer):
    def __init__(self, market: Market, base_models: list[ModelRef], market_id: str) -> None:
        """``market_id``: what clients sign for (``shared.market_identity.server_market_id``)."""
        self.market = market
        self.auth = Authenticator(market.key_of, market_id)
        self._schema = convert.schema_to_pb(market.schema, base_models, market.limits)
        self._infos: dict[str, tuple[object, pb.LearnwareInfo]] = {}

    def _info(self, record: LearnwareRecord) -> pb.LearnwareInfo:
        """LearnwareInfo of a record, cached by (id, updated_at): each stored manifest is
        parsed once per version in this process (for every search hit it would dominate
        Search latency)."""
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

    def _caller(
        self, context: grpc.ServicerContext, name: str, request: Message | None
    ) -> Caller:
        return self.auth.require(context, market_method(name), MARKET_ROLES[name], request)

    def _answer(
        self,
        context: grpc.ServicerContext,
        name: str,
        request: Message,
        handle: Callable[[Caller], T],
    ) -> T:
        """Authenticate the call to method ``name`` carrying ``request`` (the signature
        covers it), then ``handle(caller)`` inside ``_guard``."""
        with self._guard(context):
            return handle(self._caller(context, name, request))
        raise AssertionError("unreachable")  # _guard aborts, which raises

    def GetSchema(self, request: pb.GetSchemaRequest, context: grpc.ServicerContext) -> pb.Schema:
        return self._schema

    def Submit(
        self, request_iterator: Iterable[pb.SubmitRequest], context: grpc.ServicerContext
    ) -> pb.SubmitResponse:
        with self._guard(context):
            # The signature covers the first message (the header naming the package's sha256
            # and size), so it is read before the caller is known.
            messages = iter(request_iterator)
            first = next(messages, None)
            caller = self._caller(context, "Submit", first)
            header = convert.header_from_pb(first)
            record = self.market.submit(caller, header, _chunks(messages))
            return pb.SubmitResponse(
                id=record.id, status=convert.status_to_pb(record.status), reason=record.reason
            )
        raise AssertionError("unreachable")  # _guard aborts, which raises

    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.LearnwareInfo:
        return self._answer(
            context,
            "Get",
            request,
            lambda caller: self._info(self.market.get(caller, request.id)),
        )

    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:
        def handle(caller: Caller) -> pb.ListResponse:
            flt = convert.filter_from_pb(request)
            page = self.market.list_page(caller, flt, request.page_size, request.page_token)
            return pb.ListResponse(
                learnwares=[self._info(r) for r in page.items],
                next_page_token=page.next_page_token,
            )

        return self._answer(context, "List", request, handle)

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        def handle(caller: Caller) -> pb.SearchResponse:
            query = convert.query_spec_from_pb(request.spec)
            hits = self.market.search(caller, query, request.top_k, convert.filter_from_pb(request))
            return pb.SearchResponse(
                results=[convert.search_hit_to_pb(h, self._info(h.record)) for h in hits]
            )

        return self._answer(context, "Search", request, handle)

    def Fetch(
        self, request: pb.FetchRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FetchChunk]:
        with self._guard(context):
            caller = self._caller(context, "Fetch", request)
            download = self.market.fetch(caller, request.id, request.offset)
            info = self._info(download.record)
            yield pb.FetchChunk(header=convert.fetch_header_to_pb(download, info))
            for offset, data in download.chunks:
                if not context.is_active():
                    return
                yield pb.FetchChunk(chunk=pb.Chunk(offset=offset, data=data))

    def Withdraw(
        self, request: pb.WithdrawRequest, context: grpc.ServicerContext
    ) -> pb.LearnwareInfo:
        def handle(caller: Caller) -> pb.LearnwareInfo:
            return self._info(self.market.withdraw(caller, request.id, request.reason))

        return self._answer(context, "Withdraw", request, handle)

    def RegisterKey(
        self, request: pb.RegisterKeyRequest, context: grpc.ServicerContext
    ) -> pb.KeyInfo:
        def handle(_: Caller) -> pb.KeyInfo:
            role = convert.role_from_pb(request.role)
            return convert.key_to_pb(
                self.market.register_key(request.public_key, role, request.name)
            )

        return self._answer(context, "RegisterKey", request, handle)

    def RevokeKey(self, request: pb.RevokeKeyRequest, context: grpc.ServicerContext) -> pb.KeyInfo:
        return self._answer(
            context,
            "RevokeKey",
            request,
            lambda caller: convert.key_to_pb(
                self.market.revoke_key(caller, request.key_id, request.reason)
            ),
        )

    def ListKeys(
        self, request: pb.ListKeysRequest, context: grpc.ServicerContext
    ) -> pb.ListKeysResponse:
        def handle(_: Caller) -> pb.ListKeysResponse:
            keys = self.market.list_keys(include_revoked=request.include_revoked)
            return pb.ListKeysResponse(keys=[convert.key_to_pb(k) for k in keys])

        return self._answer(context, "ListKeys", request, handle)

    def GetStats(self, request: pb.GetStatsRequest, context: grpc.ServicerContext) -> pb.Stats:
        return self._answer(
            context, "GetStats", request, lambda _: convert.stats_to_pb(self.market.stats())
        )


def _chunks(messages: Iterator[pb.SubmitRequest]) -> Iterator[tuple[int, bytes]]:
    for message in messages:
        if message.WhichOneof("msg") != "chunk":
            raise InvalidInput("after the header a Submit stream carries only chunks")
        yield message.chunk.offset, message.chunk.data
