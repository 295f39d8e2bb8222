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

from shared.cli_options import (
    DATA_HELP,
    HomeOpt,
    JsonOpt,
    PromptColumnOpt,
    ResponseColumnOpt,
    SplitOpt,
    TextColumnOpt,
)

BudgetEpsilonOpt = Annotated[
    float | None,
    typer.Option(
        "--budget-epsilon",
        help="Set the total epsilon this data's privacy ledger allows (inf: no limit; "
        "default: the ledger's own, 10 for new data).",
    ),
]
DataOpt = Annotated[Path, typer.Option("--data", help=f"The data the ledger is of: {DATA_HELP}")]
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


def _texts(
    data: Path,
    split: str | None,
    text_column: str | None,
    prompt_column: str | None,
    response_column: str | None,
) -> list[str]:
    """The texts a ledger is keyed by: the same split and columns as the search that spent."""
    from shared.data import DataSource, load_dataset

    return load_dataset(
        DataSource(data, split, text_column, prompt_column, response_column)
    ).texts()


def show(
    data: Annotated[
        Path | None, typer.Option("--data", help="Only this data's ledger, with its releases.")
    ] = None,
    as_json: JsonOpt = False,
    split: SplitOpt = None,
    text_column: TextColumnOpt = None,
    prompt_column: PromptColumnOpt = None,
    response_column: ResponseColumnOpt = None,
    home: HomeOpt = None,
) -> None:
    """List the ledgers: data fingerprint, releases, epsilon spent at delta, budget."""
    ledgers = _ledgers(home)
    if data is None:
        found = ledgers.all()
    else:
        one = ledgers.get(_texts(data, split, text_column, prompt_column, response_column))
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
    split: SplitOpt = None,
    text_column: TextColumnOpt = None,
    prompt_column: PromptColumnOpt = None,
    response_column: ResponseColumnOpt = None,
    home: HomeOpt = None,
) -> None:
    """Set the total epsilon DATA's ledger allows."""
    texts = _texts(data, split, text_column, prompt_column, response_column)
    print(_ledgers(home).set_budget(texts, epsilon).describe())


def reset(
    data: DataOpt,
    yes: Annotated[bool, typer.Option("--yes", help="Yes, forget what was spent.")] = False,
    split: SplitOpt = None,
    text_column: TextColumnOpt = None,
    prompt_column: PromptColumnOpt = None,
    response_column: ResponseColumnOpt = None,
    home: HomeOpt = None,
) -> None:
    """Forget every release recorded for DATA (what left this machine stays released)."""
    from shared.errors import InvalidInput

    if not yes:
        raise InvalidInput("resetting a privacy ledger forgets what was spent: pass --yes")
    texts = _texts(data, split, text_column, prompt_column, response_column)
    forgotten = _ledgers(home).reset(texts)
    print(f"forgot {len(forgotten.releases)} release(s) of data {forgotten.fingerprint[:12]}")
