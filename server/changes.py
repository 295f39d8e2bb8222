"""The change feed: every replica's search index follows the database (DESIGN §7, scale-out).

Each change that puts a learnware into the search index or takes it out (``ChangeKind``:
ACCEPTED, WITHDRAWN, REVOKED) appends a row to ``changes`` in the transaction of the change
itself (``record_changes``, called by the store), so the feed never says more or less than
what committed. Ids grow in commit order: on PostgreSQL the writers queue on a
transaction-scoped advisory lock taken just before the insert and held to the commit, so
no transaction commits a smaller id after a reader saw a larger one (SQLite has one writer
at a time anyway). A reader that applied change N has therefore seen every change up to N.

``FeedFollower`` is one replica's reader: every ``poll_s``, or at once when PostgreSQL's
``NOTIFY`` says a change committed, it reads the changes after the last one it applied and
hands each learnware id to ``apply``, which reads the learnware as it is *now* and publishes
or unpublishes it. Applying the present rather than the change makes it idempotent: a
change applied twice, or late, does no harm, and the last change of a learnware is applied
after its last commit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from server.db import ChangeRow, utcnow
from server.records import ChangeKind, IndexLag

if TYPE_CHECKING:
    from server.store import Store

log = logging.getLogger("lwm.changes")

CHANNEL = "lwm_changes"
"""The PostgreSQL NOTIFY channel a commit with changes signals on."""

_FEED_LOCK_ID = 0x4C574E  # the PostgreSQL advisory lock change writers queue on
_BATCH = 500


@dataclass(frozen=True)
class Change:
    id: int
    at: datetime
    learnware_id: str
    kind: ChangeKind


def record_changes(session: Session, kind: ChangeKind, learnware_ids: Iterable[str]) -> None:
    """Append one change of ``kind`` per learnware to the feed, in the caller's transaction.

    The feed's lock is held from here to the commit, so it must be the transaction's last
    lock: the caller's own row writes are flushed first (a writer holding the feed lock and
    waiting for a row another writer holds, while that one waits for the feed lock, would
    deadlock)."""
    ids = list(learnware_ids)
    if not ids:
        return
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _FEED_LOCK_ID})
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})
    now = utcnow()
    session.add_all(ChangeRow(at=now, learnware_id=lid, kind=kind) for lid in ids)
    session.flush()


class ChangeFeed:
    """Reads of the feed (each its own short transaction)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def newest(self) -> int:
        """The id of the newest committed change (0: none yet)."""
        with self._store.reading() as session:
            return int(session.scalar(select(func.max(ChangeRow.id))) or 0)

    def get(self, change_id: int) -> Change | None:
        """Change ``change_id`` (None: not in this feed)."""
        with self._store.reading() as session:
            r = session.get(ChangeRow, change_id)
            return None if r is None else Change(r.id, r.at, r.learnware_id, r.kind)

    def after(self, applied: int, limit: int = _BATCH) -> list[Change]:
        """The changes after id ``applied``, oldest first, at most ``limit``."""
        query = select(ChangeRow).where(ChangeRow.id > applied).order_by(ChangeRow.id).limit(limit)
        with self._store.reading() as session:
            return [Change(r.id, r.at, r.learnware_id, r.kind) for r in session.scalars(query)]

    def lag(self, applied: int) -> IndexLag:
        """How far a reader that applied up to ``applied`` is behind (``IndexLag``)."""
        with self._store.reading() as session:
            newest, oldest = session.execute(
                select(func.max(ChangeRow.id), func.min(ChangeRow.at)).where(
                    ChangeRow.id > applied
                )
            ).one()
        if newest is None:
            return IndexLag(applied, applied, 0.0)
        return IndexLag(applied, int(newest), max(0.0, (utcnow() - oldest).total_seconds()))


class FeedFollower:
    """One replica's reader of the feed, in a daemon thread (``start``/``stop``)."""

    def __init__(
        self,
        feed: ChangeFeed,
        apply: Callable[[str], None],
        *,
        poll_s: float,
        listen_url: str | None = None,
    ) -> None:
        """``listen_url``: a PostgreSQL URL to LISTEN on (None: poll only)."""
        self._feed, self._apply, self._poll_s = feed, apply, poll_s
        self._stopped = threading.Event()
        self._wake = _Listener(listen_url, self._stopped)
        self._thread: threading.Thread | None = None
        self.applied = 0

    def start(self, load: Callable[[], None]) -> None:
        """Listen, note the feed's head, ``load`` everything (the index from the learnwares
        table), then follow from that head: a change committed while ``load`` ran is applied
        again, which is harmless, and none is missed (nor its NOTIFY)."""
        self._wake.listen()
        self.applied = self._feed.newest()
        load()
        self._thread = threading.Thread(target=self._run, name="lwm-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self._poll_s + 1)

    def lag(self) -> IndexLag:
        return self._feed.lag(self.applied)

    def catch_up(self) -> int:
        """Apply every change committed after the last one applied; how many there were."""
        done = 0
        while True:
            batch = self._feed.after(self.applied)
            for change in batch:
                self._apply(change.learnware_id)
                self.applied = change.id
            done += len(batch)
            if len(batch) < _BATCH:
                return done

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.catch_up()
            except Exception:  # the database may be away for a while: retry, keep serving
                log.exception("reading the change feed failed; retrying")
            self._wake.wait(self._poll_s)
        self._wake.close()


class _Listener:
    """Waits up to ``timeout`` for a NOTIFY on ``CHANNEL`` (PostgreSQL), or for ``stopped``.

    A plain wait without a URL, and whenever the listening connection fails (it is opened
    again at the next wait): NOTIFY only makes the feed faster, polling keeps it right."""

    def __init__(self, url: str | None, stopped: threading.Event) -> None:
        self._url, self._stopped = url, stopped
        self._connection: Any = None

    def listen(self) -> bool:
        """Start listening now (NOTIFYs from here on wake the next ``wait``); False when
        there is nothing to listen to or the connection failed (then: polling)."""
        try:
            return self._connect() is not None
        except Exception as error:
            log.warning("listening for changes failed (%s); polling", error)
            self.close()
            return False

    def wait(self, timeout: float) -> None:
        if not self.listen():
            self._stopped.wait(timeout)
            return
        try:
            for _ in self._connection.notifies(timeout=timeout, stop_after=1):
                pass
        except Exception as error:
            log.warning("listening for changes failed (%s); polling", error)
            self.close()
            self._stopped.wait(timeout)

    def _connect(self) -> Any:
        if self._connection is None and self._url is not None:
            import psycopg

            self._connection = psycopg.connect(self._url, autocommit=True)
            self._connection.execute(f"LISTEN {CHANNEL}")
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def listen_url(store: Store) -> str | None:
    """The libpq URL of the store's PostgreSQL database for LISTEN (None on SQLite)."""
    url = store.engine.url
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)
