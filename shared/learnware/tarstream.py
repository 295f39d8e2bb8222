"""A learnware tar unpacked and checked as its bytes arrive, in one pass (the market's Submit).

``unpack_tar`` reads a finished file; ``TarStream`` takes the same tar piece by piece, as
gRPC delivers it, and by the last byte knows everything the market used to learn by
re-reading the upload three times: each member passed ``tarball.check_member`` (the same
allow-list and size limits as ``unpack_tar``) and is written into a private folder, each
member's size and sha256 (``files``: what ``verify_package`` compares with the manifest),
and whether the bytes are exactly the canonical tar of those members (``canonical``), which
holds when every header block is the one ``write_tar`` writes for that name and size, the
names come in sorted order, every padding byte is zero and the archive ends with exactly
``write_tar``'s end blocks. Nothing is re-packed or re-hashed to learn it.

Errors are *recorded*, not raised, as the bytes arrive: the stream keeps being consumed
(its sha256 and size are checked first by the caller, as before), and ``finish`` raises the
first problem with the message ``unpack_tar`` gives for it. Once a problem is recorded,
the rest of the stream is ignored (nothing more is parsed or written). Where ``tarfile``
(behind ``unpack_tar``) quietly ends an archive (a broken header after the first, a stream
that stops at a member boundary, bytes after the end blocks), so does this reader, and the
tar is then merely not canonical. Extension headers (pax, GNU long names) are never in a
canonical tar: the reader stops there and reports the tar as not canonical.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.errors import LwmError
from shared.files import building
from shared.learnware.layout import PackageLimits
from shared.learnware.manifest import FileEntry
from shared.learnware.tarball import (
    canonical_header,
    check_complete,
    check_member,
    not_a_tar,
    tar_end_size,
)

__all__ = ["StreamedTar", "TarStream"]

_BLOCK = tarfile.BLOCKSIZE
_EXTENSIONS = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.GNUTYPE_SPARSE,
    }
)


@dataclass(frozen=True)
class StreamedTar:
    """What one pass over a tar proved. ``path``: the unpacked folder; ``files``: each
    member's size and sha256, by name; ``canonical``: the bytes are ``write_tar``'s."""

    path: Path
    files: dict[str, FileEntry]
    canonical: bool


class _Abandoned(Exception):
    """Thrown into ``building`` to make it remove the folder of an unfinished tar."""


class _Member:
    """The member being received: its file, hash and how many data bytes are still due."""

    def __init__(self, name: str, size: int, out: BinaryIO) -> None:
        self.name, self.size, self.left, self.out = name, size, size, out
        self.hash = hashlib.sha256()


class TarStream:
    """Unpack a learnware tar into new folder ``dest`` as its bytes are ``feed``-ed.

    Use as a context manager: leaving it without a successful ``finish`` removes every
    file it wrote (``dest`` appears only when ``finish`` succeeds)."""

    def __init__(self, dest: Path, limits: PackageLimits) -> None:
        self._limits = limits
        self._dest = Path(dest)
        self._folder = building(self._dest)  # a temporary folder, renamed by ``finish``
        self._dir = self._folder.__enter__()
        self._open = True
        self._pending = bytearray()  # a header block or padding split across pieces
        self._member: _Member | None = None
        self._padding = 0  # zero bytes still due after the current member's data
        self._files: dict[str, FileEntry] = {}
        self._offset = 0  # bytes of the tar consumed (headers, data, padding, end)
        self._end_bytes = -1  # >= 0 once the first end block was seen: bytes since
        self._error: LwmError | None = None
        self._stopped = False  # a problem or a quiet end: the rest is ignored
        self._canonical = True
        self._last_name = ""

    def __enter__(self) -> TarStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove what was written unless ``finish`` moved it into place (idempotent)."""
        if self._member is not None:
            self._member.out.close()
            self._member = None
        if self._open:  # leave the folder as an error would: removed
            self._open = False
            self._folder.__exit__(_Abandoned, _Abandoned(), None)

    # ------------------------------------------------------------------ reading
    def feed(self, data: bytes | memoryview) -> None:
        """Take the next piece of the tar (any length)."""
        view = memoryview(data)
        while view and not self._stopped:
            if self._end_bytes >= 0:
                self._end(view)
                return
            if self._member is not None:
                view = self._data(view)
            elif self._padding:
                view = self._pad(view)
            else:
                view = self._header_bytes(view)

    def _data(self, view: memoryview) -> memoryview:
        member = self._member
        assert member is not None
        piece = view[: member.left]
        member.out.write(piece)
        member.hash.update(piece)
        member.left -= len(piece)
        self._offset += len(piece)
        if member.left == 0:
            member.out.close()
            os.chmod(self._dir / member.name, 0o644)
            self._files[member.name] = FileEntry(member.hash.hexdigest(), member.size)
            self._member = None
            self._padding = -member.size % _BLOCK
        return view[len(piece) :]

    def _pad(self, view: memoryview) -> memoryview:
        piece = view[: self._padding]
        if not _zeros(piece):  # tarfile skips padding unread; a canonical tar has zeros there
            self._canonical = False
        self._padding -= len(piece)
        self._offset += len(piece)
        return view[len(piece) :]

    def _header_bytes(self, view: memoryview) -> memoryview:
        take = _BLOCK - len(self._pending)
        self._pending += view[:take]
        if len(self._pending) == _BLOCK:
            block = bytes(self._pending)
            self._pending.clear()
            self._header(block)
        return view[take:]

    def _end(self, view: memoryview) -> None:
        if self._canonical and not _zeros(view):  # tarfile reads nothing after the end
            self._canonical = False  # block; write_tar writes zeros only
        self._end_bytes += len(view)

    # ------------------------------------------------------------------ one header
    def _header(self, block: bytes) -> None:
        if not any(block):
            self._end_bytes = _BLOCK
            return
        try:
            info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError as err:
            # As tarfile: the first header broken means no tar; a later one ends the archive.
            self._stop(not_a_tar(err) if self._offset == 0 else None)
            return
        if info.type in _EXTENSIONS:
            self._stop(None)
            return
        try:
            check_member(info, set(self._files), self._limits)
        except LwmError as err:
            self._stop(err)
            return
        if block != canonical_header(info.name, info.size) or info.name <= self._last_name:
            self._canonical = False
        self._last_name = info.name
        self._offset += _BLOCK
        out = open(self._dir / info.name, "xb")  # noqa: SIM115 (closed when its data ends)
        self._member = _Member(info.name, info.size, out)
        if info.size == 0:
            self._data(memoryview(b""))

    def _stop(self, error: LwmError | None) -> None:
        """Ignore the rest of the stream; with ``error`` the tar is refused, without it the
        archive merely ended early (as tarfile would end it), so it is not canonical."""
        self._error, self._stopped, self._canonical = error, True, False

    # ------------------------------------------------------------------ the end
    def finish(self) -> StreamedTar:
        """The unpacked tar, moved to ``dest``; raises the first problem as ``unpack_tar``
        would (``IntegrityError``, ``ResourceExhausted``)."""
        if self._error is not None:
            raise self._error
        if self._member is not None:  # the stream stopped inside a member's data
            raise not_a_tar(EOFError("unexpected end of data"))
        if self._offset == 0 and self._end_bytes < 0:
            raise not_a_tar(EOFError("truncated header" if self._pending else "empty file"))
        check_complete(set(self._files))
        if self._pending or self._padding or self._end_bytes != tar_end_size(self._offset):
            self._canonical = False
        self._open = False
        self._folder.__exit__(None, None, None)  # renames the folder into place
        return StreamedTar(self._dest, dict(self._files), self._canonical)


def _zeros(view: memoryview) -> bool:
    return view.tobytes() == bytes(len(view))  # in C: trailing bytes may be megabytes
