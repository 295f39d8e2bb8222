"""``lwm federate --config FED.toml``: several holders build one learnware with Flower.

Attached by ``client.cli`` through ``register(app)``. Runs the federation on this machine
with ``flwr run`` on Flower's simulation engine (``client.federation.run``); errors are
``LwmError`` lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shared.cli_options import console as cli_console
from shared.errors import LwmError


def register(app: typer.Typer) -> None:
    app.command("federate")(federate_command)


def federate_command(
    config: Annotated[Path, typer.Option("--config", help="The federation's TOML file.")],
    verbose: Annotated[bool, typer.Option("--verbose", help="Flower's debug log.")] = False,
) -> None:
    """Federated LoRA (FedAvg) over the holders of FED.toml, merged DP spec, sign, submit."""
    from client.federation.config import FederationConfig
    from client.federation.run import run_federation

    fed = FederationConfig.from_toml(config)
    console = cli_console()
    train_epsilon = fed.training.dp_epsilon
    adapter = (
        f"adapter DP-SGD at epsilon {train_epsilon:g} per holder"
        if train_epsilon is not None
        else "adapter trained WITHOUT DP"
    )
    console.print(
        f"federating {len(fed.holders)} holders (at least {fed.quorum}), {fed.rounds} rounds "
        f"of {fed.local_steps} local steps ({adapter}; specs DP at epsilon {fed.spec.epsilon:g})"
    )
    result = run_federation(fed, verbose=verbose)
    holders = f"{result.holders} of {len(fed.holders)} holders' specs merged"
    verdict = result.published.verdict
    if verdict is None:
        console.print(f"wrote {result.published.package.folder} ({holders})")
        return
    if verdict.status == "REJECTED":
        raise LwmError(f"the market rejected learnware {verdict.learnware_id}: {verdict.reason}")
    console.print(f"learnware {verdict.learnware_id} is {verdict.status} ({holders})")
