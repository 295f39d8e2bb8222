"""The market's database: learnwares, their specs, registered keys and an audit trail.

``Store.open(url)`` works on a SQLite file (the default) or PostgreSQL, creating or
upgrading the schema on the way (``server.db.migrate``). Every method is one short
transaction in its own session, so one ``Store`` serves all gRPC worker threads, and every
method returns the plain records of ``server.records`` (never ORM objects, which would tie
the caller to a session).

Crash safety: a learnware and its specs are inserted in one transaction, so a crash or a
failed insert leaves either all of them or none. The caller stores the package blob first
(``server.blobs``) and adds the learnware after; a crash between the two leaves an
unreferenced blob, which ``BlobStore.gc(store.referenced_blobs())`` removes at the next
start. A committed row therefore always has its blob.

Replicas: the same transactions also write the change feed (``server.changes``: a learnware
entering or leaving the search index) and the judgment queue (``server.judgment_queue``:
a row per PENDING learnware), so neither ever disagrees with the learnwares table.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.orm import Session, aliased, selectinload, sessionmaker
from sqlalchemy.orm.util import AliasedClass

from server.changes import record_changes
from server.db import (
    BEGIN_OPTION,
    EventRow,
    KeyRow,
    LearnwareRow,
    SpecRow,
    create_db_engine,
    migrate,
    utcnow,
)
from server.judgment_queue import Lease, dequeue, enqueue
from server.records import (
    ChangeKind,
    KeyRecord,
    LearnwareFilter,
    LearnwareRecord,
    Page,
    Role,
    SpecRecord,
    Status,
    StoreStats,
    Visibility,
)
from shared.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000  # larger requests are cut to this (a page is held in memory)
_SPEC_BATCH = 500
_INSERT_TRIES = 5  # PostgreSQL: concurrent submissions of one name may race for a version

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.USABLE, Status.REJECTED, Status.WITHDRAWN}),
    Status.USABLE: frozenset({Status.WITHDRAWN}),
    Status.REJECTED: frozenset(),
    Status.WITHDRAWN: frozenset(),
}
"""The life cycle ``set_status`` enforces. REJECTED and WITHDRAWN are final."""


@dataclass(frozen=True)
class Event:
    """One line of the audit trail (who did what to which learnware, when)."""

    id: int
    at: datetime
    action: str
    learnware_id: str | None
    key_id: str | None
    detail: str


class Store:
    """Thread-safe access to the market database. Build with ``Store.open(url)``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, pool_size: int | None = None) -> Store:
        """Connect and bring the schema to head. ``url`` e.g. ``sqlite:///DIR/market.db``
        or ``postgresql+psycopg://user@host:port/db``."""
        engine = create_db_engine(url, pool_size=pool_size)
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def shared(self) -> bool:
        """Whether other market processes may share this database (PostgreSQL): replicas.
        A SQLite file serves one process."""
        return self.engine.dialect.name == "postgresql"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)
        so it waits on the busy timeout instead of failing when another writer got there
        between our read and our write."""
        with self._sessions.begin() as session:
            session.connection(execution_options={BEGIN_OPTION: "IMMEDIATE"})
            yield session

    # ---- learnwares -----------------------------------------------------------------

    def add_learnware(self, record: LearnwareRecord, lease: Lease | None = None) -> LearnwareRecord:
        """Insert a learnware and its specs, all or nothing. Returns it as ``get`` would
        (timestamps in UTC, specs ordered by kind), with the version the store gave it:
        1 + the highest stored version of its (contributor, name), whatever their status
        (``record.version`` and ``record.downloads`` are ignored). A PENDING one is queued
        for judgment, claimed by ``lease`` when given; a USABLE one goes in the change feed.

        Raises AlreadyExists (naming the stored learnware) when its package or id is
        already stored, InvalidInput when the record breaks a constraint (e.g. two specs
        of one kind, a naive timestamp); nothing is stored then.
        """
        _require_aware(record.created_at, record.updated_at)
        for attempt in range(1, _INSERT_TRIES + 1):
            try:
                return self._insert(record, lease)
            except DbIntegrityError as error:
                with self.reading() as session:
                    _refuse_duplicate(session, record)  # lost a race to a concurrent insert
                if "version" not in str(error.orig) or attempt == _INSERT_TRIES:
                    raise InvalidInput(_constraint_message(record, error)) from None
        raise AssertionError("unreachable")

    def _insert(self, record: LearnwareRecord, lease: Lease | None) -> LearnwareRecord:
        with self.writing() as session:
            _refuse_duplicate(session, record)
            row = LearnwareRow.from_record(record)
            row.version, row.downloads = _next_version(session, record), 0
            session.add(row)
            session.flush()  # the learnware row first: specs reference it
            specs = sorted(record.specs, key=lambda spec: spec.kind)  # as reads return them
            row.specs.extend(SpecRow.from_record(record.id, spec) for spec in specs)
            session.flush()
            _event(
                session,
                "learnware.add",
                record.id,
                record.contributor_key_id,
                f"status={record.status} package={record.package_sha256} "
                f"version={row.version}",
            )
            if row.status is Status.PENDING:
                enqueue(session, record.id, lease)
            elif row.status is Status.USABLE:
                record_changes(session, ChangeKind.ACCEPTED, [record.id])
            return row.to_record()

    def get(self, learnware_id: str, *, with_specs: bool = True) -> LearnwareRecord:
        """The learnware; NotFound if absent. ``with_specs`` False never reads the spec
        bytes (Get and Fetch answer from the row alone: a spec file can be megabytes)."""
        with self.reading() as session:
            return _get_row(session, learnware_id, with_specs).to_record(with_specs)

    def find_by_package(
        self, package_sha256: str, *, with_specs: bool = True
    ) -> LearnwareRecord | None:
        query = select(LearnwareRow).where(LearnwareRow.package_sha256 == package_sha256)
        if with_specs:
            query = query.options(selectinload(LearnwareRow.specs))
        with self.reading() as session:
            row = session.scalar(query)
            return None if row is None else row.to_record(with_specs)

    def count_of(self, contributor_key_id: str, statuses: frozenset[Status]) -> int:
        """How many learnwares of one contributor are at one of ``statuses`` (quotas)."""
        query = select(func.count()).where(
            LearnwareRow.contributor_key_id == contributor_key_id,
            LearnwareRow.status.in_(sorted(statuses)),
        )
        with self.reading() as session:
            return int(session.scalar(query) or 0)

    def list(
        self,
        filter: LearnwareFilter | None = None,
        page_size: int = 0,
        page_token: str = "",
        *,
        with_specs: bool = True,
        visible: Visibility | None = None,
    ) -> Page:
        """One page of learnwares in (created_at, id) order, oldest first.

        ``page_size`` 0 means DEFAULT_PAGE_SIZE; above MAX_PAGE_SIZE it is cut. The token
        is tied to the filter and ``visible``: reusing it with another filter, or a damaged
        token, raises InvalidInput. Keyset paging: rows added while paging appear at the
        end, none is skipped or repeated. ``visible`` keeps only the rows a caller may see
        (None: all); ``with_specs`` False never reads the spec bytes.
        """
        flt = filter or LearnwareFilter()
        size = _page_size(page_size)
        fingerprint = _fingerprint(flt, visible)
        query = select(LearnwareRow).where(
            *_conditions(flt), *_visible(visible), *_newest_only(flt, visible)
        )
        if page_token:
            after_at, after_id = _decode_token(page_token, fingerprint)
            query = query.where(
                or_(
                    LearnwareRow.created_at > after_at,
                    and_(LearnwareRow.created_at == after_at, LearnwareRow.id > after_id),
                )
            )
        query = query.order_by(LearnwareRow.created_at, LearnwareRow.id).limit(size + 1)
        if with_specs:
            query = query.options(selectinload(LearnwareRow.specs))
        with self.reading() as session:
            rows = session.scalars(query).all()
            items = tuple(row.to_record(with_specs) for row in rows[:size])
        token = _encode_token(items[-1], fingerprint) if len(rows) > size else ""
        return Page(items=items, next_page_token=token)

    def versions(
        self, contributor_key_id: str, name: str, *, visible: Visibility | None = None
    ) -> tuple[LearnwareRecord, ...]:
        """Every version of one (contributor, name) that ``visible`` lets through, newest
        first, without spec bytes (at most MAX_PAGE_SIZE of them: the newest)."""
        query = (
            select(LearnwareRow)
            .where(
                LearnwareRow.contributor_key_id == contributor_key_id,
                LearnwareRow.name == name,
                *_visible(visible),
            )
            .order_by(LearnwareRow.version.desc())
            .limit(MAX_PAGE_SIZE)
        )
        with self.reading() as session:
            return tuple(row.to_record(with_specs=False) for row in session.scalars(query))

    def count_download(self, learnware_id: str) -> int:
        """Add one to the learnware's download count (one atomic UPDATE, so concurrent
        fetches all count) and return the new count; NotFound if absent. ``updated_at``
        is unchanged: a download does not change the learnware."""
        with self.writing() as session:
            bumped = session.execute(
                update(LearnwareRow)
                .where(LearnwareRow.id == learnware_id)
                .values(downloads=LearnwareRow.downloads + 1)
            )
            if not bumped.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"no learnware {learnware_id!r}")
            count = session.scalar(
                select(LearnwareRow.downloads).where(LearnwareRow.id == learnware_id)
            )
            return int(count or 0)

    def set_status(
        self,
        learnware_id: str,
        status: Status,
        reason: str = "",
        *,
        key_id: str | None = None,
        with_specs: bool = True,
    ) -> LearnwareRecord:
        """Move a learnware along its life cycle (``TRANSITIONS``); FailedPrecondition
        otherwise (e.g. withdrawing twice). ``key_id`` names who asked, for the audit trail.
        Leaving PENDING ends its judgment in the queue; entering or leaving USABLE is a
        change of the feed."""
        new = Status(status)
        with self.writing() as session:
            row = _get_row(session, learnware_id, with_specs, lock=True)
            if new not in TRANSITIONS[row.status]:
                allowed = ", ".join(sorted(TRANSITIONS[row.status])) or "nothing (final)"
                raise FailedPrecondition(
                    f"learnware {learnware_id} is {row.status} and cannot become {new}; "
                    f"allowed: {allowed}"
                )
            _event(
                session,
                "learnware.status",
                learnware_id,
                key_id,
                f"{row.status} -> {new}" + (f": {reason}" if reason else ""),
            )
            old = row.status
            row.status, row.reason, row.updated_at = new, reason, utcnow()
            if old is Status.PENDING:
                dequeue(session, learnware_id)
            if new is Status.USABLE:
                record_changes(session, ChangeKind.ACCEPTED, [learnware_id])
            elif old is Status.USABLE:
                record_changes(session, ChangeKind.WITHDRAWN, [learnware_id])
            return row.to_record(with_specs)

    def specs_of(self, learnware_id: str) -> tuple[SpecRecord, ...]:
        with self.reading() as session:
            return _get_row(session, learnware_id).to_record().specs

    def iter_specs(
        self, kind: str, status: Status | None = Status.USABLE
    ) -> Iterator[tuple[str, SpecRecord]]:
        """(learnware id, spec) for every spec of ``kind`` whose learnware has ``status``
        (None: any), in id order, to load the search index. Reads in batches, each its own
        short transaction, so no transaction stays open while the caller works."""
        last = ""
        while True:
            query = (
                select(SpecRow)
                .join(LearnwareRow)
                .where(SpecRow.kind == kind, SpecRow.learnware_id > last)
                .order_by(SpecRow.learnware_id)
                .limit(_SPEC_BATCH)
            )
            if status is not None:
                query = query.where(LearnwareRow.status == Status(status))
            with self.reading() as session:
                batch = [(r.learnware_id, r.to_record()) for r in session.scalars(query)]
            yield from batch
            if len(batch) < _SPEC_BATCH:
                return
            last = batch[-1][0]

    def referenced_blobs(self) -> set[str]:
        """sha256 of every stored package whose blob is kept, for gc: any status but
        REJECTED (a rejected learnware's row stays, with its reason, but not its bytes)."""
        query = select(LearnwareRow.package_sha256).where(LearnwareRow.status != Status.REJECTED)
        with self.reading() as session:
            return set(session.scalars(query))

    # ---- keys -----------------------------------------------------------------------

    def register_key(self, record: KeyRecord) -> KeyRecord:
        """Register a key as active. AlreadyExists if it is registered and not revoked.

        A revoked key may be registered again: it becomes active with the new role and name
        and keeps its first ``created_at`` (the audit trail has both events). Its public key
        must be the stored one (InvalidInput otherwise).
        """
        try:
            with self.writing() as session:
                row = session.get(KeyRow, record.key_id)
                if row is None:
                    row = KeyRow.from_record(record)
                    session.add(row)
                    action = "key.register"
                elif not row.revoked:
                    raise AlreadyExists(f"key {record.key_id} is already registered ({row.role})")
                elif row.public_key != record.public_key:
                    raise InvalidInput(
                        f"key id {record.key_id} was registered with another public key"
                    )
                else:
                    row.revoked, row.role, row.name = False, Role(record.role), record.name
                    row.revoked_at, row.revoke_reason = None, ""
                    action = "key.reactivate"
                _event(session, action, None, record.key_id, f"role={row.role} name={row.name}")
                session.flush()
                return row.to_record()
        except DbIntegrityError:
            raise AlreadyExists(f"key {record.key_id} is already registered") from None

    def revoke_key(self, key_id: str, reason: str = "", *, by: str | None = None) -> KeyRecord:
        """Mark a key revoked (idempotent). NotFound if it was never registered.

        The key keeps when and why (``ListKeys`` shows them); the audit trail also keeps who
        revoked it (``by``, a key id); its USABLE learnwares leave the search index of every
        replica (the change feed)."""
        with self.writing() as session:
            row = session.get(KeyRow, key_id)
            if row is None:
                raise NotFound(f"no key {key_id!r} is registered")
            if not row.revoked:
                row.revoked = True
                row.revoked_at = utcnow()
                row.revoke_reason = reason
                detail = f"role={row.role} name={row.name}" + (f" by={by}" if by else "")
                _event(
                    session, "key.revoke", None, key_id, detail + (f": {reason}" if reason else "")
                )
                signed = select(LearnwareRow.id).where(
                    LearnwareRow.contributor_key_id == key_id,
                    LearnwareRow.status == Status.USABLE,
                ).order_by(LearnwareRow.id)
                record_changes(session, ChangeKind.REVOKED, session.scalars(signed).all())
            return row.to_record()

    def get_key(self, key_id: str) -> KeyRecord | None:
        """The key, revoked or not (the caller checks ``revoked``); None if unknown."""
        with self.reading() as session:
            row = session.get(KeyRow, key_id)
            return None if row is None else row.to_record()

    def list_keys(self, include_revoked: bool = False) -> tuple[KeyRecord, ...]:
        query = select(KeyRow).order_by(KeyRow.created_at, KeyRow.key_id)
        if not include_revoked:
            query = query.where(KeyRow.revoked.is_(False))
        with self.reading() as session:
            return tuple(row.to_record() for row in session.scalars(query))

    # ---- operations -----------------------------------------------------------------

    def record_event(
        self,
        action: str,
        *,
        learnware_id: str | None = None,
        key_id: str | None = None,
        detail: str = "",
    ) -> None:
        """Append to the audit trail (e.g. a refused submission, a fetch). The store itself
        records its own changes in the same transaction as the change."""
        with self.writing() as session:
            _event(session, action, learnware_id, key_id, detail)

    def events(self, *, learnware_id: str | None = None, limit: int = 100) -> tuple[Event, ...]:
        """The newest ``limit`` events, newest first, optionally of one learnware."""
        query = select(EventRow).order_by(EventRow.id.desc()).limit(max(limit, 0))
        if learnware_id is not None:
            query = query.where(EventRow.learnware_id == learnware_id)
        with self.reading() as session:
            return tuple(
                Event(r.id, r.at, r.action, r.learnware_id, r.key_id, r.detail)
                for r in session.scalars(query)
            )

    def stats(self) -> StoreStats:
        """Counts for ``lwm server stats`` (see ``StoreStats``)."""
        with self.reading() as session:
            by_status = _counts(session, LearnwareRow.status)
            keys = session.execute(
                select(KeyRow.role, KeyRow.revoked, func.count()).group_by(
                    KeyRow.role, KeyRow.revoked
                )
            ).all()
            return StoreStats(
                learnwares=sum(by_status.values()),
                by_status={str(s): by_status.get(s, 0) for s in Status},
                by_domain=_counts(session, LearnwareRow.domain),
                specs_by_kind=_counts(session, SpecRow.kind),
                keys_by_role={
                    str(r): sum(n for role, rev, n in keys if role == r and not rev) for r in Role
                },
                keys_revoked=sum(n for _, rev, n in keys if rev),
                package_bytes=int(
                    session.scalar(select(func.coalesce(func.sum(LearnwareRow.package_size), 0)))
                    or 0
                ),
                events=session.scalar(select(func.count()).select_from(EventRow)) or 0,
            )


# ---- helpers ------------------------------------------------------------------------


def _require_aware(*stamps: datetime) -> None:
    for stamp in stamps:
        if stamp.tzinfo is None:
            raise InvalidInput(f"timestamp {stamp.isoformat()} has no timezone; give UTC")


def _refuse_duplicate(session: Session, record: LearnwareRecord) -> None:
    existing = session.scalar(
        select(LearnwareRow.id).where(LearnwareRow.package_sha256 == record.package_sha256)
    )
    if existing is not None:
        raise AlreadyExists(
            f"package {record.package_sha256} is already stored as learnware {existing}"
        )
    if session.get(LearnwareRow, record.id) is not None:
        raise AlreadyExists(f"learnware id {record.id} is already taken")


def _constraint_message(record: LearnwareRecord, error: DbIntegrityError) -> str:
    kinds = [spec.kind for spec in record.specs]
    repeated = sorted({kind for kind in kinds if kinds.count(kind) > 1})
    if repeated:
        return f"learnware {record.id} has more than one spec of kind {', '.join(repeated)}"
    first_line = str(error.orig).strip().splitlines()[0] if error.orig else "constraint"
    return f"learnware {record.id} was not stored: {first_line}"


def _next_version(session: Session, record: LearnwareRecord) -> int:
    newest = session.scalar(
        select(func.max(LearnwareRow.version)).where(
            LearnwareRow.contributor_key_id == record.contributor_key_id,
            LearnwareRow.name == record.name,
        )
    )
    return int(newest or 0) + 1


def _get_row(
    session: Session, learnware_id: str, with_specs: bool = True, *, lock: bool = False
) -> LearnwareRow:
    """The row; ``lock`` holds it to the commit (PostgreSQL ``FOR UPDATE``), so two replicas
    moving one learnware at once take turns and the second sees the first's status."""
    options = [selectinload(LearnwareRow.specs)] if with_specs else []
    row = session.get(LearnwareRow, learnware_id, options=options, with_for_update=lock)
    if row is None:
        raise NotFound(f"no learnware {learnware_id!r}")
    return row


def _event(
    session: Session, action: str, learnware_id: str | None, key_id: str | None, detail: str
) -> None:
    session.add(
        EventRow(
            at=utcnow(), action=action, learnware_id=learnware_id, key_id=key_id, detail=detail
        )
    )


def _counts(session: Session, column: Any) -> dict[Any, int]:
    rows = session.execute(select(column, func.count()).group_by(column).order_by(column))
    return {key: int(n) for key, n in rows}


_Rows = type[LearnwareRow] | AliasedClass[LearnwareRow]
"""The learnwares table, or an alias of it (to compare a row with its other versions)."""


def _conditions(flt: LearnwareFilter, rows: _Rows = LearnwareRow) -> list[ColumnElement[bool]]:
    """SQL conditions for the filter's non-empty fields (but ``all_versions``)."""
    equal = {
        rows.domain: flt.domain,
        rows.task: flt.task,
        rows.base_model_id: flt.base_model_id,
        rows.license: flt.license,
        rows.status: Status(flt.status) if flt.status else None,
        rows.contributor_key_id: flt.contributor_key_id,
    }
    conditions = [column == value for column, value in equal.items() if value]
    if flt.spec_kind:
        conditions.append(
            exists().where(SpecRow.learnware_id == rows.id, SpecRow.kind == flt.spec_kind)
        )
    return conditions


def _visible(visible: Visibility | None, rows: _Rows = LearnwareRow) -> list[ColumnElement[bool]]:
    """``Visibility.allows`` as SQL: the caller's own rows, or others' at allowed statuses."""
    if visible is None or visible.others is None:
        return []
    others = rows.status.in_(sorted(visible.others))
    if visible.own_key_id is None:
        return [others]
    return [or_(rows.contributor_key_id == visible.own_key_id, others)]


def _newest_only(flt: LearnwareFilter, visible: Visibility | None) -> list[ColumnElement[bool]]:
    """Unless ``flt.all_versions``: no newer version of the row's (contributor, name) passes
    the same filter and visibility (the unique (contributor, name, version) index finds it)."""
    if flt.all_versions:
        return []
    newer = aliased(LearnwareRow)
    return [
        ~exists().where(
            newer.contributor_key_id == LearnwareRow.contributor_key_id,
            newer.name == LearnwareRow.name,
            newer.version > LearnwareRow.version,
            *_conditions(flt, newer),
            *_visible(visible, newer),
        )
    ]


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidInput(f"page_size must be >= 0, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _fingerprint(flt: LearnwareFilter, visible: Visibility | None = None) -> str:
    """What a page token is tied to (stable across processes: no set order in it)."""
    others = None if visible is None or visible.others is None else sorted(visible.others)
    scope = None if visible is None else (visible.own_key_id, others)
    return hashlib.sha256(repr((flt, scope)).encode()).hexdigest()[:12]


def _encode_token(last: LearnwareRecord, fingerprint: str) -> str:
    payload = {"v": 1, "t": last.created_at.isoformat(), "i": last.id, "f": fingerprint}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, fingerprint: str) -> tuple[datetime, str]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        version, at = payload["v"], datetime.fromisoformat(payload["t"])
        last_id, token_fingerprint = str(payload["i"]), payload["f"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        version, at = None, None
    if version != 1 or at is None or at.tzinfo is None:
        raise InvalidInput("page_token is not one this server gave out")
    if token_fingerprint != fingerprint:
        raise InvalidInput("page_token belongs to a listing with other filters")
    return at, last_id
