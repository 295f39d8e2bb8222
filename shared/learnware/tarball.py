"""The learnware's wire form: a plain, deterministic, safely unpacked ``.tar``.

Deterministic (``write_tar``/``pack_tar``): members in sorted name order, flat names, ustar
format, regular files only, mode 0644, mtime 0, uid/gid 0, empty user/group names, no
compression. The same directory therefore always gives the same bytes, so the tar's sha256
identifies the learnware and a re-pack of an unpacked tar is byte-identical.

Safe (``unpack_tar``): an uploaded tar is hostile until proven otherwise. Only the five
allowed names (``layout.PACKAGE_FILES``), each at most once, as regular non-executable
files within their size limits; no links, folders, devices, sparse files, absolute paths or
``..``; no compression (no decompression bombs). Our allow-list runs first and tarfile's
``filter="data"`` runs again on extraction. Unpacking writes into a temporary folder beside
``dest`` that is renamed to ``dest`` only when every member passed, so a refused tar leaves
nothing behind. It does not verify hashes or the signature: call ``verify_package`` next.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from shared.errors import AlreadyExists, IntegrityError, ResourceExhausted
from shared.files import building
from shared.learnware.layout import PACKAGE_FILES, PackageLimits, refusal

__all__ = [
    "TarDigest",
    "canonical_header",
    "check_complete",
    "check_member",
    "not_a_tar",
    "pack_tar",
    "tar_end_size",
    "unpack_tar",
    "write_tar",
]


@dataclass(frozen=True)
class TarDigest:
    """Size and sha256 of the tar bytes written: what ``Submit``'s header announces."""

    size: int
    sha256: str


class _DigestWriter:
    """Passes writes through to ``out`` while counting and hashing them."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def digest(self) -> TarDigest:
        return TarDigest(size=self.size, sha256=self._hash.hexdigest())


def _package_files(src_dir: Path) -> list[Path]:
    """The directory's files, sorted, after the same allow-list checks as verification."""
    if src_dir.is_symlink() or not src_dir.is_dir():
        raise IntegrityError(f"{src_dir} is not a learnware directory")
    files = []
    for entry in sorted(src_dir.iterdir(), key=lambda p: p.name):
        reason = refusal(entry.name)
        if reason is not None:
            raise IntegrityError(reason)
        if entry.is_symlink() or not entry.is_file():
            raise IntegrityError(f"{entry.name}: not a regular file (link or folder refused)")
        files.append(entry)
    return files


def write_tar(src_dir: str | Path, out: BinaryIO) -> TarDigest:
    """Write the deterministic tar of learnware directory ``src_dir`` to ``out``."""
    writer = _DigestWriter(out)
    # tarfile only calls write() and tell() in "w" mode; the cast satisfies its stub.
    fileobj = cast(BinaryIO, writer)
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in _package_files(Path(src_dir)):
            with path.open("rb") as reader:
                tar.addfile(_canonical_info(path.name, path.stat().st_size), reader)
    return writer.digest()


def _canonical_info(name: str, size: int) -> tarfile.TarInfo:
    """The header ``write_tar`` gives a member: only its name and size vary."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def canonical_header(name: str, size: int) -> bytes:
    """The 512-byte header block ``write_tar`` writes for member ``name`` of ``size`` bytes."""
    return _canonical_info(name, size).tobuf(
        tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"
    )


def tar_end_size(members_end: int) -> int:
    """The bytes ``write_tar`` (tarfile) writes after the last member's padding, which ends
    at ``members_end``: two zero blocks, then zeros up to a whole 20-block record."""
    end = 2 * tarfile.BLOCKSIZE
    return end + -(members_end + end) % tarfile.RECORDSIZE


def pack_tar(src_dir: str | Path) -> bytes:
    """The deterministic tar of ``src_dir`` in memory (fine for adapters of a few hundred MB)."""
    buffer = io.BytesIO()
    write_tar(src_dir, buffer)
    return buffer.getvalue()


@contextlib.contextmanager
def _open_source(source: bytes | BinaryIO | str | Path) -> Iterator[BinaryIO]:
    if isinstance(source, bytes):
        yield io.BytesIO(source)
    elif isinstance(source, str | Path):
        with open(source, "rb") as handle:
            yield handle
    else:
        yield source


def unpack_tar(
    source: bytes | BinaryIO | str | Path,
    dest: str | Path,
    *,
    limits: PackageLimits | None = None,
) -> Path:
    """Unpack a learnware tar (bytes, a seekable binary file, or a path) into new ``dest``.

    Raises ``AlreadyExists`` if ``dest`` exists, ``IntegrityError`` naming the member for
    anything unsafe or malformed, ``ResourceExhausted`` for a member over its size limit.
    """
    limits = limits or PackageLimits()
    target = Path(dest)
    if target.exists() or target.is_symlink():
        raise AlreadyExists(f"{target} exists; unpack into a new folder")
    with building(target) as tmp, _open_source(source) as handle:
        _extract_all(handle, tmp, limits)
    return target


def _extract_all(handle: BinaryIO, into: Path, limits: PackageLimits) -> None:
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=handle, mode="r:") as tar:
            for member in tar:
                check_member(member, seen, limits)
                seen.add(member.name)
                tar.extract(member, into, filter="data")
                os.chmod(into / member.name, 0o644)
    except tarfile.FilterError as err:
        raise IntegrityError(f"unsafe tar member refused: {err}") from err
    except (tarfile.TarError, EOFError) as err:
        raise not_a_tar(err) from err
    check_complete(seen)


def not_a_tar(err: Exception) -> IntegrityError:
    """The refusal of bytes that do not read as an uncompressed tar (``err`` says why)."""
    return IntegrityError(f"not a valid uncompressed learnware tar: {err}")


def check_complete(seen: set[str]) -> None:
    """Every package file was in the tar; ``IntegrityError`` names the first missing."""
    missing = sorted(PACKAGE_FILES - seen)
    if missing:
        raise IntegrityError(f"{missing[0]}: missing from the tar")


def check_member(member: tarfile.TarInfo, seen: set[str], limits: PackageLimits) -> None:
    """Our allow-list, checked before a member's bytes touch the disk (``seen``: the names
    of the members before it)."""
    name = member.name
    if not member.isreg() or member.issparse():
        kind = "link" if member.issym() or member.islnk() else "non-regular member"
        raise IntegrityError(f"{name!r}: {kind} refused (regular files only)")
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise IntegrityError(f"{name!r}: paths are refused (flat file names only)")
    reason = refusal(name)
    if reason is not None:
        raise IntegrityError(reason)
    if name in seen:
        raise IntegrityError(f"{name!r}: appears twice in the tar")
    if member.mode & 0o111 or member.mode & (stat.S_ISUID | stat.S_ISGID):
        raise IntegrityError(f"{name!r}: executable file refused")
    if member.size > limits.max_bytes(name):
        raise ResourceExhausted(
            f"{name!r}: {member.size} bytes, over the {limits.max_bytes(name)}-byte limit"
        )
