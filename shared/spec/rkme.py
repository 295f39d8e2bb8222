"""RKME: a differentially private kernel mean embedding of sentence embeddings (DESIGN §4.2).

phi(x) = sqrt(2/D)·[cos(Wx), sin(Wx)] with W ~ N(0, 2·gamma·I) (D/2 rows, from the schema's
public seed) approximates the Gaussian kernel exp(-gamma·||x-y||²) and has ||phi(x)|| = 1
exactly. The released statistic is the mean mu = (1/n)·sum phi(x_i); replacing one text
moves it by at most 2/n in L2, so the Gaussian mechanism adds N(0, (sigma·2/n)²·I) with
sigma from the RDP accountant for (epsilon, delta). n is treated as public.

Distance (see ``shared.spec.ranking``): ||mu_u - mu_c||² minus the expected squared norms of
both noises, an unbiased estimate of the squared MMD between the two text distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np

from shared.errors import DataError, SpecError
from shared.privacy import DPReport, PrivacyBudget, gaussian_noise_multiplier
from shared.spec.record import Specification
from shared.spec.schema import RkmeSchema

MECHANISM = "gaussian (rdp accountant, replace-one sensitivity 2/n)"


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


def sensitivity(n: int) -> float:
    """L2 sensitivity of the mean of n unit-norm features (replace one text): 2/n."""
    return 2.0 / n


def noise_std(n: int, budget: PrivacyBudget) -> tuple[float, float]:
    """(noise multiplier, per-coordinate noise std) of the DP mean of n feature vectors.

    The one calibration of RKME noise: the client releases with it and the market checks
    every submitted spec's declared noise against it (``shared.spec.claims``)."""
    if not budget.is_private:
        return 0.0, 0.0
    sigma = gaussian_noise_multiplier(budget)
    return sigma, sigma * sensitivity(n)


def make_rkme_spec(
    embeddings: np.ndarray,
    schema: RkmeSchema,
    budget: PrivacyBudget,
    rng: np.random.Generator | None = None,
) -> Specification:
    """Release the DP mean embedding of ``embeddings`` (rows = texts, already encoded).

    ``rng`` is for reproducible tests only; by default the noise comes from OS entropy.
    """
    n = int(np.asarray(embeddings).shape[0]) if np.asarray(embeddings).ndim == 2 else 0
    if n == 0:
        raise DataError("cannot make a spec of no texts: the data is empty")
    mean = features(embeddings, schema).mean(axis=0, dtype=np.float64)
    sigma, std = noise_std(n, budget)
    if std > 0:
        generator = rng if rng is not None else np.random.default_rng()
        mean = mean + generator.normal(0.0, std, size=mean.shape)
    report = DPReport(
        mechanism=MECHANISM if budget.is_private else "none",
        epsilon=budget.epsilon,
        delta=budget.delta,
        noise_multiplier=sigma,
        noise_std=std,
        details={"sensitivity": sensitivity(n)},
    )
    return Specification(
        kind="rkme", schema_id=schema.schema_id, vector=mean.astype(np.float32), n=n, privacy=report
    )


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
