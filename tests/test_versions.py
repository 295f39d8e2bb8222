"""Versions and downloads in the market database, on both backends (the fixtures of
tests/test_store.py): a name belongs to its contributor's key, each new submission of it is
the next version, listings show the newest unless asked for all, and migration 0003
numbers the rows a 0002 database already holds."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import text
from test_store import db_url, learnware, store  # noqa: F401 - fixtures and builder

from server.db import create_db_engine, migrate
from server.records import LearnwareFilter, Status, Visibility
from server.store import Store
from server.versions import NewestVersions
from shared.errors import NotFound

ALL = LearnwareFilter(all_versions=True)


def test_a_name_submitted_again_is_its_next_version_of_that_contributor_only(
    store: Store,  # noqa: F811
) -> None:
    first = store.add_learnware(learnware(1, name="notes", version=7))  # the store numbers
    second = store.add_learnware(learnware(2, name="notes"))
    other = store.add_learnware(learnware(3, name="notes", contributor_key_id="key-b"))
    renamed = store.add_learnware(learnware(4, name="other-notes"))

    assert [first.version, second.version, other.version, renamed.version] == [1, 2, 1, 1]
    assert store.get(second.id).version == 2


def test_listing_shows_each_names_newest_version_unless_all_versions(
    store: Store,  # noqa: F811
) -> None:
    store.add_learnware(learnware(1, name="notes", status=Status.USABLE))
    store.add_learnware(learnware(2, name="notes", status=Status.PENDING))
    store.add_learnware(learnware(3, name="notes", contributor_key_id="key-b"))

    assert [r.id for r in store.list().items] == ["lw-0002", "lw-0003"]
    assert [r.id for r in store.list(ALL).items] == ["lw-0001", "lw-0002", "lw-0003"]
    # newest among what the filter and the caller's visibility let through
    usable = store.list(LearnwareFilter(status=Status.USABLE)).items
    assert [r.id for r in usable] == ["lw-0001"]
    stranger = Visibility(own_key_id="key-c", others=frozenset({Status.USABLE}))
    assert [r.id for r in store.list(visible=stranger).items] == ["lw-0001"]


def test_versions_are_newest_first_and_only_the_visible_ones(store: Store) -> None:  # noqa: F811
    for n, status in ((1, Status.PENDING), (2, Status.USABLE), (3, Status.PENDING)):
        store.add_learnware(learnware(n, name="notes", status=status))
    store.add_learnware(learnware(4, name="notes", contributor_key_id="key-b"))

    every = store.versions("key-a", "notes")
    assert [(r.id, r.version) for r in every] == [("lw-0003", 3), ("lw-0002", 2), ("lw-0001", 1)]
    stranger = Visibility(own_key_id="key-c", others=frozenset({Status.USABLE}))
    assert [r.id for r in store.versions("key-a", "notes", visible=stranger)] == ["lw-0002"]


def test_downloads_are_counted_and_do_not_change_updated_at(store: Store) -> None:  # noqa: F811
    stored = store.add_learnware(learnware(1, downloads=99))

    counts = [store.count_download(stored.id) for _ in range(3)]

    assert stored.downloads == 0 and counts == [1, 2, 3]
    assert store.get(stored.id).downloads == 3
    assert store.get(stored.id).updated_at == stored.updated_at
    with pytest.raises(NotFound):
        store.count_download("lw-missing")


def test_upgrade_from_0002_numbers_the_versions_already_stored(db_url: str) -> None:  # noqa: F811
    engine = create_db_engine(db_url)
    migrate(engine, "0002")
    rows = [  # (id, key, name, created_at): lw-b and lw-c tie on time, the id orders them
        ("lw-c", "key-a", "notes", "2026-11-27 10:00:00+00:00"),
        ("lw-a", "key-a", "notes", "2026-11-27 09:00:00+00:00"),
        ("lw-b", "key-a", "notes", "2026-11-27 10:00:00+00:00"),
        ("lw-d", "key-b", "notes", "2026-11-27 08:00:00+00:00"),
    ]
    with engine.begin() as connection:
        for lid, key_id, name, at in rows:
            record = replace(learnware(1), id=lid, contributor_key_id=key_id, name=name)
            values = {c: getattr(record, c) for c in _OLD_COLUMNS} | {"at": at}
            values["package_sha256"] = lid.ljust(64, "0")
            connection.execute(text(_INSERT_0002), values)

    migrate(engine)

    store = Store(engine)  # noqa: F811
    versions = {r.id: r.version for r in store.list(ALL).items}
    assert versions == {"lw-a": 1, "lw-b": 2, "lw-c": 3, "lw-d": 1}
    assert all(r.downloads == 0 for r in store.list(ALL).items)
    assert store.add_learnware(learnware(9, name="notes")).version == 4
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT version_num FROM alembic_version")) == "0004"
        # 0004: the learnwares PENDING before it (all four here) wait in the judgment queue
        queued = connection.scalars(text("SELECT learnware_id FROM judgments")).all()
        assert sorted(queued) == ["lw-0009", "lw-a", "lw-b", "lw-c", "lw-d"]
    engine.dispose()


_OLD_COLUMNS = (
    *("id", "name", "domain", "task", "description", "license", "base_model_id"),
    *("base_model_sha256", "contributor_key_id", "contributor_name", "status", "reason"),
    *("package_size", "manifest_json", "signature"),
)
_INSERT_0002 = (
    f"INSERT INTO learnwares ({', '.join(_OLD_COLUMNS)}, package_sha256, created_at, updated_at)"
    f" VALUES ({', '.join(':' + c for c in _OLD_COLUMNS)}, :package_sha256, :at, :at)"
)


def test_newest_versions_tracks_what_search_hides() -> None:
    newest = NewestVersions()
    v1, v2 = learnware(1, name="notes", version=1), learnware(2, name="notes", version=2)
    others = learnware(3, name="notes", version=1, contributor_key_id="key-b")

    for record in (v2, v1, others):
        newest.add(record)
    assert newest.superseded == {v1.id}
    newest.remove(v2.id)  # withdrawn: the version before it is the newest again
    assert newest.superseded == frozenset()
    newest.remove("lw-unknown")
    assert newest.superseded == frozenset()
