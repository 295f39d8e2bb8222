"""The market server over real gRPC + TLS on loopback, with real signed packages."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import signal
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from builders import (
    build_learnware,
    flip_byte,
    random_rkme_spec,
    rebuild_learnware,
    rkme_schema,
    train_lora_adapter,
    write_raw_spec,
    write_specs,
)
from market_fixtures import market_server
from processes import is_alive, smoke_pids, wait_for
from sqlalchemy import event

from client.market import Connection, MarketClient, query_spec
from server.auth import Caller
from server.blobs import BlobStore
from server.checker import Checker, Judgment, describe_base_models
from server.db import SpecRow
from server.judging import JudgingGate
from server.key_cache import KeyCache
from server.market import Market
from server.records import KeyRecord, LearnwareFilter, LearnwareRecord, Role, Status
from server.sandbox import SmokeLimits
from server.settings import Limits
from server.store import Store
from server.submission import Header
from shared import signing
from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    LwmError,
    ModelUnavailable,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SchemaMismatch,
    Unauthenticated,
    Unavailable,
)
from shared.learnware import pack_tar
from shared.models import model_ref
from shared.proto import market_pb2 as pb
from shared.spec.schema import MarketSchema


@pytest.fixture(scope="module")
def world(tmp_path_factory, lwm_home):
    tmp = tmp_path_factory.mktemp("market")
    adapter = train_lora_adapter(lwm_home, tmp / "adapter")
    schema = rkme_schema(lwm_home)
    with market_server(tmp, lwm_home) as market:
        alice = market.new_key("alice", Role.CONTRIBUTOR)
        market.new_key("bob", Role.CONTRIBUTOR)
        market.new_key("uma", Role.USER)
        yield {
            "market": market,
            "tmp": tmp,
            "adapter": adapter,
            "schema": schema,
            "alice": alice,
            "base": model_ref("tiny", lwm_home),
        }


_counter = iter(range(10_000))


def package(world, key=None, seed=None, spec_file=None, **changes) -> Path:
    """A fresh, correctly signed learnware (unique bytes via the spec's noise seed)."""
    n = next(_counter)
    seed = n if seed is None else seed
    tmp = world["tmp"] / f"pkg{n}"
    tmp.mkdir()
    if spec_file is None:
        spec = random_rkme_spec(world["schema"], seed=seed)
        spec_file = write_specs(tmp / "spec.safetensors", [spec])
    return build_learnware(
        tmp / "lw",
        adapter=world["adapter"],
        spec_file=spec_file,
        base=world["base"],
        private_key=key or world["alice"],
        **changes,
    )


def test_submit_search_fetch_withdraw(world):
    market = world["market"]
    alice, uma = market.client("alice"), market.client("uma")
    lw = package(world, seed=101, name="cardio-notes", domain="medicine")
    reply = alice.submit(lw)
    assert reply.status == pb.LEARNWARE_STATUS_USABLE, reply.reason
    info = uma.get(reply.id)
    assert info.name == "cardio-notes" and info.domain == "medicine"
    assert info.specs[0].kind == "rkme" and info.dp.parts
    # The same data (same seed, same noise) is the nearest spec of all.
    query = random_rkme_spec(world["schema"], seed=101)
    results = uma.search(query, top_k=3)
    assert results[0].learnware.id == reply.id
    assert results[0].why.rank == 1 and results[0].why.kind == "rkme"
    assert [r.learnware.id for r in uma.search(query, domain="finance")] == []
    out = world["tmp"] / "fetched.tar"
    header = uma.fetch(reply.id, out)
    assert out.read_bytes() == pack_tar(lw)
    assert header.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert header.contributor_public_key and header.signature == (lw / "signature").read_bytes()
    # Withdraw: gone from search and fetch, still visible to its contributor.
    assert alice.withdraw(reply.id, "superseded").status == pb.LEARNWARE_STATUS_WITHDRAWN
    assert reply.id not in [r.learnware.id for r in uma.search(query, top_k=10)]
    with pytest.raises(NotFound):
        uma.get(reply.id)
    assert alice.get(reply.id).reason == "superseded"


def test_a_search_says_how_sure_it_is_and_refuses_rankings_it_cannot_do(world):
    alice, uma = world["market"].client("alice"), world["market"].client("uma")
    for seed in (201, 202, 203):
        alice.submit(package(world, seed=seed, name=f"sure-{seed}"))  # 3 names, not versions
    query = random_rkme_spec(world["schema"], seed=202)
    answer = uma.find(query, top_k=1)
    assert len(answer.results) == 1 and answer.results[0].why.kind == "rkme"
    assert answer.HasField("confidence") and answer.confidence.method == "rkme"
    assert 0 < answer.confidence.first_right <= 1 and answer.confidence.margin > 0
    with pytest.raises(LwmError, match="needs a spec of that kind") as refused:
        uma.find(query, ranking="pave")
    assert refused.value.status == "INVALID_ARGUMENT"
    with pytest.raises(LwmError, match="two rkme specs"):
        uma.find(query, more=[random_rkme_spec(world["schema"], seed=9)])


def test_fetch_resumes_from_a_partial_download(world):
    market = world["market"]
    reply = market.client("alice").submit(package(world))
    out = world["tmp"] / "resume.tar"
    full = market.running.market.blobs.path_of(
        market.running.market.store.get(reply.id).package_sha256
    ).read_bytes()
    (world["tmp"] / "resume.tar.part").write_bytes(full[:1000])
    market.client("uma").fetch(reply.id, out)
    assert out.read_bytes() == full


def test_list_pages_and_filters(world):
    market = world["market"]
    alice = market.client("alice")
    ids = {alice.submit(package(world, domain="law")).id for _ in range(3)}
    uma = market.client("uma")
    listed = list(uma.iter_learnwares(domain="law", page_size=2, all_versions=True))
    assert {i.id for i in listed} == ids
    assert all(i.status == pb.LEARNWARE_STATUS_USABLE for i in listed)
    # one name submitted three times: by default only its newest version is listed
    (newest,) = uma.iter_learnwares(domain="law", page_size=2)
    assert newest.version == max(i.version for i in listed) >= 3


def _refused(world, submit, error, needle):
    market = world["market"]
    before = (market.learnware_count(), market.blob_count())
    with pytest.raises(error) as excinfo:
        submit()
    assert needle in str(excinfo.value)
    assert (market.learnware_count(), market.blob_count()) == before, "refusal left something"


def test_tampered_packages_are_refused_and_leave_nothing(world):
    alice = world["market"].client("alice")
    for name in ("adapter_model.safetensors", "spec.safetensors"):
        lw = package(world)
        flip_byte(lw / name, index=-2)
        _refused(world, lambda lw=lw: alice.submit(lw), InvalidInput, name)
    lw = package(world)
    flip_byte(lw / "signature", index=0)
    _refused(world, lambda: alice.submit(lw), InvalidInput, "signature")
    lw = package(world)
    manifest = (lw / "manifest.json").read_bytes()
    flip_byte(lw / "manifest.json", index=manifest.index(b'"name":"') + len(b'"name":"'))
    _refused(world, lambda: alice.submit(lw), InvalidInput, "signature")


def test_wrong_key_and_unregistered_key_are_refused(world):
    market = world["market"]
    mallory = market.new_key("mallory", None)  # never registered
    lw = package(world, key=mallory)
    _refused(world, lambda: market.client("mallory").submit(lw), Unauthenticated, "")
    # bob submits a package signed by (and naming) alice: refused
    _refused(
        world,
        lambda: market.client("bob").submit(package(world)),
        PermissionDenied,
        "alice" if False else "",
    )


def test_bad_content_is_refused_with_the_right_status(world):
    alice = world["market"].client("alice")
    good = random_rkme_spec(world["schema"], seed=7)
    tmp = world["tmp"] / "bad-specs"
    tmp.mkdir()
    nan = good.vector.copy()
    nan[0] = np.nan
    nan_file = write_raw_spec(tmp / "nan.safetensors", "rkme", nan, good.metadata())
    _refused(
        world, lambda: alice.submit(package(world, spec_file=nan_file)), InvalidInput, "finite"
    )
    other = rkme_schema_other(world)
    wrong = write_specs(tmp / "wrong.safetensors", [random_rkme_spec(other, seed=8)])
    _refused(world, lambda: alice.submit(package(world, spec_file=wrong)), SchemaMismatch, "schema")


def rkme_schema_other(world):
    import dataclasses

    return dataclasses.replace(world["schema"], gamma=0.25)


def _raw_submit(world, key_name, header, chunks):
    client = world["market"].client(key_name)

    def requests():
        yield pb.SubmitRequest(header=header)
        for offset, data in chunks:
            yield pb.SubmitRequest(chunk=pb.Chunk(offset=offset, data=data))

    return client._call(client.stub.Submit, requests())


def test_pickle_bearing_and_oversized_uploads(world):
    lw = package(world)
    manifest, signature = (lw / "manifest.json").read_bytes(), (lw / "signature").read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(lw.iterdir()):
            tar.add(path, arcname=path.name)
        evil = b"cos\nsystem\n(S'echo pwned'\ntR."
        member = tarfile.TarInfo("adapter_model.bin")
        member.size = len(evil)
        tar.addfile(member, io.BytesIO(evil))
    data = buffer.getvalue()
    key_id = world["market"].running.market.store.list_keys()[1].key_id
    header = pb.SubmitHeader(
        manifest_json=manifest,
        signature=signature,
        contributor_key_id=_alice_id(world),
        total_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    assert key_id
    _refused(world, lambda: _raw_submit(world, "alice", header, [(0, data)]), InvalidInput, ".bin")
    big = pb.SubmitHeader(
        manifest_json=manifest,
        signature=signature,
        contributor_key_id=_alice_id(world),
        total_size=10**12,
        sha256="0" * 64,
    )
    _refused(world, lambda: _raw_submit(world, "alice", big, []), ResourceExhausted, "limit")
    chunk_limit = world["market"].running.market.limits.max_chunk_bytes
    fat = pb.SubmitHeader(
        manifest_json=manifest,
        signature=signature,
        contributor_key_id=_alice_id(world),
        total_size=chunk_limit + 1,
        sha256="0" * 64,
    )
    blob = b"x" * (chunk_limit + 1)
    _refused(
        world, lambda: _raw_submit(world, "alice", fat, [(0, blob)]), ResourceExhausted, "chunk"
    )


def _alice_id(world):
    from shared import signing

    return signing.key_id(world["alice"].public_key())


def test_stream_cut_halfway_leaves_nothing(world):
    market = world["market"]
    lw = package(world)
    data = pack_tar(lw)
    header = pb.SubmitHeader(
        manifest_json=(lw / "manifest.json").read_bytes(),
        signature=(lw / "signature").read_bytes(),
        contributor_key_id=_alice_id(world),
        total_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    stop = threading.Event()
    client = market.client("alice")

    def requests():
        yield pb.SubmitRequest(header=header)
        yield pb.SubmitRequest(chunk=pb.Chunk(offset=0, data=data[: len(data) // 2]))
        stop.wait(10)  # hold the stream open, then the client cancels it

    before = (market.learnware_count(), market.blob_count())
    future = client.stub.Submit.future(requests(), timeout=30)
    threading.Timer(1.0, future.cancel).start()
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    stop.set()
    import time

    time.sleep(1.0)  # the server notices the cancellation and unwinds
    assert (market.learnware_count(), market.blob_count()) == before
    root = market.running.market.blobs.root
    temp = [p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] == "tmp"]
    assert not temp, temp


def test_roles(world):
    market = world["market"]
    lw = package(world)
    _refused(world, lambda: market.client("uma").submit(lw), PermissionDenied, "USER")
    reply = market.client("alice").submit(lw)
    with pytest.raises(PermissionDenied, match="withdraw"):
        market.client("bob").withdraw(reply.id)
    with pytest.raises(PermissionDenied):
        market.client("uma").stats()
    assert market.client("admin").stats().learnwares_total >= 1


def test_whoami_names_the_callers_own_key_and_role(world):
    market = world["market"]

    answers = {name: market.client(name).whoami() for name in ("admin", "alice", "uma")}

    assert answers["uma"].name == "uma" and answers["uma"].role == pb.ROLE_USER
    assert answers["alice"].role == pb.ROLE_CONTRIBUTOR and not answers["alice"].revoked
    assert answers["admin"].role == pb.ROLE_ADMIN
    assert answers["uma"].key_id == market.client("uma").key_id
    assert market.client("alice").require_role("contributor", "submitting").name == "alice"
    assert market.client("admin").require_role("contributor", "submitting").role == pb.ROLE_ADMIN
    with pytest.raises(PermissionDenied, match=r"\(uma\) has the user role, and submitting"):
        market.client("uma").require_role("contributor", "submitting")
    stranger = world["tmp"] / "stranger.key"
    signing.save_private_key(stranger, signing.generate_keypair()[0])
    client = MarketClient(Connection(market.address, key_path=stranger, ca=market.layout.ca_cert))
    with pytest.raises(Unauthenticated, match="unknown or revoked key id"):
        client.whoami()


def test_revoked_key_is_refused(world):
    market = world["market"]
    market.new_key("temp", Role.USER)
    client = market.client("temp")
    query = random_rkme_spec(world["schema"], seed=1)
    client.search(query)
    market.client("admin").revoke_key(client.key_id)
    with pytest.raises(Unauthenticated):
        client.search(query)


def test_concurrent_searches_and_uploads(tmp_path, lwm_home):
    """32 concurrent searches with 4 concurrent uploads: no errors, no lost submission."""
    adapter = train_lora_adapter(lwm_home, tmp_path / "adapter")
    schema = rkme_schema(lwm_home)
    with market_server(tmp_path / "m", lwm_home, run_smoke=False) as market:
        key = market.new_key("carol", Role.CONTRIBUTOR)
        market.new_key("ursula", Role.USER)
        world = {
            "tmp": tmp_path,
            "adapter": adapter,
            "schema": schema,
            "alice": key,
            "base": model_ref("tiny", lwm_home),
        }
        packages = [package(world) for _ in range(4)]
        query = random_rkme_spec(schema, seed=5)

        def upload(lw):
            return market.client("carol").submit(lw).id

        def search(_):
            return len(market.client("ursula").search(query, top_k=5))

        with ThreadPoolExecutor(max_workers=36) as pool:
            uploads = [pool.submit(upload, lw) for lw in packages]
            searches = [pool.submit(search, i) for i in range(32)]
            ids = [f.result() for f in uploads]
            assert all(f.result() >= 0 for f in searches)
        assert len(set(ids)) == 4
        stored = market.running.market.store
        assert all(stored.get(i).status is Status.USABLE for i in ids)
        assert {stored.get(i).version for i in ids} == {1, 2, 3, 4}  # one name, 4 versions
        ursula = market.client("ursula")
        assert len(ursula.search(query, top_k=10, all_versions=True)) == 4
        assert [r.learnware.version for r in ursula.search(query, top_k=10)] == [4]


def test_revoking_a_contributor_withdraws_its_learnwares_from_users(world):
    market = world["market"]
    dora = market.new_key("dora", Role.CONTRIBUTOR)
    reply = market.client("dora").submit(package(world, key=dora, seed=4242))
    query = random_rkme_spec(world["schema"], seed=4242)
    uma = market.client("uma")
    assert uma.search(query, top_k=1)[0].learnware.id == reply.id
    market.client("admin").revoke_key(market.client("dora").key_id)
    assert reply.id not in [r.learnware.id for r in uma.search(query, top_k=20)]
    with pytest.raises(LwmError, match="revoked") as excinfo:
        uma.fetch(reply.id, world["tmp"] / "revoked.tar")
    assert excinfo.value.status == "FAILED_PRECONDITION"


# ---------------------------------------------------------------- the market without gRPC


def direct_market(world, root: Path, limits: Limits | None = None, **checking) -> Market:
    """A ``Market`` over its own database and blobs (no server); ``checking`` are the
    ``Checker``'s options (default: the smoke run off)."""
    home = world["market"].running.market.checker.home
    bases = describe_base_models(["tiny"], home)
    options = {"run_smoke": False, **checking}
    checker = Checker(MarketSchema(rkme=world["schema"]), bases, home, **options)
    store = Store.open(f"sqlite:///{root / 'market.db'}")
    return Market(store, BlobStore(root / "blobs"), checker, limits or Limits())


def upload_of(lw: Path, key_id: str) -> tuple[Header, list[tuple[int, bytes]]]:
    data, step = pack_tar(lw), Limits().max_chunk_bytes
    header = Header(
        (lw / "manifest.json").read_bytes(),
        (lw / "signature").read_bytes(),
        key_id,
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    return header, [(i, data[i : i + step]) for i in range(0, len(data), step)]


def test_identical_uploads_at_once_store_one_learnware_and_keep_its_blob(world, tmp_path):
    market = direct_market(world, tmp_path)
    public = signing.public_key_bytes(world["alice"].public_key())
    key = market.register_key(public, Role.CONTRIBUTOR, "alice")
    caller = Caller(key.key_id, Role.CONTRIBUTOR, "alice")
    header, chunks = upload_of(package(world), key.key_id)

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(market.submit, caller, header, chunks) for _ in range(3)]
    outcomes = [f.exception() or f.result() for f in futures]

    stored = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(stored) == 1 and stored[0].status is Status.USABLE
    assert all(isinstance(o, AlreadyExists) for o in outcomes if o not in stored)
    assert market.blobs.exists(header.sha256) and len(market.blobs._uploads) == 0
    assert not list(market.blobs.work_dir.iterdir())  # no scratch folder left


def test_a_restart_judges_what_a_crash_left_pending(world, tmp_path, monkeypatch):
    market = direct_market(world, tmp_path)
    public = signing.public_key_bytes(world["alice"].public_key())
    key = market.register_key(public, Role.CONTRIBUTOR, "alice")
    header, chunks = upload_of(package(world, seed=777), key.key_id)

    def crash(*_):
        raise ModelUnavailable("the market lost its base model mid-judgment")

    monkeypatch.setattr(market.checker, "judge", crash)
    with pytest.raises(ModelUnavailable):
        market.submit(Caller(key.key_id, Role.CONTRIBUTOR, "alice"), header, chunks)
    (pending,) = market.store.list().items
    assert pending.status is Status.PENDING

    restarted = direct_market(world, tmp_path)
    restarted.start()  # alone: the crashed one's claim on the judgment is freed at once
    still = restarted.store.get(pending.id).status  # start serves first, judges later
    restarted.start_judging()
    try:
        judged = wait_for(lambda: restarted.store.get(pending.id).status is Status.USABLE, 60)
    finally:
        restarted.close()

    assert still is Status.PENDING and judged
    query = random_rkme_spec(world["schema"], seed=777)
    hits = restarted.search(Caller("u", Role.USER, "uma"), query, 1, LearnwareFilter()).hits
    assert [h.record.id for h in hits] == [pending.id]


def test_a_restart_serves_from_its_index_snapshot_with_manifests_read_on_demand(world, tmp_path):
    """A market at start reads its learnwares without manifest or signature (at a million
    they are gigabytes) and its index from the snapshot the first start wrote; a search
    answers with the stored manifest and signature all the same."""
    market = direct_market(world, tmp_path)
    public = signing.public_key_bytes(world["alice"].public_key())
    key = market.register_key(public, Role.CONTRIBUTOR, "alice")
    header, chunks = upload_of(package(world, seed=778), key.key_id)
    stored = market.submit(Caller(key.key_id, Role.CONTRIBUTOR, "alice"), header, chunks)
    assert stored.status is Status.USABLE
    market.start()  # no snapshot yet: rebuilt, and one written
    market.close()
    assert len(list((tmp_path / "blobs" / "index").glob("snapshot-*.npz"))) == 1

    restarted = direct_market(world, tmp_path)
    restarted.start()
    restarted.close()
    assert restarted._usable[stored.id].manifest_json == b""  # not read at start
    query = random_rkme_spec(world["schema"], seed=778)
    (hit,) = restarted.search(Caller("u", Role.USER, "uma"), query, 1, LearnwareFilter()).hits
    assert hit.record.id == stored.id
    assert hit.record.manifest_json == header.manifest_json
    assert hit.record.signature == header.signature
    assert restarted._usable[stored.id].manifest_json == header.manifest_json  # read once


# ---------------------------------------------------------------- the smoke runs (issue 12)


def test_one_smoke_run_at_a_time_and_a_full_line_refuses_before_reading(world, tmp_path):
    market, alice = market_with_alice(
        world, tmp_path, checking={"run_smoke": True, "gate": JudgingGate(1, 1)}
    )
    uploads = [upload_of(package(world), alice.key_id) for _ in range(3)]
    seen: list[int] = []  # smoke processes of this process, every 50 ms
    done = threading.Event()
    watcher = threading.Thread(target=lambda: watch_smokes(seen, done))
    read: list[int] = []

    def third_chunks():
        read.append(1)
        yield from uploads[2][1]

    watcher.start()
    with ThreadPoolExecutor(max_workers=2) as pool:
        admitted = [pool.submit(market.submit, alice, h, c) for h, c in uploads[:2]]
        assert wait_for(lambda: market.checker.gate.placed == 2 and max(seen, default=0), 60)
        with pytest.raises(ResourceExhausted, match=r"2 uploads are being judged or waiting"):
            market.submit(alice, uploads[2][0], third_chunks())
        results = [f.result(timeout=300) for f in admitted]
    done.set()
    watcher.join()

    assert [r.status for r in results] == [Status.USABLE, Status.USABLE]
    assert max(seen) == 1, f"smoke processes seen at once: {max(seen)}"
    assert not read, "the refused upload's bytes were read"
    assert market.store.stats().learnwares == 2 and len(list(market.blobs.iter_shas())) == 2
    assert market.checker.gate.placed == 0


def watch_smokes(seen: list[int], done: threading.Event) -> None:
    while not done.is_set():
        seen.append(len(smoke_pids(os.getpid())))
        time.sleep(0.05)


def test_closing_the_market_kills_its_smoke_run_and_leaves_the_learnware_pending(
    world, tmp_path
):
    market, alice = market_with_alice(world, tmp_path, checking={"run_smoke": True})
    header, chunks = upload_of(package(world), alice.key_id)

    with ThreadPoolExecutor(max_workers=1) as pool:
        judging = pool.submit(market.submit, alice, header, chunks)
        (smoke,) = wait_for(lambda: smoke_pids(os.getpid()), 60)
        os.kill(smoke, signal.SIGSTOP)  # a hung smoke run: it would never finish by itself
        start = time.monotonic()
        market.close()
        with pytest.raises(Unavailable, match="the market is stopping"):
            judging.result(timeout=10)

    assert time.monotonic() - start < 5 and not is_alive(smoke)
    (record,) = market.store.list().items
    assert record.status is Status.PENDING  # judged again after the next start
    with pytest.raises(Unavailable):
        submit_new(world, market, alice)


def test_a_smoke_run_over_its_memory_limit_fails_clearly_and_the_market_carries_on(
    world, tmp_path
):
    small = SmokeLimits(memory_bytes=256 * 1024 * 1024)
    market, alice = market_with_alice(
        world, tmp_path, checking={"run_smoke": True, "smoke_limits": small}
    )

    with pytest.raises(ModelUnavailable, match="out of memory under the smoke run's limit of 256"):
        submit_new(world, market, alice)

    (record,) = market.store.list().items
    assert record.status is Status.PENDING and market.checker.gate.placed == 0
    market.checker.smoke_limits = SmokeLimits()  # the operator raises the limit
    market.judge_queued(record.id)
    assert market.store.get(record.id).status is Status.USABLE


# ---------------------------------------------------------------- hostile callers (issue 12)

BOB = Caller("id-bob", Role.CONTRIBUTOR, "bob")
UMA = Caller("id-uma", Role.USER, "uma")
ADMIN = Caller("id-admin", Role.ADMIN, "admin")


def market_with_alice(
    world, root: Path, checking: dict | None = None, **limits: int
) -> tuple[Market, Caller]:
    """A direct market with alice registered as a contributor, and alice as a caller;
    ``checking`` are the ``Checker``'s options (``direct_market``)."""
    market = direct_market(world, root, Limits(**limits), **(checking or {}))
    public = signing.public_key_bytes(world["alice"].public_key())
    key = market.register_key(public, Role.CONTRIBUTOR, "alice")
    return market, Caller(key.key_id, Role.CONTRIBUTOR, "alice")


def submit_new(world, market: Market, caller: Caller, seed: int | None = None) -> LearnwareRecord:
    header, chunks = upload_of(package(world, seed=seed), caller.key_id)
    return market.submit(caller, header, chunks)


def rejection(reason: str) -> Judgment:
    return Judgment(Status.REJECTED, reason, manifest=None, specs=[], seconds=0.0)


def listed(market: Market, caller: Caller) -> set[str]:
    every = LearnwareFilter(all_versions=True)  # the packages share one name: versions
    return {r.id for r in market.list_page(caller, every, 100, "").items}


def test_one_visibility_rule_for_get_list_and_fetch(world, tmp_path, monkeypatch):
    market, alice = market_with_alice(world, tmp_path)
    usable = submit_new(world, market, alice)
    withdrawn = market.withdraw(alice, submit_new(world, market, alice).id, "superseded")
    monkeypatch.setattr(market.checker, "judge", lambda *_: rejection("smoke run failed"))
    rejected = submit_new(world, market, alice)

    assert listed(market, BOB) == listed(market, UMA) == {usable.id}
    assert listed(market, alice) == listed(market, ADMIN) == {usable.id, withdrawn.id, rejected.id}
    for hidden in (withdrawn, rejected):
        for caller in (BOB, UMA):
            with pytest.raises(NotFound):
                market.get(caller, hidden.id)
            with pytest.raises(NotFound):
                market.fetch(caller, hidden.id, 0)
    assert market.get(alice, rejected.id).reason == "smoke run failed"
    with pytest.raises(PermissionDenied, match="only its own"):
        market.fetch(BOB, usable.id, 0)
    stored = market.blobs.path_of(usable.package_sha256).read_bytes()
    for caller in (UMA, alice, ADMIN):
        assert b"".join(d for _, d in market.fetch(caller, usable.id, 0).chunks) == stored
    with pytest.raises(FailedPrecondition, match="rejected"):
        market.fetch(alice, rejected.id, 0)


def test_rejected_learnwares_keep_their_row_not_their_blob(world, tmp_path, monkeypatch):
    market, alice = market_with_alice(world, tmp_path)
    monkeypatch.setattr(market.checker, "judge", lambda *_: rejection("smoke run failed"))

    rejected = submit_new(world, market, alice)

    assert market.store.get(rejected.id).status is Status.REJECTED
    assert market.store.get(rejected.id).reason == "smoke run failed"
    assert not market.blobs.exists(rejected.package_sha256)


def test_withdraw_reasons_and_names_are_capped_and_withdrawing_twice_fails(world, tmp_path):
    market, alice = market_with_alice(world, tmp_path)
    lw = submit_new(world, market, alice)

    with pytest.raises(InvalidInput, match="the limit is 2000"):
        market.withdraw(alice, lw.id, "x" * (8 * 1024 * 1024))
    assert market.store.get(lw.id).status is Status.USABLE
    market.withdraw(alice, lw.id, "superseded")
    with pytest.raises(FailedPrecondition, match="WITHDRAWN"):
        market.withdraw(alice, lw.id, "again")
    with pytest.raises(InvalidInput, match="revoke reason"):
        market.revoke_key(ADMIN, alice.key_id, "x" * 2001)
    _, public = signing.generate_keypair()
    with pytest.raises(InvalidInput, match="key name"):
        market.register_key(signing.public_key_bytes(public), Role.USER, "n" * 201)
    assert market.store.get_key(alice.key_id).revoked is False


def test_withdrawing_twice_answers_failed_precondition(world):
    alice = world["market"].client("alice")
    reply = alice.submit(package(world))
    alice.withdraw(reply.id, "gone")
    with pytest.raises(LwmError) as excinfo:
        alice.withdraw(reply.id, "again")
    assert excinfo.value.status == "FAILED_PRECONDITION"


def test_a_contributor_revoked_during_its_checks_is_not_published(world, tmp_path, monkeypatch):
    market, alice = market_with_alice(world, tmp_path)
    judge = market.checker.judge

    def judge_while_revoked(package_dir, static):
        market.revoke_key(ADMIN, alice.key_id, "key stolen")
        return judge(package_dir, static)

    monkeypatch.setattr(market.checker, "judge", judge_while_revoked)
    stored = submit_new(world, market, alice, seed=4343)

    assert stored.status is Status.REJECTED and "revoked" in stored.reason
    query = random_rkme_spec(world["schema"], seed=4343)
    assert market.search(UMA, query, 5, LearnwareFilter()).hits == []


DEEP_JSON = "[" * 100_000 + "]" * 100_000  # 200k characters, 100k levels


def test_deeply_nested_json_is_invalid_argument_not_internal(world, tmp_path):
    # A manifest (under its size limit) and a search query's metadata, over gRPC.
    header = pb.SubmitHeader(
        manifest_json=DEEP_JSON.encode(),
        signature=bytes(64),
        contributor_key_id=_alice_id(world),
        total_size=10,
        sha256="0" * 64,
    )
    with pytest.raises(InvalidInput, match="deep"):
        _raw_submit(world, "alice", header, [])
    uma = world["market"].client("uma")
    request = pb.SearchRequest(spec=query_spec(random_rkme_spec(world["schema"], seed=3)))
    request.spec.metadata_json = DEEP_JSON
    with pytest.raises(InvalidInput, match="deep"):
        uma._call(uma.stub.Search, request)
    # A spec file's metadata, in a correctly signed package.
    from safetensors.numpy import save_file

    market, alice = market_with_alice(world, tmp_path)
    spec_file = tmp_path / "deep.safetensors"
    vector = random_rkme_spec(world["schema"], seed=9).vector
    save_file({"rkme": np.ascontiguousarray(vector)}, str(spec_file), {"lwm.spec.rkme": DEEP_JSON})
    lw = rebuild_learnware(package(world), tmp_path / "deep", world["alice"], spec_file=spec_file)
    header_, chunks = upload_of(lw, alice.key_id)
    with pytest.raises(InvalidInput, match="deep"):
        market.submit(alice, header_, chunks)
    assert market.store.stats().learnwares == 0 and not list(market.blobs.iter_shas())


def test_start_removes_scratch_folders_a_crash_left(world, tmp_path):
    market = direct_market(world, tmp_path)
    crashed = market.blobs.work_dir / "submit-crashed" / "package"
    crashed.mkdir(parents=True)
    (crashed / "adapter_model.safetensors").write_bytes(b"x" * 10_000)

    market.start()
    market.close()  # the change feed's reader

    assert list(market.blobs.work_dir.iterdir()) == []


def test_a_contributor_quota_counts_pending_and_usable(world, tmp_path):
    market, alice = market_with_alice(world, tmp_path, max_active_per_key=2)
    first = submit_new(world, market, alice)
    submit_new(world, market, alice)

    with pytest.raises(ResourceExhausted, match="the limit is 2"):
        submit_new(world, market, alice)
    market.withdraw(alice, first.id, "make room")
    assert submit_new(world, market, alice).status is Status.USABLE


def test_list_get_and_fetch_never_load_spec_bytes(world, tmp_path):
    market, alice = market_with_alice(world, tmp_path)
    lw = submit_new(world, market, alice)
    loaded: list[object] = []

    def on_load(target: object, _context: object) -> None:
        loaded.append(target)

    event.listen(SpecRow, "load", on_load)
    try:
        page = market.list_page(UMA, LearnwareFilter(), 10, "")
        got = market.get(UMA, lw.id)
        data = b"".join(d for _, d in market.fetch(UMA, lw.id, 0).chunks)
        market.withdraw(alice, lw.id, "done")
    finally:
        event.remove(SpecRow, "load", on_load)

    assert [r.id for r in page.items] == [lw.id] and got.name == lw.name
    assert len(data) == lw.package_size
    assert loaded == []


def test_unknown_key_ids_and_failed_uploads_leave_nothing_in_memory(world, tmp_path):
    market, alice = market_with_alice(world, tmp_path)
    for n in range(2000):  # key ids anyone can send before a signature is checked
        assert market.key_of(f"unknown-{n}") is None
    header, chunks = upload_of(package(world), alice.key_id)
    for n in range(50):  # uploads announcing shas their bytes do not have
        bad = dataclasses.replace(header, sha256=hashlib.sha256(b"%d" % n).hexdigest())
        with pytest.raises(IntegrityError):
            market.submit(alice, bad, chunks)

    assert len(market._keys) == 0
    assert len(market.blobs._uploads) == 0 and not list(market.blobs.temp_dir.iterdir())


def test_the_key_cache_is_bounded_and_drops_the_least_recently_used():
    loads: list[str] = []

    def load(key_id: str) -> KeyRecord:
        loads.append(key_id)
        return KeyRecord(key_id, bytes(32), Role.USER, key_id)

    cache = KeyCache(load, capacity=3)
    for key_id in "abcd":
        cache.get(key_id)
    cache.get("b")  # still cached, and now the most recently used
    cache.get("a")  # evicted first, loaded again

    assert len(cache) == 3 and loads == ["a", "b", "c", "d", "a"]
