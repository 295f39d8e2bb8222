"""Identification accuracy against epsilon for both spec kinds on the real demo corpora.

For every domain of ``client.identification.DEMO_DOMAINS``: a holder spec of
``--holder-texts`` texts, and ``--trials`` user specs of disjoint held-out texts; top-1 is
right when a user's spec ranks its own domain's holder first. Both sides use the same
epsilon. Writes bench-out/identification.json and a plot of accuracy against epsilon.

    .venv/bin/python benchmarks/bench_identification.py [--epsilons none,8,4,1] [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client.identification import DEMO_DOMAINS, identify, split_domains
from client.specs import SpecMaker
from shared.home import Home
from shared.spec.defaults import default_schema


def parse_epsilons(text: str) -> list[float | None]:
    return [None if e.strip() in ("none", "inf") else float(e) for e in text.split(",")]


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``key=value`` PAVE recipe overrides; values read as JSON (``none`` is None)."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = None if value in ("none", "None") else json.loads(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epsilons", default="none,8,4,1")
    parser.add_argument("--kinds", default="rkme,pave")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--holder-texts", type=int, default=300)
    parser.add_argument("--user-texts", type=int, default=150)
    parser.add_argument("--pave-model", default="tiny", help="tiny, smollm2-135m, or an id")
    parser.add_argument("--pave-set", action="append", default=[], help="recipe key=value")
    parser.add_argument("--domains", default=",".join(DEMO_DOMAINS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out/identification.json")
    args = parser.parse_args()
    home = Home.resolve()
    kinds = tuple(args.kinds.split(","))
    schema = default_schema(
        home, args.pave_model, kinds, kinds[0], pave_overrides=parse_sets(args.pave_set)
    )
    maker = SpecMaker(schema, home)
    splits = split_domains(
        args.domains.split(","), args.holder_texts, args.user_texts, args.trials, args.seed
    )
    rows = []
    for kind in kinds:
        for epsilon in parse_epsilons(args.epsilons):
            started = time.perf_counter()
            result = identify(maker, splits, kind, epsilon, seed=args.seed, progress=True)
            rows.append(
                {
                    "kind": kind,
                    "epsilon": epsilon,
                    "top1": result.accuracy,
                    "correct": result.correct,
                    "trials": result.trials,
                    "seconds_per_spec": result.seconds_per_spec,
                    "seconds": time.perf_counter() - started,
                }
            )
            print(
                f"{kind:5} eps={epsilon!s:5} top-1 {result.correct}/{result.trials} "
                f"({result.accuracy:.0%}), {result.seconds_per_spec:.2f} s/spec",
                flush=True,
            )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "args": vars(args),
        "schema": schema.to_dict(),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot(rows, out.with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:  # type: ignore[type-arg]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        labels = ["no DP" if r["epsilon"] is None else f"{r['epsilon']:g}" for r in mine]
        ax.plot(labels, [r["top1"] for r in mine], marker="o", label=kind)
    ax.set_xlabel("epsilon (holder and user specs)")
    ax.set_ylabel("top-1 identification")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
