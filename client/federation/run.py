"""Run a federation on one machine with Flower's simulation engine (Ray, 1 CPU per holder)."""

from __future__ import annotations

from client.federation.client_app import make_client_app
from client.federation.config import FederationConfig
from client.federation.server_app import FederationResult, make_server_app
from shared.errors import LwmError


def run_federation(config: FederationConfig, *, verbose: bool = False) -> FederationResult:
    """Simulate ``len(config.holders)`` SuperNodes and the ServerApp; returns its result.

    The result holds the published package (at ``market.out``, or submitted with the
    market's verdict), how many holders' specs were merged and how many holders' updates
    were averaged. Raises what the ServerApp raised, e.g. an ``LwmError`` when fewer than
    ``min_holders`` holders trained a round or returned a spec; any other error becomes an
    ``LwmError`` naming it. Every path comes from ``config`` (its ``home`` included), so
    nothing is passed through the environment.
    """
    from flwr.simulation import run_simulation

    results: list[FederationResult] = []
    try:
        run_simulation(
            server_app=make_server_app(config, results.append),
            client_app=make_client_app(config),
            num_supernodes=len(config.holders),
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
            verbose_logging=verbose,
        )
    except LwmError:
        raise
    except Exception as err:
        raise LwmError(f"federation failed: {err}") from err
    if not results:
        raise LwmError("the federation ended without a learnware (see Flower's log above)")
    return results[0]
