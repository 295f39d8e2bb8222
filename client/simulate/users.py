"""Users query the market with DP specs of their private tasks and fetch what it offers.

They take the public path a real user takes: ``private_search`` (the spec is made here, only
it is sent) and ``fetch_learnware`` (signature, hashes and base model checked once).
Each user makes one spec per kind at ``user_epsilon`` and asks the market to rank every
learnware (the full ranking feeds the similarity heatmap; the first is the market's pick).
The identification sweep repeats the query at each epsilon of ``sweep_epsilons``. The DP
noise is drawn from seeds derived from the simulation's seed, so a rerun reproduces the same
releases; a real user leaves ``noise_seed`` unset.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from client.market import MarketClient
from client.simulate.data import UserData
from client.specs import SpecMaker
from client.user import VerifiedLearnware, check_folder, fetch_learnware, private_search
from shared.errors import IntegrityError
from shared.home import Home


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
    client: MarketClient,
    maker: SpecMaker,
    user: UserData,
    kind: str,
    epsilon: float,
    contributor_of: dict[str, str],
    seed: int,
) -> Query:
    """``private_search`` as a real user runs it, asking for the full ranking."""
    outcome = private_search(
        user.spec_texts(),
        client,
        kind=kind,
        epsilon=epsilon,
        top_k=len(contributor_of),
        maker=maker,
        noise_seed=noise_seed(seed, user.name, kind, epsilon),
        ledger=False,  # public demo texts, searched again on purpose at every epsilon
    )
    scores = {contributor_of[m.id]: m.score for m in outcome.matches}
    pick = contributor_of[outcome.matches[0].id]
    return Query(
        user=user.name,
        kind=kind,
        epsilon=epsilon,
        scores=scores,
        pick=pick,
        correct=pick in user.right,
        spec_seconds=outcome.spec_seconds,
        search_seconds=outcome.network_seconds,
    )


def fetch_all(
    client: MarketClient, ids: Sequence[str], folder: Path, home: Home
) -> dict[str, VerifiedLearnware]:
    """Fetch and verify every learnware once; a folder from an earlier run is re-checked
    (and fetched again if it no longer checks out)."""
    fetched: dict[str, VerifiedLearnware] = {}
    for learnware_id in ids:
        target = folder / learnware_id
        if target.is_dir():
            try:
                fetched[learnware_id] = check_folder(target, home=home)
                continue
            except IntegrityError:
                shutil.rmtree(target)
        fetched[learnware_id] = fetch_learnware(client, learnware_id, target, home=home)
    return fetched
