"""Does a user's spec find the holder of its own domain? The experiment behind the
identification benchmark and the real-data test (the simulation queries a real market).

For each domain, a holder spec is made of one set of texts and user specs of disjoint,
held-out texts; each user spec ranks all holder specs and the top-1 is right when it is its
own domain. Texts never leave this process; only specs are compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client.specs import SpecMaker
from shared.privacy import PrivacyBudget
from shared.spec.ranking import rank
from shared.spec.record import Specification

DEMO_DOMAINS = (
    "medicine",
    "finance",
    "math",
    "law/licenses",
    "law/constitution",
    "literature",
    "quotes",
    "software",
)


@dataclass(frozen=True)
class DomainSplit:
    domain: str
    holder: list[str]
    users: list[list[str]]  # one held-out text set per trial


@dataclass
class IdentificationResult:
    kind: str
    epsilon: float | None
    domains: list[str]
    correct: int = 0
    trials: int = 0
    #: scores[t][u][h]: trial t, user domain u, holder domain h (higher is closer)
    scores: list[list[list[float]]] = field(default_factory=list)
    seconds_per_spec: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.trials if self.trials else float("nan")

    def mean_scores(self) -> np.ndarray:
        return np.asarray(self.scores).mean(axis=0)


def split_domains(
    domains: Sequence[str], holder_n: int, user_n: int, trials: int, seed: int = 0
) -> list[DomainSplit]:
    """Per domain: a holder set and ``trials`` user sets, all disjoint from the holder's."""
    from shared.data.corpora import load_domain

    splits = []
    for d_i, domain in enumerate(domains):
        texts = load_domain(domain)
        rng = np.random.default_rng(seed + 1000 * d_i)
        order = rng.permutation(len(texts))
        holder = [texts[i] for i in order[:holder_n]]
        rest = order[holder_n:]
        if len(rest) < user_n:
            from shared.errors import DataError

            raise DataError(f"domain {domain} has {len(texts)} texts, needs {holder_n + user_n}")
        users = [
            [texts[i] for i in rng.choice(rest, size=user_n, replace=False)] for _ in range(trials)
        ]
        splits.append(DomainSplit(domain, holder, users))
    return splits


def identify(
    maker: SpecMaker,
    splits: Sequence[DomainSplit],
    kind: str,
    epsilon: float | None,
    seed: int = 0,
    progress: bool = False,
) -> IdentificationResult:
    """Run the experiment for one kind and epsilon; ``seed`` fixes the DP noise draws."""
    import time

    budget = PrivacyBudget(epsilon)
    domains = [s.domain for s in splits]
    result = IdentificationResult(kind, epsilon, domains)
    trials = len(splits[0].users)
    bar = _bar(len(splits) * (1 + trials), f"{kind} eps={epsilon}", progress)
    started = time.perf_counter()
    holders: list[Specification] = []
    for i, split in enumerate(splits):
        holders.append(maker.make(split.holder, kind, budget, noise_seed=seed + i))
        _tick(bar)
    for t in range(trials):
        matrix = []
        for u, split in enumerate(splits):
            user = maker.make(split.users[t], kind, budget, noise_seed=seed + 7919 * (t + 1) + u)
            ranked = rank(user, holders)
            row = [0.0] * len(holders)
            for r in ranked:
                row[r.position] = r.score
            matrix.append(row)
            result.correct += int(ranked[0].position == u)
            result.trials += 1
            _tick(bar)
        result.scores.append(matrix)
    if bar is not None:
        bar.close()
    result.seconds_per_spec = (time.perf_counter() - started) / (len(splits) * (1 + trials))
    return result


def _bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="spec")


def _tick(bar: Any) -> None:
    if bar is not None:
        bar.update(1)
