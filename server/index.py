"""The market's spec index: exact while it fits, approximate (faiss IVF) beyond.

One ``SpecIndex`` per (kind, schema id). Specs are mapped to index space by
``shared.spec.ranking`` (one place for the maths), so the index only ever computes
``d = rows - 2·C·q + const`` over a float32 matrix:

- exact: one matrix-vector product over all rows (10k x 512 in ~1 ms on 2 cores);
- approximate (from ``approx_min_rows`` rows): the RKME offset is folded into an extra
  coordinate (c' = [c, sqrt(B + offset)], q' = [q, 0], so ||q'-c'||² = d + const and the
  problem is plain L2), a seeded Gaussian projection to ``projection_dim`` dimensions
  shrinks it, faiss' IVF picks ``rerank`` candidates and those are re-ranked exactly.

Filters (domain, status, ...) arrive as a set of allowed keys; the approximate path
over-fetches and falls back to an exact scan of the allowed rows when too few survive.
Thread safety: a readers-writer lock. Searches run in parallel (numpy and faiss release
the GIL, so two cores serve two searches at once); adds and removals are exclusive.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from shared.errors import SchemaMismatch, SpecError
from shared.spec.ranking import IndexPoint, distances, row_terms, score_of, to_index_point
from shared.spec.record import Specification


@dataclass(frozen=True)
class IndexConfig:
    approx_min_rows: int = 100_000
    projection_dim: int | None = 64  # None: IVF over the full augmented vectors
    nlist: int | None = None  # default: ~4·sqrt(rows)
    nprobe: int = 24
    rerank: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        projection = 1 if self.projection_dim is None else self.projection_dim
        if min(self.approx_min_rows, projection, self.nprobe, self.rerank) < 1:
            raise ValueError(f"index settings must be positive: {self}")


@dataclass(frozen=True)
class Hit:
    key: str
    distance: float
    score: float


class SpecIndex:
    """Nearest specs of one kind and schema. Keys are learnware ids."""

    def __init__(
        self, kind: str, schema_id: str, dim: int, config: IndexConfig | None = None
    ) -> None:
        self.kind, self.schema_id, self.dim = kind, schema_id, dim
        self.config = config or IndexConfig()
        self._lock = _ReadWriteLock()
        # Row storage grows by doubling: appends are amortised O(d), not a copy of all rows.
        self._buf = np.zeros((0, dim), dtype=np.float32)
        self._obuf = np.zeros(0, dtype=np.float32)
        self._tbuf = np.zeros(0, dtype=np.float32)  # ||c'||² + offset(c), the per-row term
        self._keys: list[str] = []
        self._rows: dict[str, int] = {}
        self._approx: _ApproxIndex | None = None

    @property
    def _matrix(self) -> np.ndarray:
        return self._buf[: len(self._keys)]

    @property
    def _offsets(self) -> np.ndarray:
        return self._obuf[: len(self._keys)]

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    @property
    def is_approximate(self) -> bool:
        return self._approx is not None

    def add(self, key: str, spec: Specification) -> None:
        self.add_many([(key, spec)])

    def add_many(self, items: Iterable[tuple[str, Specification]]) -> None:
        points = []
        keys = []
        for key, spec in items:
            self._check(spec)
            keys.append(key)
            points.append(to_index_point(spec))
        if points:
            vectors = np.stack([p.vector for p in points]).astype(np.float32)
            offsets = np.array([p.offset for p in points], dtype=np.float32)
            self.add_points(keys, vectors, offsets)

    def add_points(self, keys: list[str], vectors: np.ndarray, offsets: np.ndarray) -> None:
        """Add already-mapped index points (bulk loads and benchmarks)."""
        with self._lock.writing():
            for key in keys:
                if key in self._rows:
                    self._remove_locked(key)
            start = len(self._keys)
            self._reserve(start + len(keys))
            self._buf[start : start + len(keys)] = vectors
            self._obuf[start : start + len(keys)] = offsets
            self._tbuf[start : start + len(keys)] = row_terms(vectors.astype(np.float32), offsets)
            for i, key in enumerate(keys):
                self._rows[key] = start + i
            self._keys.extend(keys)
            self._sync_approx(added=range(start, start + len(keys)))

    def remove(self, key: str) -> bool:
        with self._lock.writing():
            if key not in self._rows:
                return False
            self._remove_locked(key)
            if len(self._keys) < self.config.approx_min_rows:
                self._approx = None
            return True

    @contextmanager
    def arrays(self) -> Iterator[dict[str, np.ndarray]]:
        """The index as plain arrays (``server.snapshots`` writes them): keys, rows and the
        approximate index, if any, with its trained state, so a restore needs no training.
        The rows are views, not copies (gigabytes at a million), valid inside the block;
        adds and removals wait until it ends."""
        with self._lock.reading():
            arrays = {
                "keys": np.array(self._keys, dtype=np.str_),
                "vectors": self._matrix,
                "offsets": self._offsets,
            }
            if self._approx is not None:
                arrays.update(self._approx.to_arrays())
            yield arrays

    @classmethod
    def from_arrays(
        cls, kind: str, schema_id: str, dim: int, config: IndexConfig, arrays: dict[str, np.ndarray]
    ) -> SpecIndex:
        """The index ``arrays`` gave; SpecError when the arrays do not fit together."""
        keys = [str(key) for key in arrays["keys"].tolist()]
        vectors = np.asarray(arrays["vectors"], dtype=np.float32)
        offsets = np.asarray(arrays["offsets"], dtype=np.float32)
        if vectors.shape != (len(keys), dim) or offsets.shape != (len(keys),):
            raise SpecError(f"index arrays of shapes {vectors.shape}, {offsets.shape}")
        if len(set(keys)) != len(keys) or not np.all(np.isfinite(vectors)):
            raise SpecError("index arrays hold a key twice or a non-finite entry")
        index = cls(kind, schema_id, dim, config)
        # The arrays become the row storage as they are (a copy would double the memory
        # of a start at a million rows); the first add grows them as usual.
        index._buf, index._obuf = np.ascontiguousarray(vectors), np.ascontiguousarray(offsets)
        index._tbuf = row_terms(index._buf, index._obuf)
        index._keys, index._rows = keys, {key: row for row, key in enumerate(keys)}
        if "faiss" in arrays:
            index._approx = _ApproxIndex.from_arrays(config, arrays, len(keys), dim)
        elif len(keys) >= config.approx_min_rows:
            index._sync_approx(added=range(len(keys)))
        return index

    def search(
        self, spec: Specification, k: int, allowed: Collection[str] | None = None
    ) -> list[Hit]:
        self._check(spec)
        return self.search_point(to_index_point(spec), k, allowed)

    def search_point(
        self,
        query: IndexPoint,
        k: int,
        allowed: Collection[str] | None = None,
        excluded: Collection[str] = (),
    ) -> list[Hit]:
        """The ``k`` nearest of the ``allowed`` keys (all if ``None``) that are not
        ``excluded`` (the market's superseded versions): exact either way, never fewer
        than ``k`` because some were left out."""
        if k < 1:
            raise SpecError(f"top-k must be >= 1, got {k}")
        with self._lock.reading():
            if not self._keys:
                return []
            if self._approx is not None:
                hits = self._search_approx(query, k, allowed, excluded)
                if hits is not None:
                    return hits
            if allowed is None and excluded:
                return self._search_exact(query, k, None, self._rows_of(excluded))
            if excluded:
                allowed = [key for key in allowed or () if key not in excluded]
            return self._search_exact(query, k, self._allowed_rows(allowed))

    def search_exact(self, query: IndexPoint, k: int) -> list[Hit]:
        """Exact search even when an approximate index exists (benchmarks, recall checks)."""
        with self._lock.reading():
            return self._search_exact(query, k, None)

    # -- internals -------------------------------------------------------------------
    def _check(self, spec: Specification) -> None:
        if spec.kind != self.kind or spec.schema_id != self.schema_id:
            raise SchemaMismatch(
                f"a {spec.kind} spec of schema {spec.schema_id} cannot go in the index of "
                f"{self.kind} schema {self.schema_id}"
            )
        if spec.dim != self.dim:
            raise SpecError(f"spec has {spec.dim} entries, the index holds {self.dim}")

    def _reserve(self, rows: int) -> None:
        if rows <= self._buf.shape[0]:
            return
        capacity = max(rows, 2 * self._buf.shape[0], 1024)
        buf = np.zeros((capacity, self.dim), dtype=np.float32)
        obuf = np.zeros(capacity, dtype=np.float32)
        tbuf = np.zeros(capacity, dtype=np.float32)
        rows = len(self._keys)
        buf[:rows], obuf[:rows], tbuf[:rows] = (
            self._buf[:rows],
            self._obuf[:rows],
            self._tbuf[:rows],
        )
        self._buf, self._obuf, self._tbuf = buf, obuf, tbuf

    def _remove_locked(self, key: str) -> None:
        row = self._rows.pop(key)
        last = len(self._keys) - 1
        if self._approx is not None:
            self._approx.remove([row, last])
        if row != last:  # move the last row into the hole: O(d), rows stay dense
            moved = self._keys[last]
            self._buf[row] = self._buf[last]
            self._obuf[row] = self._obuf[last]
            self._tbuf[row] = self._tbuf[last]
            self._keys[row] = moved
            self._rows[moved] = row
            if self._approx is not None:
                self._approx.extend(self._buf[row : row + 1], self._obuf[row : row + 1], row)
        self._keys.pop()

    def _sync_approx(self, added: range) -> None:
        rows = len(self._keys)
        if rows < self.config.approx_min_rows:
            self._approx = None
        elif self._approx is None or not self._approx.can_extend(self._offsets[added]):
            self._approx = _ApproxIndex(self._matrix, self._offsets, self.config)
        elif len(added):
            self._approx.extend(self._matrix[added], self._offsets[added], added.start)

    def _allowed_rows(self, allowed: Collection[str] | None) -> np.ndarray | None:
        if allowed is None:
            return None
        return np.array(sorted(self._rows[k] for k in allowed if k in self._rows), dtype=np.int64)

    def _distances(self, query: IndexPoint, rows: np.ndarray | None) -> np.ndarray:
        n = len(self._keys)
        matrix = self._buf[:n] if rows is None else self._buf[rows]
        terms = self._tbuf[:n] if rows is None else self._tbuf[rows]
        return distances(query, matrix, terms)

    def _rows_of(self, keys: Collection[str]) -> np.ndarray:
        return np.fromiter((self._rows[k] for k in keys if k in self._rows), dtype=np.int64)

    def _search_exact(
        self,
        query: IndexPoint,
        k: int,
        rows: np.ndarray | None,
        skip_rows: np.ndarray | None = None,
    ) -> list[Hit]:
        """Exact top ``k`` over ``rows`` (all if ``None``) but ``skip_rows`` (with all)."""
        d = self._distances(query, rows)
        if skip_rows is not None and skip_rows.size:
            d[skip_rows] = np.inf
            k = min(k, d.size - skip_rows.size)
        if d.size == 0 or k < 1:
            return []
        top = np.argpartition(d, k - 1)[:k] if k < d.size else np.arange(d.size)
        top = top[np.argsort(d[top], kind="stable")]
        row_ids = top if rows is None else rows[top]
        return [
            Hit(self._keys[r], float(d[i]), score_of(float(d[i])))
            for r, i in zip(row_ids, top, strict=True)
        ]

    def _search_approx(
        self, query: IndexPoint, k: int, allowed: Collection[str] | None, excluded: Collection[str]
    ) -> list[Hit] | None:
        assert self._approx is not None
        want = max(self.config.rerank, 4 * k)
        candidates = self._approx.candidates(query, want)
        if allowed is not None or excluded:
            candidates = np.array(
                [
                    r
                    for r in candidates
                    if (allowed is None or self._keys[r] in allowed)
                    and self._keys[r] not in excluded
                ],
                dtype=np.int64,
            )
            if len(candidates) < k:
                return None  # too few survive the filter: exact scan of the allowed rows
        if len(candidates) == 0:
            return None
        return self._search_exact(query, k, np.sort(candidates))


class _ApproxIndex:
    """faiss IVF-Flat over a random projection of the offset-augmented vectors."""

    def __init__(self, matrix: np.ndarray, offsets: np.ndarray, config: IndexConfig) -> None:
        import faiss

        rows, dim = matrix.shape
        self.config = config
        self.ceiling = float(max(0.0, -float(offsets.min()))) if rows else 0.0
        rng = np.random.default_rng(config.seed)
        self.projection = _projection(rng, dim, config)
        out = dim + 1 if self.projection is None else self.projection.shape[1]
        nlist = config.nlist or max(1, min(int(4 * np.sqrt(rows)), rows // 40))
        quantizer = faiss.IndexFlatL2(out)
        self.index = faiss.IndexIVFFlat(quantizer, out, nlist, faiss.METRIC_L2)
        projected = self._project(matrix, offsets)
        sample = projected[rng.choice(rows, size=min(rows, 64 * nlist), replace=False)]
        self.index.train(sample)
        self.index.add_with_ids(projected, np.arange(rows, dtype=np.int64))
        self.index.nprobe = config.nprobe
        self._quantizer = quantizer  # faiss does not own it from Python: keep it alive

    def to_arrays(self) -> dict[str, np.ndarray]:
        import faiss

        return {"faiss": faiss.serialize_index(self.index), "ceiling": np.array([self.ceiling])}

    @classmethod
    def from_arrays(
        cls, config: IndexConfig, arrays: dict[str, np.ndarray], rows: int, dim: int
    ) -> _ApproxIndex:
        """The trained index ``to_arrays`` gave (its projection is the seed's again)."""
        import faiss

        approx = cls.__new__(cls)
        approx.config = config
        approx.ceiling = float(arrays["ceiling"][0])
        approx.projection = _projection(np.random.default_rng(config.seed), dim, config)
        try:
            approx.index = faiss.deserialize_index(arrays["faiss"])  # type: ignore[assignment]
        except RuntimeError as error:
            raise SpecError(f"not a faiss index: {error}") from None
        out = dim + 1 if approx.projection is None else approx.projection.shape[1]
        if approx.index.ntotal != rows or approx.index.d != out:
            raise SpecError(f"a faiss index of {approx.index.ntotal} rows of {approx.index.d}")
        approx.index.nprobe = config.nprobe
        return approx

    def _project(self, matrix: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        extra = np.sqrt(np.maximum(self.ceiling + offsets, 0.0)).astype(np.float32)
        augmented = np.hstack([matrix, extra[:, None]])
        projected = augmented if self.projection is None else augmented @ self.projection
        return np.ascontiguousarray(projected, dtype=np.float32)

    def can_extend(self, offsets: np.ndarray) -> bool:
        return offsets.size == 0 or float(-offsets.min()) <= self.ceiling

    def extend(self, matrix: np.ndarray, offsets: np.ndarray, first_row: int) -> None:
        ids = np.arange(first_row, first_row + matrix.shape[0], dtype=np.int64)
        self.index.add_with_ids(self._project(matrix, offsets), ids)

    def remove(self, rows: list[int]) -> None:
        self.index.remove_ids(np.array(sorted(set(rows)), dtype=np.int64))  # type: ignore[arg-type]

    def candidates(self, query: IndexPoint, want: int) -> np.ndarray:
        q = np.append(query.vector.astype(np.float32), np.float32(0.0))[None, :]
        if self.projection is not None:
            q = q @ self.projection
        _, ids = self.index.search(np.ascontiguousarray(q, dtype=np.float32), want)
        return ids[0][ids[0] >= 0]


def _projection(rng: np.random.Generator, dim: int, config: IndexConfig) -> np.ndarray | None:
    """The seeded Gaussian projection of augmented vectors (None: IVF on them as they are)."""
    if config.projection_dim is None or config.projection_dim >= dim + 1:
        return None
    out = config.projection_dim
    return (rng.normal(size=(dim + 1, out)) / np.sqrt(out)).astype(np.float32)


class _ReadWriteLock:
    """Many readers or one writer; writers wait for readers to drain and block new ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
