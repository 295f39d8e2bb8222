"""Watching processes from tests (Linux ``/proc``): children, smoke runs, liveness."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout_s: float, every_s: float = 0.1) -> T:
    """``probe()`` once it is truthy, or its last (falsy) value after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every_s)
    return probe()


def child_pids(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def smoke_pids(parent: int) -> list[int]:
    """``parent``'s children that are smoke runs (``python -m server.smoke``)."""
    found = []
    for child in child_pids(parent):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server.smoke" in command:
            found.append(child)
    return found


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (or is stopped); a zombie is not alive."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def is_confined(pid: int) -> bool:
    """Whether smoke run ``pid`` has confined itself (``server.sandbox.confine``): its CPU
    time limit is set, and it set its parent-death signal before that."""
    try:
        limits = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return False
    line = next((li for li in limits.splitlines() if li.startswith("Max cpu time")), "")
    return bool(line) and line.split()[3] != "unlimited"
