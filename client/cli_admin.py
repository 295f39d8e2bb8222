"""``lwm admin …`` and ``lwm server stats``: operate a running market as its admin.

Attached by ``client.cli`` (``register``). They speak to the market through
``client.market.MarketClient``, the one market client; ``lwm server init`` and
``lwm server start``, which run the market itself, stay in ``server/cli.py``. Heavy imports
happen inside the commands so ``lwm --help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from client.cli_user import market_client
from shared.cli_options import (
    CaOpt,
    CertKeyOpt,
    CertOpt,
    InsecureOpt,
    KeyOpt,
    ServerOpt,
    console,
)

ROLES = ("contributor", "user", "admin")

admin_app = typer.Typer(help="Administer a market (admin key needed).", no_args_is_help=True)


def register(app: typer.Typer, server_group: typer.Typer) -> None:
    """Add ``lwm admin …`` to the ``lwm`` app and ``stats`` to its ``lwm server`` group."""
    app.add_typer(admin_app, name="admin")
    server_group.command("stats")(stats)


def _say(text: str) -> None:
    console().print(text)


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

    with market_client(server, key, ca, insecure, cert, cert_key) as client:
        reply = client.stats()
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

    if role.lower() not in ROLES:
        raise InvalidInput(f"--role must be contributor, user or admin, got {role!r}")
    if not pub.is_file():
        raise InvalidInput(f"public key file not found: {pub}")
    with market_client(server, key, ca, insecure, cert, cert_key) as client:
        info = client.register_key(pub.read_bytes(), role.lower(), name or pub.stem)
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

    path = Path(pub)
    key_id = signing.key_id(signing.load_public_key(path)) if path.is_file() else pub
    with market_client(server, key, ca, insecure, cert, cert_key) as client:
        info = client.revoke_key(key_id, reason)
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

    with market_client(server, key, ca, insecure, cert, cert_key) as client:
        keys = client.list_keys(include_revoked)
    for info in keys:
        role = pb.Role.Name(info.role).removeprefix("ROLE_").lower()
        _say(f"{info.key_id}  {role:12} {info.name}{_revocation(info)}")


def _revocation(info: Any) -> str:
    """'' for an active key; when and why for a revoked one (keys revoked before the market
    kept this show only that they are)."""
    if not info.revoked:
        return ""
    stamp = info.revoked_at
    when = f" {stamp.ToDatetime().isoformat(timespec='seconds')}Z" if stamp.seconds else ""
    why = f": {info.revoke_reason}" if info.revoke_reason else ""
    return f"  (revoked{when}{why})"


@admin_app.command("web-token")
def web_token(
    server: ServerOpt,
    key: KeyOpt,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    cert: CertOpt = None,
    cert_key: CertKeyOpt = None,
    ttl: Annotated[
        int, typer.Option("--ttl", help="Seconds the token lives (at most 3600).")
    ] = 600,
) -> None:
    """Mint a one-time login token for the market's web page, signed by your admin key.

    Prints only the token (paste it into the page's login form). It names the market it is
    for (its TLS certificate, as every signed request does), so it logs in nowhere else."""
    import time

    from client.cli_user import connection
    from shared import signing, transport
    from shared.market_identity import MarketIdentity
    from shared.web_token import mint_web_token

    conn = connection(server, key, ca, insecure, cert, cert_key)
    address = transport.parse_address(conn.address)
    market_id = MarketIdentity(
        address.host, address.port, ca=ca, client_cert=cert, client_key=cert_key, insecure=insecure
    )()
    private = signing.load_private_key(key)
    print(mint_web_token(private, market_id, ttl, time.time()).text())
