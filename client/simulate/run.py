"""``lwm simulate``: a whole learnware market on one machine, phase by phase.

The run folder holds what a rerun resumes from: ``market/`` (the server's CA, keys, SQLite
database and blobs), ``keys/`` (one key per contributor and one for the users),
``cache/learnwares`` (signed packages), ``cache/fetched`` (verified downloads) and
``cache/evaluations.jsonl`` (every score). Each is written atomically or line by line, so
Ctrl-C at any point leaves a cache the next run trusts. The report (``report.md``,
``results.json``, PNG plots) is written last, from this run's figures only.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from client.simulate import learnwares as lw
from client.simulate.checks import CheckRun, Reused, check_user
from client.simulate.config import SimulationConfig, source_label
from client.simulate.contenders import (
    BASE_NAME,
    METRICS,
    accuracy_rows,
    contenders,
    group_rows,
)
from client.simulate.data import Deal, UserData, deal
from client.simulate.evaluation import Learnwares, Score, ScoreCache, Scoring, evaluate_all
from client.simulate.market_process import MarketProcess
from client.simulate.users import Query, Searches, fetch_all, search
from shared.home import Home
from shared.models.device import native_bf16, scoring_precision

if TYPE_CHECKING:
    from client.market import RemoteSchema
    from client.user import VerifiedLearnware

USERS_KEY = "users"
_T = TypeVar("_T")


@dataclass
class Phases:
    """Wall time per phase, in the order they ran (the report's 'time per phase')."""

    seconds: dict[str, float] = field(default_factory=dict)
    console: Any = None

    @contextmanager
    def phase(self, name: str, what: str) -> Iterator[None]:
        if self.console is not None:
            self.console.rule(f"[bold]{what}")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def simulate(
    config: SimulationConfig, out: Path, console: Any, home: Home | None = None
) -> dict[str, Any]:
    """Run the whole market and write the report into ``out``; returns results.json's data."""
    home = home or Home.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache").mkdir(exist_ok=True)
    (out / "keys").mkdir(exist_ok=True)
    phases = Phases(console=console)
    started = time.perf_counter()
    with phases.phase("data", f"Dealing real corpora to holders and users ({config.profile})"):
        dealt = deal(config)
        _print_deal(console, dealt)
    market = MarketProcess(out / "market", (config.base_model,), home.root, smoke=config.smoke)
    with phases.phase("market", "Starting the market server (TLS on loopback, SQLite)"):
        market.start()
        console.print(f"market at {market.address}, log {market.log}")
    try:
        results = _with_market(config, out, home, dealt, market, phases, console)
    finally:
        market.stop()
    results["seconds"] = time.perf_counter() - started
    results["phases"] = phases.seconds
    with phases.phase("report", "Writing the report"):
        from client.simulate.report import write_report

        write_report(results, out)
    results["phases"] = phases.seconds
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    console.print(f"[bold green]done[/] in {results['seconds']:.0f} s: {out / 'report.md'}")
    return results


def _with_market(
    config: SimulationConfig,
    out: Path,
    home: Home,
    dealt: Deal,
    market: MarketProcess,
    phases: Phases,
    console: Any,
) -> dict[str, Any]:
    from client.market import MarketClient
    from client.specs import SpecMaker

    keys = out / "keys"
    for c in config.contributors:
        market.register(keys / f"{c.name}.key", "contributor", c.name)
    market.register(keys / f"{USERS_KEY}.key", "user", USERS_KEY)
    with MarketClient(market.connection(keys / f"{USERS_KEY}.key")) as users_client:
        remote = users_client.schema()
    with phases.phase("learnwares", f"Contributors make {len(config.contributors)} learnwares"):
        built = _build_all(config, out, home, dealt, market, remote, console)
    with phases.phase("submit", "Submitting to the market (signature, checks, smoke run)"):
        listed = _submit_all(built, market, keys)
        lw.require_usable(listed)
    contributor_of = {x.id: x.contributor for x in listed}
    users = dealt.users
    with MarketClient(market.connection(keys / f"{USERS_KEY}.key")) as client:
        maker = SpecMaker(remote.schema, home)
        searches = Searches()
        with phases.phase("search", f"{len(users)} users search with DP specs"):
            for user in _bar(users, "search"):
                for kind in config.spec_kinds:
                    searches.main.append(
                        search(
                            client,
                            maker,
                            user,
                            kind,
                            config.user_epsilon,
                            contributor_of,
                            config.seed,
                        )
                    )
        with phases.phase("sweep", "Identification against the users' epsilon"):
            # The point at the users' own epsilon is the main search, not a new release.
            searches.sweep.extend(q for q in searches.main if q.epsilon in config.sweep_epsilons)
            others = [e for e in config.sweep_epsilons if e != config.user_epsilon]
            jobs = [(u, k, e) for e in others for k in config.spec_kinds for u in users]
            for user, kind, eps in _bar(jobs, "sweep"):
                searches.sweep.append(
                    search(client, maker, user, kind, eps, contributor_of, config.seed)
                )
        with phases.phase("fetch", "Fetching and verifying every learnware"):
            fetched = fetch_all(client, [x.id for x in listed], out / "cache" / "fetched", home)
    with phases.phase("evaluate", "Scoring base and every learnware on every user's records"):
        learnwares = {contributor_of[i]: v for i, v in fetched.items()}
        models = {
            BASE_NAME: f"base:{remote.base_models[0].sha256}",
            **{x.contributor: x.package_sha256 for x in listed},
        }
        run = _check_run(config, learnwares, models, home, out)
        scores = _evaluate(run, users)
    top_k = config.users.check_top_k
    with phases.phase("check", f"Local check before reuse: top {top_k}, merge, base"):
        reused = _check_all(config, run, users, searches, scores)
    return _results(config, dealt, built, listed, searches, scores, remote, reused)


def _build_all(
    config: SimulationConfig,
    out: Path,
    home: Home,
    dealt: Deal,
    market: MarketProcess,
    remote: RemoteSchema,
    console: Any,
) -> list[lw.BuiltLearnware]:
    from client.market import MarketClient

    schema_blob = json.dumps(remote.schema.to_dict(), sort_keys=True)
    base_sha = remote.base_models[0].sha256
    built = []
    for i, c in enumerate(config.contributors, 1):
        fp = lw.fingerprint(config, c, dealt.holders[c.name], base_sha, schema_blob)
        target = out / "cache" / "learnwares" / f"{c.name}-{fp}"
        how = f"federation of {c.holders}" if c.federated else "solo"
        sources = ", ".join(source_label(s) for s in c.sources)
        console.print(f"[{i}/{len(config.contributors)}] {c.name} ({how}, {sources})")
        key = out / "keys" / f"{c.name}.key"
        with MarketClient(market.connection(key)) as client:
            b = lw.build(
                config,
                c,
                dealt.holders[c.name],
                key,
                target,
                home=home,
                market=client,
            )
        console.print(
            f"    {'cached' if b.cached else f'built in {b.built_seconds:.0f} s'}: {target.name}"
        )
        built.append(b)
    return built


def _submit_all(
    built: list[lw.BuiltLearnware], market: MarketProcess, keys: Path
) -> list[lw.Listed]:
    from client.market import MarketClient

    with MarketClient(market.connection(keys / f"{USERS_KEY}.key")) as reader:
        listed_now = {i.package_sha256: i for i in reader.iter_learnwares()}
    out = []
    for b in _bar(built, "submit"):
        with MarketClient(market.connection(keys / f"{b.contributor}.key")) as client:
            out.append(lw.submit(client, b, listed_now))
    return out


def _check_run(
    config: SimulationConfig,
    learnwares: dict[str, VerifiedLearnware],
    models: dict[str, str],
    home: Home,
    out: Path,
) -> CheckRun:
    """The fetched learnwares (loaded once, on the first missing score), their cache keys,
    the scoring options and the score cache, shared by the evaluation and the checks."""
    return CheckRun(
        learnwares,
        models,
        Scoring(
            max_labels=config.users.max_labels,
            max_words=config.users.eval_words,
            precision=scoring_precision(config.users.score_precision),
        ),
        ScoreCache(out / "cache" / "evaluations.jsonl"),
        Learnwares(learnwares, home),
        home,
    )


def _evaluate(run: CheckRun, users: Sequence[UserData]) -> list[Score]:
    from tqdm.auto import tqdm

    models = run.model_keys
    bar = tqdm(total=len(users) * len(models), desc="evaluate", unit="score")
    try:
        return evaluate_all(
            users,
            run.learnwares,
            models,
            run.scoring,
            run.cache,
            run.home,
            progress=lambda: bar.update(1),
            loaded=run.loaded,
        )
    finally:
        bar.close()


def _check_all(
    config: SimulationConfig,
    run: CheckRun,
    users: Sequence[UserData],
    searches: Searches,
    scores: list[Score],
) -> dict[str, dict[str, Reused]]:
    """Every user's local check per kind (``client.simulate.checks``)."""
    nll: dict[str, dict[str, float]] = {}
    for s in scores:
        nll.setdefault(s.user, {})[s.model] = s.nll
    out: dict[str, dict[str, Reused]] = {}
    for user in _bar(users, "check"):
        for q in (q for q in searches.main if q.user == user.name):
            top_k = config.users.check_top_k
            out.setdefault(user.name, {})[q.kind] = check_user(
                run, user, q.scores, top_k, nll[user.name]
            )
    return out


def _bar(items: Iterable[_T], desc: str) -> Iterable[_T]:
    from tqdm.auto import tqdm

    return tqdm(list(items), desc=desc, unit="it", leave=False)


def _print_deal(console: Any, dealt: Deal) -> None:
    for name, holders in dealt.holders.items():
        sizes = ", ".join(f"{len(h.texts)}+{len(h.records)}" for h in holders)
        console.print(f"  {name}: {len(holders)} holder(s), texts+records {sizes}")
    console.print(f"  {len(dealt.users)} users: {', '.join(u.name for u in dealt.users)}")


# ---------------------------------------------------------------- results


def _results(
    config: SimulationConfig,
    dealt: Deal,
    built: list[lw.BuiltLearnware],
    listed: list[lw.Listed],
    searches: Searches,
    scores: list[Score],
    remote: RemoteSchema,
    reused: dict[str, dict[str, Reused]],
) -> dict[str, Any]:
    nll: dict[str, dict[str, float]] = {}
    accuracy: dict[str, dict[str, dict[str, float | None]]] = {m: {} for m in METRICS}
    for s in scores:
        nll.setdefault(s.user, {})[s.model] = s.nll
        accuracy["acc"].setdefault(s.user, {})[s.model] = s.evaluation.accuracy
        accuracy["acc_norm"].setdefault(s.user, {})[s.model] = s.evaluation.accuracy_norm
    picks = {u.name: {k: searches.pick(u.name, k) for k in config.spec_kinds} for u in dealt.users}
    groups = {u.name: u.group for u in dealt.users}
    per_user, best_single = contenders(nll, accuracy, picks, groups, reused)
    table = group_rows(per_user, config.spec_kinds)
    return {
        "config": config.to_dict(),
        "machine": _machine(),
        "base_model": {"name": config.base_model, "sha256": remote.base_models[0].sha256},
        "learnwares": [_learnware(b, x) for b, x in zip(built, listed, strict=True)],
        "users": [_user(u) for u in dealt.users],
        "searches": [asdict(q) for q in searches.main],
        "sweep": [asdict(q) for q in searches.sweep],
        "identification": _identification(searches.main, config.spec_kinds),
        "sweep_accuracy": _sweep_accuracy(searches.sweep, config),
        "scores": [{"user": s.user, "model": s.model, **s.evaluation.to_dict()} for s in scores],
        "best_single": best_single,
        "contenders": [asdict(r) for r in per_user],
        "table": [asdict(r) for r in table],
        "accuracy_table": [asdict(r) for r in accuracy_rows(per_user, config.spec_kinds)],
        "beats_base": {
            k: {"users": len(per_user), "beaten": sum(r.beats_base(k) for r in per_user)}
            for k in config.spec_kinds
        },
        "checked_beats_base": {
            k: {"users": len(per_user), "beaten": sum(r.checked_beats_base(k) for r in per_user)}
            for k in config.spec_kinds
        },
        "reused": {u: {k: asdict(r) for k, r in kinds.items()} for u, kinds in reused.items()},
    }


def _learnware(b: lw.BuiltLearnware, x: lw.Listed) -> dict[str, Any]:
    manifest = b.package.manifest
    return {
        "contributor": b.contributor,
        "id": x.id,
        "status": x.status,
        "holders": b.holders,
        "built_seconds": b.built_seconds,
        "cached": b.cached,
        "package_sha256": x.package_sha256,
        "dp": {
            "parts": [
                {"what": p.what, "epsilon": p.epsilon, "delta": p.delta} for p in manifest.dp.parts
            ],
            "total_epsilon": manifest.dp.total.epsilon,
            "total_delta": manifest.dp.total.delta,
        },
    }


def _user(u: UserData) -> dict[str, Any]:
    described = {name: getattr(u, name) for name in ("name", "kind", "source", "group")}
    sizes = {"spec_records": len(u.records), "eval_records": len(u.eval_records())}
    return {**described, "right": list(u.right), **sizes}


def _identification(queries: list[Query], kinds: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for kind in kinds:
        mine = [q for q in queries if q.kind == kind]
        correct = sum(q.correct for q in mine)
        out[kind] = {"correct": correct, "users": len(mine), "accuracy": correct / len(mine)}
    return out


def _sweep_accuracy(queries: list[Query], config: SimulationConfig) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind in config.spec_kinds:
        for eps in config.sweep_epsilons:
            mine = [q for q in queries if q.kind == kind and q.epsilon == eps]
            out.setdefault(kind, {})[str(eps)] = sum(q.correct for q in mine) / len(mine)
    return out


def _machine() -> dict[str, Any]:
    import os

    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "bf16_native": native_bf16(),
    }
