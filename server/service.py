"""The gRPC service on ``grpc.aio``: admit, read under deadlines, authenticate, work in a
thread, answer.

Every call runs the same steps: take a slot of the caller's address (``Admission``; no key
needed, so a stalling stranger is bounded too), read the request under ``first_message_s``,
authenticate it (the signature covers the request), take a slot of the caller's key, then
hand the work to a thread pool and answer. Waiting on a client costs a coroutine, never a
thread, so calls that open and stall cannot starve anyone else, and the health service,
which has no limits of its own, answers while they wait. Errors become a status in one
place (``_call``): project errors their own, anything else INTERNAL with a logged traceback.

Why every method is registered as a client stream: gRPC reads a unary call's request
before the handler runs, with no deadline of the server's, so a call that opens and never
sends would hold its slot as long as the client likes. The wire does not tell unary from
streaming calls, so each method is served as stream->unary (stream->stream for Fetch) and
the handler reads the one request itself, under the deadline. Clients are unchanged.

No market logic lives here (STYLE: thin servicers): the per-method functions convert,
call ``Market`` and convert back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from grpc import aio

from server import convert, streams
from server.admission import Admission
from server.auth import (
    MARKET_ROLES,
    MARKET_SERVICE,
    Authenticator,
    Caller,
    Credentials,
    grpc_status,
    market_method,
)
from server.market import Market
from server.records import LearnwareRecord
from server.settings import CallLimits
from shared.errors import InvalidInput, LwmError, Unauthenticated
from shared.models.refs import ModelRef
from shared.proto import market_pb2 as pb

log = logging.getLogger("lwm.service")
T = TypeVar("T")
_METHODS = pb.DESCRIPTOR.services_by_name["Market"].methods_by_name


#: LearnwareInfos kept parsed: the hot set of search hits, not the whole catalogue (at a
#: million learnwares an unbounded cache would hold every manifest ever shown).
INFO_CACHE_ENTRIES = 20_000


class InfoCache:
    """A bounded, thread-safe LRU of ``LearnwareInfo`` by learnware id, each entry valid for
    one stamp (the record's ``updated_at`` and download count). Worker threads share it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[object, pb.LearnwareInfo]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, stamp: object) -> pb.LearnwareInfo | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != stamp:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: str, stamp: object, info: pb.LearnwareInfo) -> None:
        with self._lock:
            self._entries[key] = (stamp, info)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


class MarketService:
    """One market's gRPC service; ``handler()`` registers it, ``close()`` ends its threads."""

    def __init__(
        self, market: Market, base_models: list[ModelRef], market_id: str, limits: CallLimits
    ) -> None:
        """``market_id``: what clients sign for (``shared.market_identity.server_market_id``)."""
        self.market = market
        self.limits = limits
        self.auth = Authenticator(market.key_of, market_id)
        self.admission = Admission(limits)
        self._work = ThreadPoolExecutor(limits.workers, thread_name_prefix="lwm-work")
        self._transfers = ThreadPoolExecutor(
            limits.transfer_workers, thread_name_prefix="lwm-transfer"
        )
        self._schema = convert.schema_to_pb(market.schema, base_models, market.limits)
        self._infos = InfoCache(INFO_CACHE_ENTRIES)
        self._unary: dict[str, Callable[[Caller, Any], Message]] = {
            "Get": self._get,
            "List": self._list,
            "Search": self._search,
            "Withdraw": self._withdraw,
            "GetHistory": self._get_history,
            "RegisterKey": self._register_key,
            "RevokeKey": self._revoke_key,
            "ListKeys": self._list_keys,
            "GetStats": self._get_stats,
            "WhoAmI": self._who_am_i,
        }

    # ------------------------------------------------------------------ registration
    def handler(self) -> grpc.GenericRpcHandler:
        """Every method of ``Market``, each read as a client stream (see the module)."""
        handlers = {
            name: grpc.stream_unary_rpc_method_handler(
                functools.partial(self._serve_unary, name), *_codec(name)
            )
            for name in self._unary
        }
        handlers["GetSchema"] = grpc.stream_unary_rpc_method_handler(
            self._serve_schema, *_codec("GetSchema")
        )
        handlers["Submit"] = grpc.stream_unary_rpc_method_handler(
            self._serve_submit, *_codec("Submit")
        )
        handlers["Fetch"] = grpc.stream_stream_rpc_method_handler(
            self._serve_fetch, *_codec("Fetch")
        )
        missing = set(_METHODS) - set(handlers)
        if missing:
            raise AssertionError(f"methods of market.proto without a handler: {sorted(missing)}")
        return grpc.method_handlers_generic_handler(MARKET_SERVICE, handlers)

    def close(self) -> None:
        """Stop taking work; work in progress finishes in its thread (not waited for)."""
        self._work.shutdown(wait=False, cancel_futures=True)
        self._transfers.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the steps
    @contextlib.asynccontextmanager
    async def _call(self, context: aio.ServicerContext) -> AsyncIterator[None]:
        """Hold an address slot for the call; any error becomes the call's status (a call
        the client ended itself needs none)."""
        try:
            with self.admission.address(context.peer()):
                yield
        except aio.AbortError:
            raise
        except streams.CallEnded:
            log.debug("%s ended its call", context.peer())
        except LwmError as error:
            await context.abort(grpc_status(error), str(error))
        except Exception as exc:
            log.exception("internal error")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})")

    async def _in_thread(self, pool: ThreadPoolExecutor, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, work, *args)

    def _authenticate(self, name: str, credentials: Credentials, request: Message) -> Caller:
        """The caller of method ``name`` (its signature covers ``request``), role checked."""
        return self.auth.authenticate(credentials, market_method(name), MARKET_ROLES[name], request)

    def _answer(self, name: str, credentials: Credentials, request: Message) -> Message:
        caller = self._authenticate(name, credentials, request)
        with self.admission.key(caller.key_id):
            return self._unary[name](caller, request)

    # ------------------------------------------------------------------ served calls
    async def _serve_unary(
        self, name: str, requests: AsyncIterator[Message], context: aio.ServicerContext
    ) -> Message:
        async with self._call(context):
            request = await streams.first_message(requests, self.limits.first_message_s)
            credentials = Credentials.of(context)
            return await self._in_thread(self._work, self._answer, name, credentials, request)
        raise AssertionError("unreachable")  # _call aborts, which raises

    async def _serve_schema(
        self, requests: AsyncIterator[pb.GetSchemaRequest], context: aio.ServicerContext
    ) -> pb.Schema:
        """GetSchema needs no key (market.proto): a client asks it before it can sign."""
        async with self._call(context):
            await streams.first_message(requests, self.limits.first_message_s)
            return self._schema
        raise AssertionError("unreachable")

    async def _serve_submit(
        self, requests: AsyncIterator[pb.SubmitRequest], context: aio.ServicerContext
    ) -> pb.SubmitResponse:
        async with self._call(context):
            # The signature covers the first message (the header naming the package's sha256
            # and size), so it is read, under the first-message deadline, before the caller
            # is known; the chunks after it are read under the idle and whole-stream ones.
            first = await streams.first_message(requests, self.limits.first_message_s, "header")
            credentials = Credentials.of(context)
            deadline = streams.Deadline(self.limits.idle_s, self.limits.stream_call_s)
            chunks = streams.SyncStream(requests, asyncio.get_running_loop(), deadline)
            try:
                return await self._in_thread(
                    self._transfers, self._submit, credentials, first, chunks
                )
            finally:
                chunks.close()
        raise AssertionError("unreachable")

    def _submit(
        self, credentials: Credentials, first: pb.SubmitRequest, rest: Iterator[pb.SubmitRequest]
    ) -> pb.SubmitResponse:
        caller = self._authenticate("Submit", credentials, first)
        with self.admission.key(caller.key_id, stream=True):
            header = convert.header_from_pb(first)
            record = self.market.submit(caller, header, _chunks(rest))
        return pb.SubmitResponse(
            id=record.id, status=convert.status_to_pb(record.status), reason=record.reason
        )

    async def _serve_fetch(
        self, requests: AsyncIterator[pb.FetchRequest], context: aio.ServicerContext
    ) -> None:
        async with self._call(context):
            request = await streams.first_message(requests, self.limits.first_message_s)
            credentials = Credentials.of(context)
            caller = await self._in_thread(
                self._work, self._authenticate, "Fetch", credentials, request
            )
            with self.admission.key(caller.key_id, stream=True):
                await self._send_download(context, caller, request)

    async def _send_download(
        self, context: aio.ServicerContext, caller: Caller, request: pb.FetchRequest
    ) -> None:
        download = await self._in_thread(
            self._work, self.market.fetch, caller, request.id, request.offset
        )
        info = self._info(download.record)
        deadline = streams.Deadline(self.limits.idle_s, self.limits.stream_call_s)
        header = pb.FetchChunk(header=convert.fetch_header_to_pb(download, info))
        await streams.write(context, header, deadline.next_wait()[0])
        # Read ahead: the next chunk is read from the blob (and framed) in a thread while
        # this one is written, so the disk and the wire never wait for each other.
        loop = asyncio.get_running_loop()
        read = functools.partial(_next_message, download.chunks)
        ahead = loop.run_in_executor(self._transfers, read)
        try:
            while (message := await ahead) is not None:
                ahead = loop.run_in_executor(self._transfers, read)
                await streams.write(context, message, deadline.next_wait()[0])
        finally:
            ahead.cancel()  # a read in progress finishes in its thread, unused

    # ------------------------------------------------------------------ per method
    def _info(self, record: LearnwareRecord) -> pb.LearnwareInfo:
        """LearnwareInfo of a record, cached by (id, updated_at, downloads): each stored
        manifest is parsed once per change in this process (for every search hit it would
        dominate Search latency)."""
        stamp = (record.updated_at, record.downloads)
        info = self._infos.get(record.id, stamp)
        if info is None:
            info = convert.learnware_to_pb(record)
            self._infos.put(record.id, stamp, info)
        return info

    def _get(self, caller: Caller, request: pb.GetRequest) -> pb.LearnwareInfo:
        return self._info(self.market.get(caller, request.id))

    def _list(self, caller: Caller, request: pb.ListRequest) -> pb.ListResponse:
        flt = convert.filter_from_pb(request)
        page = self.market.list_page(caller, flt, request.page_size, request.page_token)
        return pb.ListResponse(
            learnwares=[self._info(r) for r in page.items], next_page_token=page.next_page_token
        )

    def _search(self, caller: Caller, request: pb.SearchRequest) -> pb.SearchResponse:
        query = convert.query_spec_from_pb(request.spec)
        more = [convert.query_spec_from_pb(q) for q in request.more_specs]
        flt = convert.filter_from_pb(request)
        answer = self.market.search(caller, query, request.top_k, flt, more, request.ranking)
        return pb.SearchResponse(
            results=[convert.search_hit_to_pb(h, self._info(h.record)) for h in answer.hits],
            confidence=convert.confidence_to_pb(answer.confidence),
        )

    def _withdraw(self, caller: Caller, request: pb.WithdrawRequest) -> pb.LearnwareInfo:
        return self._info(self.market.withdraw(caller, request.id, request.reason))

    def _get_history(self, caller: Caller, request: pb.GetHistoryRequest) -> pb.HistoryResponse:
        versions = self.market.history(caller, request.id)
        return pb.HistoryResponse(versions=[self._info(r) for r in versions])

    def _register_key(self, _: Caller, request: pb.RegisterKeyRequest) -> pb.KeyInfo:
        role = convert.role_from_pb(request.role)
        return convert.key_to_pb(self.market.register_key(request.public_key, role, request.name))

    def _revoke_key(self, caller: Caller, request: pb.RevokeKeyRequest) -> pb.KeyInfo:
        return convert.key_to_pb(self.market.revoke_key(caller, request.key_id, request.reason))

    def _list_keys(self, _: Caller, request: pb.ListKeysRequest) -> pb.ListKeysResponse:
        keys = self.market.list_keys(include_revoked=request.include_revoked)
        return pb.ListKeysResponse(keys=[convert.key_to_pb(k) for k in keys])

    def _get_stats(self, _: Caller, request: pb.GetStatsRequest) -> pb.Stats:
        return convert.stats_to_pb(self.market.stats())

    def _who_am_i(self, caller: Caller, request: pb.WhoAmIRequest) -> pb.KeyInfo:
        """The caller's own key; it just authenticated, so only a revocation since then
        (which drops it from ``key_of``) leaves nothing to show."""
        record = self.market.key_of(caller.key_id)
        if record is None or record.revoked:
            raise Unauthenticated(f"unknown or revoked key id {caller.key_id!r}")
        return convert.key_to_pb(record)


def _codec(name: str) -> tuple[Callable[[bytes], Message], Callable[[Message | bytes], bytes]]:
    """(request deserializer, response serializer) of method ``name``, from market.proto."""
    method = _METHODS[name]
    request_class = getattr(pb, method.input_type.name)
    return request_class.FromString, _serialize


def _serialize(message: Message | bytes) -> bytes:
    """A message's bytes; bytes are already serialized (``convert.fetch_chunk_bytes``)."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def _next_message(chunks: Iterator[tuple[int, bytes]]) -> bytes | None:
    """The next chunk of a download as a serialized ``FetchChunk``; None at the end."""
    piece = next(chunks, None)
    return None if piece is None else convert.fetch_chunk_bytes(*piece)


def _chunks(messages: Iterator[pb.SubmitRequest]) -> Iterator[tuple[int, bytes]]:
    for message in messages:
        if message.WhichOneof("msg") != "chunk":
            raise InvalidInput("after the header a Submit stream carries only chunks")
        yield message.chunk.offset, message.chunk.data
