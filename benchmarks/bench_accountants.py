"""Which privacy accountant is tightest on our mechanisms (issue 11, item 3).

For each mechanism a holder's data goes through, at the same (epsilon, delta), the noise
multiplier each accountant needs: opacus' RDP (what ``shared.privacy`` uses today), opacus'
PRV and Google's ``dp-accounting`` PLD (privacy loss distributions, tight up to its
discretisation). Less noise for the same guarantee is free utility. Then the composition:
the total epsilon of one learnware's three releases (adapter DP-SGD, PAVE, RKME) with the
noise multipliers RDP calibrated, as RDP and as PLD count it.

Mechanisms (n = 1,000 holder texts, delta = 1e-5):
- RKME: one Gaussian release (sample rate 1, one step; ``shared.spec.rkme``);
- PAVE: the market's default recipe, 5 Poisson steps at batch 512 (rate 1/2);
- adapter: ``lwm contribute --dp-sgd`` defaults, 30 Poisson steps at batch 8 (rate 8/1000).

    .venv/bin/python benchmarks/bench_accountants.py [--n 1000] [--epsilons 1,4,8]

Writes bench-out/accountants.json. Pure arithmetic: timing does not matter here.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

DELTA = 1e-5


@dataclass(frozen=True)
class Mechanism:
    name: str
    sample_rate: float
    steps: int


@dataclass(frozen=True)
class Row:
    mechanism: str
    epsilon: float
    rdp: float
    prv: float | None
    pld: float

    @property
    def saved(self) -> float:
        """The share of RDP's noise std the tightest sound accountant saves."""
        best = min(x for x in (self.prv, self.pld) if x is not None)
        return 1.0 - best / self.rdp


def mechanisms(n: int) -> list[Mechanism]:
    return [
        Mechanism("RKME (one Gaussian)", 1.0, 1),
        Mechanism("PAVE (5 steps, batch 512)", 1.0 / math.ceil(n / 512), 5),
        Mechanism("adapter (30 steps, batch 8)", 1.0 / math.ceil(n / 8), 30),
    ]


def opacus_sigma(m: Mechanism, epsilon: float, accountant: str) -> float | None:
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(
                get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=DELTA,
                    sample_rate=m.sample_rate,
                    steps=m.steps,
                    accountant=accountant,
                )
            )
        except (ValueError, RuntimeError):  # PRV cannot represent some of them
            return None


def dp_event(sigma: float, sample_rate: float, steps: int):  # type: ignore[no-untyped-def]
    import dp_accounting as dpa

    event = dpa.GaussianDpEvent(sigma)
    if sample_rate < 1.0:
        event = dpa.PoissonSampledDpEvent(sample_rate, event)
    return dpa.SelfComposedDpEvent(event, steps)


def pld_epsilon(events: list, delta: float = DELTA) -> float:  # type: ignore[type-arg]
    import dp_accounting as dpa

    accountant = dpa.pld.PLDAccountant(value_discretization_interval=1e-4)
    accountant.compose(dpa.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


def pld_sigma(m: Mechanism, epsilon: float) -> float:
    """The smallest sigma PLD accounts at ``epsilon``: bisection, to 0.1% of sigma."""
    low, high = 0.05, 200.0
    while high / low > 1.001:
        mid = math.sqrt(low * high)
        if pld_epsilon([dp_event(mid, m.sample_rate, m.steps)]) > epsilon:
            low = mid
        else:
            high = mid
    return high


def rdp_total(sigmas: list[tuple[float, Mechanism]]) -> float:
    from shared.privacy import rdp_epsilon

    return rdp_epsilon([(s, m.sample_rate, m.steps) for s, m in sigmas], DELTA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--epsilons", default="1,4,8")
    parser.add_argument("--out", default="bench-out/accountants.json")
    args = parser.parse_args()
    epsilons = [float(e) for e in args.epsilons.split(",")]
    rows = []
    print(f"noise multiplier for the same (epsilon, delta={DELTA}), n = {args.n}")
    header = "| mechanism | epsilon | RDP (opacus) | PRV (opacus) | PLD (dp-accounting) | saved |"
    print(header)
    print("|---|---:|---:|---:|---:|---:|")
    for m in mechanisms(args.n):
        for eps in epsilons:
            prv = opacus_sigma(m, eps, "prv")
            row = Row(m.name, eps, opacus_sigma(m, eps, "rdp") or math.nan, prv, pld_sigma(m, eps))
            rows.append(row)
            shown = "n/a" if prv is None else f"{prv:.3f}"
            print(
                f"| {m.name} | {eps:g} | {row.rdp:.3f} | {shown} | {row.pld:.3f} | "
                f"{row.saved:.1%} |",
                flush=True,
            )
    adapter, pave, rkme = reversed(mechanisms(args.n))
    releases = [(opacus_sigma(adapter, 8.0, "rdp") or 0.0, adapter)]
    releases += [(opacus_sigma(m, 4.0, "rdp") or 0.0, m) for m in (pave, rkme)]
    totals = {
        "rdp": rdp_total(releases),
        "pld": pld_epsilon([dp_event(s, m.sample_rate, m.steps) for s, m in releases]),
    }
    print(
        "\none learnware: adapter at epsilon 8, PAVE and RKME at 4 each (RDP-calibrated noise); "
        f"total epsilon as RDP composes it {totals['rdp']:.2f}, as PLD does {totals['pld']:.2f}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "n": args.n,
        "delta": DELTA,
        "rows": [{**asdict(r), "saved": r.saved} for r in rows],
        "learnware_total": totals,
    }
    out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
