"""Build and run the market server: store, blobs, checker, index, gRPC, health, shutdown.

``build_server`` returns a started ``RunningServer`` (tests use it in-process on port 0);
``serve_forever`` adds the SIGTERM/SIGINT handling of ``lwm server start``: health goes
NOT_SERVING, in-flight calls get ``grace_s`` to finish (an unfinished upload is rolled
back: nothing of it was committed), then the process exits 0.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from server.blobs import BlobStore
from server.checker import Checker, describe_base_models
from server.judging import JudgingGate
from server.market import Market
from server.records import Role
from server.service import MarketService
from server.settings import ServerSettings
from server.store import Store
from shared import transport
from shared.home import Home
from shared.market_identity import server_market_id
from shared.proto import market_pb2, market_pb2_grpc

log = logging.getLogger("lwm.server")


@dataclass
class RunningServer:
    server: grpc.Server
    market: Market
    port: int
    health: Any
    settings: ServerSettings

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING first, smoke runs killed (they stay PENDING), then
        let in-flight calls finish."""
        self.health.enter_graceful_shutdown()
        self.market.close()
        self.server.stop(self.settings.grace_s if grace_s is None else grace_s).wait()
        self.market.store.close()


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


def build_server(settings: ServerSettings) -> RunningServer:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

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
    market = Market(store, BlobStore(settings.blobs_dir), checker, settings.limits)
    if settings.admin_pub is not None:
        _ensure_admin(market, settings.admin_pub.read_bytes())
    pending = market.start()
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="lwm-rpc"),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=transport.message_size_options(),
    )
    tls_files = _tls_files(settings)
    refs = [b.ref for b in base_models.values()]
    service = MarketService(market, refs, server_market_id(tls_files))
    market_pb2_grpc.add_MarketServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_name = market_pb2.DESCRIPTOR.services_by_name["Market"].full_name
    if settings.reflection:
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection(
            (service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    credentials = None
    if tls_files is not None:
        credentials = transport.server_credentials(tls_files, settings.require_client_cert)
    port = transport.add_port(server, settings.address, credentials)
    server.start()
    for name in ("", service_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    # PENDING learnwares are judged after serving starts, not before (minutes each).
    rejudge = threading.Thread(target=market.rejudge, args=(pending,), name="lwm-rejudge")
    rejudge.daemon = True
    rejudge.start()
    log.info(
        "serving on %s (port %d, %s)",
        settings.address,
        port,
        "mTLS" if settings.require_client_cert else "TLS" if credentials else "INSECURE",
    )
    return RunningServer(server, market, port, health_servicer, settings)


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
        market.register_key(public_key, Role.ADMIN, "admin")


def serve_forever(settings: ServerSettings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code (0 after a graceful stop)."""
    running = build_server(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down gracefully (grace %.0f s)", signum, settings.grace_s)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(json.dumps({"event": "ready", "port": running.port}), flush=True)
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
