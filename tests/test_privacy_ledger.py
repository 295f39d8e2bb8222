"""The user's privacy ledger (issue 12, item 11): every search of the same data spends
epsilon again, and the ledger composes it, shows it and refuses what would overspend.

On the old code nothing counted: the same data could be searched without end.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest
from market_fixtures import market_server
from test_cli import lwm, write_jsonl

from client.privacy_ledger import PrivacyLedgers, fingerprint, planned_report
from client.specs import SpecMaker
from client.user import private_search
from server.records import Role
from shared.data import load_domain
from shared.errors import BudgetExceeded
from shared.privacy import DPReport, PrivacyBudget, gaussian_noise_multiplier
from shared.spec import rkme

SECRET = "Patient 4411 was seen on the ward for a relapse of the cough."


def _rkme_report(epsilon: float = 4.0) -> DPReport:
    """The report of one RKME search at ``epsilon`` (what ``make_rkme_spec`` releases)."""
    sigma = gaussian_noise_multiplier(PrivacyBudget(epsilon))
    return DPReport(rkme.MECHANISM, epsilon, 1e-5, sigma)


def _texts(n: int = 20) -> list[str]:
    return [SECRET, *(f"private note {i} about the ward" for i in range(n - 1))]


def test_the_same_data_twice_composes_in_the_rdp_accountant(tmp_path):
    ledgers = PrivacyLedgers(tmp_path)
    for _ in range(2):
        with ledgers.session(_texts()) as held:
            held.admit(_rkme_report())
            held.record("search", "rkme", "market:1", _rkme_report())
    ledger = ledgers.get(_texts())
    assert ledger is not None and len(ledger.releases) == 2
    assert 4.0 < ledger.spent < 8.0  # more than one search, less than adding them up
    assert ledger.remaining == pytest.approx(10.0 - ledger.spent)


def test_data_is_known_by_its_records_not_their_order(tmp_path):
    ledgers = PrivacyLedgers(tmp_path)
    with ledgers.session(_texts()) as held:
        held.record("search", "rkme", "market:1", _rkme_report())
    assert ledgers.get(list(reversed(_texts()))) is not None  # shuffled: same people
    assert ledgers.get([*_texts(), "one more"]) is None  # other data: its own ledger
    assert fingerprint(_texts()) != fingerprint(_texts(21))
    assert len(ledgers.all()) == 1


def test_a_release_over_the_budget_is_refused_and_not_recorded(tmp_path):
    ledgers = PrivacyLedgers(tmp_path)
    with ledgers.session(_texts(), budget_epsilon=5.0) as held:
        held.record("search", "rkme", "market:1", _rkme_report())
    with pytest.raises(BudgetExceeded, match="budget 5"), ledgers.session(_texts()) as held:
        held.admit(_rkme_report())
    ledger = ledgers.get(_texts())
    assert ledger is not None and len(ledger.releases) == 1 and ledger.budget_epsilon == 5.0


def test_no_dp_is_refused_under_a_budget_and_infinite_without(tmp_path):
    ledgers = PrivacyLedgers(tmp_path)
    with pytest.raises(BudgetExceeded, match="without DP"), ledgers.session(_texts()) as held:
        held.ledger.precheck(PrivacyBudget(None))
    with ledgers.session(_texts(), budget_epsilon=math.inf) as held:
        held.ledger.precheck(PrivacyBudget(None))
        held.record("search", "rkme", "market:1", DPReport("none", None, 1e-5, 0.0))
    ledger = ledgers.get(_texts())
    assert ledger is not None and ledger.spent == math.inf and ledger.budget_epsilon is None
    assert ledger.summary()["epsilon_spent"] is None


def test_two_searches_racing_the_last_release_cannot_both_pass(tmp_path):
    """Budget for one more search, two threads check-then-record at once: one is refused."""
    ledgers = PrivacyLedgers(tmp_path)
    with ledgers.session(_texts(), budget_epsilon=6.5) as held:
        held.record("search", "rkme", "market:1", _rkme_report())
    outcomes: list[str] = []

    def search() -> None:
        try:
            with ledgers.session(_texts()) as held:
                held.admit(_rkme_report())
                time.sleep(0.3)  # the spec is being made: the other search checks meanwhile
                held.record("search", "rkme", "market:1", _rkme_report())
            outcomes.append("released")
        except BudgetExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=search) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused", "released"]
    ledger = ledgers.get(_texts())
    assert ledger is not None and len(ledger.releases) == 2 and ledger.spent <= 6.5


def test_the_plan_is_the_release(lwm_home):
    """The budget is checked on the noise the spec will have, before it is made."""
    maker = SpecMaker(_schema(lwm_home), lwm_home)
    budget = PrivacyBudget(4.0)
    for kind in ("rkme", "pave"):
        spec = maker.make(load_domain("math")[:24], kind, budget, noise_seed=1)
        planned = planned_report(maker.schema.for_kind(kind), 24, budget)
        assert planned.history() == spec.privacy.history()  # the same calibration


def _schema(home):
    from shared.spec.defaults import default_schema

    return default_schema(home)


@pytest.fixture(scope="module")
def market(tmp_path_factory, lwm_home):
    with market_server(tmp_path_factory.mktemp("ledger"), lwm_home, run_smoke=False) as m:
        m.new_key("uma", Role.USER)
        yield m


def _args(market) -> list[str]:
    key = str(market.keys_dir / "uma.key")
    return ["--server", market.address, "--key", key, "--ca", str(market.layout.ca_cert)]


def test_private_search_is_refused_before_the_spec_is_made(market, lwm_home, monkeypatch):
    texts = load_domain("finance")[:30]
    private_search(texts, market.client("uma"), kind="rkme", home=lwm_home, budget_epsilon=5.0)

    def never(*_args, **_kwargs):
        raise AssertionError("the spec was computed")

    monkeypatch.setattr(SpecMaker, "make", never)
    with pytest.raises(BudgetExceeded, match="nothing was computed or sent"):
        private_search(texts, market.client("uma"), kind="rkme", home=lwm_home)
    ledger = PrivacyLedgers.at(lwm_home).get(texts)
    assert ledger is not None and len(ledger.releases) == 1


def test_a_two_kind_search_over_budget_spends_nothing(market, lwm_home):
    """``--kind rkme+pave`` makes two releases; the budget fits one of them. Before, the
    first spec was made and charged and only the second refused: a search that sent nothing
    still cost epsilon 4. Both are now admitted together, before either is computed."""
    texts = load_domain("finance")[60:90]
    with pytest.raises(BudgetExceeded, match="nothing was computed or sent"):
        private_search(
            texts, market.client("uma"), kind="rkme+pave", home=lwm_home, budget_epsilon=5.0
        )
    ledger = PrivacyLedgers.at(lwm_home).get(texts)
    assert ledger is None or ledger.releases == ()


def test_lwm_search_spends_shows_and_refuses(market, lwm_home, tmp_path):
    data = write_jsonl(tmp_path / "notes.jsonl", [SECRET, *load_domain("medicine")[:29]])
    search = ["search", str(data), *_args(market), "--kind", "rkme"]
    first = lwm(lwm_home, *search, "--budget-epsilon", "5")
    assert "privacy budget: data" in first.stdout and "of 5 at delta 1e-05" in first.stdout
    second = lwm(lwm_home, *search, check=False)  # two at epsilon 4 compose to 5.95 > 5
    assert second.returncode == 17, second.stderr
    assert second.stderr.strip().count("\n") == 0 and "budget 5" in second.stderr
    shown = json.loads(lwm(lwm_home, "privacy", "show", "--data", str(data), "--json").stdout)
    assert shown[0]["releases"] == 1 and shown[0]["epsilon_spent"] < 4.0 + 1e-9
    # A spent budget is refused before the market is contacted: no market listens here.
    lwm(lwm_home, "privacy", "budget", "3", "--data", str(data))
    offline = ["search", str(data), "--server", "127.0.0.1:1", "--key", _args(market)[3]]
    assert lwm(lwm_home, *offline, "--insecure", check=False).returncode == 17
    nodp = lwm(lwm_home, *offline, "--insecure", "--no-dp", "--budget-epsilon", "50", check=False)
    assert nodp.returncode == 17 and "without DP" in nodp.stderr
    listed = lwm(lwm_home, "privacy", "show").stdout
    assert fingerprint([SECRET, *load_domain("medicine")[:29]])[:12] in listed
    for ledger_file in Path(lwm_home.root / "privacy").glob("*.json"):
        assert SECRET not in ledger_file.read_text() and "Patient" not in ledger_file.read_text()
        assert str(data) not in ledger_file.read_text()
    assert lwm(lwm_home, "privacy", "reset", "--data", str(data), check=False).returncode == 2
    lwm(lwm_home, "privacy", "reset", "--data", str(data), "--yes")
    again = json.loads(lwm(lwm_home, *search, "--json", "--budget-epsilon", "6").stdout)
    assert again["privacy_ledger"]["releases"] == 1
