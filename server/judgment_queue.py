"""The judgment queue: PENDING learnwares waiting for a smoke run, or under one, kept in the
database so that any replica judges them and none is lost with a replica that dies.

One row per PENDING learnware (``judgments``), made in the transaction that stores the
learnware (``enqueue``) and removed in the one that concludes it (``dequeue``); the store
does both. A replica claims a row by writing its name and a lease into it (``claim``:
``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, so replicas claiming at once take
different rows and never wait for each other; SQLite's one writer at a time gives the same
without it), renews the lease while it judges (``holding``: a heartbeat every third of the
lease), and concludes. A replica that dies stops renewing; once its lease has run out the
row is free, and the next claim of any replica takes it. An upload's own judgment is
claimed by the replica that received it in the same transaction that stores it (a
``Lease`` given to ``Store.add_learnware``) and runs inside the Submit call, as before.

A replica that stalls past its lease while another takes the job means two judgments of
one learnware: the later conclusion finds it no longer PENDING and keeps the earlier one
(``Market._conclude``). Leases are compared with the replicas' clocks: keep them in sync
(NTP) to well under the lease.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from server.db import JudgmentRow, utcnow
from shared.errors import Unavailable

if TYPE_CHECKING:
    from server.store import Store

log = logging.getLogger("lwm.judgments")

MAX_ATTEMPTS = 5
"""Claims of one learnware before the queue stops handing it out (a judgment that keeps
failing for the market's own fault, e.g. a missing blob); a start with no other replica
running frees them again (``free_all``), as a restart of the single server did."""


def replica_name() -> str:
    """A name for this process, unique among replicas: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Lease:
    """Who holds a judgment (``owner``) and how long each claim or heartbeat lasts
    (``ReplicaSettings.judgment_lease_s``: how long a dead replica's judgment waits)."""

    owner: str
    seconds: float

    def until(self) -> datetime:
        return utcnow() + timedelta(seconds=self.seconds)


def enqueue(session: Session, learnware_id: str, lease: Lease | None) -> None:
    """Queue a PENDING learnware's judgment in the caller's transaction; claimed by
    ``lease`` at once when given (the receiving replica judges its upload itself)."""
    session.add(
        JudgmentRow(
            learnware_id=learnware_id,
            enqueued_at=utcnow(),
            owner=None if lease is None else lease.owner,
            lease_until=None if lease is None else lease.until(),
            attempts=0 if lease is None else 1,
        )
    )


def dequeue(session: Session, learnware_id: str) -> None:
    """Drop a judgment from the queue in the caller's transaction (its learnware left PENDING)."""
    session.execute(delete(JudgmentRow).where(JudgmentRow.learnware_id == learnware_id))


class JudgmentQueue:
    """This replica's side of the queue: claim, renew, release (each one short transaction)."""

    def __init__(self, store: Store, lease: Lease) -> None:
        self._store, self.lease = store, lease

    def claim(self) -> str | None:
        """Take the oldest free judgment (never claimed, or its lease ran out) for this
        replica; its learnware id, or None when there is none."""
        now = utcnow()
        query = (
            select(JudgmentRow)
            .where(
                or_(JudgmentRow.owner.is_(None), JudgmentRow.lease_until < now),
                JudgmentRow.attempts < MAX_ATTEMPTS,
            )
            .order_by(JudgmentRow.enqueued_at, JudgmentRow.learnware_id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        with self._store.writing() as session:
            row = session.scalar(query)
            if row is None:
                return None
            row.owner, row.lease_until = self.lease.owner, self.lease.until()
            row.attempts += 1
            return row.learnware_id

    def renew(self, learnware_id: str) -> bool:
        """Extend this replica's lease on a judgment; False if it is no longer ours (taken
        by another replica after it ran out, or concluded)."""
        return self._update(learnware_id, lease_until=self.lease.until())

    def release(self, learnware_id: str) -> bool:
        """Give a judgment back at once (the replica is stopping): the next claim takes it."""
        return self._update(learnware_id, owner=None, lease_until=None)

    def free_all(self) -> int:
        """Free every judgment and reset its attempts; only when no other replica runs
        (a lone start), which then judges what a stop or crash left. How many were held."""
        with self._store.writing() as session:
            held = session.scalar(
                select(func.count()).where(JudgmentRow.owner.is_not(None))
            )
            session.execute(update(JudgmentRow).values(owner=None, lease_until=None, attempts=0))
            return int(held or 0)

    def _update(self, learnware_id: str, **values: object) -> bool:
        with self._store.writing() as session:
            done = session.execute(
                update(JudgmentRow)
                .where(
                    JudgmentRow.learnware_id == learnware_id,
                    JudgmentRow.owner == self.lease.owner,
                )
                .values(**values)
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    @contextmanager
    def holding(self, learnware_id: str) -> Iterator[None]:
        """Renew the lease on a claimed judgment while the block judges it; when the block
        raises ``Unavailable`` (the replica is stopping) the judgment is released for
        another replica at once."""
        stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(learnware_id, stop), name="lwm-lease", daemon=True
        )
        beat.start()
        try:
            yield
        except Unavailable:
            stop.set()
            beat.join()
            self.release(learnware_id)
            raise
        finally:
            stop.set()

    def _heartbeat(self, learnware_id: str, stop: threading.Event) -> None:
        while not stop.wait(self.lease.seconds / 3):
            try:
                if not self.renew(learnware_id):
                    return  # concluded meanwhile, or another replica has it now
            except Exception:  # the database away for a moment: try again at the next beat
                log.warning("renewing the lease on %s failed", learnware_id, exc_info=True)


class JudgingWorker:
    """A replica's taker of queued judgments, in a daemon thread: claims one at a time and
    judges it with ``judge(learnware_id)`` under its lease; polls every ``poll_s`` when the
    queue is empty."""

    def __init__(
        self, queue: JudgmentQueue, judge: Callable[[str], object], poll_s: float
    ) -> None:
        self._queue, self._judge, self._poll_s = queue, judge, poll_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lwm-judging", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Take no more; the judgment running now ends when the checker closes (its
        ``Unavailable`` releases it)."""
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            learnware_id = self._claim()
            if learnware_id is None:
                self._stopped.wait(self._poll_s)
                continue
            try:
                with self._queue.holding(learnware_id):
                    self._judge(learnware_id)
            except Unavailable:
                return  # stopping: released for another replica
            except Exception:
                log.exception(
                    "judging learnware %s failed; it is judged again once its lease runs out",
                    learnware_id,
                )

    def _claim(self) -> str | None:
        try:
            return self._queue.claim()
        except Exception:
            log.exception("claiming a judgment failed; retrying")
            return None
