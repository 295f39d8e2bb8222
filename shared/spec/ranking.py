"""Distances between specs, one place for both kinds, vectorised.

Both kinds are mapped into an "index space" where the distance the market ranks by is

    d(q, c) = ||q' - c'||² + offset(q) + offset(c)

- PAVE: q' = q/||q||, offset 0, so d = 2 - 2·cos(q, c) (the paper's cosine similarity);
- RKME: q' = q (the noisy mean embedding), offset = -E||noise||², so d is the squared MMD
  with the DP noise bias removed: small, noisy holders are not pushed down the ranking.

Scores are ``1 - d/2``: the cosine for PAVE, ``1 - MMD²/2`` for RKME; higher is better.
The exact search is one matrix-vector product over all candidates; ``server.index`` builds
its exact and approximate indexes on the same mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.errors import SchemaMismatch, SpecError
from shared.spec.record import Specification


@dataclass(frozen=True)
class IndexPoint:
    """A spec in index space: unit-free vector plus its additive distance offset."""

    vector: np.ndarray
    offset: float


@dataclass(frozen=True)
class Ranked:
    """One ranked candidate: position in the input, distance (lower is closer), score."""

    position: int
    distance: float
    score: float


def to_index_point(spec: Specification) -> IndexPoint:
    if spec.kind == "pave":
        norm = float(np.linalg.norm(spec.vector))
        vector = spec.vector / norm if norm > 0 else spec.vector.copy()
        return IndexPoint(vector.astype(np.float32), 0.0)
    if spec.kind == "rkme":
        return IndexPoint(spec.vector.astype(np.float32), -spec.expected_noise_sq_norm)
    raise SpecError(f"no distance is defined for spec kind {spec.kind!r}")


def to_index_matrix(specs: Sequence[Specification]) -> tuple[np.ndarray, np.ndarray]:
    """Stack specs into (M, d) float32 vectors and (M,) float32 offsets."""
    points = [to_index_point(s) for s in specs]
    matrix = np.stack([p.vector for p in points]).astype(np.float32)
    offsets = np.array([p.offset for p in points], dtype=np.float32)
    return matrix, offsets


def row_terms(matrix: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The per-candidate part of the distance, ||c'||² + offset(c), precomputed once."""
    return np.einsum("ij,ij->i", matrix, matrix) + offsets


def distances(query: IndexPoint, matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """d(q, c) for every row of ``matrix``, given its precomputed ``row_terms``."""
    q = query.vector.astype(np.float32)
    return rows - 2.0 * (matrix @ q) + (float(q @ q) + query.offset)


def score_of(distance: float) -> float:
    return 1.0 - distance / 2.0


def check_comparable(query: Specification, candidates: Sequence[Specification]) -> None:
    for i, cand in enumerate(candidates):
        if cand.kind != query.kind or cand.schema_id != query.schema_id:
            raise SchemaMismatch(
                f"candidate {i} is a {cand.kind} spec of schema {cand.schema_id}; the query is "
                f"a {query.kind} spec of schema {query.schema_id}: specs of different schemas "
                "cannot be compared"
            )
        if cand.dim != query.dim:
            raise SpecError(f"candidate {i} has {cand.dim} entries, the query has {query.dim}")


def rank(
    query: Specification, candidates: Sequence[Specification], top_k: int | None = None
) -> list[Ranked]:
    """Rank ``candidates`` by distance to ``query``, best first (exact)."""
    if not candidates:
        return []
    check_comparable(query, candidates)
    matrix, offsets = to_index_matrix(candidates)
    d = distances(to_index_point(query), matrix, row_terms(matrix, offsets))
    order = np.argsort(d, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [Ranked(int(i), float(d[i]), score_of(float(d[i]))) for i in order]
