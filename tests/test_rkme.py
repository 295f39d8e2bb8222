"""RKME maths: features, kernel approximation, calibrated DP noise, bias-corrected distance."""

import numpy as np
import pytest
from scipy import stats

from shared.errors import DataError, SpecError
from shared.privacy import RELATION, PrivacyBudget, gaussian_noise_multiplier
from shared.spec.ranking import rank
from shared.spec.rkme import RkmeNoise, features, make_rkme_spec, noise_std
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
    """The released sum minus the exact sum is N(0, sum_std²) per coordinate, the released
    count minus n is N(0, count_std²), and the two noises together spend exactly the
    accountant's z: 1/sum_std² + 1/count_std² = 1/z² (add/remove one text moves the sum by
    at most 1 in L2 and the count by exactly 1)."""
    rng = np.random.default_rng(2)
    x = unit_rows(rng, 200)
    exact = features(x, SCHEMA).sum(axis=0, dtype=np.float64)
    budget = PrivacyBudget(4.0, 1e-5)
    noise = RkmeNoise.of(budget)
    z = gaussian_noise_multiplier(budget)
    assert noise.z == z
    assert noise.sum_std**-2 + noise.count_std**-2 == pytest.approx(z**-2, rel=1e-12)
    specs = [make_rkme_spec(x, SCHEMA, budget, rng) for _ in range(40)]
    residuals = np.concatenate([s.vector.astype(np.float64) * s.n - exact for s in specs])
    measured = residuals.std()
    assert measured == pytest.approx(noise.sum_std, rel=0.03)  # 20k draws: ~0.5% error
    assert abs(residuals.mean()) < 3 * noise.sum_std / np.sqrt(residuals.size)
    assert stats.kstest(residuals / noise.sum_std, "norm").pvalue > 1e-3
    counts = np.array([s.n for s in specs]) - 200
    assert np.abs(counts).max() < 6 * noise.count_std and counts.std() > 0


def test_the_mean_noise_is_half_the_replace_one_noise():
    """The add/remove release's noise on the mean is sum_std/n, about z/n: half the 2z/n of
    the old replace-one release (sensitivity 2/n on the mean), at the same budget."""
    budget = PrivacyBudget(1.0, 1e-5)
    z = gaussian_noise_multiplier(budget)
    _, std = noise_std(1000, budget)
    assert std / (2 * z / 1000) == pytest.approx(0.5 * np.sqrt(1 + 1 / 36), rel=1e-9)


def test_releases_use_fresh_noise_even_under_a_fixed_global_seed():
    """Without ``rng`` the noise comes from OpenDP (OS entropy): seeding numpy's global
    generator, as a careless caller might, does not repeat it."""
    x = unit_rows(np.random.default_rng(8), 50)
    releases = []
    for _ in range(2):
        np.random.seed(0)
        releases.append(make_rkme_spec(x, SCHEMA, PrivacyBudget(4.0)))
    assert not np.array_equal(releases[0].vector, releases[1].vector)
    details = releases[0].privacy.details
    assert details["relation"] == RELATION and "opendp" in details["sampler"]


def test_spec_records_the_accountants_epsilon_and_noise():
    x = unit_rows(np.random.default_rng(3), 50)
    spec = make_rkme_spec(x, SCHEMA, PrivacyBudget(2.0, 1e-6))
    assert spec.privacy.epsilon == 2.0
    assert spec.privacy.delta == 1e-6
    assert spec.privacy.noise_multiplier == gaussian_noise_multiplier(PrivacyBudget(2.0, 1e-6))
    sum_std = RkmeNoise.of(PrivacyBudget(2.0, 1e-6)).sum_std
    assert spec.privacy.noise_std == pytest.approx(sum_std / spec.n)
    assert spec.dim == 512 and spec.schema_id == SCHEMA.schema_id
    assert abs(spec.n - 50) < 6 * RkmeNoise.of(PrivacyBudget(2.0, 1e-6)).count_std


def test_no_dp_spec_is_the_exact_mean():
    x = unit_rows(np.random.default_rng(4), 10)
    spec = make_rkme_spec(x, SCHEMA, PrivacyBudget(None))
    np.testing.assert_allclose(spec.vector, features(x, SCHEMA).mean(axis=0), atol=1e-6)
    assert spec.privacy.epsilon is None and spec.privacy.noise_std == 0.0


def test_bias_correction_removes_the_noise_floor():
    """Two noisy specs of the same data: corrected distance ~ 0, raw distance ~ 2 noise norms."""
    rng = np.random.default_rng(5)
    x = unit_rows(rng, 300)
    budget = PrivacyBudget(1.0)
    corrected, raw, noise = [], [], []
    for _ in range(200):
        a, b = make_rkme_spec(x, SCHEMA, budget, rng), make_rkme_spec(x, SCHEMA, budget, rng)
        corrected.append(rank(a, [b])[0].distance)
        raw.append(float(((a.vector - b.vector) ** 2).sum()))
        noise.append(a.expected_noise_sq_norm + b.expected_noise_sq_norm)
    # What is left beyond the noise is the two counts' noise: the means are scaled by n/n~.
    assert np.mean(raw) == pytest.approx(np.mean(noise), rel=0.1)
    assert abs(np.mean(corrected)) < 0.1 * np.mean(noise)


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
