"""Noise calibration comes from opacus' RDP accountant and budgets validate themselves."""

import math

import pytest

from shared.errors import PrivacyError
from shared.privacy import (
    DPReport,
    PrivacyBudget,
    compose_epsilon,
    dpsgd_noise_multiplier,
    gaussian_noise_multiplier,
    rdp_epsilon,
)


@pytest.mark.parametrize("epsilon", [0.0, -1.0, math.inf, math.nan])
def test_budget_rejects_bad_epsilon(epsilon):
    with pytest.raises(PrivacyError, match="epsilon"):
        PrivacyBudget(epsilon)


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1])
def test_budget_rejects_bad_delta(delta):
    with pytest.raises(PrivacyError, match="delta"):
        PrivacyBudget(1.0, delta)


@pytest.mark.parametrize(("epsilon", "sigma"), [(8.0, 0.64), (4.0, 1.16), (1.0, 4.06)])
def test_gaussian_sigma_matches_published_rdp_values(epsilon, sigma):
    assert gaussian_noise_multiplier(PrivacyBudget(epsilon, 1e-5)) == pytest.approx(sigma, abs=0.02)


def test_calibrated_sigma_meets_the_budget_per_the_accountant():
    budget = PrivacyBudget(2.0, 1e-5)
    sigma = dpsgd_noise_multiplier(budget, sample_rate=0.5, steps=5)
    spent = rdp_epsilon([(sigma, 0.5, 5)], budget.delta)
    assert spent <= 2.0
    assert spent > 1.9  # calibrated tightly, not wastefully


def test_no_dp_means_no_noise():
    assert gaussian_noise_multiplier(PrivacyBudget(None)) == 0.0


def test_composition_adds_up_and_no_dp_poisons_it():
    one = DPReport("gaussian", 4.0, 1e-5, gaussian_noise_multiplier(PrivacyBudget(4.0)))
    both = compose_epsilon([one, one], 1e-5)
    assert both is not None and 4.0 < both < 8.0  # RDP composes tighter than the sum
    clear = DPReport("none", None, 1e-5, 0.0)
    assert compose_epsilon([one, clear], 1e-5) is None


def test_report_round_trips_and_rejects_garbage():
    report = DPReport("gaussian", 4.0, 1e-5, 1.16, noise_std=0.01, details={"n": 3})
    assert DPReport.from_dict(report.to_dict()) == report
    with pytest.raises(PrivacyError):
        DPReport.from_dict({"mechanism": "x"})
