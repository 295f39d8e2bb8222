"""Replicas on one database (issue 17, item 1): the change feed every replica's index
follows, the judgment queue any replica takes from, and two real ``lwm server start``
replicas on one real PostgreSQL and one blob folder.

The feed and queue tests run on both backends (the fixtures of tests/test_store.py); the
replicas test needs PostgreSQL (LWM_TEST_POSTGRES_URL), as replicas do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from builders import random_rkme_spec, rkme_schema
from processes import wait_for
from test_server_process import alice_and_her_package, free_port, hung_smoke_run, start_server
from test_store import db_url, key, learnware, postgres_schema, store  # noqa: F401 - fixtures

from client.market import Connection, MarketClient
from server.changes import ChangeFeed, FeedFollower, listen_url
from server.judgment_queue import MAX_ATTEMPTS, JudgmentQueue, Lease
from server.pki import init_server_dir
from server.records import ChangeKind, IndexLag, Status
from server.store import Store
from shared import signing
from shared.errors import LwmError, Unavailable
from shared.proto import market_pb2 as pb

ACCEPTED, WITHDRAWN, REVOKED = ChangeKind.ACCEPTED, ChangeKind.WITHDRAWN, ChangeKind.REVOKED


def replica(on: Store, name: str, lease_s: float = 30.0) -> JudgmentQueue:
    """One replica's side of the judgment queue."""
    return JudgmentQueue(on, Lease(name, lease_s))


# ---------------------------------------------------------------- the change feed


def test_the_feed_says_in_order_what_entered_or_left_the_index(store: Store) -> None:  # noqa: F811
    alice = store.register_key(key("alice"))
    for n in (1, 2, 3):
        store.add_learnware(learnware(n, contributor_key_id=alice.key_id))
    store.set_status("lw-0001", Status.USABLE)
    store.set_status("lw-0002", Status.USABLE)
    store.set_status("lw-0003", Status.REJECTED, "smoke run")  # never in the index
    store.set_status("lw-0001", Status.WITHDRAWN)
    store.add_learnware(learnware(5, contributor_key_id=alice.key_id, status=Status.USABLE))
    store.revoke_key(alice.key_id, "stolen")  # hides 2 and 5, the USABLE ones
    store.revoke_key(alice.key_id)  # again: nothing changes

    feed = ChangeFeed(store)
    changes = feed.after(0)

    assert [(c.learnware_id, c.kind) for c in changes] == [
        ("lw-0001", ACCEPTED),
        ("lw-0002", ACCEPTED),
        ("lw-0001", WITHDRAWN),
        ("lw-0005", ACCEPTED),
        ("lw-0002", REVOKED),
        ("lw-0005", REVOKED),
    ]
    ids = [c.id for c in changes]
    assert ids == sorted(ids) and feed.newest() == ids[-1]
    assert [c.id for c in feed.after(ids[2])] == ids[3:]
    behind = feed.lag(ids[2])
    assert (behind.applied, behind.newest) == (ids[2], ids[-1]) and behind.seconds >= 0
    assert feed.lag(ids[-1]) == IndexLag(ids[-1], ids[-1], 0.0)


def test_a_follower_applies_what_commits_after_it_started(store: Store) -> None:  # noqa: F811
    store.add_learnware(learnware(1, status=Status.USABLE))  # before the start: load()'s
    applied: list[str] = []
    loads: list[int] = []
    url = listen_url(store)
    poll_s = 0.1 if url is None else 30.0  # PostgreSQL: NOTIFY wakes it, long before a poll
    follower = FeedFollower(ChangeFeed(store), applied.append, poll_s=poll_s, listen_url=url)
    follower.start(load=lambda: loads.append(1))
    try:
        store.add_learnware(learnware(2, status=Status.USABLE))
        assert wait_for(lambda: applied == ["lw-0002"], 5), applied
        assert loads == [1] and follower.lag() == IndexLag(follower.applied, follower.applied)
    finally:
        follower.stop()


# ---------------------------------------------------------------- the judgment queue


def test_a_judgment_whose_replica_died_goes_to_another_once_its_lease_runs_out(
    store: Store,  # noqa: F811
) -> None:
    dead, alive = replica(store, "dead", lease_s=0.5), replica(store, "alive")
    store.add_learnware(learnware(1), dead.lease)  # the receiving replica judges it itself

    assert alive.claim() is None  # the lease holds
    assert wait_for(alive.claim, 5) == "lw-0001"  # no heartbeat: taken over
    assert not dead.renew("lw-0001")  # the one that stalled has lost it
    store.set_status("lw-0001", Status.USABLE)
    assert alive.claim() is None and not alive.renew("lw-0001")  # concluded: dequeued


def test_a_heartbeat_keeps_a_judgment_and_a_stop_gives_it_back_at_once(
    store: Store,  # noqa: F811
) -> None:
    mine, other = replica(store, "mine", lease_s=0.3), replica(store, "other")
    store.add_learnware(learnware(1), mine.lease)

    with pytest.raises(Unavailable), mine.holding("lw-0001"):
        deadline = time.monotonic() + 1.2  # four leases long
        while time.monotonic() < deadline:
            assert other.claim() is None
            time.sleep(0.1)
        raise Unavailable("the market is stopping")

    assert other.claim() == "lw-0001"


def test_replicas_claiming_at_once_take_each_judgment_exactly_once(
    store: Store,  # noqa: F811
) -> None:
    for n in range(1, 25):
        store.add_learnware(learnware(n))
    replicas = [replica(store, f"replica-{i}") for i in range(4)]

    def drain(queue: JudgmentQueue) -> list[str]:
        taken = []
        while (learnware_id := queue.claim()) is not None:
            taken.append(learnware_id)
        return taken

    with ThreadPoolExecutor(max_workers=4) as pool:
        taken = [lid for batch in pool.map(drain, replicas) for lid in batch]

    assert sorted(taken) == [f"lw-{n:04d}" for n in range(1, 25)]


def test_a_judgment_that_keeps_failing_waits_for_a_lone_start(store: Store) -> None:  # noqa: F811
    flaky = replica(store, "flaky", lease_s=0.01)
    store.add_learnware(learnware(1))

    claims = [wait_for(flaky.claim, 2) for _ in range(MAX_ATTEMPTS)]

    assert claims == ["lw-0001"] * MAX_ATTEMPTS
    time.sleep(0.05)  # the last lease ran out too
    assert flaky.claim() is None
    assert flaky.free_all() == 1 and flaky.claim() == "lw-0001"


# ---------------------------------------------------------------- two real replicas


def ids(results: list[pb.SearchResult]) -> set[str]:
    return {r.learnware.id for r in results}


@pytest.mark.postgres
def test_two_replicas_on_one_postgres_follow_each_other(tmp_path, lwm_home):
    """Submit on A, found by Search on B within 2 s; a revocation on B hides the learnware
    on A within 2 s; A killed during a judgment, B finishes it."""
    with postgres_schema() as db:
        layout = init_server_dir(tmp_path / "srv")  # one identity, one blob folder
        ports = (free_port(), free_port())
        addresses = [f"localhost:{port}" for port in ports]
        options = ("--db", db, "--judgment-lease", "3")
        servers = []
        smokes: list[int] = []
        try:
            for port in ports:
                servers.append(
                    start_server(layout.dir, port, lwm_home.root, smoke=True, extra=options)
                )
            a, _ = servers
            admin_a, admin_b = (
                MarketClient(Connection(address, key_path=layout.admin_key, ca=layout.ca_cert))
                for address in addresses
            )
            uma_key = tmp_path / "uma.key"
            private, public = signing.generate_keypair()
            signing.save_private_key(uma_key, private)
            admin_a.register_key(signing.public_key_bytes(public), "user", "uma")
            uma_a, uma_b = (
                MarketClient(Connection(address, key_path=uma_key, ca=layout.ca_cert))
                for address in addresses
            )
            query = random_rkme_spec(rkme_schema(lwm_home), seed=3)
            (tmp_path / "alice").mkdir()
            alice, alice_public, package = alice_and_her_package(
                tmp_path / "alice", lwm_home, admin_a, addresses[0]
            )

            accepted = alice.submit(package)  # on A
            on_b = wait_for(lambda: accepted.id in ids(uma_b.search(query)), 2.0, every_s=0.05)

            assert accepted.status == pb.LEARNWARE_STATUS_USABLE and on_b
            caught_up = admin_b.stats()
            assert caught_up.index_applied_change == caught_up.index_newest_change >= 1

            assert accepted.id in ids(uma_a.search(query))
            admin_b.revoke_key(signing.key_id(alice_public), "stolen laptop")  # on B
            hidden = wait_for(lambda: accepted.id not in ids(uma_a.search(query)), 2.0, 0.05)

            assert hidden

            (tmp_path / "bob").mkdir()
            bob, _, bobs = alice_and_her_package(tmp_path / "bob", lwm_home, admin_a, addresses[0])
            submitting = ThreadPoolExecutor(max_workers=1).submit(bob.submit, bobs)  # on A
            smokes += hung_smoke_run(a.pid)  # A is judging it, and hangs there
            a.send_signal(signal.SIGKILL)
            a.wait(10)
            with pytest.raises(LwmError):
                submitting.result(timeout=30)

            def judged_by_b() -> bool:
                mine = [i for i in admin_b.iter_learnwares() if i.id != accepted.id]
                return [i.status for i in mine] == [pb.LEARNWARE_STATUS_USABLE]

            assert wait_for(judged_by_b, 180, every_s=0.5), list(admin_b.iter_learnwares())
            assert len(ids(uma_b.search(query))) == 1  # bob's, on B
        finally:
            for proc in servers:
                proc.kill()
                proc.wait(10)
            for pid in smokes:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
