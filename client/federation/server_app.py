"""The coordinator's Flower ServerApp: FedAvg over LoRA tensors, merged spec, sign, submit.

``make_server_app(config, outcome)`` closes over the config; ``outcome`` (a dict) receives
the result (``verdict`` or ``package``) because the simulation runs the ServerApp in this
process. ``make_server_app()`` (no config) is the deployment engine's app
(``client.federation.deploy``): it reads ``FED.toml`` from the run config ``config`` and
logs the outcome (``flwr log RUN_ID``), the package being at ``market.out`` or submitted.
Steps:

1. the market's schema and accepted base models (or the local schema without a market);
2. FedAvg (weighted by ``num-examples``) over ``get_peft_model_state_dict`` tensors for
   ``rounds`` rounds, starting from one seeded LoRA init; a holder that fails a round is
   left out while at least ``min_holders`` train (``QuorumFedAvg``);
3. a QUERY to every holder that trained for the DP spec of its texts, merged weighted by n
   (``merge_specs``), again going on without failures down to ``min_holders``;
4. the final adapter saved in peft format, the manifest (``client.contribute.build_manifest``)
   signed with the coordinator key, ``build_package``, then ``MarketClient.submit`` or the
   package left at ``out``.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from client.federation.client_app import History, base_model, home_of
from client.federation.config import FederationConfig
from shared.errors import LwmError
from shared.privacy import DPReport
from shared.spec.record import Specification


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


def initial_lora(config: FederationConfig) -> dict[str, Any]:
    """The seeded LoRA init every holder starts from (lora_A random, lora_B zero)."""
    import torch
    from peft import get_peft_model_state_dict

    from client.finetune import lora_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = lora_model(base_model(config), config.finetune)
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def save_adapter(config: FederationConfig, state: dict[str, Any], out: Path) -> Path:
    """The global LoRA tensors as a peft folder (``adapter_model.safetensors`` + config)."""
    import torch
    from peft import set_peft_model_state_dict

    from client.finetune import lora_model

    with torch.random.fork_rng(devices=[]):
        model = lora_model(base_model(config), config.finetune)
    set_peft_model_state_dict(model, state)
    model.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Could not find a config file")
        model.save_pretrained(str(out), safe_serialization=True)
    return out


def adapter_report(
    config: FederationConfig, total_n: int, histories: Sequence[History]
) -> DPReport:
    """The adapter's privacy part from the accountants of the holders that trained.

    ``histories`` has one entry per holder whose updates were averaged (empty lists
    without DP). Each person's text is in one holder only, so the adapter costs them what
    their holder's DP-SGD cost: the largest holder epsilon (parallel composition over
    disjoint data). Its RDP history (one entry: noise multiplier, sample rate, all steps)
    goes in the manifest. Without DP: epsilon None (no guarantee).
    """
    from shared.privacy import rdp_epsilon

    ft = config.finetune
    details: dict[str, Any] = {
        "clip_norm": ft.clip_norm if ft.budget.is_private else None,
        "lr": ft.learning_rate,
        "optimizer": ft.optimizer_name,
        "rank": ft.rank,
        "target_modules": list(ft.target_modules),
        "n": total_n,
        "federated": "fedavg",
        "holders": len(histories),
        "rounds": config.rounds,
        "local_steps": config.local_steps,
    }
    steps = config.rounds * config.local_steps
    private = [h for h in histories if h]
    if not ft.budget.is_private or not private:
        if ft.budget.is_private:
            raise LwmError("DP-SGD was asked for but no holder reported its accountant")
        return DPReport(
            mechanism="none",
            epsilon=None,
            delta=0.0,
            noise_multiplier=0.0,
            sample_rate=min(1.0, ft.batch_size / max(total_n, 1)),
            steps=steps,
            details=details,
        )
    worst = max(private, key=lambda h: rdp_epsilon(h, config.delta))
    sigmas = {s for s, _, _ in worst}
    rates = {q for _, q, _ in worst}
    if len(sigmas) != 1 or len(rates) != 1:
        raise LwmError("a holder's accountant mixes noise levels; cannot summarise it")
    total_steps = sum(k for _, _, k in worst)
    return DPReport(
        mechanism="dp-sgd",
        epsilon=rdp_epsilon(worst, config.delta),
        delta=config.delta,
        noise_multiplier=sigmas.pop(),
        sample_rate=rates.pop(),
        steps=total_steps,
        details={
            **details,
            "holder_epsilons": [rdp_epsilon(h, config.delta) for h in private],
        },
    )


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


def make_server_app(
    config: FederationConfig | None = None, outcome: dict[str, Any] | None = None
) -> Any:
    """The coordinator's ServerApp; ``config`` None reads it per run (deployment engine)."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()
    result = outcome if outcome is not None else {}

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            fed = config if config is not None else _deployed_config(context)
            result.update(federate(grid, fed))
        except Exception as err:  # reported to the caller of run_federation
            result["error"] = err
            raise
        _log_outcome(result)

    return app


def _deployed_config(context: Any) -> FederationConfig:
    from client.federation.client_app import deployed_config
    from client.federation.config import COORDINATOR

    return deployed_config(context, COORDINATOR)


def _log_outcome(outcome: dict[str, Any]) -> None:
    """One line in Flower's log (``flwr log RUN_ID``) saying where the learnware went."""
    from logging import INFO

    from flwr.common.logger import log

    holders = f"{outcome['holders']} holders' specs merged, {outcome['trained']} trained"
    if "package" in outcome:
        log(INFO, "lwm: wrote the signed package %s (%s)", outcome["package"], holders)
    else:
        log(
            INFO,
            "lwm: learnware %s is %s (%s)",
            outcome["learnware_id"],
            outcome["status"],
            holders,
        )


def federate(grid: Any, config: FederationConfig) -> dict[str, Any]:
    """FedAvg, merged spec, signed package, then submit it or leave it at ``out``."""
    from flwr.app import ArrayRecord, ConfigRecord

    from client.contribute import accepted_base, build_manifest, local_schema
    from client.federation.strategy import QuorumFedAvg
    from client.market import Connection, MarketClient, status_name
    from shared import signing
    from shared.learnware import build_package
    from shared.spec.record import save_specs

    home = home_of(config)
    key = signing.load_private_key(config.key)
    connection = None
    accepted = None
    if config.market_address is not None:
        connection = Connection(
            config.market_address,
            key_path=config.key,
            ca=config.ca,
            insecure=config.insecure,
        )
        with MarketClient(connection) as client:
            remote = client.schema()
        schema, accepted = remote.schema, remote.base_models
    else:
        schema = local_schema(home, *config.spec_kinds)
    base_ref = accepted_base(config.base_model, home, accepted)
    strategy = QuorumFedAvg(config.quorum)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_lora(config)),
        num_rounds=config.rounds,
        train_config=ConfigRecord({}),
    )
    specs = collect_specs(grid, strategy.trained, schema.to_json(), 3600, config.quorum)
    merged = [merge_specs(of_kind) for of_kind in zip(*specs, strict=True)]
    for spec in merged:
        spec.check_against(schema.for_kind(spec.kind))
    histories = [strategy.histories[node] for node in strategy.trained]
    manifest = build_manifest(
        config.contribute_config,
        base_ref,
        adapter_report(config, merged[0].n, histories),
        merged,
        key,
    )
    counts = {"manifest": manifest, "holders": len(specs), "trained": len(histories)}
    with tempfile.TemporaryDirectory(prefix="lwm-federate-") as tmp:
        work = Path(tmp)
        adapter = save_adapter(config, result.arrays.to_torch_state_dict(), work / "adapter")
        spec_file = save_specs(work / "spec.safetensors", merged)
        target = config.out if connection is None else work / config.name
        assert target is not None
        package = build_package(target, adapter, spec_file, manifest, key)
        if connection is None:
            return {"package": package, **counts}
        with MarketClient(connection) as client:
            reply = client.submit(package)
    return {
        "learnware_id": reply.id,
        "status": status_name(reply.status),
        "reason": reply.reason,
        **counts,
    }
