"""The market's logic, free of gRPC: submit, get, list, search, fetch, withdraw, keys, stats.

``server.service`` translates protobuf to these calls and errors to status codes. State:
the ``Store`` (database: the truth), the ``BlobStore`` (package bytes), and in memory the
USABLE learnwares and one ``SpecIndex`` per spec kind, rebuilt from the store at start and
updated on every change, so a crash can never leave the index ahead of the database.

Replicas (any number of markets on one PostgreSQL and one blob folder): each follows the
database's change feed (``server.changes``), so what another replica accepts, withdraws or
revokes reaches this index too, and judges PENDING learnwares from the judgment queue
(``server.judgment_queue``), so a judgment a dead replica left is finished by another.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from server.auth import Caller
from server.blobs import BlobStore
from server.changes import ChangeFeed, FeedFollower, listen_url
from server.checker import Checker, Judgment
from server.index import Hit, SpecIndex
from server.index_load import load as load_indexes
from server.index_load import signed_parts
from server.judgment_queue import JudgingWorker, JudgmentQueue, Lease, replica_name
from server.key_cache import KeyCache
from server.records import (
    KeyRecord,
    LearnwareFilter,
    LearnwareRecord,
    MarketStats,
    Page,
    Role,
    Status,
    Visibility,
)
from server.search import method_of, queries_by_kind, rank_search
from server.settings import Limits, ReplicaSettings
from server.snapshots import IndexSnapshots
from server.store import Store
from server.submission import (
    Header,
    Upload,
    check_header,
    pending_record,
    receive,
    scratch_dir,
)
from server.versions import NewestVersions
from shared import signing
from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Revoked,
    SpecError,
    Unauthenticated,
)
from shared.learnware import unpack_tar
from shared.spec.confidence import Confidence
from shared.spec.record import Specification

log = logging.getLogger("lwm.market")

ACTIVE = frozenset({Status.PENDING, Status.USABLE})
"""The statuses a contributor's quota counts (``Limits.max_active_per_key``)."""

SHARED_CLEANUP_AGE_S = 24 * 3600.0
"""A replica starting while others serve removes only temp files, scratch folders and
unreferenced blobs older than this: younger ones may be another replica's upload or
judgment in progress."""


@dataclass(frozen=True)
class SearchHit:
    record: LearnwareRecord
    distance: float
    score: float
    rank: int
    kind: str
    schema_id: str


@dataclass(frozen=True)
class SearchAnswer:
    """Ranked hits, best first, and how sure the market is of the first (None: fewer than
    two candidates)."""

    hits: list[SearchHit]
    confidence: Confidence | None


@dataclass(frozen=True)
class Download:
    """What ``fetch`` serves: the learnware, its contributor's key, then its bytes."""

    record: LearnwareRecord
    contributor: KeyRecord
    chunks: Iterator[tuple[int, bytes]]


def visibility(caller: Caller) -> Visibility:
    """The one visibility rule, for Get, List and Fetch: an admin sees every learnware;
    anyone else sees its own at any status and everyone else's only when USABLE, so no
    contributor reads another's REJECTED or WITHDRAWN rows, nor their reasons."""
    if caller.role is Role.ADMIN:
        return Visibility(own_key_id=None, others=None)
    return Visibility(own_key_id=caller.key_id, others=frozenset({Status.USABLE}))


def bounded_text(where: str, value: str, max_chars: int) -> str:
    """``value`` if at most ``max_chars`` long; InvalidInput otherwise. Every free-text
    field the market stores from a request passes here (it lands in the database and the
    audit trail, so its size is the caller's choice unless capped)."""
    if len(value) > max_chars:
        raise InvalidInput(f"{where} is {len(value)} characters, the limit is {max_chars}")
    return value


class Market:
    """One market (one replica): ``checker`` judges uploads (and knows the schema and base
    models), ``limits`` bound every request, ``replica`` says how it follows the others."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        checker: Checker,
        limits: Limits,
        replica: ReplicaSettings | None = None,
    ) -> None:
        self.store, self.blobs, self.checker, self.limits = store, blobs, checker, limits
        replica = replica or ReplicaSettings()
        lease = Lease(replica.name or replica_name(), replica.judgment_lease_s)
        self.queue = JudgmentQueue(store, lease)
        self.changes = ChangeFeed(store)
        self.feed = FeedFollower(
            self.changes,
            self.refresh,
            poll_s=replica.feed_poll_s,
            listen_url=listen_url(store),
        )
        self._judging = JudgingWorker(self.queue, self.judge_queued, replica.judgment_poll_s)
        self.schema = checker.schema
        self.started_at = datetime.now(UTC)
        self._lock = threading.RLock()
        self._usable: dict[str, LearnwareRecord] = {}
        self._newest = NewestVersions()
        self._keys = KeyCache(store.get_key)
        self.snapshots = IndexSnapshots(blobs.root / "index")
        self.indexes = {
            kind: SpecIndex(
                kind, self.schema.for_kind(kind).schema_id, self.schema.for_kind(kind).spec_dim
            )
            for kind in self.schema.kinds
        }

    # ------------------------------------------------------------------ start-up
    def start(self, *, alone: bool = True) -> None:
        """Make memory agree with disk after any crash (temp files, orphans, the index),
        then follow the change feed.

        ``alone``: no other replica uses the blob store (``BlobClaim.alone``), so every
        leftover is a crash's and every claimed judgment a dead replica's: all are cleaned
        and freed. Otherwise only old leftovers go (``SHARED_CLEANUP_AGE_S``) and claims
        wait for their leases. Judging starts later (``start_judging``): a smoke run takes
        seconds to minutes each, and the market must serve first."""
        age = 0.0 if alone else SHARED_CLEANUP_AGE_S
        removed = self.blobs.cleanup_temp(min_age_s=age)
        orphans = self.blobs.gc(self.store.referenced_blobs(), min_age_s=age)
        freed = self.queue.free_all() if alone else 0
        self.feed.start(load=self._load_usable)
        log.info(
            "market ready: %d usable learnwares, %d temp files and %d orphan blobs removed, "
            "%d judgments a stop or crash left freed",
            len(self._usable),
            removed,
            orphans,
            freed,
        )

    def start_judging(self) -> None:
        """Take judgments from the queue (what a stop or a dead replica left PENDING), one
        after another through the checker's gate (never more smoke runs than an upload
        gets), in a background thread, until ``close``."""
        self._judging.start()

    def close(self) -> None:
        """Stop judging: kill the running smoke runs at once (their judgments go back to the
        queue, for another replica or the next start); later uploads get UNAVAILABLE."""
        self._judging.stop()
        self.checker.close()
        self.feed.stop()

    def _load_usable(self) -> None:
        """Every USABLE learnware and the indexes, from a snapshot when one matches
        (``server.index_load``): at a million learnwares a rebuild takes minutes."""
        loaded = load_indexes(
            self.store, self.changes, self.snapshots, self.indexes, self.feed.applied
        )
        with self._lock:
            self._usable = loaded.records
            self._newest.clear()
            for record in loaded.records.values():
                self._newest.add(record)
            self.indexes = loaded.indexes
        log.info("indexes %s (%d reconciled)", loaded.source, loaded.reconciled)

    def refresh(self, learnware_id: str) -> None:
        """Make the index agree with the database about one learnware (a change of the
        feed, made by this replica or another): what it reads now decides, not the change."""
        try:
            record = self.store.get(learnware_id)
        except NotFound:
            self._unpublish(learnware_id)
            return
        key = self.store.get_key(record.contributor_key_id)
        if key is not None and key.revoked:
            self._keys.drop(key.key_id)  # revoked by another replica: stop trusting it here too
        self._show(record, key)

    def _show(self, record: LearnwareRecord, key: KeyRecord | None) -> None:
        """Publish ``record`` when it is USABLE and its key is active; unpublish it otherwise."""
        with self._lock:
            if record.status is Status.USABLE and key is not None and not key.revoked:
                self._publish(record, [spec.spec() for spec in record.specs])
            else:
                self._unpublish(record.id)

    def _publish(self, record: LearnwareRecord, specs: Iterable[Specification]) -> None:
        with self._lock:
            self._usable[record.id] = replace(record, specs=())
            self._newest.add(record)
            for spec in specs:
                if spec.kind in self.indexes:
                    self.indexes[spec.kind].add(record.id, spec)

    def _unpublish(self, learnware_id: str) -> None:
        with self._lock:
            self._usable.pop(learnware_id, None)
            self._newest.remove(learnware_id)
            for index in self.indexes.values():
                index.remove(learnware_id)

    # ------------------------------------------------------------------ keys
    def key_of(self, key_id: str) -> KeyRecord | None:
        """The registered key, from a bounded cache (``server.key_cache``): every RPC
        authenticates, and a database round trip per call would dominate Search.
        Revocations through this server take effect at once (the entry is dropped);
        through another server sharing the database, within ``KEY_CACHE_S``."""
        return self._keys.get(key_id)

    def register_key(self, public_key: bytes, role: Role, name: str) -> KeyRecord:
        key = signing.load_public_key(public_key)
        record = KeyRecord(
            key_id=signing.key_id(key),
            public_key=signing.public_key_bytes(key),
            role=role,
            name=bounded_text("the key name", name, self.limits.max_key_name_chars),
            created_at=datetime.now(UTC),
        )
        self._keys.drop(record.key_id)
        return self.store.register_key(record)

    def revoke_key(self, caller: Caller, key_id: str, reason: str) -> KeyRecord:
        """Revoke a key and stop serving what it signed (a stolen key makes its past
        signatures worthless too); the learnwares stay in the store for the record, and the
        reason goes to the audit trail. An admin may not revoke its own key (lock-out)."""
        if key_id == caller.key_id and caller.role is Role.ADMIN:
            raise InvalidInput("an admin cannot revoke its own key (lock-out); use another admin")
        reason = bounded_text("the revoke reason", reason, self.limits.max_reason_chars)
        revoked = self.store.revoke_key(key_id, reason, by=caller.key_id)
        self._keys.drop(key_id)
        with self._lock:  # against _conclude: it checks the key and publishes under this lock
            for learnware_id, record in list(self._usable.items()):
                if record.contributor_key_id == key_id:
                    self._unpublish(learnware_id)
        return revoked

    def list_keys(self, include_revoked: bool) -> tuple[KeyRecord, ...]:
        return self.store.list_keys(include_revoked=include_revoked)

    # ------------------------------------------------------------------ submit
    def submit(
        self, caller: Caller, header: Header, chunks: Iterable[tuple[int, bytes]]
    ) -> LearnwareRecord:
        """Store, check and publish one upload (the steps of ``server.submission``).

        Raises an LwmError and leaves nothing behind when the upload is refused; once it
        is stored (PENDING), the judgment makes it USABLE or REJECTED with a reason. The
        upload holds a place at the checker's gate from before its first byte to the end
        (ResourceExhausted when too many are being judged or wait for it)."""
        with self.checker.gate.place():
            return self._submit(caller, header, chunks)

    def _submit(
        self, caller: Caller, header: Header, chunks: Iterable[tuple[int, bytes]]
    ) -> LearnwareRecord:
        upload = self._admit(caller, header)
        key, size = upload.contributor.public_key, header.total_size
        with scratch_dir(self.blobs.work_dir) as workdir:
            with self.blobs.provisional(header.sha256, self._owned):
                with self.blobs.writer(max_size=size) as writer:  # one pass, then commit
                    package = receive(writer, header, chunks, self.limits, workdir)
                    static = self.checker.check_static(package.path, key, package.files)
                    blob = writer.commit(expected_sha256=header.sha256, expected_size=size)
                stored = self.store.add_learnware(
                    pending_record(upload, blob, static), self.queue.lease
                )
            with self.queue.holding(stored.id):  # judged here; by another replica if we die
                return self._conclude(stored, self.checker.judge(package.path, static))

    def _admit(self, caller: Caller, header: Header) -> Upload:
        """The checks before any byte is received: header, registered key, quota, duplicate.

        The quota is checked here, not at insertion: uploads of one key running at the same
        time may pass it together (the per-key concurrency limit bounds by how many)."""
        manifest = check_header(header, caller.key_id, self.limits)
        key = self.store.get_key(caller.key_id)
        if key is None or key.revoked:
            raise Unauthenticated(f"key {caller.key_id} is not registered or was revoked")
        active = self.store.count_of(key.key_id, ACTIVE)
        if active >= self.limits.max_active_per_key:
            raise ResourceExhausted(
                f"key {key.key_id} has {active} learnwares PENDING or USABLE, the limit is "
                f"{self.limits.max_active_per_key}: withdraw one first"
            )
        existing = self.store.find_by_package(header.sha256, with_specs=False)
        if existing is not None:
            raise AlreadyExists(f"this package is already in the market as {existing.id}")
        return Upload(header, manifest, key)

    def _owned(self, sha256: str) -> bool:
        """Whether a stored learnware keeps blob ``sha256`` (a REJECTED one keeps none)."""
        record = self.store.find_by_package(sha256, with_specs=False)
        return record is not None and record.status is not Status.REJECTED

    def judge_queued(self, learnware_id: str) -> LearnwareRecord:
        """Judge a PENDING learnware from its stored package, as an upload is (unless it
        left PENDING meanwhile: withdrawn while it waited)."""
        record = self.store.get(learnware_id, with_specs=False)
        if record.status is not Status.PENDING:
            return record
        key = self.store.get_key(record.contributor_key_id)
        if key is None:
            return self._conclude(record, _refusal("contributor key unknown"))
        with scratch_dir(self.blobs.work_dir) as workdir:
            source = self.blobs.path_of(record.package_sha256)
            package = unpack_tar(source, workdir / "package", limits=self.limits.package)
            return self._conclude(record, self.checker.check(package, key.public_key))

    def _conclude(self, record: LearnwareRecord, judgment: Judgment) -> LearnwareRecord:
        """PENDING -> the judgment's status; publish when USABLE.

        The contributor's key is read again first (from the database, not the cache): one
        revoked while its package was being checked is not published. Under the market lock,
        so a revocation either comes before this check or unpublishes what it published.
        A REJECTED learnware keeps its row and reason, not its bytes."""
        with self._lock:
            if judgment.status is Status.USABLE:
                key = self.store.get_key(record.contributor_key_id)
                if key is None or key.revoked:
                    judgment = _refusal("the contributor's key was revoked during the checks")
            try:
                updated = self.store.set_status(
                    record.id, judgment.status, judgment.reason, with_specs=False
                )
            except FailedPrecondition:
                current = self.store.get(record.id, with_specs=False)
                if current.status is Status.PENDING:
                    raise
                log.info("learnware %s was concluded meanwhile: %s", record.id, current.status)
                return current  # withdrawn, or judged by a replica that took over our lease
            if judgment.status is Status.USABLE:
                self._publish(updated, judgment.specs)
        if judgment.status is Status.REJECTED:
            self.blobs.delete(record.package_sha256)
        log.info(
            "learnware %s (%s) is %s %s",
            record.id,
            record.name,
            updated.status.value,
            judgment.reason,
        )
        return updated

    # ------------------------------------------------------------------ read side
    def get(self, caller: Caller, learnware_id: str) -> LearnwareRecord:
        return self._visible_record(caller, learnware_id)

    def list_page(self, caller: Caller, flt: LearnwareFilter, page_size: int, token: str) -> Page:
        """One page of what ``caller`` may see (``visibility``), without spec bytes; unless
        ``flt.all_versions``, only the newest version of each name among those."""
        size = min(page_size or self.limits.default_page_size, self.limits.max_page_size)
        return self.store.list(flt, size, token, with_specs=False, visible=visibility(caller))

    def history(self, caller: Caller, learnware_id: str) -> tuple[LearnwareRecord, ...]:
        """Every version of the learnware's (contributor, name) that ``caller`` may see,
        newest first, ``learnware_id`` among them (NotFound when the caller may not see it).
        Another contributor's learnware of the same name is another learnware: not here."""
        record = self._visible_record(caller, learnware_id)
        return self.store.versions(
            record.contributor_key_id, record.name, visible=visibility(caller)
        )

    def _visible_record(self, caller: Caller, learnware_id: str) -> LearnwareRecord:
        """The learnware (without spec bytes) if ``caller`` may see it; NotFound otherwise,
        the same answer as for an unknown id, so neither its status nor reason leaks."""
        record = self.store.get(learnware_id, with_specs=False)
        if not visibility(caller).allows(record):
            raise NotFound(f"learnware {learnware_id!r} is not available")
        return record

    def search(
        self,
        caller: Caller,
        query: Specification,
        top_k: int,
        flt: LearnwareFilter,
        more: Sequence[Specification] = (),
        ranking: str = "",
    ) -> SearchAnswer:
        """The nearest USABLE learnwares to ``query`` (and ``more`` specs of other kinds of
        the same data, fused as ``ranking`` says: ``server.search``), with the confidence."""
        queries = queries_by_kind([query, *more])
        for spec in queries.values():
            spec.check_against(self.schema.for_kind(spec.kind))  # the index trusts it
        k = min(top_k or self.limits.default_top_k, self.limits.max_top_k)
        method = method_of(ranking, queries, query.kind)
        # No market lock here: the index has its own readers-writer lock, so searches run
        # in parallel. A learnware withdrawn between the index answer and this lookup is
        # simply dropped from the answer. The index leaves superseded versions out itself.
        hidden = frozenset() if flt.all_versions else self._newest.superseded
        ranked = rank_search(self.indexes, queries, method, k, self._allowed(flt), hidden)
        schema_id = "+".join(self.schema.for_kind(kind).schema_id for kind in queries)
        if method in queries:
            schema_id = self.schema.for_kind(method).schema_id
        found = [(self._usable.get(h.key), h) for h in ranked.hits]
        kept = self._signed([(r, h) for r, h in found if r is not None])
        hits = [
            SearchHit(r, h.distance, h.score, i + 1, method, schema_id)
            for i, (r, h) in enumerate(kept)
        ]
        return SearchAnswer(hits, ranked.confidence)

    def _signed(
        self, found: list[tuple[LearnwareRecord, Hit]]
    ) -> list[tuple[LearnwareRecord, Hit]]:
        """The records with their manifest and signature: those loaded at start have none
        (``index_load.usable_records``) until a search first returns them, which reads
        them in one query and keeps them (unless the learnware left meanwhile)."""
        missing = [r.id for r, _ in found if not r.manifest_json]
        if not missing:
            return found
        signed = signed_parts(self.store, missing)
        with self._lock:
            for learnware_id, (manifest, signature) in signed.items():
                listed = self._usable.get(learnware_id)
                if listed is not None and not listed.manifest_json:
                    self._usable[learnware_id] = replace(
                        listed, manifest_json=manifest, signature=signature
                    )
        return [
            (replace(r, manifest_json=signed[r.id][0], signature=signed[r.id][1]), h)
            if r.id in signed
            else (r, h)
            for r, h in found
        ]

    def _allowed(self, flt: LearnwareFilter) -> set[str] | None:
        checks = [
            ("domain", flt.domain),
            ("task", flt.task),
            ("base_model_id", flt.base_model_id),
            ("license", flt.license),
            ("contributor_key_id", flt.contributor_key_id),
        ]
        active = [(name, value) for name, value in checks if value]
        if not active:
            return None
        return {
            lid
            for lid, r in list(self._usable.items())
            if all(getattr(r, name) == value for name, value in active)
        }

    def fetch(self, caller: Caller, learnware_id: str, offset: int) -> Download:
        """The package of a visible learnware: users fetch USABLE ones, a contributor only
        its own (PermissionDenied for another's), an admin any; a REJECTED one has no
        package any more (FailedPrecondition).

        A fetch that passes these checks at offset 0 counts as one download
        (``LearnwareRecord.downloads``): counted when it starts, so a download that breaks
        counts once and its resumption (offset > 0) not again."""
        record = self._visible_record(caller, learnware_id)
        if caller.role is Role.CONTRIBUTOR and record.contributor_key_id != caller.key_id:
            raise PermissionDenied(
                f"a contributor may fetch only its own learnwares, not {record.id}"
            )
        if record.status is Status.REJECTED:
            raise FailedPrecondition(f"learnware {record.id} was rejected: its package is not kept")
        if offset < 0 or offset > record.package_size:
            raise SpecError(
                f"offset {offset} is outside the package of {record.package_size} bytes"
            )
        key = self.store.get_key(record.contributor_key_id)
        if key is None:
            raise NotFound(f"the contributor key of {learnware_id} is unknown")
        if key.revoked and caller.role is not Role.ADMIN:
            raise Revoked(
                f"the contributor key {key.key_id} ({key.name}) of learnware {learnware_id} "
                "was revoked: its signature can no longer be trusted"
            )
        if offset == 0:
            record = self._count_download(record)
        return Download(record, key, self._chunks(record, offset))

    def _count_download(self, record: LearnwareRecord) -> LearnwareRecord:
        counted = replace(record, downloads=self.store.count_download(record.id))
        with self._lock:
            listed = self._usable.get(record.id)
            if listed is not None:
                self._usable[record.id] = replace(listed, downloads=counted.downloads)
        return counted

    def _chunks(self, record: LearnwareRecord, offset: int) -> Iterator[tuple[int, bytes]]:
        step = self.limits.max_chunk_bytes
        with self.blobs.open(record.package_sha256) as handle:
            handle.seek(offset)
            while offset < record.package_size:
                data = handle.read(min(step, record.package_size - offset))
                if not data:
                    break
                yield offset, data
                offset += len(data)

    def withdraw(self, caller: Caller, learnware_id: str, reason: str) -> LearnwareRecord:
        """Withdraw one learnware; FailedPrecondition when it is already final (withdrawn
        or rejected), InvalidInput for a reason over ``Limits.max_reason_chars``."""
        reason = bounded_text("the withdraw reason", reason, self.limits.max_reason_chars)
        record = self.store.get(learnware_id, with_specs=False)
        if caller.role is not Role.ADMIN and record.contributor_key_id != caller.key_id:
            raise PermissionDenied(f"only its contributor or an admin may withdraw {learnware_id}")
        updated = self.store.set_status(
            learnware_id, Status.WITHDRAWN, reason or "withdrawn", with_specs=False
        )
        self._unpublish(learnware_id)
        self.store.record_event(
            "withdraw", learnware_id=learnware_id, key_id=caller.key_id, detail=reason
        )
        return updated

    def stats(self) -> MarketStats:
        shas = list(self.blobs.iter_shas())
        return MarketStats(
            store=self.store.stats(),
            blob_count=len(shas),
            blob_bytes=sum(self.blobs.size(s) for s in shas),
            indexed={kind: len(index) for kind, index in self.indexes.items()},
            started_at=self.started_at,
            uptime_s=(datetime.now(UTC) - self.started_at).total_seconds(),
            index_lag=self.feed.lag(),
        )


def _refusal(reason: str) -> Judgment:
    """A REJECTED judgment the market makes itself (no package check behind it)."""
    return Judgment(Status.REJECTED, reason, manifest=None, specs=[], seconds=0.0)
