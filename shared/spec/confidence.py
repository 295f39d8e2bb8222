"""How sure a search is that its first match is the right one: a calibrated margin.

The statistic is the margin between the first and second match in units of how spread the
candidates are: m = (d2 - d1) / std(d1..dK) over the ``CONFIDENCE_DEPTH`` nearest
candidates (the search's own distances, any kind or a fusion; scale-free, so DP noise that
spreads all distances widens the yardstick too). The probability that the first match is
right is a logistic map of m, p = 1 / (1 + exp(-(a + b·m))), fitted per ranking method on
the cross-source benchmark (users' texts from another source than the holders', seven
holders, ε = 1, 4, 8 and no DP, 30 to 1,000 texts): ``benchmarks/bench_cross_source.py``
fits it on half the users and prints the accuracy of the first match per confidence bin
on the other half (README). Off that setting (far more candidates, other domains) it is a
guide, not a guarantee.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE_DEPTH = 7
"""Candidates the margin's yardstick is taken over (the benchmark's number of holders)."""

#: method -> (a, b) of the logistic map, fitted by benchmarks/bench_cross_source.py.
CALIBRATION: dict[str, tuple[float, float]] = {
    "rkme": (-1.266, 4.615),
    "pave": (0.05, 0.523),  # pave, rrf, zsum: fitted on 14 searches each (PAVE's small grid)
    "rrf": (0.176, 2.012),
    "zsum": (0.312, 3.406),
}
_BINS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class Confidence:
    """``probability`` that the first match is right; ``margin`` the statistic it maps."""

    probability: float
    margin: float
    method: str


def margins(dist: np.ndarray) -> np.ndarray:
    """The standardised margin of each row of candidate distances (any order)."""
    d = np.sort(np.asarray(dist, dtype=np.float64), axis=-1)[..., :CONFIDENCE_DEPTH]
    std = d.std(axis=-1)
    gap = d[..., 1] - d[..., 0]
    return np.where(std > 0, gap / np.where(std > 0, std, 1.0), 0.0)


def probability(margin: np.ndarray | float, params: tuple[float, float]) -> np.ndarray:
    a, b = params
    return 1.0 / (1.0 + np.exp(-(a + b * np.asarray(margin, dtype=np.float64))))


def confidence(distances: Sequence[float], method: str) -> Confidence | None:
    """The search's confidence from its candidates' distances (nearest first or not);
    None with fewer than two candidates (nothing to tell the first from)."""
    if len(distances) < 2:
        return None
    margin = float(margins(np.asarray(distances)))
    p = float(probability(margin, CALIBRATION.get(method, CALIBRATION["rkme"])))
    return Confidence(p, margin, method)


def fit_calibration(m: np.ndarray, right: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """Logistic regression of ``right`` on ``m`` (Newton's method, a tiny ridge)."""
    x = np.stack([np.ones_like(m), m], axis=1)
    y = right.astype(np.float64)
    w = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + 1e-6 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        w -= np.linalg.solve(hess, grad)
    return float(w[0]), float(w[1])


def reliability(
    m: np.ndarray, right: np.ndarray, params: tuple[float, float]
) -> list[dict[str, object]]:
    """Per confidence bin: how many searches, their mean confidence, how many were right."""
    p = probability(m, params)
    out = []
    for low, high in zip(_BINS, _BINS[1:], strict=False):
        inside = (p >= low) & ((p < high) if high < 1.0 else (p <= high))
        if inside.any():
            out.append(
                {
                    "bin": f"{low:.2f}-{high:.2f}",
                    "searches": int(inside.sum()),
                    "mean_confidence": round(float(p[inside].mean()), 3),
                    "first_right": round(float(right[inside].mean()), 3),
                }
            )
    return out
