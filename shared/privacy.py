"""Differential-privacy parameters, noise calibration and accounting.

All calibration goes through opacus' RDP accountant, so the epsilon a spec reports is the
accountant's, never a number we computed by hand. Every release on a holder's data is
accounted under one neighbouring relation, ``RELATION``: datasets that differ by adding or
removing one record (opacus' own). Two mechanisms are used in the project:

- one Gaussian release of bounded-sensitivity statistics (the RKME sum of unit features
  and its count, ``shared.spec.rkme``): sample rate 1 and one step;
- DP-SGD (PAVE specs, DP fine-tuning): Poisson-subsampled Gaussian steps, counted by opacus.

Several releases on the same data compose in one RDP accountant (``compose_epsilon``). The
noise itself is drawn in ``shared.noise``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from shared.errors import PrivacyError

DEFAULT_DELTA = 1e-5
#: The neighbouring relation of every release: one DP definition for the whole learnware.
RELATION = "add/remove one record"


@dataclass(frozen=True)
class PrivacyBudget:
    """Target (epsilon, delta). ``epsilon=None`` means no DP at all (must be asked for)."""

    epsilon: float | None
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise PrivacyError(f"epsilon must be a finite number > 0, got {self.epsilon!r}")
        if not (0.0 < self.delta < 1.0):
            raise PrivacyError(f"delta must be in (0, 1), got {self.delta!r}")

    @property
    def is_private(self) -> bool:
        return self.epsilon is not None

    def require_texts(self, n: int) -> None:
        """``PrivacyError`` unless delta < 1/n: delta is the chance the guarantee fails
        outright, and at delta >= 1/n a mechanism may publish one text verbatim and still
        meet it."""
        if self.is_private and self.delta >= 1.0 / n:
            raise PrivacyError(
                f"delta={self.delta:g} must be below 1/n = 1/{n} (at 1/n a release may "
                "reveal a whole text); lower delta or add texts"
            )


@dataclass(frozen=True)
class DPReport:
    """What one release cost and how it was made: THE DP report, stored with every spec and
    listed per part in a learnware's manifest (``shared.learnware.DpLedger.compose``).

    ``epsilon`` is None for a non-private release. ``noise_std`` is the per-coordinate
    standard deviation of the Gaussian noise in the released vector where it is known
    (RKME), which lets the market correct distances for the noise bias.
    """

    mechanism: str
    epsilon: float | None
    delta: float
    noise_multiplier: float
    sample_rate: float = 1.0
    steps: int = 1
    noise_std: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DPReport:
        try:
            report = cls(
                mechanism=str(raw["mechanism"]),
                epsilon=None if raw.get("epsilon") is None else float(raw["epsilon"]),
                delta=float(raw["delta"]),
                noise_multiplier=float(raw["noise_multiplier"]),
                sample_rate=float(raw.get("sample_rate", 1.0)),
                steps=int(raw.get("steps", 1)),
                noise_std=float(raw.get("noise_std", 0.0)),
                details=dict(raw.get("details", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PrivacyError(f"malformed DP report: {exc}") from exc
        if not math.isfinite(report.noise_std) or report.noise_std < 0:
            raise PrivacyError(f"noise_std must be finite and >= 0, got {report.noise_std!r}")
        return report

    def accounting(self) -> dict[str, Any]:
        """What an auditor needs to recompute the epsilon: one RDP history entry and the
        noise (the manifest lists it with every part and spec)."""
        return {
            "relation": RELATION,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "noise_std": self.noise_std,
        }

    @property
    def mechanism_name(self) -> str:
        """The mechanism's short name ("dp-sgd", "gaussian", "none"): at most 64 chars."""
        return mechanism_name(self.mechanism)

    def history(self) -> list[tuple[float, float, int]]:
        """This release as entries of an opacus RDP accountant's history."""
        if self.epsilon is None:
            return []
        return [(self.noise_multiplier, self.sample_rate, self.steps)]


def mechanism_name(mechanism: str) -> str:
    """The short name of a mechanism description: the words before " (", at most 64 chars."""
    return mechanism.split(" (", 1)[0].strip()[:64] or "none"


def gaussian_noise_multiplier(budget: PrivacyBudget) -> float:
    """Noise multiplier of one Gaussian release (sample rate 1, one step) for ``budget``.

    Multiply by the statistic's L2 sensitivity to get the noise std. At delta=1e-5:
    epsilon 8 -> 0.64, 4 -> 1.16, 1 -> 4.06.
    """
    return dpsgd_noise_multiplier(budget, sample_rate=1.0, steps=1)


def dpsgd_noise_multiplier(budget: PrivacyBudget, *, sample_rate: float, steps: int) -> float:
    """Noise multiplier for ``steps`` Poisson-subsampled Gaussian steps to meet ``budget``."""
    if budget.epsilon is None:
        return 0.0
    if not (0.0 < sample_rate <= 1.0):
        raise PrivacyError(f"sample rate must be in (0, 1], got {sample_rate!r}")
    if steps < 1:
        raise PrivacyError(f"steps must be >= 1, got {steps!r}")
    try:
        return _calibrated(budget.epsilon, budget.delta, sample_rate, steps)
    except ValueError as exc:  # opacus: "The privacy budget is too low."
        raise PrivacyError(f"cannot reach epsilon={budget.epsilon}: {exc}") from exc


@lru_cache(maxsize=256)
def _calibrated(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """opacus' binary search over sigma (about a second); cached, it is pure."""
    import warnings

    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": bound still valid
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant="rdp",
            )
        )


def rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of a sequence of (noise multiplier, sample rate, steps) releases, RDP-composed."""
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


def compose_epsilon(reports: list[DPReport], delta: float) -> float | None:
    """Total epsilon of several releases on the same data; None if any release is not DP."""
    if any(r.epsilon is None for r in reports):
        return None
    history = [entry for r in reports for entry in r.history()]
    return rdp_epsilon(history, delta)
