"""Users whose texts come from another source than their holder's still find that holder
(issue 13): real corpora of ``shared.data.cross``, the RKME spec at epsilon = 4 on both
sides, 100 user texts, one user per domain; seeded, so deterministic.
``benchmarks/bench_cross_source.py`` measures the rates over 20 users per domain (README).
"""

from __future__ import annotations

import numpy as np
import pytest

from client.cross_source import CrossRunner, cross_splits, top_k_accuracy, user_draws
from client.specs import SpecMaker
from shared.data.cross import CROSS_DOMAINS, list_cross_domains, load_cross
from shared.errors import DataError
from shared.spec.defaults import default_schema

DOMAINS = [d.name for d in CROSS_DOMAINS]


def test_every_domain_has_two_disjoint_sources_of_real_text():
    assert len(list_cross_domains()) >= 6
    for name in DOMAINS:
        texts = load_cross(name)
        assert len(texts.holder) >= 500 and len(texts.user) >= 300, name
        assert not set(texts.holder) & set(texts.user), name
    with pytest.raises(DataError, match="unknown cross-source domain"):
        load_cross("astrology")


def test_user_draws_are_seeded_and_take_the_whole_pool_when_it_is_small():
    first = user_draws(50, 30, 3, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, user_draws(50, 30, 3, 1), strict=True))
    assert all(len(set(d)) == 30 for d in first)
    assert all(len(d) == 50 for d in user_draws(50, 1000, 2, seed=1))


def test_top_k_counts_ties_against_the_own_holder():
    dist = np.array([[[0.1, 0.2], [0.3, 0.3]]])  # user 1 ties with holder 0
    assert top_k_accuracy(dist, 1) == 0.5 and top_k_accuracy(dist, 2) == 1.0


@pytest.fixture(scope="module")
def runner(lwm_home):
    maker = SpecMaker(default_schema(lwm_home, pave_model="tiny", kinds=("rkme",)), lwm_home)
    return CrossRunner(maker, cross_splits(DOMAINS, holder_n=300, pool_n=100, seed=0), users=1)


def test_users_of_every_domain_find_their_holder_first_across_sources(runner):
    cell = runner.cell("rkme", 4.0, 100)
    picks = [DOMAINS[int(row.argmin())] for row in cell.distances[0]]
    assert picks == DOMAINS
