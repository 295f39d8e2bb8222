"""Receiving one upload: header checks, streamed bytes to a blob, unpack, static checks.

The order is what makes a submission atomic. Bytes go to a temp file that becomes a blob
only when size and sha256 match; the package is unpacked into a private temp folder and
checked there; only a package that passed every static check is ever inserted in the
database (as PENDING), and only then is it visible. A failure at any step removes the blob
(unless another learnware already owns the same bytes) and the temp folder; a crash leaves
at worst an orphan blob, which ``BlobStore.gc`` removes at the next start.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from server.blobs import BlobRef, BlobStore
from server.checker import AcceptedBase, StaticResult, check_static
from server.settings import Limits
from shared.errors import IntegrityError, InvalidInput, PermissionDenied, ResourceExhausted
from shared.learnware import Manifest, unpack_tar, write_tar
from shared.spec.schema import MarketSchema


@dataclass(frozen=True)
class Header:
    manifest_json: bytes
    signature: bytes
    contributor_key_id: str
    total_size: int
    sha256: str


@dataclass(frozen=True)
class Received:
    """A stored, unpacked and statically checked upload (the caller owns ``workdir``)."""

    blob: BlobRef
    static: StaticResult
    workdir: Path

    @property
    def package_dir(self) -> Path:
        return self.workdir / "package"


_sha_locks: dict[str, threading.Lock] = {}
_sha_locks_guard = threading.Lock()


@contextmanager
def sha_lock(sha256: str) -> Iterator[None]:
    """Serialise uploads of identical bytes so a failing one never deletes the other's blob."""
    with _sha_locks_guard:
        lock = _sha_locks.setdefault(sha256, threading.Lock())
    with lock:
        yield


def check_header(header: Header, caller_key_id: str, limits: Limits) -> Manifest:
    """Cheap checks before any byte is stored."""
    if len(header.manifest_json) > limits.package.max_manifest_bytes:
        raise ResourceExhausted(
            f"manifest is {len(header.manifest_json)} bytes, the limit is "
            f"{limits.package.max_manifest_bytes}"
        )
    manifest = Manifest.from_json(header.manifest_json)
    if header.contributor_key_id != caller_key_id:
        raise PermissionDenied(
            f"the upload names contributor key {header.contributor_key_id!r} but was signed "
            f"by {caller_key_id!r}"
        )
    if manifest.contributor.key_id != caller_key_id:
        raise PermissionDenied(
            f"the manifest names contributor key {manifest.contributor.key_id!r}, "
            f"the caller is {caller_key_id!r}"
        )
    if header.total_size <= 0:
        raise InvalidInput("total_size must be > 0")
    if header.total_size > limits.max_package_bytes:
        raise ResourceExhausted(
            f"package is {header.total_size} bytes, the limit is {limits.max_package_bytes}"
        )
    return manifest


def store_stream(
    blobs: BlobStore, header: Header, chunks: Iterable[tuple[int, bytes]], limits: Limits
) -> BlobRef:
    """Write the chunks to a blob; contiguous offsets, sizes and sha256 must all match."""
    with blobs.writer(max_size=header.total_size) as writer:
        expected_offset = 0
        for offset, data in chunks:
            if len(data) > limits.max_chunk_bytes:
                raise ResourceExhausted(
                    f"chunk of {len(data)} bytes is over the limit of {limits.max_chunk_bytes}"
                )
            if offset != expected_offset:
                raise InvalidInput(f"chunk offset {offset}, expected {expected_offset}")
            if expected_offset + len(data) > header.total_size:
                raise InvalidInput(f"more bytes than the announced total_size {header.total_size}")
            writer.write(data)
            expected_offset += len(data)
        if expected_offset != header.total_size:
            raise InvalidInput(f"stream ended after {expected_offset} of {header.total_size} bytes")
        return writer.commit(expected_sha256=header.sha256, expected_size=header.total_size)


def unpack_and_check(
    blob: BlobRef,
    header: Header,
    market: MarketSchema,
    base_models: dict[str, AcceptedBase],
    limits: Limits,
    contributor_key: bytes,
    scratch: Path,
) -> Received:
    """Unpack the stored tar privately and run the static checks; cleans up on failure."""
    scratch.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="submit-", dir=scratch))
    try:
        package = unpack_tar(blob.path, workdir / "package", limits=limits.package)
        if (package / "manifest.json").read_bytes() != header.manifest_json:
            raise IntegrityError("manifest.json: the package's manifest differs from the header's")
        if (package / "signature").read_bytes() != header.signature:
            raise IntegrityError("signature: the package's signature differs from the header's")
        if _canonical_sha256(package) != blob.sha256:
            raise InvalidInput(
                "the upload is not the canonical tar of its package (use pack_tar): "
                "the same learnware must always have the same bytes"
            )
        static = check_static(package, market, base_models, limits.package, contributor_key)
        return Received(blob, static, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


class _Discard:
    """A write-only sink: ``write_tar`` hashes what it writes, we only need the hash."""

    def __init__(self) -> None:
        self.position = 0

    def write(self, data: bytes) -> int:
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position


def _canonical_sha256(package: Path) -> str:
    """sha256 of the canonical tar of ``package``, streamed (no copy of it in memory)."""
    return write_tar(package, _Discard()).sha256  # type: ignore[arg-type]
