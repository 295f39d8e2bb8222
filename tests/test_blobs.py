"""The content-addressed blob store on real files: what lands, what is refused, what a crash
or an abort leaves behind (nothing but complete blobs)."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import server.blobs as blobs_module
from server.blobs import BlobRef, BlobStore
from shared.errors import (
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    NotFound,
    ResourceExhausted,
)

REPO = Path(__file__).resolve().parents[1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_streamed_upload_lands_under_its_hash(blobs: BlobStore) -> None:
    chunks = [os.urandom(1000) for _ in range(5)] + [b"tail"]
    data = b"".join(chunks)

    with blobs.writer() as writer:
        for chunk in chunks:
            writer.write(chunk)
        ref = writer.commit(expected_sha256=sha(data), expected_size=len(data))

    assert ref == BlobRef(sha256=sha(data), size=len(data), path=blobs.path_of(sha(data)))
    assert ref.path == blobs.root / sha(data)[:2] / sha(data)[2:]
    assert ref.path.read_bytes() == data
    assert not stat.S_IMODE(ref.path.stat().st_mode) & 0o222, "blobs are read-only"
    assert blobs.exists(ref.sha256) and blobs.size(ref.sha256) == len(data)
    assert list(blobs.iter_shas()) == [ref.sha256]
    assert list(blobs.temp_dir.iterdir()) == []


def test_put_bytes_open_and_delete(blobs: BlobStore) -> None:
    ref = blobs.put_bytes(b"hello")

    with blobs.open(ref.sha256) as file:
        assert file.read() == b"hello"
    assert blobs.delete(ref.sha256) is True
    assert blobs.delete(ref.sha256) is False
    assert not blobs.exists(ref.sha256)
    with pytest.raises(NotFound):
        blobs.open(ref.sha256)
    with pytest.raises(NotFound):
        blobs.size(ref.sha256)


def test_exception_inside_the_writer_leaves_nothing(blobs: BlobStore) -> None:
    with pytest.raises(RuntimeError), blobs.writer() as writer:
        writer.write(b"half an upload")
        raise RuntimeError("stream cut")

    assert files_under(blobs.root) == []


def test_leaving_without_commit_leaves_nothing(blobs: BlobStore) -> None:
    with blobs.writer() as writer:
        writer.write(b"abandoned")
        assert writer.temp_path.exists()

    assert files_under(blobs.root) == []
    with pytest.raises(ValueError):
        writer.write(b"more")


@pytest.mark.parametrize(
    ("expected_sha", "expected_size", "error"),
    [
        (sha(b"other bytes"), None, IntegrityError),
        (None, 999, InvalidInput),
        (sha(b"other bytes"), 999, InvalidInput),  # a short stream: the size says more
        ("../" * 21 + "x", None, InvalidInput),
    ],
)
def test_mismatch_is_refused_and_leaves_nothing(
    blobs: BlobStore, expected_sha: str | None, expected_size: int | None, error: type[Exception]
) -> None:
    with pytest.raises(error), blobs.writer() as writer:
        writer.write(b"payload")
        writer.commit(expected_sha256=expected_sha, expected_size=expected_size)

    assert files_under(blobs.root) == []


def test_size_limit_aborts_the_upload(blobs: BlobStore) -> None:
    with pytest.raises(ResourceExhausted), blobs.writer(max_size=10) as writer:
        writer.write(b"12345")
        writer.write(b"123456")

    assert files_under(blobs.root) == []


def test_concurrent_writers_of_the_same_content(blobs: BlobStore) -> None:
    data = os.urandom(256 * 1024)
    start = threading.Barrier(8)
    refs: list[BlobRef] = []
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            start.wait()
            with blobs.writer() as writer:
                for i in range(0, len(data), 16 * 1024):
                    writer.write(data[i : i + 16 * 1024])
                refs.append(writer.commit(expected_sha256=sha(data)))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(refs) == 8 and len(set(refs)) == 1
    assert files_under(blobs.root) == [refs[0].path]
    assert refs[0].path.read_bytes() == data


def test_read_range(blobs: BlobStore) -> None:
    data = bytes(range(256)) * 4
    ref = blobs.put_bytes(data)

    assert blobs.read_range(ref.sha256, 0, 10) == data[:10]
    assert blobs.read_range(ref.sha256, 1000, 100) == data[1000:]  # short at the end
    assert blobs.read_range(ref.sha256, len(data), 5) == b""  # resuming a finished fetch
    assert blobs.read_range(ref.sha256, 5, 0) == b""
    with pytest.raises(InvalidInput, match="beyond"):
        blobs.read_range(ref.sha256, len(data) + 1, 5)
    with pytest.raises(InvalidInput):
        blobs.read_range(ref.sha256, -1, 5)
    with pytest.raises(NotFound):
        blobs.read_range(sha(b"absent"), 0, 5)


@pytest.mark.parametrize(
    "bad",
    [
        "../" * 21 + "a",
        "/etc/passwd",
        sha(b"x").upper(),
        sha(b"x")[:63],
        sha(b"x") + "0",
        sha(b"x")[:62] + "/.",
        "",
    ],
)
def test_names_that_are_not_sha256_are_refused(blobs: BlobStore, tmp_path: Path, bad: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")

    for call in (blobs.exists, blobs.size, blobs.open, blobs.delete, blobs.path_of):
        with pytest.raises(InvalidInput):
            call(bad)
    with pytest.raises(InvalidInput):
        blobs.read_range(bad, 0, 1)

    assert victim.read_bytes() == b"keep me"


def test_gc_removes_only_orphans(blobs: BlobStore) -> None:
    kept = blobs.put_bytes(b"referenced")
    orphan = blobs.put_bytes(b"orphan from a crash before the database commit")
    stray = blobs.root / "README"  # not a blob: left alone
    stray.write_text("operator notes")

    assert blobs.gc({kept.sha256}) == 1

    assert list(blobs.iter_shas()) == [kept.sha256]
    assert not orphan.path.exists() and stray.exists()
    assert blobs.gc({kept.sha256}) == 0


def test_gc_and_cleanup_spare_recent_files_when_asked(blobs: BlobStore) -> None:
    fresh = blobs.put_bytes(b"just uploaded, row not committed yet")
    writer = blobs.writer()
    writer.write(b"in flight")

    assert blobs.gc(set(), min_age_s=60) == 0
    assert blobs.cleanup_temp(min_age_s=60) == 0
    old = time.time() - 120
    os.utime(fresh.path, (old, old))
    assert blobs.gc(set(), min_age_s=60) == 1
    writer.abort()


def test_cleanup_temp_after_a_killed_upload(blobs: BlobStore) -> None:
    # Prepare: a real process streams into the store and is killed with SIGKILL mid-upload.
    script = (
        "import os, signal, sys\n"
        "from server.blobs import BlobStore\n"
        "w = BlobStore(sys.argv[1]).writer()\n"
        "w.write(b'x' * 100000)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(blobs.root)], cwd=REPO, capture_output=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(list(blobs.temp_dir.iterdir())) == 1
    kept = blobs.put_bytes(b"complete")

    # Execute: what the server does at start.
    removed = blobs.cleanup_temp()

    assert removed == 1
    assert list(blobs.temp_dir.iterdir()) == []
    assert list(blobs.iter_shas()) == [kept.sha256]


def test_a_failed_provisional_upload_removes_its_blob_unless_owned(blobs: BlobStore) -> None:
    kept, dropped = blobs.put_bytes(b"owned elsewhere"), blobs.put_bytes(b"nobody's")
    owners = {kept.sha256}

    for ref in (kept, dropped):
        with pytest.raises(RuntimeError), blobs.provisional(ref.sha256, owners.__contains__):
            raise RuntimeError("a later check failed")

    assert blobs.exists(kept.sha256) and not blobs.exists(dropped.sha256)
    with blobs.provisional(dropped.sha256, owners.__contains__):
        pass  # success keeps whatever the block stored
    assert len(blobs._uploads) == 0  # no lock outlives its uploads


def test_provisional_serialises_uploads_of_the_same_bytes(blobs: BlobStore) -> None:
    sha256, inside, most = sha(b"same"), [0], [0]

    def upload() -> None:
        with blobs.provisional(sha256, lambda _: True):
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            inside[0] -= 1

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert most[0] == 1 and len(blobs._uploads) == 0


def test_cleanup_removes_the_scratch_folders_a_crash_left(blobs: BlobStore) -> None:
    # Prepare: what a server killed mid-check leaves: an unpacked package under work/.
    package = blobs.work_dir / "submit-crashed" / "package"
    package.mkdir(parents=True)
    (package / "adapter_model.safetensors").write_bytes(b"x" * 10_000)
    kept = blobs.put_bytes(b"complete")

    # Execute: what the server does at start.
    removed = blobs.cleanup_temp()

    assert removed == 1
    assert list(blobs.work_dir.iterdir()) == []
    assert list(blobs.iter_shas()) == [kept.sha256]


def test_many_distinct_failed_uploads_leave_no_lock_behind(blobs: BlobStore) -> None:
    for n in range(500):  # an attacker's unvalidated shas, each upload failing
        with pytest.raises(IntegrityError), blobs.provisional(sha(b"%d" % n), lambda _: False):
            raise IntegrityError("the bytes do not match the announced sha256")

    assert len(blobs._uploads) == 0


def test_replicas_share_the_store_and_only_the_first_cleans_it(tmp_path, monkeypatch):
    monkeypatch.setattr(blobs_module, "CLAIM_WAIT_S", 0.5)
    store = BlobStore(tmp_path)
    first = store.claim(replicas=True)  # alone: holds it exclusively while it cleans up
    with pytest.raises(FailedPrecondition, match="in use"):
        store.claim(replicas=True)  # a second waits for that, here past CLAIM_WAIT_S

    first.serve()
    second = store.claim(replicas=True)

    assert first.alone and not second.alone
    with pytest.raises(FailedPrecondition, match="in use by another running server"):
        store.claim()  # a single server is refused while replicas serve
    first.release()
    second.release()
    single = store.claim()
    with pytest.raises(FailedPrecondition, match="in use"):
        store.claim(replicas=True)  # and replicas while a single server serves
    single.release()
