"""RKME: a differentially private kernel mean embedding of sentence embeddings (DESIGN §4.2).

phi(x) = sqrt(2/D)·[cos(Wx), sin(Wx)] with W ~ N(0, 2·gamma·I) (D/2 rows, from the schema's
public seed) approximates the Gaussian kernel exp(-gamma·||x-y||²) and has ||phi(x)|| = 1
exactly.

Neighbouring datasets differ by adding or removing one text (opacus' relation, the one
every release on a holder's data is accounted under, ``shared.privacy.RELATION``). The
release is the pair (S, n): the sum S = sum phi(x_i), which one text moves by at most 1 in
L2, and the count n, which it moves by exactly 1. Both get Gaussian noise, std ``sum_std``
and ``count_std``; together they are one Gaussian mechanism whose noise multiplier z
satisfies 1/z² = 1/sum_std² + 1/count_std² (their RDP curves add), so the accountant's z for
(epsilon, delta) fixes both once their ratio ``COUNT_NOISE_RATIO`` is chosen. The published
vector is the post-processed mean S~/n~ with n~ >= 1; its per-coordinate noise std is
sum_std/n~, half of what the old replace-one release (sensitivity 2/n on the mean) added.
n~ is the spec's ``n``: the true count is never published.

Noise comes from OpenDP's sampler (``shared.noise``).

Distance (see ``shared.spec.ranking``): ||mu_u - mu_c||² minus the expected squared norms of
both noises, an estimate of the squared MMD between the two text distributions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

from shared.errors import DataError, SpecError
from shared.noise import SPEC_SAMPLER, gaussian_count, gaussian_vector
from shared.privacy import RELATION, DPReport, PrivacyBudget, gaussian_noise_multiplier
from shared.spec.record import Specification
from shared.spec.schema import RkmeSchema

MECHANISM = "gaussian sum and count (add/remove one text: sum sensitivity 1, count 1)"
#: count_std / sum_std. The mean's error is about dim·sum_std²/n² + count_std²·||mu||²/n²;
#: with dim = 512 and ||mu||² ~ 0.5 the best ratio is (dim/0.5)^(1/4) ~ 5.7. At 6 the sum's
#: noise is 1.4% above the accountant's z and the count's is 6.1·z (25 texts at epsilon 1).
COUNT_NOISE_RATIO = 6.0


class Encoder(Protocol):
    """What RKME needs from a sentence encoder (``shared.models.SentenceEncoder`` is one)."""

    def encode(
        self, texts: Sequence[str], batch_size: int = ..., progress: bool = ...
    ) -> np.ndarray: ...


@lru_cache(maxsize=8)
def _frequencies(seed: int, half_dim: int, input_dim: int, gamma: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, np.sqrt(2.0 * gamma), size=(input_dim, half_dim)).astype(np.float32)
    w.setflags(write=False)
    return w


def frequencies(schema: RkmeSchema) -> np.ndarray:
    """The public (input_dim, D/2) frequency matrix W of the schema (cached)."""
    return _frequencies(schema.seed, schema.dim // 2, schema.input_dim, schema.gamma)


def features(embeddings: np.ndarray, schema: RkmeSchema) -> np.ndarray:
    """Random Fourier features, shape (n, D), each row of unit L2 norm."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != schema.input_dim:
        raise SpecError(f"embeddings must have shape (n, {schema.input_dim}), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise SpecError("embeddings must be finite (found NaN or inf)")
    z = x @ frequencies(schema)
    scale = np.float32(np.sqrt(2.0 / schema.dim))
    return np.concatenate([np.cos(z), np.sin(z)], axis=1) * scale


@dataclass(frozen=True)
class RkmeNoise:
    """The noise of one RKME release under a budget: the accountant's multiplier ``z`` of the
    joint (sum, count) Gaussian and the std of each part (sensitivity 1 each)."""

    z: float
    sum_std: float
    count_std: float

    @classmethod
    def of(cls, budget: PrivacyBudget) -> RkmeNoise:
        if not budget.is_private:
            return cls(0.0, 0.0, 0.0)
        z = gaussian_noise_multiplier(budget)
        sum_std = z * math.sqrt(1.0 + COUNT_NOISE_RATIO**-2)
        return cls(z, sum_std, COUNT_NOISE_RATIO * sum_std)


def noise_std(n: int, budget: PrivacyBudget) -> tuple[float, float]:
    """(noise multiplier z, per-coordinate noise std of the published mean) for a release
    whose published count is ``n``.

    The one calibration of RKME noise: the client releases with it and the market checks
    every submitted spec's declared noise against it (``shared.spec.claims``)."""
    noise = RkmeNoise.of(budget)
    return noise.z, noise.sum_std / n


def make_rkme_spec(
    embeddings: np.ndarray,
    schema: RkmeSchema,
    budget: PrivacyBudget,
    rng: np.random.Generator | None = None,
) -> Specification:
    """Release the DP mean embedding of ``embeddings`` (rows = texts, already encoded).

    ``rng`` is for reproducible tests only; by default the noise comes from OpenDP.
    """
    n = int(np.asarray(embeddings).shape[0]) if np.asarray(embeddings).ndim == 2 else 0
    if n == 0:
        raise DataError("cannot make a spec of no texts: the data is empty")
    total = features(embeddings, schema).sum(axis=0, dtype=np.float64)
    noise = RkmeNoise.of(budget)
    noisy_sum = gaussian_vector(total, noise.sum_std, rng)
    count = max(1, gaussian_count(n, noise.count_std, rng))
    report = DPReport(
        mechanism=MECHANISM if budget.is_private else "none",
        epsilon=budget.epsilon,
        delta=budget.delta,
        noise_multiplier=noise.z,
        noise_std=noise.sum_std / count,
        details=_details(noise) if budget.is_private else {},
    )
    return Specification(
        kind="rkme",
        schema_id=schema.schema_id,
        vector=(noisy_sum / count).astype(np.float32),
        n=count,
        privacy=report,
    )


def _details(noise: RkmeNoise) -> dict[str, object]:
    return {
        "relation": RELATION,
        "sum_sensitivity": 1.0,
        "count_sensitivity": 1.0,
        "sum_noise_std": noise.sum_std,
        "count_noise_std": noise.count_std,
        "sampler": SPEC_SAMPLER,
    }


def make_rkme_spec_from_texts(
    texts: Sequence[str],
    encoder: Encoder,
    schema: RkmeSchema,
    budget: PrivacyBudget,
    progress: bool = False,
) -> Specification:
    """Embed ``texts`` locally, then release their DP mean embedding."""
    if not texts:
        raise DataError("cannot make a spec of no texts: the data is empty")
    embeddings = encoder.encode(list(texts), progress=progress)
    return make_rkme_spec(embeddings, schema, budget)
