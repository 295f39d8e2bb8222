"""``lwm server …`` and ``lwm admin …``: run and operate a market.

Attached to the ``lwm`` app by ``client.cli``; heavy imports happen inside commands. The
admin commands speak gRPC through ``shared.transport`` and the generated stub only, so
``server/`` never imports ``client/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.cli_options import CaOpt, CertKeyOpt, CertOpt, InsecureOpt, KeyOpt, ServerOpt

server_app = typer.Typer(help="Run a market server.", no_args_is_help=True)
admin_app = typer.Typer(help="Administer a market (admin key needed).", no_args_is_help=True)


def _say(text: str) -> None:
    from rich.console import Console

    Console().print(text)


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
) -> None:
    """Serve the market until SIGTERM (graceful: NOT_SERVING, drain, exit 0)."""
    import sys

    from server.app import limit_blas_threads, serve_forever, setup_logging
    from server.pki import open_server_dir
    from server.settings import ServerSettings
    from shared.home import Home

    setup_logging(log_level)
    limit_blas_threads()
    layout = open_server_dir(dir)
    if insecure:
        from rich.console import Console

        Console(stderr=True).print(
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
        admin_pub=layout.admin_pub,
    )
    sys.exit(serve_forever(settings))


def _stub(
    server: str,
    key: Path,
    ca: Path | None,
    insecure: bool,
    cert: Path | None,
    cert_key: Path | None,
) -> Any:
    from shared import signing, transport
    from shared.proto import market_pb2_grpc

    channel = transport.channel(
        server,
        ca=ca,
        client_cert=cert,
        client_key=cert_key,
        insecure=insecure,
        signing_key=signing.load_private_key(key),
    )
    return market_pb2_grpc.MarketStub(channel)


def _rpc(fn: Any, request: Any, server: str) -> Any:
    import grpc

    from shared.transport import as_lwm_error

    try:
        return fn(request, timeout=30)
    except grpc.RpcError as err:
        raise as_lwm_error(err, server) from None


@server_app.command("stats")
def stats(
    server: ServerOpt,
    key: KeyOpt,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    cert: CertOpt = None,
    cert_key: CertKeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Counts by status, kind and domain, blob bytes, keys and uptime (admin)."""
    from google.protobuf.json_format import MessageToDict

    from shared.proto import market_pb2 as pb

    reply = _rpc(
        _stub(server, key, ca, insecure, cert, cert_key).GetStats, pb.GetStatsRequest(), server
    )
    data = MessageToDict(reply, preserving_proto_field_name=True)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    for name, value in data.items():
        _say(f"[bold]{name}[/]: {value}")


@admin_app.command("register-key")
def register_key(
    pub: Annotated[Path, typer.Argument(help="The public key file (PEM) to register.")],
    role: Annotated[str, typer.Option("--role", help="contributor, user or admin.")],
    server: ServerOpt,
    key: KeyOpt,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    cert: CertOpt = None,
    cert_key: CertKeyOpt = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Who holds it (default: file stem).")
    ] = None,
) -> None:
    """Register a contributor's or user's key with the market."""
    from shared.errors import InvalidInput
    from shared.proto import market_pb2 as pb

    roles = {"contributor": pb.ROLE_CONTRIBUTOR, "user": pb.ROLE_USER, "admin": pb.ROLE_ADMIN}
    if role.lower() not in roles:
        raise InvalidInput(f"--role must be contributor, user or admin, got {role!r}")
    if not pub.is_file():
        raise InvalidInput(f"public key file not found: {pub}")
    request = pb.RegisterKeyRequest(
        public_key=pub.read_bytes(), role=roles[role.lower()], name=name or pub.stem
    )
    info = _rpc(_stub(server, key, ca, insecure, cert, cert_key).RegisterKey, request, server)
    _say(f"registered {info.key_id} ({info.name}) as {role.lower()}")


@admin_app.command("revoke-key")
def revoke_key(
    pub: Annotated[str, typer.Argument(help="The public key file (PEM) or its key id.")],
    server: ServerOpt,
    key: KeyOpt,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    cert: CertOpt = None,
    cert_key: CertKeyOpt = None,
    reason: Annotated[str, typer.Option("--reason")] = "",
) -> None:
    """Revoke a key: its holder can no longer call the market, its learnwares stay."""
    from shared import signing
    from shared.proto import market_pb2 as pb

    path = Path(pub)
    key_id = signing.key_id(signing.load_public_key(path)) if path.is_file() else pub
    info = _rpc(
        _stub(server, key, ca, insecure, cert, cert_key).RevokeKey,
        pb.RevokeKeyRequest(key_id=key_id, reason=reason),
        server,
    )
    _say(f"revoked {info.key_id} ({info.name})")


@admin_app.command("list-keys")
def list_keys(
    server: ServerOpt,
    key: KeyOpt,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    cert: CertOpt = None,
    cert_key: CertKeyOpt = None,
    include_revoked: Annotated[bool, typer.Option("--all")] = False,
) -> None:
    """The registered keys and their roles."""
    from shared.proto import market_pb2 as pb

    reply = _rpc(
        _stub(server, key, ca, insecure, cert, cert_key).ListKeys,
        pb.ListKeysRequest(include_revoked=include_revoked),
        server,
    )
    for info in reply.keys:
        role = pb.Role.Name(info.role).removeprefix("ROLE_").lower()
        _say(f"{info.key_id}  {role:12} {info.name}{'  (revoked)' if info.revoked else ''}")
