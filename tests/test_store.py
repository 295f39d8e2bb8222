"""The market database on both backends: a real SQLite file always, a real PostgreSQL when
LWM_TEST_POSTGRES_URL is set (``eval "$(.ci/postgres.sh)"`` starts one; ``.ci/run`` does).
Each PostgreSQL test gets a schema of its own, dropped afterwards."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

import server.store as store_module
from server.db import Base, EventRow, LearnwareRow, SpecRow, create_db_engine, migrate
from server.records import (
    KeyRecord,
    LearnwareFilter,
    LearnwareRecord,
    Role,
    SpecRecord,
    Status,
    StoreStats,
    Visibility,
)
from server.store import TRANSITIONS, Store
from shared.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound

PG_ENV = "LWM_TEST_POSTGRES_URL"
T0 = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'market.db'}"
        return
    with postgres_schema() as url:
        yield url


@contextmanager
def postgres_schema() -> Iterator[str]:
    """The URL of a schema of its own on the test PostgreSQL (a database within the
    database: every process given the URL works in it), dropped afterwards; skips the test
    when LWM_TEST_POSTGRES_URL is not set."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f'{PG_ENV} is not set; start PostgreSQL with: eval "$(.ci/postgres.sh)"')
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, poolclass=NullPool)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.open(db_url) as opened:
        yield opened


def spec(kind: str = "rkme", dim: int = 4) -> SpecRecord:
    return SpecRecord(
        kind=kind, schema_id=f"{kind}-v1", dim=dim, spec_bytes=bytes(range(dim % 256))
    )


def learnware(n: int, **changes: object) -> LearnwareRecord:
    record = LearnwareRecord(
        id=f"lw-{n:04d}",
        name=f"adapter {n}",
        domain="medical",
        task="qa",
        description="Notes of a hospital, ünïcode included",
        license="apache-2.0",
        base_model_id="tiny",
        base_model_sha256="ab" * 32,
        contributor_key_id="key-a",
        contributor_name="Hospital A",
        status=Status.PENDING,
        reason="",
        package_sha256=f"{n:064x}",
        package_size=1000 + n,
        manifest_json=b'{"name": "x"}',
        signature=bytes(range(64)),
        created_at=T0 + timedelta(seconds=n),
        updated_at=T0 + timedelta(seconds=n),
        specs=(spec("rkme"),),
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def key(name: str, role: Role = Role.CONTRIBUTOR) -> KeyRecord:
    return KeyRecord(key_id=f"id-{name}", public_key=os.urandom(32), role=role, name=name)


def count(store: Store, model: type[Base]) -> int:
    with store.engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(model)) or 0


def walk(store: Store, flt: LearnwareFilter, size: int) -> list[str]:
    ids, token = [], ""
    while True:
        page = store.list(flt, page_size=size, page_token=token)
        assert len(page.items) <= size
        ids += [item.id for item in page.items]
        token = page.next_page_token
        if not token:
            return ids


def test_round_trip_keeps_every_field(store: Store) -> None:
    plus5 = timezone(timedelta(hours=5))
    record = learnware(
        1,
        specs=(spec("rkme", 512), spec("pave", 2048)),
        created_at=T0.astimezone(plus5),
        updated_at=T0 + timedelta(days=1),
    )

    stored = store.add_learnware(record)

    record = replace(record, specs=record.specs[::-1])  # specs come back ordered by kind
    for got in (stored, store.get(record.id), store.find_by_package(record.package_sha256)):
        assert got == record
        assert got is not None and got.created_at.tzinfo == UTC and got.updated_at.tzinfo == UTC
    assert store.list().items == (record,)
    assert store.specs_of(record.id) == record.specs
    assert store.find_by_package("f" * 64) is None
    with pytest.raises(NotFound):
        store.get("lw-missing")
    with pytest.raises(NotFound):
        store.specs_of("lw-missing")


def test_reopening_sees_committed_data(db_url: str) -> None:
    with Store.open(db_url) as first:
        first.add_learnware(learnware(1))
        first.register_key(key("alice"))

    with Store.open(db_url) as second:
        assert second.get("lw-0001") == learnware(1)
        assert [k.name for k in second.list_keys()] == ["alice"]


def test_migrations_build_exactly_the_models(store: Store) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert connection.scalar(text("SELECT version_num FROM alembic_version")) == "0004"


def test_upgrade_keeps_keys_revoked_before_the_market_kept_when_and_why(tmp_path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO keys (key_id, public_key, role, name, revoked, created_at) "
                "VALUES ('id-old', :pk, 'USER', 'old', 1, '2026-11-27 00:00:00+00:00')"
            ),
            {"pk": b"k" * 32},
        )

    migrate(engine)

    old = Store(engine).get_key("id-old")
    assert old is not None and old.revoked
    assert (old.revoked_at, old.revoke_reason) == (None, "")


def test_pages_walk_every_filter_without_gaps_or_repeats(store: Store) -> None:
    records = []
    for n in range(1, 24):
        records.append(
            learnware(
                n,
                domain=("medical", "finance", "math")[n % 3],
                status=(Status.PENDING, Status.USABLE)[n % 2],
                contributor_key_id=("key-a", "key-b")[n % 4 == 0],
                specs=(spec("rkme"),) if n % 5 else (spec("rkme"), spec("pave")),
                created_at=T0 + timedelta(seconds=n // 3),  # ties: id breaks them
            )
        )
    for record in reversed(records):
        store.add_learnware(record)

    filters: list[tuple[LearnwareFilter, Callable[[LearnwareRecord], bool]]] = [
        (LearnwareFilter(), lambda r: True),
        (LearnwareFilter(domain="finance"), lambda r: r.domain == "finance"),
        (LearnwareFilter(status=Status.USABLE), lambda r: r.status == Status.USABLE),
        (LearnwareFilter(contributor_key_id="key-b"), lambda r: r.contributor_key_id == "key-b"),
        (LearnwareFilter(spec_kind="pave"), lambda r: any(s.kind == "pave" for s in r.specs)),
        (
            LearnwareFilter(domain="medical", status=Status.USABLE, task="qa", license=""),
            lambda r: r.domain == "medical" and r.status == Status.USABLE,
        ),
        (LearnwareFilter(base_model_id="other"), lambda r: False),
    ]
    ordered = sorted(records, key=lambda r: (r.created_at, r.id))
    for flt, keep in filters:
        expected = [r.id for r in ordered if keep(r)]
        for size in (1, 4, 50):
            assert walk(store, flt, size) == expected, (flt, size)


def test_rows_added_while_paging_come_at_the_end(store: Store) -> None:
    for n in range(1, 6):
        store.add_learnware(learnware(n))
    first = store.list(page_size=3)

    store.add_learnware(learnware(9))
    rest = store.list(page_size=3, page_token=first.next_page_token)

    assert [r.id for r in first.items + rest.items] == [
        "lw-0001",
        "lw-0002",
        "lw-0003",
        "lw-0004",
        "lw-0005",
        "lw-0009",
    ]
    assert (
        store.list(page_size=3, page_token=first.next_page_token, with_specs=False).items[0].specs
        == ()
    )


def test_bad_page_requests_are_refused(store: Store) -> None:
    for n in range(1, 4):
        store.add_learnware(learnware(n))
    token = store.list(page_size=1).next_page_token

    for bad in ("garbage!", "e30", token[:-3], "eyJ2IjoxfQ", token + "AAAA"):
        with pytest.raises(InvalidInput, match="page_token"):
            store.list(page_size=1, page_token=bad)
    with pytest.raises(InvalidInput, match="other filters"):
        store.list(LearnwareFilter(domain="medical"), page_size=1, page_token=token)
    with pytest.raises(InvalidInput, match="page_size"):
        store.list(page_size=-1)
    assert len(store.list(page_size=0).items) == 3  # the default size
    assert len(store.list(page_size=10**9).items) == 3  # cut to the maximum


def test_duplicate_package_names_the_stored_learnware(store: Store) -> None:
    store.add_learnware(learnware(1))

    with pytest.raises(AlreadyExists, match="lw-0001"):
        store.add_learnware(learnware(2, package_sha256=learnware(1).package_sha256))
    with pytest.raises(AlreadyExists, match="lw-0001"):
        store.add_learnware(learnware(1, package_sha256="e" * 64))

    assert [r.id for r in store.list().items] == ["lw-0001"]


def test_concurrent_duplicates_store_one(store: Store) -> None:
    start, errors = threading.Barrier(4), []

    def add(n: int) -> None:
        start.wait()
        try:
            store.add_learnware(learnware(n, package_sha256="c" * 64))
        except AlreadyExists as error:
            errors.append(str(error))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    (winner,) = store.list().items
    assert len(errors) == 3 and all(winner.id in message for message in errors)


def test_a_failing_insert_leaves_nothing(store: Store) -> None:
    broken = learnware(1, specs=(spec("rkme"), spec("pave"), spec("rkme")))

    with pytest.raises(InvalidInput, match="more than one spec of kind rkme"):
        store.add_learnware(broken)
    with pytest.raises(InvalidInput, match="timezone"):
        store.add_learnware(learnware(2, created_at=datetime(2026, 1, 1)))

    for model in (LearnwareRow, SpecRow, EventRow):
        assert count(store, model) == 0, model
    store.add_learnware(learnware(1))  # the id and the package are free
    assert count(store, SpecRow) == 1


@pytest.mark.parametrize("source", list(Status))
def test_life_cycle(store: Store, source: Status) -> None:
    for n, target in enumerate(Status, start=1):
        record = store.add_learnware(learnware(n, status=source))
        if target in TRANSITIONS[source]:
            changed = store.set_status(record.id, target, "checker: ok", key_id="key-admin")
            assert changed.status == target and changed.reason == "checker: ok"
            assert changed.updated_at > record.updated_at
            assert store.get(record.id) == changed
        else:
            with pytest.raises(
                FailedPrecondition, match=f"is {source} and cannot become {target}"
            ):
                store.set_status(record.id, target, "nope")
            assert store.get(record.id) == record
    with pytest.raises(NotFound):
        store.set_status("lw-missing", Status.USABLE)


def test_keys_register_revoke_and_come_back(store: Store) -> None:
    alice, bob = key("alice"), key("bob", Role.USER)

    stored = store.register_key(alice)
    store.register_key(bob)

    assert stored == replace(alice, created_at=stored.created_at)
    assert stored.created_at is not None and stored.created_at.tzinfo == UTC
    assert store.get_key(alice.key_id) == stored
    assert store.get_key("id-nobody") is None
    with pytest.raises(AlreadyExists, match="already registered"):
        store.register_key(replace(alice, role=Role.ADMIN))

    revoked = store.revoke_key(alice.key_id, "key stolen", by="id-root")
    assert revoked.revoked and store.revoke_key(alice.key_id) == revoked  # idempotent
    assert revoked.revoke_reason == "key stolen" and revoked.revoked_at is not None
    assert store.get_key(alice.key_id) == revoked  # when and why are stored with the key
    assert [e.detail for e in store.events() if e.action == "key.revoke"] == [
        "role=CONTRIBUTOR name=alice by=id-root: key stolen"
    ]
    assert [k.name for k in store.list_keys()] == ["bob"]
    assert [k.name for k in store.list_keys(include_revoked=True)] == ["alice", "bob"]
    with pytest.raises(NotFound):
        store.revoke_key("id-nobody")

    with pytest.raises(InvalidInput, match="another public key"):
        store.register_key(replace(alice, public_key=os.urandom(32)))
    back = store.register_key(replace(alice, role=Role.ADMIN, name="alice (admin)"))
    assert (back.revoked, back.role, back.name) == (False, Role.ADMIN, "alice (admin)")
    assert (back.revoked_at, back.revoke_reason) == (None, "")
    assert back.created_at == stored.created_at
    assert [e.action for e in store.events()][:2] == ["key.reactivate", "key.revoke"]


def test_iter_specs_yields_only_usable(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_SPEC_BATCH", 2)  # cross several batches
    usable = []
    for n, status in enumerate([*Status, Status.USABLE, Status.USABLE, Status.USABLE], start=1):
        record = learnware(n, status=status, specs=(spec("rkme"), spec("pave", 8)))
        store.add_learnware(record)
        if status == Status.USABLE:
            usable.append(record)

    got = list(store.iter_specs("rkme"))

    assert got == [(r.id, r.specs[0]) for r in usable]
    assert [i for i, _ in store.iter_specs("pave", status=None)] == [
        f"lw-{n:04d}" for n in range(1, 8)
    ]
    assert list(store.iter_specs("unknown-kind")) == []


def test_stats_referenced_blobs_and_events(store: Store) -> None:
    store.add_learnware(learnware(1, domain="finance", specs=(spec("rkme"), spec("pave"))))
    store.add_learnware(learnware(2))
    store.set_status("lw-0002", Status.USABLE, key_id="id-admin")
    store.register_key(key("alice"))
    store.register_key(key("root", Role.ADMIN))
    store.register_key(key("gone", Role.USER))
    store.revoke_key("id-gone")
    store.record_event("submit.refused", key_id="id-mallory", detail="bad signature")

    stats = store.stats()

    assert stats == StoreStats(
        learnwares=2,
        by_status={"PENDING": 1, "USABLE": 1, "REJECTED": 0, "WITHDRAWN": 0},
        by_domain={"finance": 1, "medical": 1},
        specs_by_kind={"pave": 1, "rkme": 2},
        keys_by_role={"CONTRIBUTOR": 1, "USER": 0, "ADMIN": 1},
        keys_revoked=1,
        package_bytes=1001 + 1002,
        events=8,
    )
    assert store.referenced_blobs() == {f"{1:064x}", f"{2:064x}"}
    newest = store.events(limit=1)[0]
    assert (newest.action, newest.key_id, newest.detail) == (
        "submit.refused",
        "id-mallory",
        "bad signature",
    )
    assert [e.action for e in store.events(learnware_id="lw-0002")] == [
        "learnware.status",
        "learnware.add",
    ]


def test_threads_add_list_and_update_concurrently(store: Store) -> None:
    start, errors = threading.Barrier(8), []

    def work(worker: int) -> None:
        try:
            start.wait()
            for i in range(8):
                n = worker * 100 + i
                store.add_learnware(learnware(n))
                store.list(LearnwareFilter(status=Status.PENDING), page_size=20)
                store.set_status(f"lw-{n:04d}", Status.USABLE)
                store.get(f"lw-{n:04d}")
                store.stats()
        except Exception as error:  # every failure is reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert store.stats().by_status["USABLE"] == 64
    assert len(walk(store, LearnwareFilter(status=Status.USABLE), 10)) == 64


def test_servers_starting_together_migrate_once(db_url: str, tmp_path: Path) -> None:
    # SQLite: new files each round, since the race (switching a new file to WAL) is brief.
    urls = [db_url]
    if db_url.startswith("sqlite"):
        urls += [f"sqlite:///{tmp_path / f'round{i}.db'}" for i in range(7)]
    errors: list[Exception] = []

    for url in urls:
        start = threading.Barrier(4)

        def open_store(url: str = url, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                Store.open(url).close()
            except Exception as error:  # reported below
                errors.append(error)

        threads = [threading.Thread(target=open_store) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert errors == []
    with Store.open(db_url) as store:
        assert store.stats().learnwares == 0


def test_open_refuses_unusable_urls_and_makes_the_folder(tmp_path: Path) -> None:
    for bad in ("sqlite://", "sqlite:///:memory:", "no url at all"):
        with pytest.raises(InvalidInput):
            Store.open(bad)

    with Store.open(f"sqlite:///{tmp_path / 'new' / 'dir' / 'market.db'}") as store:
        assert store.stats().learnwares == 0
    assert (tmp_path / "new" / "dir" / "market.db").is_file()


def _mixed(store: Store) -> dict[str, Status]:
    """Learnwares of key-a and key-b at every status; id -> status."""
    made = {}
    for n, (owner, status) in enumerate(
        [(owner, status) for owner in ("key-a", "key-b") for status in Status], start=1
    ):
        record = learnware(n, contributor_key_id=owner, status=status, reason=f"why {n}")
        made[store.add_learnware(record).id] = status
    return made


def test_list_keeps_only_what_the_caller_may_see(store: Store) -> None:
    made = _mixed(store)
    usable = frozenset({Status.USABLE})
    contributor_a = Visibility(own_key_id="key-a", others=usable)
    user = Visibility(own_key_id="id-uma", others=usable)

    seen_by_a = store.list(page_size=100, visible=contributor_a).items
    seen_by_user = {r.id for r in store.list(page_size=100, visible=user).items}
    seen_by_admin = {r.id for r in store.list(page_size=100, visible=Visibility(None, None)).items}

    others = [r for r in seen_by_a if r.contributor_key_id != "key-a"]
    assert [r.status for r in others] == [Status.USABLE]  # no REJECTED/WITHDRAWN of key-b
    assert len(seen_by_a) == len(Status) + 1  # all of its own, the USABLE one of key-b
    assert seen_by_user == {i for i, status in made.items() if status is Status.USABLE}
    assert seen_by_admin == set(made)
    assert all(contributor_a.allows(r) for r in seen_by_a)
    withdrawn = LearnwareFilter(status=Status.WITHDRAWN)
    assert {r.contributor_key_id for r in store.list(withdrawn, visible=contributor_a).items} == {
        "key-a"
    }
    first = store.list(page_size=1, visible=contributor_a)
    with pytest.raises(InvalidInput, match="other filters"):  # a token is tied to its scope
        store.list(page_size=1, page_token=first.next_page_token, visible=user)


def test_reads_without_specs_never_load_spec_bytes(store: Store) -> None:
    made = _mixed(store)
    loaded: list[object] = []

    def on_load(target: object, _context: object) -> None:
        loaded.append(target)

    event.listen(SpecRow, "load", on_load)
    try:
        some = next(iter(made))
        listed = store.list(page_size=100, with_specs=False).items
        got = store.get(some, with_specs=False)
        found = store.find_by_package(got.package_sha256, with_specs=False)
        pending = next(i for i, status in made.items() if status is Status.PENDING)
        changed = store.set_status(pending, Status.WITHDRAWN, "gone", with_specs=False)
        assert loaded == []
        assert len(listed) == len(made) and all(r.specs == () for r in listed)
        assert got.specs == () and found == got and changed.status is Status.WITHDRAWN
        assert store.get(some).specs and loaded  # the full read does load them
    finally:
        event.remove(SpecRow, "load", on_load)


def test_rejected_packages_are_not_referenced_and_quotas_count_active(store: Store) -> None:
    made = _mixed(store)
    rows = {r.id: r for r in store.list(page_size=100).items}

    referenced = store.referenced_blobs()

    kept = {rows[i].package_sha256 for i, status in made.items() if status is not Status.REJECTED}
    assert referenced == kept
    active = frozenset({Status.PENDING, Status.USABLE})
    assert store.count_of("key-a", active) == 2 and store.count_of("key-c", active) == 0
