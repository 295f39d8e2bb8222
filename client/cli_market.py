"""``lwm market``: the market's catalogue as a contributor or user sees it: ``list``,
``show``, ``withdraw`` and ``submit``.

Attached by ``client.cli`` (``register``). Every command checks its own arguments before
it connects, talks to the market only through ``MarketClient`` (``submit`` through
``client.publish.submit_package``, the one upload road) and prints a table or, with
``--json``, one JSON document on stdout; every ``LwmError`` becomes one line on stderr and
its exit code in ``client.cli.main``. The privacy figures printed are the manifest's own
(its ``DpLedger``, as the market reports it), never recomputed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from client.cli_user import market_client
from shared.cli_options import (
    CaOpt,
    CertKeyOpt,
    CertOpt,
    InsecureOpt,
    JsonOpt,
    KeyOpt,
    ServerOpt,
    console,
    epsilon_text,
)

if TYPE_CHECKING:
    from shared.proto import market_pb2 as pb

STATUSES = ("PENDING", "USABLE", "REJECTED", "WITHDRAWN")
IdArg = Annotated[str, typer.Argument(metavar="ID", help="The learnware's id.")]
market_app = typer.Typer(
    help="The market's catalogue: list, show, withdraw and submit learnwares.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(market_app, name="market")


def _status(value: str | None) -> int | None:
    """A ``--status`` as the wire's enum; InvalidInput naming the accepted ones."""
    if value is None:
        return None
    from shared.errors import InvalidInput
    from shared.proto import market_pb2 as pb

    if value.upper() not in STATUSES:
        raise InvalidInput(f"--status {value!r}: use one of {', '.join(STATUSES)}")
    return pb.LearnwareStatus.Value(f"LEARNWARE_STATUS_{value.upper()}")


def summary(info: pb.LearnwareInfo) -> dict[str, Any]:
    """One learnware as ``list`` shows it (and ``show`` begins with)."""
    from client.market import status_name, total_epsilon

    return {
        "id": info.id,
        "name": info.name,
        "version": info.version,
        "domain": info.domain,
        "task": info.task,
        "status": status_name(info.status),
        "license": info.license,
        "base_model": info.base_model.model_id,
        "contributor": info.contributor_name,
        "contributor_key_id": info.contributor_key_id,
        "total_epsilon": total_epsilon(info),
        "package_size": info.package_size,
        "downloads": info.downloads,
        "created_at": info.created_at.ToJsonString(),
    }


def details(info: pb.LearnwareInfo, history: list[pb.LearnwareInfo]) -> dict[str, Any]:
    """Everything ``show`` prints: the summary, the manifest's description and base model,
    its specs, each DP release and their composed total (the manifest's ledger), the
    checks' verdict, the signer as the market registered it, the package and the history."""
    head, dp = summary(info), info.dp
    releases = [
        {
            "what": part.what,
            "epsilon": part.epsilon if part.HasField("epsilon") else None,
            "delta": part.delta,
            "mechanism": part.mechanism,
        }
        for part in dp.parts
    ]
    return {
        **head,
        "description": info.description,
        "base_model_sha256": info.base_model.sha256,
        "specs": [
            {"kind": s.kind, "schema_id": s.schema_id, "dim": s.dim, "n": s.n} for s in info.specs
        ],
        "privacy": {
            "releases": releases,
            "total_epsilon": head["total_epsilon"],
            "total_delta": dp.total_delta,
            "accountant": dp.accountant,
        },
        "checks": {"status": head["status"], "reason": info.reason},
        "signer": {"name": info.contributor_name, "key_id": info.contributor_key_id},
        "package_sha256": info.package_sha256,
        "history": [
            {k: summary(v)[k] for k in ("id", "version", "status", "created_at")} for v in history
        ],
    }


@market_app.command("list")
def list_command(
    server: ServerOpt,
    key: KeyOpt,
    domain: Annotated[str | None, typer.Option("--domain", help="Only this domain.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="Only this status: " + ", ".join(STATUSES))
    ] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Only those signed by --key.")] = False,
    all_versions: Annotated[
        bool, typer.Option("--all-versions", help="Every version, not only each newest.")
    ] = False,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    cert: CertOpt = None,
    cert_key: CertKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The learnwares you may see: others' USABLE ones, your own at any status (an admin
    sees all); the newest version of each name unless --all-versions."""
    filters: dict[str, Any] = {"all_versions": all_versions}
    wanted = _status(status)
    if wanted is not None:
        filters["status"] = wanted
    if domain:
        filters["domain"] = domain
    with market_client(server, key, ca, insecure, cert, cert_key) as client:
        if mine:
            filters["contributor_key_id"] = client.key_id
        rows = [summary(info) for info in client.iter_learnwares(**filters)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    _print_table(rows)


def _print_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not rows:
        console().print("no learnwares (check the filters)")
        return
    columns = ("id", "name", "version", "domain", "status", "license", "contributor")
    table = Table(title=f"{len(rows)} learnwares")
    for column in (*columns, "epsilon", "downloads"):
        table.add_column(column)
    for row in rows:
        cells = [str(row[c]) for c in columns]
        table.add_row(*cells, epsilon_text(row["total_epsilon"]), str(row["downloads"]))
    console(width=max(console().width, 160)).print(table)


@market_app.command("show")
def show_command(
    learnware_id: IdArg,
    server: ServerOpt,
    key: KeyOpt,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    cert: CertOpt = None,
    cert_key: CertKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One learnware: manifest, base model, specs, privacy per release and in total, the
    market's checks, its signer, size, downloads and every version of its name."""
    with market_client(server, key, ca, insecure, cert, cert_key) as client:
        shown = details(client.get(learnware_id), client.history(learnware_id))
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    privacy, signer, checks = shown["privacy"], shown["signer"], shown["checks"]
    lines = [
        f"{shown['name']} v{shown['version']} ({shown['id']}): {shown['domain']}/{shown['task']}",
        f"  {shown['description']}" if shown["description"] else "",
        f"  base model {shown['base_model']} ({shown['base_model_sha256'][:12]}), "
        f"licence {shown['license']}",
        "  specs: "
        + ", ".join(f"{s['kind']} (dim {s['dim']}, n {s['n']})" for s in shown["specs"]),
        *(
            f"  release {r['what']}: epsilon {epsilon_text(r['epsilon'])}, delta {r['delta']:g}"
            f" ({r['mechanism']})"
            for r in privacy["releases"]
        ),
        f"  total epsilon {epsilon_text(privacy['total_epsilon'])}, delta "
        f"{privacy['total_delta']:g} ({privacy['accountant']})",
        f"  checks: {checks['status']}" + (f": {checks['reason']}" if checks["reason"] else ""),
        f"  signed by {signer['name']} (key {signer['key_id']})",
        f"  package {shown['package_size']} bytes, sha256 {shown['package_sha256'][:16]}…; "
        f"{shown['downloads']} downloads",
        "  history: "
        + ", ".join(f"v{h['version']} {h['id']} {h['status']}" for h in shown["history"]),
    ]
    print("\n".join(line for line in lines if line))


@market_app.command("withdraw")
def withdraw_command(
    learnware_id: IdArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the record).")],
    server: ServerOpt,
    key: KeyOpt,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    cert: CertOpt = None,
    cert_key: CertKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Withdraw one of your learnwares (an admin: any): it leaves search and fetch, its
    record stays, WITHDRAWN, with the reason. The version before it becomes the newest."""
    from shared.errors import InvalidInput

    if not reason.strip():
        raise InvalidInput("--reason must say why the learnware is withdrawn")
    with market_client(server, key, ca, insecure, cert, cert_key) as client:
        row = summary(client.withdraw(learnware_id, reason))
    if as_json:
        print(json.dumps(row, indent=2))
        return
    print(f"withdrew {row['id']} ({row['name']} v{row['version']}): {reason}")


@market_app.command("submit")
def submit_command(
    folder: Annotated[Path, typer.Argument(help="A signed learnware folder.")],
    server: ServerOpt,
    key: KeyOpt,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    cert: CertOpt = None,
    cert_key: CertKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a signed learnware folder (``lwm contribute --out`` or ``lwm package build``)
    signed with --key's key. A name you submitted before becomes its next version."""
    from client.publish import submit_package
    from shared.errors import InvalidInput, LwmError

    if not folder.is_dir():
        raise InvalidInput(f"{folder} is not a learnware folder")
    with market_client(server, key, ca, insecure, cert, cert_key) as client:
        verdict = submit_package(client, folder)
        if verdict.status == "REJECTED":
            raise LwmError(
                f"the market rejected learnware {verdict.learnware_id}: {verdict.reason}"
            )
        row = summary(client.get(verdict.learnware_id))
    if as_json:
        print(json.dumps(row, indent=2))
        return
    print(f"learnware {row['id']} is {row['status']}: {row['name']} v{row['version']}")
