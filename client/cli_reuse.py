"""``lwm reuse``: search, fetch the top matches and check them on your own data before use.

Attached by ``client.cli`` (``register``); the work is in ``client.reuse``. The search's
table (or JSON) comes first, as ``lwm search`` prints it, then the check's: every candidate's
perplexity on the held-out slice, scored here (no privacy spent), and the pick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from client.cli_privacy import BudgetEpsilonOpt
from client.cli_user import (
    BaseModelOpt,
    RequirePinnedOpt,
    RevokedOpt,
    TrustOpt,
    connection,
    print_matches,
    print_warning,
    resolve_home,
    revoked_ids,
    search_json,
    trust_store,
)
from shared.cli_options import (
    DATA_HELP,
    CaOpt,
    CertKeyOpt,
    CertOpt,
    DeviceOpt,
    DtypeOpt,
    HomeOpt,
    InsecureOpt,
    JsonOpt,
    KeyOpt,
    PromptColumnOpt,
    ResponseColumnOpt,
    ServerOpt,
    SplitOpt,
    TextColumnOpt,
    console,
    count_option,
)

if TYPE_CHECKING:
    from client.reuse import Candidate, ReuseOutcome

NO_PRIVACY = "scored on this machine: nothing was sent, no privacy spent"


def register(app: typer.Typer) -> None:
    app.command("reuse")(reuse)


def reuse(
    data: Annotated[Path, typer.Argument(help=f"Your data: {DATA_HELP}")],
    server: ServerOpt,
    key: KeyOpt,
    top_k: Annotated[int, count_option("--top-k", "How many matches to fetch and check.")] = 3,
    holdout: Annotated[
        int | None,
        count_option("--holdout", "How many of your records to score them on (default 50)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out slice.")] = 0,
    merge: Annotated[
        bool, typer.Option("--merge", help="Also check the top matches merged into one.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="New folder for the pick (plain peft).")
    ] = None,
    domain: Annotated[str | None, typer.Option("--domain", help="Only this domain.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only this task.")] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="rkme or pave (default: the market's).")
    ] = None,
    epsilon: Annotated[float, typer.Option("--epsilon", help="DP epsilon of the spec.")] = 4.0,
    delta: Annotated[float, typer.Option("--delta", help="DP delta of the spec.")] = 1e-5,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="Send a NON-private spec.")] = False,
    budget_epsilon: BudgetEpsilonOpt = None,
    batch_size: Annotated[int, count_option("--batch-size")] = 16,
    score_precision: Annotated[
        str,
        typer.Option(
            "--score-precision",
            help="auto, float32 or bfloat16: what the check's scores multiply in (auto: "
            "bfloat16 autocast where the hardware has it natively).",
        ),
    ] = "auto",
    base_model: BaseModelOpt = None,
    revoked_keys: RevokedOpt = None,
    trust: TrustOpt = None,
    require_pinned: RequirePinnedOpt = False,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    cert: CertOpt = None,
    cert_key: CertKeyOpt = None,
    as_json: JsonOpt = False,
    split: SplitOpt = None,
    text_column: TextColumnOpt = None,
    prompt_column: PromptColumnOpt = None,
    response_column: ResponseColumnOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    home: HomeOpt = None,
) -> None:
    """Find learnwares for DATA (a DP spec, as lwm search), fetch the top K, score them and
    the base model on a held-out slice of DATA here, and keep the best (or the base)."""
    from client.reuse import reuse as run
    from shared.data import DataSource
    from shared.models.device import resolve

    placement = resolve(device, dtype)
    conn = connection(server, key, ca, insecure, cert, cert_key)
    if no_dp:
        print_warning("--no-dp: the spec is NOT differentially private")
    outcome = run(
        DataSource(data, split, text_column, prompt_column, response_column),
        conn,
        top_k=top_k,
        holdout=holdout,
        seed=seed,
        merge=merge,
        out=out,
        home=resolve_home(home),
        base_model=base_model,
        revoked_keys=revoked_ids(revoked_keys),
        trust=trust_store(home, trust, require_pinned),
        placement=placement,
        batch_size=batch_size,
        precision=score_precision,
        kind=kind,
        epsilon=epsilon,
        no_dp=no_dp,
        delta=delta,
        progress=not as_json,
        budget_epsilon=budget_epsilon,
        domain=domain,
        task=task,
    )
    if as_json:
        print(json.dumps(_reuse_json(outcome), indent=2))
        return
    print_matches(outcome.search)
    _print_check(outcome)
    print(_result_line(outcome))


def _reuse_json(outcome: ReuseOutcome) -> dict[str, Any]:
    return {
        "search": search_json(outcome.search),
        "check": {
            "records": outcome.n_checked,
            "seed": outcome.seed,
            "privacy": NO_PRIVACY,
            "timing": {"fetch_s": outcome.fetch_seconds, "check_s": outcome.check_seconds},
        },
        "candidates": [_candidate_json(c, outcome.chosen) for c in outcome.candidates],
        "chosen": outcome.chosen.name,
        "written": None if outcome.written is None else str(outcome.written),
    }


def _candidate_json(c: Candidate, chosen: Candidate) -> dict[str, Any]:
    head: dict[str, Any] = {"name": c.name, "label": c.label, "members": list(c.members)}
    head |= {"weights": list(c.weights), "rank": c.rank, "chosen": c is chosen}
    return head | {"evaluation": c.evaluation.to_dict()}


def _print_check(outcome: ReuseOutcome) -> None:
    from rich.table import Table

    base = outcome.candidates[0].evaluation.perplexity
    table = Table(
        title=f"local check: {outcome.n_checked} held-out records (seed {outcome.seed})",
        caption=f"{NO_PRIVACY}; fetch {outcome.fetch_seconds:.1f} s, "
        f"check {outcome.check_seconds:.1f} s",
    )
    for column in ("", "candidate", "market rank", "perplexity", "vs base", "accuracy"):
        table.add_column(column, justify="left" if column in ("", "candidate") else "right")
    for c in outcome.candidates:
        e = c.evaluation
        table.add_row(
            "→" if c is outcome.chosen else "",
            c.shown,
            str(c.rank) if c.rank else "",
            f"{e.perplexity:.3f}",
            f"{100 * (e.perplexity / base - 1):+.1f}%" if c.members else "",
            "" if e.accuracy is None else f"{e.accuracy:.3f}",
        )
    console(width=max(console().width, 120)).print(table)


def _result_line(outcome: ReuseOutcome) -> str:
    chosen = outcome.chosen
    if not chosen.members:
        return "kept the base model: no match beat it on your held-out records"
    what = f"picked {chosen.shown}"
    if outcome.written is not None:
        return f"{what}; written to {outcome.written} (plain peft folder)"
    if chosen.single:
        return f"{what}; run it with lwm generate {chosen.name} (or pass --out DIR)"
    return f"{what}; pass --out DIR to save the merged adapter"
