"""A small, bounded cache of registered keys, so authentication does not hit the database
on every RPC.

Authentication looks a key up *before* it checks the request's signature, so the key ids it
sees are chosen by anyone who can open a connection. The cache therefore keeps only keys
that are registered (an unknown id costs one database read and leaves nothing behind) and
at most ``capacity`` of them, dropping the least recently used first: its memory is bounded
whatever ids arrive.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from server.records import KeyRecord

KEY_CACHE_S = 5.0
"""How long a cached key is trusted; revocations through another server sharing the
database take effect within this time (through this server: at once, see ``drop``)."""

KEY_CACHE_CAPACITY = 4096


class KeyCache:
    """``get(key_id)``: the registered key, from memory when fresh, else from ``load``."""

    def __init__(
        self,
        load: Callable[[str], KeyRecord | None],
        *,
        ttl_s: float = KEY_CACHE_S,
        capacity: int = KEY_CACHE_CAPACITY,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._load, self._ttl_s, self._capacity = load, ttl_s, capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, KeyRecord]] = OrderedDict()

    def get(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(key_id)
            if cached is not None and now - cached[0] < self._ttl_s:
                self._entries.move_to_end(key_id)
                return cached[1]
        record = self._load(key_id)  # outside the lock: a slow read blocks no other caller
        with self._lock:
            if record is None:  # unknown ids are never kept (anyone can send one)
                self._entries.pop(key_id, None)
                return None
            self._entries[key_id] = (now, record)
            self._entries.move_to_end(key_id)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return record

    def drop(self, key_id: str) -> None:
        """Forget one key (it was registered again or revoked here)."""
        with self._lock:
            self._entries.pop(key_id, None)

    def __len__(self) -> int:
        return len(self._entries)
