"""Rank fusion, the search confidence and the market's ranking of one search (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

from server.index import SpecIndex
from server.search import method_of, queries_by_kind, rank_search
from shared.errors import InvalidInput, SpecError
from shared.privacy import DPReport
from shared.spec.confidence import (
    CALIBRATION,
    confidence,
    fit_calibration,
    margins,
    probability,
    reliability,
)
from shared.spec.fusion import DEFAULT_RANKING, FUSIONS, fuse
from shared.spec.record import Specification

NO_DP = DPReport("none", None, 1e-5, 0.0)


def spec(kind: str, vector) -> Specification:
    return Specification(kind, f"{kind}-schema", np.asarray(vector, dtype=np.float32), 100, NO_DP)


def test_rrf_rewards_agreement_and_ignores_missing_kinds():
    rkme = np.array([0.1, 0.2, 0.3, 0.4])
    pave = np.array([0.5, 0.1, 0.3, np.nan])  # candidate 3 has no PAVE spec
    fused = fuse([rkme, pave], "rrf")
    assert fused.argmin() == 1  # second and first beat first and third
    assert fused[3] == pytest.approx(-1 / 64)  # fourth under RKME, nothing from PAVE
    swapped = fuse([np.array([0.1, 0.2]), np.array([0.2, 0.1])], "rrf")
    assert swapped.argmin() == 0  # a tie goes to the first kind's order


def test_zsum_is_scale_free_and_puts_missing_kinds_last():
    a = np.array([[1.0, 2.0, 3.0]])
    b = np.array([[300.0, 100.0, 200.0]])
    assert np.allclose(fuse([a, b], "zsum"), fuse([a * 1000, b / 7], "zsum"))
    missing = fuse([np.array([0.0, 1.0, 2.0]), np.array([np.nan, 0.0, 1.0])], "zsum")
    assert missing[0] == pytest.approx(-np.sqrt(1.5) + 1.0)  # its RKME z + the worst PAVE z


def test_unknown_fusion_is_refused():
    with pytest.raises(SpecError, match="unknown rank fusion"):
        fuse([np.zeros(2)], "borda")


def test_margin_is_scale_free_and_confidence_grows_with_it():
    d = np.array([0.1, 0.5, 0.9, 1.0])
    assert margins(d) == pytest.approx(margins(d * 40 + 3))
    near = confidence([0.10, 0.11, 0.9, 1.0], "rkme")
    far = confidence([0.10, 0.80, 0.9, 1.0], "rkme")
    assert near is not None and far is not None
    assert 0 < near.probability < far.probability <= 1
    assert confidence([0.3], "rkme") is None


def test_calibration_fit_recovers_a_logistic_and_bins_report_it():
    rng = np.random.default_rng(0)
    m = rng.uniform(0, 4, 20_000)
    right = rng.uniform(size=m.size) < probability(m, (-1.0, 1.5))
    a, b = fit_calibration(m, right)
    assert a == pytest.approx(-1.0, abs=0.1) and b == pytest.approx(1.5, abs=0.1)
    for row in reliability(m, right, (a, b)):
        assert abs(row["mean_confidence"] - row["first_right"]) < 0.05  # type: ignore[operator]
    assert set(FUSIONS) | {"rkme", "pave"} <= set(CALIBRATION)


def indexes(n: int = 6, seed: int = 0) -> dict[str, SpecIndex]:
    rng = np.random.default_rng(seed)
    out = {kind: SpecIndex(kind, f"{kind}-schema", 8) for kind in ("rkme", "pave")}
    for i in range(n):
        for kind, index in out.items():
            index.add(f"lw{i}", spec(kind, rng.normal(size=8)))
    return out


def test_a_fused_search_ranks_with_both_kinds_and_says_how_sure_it_is():
    idx = indexes()
    target = idx["rkme"]._matrix[3], idx["pave"]._matrix[3]  # learnware 3's own specs
    queries = queries_by_kind([spec("rkme", target[0]), spec("pave", target[1])])
    for method in (*FUSIONS, "rkme", "pave"):
        ranked = rank_search(idx, queries, method, 2, None, ())
        assert [h.key for h in ranked.hits][0] == "lw3" and len(ranked.hits) == 2
        assert ranked.confidence is not None and ranked.confidence.method == method
    hidden = rank_search(idx, queries, "rrf", 5, None, {"lw3"})
    assert "lw3" not in [h.key for h in hidden.hits]


def test_the_ranking_a_request_gets():
    both = queries_by_kind([spec("rkme", np.ones(8)), spec("pave", np.ones(8))])
    one = queries_by_kind([spec("rkme", np.ones(8))])
    assert method_of("", one, "rkme") == "rkme"  # one kind sent: that kind, whatever the default
    assert method_of("rrf", one, "rkme") == "rkme"
    assert method_of("", both, "rkme") == DEFAULT_RANKING
    assert method_of("pave", both, "rkme") == "pave"
    with pytest.raises(InvalidInput, match="needs a spec of that kind"):
        method_of("pave", one, "rkme")
    with pytest.raises(InvalidInput, match="two rkme specs"):
        queries_by_kind([spec("rkme", np.ones(8)), spec("rkme", np.zeros(8))])
