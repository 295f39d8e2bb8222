"""``lwm server init`` and ``lwm server start``: set up and run a market.

Attached to the ``lwm`` app by ``client.cli``; heavy imports happen inside commands. The
commands that operate a running market over gRPC (``lwm admin …``, ``lwm server stats``)
are a client's: ``client/cli_admin.py``, through the one market client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shared.cli_options import InsecureOpt, console

server_app = typer.Typer(help="Run a market server.", no_args_is_help=True)


def _say(text: str) -> None:
    console().print(text)


@server_app.command("init")
def init(
    dir: Annotated[Path, typer.Option("--dir", help="Folder for the CA, TLS and admin keys.")],
    host: Annotated[
        list[str] | None, typer.Option("--host", help="Host names/IPs for the certificate.")
    ] = None,
    client: Annotated[
        list[str] | None, typer.Option("--client", help="Also issue mTLS client certs.")
    ] = None,
) -> None:
    """Create a local CA, the server's TLS certificate and key, and an admin key pair."""
    from server.pki import DEFAULT_HOSTS, init_server_dir, issue_client_files

    layout = init_server_dir(dir, tuple(host) if host else DEFAULT_HOSTS)
    _say(f"made {layout.ca_cert} and {layout.ca_key} (the market's CA)")
    hosts = ", ".join(host or DEFAULT_HOSTS)
    _say(f"made {layout.server_cert} and {layout.server_key} (TLS for {hosts})")
    _say(f"made {layout.admin_key} and {layout.admin_pub} (admin key id {layout.admin_key_id})")
    for name in client or []:
        cert, key = issue_client_files(dir, name)
        _say(f"made {cert} and {key} (mTLS client {name})")


@server_app.command("start")
def start(
    dir: Annotated[Path, typer.Option("--dir", help="Folder made by `lwm server init`.")],
    address: Annotated[str, typer.Option("--address", help="HOST:PORT to listen on.")] = (
        "127.0.0.1:50051"
    ),
    db: Annotated[
        str | None, typer.Option("--db", help="Database URL (default SQLite in DIR).")
    ] = None,
    blobs: Annotated[
        Path | None, typer.Option("--blobs", help="Blob folder (default DIR/blobs).")
    ] = None,
    insecure: InsecureOpt = False,
    mtls: Annotated[bool, typer.Option("--mtls", help="Require client certificates.")] = False,
    base_model: Annotated[
        list[str] | None, typer.Option("--base-model", help="Accepted base model (repeatable).")
    ] = None,
    pave_model: Annotated[str, typer.Option("--pave-model")] = "tiny",
    home: Annotated[str | None, typer.Option("--home", help="Model cache folder.")] = None,
    no_smoke: Annotated[bool, typer.Option("--no-smoke", help="Skip the smoke run.")] = False,
    reflection: Annotated[
        bool, typer.Option("--reflection", help="Enable gRPC reflection.")
    ] = False,
    grace: Annotated[float, typer.Option("--grace", help="Seconds in-flight calls get.")] = 10.0,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
    first_message_timeout: Annotated[
        float,
        typer.Option(
            "--first-message-timeout", help="Seconds a call may take to send its request."
        ),
    ] = 10.0,
    idle_timeout: Annotated[
        float,
        typer.Option("--idle-timeout", help="Seconds an upload or download may go silent."),
    ] = 30.0,
    max_calls_per_address: Annotated[
        int, typer.Option("--max-calls-per-address", help="Calls in flight per client address.")
    ] = 256,
    max_calls_per_key: Annotated[
        int, typer.Option("--max-calls-per-key", help="Calls in flight per signing key.")
    ] = 64,
    max_concurrent_smokes: Annotated[
        int, typer.Option("--max-concurrent-smokes", help="Smoke runs at once.")
    ] = 1,
    smoke_memory_mb: Annotated[
        int, typer.Option("--smoke-memory-mb", help="Address space of one smoke run.")
    ] = 3072,
    web: Annotated[
        str | None,
        typer.Option("--web", help="HOST:PORT for the web page (loopback only without TLS)."),
    ] = None,
    judgment_lease: Annotated[
        float,
        typer.Option(
            "--judgment-lease",
            help="Seconds a replica's judgment waits, after it died, for another to take it.",
        ),
    ] = 30.0,
) -> None:
    """Serve the market until SIGTERM (graceful: NOT_SERVING, drain, exit 0)."""
    import sys

    from server.app import limit_blas_threads, serve_forever, setup_logging
    from server.pki import open_server_dir
    from server.sandbox import SmokeLimits
    from server.settings import CallLimits, ReplicaSettings, ServerSettings
    from shared.home import Home

    calls = CallLimits(  # the cheap checks of numbers first
        first_message_s=first_message_timeout,
        idle_s=idle_timeout,
        max_calls_per_address=max_calls_per_address,
        max_calls_per_key=max_calls_per_key,
    )
    smoke_limits = SmokeLimits(memory_bytes=smoke_memory_mb * 1024 * 1024)
    replica = ReplicaSettings(judgment_lease_s=judgment_lease)
    setup_logging(log_level)
    limit_blas_threads()
    layout = open_server_dir(dir)
    if insecure:
        console(stderr=True).print(
            "[bold red]WARNING: --insecure: no TLS, anyone on this host can read the traffic "
            "(loopback only)[/]"
        )
    settings = ServerSettings(
        address=address,
        db_url=db or f"sqlite:///{(dir / 'market.db').resolve()}",
        blobs_dir=(blobs or dir / "blobs").resolve(),
        home_dir=Home.resolve(home).root,
        tls_dir=None if insecure else dir,
        require_client_cert=mtls,
        base_models=tuple(base_model or ["tiny"]),
        pave_model=pave_model,
        run_smoke=not no_smoke,
        reflection=reflection,
        grace_s=grace,
        calls=calls,
        max_concurrent_smokes=max_concurrent_smokes,
        smoke_limits=smoke_limits,
        admin_pub=layout.admin_pub,
        web_address=web,
        replica=replica,
    )
    sys.exit(serve_forever(settings))
