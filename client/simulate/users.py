"""Users query the market with DP specs of their private tasks and fetch what it offers.

Each user makes one spec per kind at ``user_epsilon`` and asks the market to rank every
learnware (the full ranking feeds the similarity heatmap; the first is the market's pick).
The identification sweep repeats the query at each epsilon of ``sweep_epsilons``. The DP
noise is drawn from seeds derived from the simulation's seed, so a rerun reproduces the same
releases; a real user leaves ``noise_seed`` unset.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.simulate.data import UserData
from shared.privacy import PrivacyBudget


@dataclass(frozen=True)
class Query:
    """One user's search for one kind at one epsilon: scores of every listed learnware."""

    user: str
    kind: str
    epsilon: float
    scores: dict[str, float]  # contributor -> market score (higher is closer)
    pick: str  # the market's first contributor
    correct: bool
    spec_seconds: float
    search_seconds: float


@dataclass
class Searches:
    main: list[Query] = field(default_factory=list)  # at user_epsilon
    sweep: list[Query] = field(default_factory=list)  # every sweep epsilon

    def pick(self, user: str, kind: str) -> str:
        return next(q.pick for q in self.main if q.user == user and q.kind == kind)


def noise_seed(seed: int, *parts: object) -> int:
    return zlib.crc32(repr((seed, *parts)).encode()) + seed


def search(
    client: Any,
    maker: Any,
    user: UserData,
    kind: str,
    epsilon: float,
    contributor_of: dict[str, str],
    seed: int,
) -> Query:
    """Make the user's DP spec locally and ask the market to rank every learnware."""
    import time

    started = time.perf_counter()
    spec = maker.make(
        user.spec_texts(),
        kind,
        PrivacyBudget(epsilon),
        noise_seed=noise_seed(seed, user.name, kind, epsilon),
    )
    made = time.perf_counter()
    results = client.search(spec, top_k=len(contributor_of))
    searched = time.perf_counter()
    scores = {contributor_of[r.learnware.id]: float(r.score) for r in results}
    pick = contributor_of[results[0].learnware.id]
    return Query(
        user=user.name,
        kind=kind,
        epsilon=epsilon,
        scores=scores,
        pick=pick,
        correct=pick in user.right,
        spec_seconds=made - started,
        search_seconds=searched - made,
    )


def fetch_all(conn: Any, ids: Sequence[str], folder: Path, home: Any) -> dict[str, Path]:
    """Download and verify every learnware once; a folder from an earlier run is re-checked."""
    from client.user import fetch_learnware
    from shared.errors import IntegrityError
    from shared.learnware import verify_package

    folders: dict[str, Path] = {}
    for learnware_id in ids:
        target = folder / learnware_id
        if target.is_dir():
            try:
                verify_package(target, None)
                folders[learnware_id] = target
                continue
            except IntegrityError:
                import shutil

                shutil.rmtree(target)
        folders[learnware_id] = fetch_learnware(conn, learnware_id, target, home=home).path
    return folders
