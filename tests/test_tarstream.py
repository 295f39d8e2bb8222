"""The one-pass upload check (``TarStream`` inside ``Market.submit``) on hostile uploads.

Each hostile upload must be refused with the message the market always gave for it, and
before its blob is committed: ``BlobWriter.commit`` (fsync and rename into the store) is
never reached, and nothing is left in the store, its temp folder or its scratch folders.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest
from builders import build_learnware, random_rkme_spec, rkme_schema, train_lora_adapter, write_specs
from market_fixtures import market_server

from server.auth import Caller
from server.blobs import BlobWriter
from server.records import Role
from server.submission import Header
from shared import signing
from shared.errors import IntegrityError, InvalidInput, LwmError
from shared.learnware import PACKAGE_FILES, PackageLimits, pack_tar
from shared.learnware.tarball import canonical_header
from shared.learnware.tarstream import TarStream
from shared.models import model_ref


@pytest.fixture(scope="module")
def world(tmp_path_factory, lwm_home):
    tmp = tmp_path_factory.mktemp("tarstream")
    adapter = train_lora_adapter(lwm_home, tmp / "adapter")
    with market_server(tmp, lwm_home, run_smoke=False) as market:
        key = market.new_key("alice", Role.CONTRIBUTOR)
        spec = write_specs(tmp / "spec.safetensors", [random_rkme_spec(rkme_schema(lwm_home))])
        package = build_learnware(
            tmp / "lw", adapter=adapter, spec_file=spec, base=model_ref("tiny", lwm_home),
            private_key=key,
        )  # fmt: skip
        yield {"market": market, "package": package, "key": key, "tmp": tmp}


# ---------------------------------------------------------------- hostile tars


def _members(package: Path) -> list[tuple[str, bytes]]:
    return [(name, (package / name).read_bytes()) for name in sorted(PACKAGE_FILES)]


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    """A tar of ``members`` in the given order, each with its canonical header."""
    out = io.BytesIO()
    for name, data in members:
        out.write(canonical_header(name, len(data)))
        out.write(data + bytes(-len(data) % tarfile.BLOCKSIZE))
    out.write(bytes(2 * tarfile.BLOCKSIZE))
    return out.getvalue() + bytes(-out.tell() % tarfile.RECORDSIZE)


def _lying_size(package: Path) -> bytes:
    """The canonical tar whose first member's header claims 100 bytes more than it holds."""
    data = pack_tar(package)
    first = tarfile.TarInfo.frombuf(data[:512], tarfile.ENCODING, "surrogateescape")
    return canonical_header(first.name, first.size + 100) + data[512:]


def _unsigned(package: Path, tmp: Path) -> tuple[bytes, bytes]:
    """The canonical tar of the package with a signature of another key: (tar, signature)."""
    copy = tmp / "unsigned"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(package, copy)
    other, _ = signing.generate_keypair()
    signature = signing.sign(other, b"something else")
    (copy / "signature").write_bytes(signature)
    return pack_tar(copy), signature


def _hostile(world) -> dict[str, tuple[bytes, bytes, int | None, type[LwmError], str]]:
    """case: (tar bytes, signature, bytes actually sent (None: all), error, message start)."""
    package, signature = world["package"], (world["package"] / "signature").read_bytes()
    canonical = pack_tar(package)
    unsigned, bad_signature = _unsigned(package, world["tmp"])
    not_canonical = "the upload is not the canonical tar of its package"
    return {
        "truncated stream": (canonical, signature, len(canonical) // 2, InvalidInput, "stream"),
        "header lies about a size": (
            _lying_size(package), signature, None, IntegrityError, "adapter_config.json: size"
        ),
        "non-canonical order": (
            _tar(list(reversed(_members(package)))), signature, None, InvalidInput, not_canonical
        ),
        "ends early": (canonical[:-1024], signature, None, InvalidInput, not_canonical),
        "trailing garbage": (canonical + b"garbage", signature, None, InvalidInput, not_canonical),
        "signature does not verify": (
            unsigned, bad_signature, None, IntegrityError, "signature: does not verify"
        ),
    }


def test_the_canonical_tar_is_built_here_as_pack_tar_builds_it(world):
    assert _tar(_members(world["package"])) == pack_tar(world["package"])


CASES = [
    "truncated stream",
    "header lies about a size",
    "non-canonical order",
    "ends early",
    "trailing garbage",
    "signature does not verify",
]


@pytest.mark.parametrize("case", CASES)
def test_hostile_upload_is_refused_before_its_blob_is_committed(world, case, monkeypatch):
    # Prepare
    market = world["market"]
    data, signature, sent, error, message = _hostile(world)[case]
    manifest = (world["package"] / "manifest.json").read_bytes()
    key_id = signing.key_id(world["key"].public_key())
    header = Header(manifest, signature, key_id, len(data), hashlib.sha256(data).hexdigest())
    body = data[:sent] if sent is not None else data
    chunks = [(i, body[i : i + 4096]) for i in range(0, len(body), 4096)]
    commits: list[str] = []
    commit = BlobWriter.commit
    monkeypatch.setattr(
        BlobWriter, "commit", lambda self, *a, **k: commits.append(case) or commit(self, *a, **k)
    )
    before = (market.learnware_count(), market.blob_count())
    # Execute
    with pytest.raises(error) as refused:
        market.running.market.submit(Caller(key_id, Role.CONTRIBUTOR, "alice"), header, chunks)
    # Assert
    assert str(refused.value).startswith(message), refused.value
    assert commits == [], "the blob was committed before the upload was refused"
    assert (market.learnware_count(), market.blob_count()) == before
    blobs = market.running.market.blobs
    assert list(blobs.temp_dir.iterdir()) == [] and list(blobs.work_dir.iterdir()) == []


def test_a_good_upload_is_committed_once(world, monkeypatch):
    market, package = world["market"], world["package"]
    data = pack_tar(package)
    key_id = signing.key_id(world["key"].public_key())
    header = Header(
        (package / "manifest.json").read_bytes(),
        (package / "signature").read_bytes(),
        key_id,
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    chunks = [(i, data[i : i + 1000]) for i in range(0, len(data), 1000)]
    record = market.running.market.submit(Caller(key_id, Role.CONTRIBUTOR, "a"), header, chunks)
    assert record.package_sha256 == header.sha256
    assert market.running.market.blobs.path_of(header.sha256).read_bytes() == data


# ---------------------------------------------------------------- TarStream alone


def _stream(data: bytes, dest: Path, piece: int) -> TarStream:
    stream = TarStream(dest, PackageLimits())
    for i in range(0, len(data), piece):
        stream.feed(data[i : i + piece])
    return stream


@pytest.mark.parametrize("piece", [1, 511, 512, 513, 65536])
def test_tar_stream_unpacks_and_hashes_whatever_the_pieces(world, tmp_path, piece):
    package = world["package"]
    with _stream(pack_tar(package), tmp_path / "out", piece) as stream:
        streamed = stream.finish()
    assert streamed.canonical
    for name, data in _members(package):
        assert (tmp_path / "out" / name).read_bytes() == data
        assert streamed.files[name].sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (100, "not a valid uncompressed learnware tar: truncated header"),
        (700, "not a valid uncompressed learnware tar: unexpected end of data"),
    ],
)
def test_tar_stream_refuses_a_cut_tar_and_leaves_nothing(world, tmp_path, cut, message):
    stream = _stream(pack_tar(world["package"])[:cut], tmp_path / "out", 4096)
    with stream, pytest.raises(IntegrityError, match=message):
        stream.finish()
    assert list(tmp_path.iterdir()) == []
