"""Contributors make their learnwares (alone, or as a Flower federation) and submit them.

Every package is built by the same public code a real hospital runs (``make_learnware``,
``run_federation``, both ending in ``client.publish.publish``) into
``cache/learnwares/NAME-FINGERPRINT``; the fingerprint covers everything that shapes the
package, so a second run reuses it and a changed setting rebuilds it. ``build_package``
renames a finished package into place, so an interrupted run leaves either the whole
package or nothing. Submitting one the market already holds (same package sha256, the
``Package.digest``) finds its id instead of failing.

The simulation's settings are mapped once onto the learnware's card, spec settings and
training (``_card``, ``_training``); a solo contributor and a federation share them. A
federation's holders get their texts in memory (``Holder.data``): Flower's simulation
engine ships the ClientApp to its Ray workers with the config, so no file is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.simulate.config import Contributor, SimulationConfig
from client.simulate.data import HolderData
from shared.errors import AlreadyExists, LwmError
from shared.home import Home

if TYPE_CHECKING:
    from client.finetune import FinetuneConfig
    from client.publish import LearnwareCard, SpecSettings
    from shared.learnware import Package

LICENSE = "Apache-2.0"
TASK = "text-generation"


@dataclass(frozen=True)
class BuiltLearnware:
    """A contributor's signed package and how long it took (0 when it came from the cache)."""

    contributor: str
    package: Package
    built_seconds: float
    cached: bool
    holders: int


@dataclass(frozen=True)
class Listed:
    contributor: str
    id: str
    status: str
    reason: str
    package_sha256: str


def description(c: Contributor) -> str:
    kind = f"a federation of {c.holders} holders" if c.federated else "one holder"
    tasks = f" and records of {', '.join(c.tasks)}" if c.tasks else ""
    return f"LoRA adapter by {kind}, trained on {', '.join(c.sources)} text{tasks}."


def fingerprint(config: SimulationConfig, c: Contributor, base_sha: str, schema_id: str) -> str:
    """What decides the package: the holder's data deal, training, specs and base model."""
    import hashlib

    parts = {
        "contributor": c.__dict__,
        "seed": config.seed,
        "training": config.training.__dict__,
        "federation": config.federation.__dict__ if c.federated else None,
        "spec_kinds": config.spec_kinds,
        "spec_epsilon": config.spec_epsilon,
        "base": base_sha,
        "schema": schema_id,
        "sources_before": _deal_order(config, c),
    }
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _deal_order(config: SimulationConfig, c: Contributor) -> list[Any]:
    """The contributors dealt before ``c`` decide which texts it gets."""
    before = []
    for other in config.contributors:
        if other.name == c.name:
            break
        before.append([other.sources, other.tasks, other.holders, other.texts, other.task_records])
    return before


def build(
    config: SimulationConfig,
    c: Contributor,
    holders: tuple[HolderData, ...],
    key: Path,
    target: Path,
    *,
    home: Home,
    market: Any,
) -> BuiltLearnware:
    """The contributor's package at ``target`` (built unless already there), made under
    the schema and base models of ``market`` (a ``MarketClient``)."""
    import time

    if (target / "manifest.json").exists():
        from shared.learnware.package import open_package

        return BuiltLearnware(c.name, open_package(target), 0.0, True, len(holders))
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if c.federated:
        package = _federate(config, c, holders, key, target, home)
    else:
        package = _solo(config, c, holders[0], key, target, home, market)
    return BuiltLearnware(c.name, package, time.perf_counter() - started, False, len(holders))


def _card(c: Contributor) -> LearnwareCard:
    from client.publish import LearnwareCard

    return LearnwareCard(c.name, c.domain, TASK, description(c), LICENSE, contributor=c.name)


def _spec(config: SimulationConfig) -> SpecSettings:
    from client.publish import SpecSettings

    return SpecSettings(config.spec_kinds, config.spec_epsilon)


def _training(config: SimulationConfig) -> FinetuneConfig:
    """The simulation's ``[training]`` as a solo run's fine-tuning (a federation replaces
    ``steps`` by its local steps per round)."""
    from client.finetune import FinetuneConfig

    t = config.training
    return FinetuneConfig(
        rank=t.rank,
        alpha=2 * t.rank,
        steps=t.steps,
        batch_size=t.batch_size,
        lr=t.lr,
        max_tokens=t.max_tokens,
        dp_epsilon=t.train_epsilon,
        seed=config.seed,
    )


def _solo(
    config: SimulationConfig,
    c: Contributor,
    holder: HolderData,
    key: Path,
    target: Path,
    home: Home,
    market: Any,
) -> Package:
    from client.contribute import ContributeConfig, make_learnware

    contribute = ContributeConfig(
        _card(c), base_model=config.base_model, spec=_spec(config), finetune=_training(config)
    )
    remote = market.schema()
    return make_learnware(
        holder.training_texts(),
        contribute,
        key,
        target,
        home=home,
        schema=remote.schema,
        accepted_base_models=remote.base_models,
        progress=True,
    )


def _federate(
    config: SimulationConfig,
    c: Contributor,
    holders: tuple[HolderData, ...],
    key: Path,
    target: Path,
    home: Home,
) -> Package:
    from client.federation.config import FederationConfig, Holder, MarketSettings
    from client.federation.run import run_federation

    federation = FederationConfig(
        holders=tuple(Holder(h.name, tuple(h.training_texts())) for h in holders),
        learnware=_card(c),
        market=MarketSettings(key=key, out=target),
        training=replace(_training(config), steps=config.federation.local_steps),
        spec=_spec(config),
        base_model=config.base_model,
        rounds=config.federation.rounds,
        home=home.root,
    )
    return run_federation(federation).published.package


# ---------------------------------------------------------------- submit


def submit(client: Any, built: BuiltLearnware, listed: dict[str, Any]) -> Listed:
    """Submit the package, or find it in ``listed`` (sha256 -> LearnwareInfo) if it is there."""
    from client.market import status_name

    sha = built.package.digest
    info = listed.get(sha)
    if info is None:
        try:
            reply = client.submit(built.package.folder)
        except AlreadyExists:
            info = next(i for i in client.iter_learnwares() if i.package_sha256 == sha)
        else:
            return Listed(built.contributor, reply.id, status_name(reply.status), reply.reason, sha)
    return Listed(built.contributor, info.id, status_name(info.status), info.reason, sha)


def require_usable(listed: list[Listed]) -> None:
    refused = [
        f"{x.contributor}: {x.status} {x.reason}".strip() for x in listed if x.status != "USABLE"
    ]
    if refused:
        raise LwmError(f"the market did not accept every learnware: {'; '.join(refused)}")
