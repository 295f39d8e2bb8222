"""Saved search indexes (issue 17, item 3): a replica starts from a snapshot file in the blob
folder, reconciled with the database; a corrupt, stale or mismatched file is never trusted,
the indexes are rebuilt instead."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_index import make_spec
from test_store import db_url, key, learnware, postgres_schema, store  # noqa: F401 - fixtures

from server.changes import ChangeFeed
from server.index import IndexConfig, SpecIndex
from server.index_load import load
from server.records import SpecRecord, Status
from server.snapshots import IndexSnapshots
from server.store import Store

SMALL = IndexConfig(approx_min_rows=40, projection_dim=8, nlist=4, nprobe=4, rerank=32)
DIM = 16


def filled(n: int = 120, kind: str = "rkme", seed: int = 0) -> SpecIndex:
    rng = np.random.default_rng(seed)
    index = SpecIndex(kind, "rkme-test", DIM, SMALL)
    index.add_many((f"lw-{i:04d}", make_spec(rng.normal(size=DIM), 0.01)) for i in range(n))
    return index


def same_answers(a: SpecIndex, b: SpecIndex) -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        query = make_spec(rng.normal(size=DIM), 0.01)
        assert [(h.key, round(h.distance, 4)) for h in a.search(query, 10)] == [
            (h.key, round(h.distance, 4)) for h in b.search(query, 10)
        ]


def test_a_snapshot_restores_the_index_with_its_trained_approximate_part(tmp_path: Path):
    index = filled()
    assert index.is_approximate
    snapshots = IndexSnapshots(tmp_path)
    snapshots.save(None, {"rkme": index})
    restored = snapshots.load({"rkme": SpecIndex("rkme", "rkme-test", DIM, SMALL)}, lambda _: None)
    assert restored is not None
    covered, indexes = restored
    assert covered == 0 and indexes["rkme"].is_approximate and len(indexes["rkme"]) == 120
    same_answers(index, indexes["rkme"])


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "spoil, like",
    [
        (lambda folder: corrupt(next(folder.glob("*.npz"))), None),
        (lambda folder: next(folder.glob("*.npz")).write_bytes(b"PK\x03\x04"), None),
        (lambda folder: next(folder.glob("*.json")).write_text("{"), None),
        (lambda folder: None, SpecIndex("rkme", "rkme-other", DIM, SMALL)),
        (lambda folder: None, SpecIndex("rkme", "rkme-test", DIM, replace(SMALL, nprobe=2))),
        (lambda folder: None, SpecIndex("rkme", "rkme-test", DIM + 1, SMALL)),
    ],
    ids=["flipped-byte", "truncated", "bad-meta", "other-schema", "other-settings", "other-dim"],
)
def test_a_corrupt_or_mismatched_snapshot_is_ignored(tmp_path: Path, spoil, like):
    snapshots = IndexSnapshots(tmp_path)
    snapshots.save(None, {"rkme": filled()})
    spoil(tmp_path)
    like = SpecIndex("rkme", "rkme-test", DIM, SMALL) if like is None else like
    assert snapshots.load({"rkme": like}, lambda _: None) is None


def test_a_snapshot_of_another_feed_is_ignored(store: Store, tmp_path: Path) -> None:  # noqa: F811
    """A snapshot names the change it covers by id, time and learnware: a database whose
    feed has no such change (another database, or one reset since) does not match."""
    alice = store.register_key(key("alice"))
    store.add_learnware(learnware(1, contributor_key_id=alice.key_id, status=Status.USABLE))
    feed = ChangeFeed(store)
    change = feed.get(feed.newest())
    assert change is not None
    snapshots = IndexSnapshots(tmp_path)
    snapshots.save(change, {"rkme": filled()})
    like = {"rkme": SpecIndex("rkme", "rkme-test", DIM, SMALL)}
    assert snapshots.load(like, feed.get) is not None
    assert snapshots.load(like, lambda _: None) is None  # the change is not in this feed
    moved = replace(change, learnware_id="lw-other")
    assert snapshots.load(like, lambda _: moved) is None  # another learnware under its id


def rkme_record(n: int, owner: str, seed: int):
    spec = make_spec(np.random.default_rng(seed).normal(size=DIM), 0.01)
    stored = SpecRecord("rkme", spec.schema_id, DIM, spec.to_bytes())
    return learnware(n, contributor_key_id=owner, status=Status.USABLE, specs=(stored,))


def test_a_restored_snapshot_is_reconciled_with_the_database(store: Store, tmp_path: Path):  # noqa: F811
    """What changed after the snapshot's change is made good from the database: a withdrawn
    learnware and a revoked key's leave the index, one accepted since joins it."""
    alice, bob = store.register_key(key("alice")), store.register_key(key("bob"))
    for n in range(6):
        store.add_learnware(rkme_record(n, alice.key_id if n < 5 else bob.key_id, n))
    feed, snapshots = ChangeFeed(store), IndexSnapshots(tmp_path / "index")
    like = {"rkme": SpecIndex("rkme", "rkme-test", DIM, SMALL)}
    first = load(store, feed, snapshots, like, feed.newest())
    assert first.source == "rebuilt" and len(first.indexes["rkme"]) == 6
    store.set_status("lw-0001", Status.WITHDRAWN, "gone")
    store.revoke_key(bob.key_id, "stolen")
    store.add_learnware(rkme_record(9, alice.key_id, 9))
    second = load(store, feed, snapshots, like, feed.newest())
    assert second.source == "snapshot" and second.reconciled == 3
    expected = {"lw-0000", "lw-0002", "lw-0003", "lw-0004", "lw-0009"}
    assert set(second.records) == expected == set(second.indexes["rkme"].keys)
    query = make_spec(np.random.default_rng(9).normal(size=DIM), 0.01)
    assert second.indexes["rkme"].search(query, 1)[0].key == "lw-0009"
