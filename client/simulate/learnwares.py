"""Contributors make their learnwares (alone, or as a Flower federation) and submit them.

Every package is built by the same public code a real hospital runs (``make_learnware``,
``run_federation``, both ending in ``client.publish.publish``) into
``cache/learnwares/NAME-FINGERPRINT``; the fingerprint covers everything that shapes the
package, so a second run reuses it and a changed setting rebuilds it. ``build_package``
renames a finished package into place, so an interrupted run leaves either the whole
package or nothing. Submitting one the market already holds (same package sha256, the
``Package.digest``) finds its id instead of failing.

The simulation's settings are mapped once onto a ``ContributeConfig`` (``contribution``):
a solo contributor makes it with ``make_learnware``, a federation with the same card,
specs and training. A
federation's holders get their texts in memory (``Holder.data``): Flower's simulation
engine ships the ClientApp to its Ray workers with the config, so no file is needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.simulate.config import Contributor, Federation, SimulationConfig, Source
from client.simulate.data import HolderData
from shared.errors import AlreadyExists, LwmError
from shared.home import Home

if TYPE_CHECKING:
    from client.contribute import ContributeConfig
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
    """The manifest's description; the holders' own files are not named in it (it is public,
    and a file name can say more about a holder's data than the holder means to)."""
    kind = f"a federation of {c.holders} holders" if c.federated else "one holder"
    tasks = f" and records of {_named(c.tasks)}" if c.tasks else ""
    return f"LoRA adapter by {kind}, trained on {_named(c.sources)} text{tasks}."


def _named(sources: Sequence[Source]) -> str:
    names = [s for s in sources if isinstance(s, str)]
    if len(names) < len(sources):
        names.append("the holders' own data")
    return ", ".join(names)


def fingerprint(
    config: SimulationConfig,
    c: Contributor,
    holders: Sequence[HolderData],
    base_sha: str,
    schema_id: str,
) -> str:
    """What decides the package: the holders' data (its digest, so an edited file of the
    consortium's rebuilds), training, specs and base model."""
    import hashlib

    data = json.dumps([h.training_texts() for h in holders])
    parts = {
        "data": hashlib.sha256(data.encode()).hexdigest(),
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
    made = contribution(config, c)
    if c.federated:
        package = _federate(made, config.federation, holders, key, target, home)
    else:
        package = _solo(made, holders[0], key, target, home, market)
    return BuiltLearnware(c.name, package, time.perf_counter() - started, False, len(holders))


def contribution(config: SimulationConfig, c: Contributor) -> ContributeConfig:
    """The simulation's settings mapped, once, onto what contributor ``c`` makes: its card,
    its specs and a solo run's training (a federation trains ``local_steps`` per round)."""
    from client.contribute import ContributeConfig
    from client.finetune import FinetuneConfig
    from client.publish import LearnwareCard, SpecSettings

    t = config.training
    same = {name: getattr(t, name) for name in ("rank", "steps", "batch_size", "lr", "max_tokens")}
    return ContributeConfig(
        LearnwareCard(c.name, c.domain, TASK, description(c), LICENSE, contributor=c.name),
        base_model=config.base_model,
        spec=SpecSettings(config.spec_kinds, config.spec_epsilon),
        finetune=FinetuneConfig(
            **same, alpha=2 * t.rank, dp_epsilon=t.train_epsilon, seed=config.seed
        ),
    )


def _solo(
    made: ContributeConfig, holder: HolderData, key: Path, target: Path, home: Home, market: Any
) -> Package:
    from client.contribute import make_learnware

    remote = market.schema()
    return make_learnware(
        holder.training_texts(),
        made,
        key,
        target,
        home=home,
        schema=remote.schema,
        accepted_base_models=remote.base_models,
        progress=True,
    )


def _federate(
    made: ContributeConfig,
    federation: Federation,
    holders: tuple[HolderData, ...],
    key: Path,
    target: Path,
    home: Home,
) -> Package:
    """The same learnware made by a Flower federation; each holder's texts stay in memory."""
    from client.federation.config import FederationConfig, Holder, MarketSettings
    from client.federation.run import run_federation

    config = FederationConfig(
        holders=tuple(Holder(h.name, tuple(h.training_texts())) for h in holders),
        learnware=made.learnware,
        market=MarketSettings(key=key, out=target),
        training=replace(made.finetune, steps=federation.local_steps),
        spec=made.spec,
        base_model=made.base_model,
        rounds=federation.rounds,
        delta=made.delta,
        home=home.root,
    )
    return run_federation(config).published.package


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
