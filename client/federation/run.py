"""Run a federation on one machine with Flower's simulation engine (Ray, 1 CPU per holder)."""

from __future__ import annotations

import os
from typing import Any

from client.federation.client_app import make_client_app
from client.federation.config import FederationConfig
from client.federation.server_app import make_server_app
from shared.errors import LwmError


def run_federation(config: FederationConfig, *, verbose: bool = False) -> dict[str, Any]:
    """Simulate ``len(config.holders)`` SuperNodes and the ServerApp; returns its outcome.

    The outcome has ``status``/``learnware_id``/``reason`` after a submission, or
    ``package`` when the config writes the package to ``out``; ``manifest``, ``holders``
    (how many holders' specs were merged) and ``trained`` (how many holders' updates were
    averaged) in both cases. Raises what the ServerApp raised, e.g. an ``LwmError`` when
    fewer than ``min_holders`` holders trained a round or returned a spec.
    """
    from flwr.simulation import run_simulation

    outcome: dict[str, Any] = {}
    if config.home is not None:
        os.environ.setdefault("LWM_HOME", str(config.home))
    run_simulation(
        server_app=make_server_app(config, outcome),
        client_app=make_client_app(config),
        num_supernodes=len(config.holders),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        verbose_logging=verbose,
    )
    if "error" in outcome:
        error = outcome["error"]
        raise error if isinstance(error, LwmError) else LwmError(f"federation failed: {error}")
    if "manifest" not in outcome:
        raise LwmError("the federation ended without a learnware (see Flower's log above)")
    return outcome
