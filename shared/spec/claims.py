"""A spec's claims about itself, checked against what its mechanism can produce (issue 12).

RKME distances subtract each spec's expected squared noise, ``dim·noise_std²``
(``shared.spec.ranking``), and ``noise_std`` comes from the spec's own metadata. A spec that
claims more noise than its release had gets a negative distance and ranks first for every
query: -20 and -2,754 were measured with a forged ``noise_std``. So nothing in a spec's
privacy report is taken on its word:

- the noise is recomputed from (epsilon, delta, n, mechanism), n being the released noisy
  count, with the one calibration the
  client releases with (``shared.spec.rkme.noise_std``, ``shared.privacy``), and a report
  that disagrees beyond ``NOISE_RTOL`` is refused; a spec without DP claims no noise;
- PAVE's DP-SGD report (noise multiplier, sample rate, steps) must be the schema's recipe at
  this n and give the claimed epsilon in the RDP accountant. PAVE ranks by cosine and never
  reads the noise, so this guards the privacy claim, not the ranking;
- every holder summarised has at least ``SpecLimits.min_n`` texts: the correction grows as
  1/n², so tiny holders could inflate it at will; a DP RKME count must also be large enough
  that the correction is at most ``MAX_NOISE_CORRECTION`` (``rkme_min_count``): the count
  is the DP count, so whatever count or epsilon a spec claims, its bonus is bounded;
- an RKME vector's norm must be possible for the claimed noise (``rkme_norm_bounds``): above
  the upper bound is no mean of unit features plus that noise; below the lower bound the
  claimed noise is not in the vector. The mean's norm is known only within the count's
  noise (``rkme_mean_norm_bound``), so for small counts the lower bound says little and the
  count rule carries the weight.

The market runs ``check_claims`` in its static checks (``server.checker``); a client may run
it on its own spec before submitting and on any spec it is shown.

What it cannot stop: within the declared noise, a vector's *direction* is the submitter's
choice, so a spec with large honest noise (tiny epsilon, few texts) that points its "noise"
at where queries lie still ranks well. The bounds limit how far, not whether.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from shared.dpsgd import poisson_sample_rate
from shared.errors import InvalidInput, SpecError
from shared.privacy import DPReport, PrivacyBudget, mechanism_name, rdp_epsilon
from shared.spec import pave, rkme
from shared.spec.record import Specification
from shared.spec.schema import PaveSchema, SpecSchema

#: Relative tolerance between a declared and a recomputed noise (or epsilon). opacus'
#: calibration is a bisection that stops within 0.01 of epsilon, so installs of other
#: opacus versions may differ in the third digit; 1% lets them agree and leaves a forger at
#: most 2% of the correction.
NOISE_RTOL = 1e-2
#: Tail of the chi-square bounds on the noise norm: an honest spec fails with probability
#: below 2·exp(-TAIL_LOG) = 2e-13 (Laurent and Massart 2000, Lemma 1).
TAIL_LOG = 30.0
#: float32 rounding of a released vector's norm (D=512: ~1e-6), generously.
NORM_SLACK = 1e-3


@dataclass(frozen=True)
class SpecLimits:
    """What a market asks of every spec it accepts.

    ``min_n``: the fewest texts a spec (or each holder of a federated spec) may summarise.
    Its DP noise correction is ``dim·(σ/n)²``: at n=10 and epsilon 4 that is already 7,
    against squared distances between domains of at most 2.
    """

    min_n: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.min_n, bool) or not isinstance(self.min_n, int) or self.min_n < 1:
            raise InvalidInput(f"SpecLimits.min_n must be an int >= 1, got {self.min_n!r}")


def check_claims(
    spec: Specification, schema: SpecSchema, limits: SpecLimits | None = None
) -> None:
    """Raise ``SpecError`` unless ``spec``'s privacy report, n and norm are possible.

    ``schema`` is the market's schema of the spec's kind (``Specification.check_against``
    passed). Calibrating the RKME noise of a new (epsilon, delta) costs opacus about a
    second; it is cached.
    """
    sizes = holder_sizes(spec)
    smallest = min(sizes)
    minimum = (limits or SpecLimits()).min_n
    if smallest < minimum:
        who = "the spec" if len(sizes) == 1 else "a holder of the spec"
        raise SpecError(f"{who} summarises {smallest} texts; this market needs at least {minimum}")
    if spec.kind == "rkme":
        std, mean_norm = _check_rkme_report(spec.privacy, sizes, spec.dim)
        _check_rkme_norm(spec, std, mean_norm)
    elif isinstance(schema, PaveSchema):
        _check_pave_report(spec.privacy, schema, sizes)
    else:
        raise SpecError(f"no {spec.kind} schema given to check a {spec.kind} spec against")


def holder_sizes(spec: Specification) -> tuple[int, ...]:
    """The n of each holder a spec summarises: ``(spec.n,)``, or a federated merge's list
    (``details["holder_n"]``, written by ``client.federation.server_app.merge_specs``)."""
    raw = spec.privacy.details.get("holder_n")
    if raw is None:
        return (spec.n,)
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"holder_n must be a non-empty list of text counts, got {raw!r:.80}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in raw):
        raise SpecError("holder_n must hold positive integers")
    if sum(raw) != spec.n:
        raise SpecError(f"holder_n sums to {sum(raw)}, the spec says n={spec.n}")
    return tuple(raw)


def rkme_noise_std(sizes: tuple[int, ...], budget: PrivacyBudget) -> float:
    """Per-coordinate noise std of an RKME release of holders of ``sizes`` texts under
    ``budget``: one holder's ``rkme.noise_std``, or the n-weighted merge's
    sqrt(sum (n_i/N)² std_i²) (independent noises)."""
    total = sum(sizes)
    var = sum(
        count * (n / total) ** 2 * rkme.noise_std(n, budget)[1] ** 2
        for n, count in Counter(sizes).items()
    )
    return math.sqrt(var)


def rkme_norm_bounds(std: float, dim: int, mean_norm: float = 1.0) -> tuple[float, float]:
    """(lowest, highest) L2 norm an honest RKME vector of ``dim`` entries can have.

    v = mu + z with ||mu|| <= ``mean_norm`` and z ~ N(0, std²·I), so ||z|| - mean_norm <=
    ||v|| <= ||z|| + mean_norm, and the chi-square tails bound ||z||²/std² within
    dim ± 2·sqrt(dim·x) (+ 2x above) but with probability exp(-x) each, x = ``TAIL_LOG``.
    """
    spread = 2.0 * math.sqrt(dim * TAIL_LOG)
    low = std * math.sqrt(max(0.0, dim - spread)) - mean_norm
    high = std * math.sqrt(dim + spread + 2.0 * TAIL_LOG) + mean_norm
    return max(0.0, low - NORM_SLACK), high + NORM_SLACK


#: How many count-noise stds an honest release's count can be off, with probability below
#: exp(-TAIL_LOG) (a Gaussian tail).
COUNT_TAIL = math.sqrt(2.0 * TAIL_LOG)
#: The largest noise correction ``dim·noise_std²`` the market accepts in an RKME spec.
MAX_NOISE_CORRECTION = 1.0


def rkme_min_count(budget: PrivacyBudget, dim: int = 512, holders: int = 1) -> int:
    """The smallest released count a DP RKME release of ``holders`` merged releases may have.

    Distances subtract each spec's noise correction ``dim·(sum_std/n)²``, and ``n`` is the
    released count, so a spec claiming a small count (or epsilon) would claim a large
    correction: a bonus on every distance. The norm checks cannot hold a small count to its
    claim (the true n, and with it the mean's norm, is only known within
    ``COUNT_TAIL·count_std``), so the count itself is bounded instead: at it the correction
    is ``MAX_NOISE_CORRECTION``, the most a forger can buy, as much as the norm check let
    through before the count was private. Honest holders need 15 texts at epsilon 8, 27 at
    4 and 94 at 1; a noisier spec would rank mostly by its noise.

    A federated merge of h releases has noise std ``sqrt(h)·sum_std/N`` whatever the split
    of N among the holders (``rkme_noise_std``), so the bound is on the merged count N and
    grows by sqrt(h); no holder's own count needs to reach it.
    """
    if not budget.is_private:
        return 1
    sum_std = rkme.RkmeNoise.of(budget).sum_std
    return math.ceil(sum_std * math.sqrt(dim * holders / MAX_NOISE_CORRECTION))


def rkme_texts_needed(budget: PrivacyBudget) -> int:
    """The fewest texts a holder should release an RKME spec of: ``rkme_min_count`` plus three
    count-noise stds, so the market refuses the released count with probability < 0.2%.
    Checked by the contributor before any training."""
    if not budget.is_private:
        return 1
    return rkme_min_count(budget) + math.ceil(3.0 * rkme.RkmeNoise.of(budget).count_std)


def rkme_mean_norm_bound(sizes: tuple[int, ...], budget: PrivacyBudget) -> float:
    """The largest ||S/n~|| an honest release can have: the mean of unit features has norm
    <= 1, but it is divided by the noisy count n~ = sum(sizes), not the true one. The true
    count is below n~ + COUNT_TAIL·count_std·sqrt(holders) but with probability
    exp(-TAIL_LOG)."""
    count_std = rkme.RkmeNoise.of(budget).count_std
    slack = COUNT_TAIL * count_std * math.sqrt(len(sizes))
    return 1.0 + slack / sum(sizes)


def _check_rkme_counts(sizes: tuple[int, ...], budget: PrivacyBudget, dim: int) -> None:
    total, needed = sum(sizes), rkme_min_count(budget, dim, holders=len(sizes))
    if total < needed:
        who = "the spec's" if len(sizes) == 1 else f"the merged spec's ({len(sizes)} holders)"
        raise SpecError(
            f"{who} released count {total} is below {needed}, the fewest texts an RKME "
            f"release at epsilon={budget.epsilon}, delta={budget.delta} may summarise (its "
            "noise would outweigh the distances it is ranked by); use more texts or a larger "
            "epsilon"
        )


def _check_rkme_report(
    report: DPReport, sizes: tuple[int, ...], dim: int
) -> tuple[float, float]:
    """(noise std, mean-norm bound) the report must declare (raises when it does not)."""
    _same(report.sample_rate, 1.0, "sample_rate", "an RKME release is one Gaussian release")
    _same(report.steps, 1, "steps", "an RKME release is one Gaussian release")
    if report.epsilon is None:
        _check_no_noise(report)
        return 0.0, 1.0
    budget = PrivacyBudget(report.epsilon, report.delta)
    _check_mechanism(report, rkme.MECHANISM)
    _check_rkme_counts(sizes, budget, dim)
    sigma, _ = rkme.noise_std(sizes[0], budget)
    std = rkme_noise_std(sizes, budget)
    _close(report.noise_multiplier, sigma, "noise_multiplier", report)
    _close(report.noise_std, std, "noise_std", report)
    return std, rkme_mean_norm_bound(sizes, budget)


def _check_rkme_norm(spec: Specification, std: float, mean_norm: float) -> None:
    norm = float(np.linalg.norm(spec.vector.astype(np.float64)))
    low, high = rkme_norm_bounds(std, spec.dim, mean_norm)
    if not (low <= norm <= high):
        raise SpecError(
            f"rkme vector norm {norm:.4g} is impossible for its claimed noise std {std:.4g} "
            f"(a mean of unit features plus that noise has norm in [{low:.4g}, {high:.4g}])"
        )


def _check_pave_report(report: DPReport, schema: PaveSchema, sizes: tuple[int, ...]) -> None:
    _same(report.steps, schema.steps, "steps", "the schema's recipe")
    rates = {poisson_sample_rate(n, schema.batch_size) for n in sizes}
    if not any(math.isclose(report.sample_rate, r, rel_tol=1e-9) for r in rates):
        raise SpecError(
            f"pave sample_rate {report.sample_rate!r} is not the schema's recipe at n "
            f"{sorted(set(sizes))[:5]} (batch {schema.batch_size}: {sorted(rates)[:5]})"
        )
    _same(report.noise_std, 0.0, "noise_std", "PAVE declares no per-coordinate noise")
    if report.epsilon is None:
        _check_no_noise(report)
        return
    _check_mechanism(report, pave.MECHANISM)
    sigma = report.noise_multiplier
    if not (math.isfinite(sigma) and sigma > 0):
        raise SpecError(f"a DP pave spec needs a noise multiplier > 0, got {sigma!r}")
    PrivacyBudget(report.epsilon, report.delta)  # PrivacyError for an impossible pair
    _close(report.epsilon, rdp_epsilon(report.history(), report.delta), "epsilon", report)


def _check_no_noise(report: DPReport) -> None:
    """A release without DP (epsilon None) adds no noise and says so."""
    _same(report.noise_std, 0.0, "noise_std", "a spec without DP has no noise")
    _same(report.noise_multiplier, 0.0, "noise_multiplier", "a spec without DP has no noise")
    if mechanism_name(report.mechanism) != "none":
        raise SpecError(f"a spec without DP names mechanism {report.mechanism!r:.80}, not none")


def _check_mechanism(report: DPReport, expected: str) -> None:
    if report.mechanism_name != mechanism_name(expected):
        raise SpecError(
            f"mechanism {report.mechanism!r:.80} is not this kind's {mechanism_name(expected)!r}"
        )


def _same(declared: float, expected: float, name: str, why: str) -> None:
    if declared != expected:
        raise SpecError(f"{name}={declared!r} refused: {why} ({name}={expected!r})")


def _close(declared: float, expected: float, name: str, report: DPReport) -> None:
    if not math.isclose(declared, expected, rel_tol=NOISE_RTOL):
        raise SpecError(
            f"{name}={declared:.6g} disagrees with the accountant's {expected:.6g} for "
            f"epsilon={report.epsilon}, delta={report.delta}"
        )
