"""The steps of receiving one upload, in the order ``Market.submit`` runs them.

1. ``check_header``: cheap checks before any byte is stored; parses the manifest, and the
   later steps use that parse (``Upload``).
2. ``receive``: one pass over the chunks as they arrive. Each chunk goes to the blob's
   temp file (``BlobWriter``: size and sha256 of the whole upload) and through a
   ``TarStream`` that checks and unpacks the tar into a private folder, hashing each member
   as it is written and proving the bytes are the canonical tar of those members. At the
   end the problems are raised in the order they always were: offsets and size, sha256,
   the tar (``unpack_tar``'s refusals), the package's manifest and signature against the
   header's, canonical form. Nothing is read back: the upload is never re-read, re-packed
   or re-hashed.
3. The ``Checker``'s static checks (``server/checker.py``) on the unpacked folder, given
   the member hashes from step 2 (``verify_package`` compares them with the signed
   manifest instead of reading the files again); then the blob is committed (fsync, rename).
4. ``pending_record``: what the store inserts, as PENDING, with the spec file as received.
5. The ``Checker``'s judgment (the smoke run): PENDING -> USABLE or REJECTED.

The order is what makes a submission atomic (DESIGN §6). Bytes go to a temp file that
becomes a blob only when size, sha256 and every static check passed; the package is
unpacked into a private folder (``scratch_dir``) and checked there; only a package that
passed every static check is ever inserted in the database, and only then is it visible.
``BlobStore.provisional`` owns the blob from its commit to step 4: a failure removes it
(unless another learnware owns the same bytes); a crash leaves at worst an orphan blob,
which ``BlobStore.gc`` removes at the next start.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from server.blobs import BlobRef, BlobWriter
from server.checker import StaticResult
from server.records import KeyRecord, LearnwareRecord, SpecRecord, Status
from server.settings import Limits
from shared.errors import IntegrityError, InvalidInput, PermissionDenied, ResourceExhausted
from shared.learnware import Manifest
from shared.learnware.tarstream import StreamedTar, TarStream

_DESCRIPTION = ("name", "domain", "task", "description", "license")
"""Manifest fields a learnware's record keeps as they are (search filters and listings)."""


@dataclass(frozen=True)
class Header:
    manifest_json: bytes
    signature: bytes
    contributor_key_id: str
    total_size: int
    sha256: str


@dataclass(frozen=True)
class Upload:
    """A header that passed ``check_header``, with what it was checked against: the parsed
    manifest (later steps use this one) and the uploader's registered key."""

    header: Header
    manifest: Manifest
    contributor: KeyRecord


def check_header(header: Header, caller_key_id: str, limits: Limits) -> Manifest:
    """Cheap checks before any byte is stored; returns the header's manifest, parsed."""
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


def receive(
    writer: BlobWriter,
    header: Header,
    chunks: Iterable[tuple[int, bytes]],
    limits: Limits,
    workdir: Path,
) -> StreamedTar:
    """Take the chunks into ``writer`` and unpack them into ``workdir/package`` in the same
    pass; contiguous offsets, sizes and sha256 must match, and the tar must be the canonical
    tar of the header's manifest and signature. Does not commit ``writer``."""
    with TarStream(workdir / "package", limits.package) as tar:
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
            tar.feed(data)
            expected_offset += len(data)
        if expected_offset != header.total_size:
            raise InvalidInput(f"stream ended after {expected_offset} of {header.total_size} bytes")
        writer.check(expected_sha256=header.sha256, expected_size=header.total_size)
        package = tar.finish()
    _match_header(package, header)
    return package


@contextmanager
def scratch_dir(parent: Path) -> Iterator[Path]:
    """A private folder under ``parent`` for one package, removed on the way out."""
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="submit-", dir=parent))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _match_header(package: StreamedTar, header: Header) -> None:
    """The unpacked package must be what the header announced, in its canonical tar."""
    if (package.path / "manifest.json").read_bytes() != header.manifest_json:
        raise IntegrityError("manifest.json: the package's manifest differs from the header's")
    if (package.path / "signature").read_bytes() != header.signature:
        raise IntegrityError("signature: the package's signature differs from the header's")
    if not package.canonical:
        raise InvalidInput(
            "the upload is not the canonical tar of its package (use pack_tar): "
            "the same learnware must always have the same bytes"
        )


def pending_record(upload: Upload, blob: BlobRef, static: StaticResult) -> LearnwareRecord:
    """The learnware as the store inserts it: PENDING, its spec file stored as received."""
    manifest, now = upload.manifest, datetime.now(UTC)
    return LearnwareRecord(
        id=uuid.uuid4().hex,
        **{name: getattr(manifest, name) for name in _DESCRIPTION},
        base_model_id=manifest.base_model.model_id,
        base_model_sha256=manifest.base_model.sha256,
        contributor_key_id=upload.contributor.key_id,
        contributor_name=upload.contributor.name,
        status=Status.PENDING,
        reason="",
        package_sha256=blob.sha256,
        package_size=blob.size,
        manifest_json=upload.header.manifest_json,
        signature=upload.header.signature,
        created_at=now,
        updated_at=now,
        specs=tuple(
            SpecRecord(s.kind, s.schema_id, s.dim, static.spec_bytes) for s in static.specs
        ),
    )
