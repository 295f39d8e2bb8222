"""The local check before reuse, as every simulated user would run it (``lwm reuse``).

Per user and spec kind: the market's top ``Users.check_top_k`` for that kind's search, the
base model and the merge of the top (``client.reuse.merge_adapters``) are scored on the
user's check records (``UserData.check_user``: records after the scored ones), and
``client.reuse.choose`` picks, exactly as ``lwm reuse --merge`` does. The pick and the
merge are then judged on the scored records beside the other contenders
(``client.simulate.contenders``). Every score goes through the run's ``ScoreCache``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from client.reuse import BASE, MERGED, Candidate, choose
from client.simulate.evaluation import (
    Learnwares,
    ScoreCache,
    Scoring,
    evaluate_all,
    evaluate_merged,
)

if TYPE_CHECKING:
    from client.evaluate import Evaluation
    from client.simulate.data import UserData
    from client.user import VerifiedLearnware
    from shared.home import Home


@dataclass(frozen=True)
class Reused:
    """One user's local check for one kind: its ``pick`` (``base``, a contributor or
    ``merged``) and the top it chose from; nll of the pick and of the merge on the scored
    records (the merge is None when the top holds one learnware)."""

    pick: str
    top: tuple[str, ...]
    nll: float
    merged_nll: float | None


@dataclass(frozen=True)
class CheckRun:
    """What every check of a run shares: the fetched learnwares (loaded once), their cache
    keys (``"base"`` and each contributor), the scoring options and the cache."""

    learnwares: Mapping[str, VerifiedLearnware]
    model_keys: Mapping[str, str]
    scoring: Scoring
    cache: ScoreCache
    loaded: Learnwares
    home: Home

    def scores(self, user: UserData, names: Sequence[str]) -> dict[str, Evaluation]:
        keys = {name: self.model_keys[name] for name in (BASE, *names)}
        done = evaluate_all(
            [user], self.learnwares, keys, self.scoring, self.cache, self.home, loaded=self.loaded
        )
        return {s.model: s.evaluation for s in done}

    def merged(self, user: UserData, top: Sequence[str]) -> Evaluation:
        key = "merge:" + "+".join(self.model_keys[name] for name in top)
        return evaluate_merged(user, top, key, self.loaded, self.scoring, self.cache)


def check_user(
    run: CheckRun,
    user: UserData,
    ranking: Mapping[str, float],
    top_k: int,
    nll: Mapping[str, float],
) -> Reused:
    """The check for ``user`` given the market's ``ranking`` (contributor -> score, higher
    closer) and the user's ``nll`` on the scored records (``base`` and every contributor)."""
    top = tuple(sorted(ranking, key=lambda name: -ranking[name])[:top_k])
    checking = user.check_user()
    scored = run.scores(checking, top)
    candidates = [Candidate(BASE, BASE, (), (), 0, scored[BASE])]
    candidates += [Candidate(n, n, (n,), (1.0,), i, scored[n]) for i, n in enumerate(top, 1)]
    merged_nll = None
    if len(top) > 1:
        weights = tuple(1.0 / len(top) for _ in top)
        candidates.append(Candidate(MERGED, MERGED, top, weights, 0, run.merged(checking, top)))
        merged_nll = math.log(run.merged(user, top).perplexity)
    pick = choose(candidates).name
    picked = merged_nll if pick == MERGED else nll[pick]
    assert picked is not None
    return Reused(pick, top, picked, merged_nll)
