"""A call's messages under deadlines, on ``grpc.aio``; and a bridge for synchronous code.

Every wait on the client is bounded: the first message (``first_message``), each later
message of an upload and each write of a download (the idle deadline), and a whole stream
(its end time). A caller that stops sending or reading is cut with ``DeadlineExceeded``
instead of holding its call open for as long as it likes.

``SyncStream`` hands an upload's remaining messages to the market's synchronous receive
code, which runs in a worker thread: each ``next`` takes a message the event loop has read
and asks it for the one after (read-ahead: the loop reads while the worker checks and
writes), under the same deadlines, counted from the moment the message is asked for.
``close`` ends it from the loop when the call is over (finished, failed or cancelled by
the client), so the worker stops at its next read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Generic, TypeVar

from grpc import aio

from shared.errors import DeadlineExceeded, InvalidInput, Unavailable

M = TypeVar("M")
_END = object()  # the client closed its side of the stream


async def first_message(requests: AsyncIterator[M], timeout_s: float, what: str = "request") -> M:
    """The call's first message; ``DeadlineExceeded`` if it is not there within ``timeout_s``
    of this call, ``InvalidInput`` if the client closed the stream without sending it."""
    message = await _next(requests, timeout_s, f"no {what} within {timeout_s:g} s")
    if message is _END:
        raise InvalidInput(f"the call ended before its {what}")
    return message  # type: ignore[return-value]


async def _next(requests: AsyncIterator[M], timeout_s: float, late: str) -> M | object:
    try:
        async with asyncio.timeout(timeout_s):  # no task per wait, unlike wait_for
            return await anext(requests)
    except StopAsyncIteration:
        return _END
    except TimeoutError:
        raise DeadlineExceeded(late) from None


class CallEnded(Exception):
    """The client cancelled the call or went away: nobody is left to answer."""


async def write(context: aio.ServicerContext, message: object, timeout_s: float) -> None:
    """Send one message of a download; ``DeadlineExceeded`` when the client has not taken
    it within ``timeout_s`` (a reader that stopped reading holds the call no longer),
    ``CallEnded`` when the client cancelled meanwhile."""
    try:
        async with asyncio.timeout(timeout_s):
            await context.write(message)
    except TimeoutError:
        raise DeadlineExceeded(f"the client read nothing for {timeout_s:g} s") from None
    except Exception as err:  # gRPC's (private) error for a write to a call that is over:
        # the message is ours and well formed, so the call ending under us is the only cause
        raise CallEnded(f"the call ended during a write ({type(err).__name__})") from err


class Deadline:
    """The end of a whole stream, and the wait allowed for its next message."""

    def __init__(self, idle_s: float, whole_s: float) -> None:
        self.idle_s, self.whole_s = idle_s, whole_s
        self._ends_at = time.monotonic() + whole_s

    def next_wait(self) -> tuple[float, str]:
        """(seconds to wait for the next message, the reason if that runs out)."""
        left = self._ends_at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"the stream took longer than {self.whole_s:g} s")
        if left < self.idle_s:
            return left, f"the stream took longer than {self.whole_s:g} s"
        return self.idle_s, f"no message for {self.idle_s:g} s"


class SyncStream(Generic[M]):
    """The rest of a client stream as a plain iterator, for a worker thread (see module)."""

    def __init__(
        self, requests: AsyncIterator[M], loop: asyncio.AbstractEventLoop, deadline: Deadline
    ) -> None:
        self._requests, self._loop, self._deadline = requests, loop, deadline
        self._pending: concurrent.futures.Future[M | object] | None = None
        self._closed = False

    def __iter__(self) -> Iterator[M]:
        return self

    def __next__(self) -> M:
        if self._closed:
            raise Unavailable("the call is over")
        pending = self._pending or self._ask()
        self._pending = None
        try:
            message = pending.result()
        except concurrent.futures.CancelledError:
            raise Unavailable("the call is over") from None
        if message is _END:
            raise StopIteration
        with contextlib.suppress(DeadlineExceeded):  # raised by the next call instead
            self._pending = self._ask()  # read ahead, while the worker handles this one
        return message  # type: ignore[return-value]

    def _ask(self) -> concurrent.futures.Future[M | object]:
        """Have the loop read the next message, under the deadlines as of now."""
        wait, late = self._deadline.next_wait()
        return asyncio.run_coroutine_threadsafe(_next(self._requests, wait, late), self._loop)

    def close(self) -> None:
        """End the stream for the worker (from the loop): a read in progress is cancelled."""
        self._closed = True
        if self._pending is not None:
            self._pending.cancel()
