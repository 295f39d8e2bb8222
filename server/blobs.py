"""Content-addressed blob store: learnware packages on disk, named by their sha256.

Layout: ``root/ab/cdef…`` (the first two hex digits name a shard folder, the other 62 the
file), ``root/tmp/`` for uploads in progress, on the same file system so the final
rename is atomic, and ``root/work/`` for the folders packages are unpacked into while they
are checked.

What a crash leaves behind, at each point of an upload:
- while streaming: a file in ``root/tmp/`` (removed by ``cleanup_temp`` at the next start);
- while checking: a folder in ``root/work/`` (the same);
- after fsync, before the rename: the same;
- after the rename, before the database commits the learnware: a complete blob nobody
  references (removed by ``gc`` at the next start);
- after the commit: a complete, referenced blob.
A blob under its final name is therefore always complete and its name is its hash: the
bytes were hashed while they were written, fsynced, and only then renamed into place.

Blob names come from clients (Fetch by sha256), so every name is checked to be 64
lowercase hex digits before it touches a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from shared.errors import (
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    NotFound,
    ResourceExhausted,
)
from shared.files import FileLock

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEMP_SUFFIX = ".part"


def check_sha256(sha256: str) -> str:
    """``sha256`` itself if it is 64 lowercase hex digits; InvalidInput otherwise."""
    if not isinstance(sha256, str) or _SHA256.fullmatch(sha256) is None:
        raise InvalidInput(f"not a sha256 (64 lowercase hex digits): {str(sha256)[:80]!r}")
    return sha256


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


FLUSH_BEHIND_BYTES = 8 * 1024 * 1024
"""An upload starts writing its temp file to disk in the background every this many bytes."""


def _datasync_quietly(fd: int) -> None:
    """``fdatasync`` for a flush-behind: an error here is the final fsync's to raise."""
    with contextlib.suppress(OSError):
        os.fdatasync(fd)


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int
    path: Path


class BlobWriter:
    """One streaming upload. Use as a context manager; leaving it without ``commit``
    (an exception, a cancelled stream) removes the temp file."""

    def __init__(self, store: BlobStore, max_size: int | None = None) -> None:
        self._store = store
        self._max_size = max_size
        self._hash = hashlib.sha256()
        self.size = 0
        self.temp_path = store.temp_dir / f"{secrets.token_hex(16)}{_TEMP_SUFFIX}"
        self._file: BinaryIO | None = open(self.temp_path, "xb")  # noqa: SIM115 (closed by commit/abort)
        self._done = False
        self._unsynced = 0  # bytes written since the last flush-behind started
        self._syncing: Future[None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes. ResourceExhausted (and the upload aborted) past ``max_size``."""
        if self._file is None:
            raise ValueError("blob writer is closed")
        if self._max_size is not None and self.size + len(data) > self._max_size:
            self.abort()
            raise ResourceExhausted(f"blob larger than the limit of {self._max_size} bytes")
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        self._unsynced += len(data)
        if self._unsynced >= FLUSH_BEHIND_BYTES and not self._still_syncing():
            self._sync_behind()

    def _still_syncing(self) -> bool:
        return self._syncing is not None and not self._syncing.done()

    def _sync_behind(self) -> None:
        """Start writing what is written so far to disk in a thread, while the upload goes
        on, so that ``commit``'s fsync finds only the tail left (it is what makes the blob
        durable; this only starts early)."""
        assert self._file is not None
        self._file.flush()
        self._unsynced = 0
        self._syncing = self._store.syncer.submit(_datasync_quietly, self._file.fileno())

    def _join_sync(self) -> None:
        """Wait for a flush-behind (before the final fsync, and before the file closes)."""
        if self._syncing is not None:
            self._syncing.result()
            self._syncing = None

    @property
    def sha256(self) -> str:
        """Hash of the bytes written so far."""
        return self._hash.hexdigest()

    def check(self, expected_sha256: str | None, expected_size: int | None) -> None:
        """What ``commit`` checks first, for a caller with more to check before it commits:
        InvalidInput if the size differs, IntegrityError if the hash does (nothing dropped)."""
        if expected_size is not None and expected_size != self.size:
            raise InvalidInput(f"blob has {self.size} bytes, expected {expected_size}")
        if expected_sha256 is not None and check_sha256(expected_sha256) != self.sha256:
            raise IntegrityError(f"blob sha256 is {self.sha256}, expected {expected_sha256}")

    def commit(
        self, expected_sha256: str | None = None, expected_size: int | None = None
    ) -> BlobRef:
        """Check, fsync and move the blob into place; the upload is then durable.

        InvalidInput if the size differs from ``expected_size``, IntegrityError if the hash
        differs from ``expected_sha256``; in both cases nothing is kept. If the blob is
        already stored, the new copy replaces it (same bytes; a damaged old copy is healed
        and its age reset, so a concurrent ``gc(min_age_s=...)`` will not take it).
        """
        if self._file is None:
            raise ValueError("blob writer is closed")
        sha256 = self.sha256
        try:
            self.check(expected_sha256, expected_size)
            self._file.flush()
            self._join_sync()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.chmod(self.temp_path, 0o444)  # content-addressed: never written again
            final = self._store.path_of(sha256)
            self._store.ensure_shard(final.parent)
            os.replace(self.temp_path, final)
            _fsync_dir(final.parent)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return BlobRef(sha256=sha256, size=self.size, path=final)

    def abort(self) -> None:
        """Drop the upload: close and remove the temp file (safe to call twice)."""
        self._join_sync()
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._done:
            self._done = True
            self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()  # no-op after a successful commit


class _KeyedLocks:
    """One lock per key, kept only while a thread holds or waits for it (never a registry
    that grows with every key ever seen)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}  # key -> (lock, users)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users = self._locks[key][1] - 1
                if users:
                    self._locks[key] = (lock, users)
                else:
                    del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


CLAIM_WAIT_S = 120.0
"""How long a replica waits for another one's start-up cleanup before it gives up."""


@dataclass
class BlobClaim:
    """A serving process's hold on the blob store (``BlobStore.claim``). ``alone``: no other
    server used it when claimed, so every leftover in it is a crash's."""

    lock: FileLock
    alone: bool
    replicas: bool

    def serve(self) -> None:
        """Start-up cleanup done: let other replicas claim the store too."""
        if self.replicas and self.alone:
            self.lock.acquire(shared=True)  # exclusive -> shared never waits

    def release(self) -> None:
        self.lock.release()


class BlobStore:
    """Blobs named by sha256 under ``root``. Safe for many threads and processes: every
    write goes to its own temp file and lands with one atomic rename."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.temp_dir = self.root / "tmp"
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = self.root / "work"  # unpacked packages under check (scratch folders)
        self._uploads = _KeyedLocks()
        self.syncer = ThreadPoolExecutor(2, thread_name_prefix="lwm-blob-sync")  # flush-behind

    def claim(self, *, replicas: bool = False) -> BlobClaim:
        """Lock the store for serving (``root/.lock``, released by the claim's ``release``
        or the process's death).

        Without ``replicas``, one server alone: a second server on the same blobs is refused
        here, before its start-up cleanup could delete the first one's uploads in progress,
        whatever port it asked for. With ``replicas`` (markets sharing one database), every
        replica holds the lock shared while it serves; the first to start holds it
        exclusively until its start-up cleanup is done (``BlobClaim.serve``), so only a
        replica that is ``alone`` cleans the whole store. A single server's exclusive lock
        refuses replicas (after ``CLAIM_WAIT_S``) and the other way round."""
        lock = FileLock(self.root / ".lock")
        if lock.acquire(wait=False):
            return BlobClaim(lock, alone=True, replicas=replicas)
        deadline = time.monotonic() + CLAIM_WAIT_S
        while replicas and time.monotonic() < deadline:
            if lock.acquire(wait=False, shared=True):
                return BlobClaim(lock, alone=False, replicas=True)
            time.sleep(0.1)  # held exclusively: a replica cleaning up, or a single server
        raise FailedPrecondition(f"blob store {self.root} is in use by another running server")

    @contextmanager
    def provisional(self, sha256: str, owned: Callable[[str], bool]) -> Iterator[None]:
        """Own blob ``sha256`` while an upload of it is stored, checked and recorded.

        Uploads of the same bytes run one at a time, and if the block raises, the blob is
        deleted unless ``owned(sha256)`` says a recorded learnware references it (an earlier
        upload of the same bytes), so a failing upload never takes another's blob. In one
        process only: servers sharing a blob folder rely on ``gc`` at start instead.
        """
        check_sha256(sha256)
        with self._uploads.hold(sha256):
            try:
                yield
            except BaseException:
                if not owned(sha256):
                    self.delete(sha256)
                raise

    def path_of(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:]

    def ensure_shard(self, shard: Path) -> None:
        if not shard.is_dir():
            shard.mkdir(exist_ok=True)
            _fsync_dir(self.root)  # the new shard's entry must survive too

    def writer(self, max_size: int | None = None) -> BlobWriter:
        """Start a streaming upload (see ``BlobWriter``)."""
        return BlobWriter(self, max_size=max_size)

    def put_bytes(self, data: bytes, expected_sha256: str | None = None) -> BlobRef:
        with self.writer() as writer:
            writer.write(data)
            return writer.commit(expected_sha256=expected_sha256)

    def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.path_of(sha256).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no blob {sha256}") from None

    def open(self, sha256: str) -> BinaryIO:
        """The blob for reading (the caller closes it). NotFound if absent."""
        try:
            return open(self.path_of(sha256), "rb")  # noqa: SIM115 (the caller closes it)
        except FileNotFoundError:
            raise NotFound(f"no blob {sha256}") from None

    def read_range(self, sha256: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end; b"" at offset == size,
        so a resumed Fetch of a complete download is not an error). InvalidInput for a
        negative length or an offset beyond the size."""
        if offset < 0 or length < 0:
            raise InvalidInput(f"offset and length must be >= 0, got {offset}, {length}")
        with self.open(sha256) as file:
            size = os.fstat(file.fileno()).st_size
            if offset > size:
                raise InvalidInput(f"offset {offset} is beyond the blob's {size} bytes")
            file.seek(offset)
            return file.read(length)

    def delete(self, sha256: str) -> bool:
        """Remove a blob; False if it was not there."""
        try:
            self.path_of(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def iter_shas(self) -> Iterator[str]:
        """Every stored blob's sha256 (files that do not look like blobs are skipped)."""
        for shard in sorted(self.root.iterdir()):
            if len(shard.name) != 2 or not shard.is_dir():
                continue
            for entry in sorted(shard.iterdir()):
                name = shard.name + entry.name
                if _SHA256.fullmatch(name) and entry.is_file():
                    yield name

    def cleanup_temp(self, min_age_s: float = 0.0) -> int:
        """Remove what a crash interrupted: temp files of uploads and the scratch folders
        of packages under check (``work_dir``, megabytes each); returns how many.

        Call at start, before serving. ``min_age_s`` spares entries modified more recently
        (for a blob directory shared with another running server).
        """
        temp = [entry for entry in self.temp_dir.iterdir() if entry.name.endswith(_TEMP_SUFFIX)]
        work = list(self.work_dir.iterdir()) if self.work_dir.is_dir() else []
        return sum(_remove_if_older(entry, min_age_s) for entry in temp + work)

    def gc(self, referenced: set[str], min_age_s: float = 0.0) -> int:
        """Delete blobs not in ``referenced``; returns how many.

        A crash between a blob's rename and the database commit leaves such an orphan.
        Call at start, before serving, with ``store.referenced_blobs()``: an upload in
        flight has a blob but no row yet, so ``min_age_s`` must exceed the longest
        upload-to-commit time if gc ever runs while uploads are possible.
        """
        return sum(
            _remove_if_older(self.path_of(sha256), min_age_s)
            for sha256 in list(self.iter_shas())
            if sha256 not in referenced
        )


def _remove_if_older(path: Path, min_age_s: float) -> int:
    """Remove a file or a whole folder unless modified within ``min_age_s``; 1 if removed."""
    try:
        if min_age_s > 0 and time.time() - path.stat().st_mtime < min_age_s:
            return 0
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return 0
    return 1
