"""``lwm privacy``: the user's privacy ledgers, one per dataset (``client.privacy_ledger``).

``show`` lists them (never a text: a ledger holds none), ``budget`` sets a dataset's total,
``reset`` forgets its releases (explicit: ``--yes``). ``lwm search --budget-epsilon`` sets
the same budget on the way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.cli_options import HomeOpt, JsonOpt

BudgetEpsilonOpt = Annotated[
    float | None,
    typer.Option(
        "--budget-epsilon",
        help="Set the total epsilon this data's privacy ledger allows (inf: no limit; "
        "default: the ledger's own, 10 for new data).",
    ),
]
DataOpt = Annotated[
    Path, typer.Option("--data", help="The data file (JSONL, CSV, .txt or save_to_disk).")
]
privacy_app = typer.Typer(
    help="Your privacy ledgers: epsilon spent per dataset and its budget.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add ``lwm privacy show|budget|reset`` to the ``lwm`` app."""
    app.add_typer(privacy_app, name="privacy")
    privacy_app.command("show")(show)
    privacy_app.command("budget")(budget)
    privacy_app.command("reset")(reset)


def _ledgers(home: str | None) -> Any:
    from client.privacy_ledger import PrivacyLedgers
    from shared.home import Home

    return PrivacyLedgers.at(Home.resolve(home))


def _texts(data: Path) -> list[str]:
    from shared.data import load_dataset

    return load_dataset(data).texts()


def show(
    data: Annotated[
        Path | None, typer.Option("--data", help="Only this data's ledger, with its releases.")
    ] = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """List the ledgers: data fingerprint, releases, epsilon spent at delta, budget."""
    ledgers = _ledgers(home)
    if data is None:
        found = ledgers.all()
    else:
        one = ledgers.get(_texts(data))
        found = () if one is None else (one,)
    if as_json:
        rows = [
            {**ledger.summary(), "history": [r.to_dict() for r in ledger.releases]}
            for ledger in found
        ]
        print(json.dumps(rows, indent=2))
        return
    if not found:
        print("no releases recorded" + ("" if data is None else " for this data"))
    for ledger in found:
        print(ledger.describe())
        for release in ledger.releases if data is not None else ():
            eps = "no DP" if release.report.epsilon is None else f"{release.report.epsilon:g}"
            print(f"  {release.at}  {release.what} {release.kind} to {release.to}: epsilon {eps}")


def budget(
    epsilon: Annotated[float, typer.Argument(help="The total epsilon allowed (inf: no limit).")],
    data: DataOpt,
    home: HomeOpt = None,
) -> None:
    """Set the total epsilon DATA's ledger allows."""
    print(_ledgers(home).set_budget(_texts(data), epsilon).describe())


def reset(
    data: DataOpt,
    yes: Annotated[bool, typer.Option("--yes", help="Yes, forget what was spent.")] = False,
    home: HomeOpt = None,
) -> None:
    """Forget every release recorded for DATA (what left this machine stays released)."""
    from shared.errors import InvalidInput

    if not yes:
        raise InvalidInput("resetting a privacy ledger forgets what was spent: pass --yes")
    forgotten = _ledgers(home).reset(_texts(data))
    print(f"forgot {len(forgotten.releases)} release(s) of data {forgotten.fingerprint[:12]}")
