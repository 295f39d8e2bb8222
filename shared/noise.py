"""Where the noise of every DP release comes from: the one home of the samplers.

A DP guarantee is only as good as its noise. Two samplers serve the project:

- **OpenDP** (``opendp`` on PyPI) for the spec releases that add noise to a vector or a
  count (RKME). Its Gaussian mechanism samples the discrete Gaussian on a grid of 2^k
  exactly, from the operating system's entropy, and rounds the input to that grid before
  adding it; the result is rounded to the nearest float. Its privacy map accounts for the
  rounding, so the release is not open to the floating-point attacks on textbook
  samplers (Mironov 2012: the low bits of ``mu + N(0, s²)`` computed in floats reveal mu).
- **A torch generator seeded from ``os.urandom``** for DP-SGD (adapters, PAVE), where
  opacus draws the noise itself and OpenDP cannot reach in. The seed is 64 fresh bits per
  release, never a fixed or default seed: ``torch.manual_seed(config.seed)``, which
  training sets for reproducible batches, must not also fix the noise. This sampler is
  torch's Mersenne Twister with floating-point Box-Muller, so it carries the textbook
  guarantee only (opacus' ``secure_mode`` needs ``torchcsprng``, which does not install
  here); README says so.

Tests may pass ``rng`` (numpy) or a ``noise_seed`` to make a release reproducible; no
production path does.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: ``lwm --help`` reaches this module via shared.dpsgd
    import numpy as np
    import torch

SPEC_SAMPLER = "opendp gaussian (discrete on 2^k grid, OS entropy)"
DPSGD_SAMPLER = "torch generator seeded from os.urandom per release"


def gaussian_vector(
    values: np.ndarray, std: float, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``values`` (1-D) plus N(0, std²) in every coordinate, as float64.

    OpenDP's sampler unless ``rng`` is given (tests only)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    if std == 0:
        return values.copy()
    if rng is not None:
        return values + rng.normal(0.0, std, size=values.shape)
    import opendp.prelude as dp

    dp.enable_features("contrib")
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False), size=int(values.size))
    mechanism = dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=float(std))
    return np.asarray(mechanism(values.tolist()), dtype=np.float64)


def gaussian_count(count: int, std: float, rng: np.random.Generator | None = None) -> int:
    """``count`` plus integer Gaussian noise of scale ``std`` (OpenDP's discrete Gaussian;
    a rounded numpy draw when ``rng`` is given, tests only)."""
    if std == 0:
        return int(count)
    if rng is not None:
        return int(round(count + rng.normal(0.0, std)))
    import opendp.prelude as dp

    dp.enable_features("contrib")
    mechanism = dp.m.make_gaussian(
        dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=float(std)
    )
    return int(mechanism(int(count)))


def torch_generator(device: torch.device | str, seed: int | None = None) -> torch.Generator:
    """A generator for DP-SGD noise: seeded from ``os.urandom`` unless ``seed`` (tests)."""
    import torch

    fresh = int.from_bytes(os.urandom(8), "little") if seed is None else seed
    return torch.Generator(device).manual_seed(fresh)
