"""How many calls one address and one key may have in flight (``CallLimits``).

The address limit is taken before the request is read, so it holds callers without a key:
64 calls that open and never send cost a stalling address 64 of its own slots, nobody
else's. The key limits are taken once the call is authenticated. Counters live only while
a call is in flight (an address or key with none in flight has no entry), so memory follows
the calls in flight, never the number of callers seen.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from urllib.parse import unquote

from server.settings import CallLimits
from shared.errors import ResourceExhausted


def peer_address(peer: str) -> str:
    """The address part of a gRPC peer string, without the port:
    ``ipv4:10.0.0.7:51234`` -> ``10.0.0.7``, ``ipv6:%5B::1%5D:51234`` (gRPC escapes the
    brackets) -> ``::1``; other kinds (``unix:...``) are kept whole."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    host = unquote(rest).rpartition(":")[0] or rest
    return host.strip("[]")


class _Counter:
    """In-flight counts by name, each refused past ``limit``; entries vanish at zero."""

    def __init__(self, what: str, limit: int) -> None:
        self._what, self._limit = what, limit
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        with self._lock:
            count = self._counts.get(name, 0)
            if count >= self._limit:
                raise ResourceExhausted(
                    f"{self._what} {name}: {count} calls in flight, the limit is "
                    f"{self._limit}: retry when one has finished"
                )
            self._counts[name] = count + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._counts[name] - 1
                if left:
                    self._counts[name] = left
                else:
                    del self._counts[name]

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


class Admission:
    """The per-address and per-key limits of one server (safe to share between threads)."""

    def __init__(self, limits: CallLimits) -> None:
        self._addresses = _Counter("address", limits.max_calls_per_address)
        self._keys = _Counter("key", limits.max_calls_per_key)
        self._streams = _Counter("uploads and downloads of key", limits.max_streams_per_key)

    def address(self, peer: str) -> contextlib.AbstractContextManager[None]:
        """Hold one call slot of ``peer``'s address; ``ResourceExhausted`` when none is free."""
        return self._addresses.hold(peer_address(peer))

    @contextlib.contextmanager
    def key(self, key_id: str, *, stream: bool = False) -> Iterator[None]:
        """Hold one call slot of ``key_id`` (and one stream slot for an upload/download)."""
        with self._keys.hold(key_id):
            if not stream:
                yield
                return
            with self._streams.hold(key_id):
                yield

    def in_flight(self) -> tuple[int, int]:
        """(calls holding an address slot, calls holding a key slot): what is in flight."""
        return self._addresses.total(), self._keys.total()
