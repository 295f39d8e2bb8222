"""``lwm simulate``: the whole market on this machine, with the paper's evaluation.

Attached by ``client.cli`` through ``register(app)``. Errors are ``LwmError`` lines; Ctrl-C
stops the market server and leaves the run folder's cache consistent for a rerun.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from client.simulate.config import PROFILES
from shared.cli_options import HomeOpt, console


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)


def simulate_command(
    out: Annotated[Path, typer.Option("--out", help="Run folder: cache, report, plots.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="A TOML file (may start from a profile).")
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help=f"One of {', '.join(PROFILES)}.")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Contributors build learnwares, users search and reuse them; writes report.md."""
    from client.simulate.config import SimulationConfig
    from client.simulate.run import simulate
    from shared.home import Home

    if config is not None:
        settings = SimulationConfig.from_toml(config, profile)
    else:
        settings = SimulationConfig.profile_named(profile or "default")
    signal.signal(signal.SIGTERM, _stop)
    try:
        simulate(settings, out, console(), Home.resolve(home))
    except KeyboardInterrupt:
        # Typer would print a bare "Aborted"; say what state the run folder is in instead.
        print(
            f"lwm: interrupted; the market server was stopped and {out}/cache is consistent: "
            "run the same command again to resume",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None


def _stop(signum: int, frame: object) -> None:
    """SIGTERM (e.g. ``kill``, a job scheduler) unwinds like Ctrl-C: the server is stopped."""
    raise KeyboardInterrupt
