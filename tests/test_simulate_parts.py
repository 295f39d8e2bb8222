"""The simulation's parts that need no model: config, the data deal, the contenders' maths
and the score cache. The whole run is tests/test_simulate.py."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from client.evaluate import Evaluation
from client.simulate.config import PROFILES, SimulationConfig
from client.simulate.contenders import contenders, gap_closed, group_rows
from client.simulate.data import deal
from client.simulate.evaluation import ScoreCache
from shared.errors import InvalidInput


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_loads_and_deals_disjoint_real_data(name):
    config = SimulationConfig.profile_named(name)
    dealt = deal(config)
    seen: set[str] = set()
    for holders in dealt.holders.values():
        for holder in holders:
            texts = set(holder.training_texts())
            assert texts and not texts & seen, f"{holder.name} shares text with another holder"
            seen |= texts
    for user in dealt.users:
        texts = set(user.spec_texts())
        assert len(texts) == len(user.records)
        assert not texts & seen, f"user {user.name} holds text a contributor trained on"
        assert set(user.right) <= {c.name for c in config.contributors}
    assert len(dealt.users) == len(config.contributors) + len(config.tasks)


def test_the_deal_is_the_same_every_time_and_changes_with_the_seed():
    quick = SimulationConfig.profile_named("quick")
    first, again = deal(quick), deal(quick)
    other = deal(quick.with_overrides(seed=1))
    name = quick.contributors[0].name
    assert first.holders[name][0].texts == again.holders[name][0].texts
    assert first.holders[name][0].texts != other.holders[name][0].texts


def test_a_file_may_start_from_a_profile_and_override(tmp_path):
    path = tmp_path / "sim.toml"
    path.write_text('profile = "quick"\nseed = 7\n[users]\ntexts = 50\neval_records = 10\n')
    config = SimulationConfig.from_toml(path)
    assert config.seed == 7 and config.users.texts == 50
    assert config.contributors == SimulationConfig.profile_named("quick").contributors
    assert config.profile == "quick+sim.toml"


@pytest.mark.parametrize(
    "text, message",
    [
        ('profile = "quick"\nbogus = 1\n', "unknown settings"),
        ('profile = "huge"\n', "unknown profile"),
        ('profile = "quick"\nspec_kinds = ["nope"]\n', "unknown spec kind"),
        ('profile = "quick"\nuser_epsilon = 0\n', "epsilon must be a number > 0"),
        ('profile = "quick"\n[users]\neval_records = 500\n', "eval_records"),
        ('profile = "quick"\n[users]\nscore_precision = "int8"\n', "score_precision must be"),
        (
            'profile = "quick"\n[[contributors]]\nname = "a"\nsources = ["nowhere"]\n'
            '[[contributors]]\nname = "b"\nsources = ["math"]\n',
            "unknown source 'nowhere'",
        ),
        ('profile = "quick"\n[[contributors]]\nname = "a"\nsources = ["math"]\n', "at least 2"),
        (
            'profile = "quick"\n[[tasks]]\nname = "math/answer"\nright = ["nobody"]\n',
            "unknown contributors",
        ),
        ("this is = = not toml", "not valid TOML"),
    ],
)
def test_bad_configs_are_one_clear_error(tmp_path, text, message):
    path = tmp_path / "sim.toml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=message):
        SimulationConfig.from_toml(path)


def test_a_corpus_too_small_for_the_deal_is_a_data_error(tmp_path):
    from shared.errors import DataError

    path = tmp_path / "sim.toml"
    path.write_text(
        'profile = "quick"\n[[contributors]]\nname = "a"\nsources = ["medicine/mental"]\n'
        'texts = 50000\n[[contributors]]\nname = "b"\nsources = ["math"]\n'
    )
    with pytest.raises(DataError, match="medicine/mental has"):
        deal(SimulationConfig.from_toml(path))


def _nll(ppl: float) -> float:
    return math.log(ppl)


def test_contenders_follow_their_definitions():
    # two users, three learnwares; "a" is right for u1, "b" for u2, "c" is mediocre for both
    nll = {
        "u1": {"base": _nll(50), "a": _nll(10), "b": _nll(40), "c": _nll(20)},
        "u2": {"base": _nll(50), "a": _nll(45), "b": _nll(12), "c": _nll(20)},
    }
    picks = {"u1": {"rkme": "a", "pave": "c"}, "u2": {"rkme": "b", "pave": "a"}}
    rows, best = contenders(nll, {}, picks, {"u1": "g1", "u2": "g2"})
    assert best == "c"  # lowest mean nll over both users: log 400 < log 450 < log 480
    u1 = rows[0]
    assert u1.oracle_pick == "a" and u1.oracle == pytest.approx(_nll(10))
    assert u1.random == pytest.approx((_nll(10) + _nll(40) + _nll(20)) / 3)
    assert u1.best_single == pytest.approx(_nll(20))
    assert u1.learnware == {"rkme": pytest.approx(_nll(10)), "pave": pytest.approx(_nll(20))}
    assert u1.beats_base("rkme") and u1.beats_base("pave")
    table = {row.group: row for row in group_rows(rows, ["rkme", "pave"])}
    assert table["g1"].gap_closed["rkme"] == pytest.approx(1.0)
    assert table["g2"].gap_closed["pave"] < 0  # picking "a" for u2 is worse than chance
    assert table["all"].users == 2
    assert table["all"].base == pytest.approx(50)


def test_the_local_checks_columns_are_their_picks_on_the_scored_records():
    from client.simulate.checks import Reused

    nll = {"u1": {"base": _nll(50), "a": _nll(10), "b": _nll(60)}}
    picks = {"u1": {"rkme": "b"}}
    reused = {"u1": {"rkme": Reused("a", ("b", "a"), _nll(10), _nll(30))}}
    rows, _ = contenders(nll, {}, picks, {"u1": "g1"}, reused)
    assert rows[0].checked_picks == {"rkme": "a"} and not rows[0].beats_base("rkme")
    assert rows[0].checked_beats_base("rkme")
    row = group_rows(rows, ["rkme"])[-1]
    assert row.checked["rkme"] == pytest.approx(10) and row.merged["rkme"] == pytest.approx(30)
    plain, _ = contenders(nll, {}, picks, {"u1": "g1"})  # no check run: no columns
    assert group_rows(plain, ["rkme"])[-1].checked == {}


def test_the_check_records_follow_the_scored_ones_and_users_may_draw_from_other_sources():
    quick = SimulationConfig.profile_named("quick")
    user = deal(quick).users[0]
    checking = user.check_user()
    n = quick.users.check_records
    assert list(checking.records) == list(user.records[user.eval_n : user.eval_n + n])
    assert checking.eval_records() == list(checking.records) and len(checking.records) == n
    first = quick.contributors[0]
    crossed = quick.with_overrides(
        contributors=(replace(first, user_sources=("medicine/neoplasms",)), *quick.contributors[1:])
    )
    assert deal(crossed).users[0].source == "medicine/neoplasms"


def test_gap_closed_is_undefined_without_a_gap():
    assert gap_closed(1.0, 1.0, 1.0) is None
    assert gap_closed(2.0, 1.5, 1.0) == pytest.approx(0.5)


def _evaluation(ppl: float) -> Evaluation:
    return Evaluation("text", 3, 30, ppl, ppl, 1.0, 0.5)


def test_score_cache_survives_a_line_cut_short(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    cache = ScoreCache(path)
    cache.put("u1", "m1", _evaluation(12.5))
    cache.put("u1", "m2", _evaluation(20.0))
    with path.open("a") as handle:  # what an interrupt during a write leaves behind
        handle.write(json.dumps({"user": "u2", "model": "m1"})[:17])
    reread = ScoreCache(path)
    assert reread.get("u1", "m1") == _evaluation(12.5)
    assert reread.get("u1", "m2").perplexity == 20.0
    assert reread.get("u2", "m1") is None
    reread.put("u2", "m1", _evaluation(7.0))  # the next run's first score is not lost
    assert ScoreCache(path).get("u2", "m1") == _evaluation(7.0)


def test_a_holder_too_small_for_its_rkme_spec_is_refused_when_the_config_loads(tmp_path):
    """The rule ``lwm contribute`` applies (49 texts at epsilon 4), checked before any market
    starts, naming the contributor; a federation's holders are checked for delta only (the
    RKME minimum applies to the merged spec)."""
    from shared.errors import DataError

    path = tmp_path / "sim.toml"
    two = '[[contributors]]\nname = "b"\nsources = ["math"]\ntexts = 60\n'
    path.write_text(
        f'profile = "quick"\n[[contributors]]\nname = "a"\nsources = ["finance"]\ntexts = 30\n{two}'
    )
    with pytest.raises(DataError, match="^a: an RKME spec at epsilon=4.0 needs at least 49"):
        SimulationConfig.from_toml(path)

    path.write_text(
        'profile = "quick"\n[[contributors]]\nname = "a"\nsources = ["finance"]\ntexts = 30\n'
        f'holders = 2\n{two}'
    )
    assert SimulationConfig.from_toml(path).contributors[0].texts == 30
