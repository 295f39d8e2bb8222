"""Files with the project's errors: atomic writes, and reads that say what is missing.

Atomic: readers see the old state or the whole new one, never half a file or folder. Keys,
certificates, cache files, model folders, learnware packages and unpacked tars are all
written somewhere private beside their final path, then moved into place in one step (a
rename, or a hard link when an existing file must never be clobbered). Renames are atomic
within one file system, which is why the temporary path is always a sibling.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from shared.errors import AlreadyExists, InvalidInput, NotFound

__all__ = ["building", "check_writable", "read_file", "write_atomically"]


class FileLock:
    """An exclusive ``flock`` on ``path`` (made if missing) between processes, held from
    ``acquire`` until ``release`` or the holder's death (the kernel drops it then, so a
    crash never leaves a stale lock). The lock file stays: files it guards may be replaced
    on every write, so they cannot carry the lock themselves. Used as a context manager it
    waits for the lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: BinaryIO | None = None

    def acquire(self, *, wait: bool = True, shared: bool = False) -> bool:
        """Take the lock; with ``wait=False``, ``False`` at once if another holds it.

        ``shared``: a lock many processes hold at once, which excludes only the exclusive
        one. Taken again while held, the lock changes mode (not atomically: ``flock`` drops
        the old one first)."""
        import fcntl

        handle = self._handle or self.path.open("ab")
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(handle.fileno(), mode | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            if handle is not self._handle:
                handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_file(path: str | Path, what: str) -> bytes:
    """The bytes at ``path``; ``NotFound`` or ``InvalidInput`` naming ``what`` it should hold."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as err:
        raise NotFound(f"{what} not found: {path}") from err
    except OSError as err:
        raise InvalidInput(f"cannot read {what} {path}: {err.strerror}") from err


def check_writable(path: Path, *, force: bool = False, parents: bool = False) -> None:
    """Refuse, before any work, to write ``path`` where the write would fail or clobber:
    it exists (unless ``force``: ``AlreadyExists``), or its folder is missing (unless
    ``parents``: the command makes it) or not writable (``InvalidInput``). A command that
    computes or downloads for minutes checks this first."""
    if (path.exists() or path.is_symlink()) and not force:
        raise AlreadyExists(f"{path} exists; refusing to overwrite it (pass --force)")
    folder = path.absolute().parent
    while parents and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        missing = "is not a folder" if folder.exists() else "does not exist"
        raise InvalidInput(f"{path}: {folder} {missing}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInput(f"{path}: folder {folder} is not writable")


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True) -> None:
    """Write ``data`` to a temp file beside ``path`` with ``mode`` from the start, then move it in.

    Without ``overwrite`` the move is a hard link, which fails if ``path`` appeared meanwhile,
    so an existing file (a private key) is never clobbered even by a racing writer; then
    ``AlreadyExists`` is raised. The data is fsynced before the move.
    """
    if path.exists() and not overwrite:
        raise AlreadyExists(f"{path} exists; refusing to overwrite it (pass overwrite=True)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as err:
                raise AlreadyExists(f"{path} exists; refusing to overwrite it") from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextmanager
def building(
    final: Path, *, is_complete: Callable[[Path], bool] | None = None, private: bool = True
) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success rename it to ``final``.

    On any exception (Ctrl-C included) the temporary folder is removed and ``final`` is
    untouched. Without ``is_complete`` the rename fails (``OSError``) if a non-empty
    ``final`` appeared meanwhile. With it, ``final`` is a cache built deterministically: a
    leftover that is not complete (an edited or half-copied folder) is replaced, and if
    another process completed it first, its result is kept and ours discarded.
    ``private`` folders (packages, unpacked tars) are the owner's alone (mode 0700, as
    ``mkdtemp`` makes them); otherwise the folder gets the umask's usual mode.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.partial-"
    if private:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    else:
        tmp = final.parent / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    try:
        yield tmp
        if is_complete is not None and final.exists() and not is_complete(final):
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if is_complete is None or not is_complete(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
