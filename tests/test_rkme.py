"""RKME maths: features, kernel approximation, calibrated DP noise, bias-corrected distance."""

import numpy as np
import pytest
from scipy import stats

from shared.errors import DataError, SpecError
from shared.privacy import PrivacyBudget, gaussian_noise_multiplier
from shared.spec.ranking import rank
from shared.spec.rkme import features, make_rkme_spec
from shared.spec.schema import RkmeSchema

SCHEMA = RkmeSchema(encoder_id="test-encoder", encoder_sha256="0" * 64, input_dim=16, dim=512)


def unit_rows(rng, n, d=16, center=None, spread=1.0):
    x = rng.normal(size=(n, d)) * spread
    if center is not None:
        x = x + center
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_features_have_unit_norm_and_approximate_the_gaussian_kernel():
    rng = np.random.default_rng(0)
    schema = RkmeSchema(encoder_id="e", encoder_sha256="0" * 64, input_dim=16, dim=8192, gamma=0.5)
    x = unit_rows(rng, 40)
    phi = features(x, schema)
    np.testing.assert_allclose(np.linalg.norm(phi, axis=1), 1.0, atol=1e-5)
    exact = np.exp(-0.5 * ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    assert np.abs(phi @ phi.T - exact).max() < 0.06


def test_frequencies_come_from_the_public_seed():
    x = unit_rows(np.random.default_rng(1), 3)
    other = RkmeSchema(encoder_id="test-encoder", encoder_sha256="0" * 64, input_dim=16, seed=1)
    np.testing.assert_array_equal(features(x, SCHEMA), features(x, SCHEMA))
    assert not np.allclose(features(x, SCHEMA), features(x, other))
    assert SCHEMA.schema_id != other.schema_id


def test_dp_noise_has_the_calibrated_scale():
    """The released mean minus the exact mean is N(0, (sigma*2/n)^2) per coordinate."""
    rng = np.random.default_rng(2)
    x = unit_rows(rng, 200)
    exact = features(x, SCHEMA).mean(axis=0)
    budget = PrivacyBudget(4.0, 1e-5)
    expected_std = gaussian_noise_multiplier(budget) * 2.0 / 200
    residuals = np.concatenate(
        [make_rkme_spec(x, SCHEMA, budget, rng).vector - exact for _ in range(40)]
    )
    measured = residuals.std()
    assert measured == pytest.approx(expected_std, rel=0.03)  # 20k draws: ~0.5% standard error
    assert abs(residuals.mean()) < 3 * expected_std / np.sqrt(residuals.size)
    assert stats.kstest(residuals / expected_std, "norm").pvalue > 1e-3


def test_spec_records_the_accountants_epsilon_and_noise():
    x = unit_rows(np.random.default_rng(3), 50)
    spec = make_rkme_spec(x, SCHEMA, PrivacyBudget(2.0, 1e-6))
    assert spec.privacy.epsilon == 2.0
    assert spec.privacy.delta == 1e-6
    assert spec.privacy.noise_multiplier == gaussian_noise_multiplier(PrivacyBudget(2.0, 1e-6))
    assert spec.privacy.noise_std == pytest.approx(spec.privacy.noise_multiplier * 2 / 50)
    assert spec.n == 50 and spec.dim == 512 and spec.schema_id == SCHEMA.schema_id


def test_no_dp_spec_is_the_exact_mean():
    x = unit_rows(np.random.default_rng(4), 10)
    spec = make_rkme_spec(x, SCHEMA, PrivacyBudget(None))
    np.testing.assert_allclose(spec.vector, features(x, SCHEMA).mean(axis=0), atol=1e-6)
    assert spec.privacy.epsilon is None and spec.privacy.noise_std == 0.0


def test_bias_correction_removes_the_noise_floor():
    """Two noisy specs of the same data: corrected distance ~ 0, raw distance ~ 2 noise norms."""
    rng = np.random.default_rng(5)
    x = unit_rows(rng, 30)
    budget = PrivacyBudget(1.0)
    corrected, raw = [], []
    for _ in range(200):
        a, b = make_rkme_spec(x, SCHEMA, budget, rng), make_rkme_spec(x, SCHEMA, budget, rng)
        corrected.append(rank(a, [b])[0].distance)
        raw.append(float(((a.vector - b.vector) ** 2).sum()))
    noise = 2 * a.expected_noise_sq_norm
    assert np.mean(raw) == pytest.approx(noise, rel=0.05)
    assert abs(np.mean(corrected)) < 0.05 * noise


def test_small_noisy_holder_is_not_pushed_down():
    """A holder of the user's domain with few texts (much noise) still beats another domain."""
    rng = np.random.default_rng(6)
    center_a, center_b = rng.normal(size=16) * 1.0, rng.normal(size=16) * 1.0
    user = make_rkme_spec(unit_rows(rng, 300, center=center_a), SCHEMA, PrivacyBudget(4.0), rng)
    small_same = make_rkme_spec(
        unit_rows(rng, 40, center=center_a), SCHEMA, PrivacyBudget(4.0), rng
    )
    big_other = make_rkme_spec(
        unit_rows(rng, 3000, center=center_b), SCHEMA, PrivacyBudget(4.0), rng
    )
    best = rank(user, [big_other, small_same])[0]
    assert best.position == 1


def test_bad_inputs_are_clear_errors():
    with pytest.raises(DataError, match="empty"):
        make_rkme_spec(np.zeros((0, 16), dtype=np.float32), SCHEMA, PrivacyBudget(4.0))
    with pytest.raises(SpecError, match="shape"):
        make_rkme_spec(np.zeros((3, 15), dtype=np.float32), SCHEMA, PrivacyBudget(4.0))
    bad = unit_rows(np.random.default_rng(7), 3)
    bad[1, 2] = np.nan
    with pytest.raises(SpecError, match="finite"):
        make_rkme_spec(bad, SCHEMA, PrivacyBudget(4.0))
