"""One search over the market's spec indexes: one kind, or several kinds fused.

A request carries the user's spec of one kind and may carry specs of other kinds of the
same data (``SearchRequest.more_specs``). ``ranking`` says how to rank: a kind alone, or a
rank fusion of every kind sent (``shared.spec.fusion``); empty means the market's default,
``DEFAULT_RANKING``, the one that won on the cross-source benchmark (README). Every answer
carries the search's confidence (``shared.spec.confidence``), computed over the nearest
``CONFIDENCE_DEPTH`` candidates, however few the caller asked for.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from server.index import Hit, SpecIndex
from shared.errors import InvalidInput
from shared.spec.confidence import CONFIDENCE_DEPTH, Confidence, confidence
from shared.spec.fusion import DEFAULT_RANKING, FUSIONS, fuse
from shared.spec.ranking import to_index_point
from shared.spec.record import Specification

FUSION_DEPTH = 100
"""Candidates each kind contributes to a fusion; one outside a kind's list counts as
lacking that kind's spec (``shared.spec.fusion``)."""


@dataclass(frozen=True)
class Ranking:
    """The learnware ids nearest first with their distances, how they were ranked, and the
    search's confidence (None with fewer than two candidates)."""

    hits: list[Hit]
    method: str
    confidence: Confidence | None


def queries_by_kind(specs: Sequence[Specification]) -> dict[str, Specification]:
    """The request's specs by kind; InvalidInput when a kind comes twice."""
    out: dict[str, Specification] = {}
    for spec in specs:
        if spec.kind in out:
            raise InvalidInput(f"the search carries two {spec.kind} specs; send one per kind")
        out[spec.kind] = spec
    return out


def method_of(ranking: str, queries: Mapping[str, Specification], first: str) -> str:
    """The ranking a request gets: its own choice, else the default when it fits the specs
    sent, else the first spec's kind alone."""
    chosen = ranking or DEFAULT_RANKING
    if chosen in FUSIONS:
        return chosen if len(queries) > 1 else first
    if chosen in queries:
        return chosen
    if ranking:
        known = ", ".join([*queries, *FUSIONS])
        raise InvalidInput(f"ranking {ranking!r} needs a spec of that kind; use one of {known}")
    return first


def rank_search(
    indexes: Mapping[str, SpecIndex],
    queries: Mapping[str, Specification],
    method: str,
    k: int,
    allowed: Collection[str] | None,
    hidden: Collection[str],
) -> Ranking:
    """The ``k`` nearest learnwares under ``method`` (a kind or a fusion)."""
    depth = max(k, CONFIDENCE_DEPTH)
    if method in FUSIONS:
        depth = max(depth, FUSION_DEPTH)
    lists = {
        kind: indexes[kind].search_point(to_index_point(q), depth, allowed, hidden)
        for kind, q in queries.items()
        if method in FUSIONS or kind == method
    }
    hits = lists[method] if method in lists else _fused(lists, method)
    found = confidence([h.distance for h in hits[:CONFIDENCE_DEPTH]], method)
    return Ranking(hits[:k], method, found)


def _fused(lists: Mapping[str, list[Hit]], method: str) -> list[Hit]:
    keys = list(dict.fromkeys(h.key for hits in lists.values() for h in hits))
    column = {key: i for i, key in enumerate(keys)}
    table = np.full((len(lists), len(keys)), np.nan)
    for row, hits in enumerate(lists.values()):
        for h in hits:
            table[row, column[h.key]] = h.distance
    fused = fuse(list(table), method)
    order = np.argsort(fused, kind="stable")
    return [Hit(keys[i], float(fused[i]), float(-fused[i])) for i in order]
