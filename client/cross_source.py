"""Does a user whose texts come from another source than the holder's find that holder?

The experiment behind ``benchmarks/bench_cross_source.py`` and the real-corpus test. Per
cross-source domain (``shared.data.cross``): one holder spec of the holder source's texts
and, per user, a spec of texts drawn from the user source; every user spec ranks all
holder specs. Results are kept as distances (``[user, user's domain, holder]``) so top-k,
rank fusion and the search confidence are all computed from the same draws.

RKME sentence embeddings are computed once per text pool (and cached on disk by the
encoder), so a spec of 1,000 texts costs one random-feature map and one noise draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from client.specs import SpecMaker
from shared.privacy import PrivacyBudget
from shared.spec.ranking import distances, row_terms, to_index_matrix, to_index_point
from shared.spec.record import Specification


@dataclass(frozen=True)
class CrossSplit:
    """A domain's holder texts and the pool its users draw their texts from."""

    domain: str
    holder: tuple[str, ...]
    pool: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    """One setting: ``distances[t, u, h]`` from user ``t`` of domain ``u`` to holder ``h``."""

    kind: str
    epsilon: float | None
    n_texts: int
    distances: np.ndarray

    def top_k(self, k: int) -> float:
        return top_k_accuracy(self.distances, k)


def top_k_accuracy(dist: np.ndarray, k: int) -> float:
    """Share of (user, domain) rows whose own holder (the diagonal) is among the ``k``
    nearest; a tie counts against it (another holder just as near beats it)."""
    own = np.diagonal(dist, axis1=1, axis2=2)[..., None]
    at_least_as_close = (dist <= own).sum(axis=2) - 1  # not counting the own holder
    return float((at_least_as_close < k).mean())


def cross_splits(
    domains: Sequence[str], holder_n: int, pool_n: int, seed: int = 0
) -> list[CrossSplit]:
    """Per domain a seeded sample of ``holder_n`` holder texts and of ``pool_n`` user texts
    (all of a source when it has fewer)."""
    from shared.data.cross import load_cross

    splits = []
    for d_i, domain in enumerate(domains):
        texts = load_cross(domain)
        rng = np.random.default_rng(seed + 1000 * d_i)
        splits.append(
            CrossSplit(
                domain, _sample(texts.holder, holder_n, rng), _sample(texts.user, pool_n, rng)
            )
        )
    return splits


def _sample(texts: Sequence[str], n: int, rng: np.random.Generator) -> tuple[str, ...]:
    order = rng.permutation(len(texts))[: min(n, len(texts))]
    return tuple(texts[i] for i in sorted(order))


def user_draws(pool_size: int, n_texts: int, users: int, seed: int) -> list[np.ndarray]:
    """``users`` seeded index sets of ``min(n_texts, pool_size)`` pool texts each (the
    whole pool, for every user, when it is smaller: then only the DP noise differs)."""
    rng = np.random.default_rng(seed)
    n = min(n_texts, pool_size)
    return [np.sort(rng.choice(pool_size, size=n, replace=False)) for _ in range(users)]


@dataclass
class CrossRunner:
    """Makes the specs of every setting for one set of splits; embeddings are made once."""

    maker: SpecMaker
    splits: Sequence[CrossSplit]
    users: int
    seed: int = 0
    bar: Any = None
    _embedded: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def cell(self, kind: str, epsilon: float | None, n_texts: int) -> Cell:
        budget = PrivacyBudget(epsilon)
        holders = [
            self._spec(kind, s.domain, "holder", None, budget, self.seed + i)
            for i, s in enumerate(self.splits)
        ]
        matrix, offsets = to_index_matrix(holders)
        rows = row_terms(matrix, offsets)
        out = np.zeros((self.users, len(self.splits), len(self.splits)), dtype=np.float64)
        for u, split in enumerate(self.splits):
            draws = user_draws(len(split.pool), n_texts, self.users, self.seed + 31 * u + n_texts)
            for t, idx in enumerate(draws):
                noise_seed = self.seed + 7919 * (t + 1) + 104729 * (u + 1) + n_texts
                user = self._spec(kind, split.domain, "user", idx, budget, noise_seed)
                out[t, u] = distances(to_index_point(user), matrix, rows)
        return Cell(kind, epsilon, n_texts, out)

    def pool_sizes(self) -> dict[str, int]:
        return {s.domain: len(s.pool) for s in self.splits}

    def _spec(
        self,
        kind: str,
        domain: str,
        side: str,
        idx: np.ndarray | None,
        budget: PrivacyBudget,
        noise_seed: int,
    ) -> Specification:
        split = next(s for s in self.splits if s.domain == domain)
        if kind == "rkme":
            from shared.spec.rkme import make_rkme_spec

            holder, pool = self._embeddings(split)
            rows = holder if side == "holder" else pool[idx]
            schema = self.maker.schema.for_kind("rkme")
            spec = make_rkme_spec(rows, schema, budget, np.random.default_rng(noise_seed))  # type: ignore[arg-type]
        else:
            texts = split.holder if side == "holder" else [split.pool[i] for i in idx]  # type: ignore[union-attr]
            spec = self.maker.make(texts, kind, budget, noise_seed=noise_seed)
        if self.bar is not None:
            self.bar.update(1)
        return spec

    def _embeddings(self, split: CrossSplit) -> tuple[np.ndarray, np.ndarray]:
        if self._embedded is None:
            self._embedded = {}
        if split.domain not in self._embedded:
            self._embedded[split.domain] = (
                self.maker.embed(split.holder, progress=self.bar is not None),
                self.maker.embed(split.pool, progress=self.bar is not None),
            )
        return self._embedded[split.domain]
