"""Database set-up for the market: table mappings, the engine and the schema migration.

One schema, two backends. SQLite (a file, the default) and PostgreSQL (by URL, shared by
stateless servers) must behave the same, so the mappings avoid what only one of them does:
strings are unbounded (PostgreSQL would refuse an over-long VARCHAR, SQLite would not),
enums are VARCHAR + CHECK rather than native types, and timestamps go through ``UTCDateTime``
(SQLite forgets the timezone; PostgreSQL returns the session's zone).

The schema is created and upgraded by Alembic (``server/migrations``) when a store opens;
``migrate`` holds a PostgreSQL advisory lock while it runs, so servers that start together
do not race to create the same tables.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from server.records import ChangeKind, KeyRecord, LearnwareRecord, Role, SpecRecord, Status
from shared.errors import InvalidInput

SQLITE_BUSY_TIMEOUT_S = 60.0
"""How long a SQLite writer waits for another writer before "database is locked".

Writes are short (one learnware and its specs), so this is only reached when something
is badly wrong; it must exceed the worst queue of concurrent uploads."""

BEGIN_OPTION = "lwm_sqlite_begin"
"""Execution option naming the SQLite ``BEGIN`` mode of a transaction (see ``_sqlite_begin``)."""

_MIGRATION_LOCK_ID = 0x4C574D  # "LWM": the PostgreSQL advisory lock held while migrating

_LEARNWARE_COLUMNS = tuple(f.name for f in fields(LearnwareRecord) if f.name != "specs")
"""Every LearnwareRecord field but ``specs`` is a column of the same name."""

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both backends.

    Naive datetimes are refused on the way in: their meaning depends on the machine that
    made them, and guessing would shift a learnware's ``created_at`` by hours.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; use timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite stores what we gave it: UTC without the zone
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _enum(cls: type[Status] | type[Role] | type[ChangeKind], name: str) -> Enum:
    return Enum(cls, name=name, native_enum=False, create_constraint=True, length=16)


class LearnwareRow(Base):
    __tablename__ = "learnwares"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    domain: Mapped[str] = mapped_column(String, index=True)
    task: Mapped[str] = mapped_column(String)
    description: Mapped[str] = mapped_column(Text)
    license: Mapped[str] = mapped_column(String)
    base_model_id: Mapped[str] = mapped_column(String, index=True)
    base_model_sha256: Mapped[str] = mapped_column(String)
    contributor_key_id: Mapped[str] = mapped_column(String, index=True)
    contributor_name: Mapped[str] = mapped_column(Text)
    status: Mapped[Status] = mapped_column(_enum(Status, "status"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    package_sha256: Mapped[str] = mapped_column(String, unique=True)
    package_size: Mapped[int] = mapped_column(BigInteger)
    manifest_json: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    downloads: Mapped[int] = mapped_column(BigInteger, server_default="0")

    specs: Mapped[list[SpecRow]] = relationship(
        back_populates="learnware", cascade="all, delete-orphan", order_by="SpecRow.kind"
    )

    # List pages walk (created_at, id): one index serves both the order and the keyset seek.
    # Versions are unique per (contributor, name); the same index finds a name's newest.
    __table_args__ = (
        Index(None, "created_at", "id"),
        Index(None, "contributor_key_id", "name", "version", unique=True),
    )

    @classmethod
    def from_record(cls, record: LearnwareRecord) -> LearnwareRow:
        """The row of a record, without its specs (the caller adds them)."""
        row = cls(**{name: getattr(record, name) for name in _LEARNWARE_COLUMNS})
        row.status = Status(record.status)
        row.created_at = record.created_at.astimezone(UTC)
        row.updated_at = record.updated_at.astimezone(UTC)
        return row

    def to_record(self, with_specs: bool = True) -> LearnwareRecord:
        """The plain record; ``with_specs`` False leaves ``specs`` empty (and unloaded)."""
        values: dict[str, Any] = {name: getattr(self, name) for name in _LEARNWARE_COLUMNS}
        values.update(
            status=Status(self.status),
            manifest_json=bytes(self.manifest_json),
            signature=bytes(self.signature),
        )
        specs = tuple(spec.to_record() for spec in self.specs) if with_specs else ()
        return LearnwareRecord(**values, specs=specs)


class SpecRow(Base):
    __tablename__ = "specs"

    learnware_id: Mapped[str] = mapped_column(
        ForeignKey("learnwares.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String, primary_key=True, index=True)
    schema_id: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)
    spec_bytes: Mapped[bytes] = mapped_column(LargeBinary)

    learnware: Mapped[LearnwareRow] = relationship(back_populates="specs")

    @classmethod
    def from_record(cls, learnware_id: str, spec: SpecRecord) -> SpecRow:
        return cls(
            learnware_id=learnware_id,
            kind=spec.kind,
            schema_id=spec.schema_id,
            dim=spec.dim,
            spec_bytes=spec.spec_bytes,
        )

    def to_record(self) -> SpecRecord:
        return SpecRecord(
            kind=self.kind,
            schema_id=self.schema_id,
            dim=self.dim,
            spec_bytes=bytes(self.spec_bytes),
        )


class KeyRow(Base):
    __tablename__ = "keys"

    key_id: Mapped[str] = mapped_column(String, primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))
    name: Mapped[str] = mapped_column(Text)
    revoked: Mapped[bool] = mapped_column(Boolean(create_constraint=False), default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoke_reason: Mapped[str] = mapped_column(Text, default="", server_default="")

    @classmethod
    def from_record(cls, record: KeyRecord) -> KeyRow:
        """A new, active key row (``revoked`` in the record is ignored)."""
        return cls(
            key_id=record.key_id,
            public_key=record.public_key,
            role=Role(record.role),
            name=record.name,
            revoked=False,
            created_at=(record.created_at or utcnow()).astimezone(UTC),
        )

    def to_record(self) -> KeyRecord:
        return KeyRecord(
            key_id=self.key_id,
            public_key=bytes(self.public_key),
            role=Role(self.role),
            name=self.name,
            revoked=self.revoked,
            created_at=self.created_at,
            revoked_at=self.revoked_at,
            revoke_reason=self.revoke_reason or "",
        )


class EventRow(Base):
    """Append-only audit trail. No foreign keys: an event may name a learnware that was
    refused before it was ever stored, and events must outlive what they describe."""

    __tablename__ = "events"

    # BIGINT on PostgreSQL; INTEGER on SQLite, where only that type aliases the rowid.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    learnware_id: Mapped[str | None] = mapped_column(String, index=True)
    key_id: Mapped[str | None] = mapped_column(String)
    action: Mapped[str] = mapped_column(String)
    detail: Mapped[str] = mapped_column(Text)


class ChangeRow(Base):
    """One entry of the change feed the replicas' indexes follow (``server.changes``).

    Written in the transaction of the change itself, and numbered in commit order (the
    writers queue on a lock for the number), so a reader that has seen id N has seen every
    change up to N. No foreign key, as for events: the feed outlives what it names."""

    __tablename__ = "changes"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    learnware_id: Mapped[str] = mapped_column(String)
    kind: Mapped[ChangeKind] = mapped_column(_enum(ChangeKind, "kind"))


class JudgmentRow(Base):
    """A PENDING learnware's place in the judgment queue (``server.judgment_queue``): free
    when ``owner`` is None or its lease ran out, else a replica is judging it now."""

    __tablename__ = "judgments"

    learnware_id: Mapped[str] = mapped_column(
        ForeignKey("learnwares.id", ondelete="CASCADE"), primary_key=True
    )
    enqueued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    owner: Mapped[str | None] = mapped_column(String, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")


def create_db_engine(url: str, *, pool_size: int | None = None) -> Engine:
    """An engine tuned for many short sessions from gRPC worker threads.

    SQLite: WAL (readers never wait for the writer), foreign keys on, ``synchronous=FULL``
    (a committed submission survives a power cut, not only a killed process), a long busy
    timeout, and ``BEGIN IMMEDIATE`` for write transactions so two writers queue on the
    busy timeout instead of failing at once when both upgrade from read to write.
    PostgreSQL: pre-ping, so a restarted database costs one retry, not a failed call.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise InvalidInput(f"not a database URL: {url!r} ({error})") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise InvalidInput(f"give SQLite a file path (sqlite:///DIR/market.db), not {url!r}")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
            pool_size=pool_size or 8,
            max_overflow=64,  # SQLite connections are a file handle each: cheap
            pool_timeout=SQLITE_BUSY_TIMEOUT_S,
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(
        parsed,
        pool_size=pool_size or 10,
        max_overflow=20,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling would BEGIN lazily and DEFERRED; we begin
        # ourselves (below) to choose the mode.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (a persistent setting: done once per file, checked after).

    The switch needs the file to itself and SQLite answers "database is locked" at once,
    without waiting on the busy timeout, while another connection is switching it too
    (servers starting together on a new file); so wait and retry here.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    if str(mode).lower() != "wal":
        raise InvalidInput(
            f"SQLite cannot use write-ahead logging here (journal mode {mode}); "
            "put the database on a local file system"
        )


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database to the newest schema (``alembic upgrade head``), in one transaction.

    DDL is transactional on both backends (SQLite's driver is in autocommit mode here, so
    it does not commit behind our back before each CREATE): a crash mid-migration leaves the
    old schema. Concurrent openers queue: PostgreSQL on an advisory lock, SQLite on
    ``BEGIN IMMEDIATE``; the second finds the schema at head and does nothing.
    ``revision`` stops at an older schema (tests of an upgrade).
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with (
        engine.connect() as connection,
        connection.execution_options(**{BEGIN_OPTION: "IMMEDIATE"}).begin(),
    ):
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
