"""Contributors make their learnwares (alone, or as a Flower federation) and submit them.

Every package is built by the same public code a real hospital runs (``make_learnware``,
``run_federation``) into ``cache/learnwares/NAME-FINGERPRINT``; the fingerprint covers
everything that shapes the package, so a second run reuses it and a changed setting
rebuilds it. ``build_package`` renames a finished package into place, so an interrupted run
leaves either the whole package or nothing. Submitting one the market already holds (same
package sha256) finds its id instead of failing.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.simulate.config import Contributor, SimulationConfig
from client.simulate.data import HolderData
from shared.errors import AlreadyExists, LwmError
from shared.home import Home

LICENSE = "Apache-2.0"
TASK = "text-generation"


@dataclass(frozen=True)
class BuiltLearnware:
    """A contributor's signed package on disk and, once submitted, its id in the market."""

    contributor: str
    package: Path
    built_seconds: float  # 0 when it came from the cache
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
    work: Path,
    *,
    home: Home,
    market: Any,
) -> BuiltLearnware:
    """The contributor's package at ``target`` (built unless already there)."""
    import time

    if (target / "manifest.json").exists():
        return BuiltLearnware(c.name, target, 0.0, True, len(holders))
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if c.federated:
        _federate(config, c, holders, key, target, work, home)
    else:
        _solo(config, c, holders[0], key, target, home, market)
    return BuiltLearnware(c.name, target, time.perf_counter() - started, False, len(holders))


def _finetune(config: SimulationConfig) -> Any:
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
) -> None:
    from client.contribute import ContributeConfig, make_learnware

    contribute = ContributeConfig(
        name=c.name,
        domain=c.domain,
        task=TASK,
        description=description(c),
        license=LICENSE,
        base_model=config.base_model,
        spec_kinds=config.spec_kinds,
        spec_epsilon=config.spec_epsilon,
        finetune=_finetune(config),
        contributor=c.name,
    )
    remote = market.schema()
    make_learnware(
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
    work: Path,
    home: Home,
) -> None:
    from client.federation.config import FederationConfig, Holder
    from client.federation.run import run_federation

    data_dir = work / "data" / c.name
    data_dir.mkdir(parents=True, exist_ok=True)
    members = []
    for holder in holders:
        path = data_dir / f"{holder.name}.jsonl"
        lines = (json.dumps({"text": t}) for t in holder.training_texts())
        path.write_text("\n".join(lines) + "\n")
        members.append(Holder(holder.name, path))
    t = config.training
    federation = FederationConfig(
        holders=tuple(members),
        name=c.name,
        domain=c.domain,
        task=TASK,
        description=description(c),
        license=LICENSE,
        key=key,
        base_model=config.base_model,
        rounds=config.federation.rounds,
        local_steps=config.federation.local_steps,
        batch_size=t.batch_size,
        max_tokens=t.max_tokens,
        lr=t.lr,
        rank=t.rank,
        alpha=2 * t.rank,
        train_epsilon=t.train_epsilon,
        spec_kinds=config.spec_kinds,
        spec_epsilon=config.spec_epsilon,
        out=target,
        home=home.root,
        coordinator=c.name,
    )
    run_federation(federation)


# ---------------------------------------------------------------- submit


def submit(client: Any, built: BuiltLearnware, listed: dict[str, Any]) -> Listed:
    """Submit the package, or find it in ``listed`` (sha256 -> LearnwareInfo) if it is there."""
    from client.market import status_name

    sha = package_sha256(built.package)
    info = listed.get(sha)
    if info is None:
        try:
            reply = client.submit(built.package)
        except AlreadyExists:
            info = next(i for i in client.iter_learnwares() if i.package_sha256 == sha)
        else:
            return Listed(built.contributor, reply.id, status_name(reply.status), reply.reason, sha)
    return Listed(built.contributor, info.id, status_name(info.status), info.reason, sha)


def package_sha256(package: Path) -> str:
    from shared.learnware import write_tar

    with tempfile.TemporaryFile() as tar:
        return write_tar(package, tar).sha256


def require_usable(listed: list[Listed]) -> None:
    refused = [
        f"{x.contributor}: {x.status} {x.reason}".strip() for x in listed if x.status != "USABLE"
    ]
    if refused:
        raise LwmError(f"the market did not accept every learnware: {'; '.join(refused)}")
