"""The server's parsed-LearnwareInfo cache stays bounded (at a million learnwares an
unbounded one held every manifest ever shown) and never answers a stale entry."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from server.service import InfoCache
from shared.proto import market_pb2 as pb


def info(name: str) -> pb.LearnwareInfo:
    return pb.LearnwareInfo(name=name)


def test_the_cache_keeps_the_most_recently_used_entries_up_to_its_capacity():
    cache = InfoCache(3)
    for i in range(3):
        cache.put(f"lw{i}", 0, info(f"n{i}"))
    assert cache.get("lw0", 0) is not None  # lw0 is now the most recent
    cache.put("lw3", 0, info("n3"))

    assert len(cache) == 3
    assert cache.get("lw1", 0) is None  # the least recently used went
    assert [cache.get(k, 0).name for k in ("lw0", "lw2", "lw3")] == ["n0", "n2", "n3"]


def test_a_changed_record_is_not_answered_from_the_cache():
    cache = InfoCache(2)
    cache.put("lw", ("t1", 0), info("old"))
    assert cache.get("lw", ("t1", 1)) is None  # one more download: a new stamp
    cache.put("lw", ("t1", 1), info("new"))
    assert cache.get("lw", ("t1", 1)).name == "new" and len(cache) == 1


def test_threads_sharing_the_cache_never_push_it_past_its_capacity():
    cache = InfoCache(50)

    def work(t: int) -> None:
        for i in range(2000):
            cache.put(f"{t}-{i}", 0, info("x"))
            cache.get(f"{t}-{i // 2}", 0)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert len(cache) == 50
