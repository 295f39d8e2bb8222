"""The judging gate: how many smoke runs at once, how many uploads may wait for one.

Each smoke run is a subprocess that loads a base model (about a GiB each for SmolLM2-135M),
so uploads arriving together must not start one each. ``JudgingGate`` bounds both sides:

* ``place()``: a Submit takes a place before any of its bytes are received and keeps it to
  the end; at most ``max_running + max_waiting`` are held at once, and the next Submit is
  refused with RESOURCE_EXHAUSTED (nothing of it received, nothing left behind).
* ``running()``: a smoke run waits for one of ``max_running`` slots; the slot records the
  run's process (``Slot.attach``), so that
* ``close()`` (the market stopping) kills every running smoke process group at once and
  refuses new runs with UNAVAILABLE. Their learnwares stay PENDING and are judged again
  after the next start (``Market.rejudge``): a stop never waits for a smoke run.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from server.sandbox import kill_group
from shared.errors import InvalidInput, ResourceExhausted, Unavailable

_STOPPING = "the market is stopping; the learnware stays PENDING and is judged after its restart"


class Slot:
    """One running smoke run's place; ``attach`` its process so ``close`` can kill it."""

    def __init__(self, gate: JudgingGate) -> None:
        self._gate = gate
        self.process: subprocess.Popen[bytes] | None = None

    def attach(self, process: subprocess.Popen[bytes]) -> None:
        """Record the run's process; kills it at once if the gate closed meanwhile."""
        with self._gate._changed:
            self.process = process
            if not self._gate.closed:
                return
        kill_group(process)


class JudgingGate:
    """At most ``max_running`` smoke runs at once and ``max_waiting`` uploads waiting.

    Thread-safe; one per market (the ``Checker`` holds it)."""

    def __init__(self, max_running: int = 1, max_waiting: int = 8) -> None:
        if max_running < 1 or max_waiting < 0:
            raise InvalidInput(
                f"max_running must be >= 1 and max_waiting >= 0, got {max_running}, {max_waiting}"
            )
        self.max_running, self.max_waiting = max_running, max_waiting
        self._changed = threading.Condition()
        self._placed = 0
        self._slots: set[Slot] = set()
        self.closed = False

    @property
    def placed(self) -> int:
        """Uploads holding a place now (running or waiting)."""
        with self._changed:
            return self._placed

    @contextmanager
    def place(self) -> Iterator[None]:
        """A place in line for one upload; ResourceExhausted when all are taken."""
        with self._changed:
            if self.closed:
                raise Unavailable(_STOPPING)
            capacity = self.max_running + self.max_waiting
            if self._placed >= capacity:
                raise ResourceExhausted(
                    f"{self._placed} uploads are being judged or waiting for it (the limit "
                    f"is {capacity}); try again later"
                )
            self._placed += 1
        try:
            yield
        finally:
            with self._changed:
                self._placed -= 1

    @contextmanager
    def running(self) -> Iterator[Slot]:
        """Wait for a run slot; Unavailable when the gate is (or gets) closed, also when
        it closed during the run (its process was killed: the result means nothing)."""
        slot = Slot(self)
        with self._changed:
            self._changed.wait_for(lambda: self.closed or len(self._slots) < self.max_running)
            if self.closed:
                raise Unavailable(_STOPPING)
            self._slots.add(slot)
        try:
            yield slot
        finally:
            with self._changed:
                self._slots.discard(slot)
                self._changed.notify()
        if self.closed:
            raise Unavailable(_STOPPING)

    def close(self) -> None:
        """Kill every running smoke process group and refuse new runs and places."""
        with self._changed:
            self.closed = True
            processes = [s.process for s in self._slots if s.process is not None]
            self._changed.notify_all()
        for process in processes:
            if process.poll() is None:
                kill_group(process)
