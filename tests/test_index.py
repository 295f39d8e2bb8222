"""The index ranks exactly like a slow reference, and its approximate path recalls well."""

import numpy as np
import pytest

from server.index import IndexConfig, SpecIndex
from shared.errors import SchemaMismatch
from shared.privacy import DPReport
from shared.spec.ranking import rank, to_index_point
from shared.spec.record import Specification

SCHEMA_ID = "rkme-test"


def make_spec(vector, noise_std=0.0, kind="rkme", schema_id=SCHEMA_ID):
    report = DPReport("gaussian", 4.0, 1e-5, 1.0, noise_std=noise_std)
    return Specification(kind, schema_id, np.asarray(vector, np.float32), 10, report)


def reference_distance(q, c):
    """Slow, obvious version of the distance for both kinds."""
    if q.kind == "pave":
        cos = float(q.vector @ c.vector / (np.linalg.norm(q.vector) * np.linalg.norm(c.vector)))
        return 2.0 - 2.0 * cos
    diff = q.vector.astype(np.float64) - c.vector
    return float(diff @ diff) - q.expected_noise_sq_norm - c.expected_noise_sq_norm


@pytest.mark.parametrize("kind", ["rkme", "pave"])
def test_exact_search_matches_reference(kind):
    rng = np.random.default_rng(0)
    specs = [make_spec(rng.normal(size=32), rng.uniform(0, 0.1), kind) for _ in range(300)]
    query = make_spec(rng.normal(size=32), 0.05, kind)
    index = SpecIndex(kind, SCHEMA_ID, 32)
    index.add_many((f"lw{i}", s) for i, s in enumerate(specs))
    hits = index.search(query, 10)
    expected = sorted(range(300), key=lambda i: reference_distance(query, specs[i]))[:10]
    assert [h.key for h in hits] == [f"lw{i}" for i in expected]
    for h, i in zip(hits, expected, strict=True):
        assert h.distance == pytest.approx(reference_distance(query, specs[i]), abs=1e-4)
    assert [r.position for r in rank(query, specs, top_k=10)] == expected


def test_remove_filter_and_replace():
    rng = np.random.default_rng(1)
    index = SpecIndex("rkme", SCHEMA_ID, 8)
    vecs = rng.normal(size=(50, 8))
    index.add_many((f"k{i}", make_spec(v)) for i, v in enumerate(vecs))
    query = make_spec(vecs[7])
    assert index.search(query, 1)[0].key == "k7"
    assert index.remove("k7") and not index.remove("k7")
    assert "k7" not in index and len(index) == 49
    assert index.search(query, 1)[0].key != "k7"
    allowed = {"k1", "k2"}
    assert {h.key for h in index.search(query, 5, allowed=allowed)} == allowed
    index.add("k1", make_spec(vecs[7]))  # replacing a key keeps one row for it
    assert len(index) == 49 and index.search(query, 1)[0].key == "k1"


def test_wrong_schema_is_refused():
    index = SpecIndex("rkme", SCHEMA_ID, 4)
    with pytest.raises(SchemaMismatch):
        index.add("x", make_spec(np.ones(4), schema_id="rkme-other"))


def clustered(rng, centers, count):
    picks = centers[rng.integers(0, len(centers), count)]
    return (picks + 0.3 * rng.normal(size=picks.shape)).astype(np.float32)


def test_approximate_search_recalls_the_exact_top1():
    rng = np.random.default_rng(2)
    dim = 64
    centers = rng.normal(size=(50, dim))
    data = clustered(rng, centers, 5000)
    offsets = -rng.uniform(0, 0.5, size=len(data)).astype(np.float32)
    config = IndexConfig(approx_min_rows=1000, projection_dim=32, nprobe=8, rerank=128)
    index = SpecIndex("rkme", SCHEMA_ID, dim, config)
    index.add_points([f"k{i}" for i in range(len(data))], data, offsets)
    assert index.is_approximate
    queries = clustered(rng, centers, 100)
    agree = 0
    for q in queries:
        point = to_index_point(make_spec(q))
        agree += index.search_point(point, 1)[0].key == index.search_exact(point, 1)[0].key
    assert agree / len(queries) >= 0.95
    # removing from an approximate index keeps it consistent with exact search
    top = index.search_exact(to_index_point(make_spec(queries[0])), 1)[0].key
    index.remove(top)
    assert index.search_point(to_index_point(make_spec(queries[0])), 1)[0].key != top
    assert index.is_approximate


def test_concurrent_searches_and_writes_stay_consistent():
    """Readers run in parallel with adds and removals; every answer names live keys only."""
    import threading

    rng = np.random.default_rng(3)
    index = SpecIndex("rkme", SCHEMA_ID, 16)
    index.add_many((f"base{i}", make_spec(v)) for i, v in enumerate(rng.normal(size=(500, 16))))
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        query = make_spec(rng.normal(size=16))
        try:
            while not stop.is_set():
                hits = index.search(query, 5)
                assert len(hits) == 5 and all(h.key.startswith(("base", "new")) for h in hits)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    for i in range(200):
        index.add(f"new{i}", make_spec(rng.normal(size=16)))
        index.remove(f"base{i}")
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[0]
    assert len(index) == 500 and "base0" not in index and "new199" in index


@pytest.mark.parametrize("approx_min_rows", [10_000, 100])
def test_excluded_keys_are_left_out_and_k_still_filled(approx_min_rows):
    """The market's superseded versions: never in the answer, which still has k hits,
    exactly the k best of the rest, with or without an allowed set, exact or approximate."""
    rng = np.random.default_rng(4)
    specs = [make_spec(rng.normal(size=16)) for _ in range(400)]
    config = IndexConfig(approx_min_rows=approx_min_rows, projection_dim=8, rerank=400)
    index = SpecIndex("rkme", SCHEMA_ID, 16, config)
    index.add_many((f"lw{i}", s) for i, s in enumerate(specs))
    query = make_spec(rng.normal(size=16))
    order = [
        f"lw{i}" for i in sorted(range(400), key=lambda i: reference_distance(query, specs[i]))
    ]
    excluded = frozenset(order[:30:2])  # half of the 30 best
    point = to_index_point(query)
    hits = [h.key for h in index.search_point(point, 10, None, excluded)]
    assert hits == [k for k in order if k not in excluded][:10]
    allowed = set(order[:40])
    hits = [h.key for h in index.search_point(point, 10, allowed, excluded)]
    assert hits == [k for k in order[:40] if k not in excluded][:10]
    assert index.search_point(point, 10, set(excluded), excluded) == []
