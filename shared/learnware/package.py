"""Build and verify a learnware directory (DESIGN §5).

A learnware directory holds exactly (``layout.PACKAGE_FILES``)::

    manifest.json               canonical JSON of the Manifest, files' hashes included
    adapter_model.safetensors   peft LoRA weights   } loadable by plain
    adapter_config.json         peft LoraConfig     } PeftModel.from_pretrained(base, dir)
    spec.safetensors            one tensor per spec entry, named by its kind
    signature                   the RAW 64-byte Ed25519 signature (not hex, no newline)
                                of ``signing_payload(manifest)``

Nothing in a learnware is ever executed or unpickled: only safetensors and JSON, checked
before use. ``verify_package`` is what the market runs on every submission and what a
user runs on every fetched package.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared import signing
from shared.errors import AlreadyExists, IntegrityError, InvalidInput, NotFound, ResourceExhausted
from shared.files import building
from shared.learnware._check import loads_untrusted
from shared.learnware.layout import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    FORMAT_VERSION,
    MANIFEST,
    PACKAGE_FILES,
    PAYLOAD_FILES,
    SIGNATURE,
    SIGNATURE_BYTES,
    SPEC,
    PackageLimits,
    is_pickle_like,
    refusal,
)
from shared.learnware.manifest import FileEntry, Manifest
from shared.learnware.safetensors_header import read_safetensors_header

__all__ = [
    "Package",
    "VerifiedPackage",
    "build_package",
    "read_manifest",
    "signing_payload",
    "verify_package",
]

DOMAIN_TAG = b"lwm-learnware-v1\n"
_BLOCK = 1024 * 1024


def signing_payload(manifest: Manifest) -> bytes:
    """The exact bytes a learnware signature covers (all ASCII except the JSON)::

        b"lwm-learnware-v1\\n"                      domain tag: never valid for another use
        b"format:1\\n"                              manifest.format_version
        b"file:<name>:<sha256 hex>\\n"              per payload file, names sorted (3 lines)
        b"manifest:<N>\\n"                          N = byte length of the JSON that follows
        <N bytes: manifest.to_json()>              canonical, files' hashes included

    File names never contain ``:`` or newlines (allow-list), and the JSON is length-prefixed,
    so the layout parses one way only. ``InvalidInput`` if the manifest lacks file hashes.
    """
    if set(manifest.files) != PAYLOAD_FILES:
        raise InvalidInput(
            f"cannot sign a manifest listing files {sorted(manifest.files)}; "
            f"expected exactly {sorted(PAYLOAD_FILES)}"
        )
    body = manifest.to_json()
    lines = [DOMAIN_TAG, f"format:{manifest.format_version}\n".encode("ascii")]
    lines += [
        f"file:{name}:{entry.sha256}\n".encode("ascii")
        for name, entry in sorted(manifest.files.items())
    ]
    lines.append(f"manifest:{len(body)}\n".encode("ascii"))
    return b"".join(lines) + body


@dataclass(frozen=True)
class Package:
    """A signed learnware directory as ``build_package`` wrote it.

    ``digest`` is the sha256 of its canonical tar (``tarball.write_tar``): exactly the bytes
    the market receives and the id it refuses a second submission by.
    """

    folder: Path
    manifest: Manifest
    digest: str


@dataclass(frozen=True)
class VerifiedPackage:
    """A learnware directory whose structure, hashes and (when a key was given) signature hold.

    ``signer_key_id`` is the key id the signature was verified with, or None when
    ``verify_package`` was called without a trusted key (hashes checked, origin unknown).
    """

    path: Path
    manifest: Manifest
    signature: bytes
    signer_key_id: str | None

    @property
    def signature_verified(self) -> bool:
        return self.signer_key_id is not None

    def file(self, name: str) -> Path:
        if name not in PACKAGE_FILES:
            raise InvalidInput(f"{name!r} is not a learnware file")
        return self.path / name


# ---------------------------------------------------------------- build


def build_package(
    out_dir: str | Path,
    adapter: str | Path | tuple[str | Path, str | Path],
    spec_file: str | Path,
    manifest: Manifest,
    private_key: signing.Ed25519PrivateKey,
    *,
    limits: PackageLimits | None = None,
) -> Package:
    """Write a signed learnware directory at ``out_dir`` (which must not exist).

    ``adapter`` is a peft ``save_pretrained`` folder (only its ``adapter_model.safetensors``
    and ``adapter_config.json`` are taken; peft's README.md is left behind) or a
    ``(weights, config)`` pair of paths. ``manifest.files`` is replaced by the hashes of the
    copied files. The package is built in a temporary folder beside ``out_dir`` and renamed
    into place, so an error leaves nothing behind.

    Raises ``AlreadyExists`` (``out_dir`` exists), ``NotFound`` (missing input),
    ``InvalidInput`` (pickle adapter, key not the manifest's contributor),
    ``IntegrityError`` (an input is not valid safetensors or the config not a JSON object),
    ``ResourceExhausted`` (a file over ``limits``). Returns the folder, the manifest as
    signed and the sha256 of the canonical tar.
    """
    limits = limits or PackageLimits()
    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        raise AlreadyExists(f"{out} exists; choose a new folder for the learnware")
    signer = signing.key_id(private_key.public_key())
    if manifest.contributor.key_id != signer:
        raise InvalidInput(
            f"manifest names contributor key {manifest.contributor.key_id!r} but the signing "
            f"key is {signer!r}"
        )
    sources = {**_adapter_sources(adapter), SPEC: _existing(Path(spec_file), "spec file")}
    with building(out) as tmp:
        entries = {
            name: _copy_hashed(src, tmp / name, limits.max_bytes(name))
            for name, src in sorted(sources.items())
        }
        _check_payload_content(tmp)
        final = manifest.with_files(entries)
        _write_file(tmp / MANIFEST, _checked_size(final.to_json(), MANIFEST, limits))
        _write_file(tmp / SIGNATURE, signing.sign(private_key, signing_payload(final)))
        _fsync_dir(tmp)
    _fsync_dir(out.parent)
    return Package(out, final, tar_sha256(out))


def open_package(folder: str | Path) -> Package:
    """A package built earlier (a cache): its manifest and canonical tar digest, read back.

    Not a verification (see ``verify_package``): only for folders this machine built.
    """
    root = Path(folder)
    manifest = Manifest.from_json(
        _read_limited(root / MANIFEST, PackageLimits().max_bytes(MANIFEST))
    )
    return Package(root, manifest, tar_sha256(root))


def tar_sha256(folder: Path) -> str:
    """The sha256 of ``folder``'s canonical tar, hashed as it is written (nothing stored)."""
    from shared.learnware.tarball import write_tar

    with open(os.devnull, "wb") as sink:  # write_tar hashes as it writes; keep no copy
        return write_tar(folder, sink).sha256


def _adapter_sources(adapter: str | Path | tuple[str | Path, str | Path]) -> dict[str, Path]:
    if isinstance(adapter, tuple):
        weights, config = (Path(p) for p in adapter)
        if is_pickle_like(weights.name):
            raise InvalidInput(f"{weights} is a pickle format; save with safe_serialization=True")
    else:
        folder = _existing(Path(adapter), "adapter folder")
        weights, config = folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG
        if not weights.exists() and any(is_pickle_like(p.name) for p in folder.iterdir()):
            raise InvalidInput(
                f"{folder} holds pickle weights only; save the adapter with "
                "save_pretrained(..., safe_serialization=True)"
            )
    return {
        ADAPTER_WEIGHTS: _existing(weights, "adapter weights"),
        ADAPTER_CONFIG: _existing(config, "adapter config"),
    }


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise NotFound(f"{what} not found: {path}")
    return path


def _copy_hashed(src: Path, dst: Path, max_bytes: int) -> FileEntry:
    if not src.is_file():
        raise InvalidInput(f"{src} is not a regular file")
    digest, size = hashlib.sha256(), 0
    with src.open("rb") as reader, _create(dst) as writer:
        for block in _blocks(reader):
            size += len(block)
            if size > max_bytes:
                raise ResourceExhausted(f"{src} is larger than the {max_bytes}-byte limit")
            digest.update(block)
            writer.write(block)
    return FileEntry(sha256=digest.hexdigest(), size=size)


def _checked_size(data: bytes, name: str, limits: PackageLimits) -> bytes:
    if len(data) > limits.max_bytes(name):
        raise ResourceExhausted(f"{name} is {len(data)} bytes, over {limits.max_bytes(name)}")
    return data


@contextlib.contextmanager
def _create(path: Path) -> Iterator[BinaryIO]:
    """A new file (never an existing one or a link), mode 0644, fsynced on close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def _write_file(path: Path, data: bytes) -> None:
    with _create(path) as handle:
        handle.write(data)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _blocks(reader: BinaryIO) -> Iterator[bytes]:
    while block := reader.read(_BLOCK):
        yield block


# ---------------------------------------------------------------- verify


def verify_package(
    path: str | Path,
    trusted_public_key: signing.Ed25519PublicKey | None,
    *,
    limits: PackageLimits | None = None,
    hashed: Mapping[str, FileEntry] | None = None,
) -> VerifiedPackage:
    """Check a learnware directory completely; ``IntegrityError`` names the failing file.

    Checked, in order: exactly the allowed regular files (no extra, pickle-like, linked or
    executable ones); ``manifest.json`` parses strictly, is canonical and lists exactly the
    payload files; every payload file's size and sha256; the safetensors files are real
    safetensors and the config a JSON object; the signature is 64 bytes and, when
    ``trusted_public_key`` is given, verifies with it and the manifest names that key.

    With ``trusted_public_key=None`` the signature is NOT checked (``signer_key_id`` None):
    only use that where the key is checked elsewhere. Limits raise ``ResourceExhausted``.
    ``hashed``: the payload files' sizes and sha256 as the caller measured them while it
    wrote them (``TarStream``), so they are compared with the manifest without reading the
    files again; only for files this process wrote itself and nobody else can change.
    """
    limits = limits or PackageLimits()
    root = Path(path)
    _check_entries(root)
    manifest = _read_manifest(root, limits)
    for name in sorted(PAYLOAD_FILES):
        found = (hashed or {}).get(name) or _hash_file(root / name, limits.max_bytes(name))
        _check_hash(name, found, manifest.files[name], limits.max_bytes(name))
    _check_payload_content(root)
    signature = _read_limited(root / SIGNATURE, SIGNATURE_BYTES)
    if len(signature) != SIGNATURE_BYTES:
        raise IntegrityError(f"{SIGNATURE}: must hold 64 raw bytes, holds {len(signature)}")
    signer = None
    if trusted_public_key is not None:
        signer = _check_signature(manifest, signature, trusted_public_key)
    return VerifiedPackage(root, manifest, signature, signer)


def read_manifest(path: str | Path, *, limits: PackageLimits | None = None) -> Manifest:
    """A learnware directory's manifest, parsed strictly but NOT verified (no hashes, no
    signature): only to learn which key to call ``verify_package`` with."""
    root = Path(path)
    _check_entries(root)
    return _read_manifest(root, limits or PackageLimits())


def _check_entries(root: Path) -> None:
    if root.is_symlink() or not root.is_dir():
        raise IntegrityError(f"{root} is not a learnware directory")
    present = set()
    with os.scandir(root) as entries:
        for entry in entries:
            reason = refusal(entry.name)
            if reason is not None:
                raise IntegrityError(reason)
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                raise IntegrityError(f"{entry.name}: not a regular file (link or folder refused)")
            if info.st_mode & 0o111:
                raise IntegrityError(f"{entry.name}: executable file refused")
            present.add(entry.name)
    missing = sorted(PACKAGE_FILES - present)
    if missing:
        raise IntegrityError(f"{missing[0]}: missing from {root}")


def _read_manifest(root: Path, limits: PackageLimits) -> Manifest:
    raw = _read_limited(root / MANIFEST, limits.max_bytes(MANIFEST))
    try:
        manifest = Manifest.from_json(raw)
    except InvalidInput as err:
        raise IntegrityError(f"{MANIFEST}: {err}") from err
    if manifest.format_version != FORMAT_VERSION:
        raise IntegrityError(f"{MANIFEST}: format_version {manifest.format_version} unknown")
    if manifest.to_json() != raw:
        raise IntegrityError(f"{MANIFEST}: not in canonical form (edited after signing?)")
    if set(manifest.files) != PAYLOAD_FILES:
        raise IntegrityError(
            f"{MANIFEST}: lists files {sorted(manifest.files)}, expected {sorted(PAYLOAD_FILES)}"
        )
    return manifest


def _read_limited(path: Path, max_bytes: int) -> bytes:
    """Read a small file, refusing one over ``max_bytes`` before reading it into memory."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ResourceExhausted(f"{path.name}: {size} bytes, over the {max_bytes}-byte limit")
    return path.read_bytes()


def _hash_file(path: Path, max_bytes: int) -> FileEntry:
    """Size and sha256 of a payload file; one over ``max_bytes`` is refused unread."""
    size = path.stat().st_size
    _check_size(path.name, size, max_bytes)
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        for block in _blocks(reader):
            digest.update(block)
    return FileEntry(sha256=digest.hexdigest(), size=size)


def _check_size(name: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ResourceExhausted(f"{name}: {size} bytes, over the {max_bytes}-byte limit")


def _check_hash(name: str, found: FileEntry, expected: FileEntry, max_bytes: int) -> None:
    _check_size(name, found.size, max_bytes)
    if found.size != expected.size:
        raise IntegrityError(f"{name}: size {found.size} != {expected.size} in the manifest")
    if found.sha256 != expected.sha256:
        raise IntegrityError(f"{name}: sha256 does not match the manifest (tampered?)")


def _check_payload_content(root: Path) -> None:
    """Safetensors are safetensors (not renamed pickles); the peft config is a JSON object."""
    read_safetensors_header(root / ADAPTER_WEIGHTS)
    read_safetensors_header(root / SPEC)
    config = loads_untrusted((root / ADAPTER_CONFIG).read_bytes(), ADAPTER_CONFIG, IntegrityError)
    if not isinstance(config, dict):
        raise IntegrityError(f"{ADAPTER_CONFIG}: must be a JSON object")


def _check_signature(
    manifest: Manifest, signature: bytes, public_key: signing.Ed25519PublicKey
) -> str:
    kid = signing.key_id(public_key)
    try:
        signing.verify(public_key, signature, signing_payload(manifest))
    except IntegrityError as err:
        raise IntegrityError(
            f"{SIGNATURE}: does not verify {MANIFEST} and its files with key {kid} "
            "(tampered manifest or another signer)"
        ) from err
    if manifest.contributor.key_id != kid:
        raise IntegrityError(
            f"{MANIFEST}: names contributor key {manifest.contributor.key_id} but was signed "
            f"with {kid}"
        )
    return kid
