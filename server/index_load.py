"""A replica's start-up: the USABLE learnwares and their search indexes, fast at a million.

The records come in one streamed query without specs (``usable_records``); the indexes
come from the newest matching snapshot (``server.snapshots``), or are built from the stored
specs in large batches when there is none, and a snapshot is written then. A restored
snapshot is reconciled with the records read now: learnwares it holds that are no longer
USABLE (withdrawn, their key revoked) leave, USABLE ones it lacks are added from their
stored specs. The feed after the head noted before loading does the rest
(``FeedFollower.start``).
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from itertools import islice

from sqlalchemy import LargeBinary, literal, select

from server.changes import ChangeFeed
from server.db import LearnwareRow, SpecRow
from server.index import SpecIndex
from server.records import LearnwareRecord, SpecRecord, Status
from server.snapshots import IndexSnapshots
from server.store import Store
from shared.spec.record import Specification

log = logging.getLogger("lwm.index_load")

_SIGNED = ("manifest_json", "signature")
"""Read when a search first returns the learnware (``signed_parts``), not at start: at a
million learnwares they are gigabytes a replica would read and hold for nothing."""
_COLUMNS = tuple(f.name for f in fields(LearnwareRecord) if f.name != "specs")
_SHARED_TEXT = frozenset(
    {
        "domain",
        "task",
        "license",
        "base_model_id",
        "base_model_sha256",
        "contributor_key_id",
        "contributor_name",
        "reason",
    }
)
"""Columns most learnwares share a value of: one string object each, not one per row."""

_BATCH = 50_000  # specs parsed and added to an index at once (bounds the memory of a build)
_RESAVE_SHARE = 0.01  # reconciling more than this share of the rows writes a new snapshot


@dataclass(frozen=True)
class Loaded:
    records: dict[str, LearnwareRecord]  # USABLE, with an active key, without specs
    indexes: dict[str, SpecIndex]
    source: str  # "snapshot" or "rebuilt"
    reconciled: int  # learnwares added or removed after the snapshot was restored


def load(
    store: Store,
    feed: ChangeFeed,
    snapshots: IndexSnapshots,
    like: Mapping[str, SpecIndex],
    head: int,
) -> Loaded:
    """Records and new indexes as the database has them now; ``like``: an index per kind
    (its kind, schema and settings are taken); ``head``: the feed's newest change, noted
    before."""
    gc.disable()  # a million new records would set off full collections all along
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="lwm-snapshot") as pool:
            reading = pool.submit(snapshots.load, like, feed.get)  # file I/O, numpy: no GIL
            records = {r.id: r for r in usable_records(store)}
            restored = reading.result()
    finally:
        gc.enable()
    if restored is None:
        indexes = {k: SpecIndex(i.kind, i.schema_id, i.dim, i.config) for k, i in like.items()}
        _add_specs(store, indexes, records.keys())
        snapshots.save(feed.get(head) if head else None, indexes)
        return Loaded(records, indexes, "rebuilt", len(records))
    indexes = restored[1]
    indexed = set().union(*(index.keys for index in indexes.values()))
    for learnware_id in indexed - records.keys():
        for index in indexes.values():
            index.remove(learnware_id)
    missing = records.keys() - indexed
    _add_specs(store, indexes, missing)
    changed = len(indexed - records.keys()) + len(missing)
    if changed > _RESAVE_SHARE * max(len(records), 1) and head:
        snapshots.save(feed.get(head), indexes)
    return Loaded(records, indexes, "snapshot", changed)


def usable_records(store: Store) -> Iterator[LearnwareRecord]:
    """Every USABLE learnware whose contributor key is registered and not revoked (what a
    replica serves), streamed, without specs, manifest and signature (empty: see
    ``signed_parts``). Built positionally: at a million rows each step per row counts."""
    active = {key.key_id for key in store.list_keys(include_revoked=False)}
    table = LearnwareRow.__table__
    columns = [literal(b"", LargeBinary) if n in _SIGNED else table.c[n] for n in _COLUMNS]
    query = select(*columns).where(table.c.status == Status.USABLE)
    shared = [i for i, name in enumerate(_COLUMNS) if name in _SHARED_TEXT]
    key_at = _COLUMNS.index("contributor_key_id")
    with store.engine.connect() as connection:
        rows = connection.execution_options(stream_results=True, max_row_buffer=20_000)
        for part in rows.execute(query).partitions(20_000):
            for row in part:
                if row[key_at] not in active:
                    continue
                values = list(row)
                for i in shared:
                    values[i] = sys.intern(values[i])
                yield LearnwareRecord(*values)


def signed_parts(store: Store, ids: Collection[str]) -> dict[str, tuple[bytes, bytes]]:
    """(manifest, signature) of learnwares ``ids``, in one query (ids not stored: absent)."""
    table = LearnwareRow.__table__
    query = select(table.c.id, table.c.manifest_json, table.c.signature)
    with store.reading() as session:
        rows = session.execute(query.where(table.c.id.in_(sorted(ids))))
        return {row.id: (bytes(row.manifest_json), bytes(row.signature)) for row in rows}


def _add_specs(store: Store, indexes: Mapping[str, SpecIndex], ids: Collection[str]) -> None:
    """Add the stored specs of learnwares ``ids`` to the index of their kind, in batches."""
    batches: dict[str, list[tuple[str, Specification]]] = {kind: [] for kind in indexes}
    for learnware_id, spec in _stored_specs(store, ids):
        if spec.kind not in indexes:
            continue
        batch = batches[spec.kind]
        batch.append((learnware_id, spec.spec()))
        if len(batch) >= _BATCH:
            indexes[spec.kind].add_many(batch)
            batch.clear()
    for kind, batch in batches.items():
        indexes[kind].add_many(batch)


def _stored_specs(store: Store, ids: Collection[str]) -> Iterator[tuple[str, SpecRecord]]:
    """(learnware id, spec) of the USABLE learnwares ``ids``: all of them in one streamed
    query when they are most, else by chunks of ids."""
    table = SpecRow.__table__
    query = select(table.c.learnware_id, table.c.kind, table.c.schema_id, table.c.dim)
    query = query.add_columns(table.c.spec_bytes)
    wanted = set(ids)
    if not wanted:
        return
    if len(wanted) > 10_000:
        usable = select(LearnwareRow.id).where(LearnwareRow.status == Status.USABLE)
        chunks: Iterator[object] = iter([query.where(table.c.learnware_id.in_(usable))])
    else:
        chunks = (query.where(table.c.learnware_id.in_(c)) for c in _chunked(wanted, 1000))
    with store.reading() as session:
        for chunk in chunks:
            for row in session.execute(chunk.execution_options(yield_per=5_000)):  # type: ignore[attr-defined]
                if row.learnware_id in wanted:
                    spec = SpecRecord(row.kind, row.schema_id, row.dim, bytes(row.spec_bytes))
                    yield row.learnware_id, spec


def _chunked(items: Collection[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
