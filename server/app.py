"""Build and run the market server: store, blobs, checker, index, gRPC, health, shutdown.

``build_server`` returns a started ``RunningServer`` (tests use it in-process on port 0);
``serve_forever`` adds the SIGTERM/SIGINT handling of ``lwm server start``: health goes
NOT_SERVING, in-flight calls get ``grace_s`` to finish (an unfinished upload is rolled
back: nothing of it was committed), then the process exits 0.

gRPC runs on ``grpc.aio`` in an event loop of its own thread (``server.service`` says why:
a stalled call must cost a coroutine, not a thread); the market's work runs in the service's
thread pools. Callers of ``build_server`` stay synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from server.auth import MARKET_SERVICE
from server.blobs import BlobClaim, BlobStore
from server.checker import Checker, describe_base_models
from server.judging import JudgingGate
from server.market import Market
from server.records import Role
from server.service import MarketService
from server.settings import ServerSettings
from server.store import Store
from shared import transport
from shared.errors import AlreadyExists
from shared.home import Home
from shared.market_identity import server_market_id

if TYPE_CHECKING:
    from server.web import WebServer

log = logging.getLogger("lwm.server")
T = TypeVar("T")


class _LoopThread:
    """An asyncio event loop running in a daemon thread; ``run`` waits for a coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lwm-grpc", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@dataclass
class RunningServer:
    server: grpc.aio.Server
    market: Market
    service: MarketService
    port: int
    health: Any
    settings: ServerSettings
    _loop: _LoopThread
    web: WebServer | None = None  # the web page, when started with settings.web_address
    blob_lock: BlobClaim | None = None  # held while serving (BlobStore.claim)

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: the web page closed and NOT_SERVING first, smoke runs killed (they
        stay PENDING), then let in-flight calls finish."""
        if self.web is not None:
            self._loop.run(self.web.stop())
        self._loop.run(self.health.enter_graceful_shutdown())
        self.market.close()
        self._loop.run(self.server.stop(self.settings.grace_s if grace_s is None else grace_s))
        self._loop.close()
        self.service.close()
        self.market.store.close()
        if self.blob_lock is not None:
            self.blob_lock.release()


def limit_blas_threads() -> None:
    """One BLAS thread per search, for the whole process: call once at process start-up
    (``lwm server start``), before serving.

    Requests run in parallel on the worker pool, and multi-threaded BLAS inside each of 16
    concurrent searches oversubscribes the cores (measured at 10k specs, 16 threads: p99 2 s
    with BLAS threads, 40 ms without). It changes process-wide state, so ``build_server``
    (which tests run in their own process) leaves it alone.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def freeze_startup_heap() -> None:
    """Keep the objects made at start-up out of the garbage collector's full passes: call
    once, after ``build_server``, in the serving process.

    Start-up imports torch and transformers and loads the index: millions of long-lived
    objects that every full (generation 2) collection walks again. Under 50 searches a
    second that cost a ~240 ms pause every ~5 s, stalling every call and the health
    service at once (load-and-abuse benchmark: honest Search p99 235 ms, 18.7 ms with
    this). ``gc.freeze`` moves them to a generation the collector never scans; what is made
    later is collected as before. Process-wide, so ``build_server`` (tests) leaves it alone.
    """
    gc.collect()
    gc.freeze()


def build_server(settings: ServerSettings) -> RunningServer:
    from shared.spec.defaults import default_schema

    home = Home.resolve(settings.home_dir)
    schema = default_schema(
        home,
        pave_model=settings.pave_model,
        kinds=settings.spec_kinds,
        default_kind=settings.default_kind,
    )
    base_models = describe_base_models(list(settings.base_models), home)
    checker = Checker(
        schema,
        base_models,
        home,
        settings.limits.package,
        smoke_timeout_s=settings.smoke_timeout_s,
        run_smoke=settings.run_smoke,
        spec_limits=settings.limits.spec,
        smoke_limits=settings.smoke_limits,
        gate=JudgingGate(settings.max_concurrent_smokes, settings.max_waiting_judgments),
    )
    store = Store.open(settings.db_url)
    blobs = BlobStore(settings.blobs_dir)
    try:
        # before start() cleans the store: one server per store, or replicas sharing one
        blob_lock = blobs.claim(replicas=store.shared)
    except BaseException:
        store.close()
        raise
    market = Market(store, blobs, checker, settings.limits, settings.replica)
    if settings.admin_pub is not None:
        _ensure_admin(market, settings.admin_pub.read_bytes())
    market.start(alone=blob_lock.alone)
    blob_lock.serve()
    tls_files = _tls_files(settings)
    refs = [b.ref for b in base_models.values()]
    market_id = server_market_id(tls_files)
    service = MarketService(market, refs, market_id, settings.calls)
    loop = _LoopThread()
    server: grpc.aio.Server | None = None
    try:
        server, port, health = loop.run(_start_grpc(settings, service, tls_files))
        web = _start_web(loop, settings, market, market_id, tls_files)
    except BaseException:
        if server is not None:
            loop.run(server.stop(0))
        loop.close()
        market.close()
        service.close()
        store.close()
        blob_lock.release()
        raise
    market.start_judging()  # after serving starts, not before (minutes each)
    log.info(
        "serving on %s (port %d, %s)",
        settings.address,
        port,
        "mTLS" if settings.require_client_cert else "TLS" if tls_files else "INSECURE",
    )
    if web is not None:
        log.info("web page on %s", web.url)
    return RunningServer(server, market, service, port, health, settings, loop, web, blob_lock)


def _start_web(
    loop: _LoopThread,
    settings: ServerSettings,
    market: Market,
    market_id: str,
    tls_files: transport.ServerTlsFiles | None,
) -> WebServer | None:
    """The web page on the server's loop, after gRPC (None without ``web_address``)."""
    if settings.web_address is None:
        return None
    from server.web import build_web_app, start_web

    app = build_web_app(market, market_id, tls=tls_files is not None)
    return loop.run(start_web(app, settings.web_address, tls_files))


async def _start_grpc(
    settings: ServerSettings, service: MarketService, tls_files: transport.ServerTlsFiles | None
) -> tuple[grpc.aio.Server, int, Any]:
    """The started ``grpc.aio`` server (built on its loop), its port and health servicer."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    calls = settings.calls
    server = grpc.aio.server(
        maximum_concurrent_rpcs=calls.max_concurrent_rpcs,
        options=[
            *transport.message_size_options(),
            ("grpc.server_handshake_timeout_ms", int(calls.handshake_s * 1000)),
            ("grpc.so_reuseport", 0),  # a second server on a used port fails to bind
        ],
    )
    server.add_generic_rpc_handlers((service.handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection(
            (MARKET_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    credentials = None
    if tls_files is not None:
        credentials = transport.server_credentials(tls_files, settings.require_client_cert)
    port = transport.add_port(server, settings.address, credentials)
    await server.start()
    for name in ("", MARKET_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def _tls_files(settings: ServerSettings) -> transport.ServerTlsFiles | None:
    """The server's TLS files (``None``: plain text, loopback only)."""
    if settings.tls_dir is None:
        return None
    from server.pki import open_server_dir

    return open_server_dir(settings.tls_dir)


def _ensure_admin(market: Market, public_key: bytes) -> None:
    from shared import signing

    key_id = signing.key_id(signing.load_public_key(public_key))
    existing = market.key_of(key_id)
    if existing is None or existing.revoked:
        with contextlib.suppress(AlreadyExists):  # a replica starting at once registered it
            market.register_key(public_key, Role.ADMIN, "admin")


def serve_forever(settings: ServerSettings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code (0 after a graceful stop)."""
    running = build_server(settings)
    freeze_startup_heap()
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down gracefully (grace %.0f s)", signum, settings.grace_s)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready: dict[str, Any] = {"event": "ready", "port": running.port}
    if running.web is not None:
        ready["web"] = running.web.url
    print(json.dumps(ready), flush=True)
    while not stop.wait(0.5):
        pass
    running.stop()
    log.info("stopped")
    return 0


class JsonFormatter(logging.Formatter):
    """One JSON object per line: easy to grep, ship and parse (structured logs)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
