"""Serve the web page with uvicorn on the market server's own event loop.

Why on that loop and not in a thread or process of its own: the server already runs an
asyncio loop for gRPC (``server.app``), a stalled browser costs a coroutine there as a
stalled gRPC call does, and one ``RunningServer.stop`` ends both. uvicorn installs no signal
handlers off the main thread, so ``lwm server start`` keeps its own.

Plain HTTP only on loopback (as plain-text gRPC): anywhere else the page needs the market's
TLS certificate, which it then serves with (HTTPS).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from shared import transport
from shared.errors import InvalidInput

_START_TIMEOUT_S = 10.0
_STOP_GRACE_S = 5  # a stalled browser cannot hold the server's stop longer than this
_MAX_CONNECTIONS = 256  # beyond: 503 at once, as gRPC bounds its calls


@dataclass
class WebServer:
    """A started web page: its uvicorn server, the task serving it, and where it listens."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def stop(self) -> None:
        """Close the listening socket and the open connections, and wait for it."""
        self.server.should_exit = True
        await self.task


async def start_web(
    app: ASGIApp, address: str, tls_files: transport.ServerTlsFiles | None
) -> WebServer:
    """Serve ``app`` at ``address`` (``HOST:PORT``, port 0 picks one) on the running loop;
    HTTPS with ``tls_files``, else only on loopback (``InvalidInput`` otherwise)."""
    parsed = transport.parse_address(address)
    if tls_files is None and not parsed.is_loopback:
        raise InvalidInput(
            f"--web {address}: without TLS the web page listens on loopback only "
            "(127.0.0.1, ::1, localhost); start the market with TLS to serve it elsewhere"
        )
    sock = _bind(parsed.host, parsed.port)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="off",
        limit_concurrency=_MAX_CONNECTIONS,
        timeout_graceful_shutdown=_STOP_GRACE_S,
        ssl_certfile=None if tls_files is None else str(tls_files.server_cert),
        ssl_keyfile=None if tls_files is None else str(tls_files.server_key),
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    await _started(server, task)
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    scheme = "http" if tls_files is None else "https"
    return WebServer(server, task, f"{scheme}://{host}:{sock.getsockname()[1]}")


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
    except OSError as err:
        sock.close()
        raise InvalidInput(f"--web {host}:{port}: cannot listen there: {err}") from err
    return sock


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Wait until uvicorn listens; its failure to start is raised here, not lost."""
    deadline = asyncio.get_running_loop().time() + _START_TIMEOUT_S
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise InvalidInput("the web page stopped while starting (see the log)")
        if asyncio.get_running_loop().time() > deadline:
            server.should_exit = True
            raise InvalidInput(f"the web page did not start within {_START_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.01)
