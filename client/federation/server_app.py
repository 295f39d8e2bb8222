"""The coordinator's Flower ServerApp: FedAvg over LoRA tensors, merged spec, sign, submit.

``make_server_app()`` is the app of ``client.federation.deploy``, run by ``flwr run`` on
the simulation engine (``client.federation.run``) or the deployment engine alike: it reads
``FED.toml`` from the run config ``config`` and logs the result (``flwr log RUN_ID``), the
package being at ``market.out`` or submitted. When the run config names a ``result`` file
(``lwm federate`` does: the app runs in a process of Flower's), the ``FederationResult``,
or the error that stopped the run, is also written there (``client.federation.result``).
Steps:

1. the coordinator key's role (``WhoAmI``: it may submit), the market's schema and
   accepted base models (or the local schema without a market);
2. FedAvg (weighted by ``num-examples``) over ``get_peft_model_state_dict`` tensors for
   ``rounds`` rounds, starting from one seeded LoRA init; a holder that fails a round is
   left out while at least ``min_holders`` train (``QuorumFedAvg``);
3. a QUERY to every holder that trained for the DP spec of its texts, merged weighted by n
   (``merge_specs``), again going on without failures down to ``min_holders``;
4. the final adapter saved in peft format and its DP report (``client.finetune.
   adapter_report`` from the worst holder's accountant), then ``client.publish.publish``:
   manifest, signed with the coordinator key, package, submitted or left at ``out``.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.federation.client_app import AppCache, deployed_config, home_of
from client.federation.config import COORDINATOR, FederationConfig
from client.federation.result import FederationResult, write_outcome
from shared.dpsgd import History
from shared.errors import LwmError
from shared.privacy import DPReport
from shared.spec.record import Specification

if TYPE_CHECKING:
    from client.market import MarketClient
    from shared.models import LoadedModel


def merge_specs(specs: Sequence[Specification]) -> Specification:
    """One spec of the pooled data: the n-weighted mean of the holders' vectors.

    Both RKME (DP mean embedding) and PAVE vectors are averaged with weights n_i / N. Each
    holder's noise is independent, so the merged per-coordinate noise std is
    sqrt(sum (n_i/N)^2 std_i^2). Every text is in exactly one holder's spec (disjoint data),
    so the merged release costs each person what their holder's spec cost: the largest
    holder epsilon (parallel composition), with that holder's noise multiplier.
    """
    import numpy as np

    if not specs:
        raise LwmError("no holder returned a spec; nothing to merge")
    first = specs[0]
    for s in specs[1:]:
        if (s.kind, s.schema_id, s.dim) != (first.kind, first.schema_id, first.dim):
            raise LwmError("the holders' specs were made under different schemas")
    ns = np.array([s.n for s in specs], dtype=np.float64)
    weights = ns / ns.sum()
    vector = np.sum(
        [w * s.vector.astype(np.float64) for w, s in zip(weights, specs, strict=True)], axis=0
    )
    std = math.sqrt(
        sum(float(w) ** 2 * s.privacy.noise_std**2 for w, s in zip(weights, specs, strict=True))
    )
    private = [s for s in specs if s.privacy.epsilon is not None]
    worst = max(private, key=lambda s: float(s.privacy.epsilon or 0.0)) if private else first
    privacy = replace(
        worst.privacy,
        noise_std=std,
        details={
            **worst.privacy.details,
            "merged_holders": len(specs),
            "holder_n": [int(n) for n in ns],
        },
    )
    return Specification(
        kind=first.kind,
        schema_id=first.schema_id,
        vector=vector.astype(np.float32),
        n=int(ns.sum()),
        privacy=privacy,
        meta={**first.meta, "federated": True},
    )


def initial_lora(config: FederationConfig, base: LoadedModel) -> dict[str, Any]:
    """The seeded LoRA init every holder starts from (lora_A random, lora_B zero)."""
    import torch
    from peft import get_peft_model_state_dict

    from client.finetune import lora_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = lora_model(base, config.training)
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def save_adapter(
    config: FederationConfig, base: LoadedModel, state: dict[str, Any], out: Path
) -> Path:
    """The global LoRA tensors as a peft folder (``adapter_model.safetensors`` + config)."""
    import torch
    from peft import set_peft_model_state_dict

    from client.finetune import lora_model

    with torch.random.fork_rng(devices=[]):
        model = lora_model(base, config.training)
    set_peft_model_state_dict(model, state)
    model.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Could not find a config file")
        model.save_pretrained(str(out), safe_serialization=True)
    return out


def federated_report(
    config: FederationConfig, total_n: int, histories: Sequence[History]
) -> DPReport:
    """The adapter's DP report from the accountants of the holders that trained.

    ``histories`` has one entry per holder whose updates were averaged (empty without DP).
    Each person's text is in one holder only, so the adapter costs them what their
    holder's DP-SGD cost: the largest holder epsilon (parallel composition over disjoint
    data), reported from that holder's history by ``client.finetune.adapter_report``.
    """
    from client.finetune import adapter_report
    from shared.privacy import rdp_epsilon

    private = [list(h) for h in histories if h]
    extra: dict[str, Any] = {
        "federated": "fedavg",
        "holders": len(histories),
        "rounds": config.rounds,
        "local_steps": config.local_steps,
    }
    worst: list[tuple[float, float, int]] = []
    if private and config.training.budget.is_private:
        worst = max(private, key=lambda h: rdp_epsilon(h, config.delta))
        extra["holder_epsilons"] = [rdp_epsilon(h, config.delta) for h in private]
    return adapter_report(config.training, total_n, worst, steps=config.total_steps, **extra)


def collect_specs(
    grid: Any, nodes: Sequence[int], schema_json: str, timeout: float, quorum: int
) -> list[list[Specification]]:
    """The DP specs (one per kind) of each holder in ``nodes`` (a QUERY each), at least
    ``quorum`` of them.

    A holder that replies with an error, or not within ``timeout``, is left out of the
    merged spec; fewer than ``quorum`` specs is an ``LwmError``.
    """
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    messages = [
        Message(
            content=RecordDict({"config": ConfigRecord({"schema": schema_json})}),
            message_type=MessageType.QUERY,
            dst_node_id=node,
        )
        for node in nodes
    ]
    from client.federation.strategy import failures

    replies = list(grid.send_and_receive(messages, timeout=timeout))
    failed = failures(replies)
    specs = [
        [Specification.from_bytes(bytes(b)) for b in r.content["spec"]["specs"]]
        for r in replies
        if not r.has_error()
    ]
    if len(specs) < quorum:
        missing = len(nodes) - len(replies)
        detail = "; ".join(failed + ([f"{missing} did not answer"] if missing else []))
        raise LwmError(
            f"only {len(specs)} holder(s) returned a spec, min_holders is {quorum} ({detail}); "
            "no learnware was made"
        )
    return specs


def make_server_app() -> Any:
    """The coordinator's ServerApp: reads FED.toml per run (``deployed_config``), and
    writes its outcome to the run config's ``result`` file when one is named. An error is
    raised out of the app after it is recorded, so Flower marks the run failed."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()
    cache = AppCache()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        named = str(context.run_config.get("result") or "")
        outcome = Path(named) if named else None
        try:
            result = federate(grid, deployed_config(context, COORDINATOR, cache), cache)
        except Exception as err:
            if outcome is not None:
                write_outcome(outcome, error=err)
            raise
        _log_result(result)
        if outcome is not None:
            write_outcome(outcome, result)

    return app


def _log_result(result: FederationResult) -> None:
    """One line in Flower's log (``flwr log RUN_ID``) saying where the learnware went."""
    from logging import INFO

    from flwr.common.logger import log

    holders = f"{result.holders} holders' specs merged, {result.trained} trained"
    verdict = result.published.verdict
    if verdict is None:
        folder = result.published.package.folder
        log(INFO, "lwm: wrote the signed package %s (%s)", folder, holders)
    else:
        log(INFO, "lwm: learnware %s is %s (%s)", verdict.learnware_id, verdict.status, holders)


def federate(grid: Any, config: FederationConfig, cache: AppCache) -> FederationResult:
    """FedAvg, merged spec, then ``publish``: submitted, or left at ``market.out``."""
    from client.federation.client_app import base_model

    with _market(config) as (client, schema, accepted):
        from flwr.app import ArrayRecord, ConfigRecord

        from client.contribute import accepted_base
        from client.federation.strategy import QuorumFedAvg
        from client.publish import publish
        from shared import signing

        key = signing.load_private_key(config.market.key)
        base_ref = accepted_base(config.base_model, home_of(config), accepted)
        base = base_model(config, cache)
        strategy = QuorumFedAvg(config.quorum)
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial_lora(config, base)),
            num_rounds=config.rounds,
            train_config=ConfigRecord({}),
        )
        specs = collect_specs(grid, strategy.trained, schema.to_json(), 3600, config.quorum)
        merged = [merge_specs(of_kind) for of_kind in zip(*specs, strict=True)]
        for spec in merged:
            spec.check_against(schema.for_kind(spec.kind))
        histories = [strategy.histories[node] for node in strategy.trained]
        with tempfile.TemporaryDirectory(prefix="lwm-federate-") as tmp:
            work = Path(tmp)
            adapter = save_adapter(config, base, result.arrays.to_torch_state_dict(), work / "a")
            target = config.market.out if client is None else work / config.learnware.name
            assert target is not None  # MarketSettings: an address or an out folder
            published = publish(
                config.learnware,
                base_ref,
                adapter,
                federated_report(config, merged[0].n, histories),
                merged,
                key,
                target,
                delta=config.delta,
                client=client,
            )
    return FederationResult(published, holders=len(specs), trained=len(histories))


SUBMITTING = ("contributor", "submitting the federated learnware")  # require_role's args


def check_coordinator_key(config: FederationConfig) -> None:
    """The ServerApp's first check, also made before Flower starts (a second instead of
    Flower's start-up): the market knows the coordinator key and lets it submit
    (``WhoAmI``), else ``PermissionDenied``/``Unauthenticated``. Nothing to ask without
    a market address."""
    if config.market.address is not None:
        with _client(config) as client:
            client.require_role(*SUBMITTING)


def _client(config: FederationConfig) -> MarketClient:
    from client.market import Connection, MarketClient

    m = config.market
    assert m.address is not None  # the callers' condition
    return MarketClient(Connection(m.address, key_path=m.key, ca=m.ca, insecure=m.insecure))


@contextlib.contextmanager
def _market(config: FederationConfig) -> Iterator[tuple[Any, Any, Any]]:
    """The market client (None without ``market.address``), its schema and accepted base
    models, after the coordinator key's role; without a market the local schema of the
    spec kinds, any base model."""
    from client.contribute import local_schema

    if config.market.address is None:
        yield None, local_schema(home_of(config), *config.spec.kinds), None
        return
    with _client(config) as client:
        client.require_role(*SUBMITTING)
        remote = client.schema()
        yield client, remote.schema, remote.base_models
