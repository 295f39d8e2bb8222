"""Federation figures: what a simulated Flower round costs over the same training done
locally, and (``--quality``) whether the federated learnware beats each holder's own.

    .venv/bin/python benchmarks/bench_federation.py [--model tiny|smollm2-135m]
        [--holders 4] [--texts 64] [--rounds 2] [--local-steps 10] [--batch 8]
        [--max-tokens 64] [--rank 8] [--lr LR] [--threads 1] [--home DIR]
        [--quality] [--seeds 0,1,2] [--quality-texts 24] [--quality-held-out 30]
        [--quality-rounds 5] [--quality-local-steps 10] [--no-overhead]
        [--out bench-out/federation.json]

1. Overhead: ``run_federation`` (Flower's simulation engine, Ray, 1 CPU per holder, no DP,
   package written to a folder) with ``--holders`` holders of ``--texts`` finance
   paragraphs, against the same training done locally: each holder's ``--local-steps``
   steps run one after the other in this process with ``finetune_lora`` on the same texts
   and settings (one torch thread by default, as each Ray worker has). The phases come from
   Flower's log (timestamps of its messages): Ray start-up (Ray init and the actor pool),
   each round (the first includes Ray start-up and the workers importing torch and loading
   the model), what comes before round 1 (the ServerApp's schema and initial LoRA) and
   after the last (each holder's DP spec, merge, sign, package, Ray shutdown).
2. Quality (``--quality``): the experiment of ``tests/federation_quality.py`` (3 holders
   of ``--quality-texts`` texts, 3 x ``--quality-held-out`` pooled held-out texts, solo
   holders trained ``rounds x local_steps`` steps with the federation's settings) for each
   of ``--seeds`` (the data split): held-out token perplexity of the base, of each solo
   learnware and of the federated one.

Results are merged into ``--out`` under the model's name (quality rows by seed), so the
tiny and SmolLM2 runs share one file.

Measured 2026-11-27 on 2 cores shared with other work (load average 2-6), one torch
thread in this process and in each of the 2 Ray workers, no DP.

Overhead, tiny, 4 holders x 64 texts, 10 local steps, batch 8 x 64 tokens, 2 rounds (s)::

    local round (4 holders x 10 steps, in sequence)   4.2
    before round 1 (schema, initial LoRA)             3.8
    round 1, cold                                    28.3  (Ray start-up 6.6; workers
                                                           importing torch/peft and loading
                                                           the model, then training: 21.7)
    round 2, warm                                     1.9  (0.46 x local: 2 workers at once)
    after the rounds (4 RKME specs, sign, package,   19.9  (the specs need the sentence
      Ray shutdown)                                        encoder in each worker)
    run_federation total                             53.9  (12.9 x one local round)

A warm round costs no more than local training: Flower's overhead is the fixed ~50 s of
start-up (Ray, worker imports, model and encoder loads), paid once per federation.

Quality, tiny (defaults: 24 texts per holder, 90 held-out, 5 rounds x 10 steps, solo 50
steps, AdamW lr 1e-2, r=8)::

    seed  base    solo 0  solo 1  solo 2  federated  best solo / fed
    0     2072.0  1919.4  1910.1  1912.1  1864.1     1.025
    1     2070.0  1913.8  1908.1  1923.1  1868.6     1.021
    2     2064.3  1892.6  1955.5  1934.3  1862.5     1.016
    3     2071.3  1967.4  1952.2  1926.1  1878.8     1.025
    4     2065.9  1907.4  1935.0  1955.2  1873.6     1.018

The advantage depends on the regime, as it should: it comes from the federation seeing 3x
the text, so it shows once a holder alone starts to fit its own texts. By hand, same code
(best solo / fed): 40 texts per holder, 4 x 5 steps (solo 20 steps, 4 epochs), seeds 0-2:
1.003, 0.9996, 1.003, a tie; 32 texts, 5 x 10 steps, seeds 0-1: 1.010, 1.006; 24 texts,
10 x 5 steps (more, shorter rounds), seeds 0-1: 1.025, 1.019.

Quality, SmolLM2-135M (16 texts per holder, 30 held-out, 3 rounds x 5 steps, solo 15
steps, lr 1e-3: the default 1e-2 wrecks the pretrained model, held-out perplexity 152
against 35 for the base after 15 steps; 6.5-7.7 min per seed)::

    seed  base   solo 0  solo 1  solo 2  federated  best solo / fed
    0     34.13  31.43   30.50   29.90   28.70      1.042
    1     36.20  31.66   31.30   30.85   29.54      1.044
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from federation_quality import (  # noqa: E402
    QualityResult,
    QualitySettings,
    compare,
    federation_config,
    holder_data,
    new_key,
    write_holders,
)

from client.federation.config import FederationConfig  # noqa: E402
from client.finetune import finetune_lora  # noqa: E402
from shared.home import Home  # noqa: E402

# ---------------------------------------------------------------- Flower's clock


class FlowerClock(logging.Handler):
    """Keeps (time, message) of every Flower log record: the only view into the phases of
    ``run_simulation`` (Ray start-up happens inside round 1, out of the caller's sight)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.events: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append((time.perf_counter(), record.getMessage()))

    def first(self, text: str, after: float = float("-inf")) -> float | None:
        """When a message containing ``text`` was first logged after ``after``."""
        return next((t for t, msg in self.events if t > after and text in msg), None)


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def federation_phases(
    clock: FlowerClock, started: float, ended: float, rounds: int
) -> dict[str, Any]:
    """Wall seconds of each phase; None where Flower's log did not show the phase."""
    ray_init = clock.first("Initialising: RayBackend")
    ray_start = _span(ray_init, clock.first("Constructed ActorPool", ray_init or started))
    round_starts = [clock.first(f"[ROUND {k}/{rounds}]") for k in range(1, rounds + 1)]
    finished = clock.first("Strategy execution finished")
    round_seconds = []
    for k, start in enumerate(round_starts):
        nxt = round_starts[k + 1] if k + 1 < rounds else finished
        received = clock.first("results and", start) if start is not None else None
        end = received if received is not None and (nxt is None or received <= nxt) else nxt
        round_seconds.append(_span(start, end))
    return {
        "total_s": ended - started,
        "ray_start_s": ray_start,
        "before_rounds_s": _span(started, round_starts[0]),
        "round_s": round_seconds,
        "after_rounds_s": _span(finished, ended),
    }


# ---------------------------------------------------------------- 1. overhead


def local_training(
    fed: FederationConfig, parts: tuple[tuple[str, ...], ...], home: Home
) -> dict[str, Any]:
    """One round's training without Flower: each holder's local steps, one after another."""
    from tqdm.auto import tqdm

    from shared.models import load_causal_lm

    started = time.perf_counter()
    base = load_causal_lm(fed.base_model, home)
    load_s = time.perf_counter() - started
    seconds = []
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        for i, texts in enumerate(tqdm(parts, desc="local training", unit="holder")):
            t0 = time.perf_counter()
            finetune_lora(list(texts), base, fed.training, Path(tmp) / f"holder-{i}")
            seconds.append(time.perf_counter() - t0)
    return {"model_load_s": load_s, "holder_s": seconds, "round_s": sum(seconds)}


def federated_training(fed: FederationConfig) -> dict[str, Any]:
    """``run_federation`` timed as a whole and, through Flower's log, phase by phase."""
    from client.federation.run import run_federation

    clock = FlowerClock()
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addHandler(clock)
    started = time.perf_counter()
    try:
        run_federation(fed)
    finally:
        ended = time.perf_counter()
        flwr_logger.removeHandler(clock)
    return federation_phases(clock, started, ended, fed.rounds)


def overhead(args: argparse.Namespace, home: Home, workdir: Path) -> dict[str, Any]:
    """Local round first (it also builds the model in the home), then the federation."""
    settings = QualitySettings(
        base_model=args.model,
        holders=args.holders,
        per_holder=args.texts,
        held_out_per_holder=0,
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch_size=args.batch,
        max_tokens=args.max_tokens,
        rank=args.rank,
        lr=args.lr,
    )
    data = holder_data(settings)
    paths = write_holders(data, workdir / "data")
    key = new_key(workdir / "coordinator.key", home)
    fed = federation_config(settings, paths, key, home, workdir / "federated")
    local = local_training(fed, data.parts, home)
    federated = federated_training(fed)
    return {"settings": asdict(settings), "local": local, "federation": federated}


def print_overhead(row: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s, local, fed = row["settings"], row["local"], row["federation"]
    title = (
        f"Federation overhead: {s['base_model']}, {s['holders']} holders x {s['per_holder']} "
        f"texts, {s['local_steps']} local steps, batch {s['batch_size']} x "
        f"{s['max_tokens']} tokens, {s['rounds']} rounds"
    )
    table = Table(title=title)
    table.add_column("what")
    table.add_column("wall s", justify="right")
    table.add_column("/ local round", justify="right")
    base = local["round_s"]

    def add(what: str, seconds: float | None) -> None:
        ratio = "" if seconds is None else f"{seconds / base:.2f}"
        table.add_row(what, "-" if seconds is None else f"{seconds:.1f}", ratio)

    add(f"local round: {s['holders']} holders in sequence, in-process", base)
    add("federation: before round 1 (schema, initial LoRA)", fed["before_rounds_s"])
    add("  Ray start-up (init + actor pool; inside round 1)", fed["ray_start_s"])
    for k, seconds in enumerate(fed["round_s"], start=1):
        if k == 1:
            add("federation round 1 (cold: Ray, worker imports, model)", seconds)
            add("  round 1 less Ray start-up", _span(fed["ray_start_s"], seconds))
        else:
            add(f"federation round {k}", seconds)
    add("federation: after the rounds (specs, sign, package, Ray shutdown)", fed["after_rounds_s"])
    add("run_federation total", fed["total_s"])
    Console(width=120).print(table)


# ---------------------------------------------------------------- 2. quality


def quality(args: argparse.Namespace, home: Home, workdir: Path) -> list[QualityResult]:
    """The federated-vs-solo experiment once per seed, with a progress bar over its stages."""
    from tqdm.auto import tqdm

    seeds = [int(s) for s in args.seeds.split(",") if s]
    results = []
    with tqdm(total=len(seeds) * 4, desc="quality", unit="model") as bar:
        for seed in seeds:
            settings = QualitySettings(
                base_model=args.model,
                per_holder=args.quality_texts,
                held_out_per_holder=args.quality_held_out,
                rounds=args.quality_rounds,
                local_steps=args.quality_local_steps,
                batch_size=args.batch,
                max_tokens=args.max_tokens,
                rank=args.rank,
                lr=args.lr,
                seed=seed,
            )

            def stage(name: str, seed: int = seed) -> None:
                bar.set_postfix_str(f"seed {seed}: {name}")
                bar.update(0 if name == "solo 0" else 1)

            results.append(compare(settings, home, workdir / f"quality-{seed}", stage))
            bar.update(1)
    return results


def print_quality(results: list[QualityResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = results[0].settings
    title = (
        f"Held-out perplexity, {s.base_model}: {s.holders} holders x {s.per_holder} "
        f"{s.domain} texts, {s.holders * s.held_out_per_holder} pooled held-out; federation "
        f"{s.rounds} rounds x {s.local_steps} steps, solo {s.solo_steps} steps; batch "
        f"{s.batch_size} x {s.max_tokens} tokens, r={s.rank}, lr {s.lr or 'default'}"
    )
    table = Table(title=title)
    for name in ("seed", "base", *(f"solo {i}" for i in range(s.holders)), "federated"):
        table.add_column(name, justify="right")
    table.add_column("best solo / fed", justify="right")
    table.add_column("fed s / solo s", justify="right")
    for r in results:
        solo_s = sum(v for k, v in r.seconds.items() if k.startswith("solo_"))
        table.add_row(
            str(r.settings.seed),
            f"{r.base:.2f}",
            *(f"{p:.2f}" for p in r.solos),
            f"{r.federated:.2f}",
            f"{r.margin:.4f}",
            f"{r.seconds['federation']:.0f} / {solo_s:.0f}",
        )
    Console(width=120).print(table)


# ---------------------------------------------------------------- main


def merge_quality(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier seeds of the same settings are kept, so seeds can be run one call at a time
    (a SmolLM2 seed takes minutes); rows of other settings are dropped."""

    def settings(row: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in row["settings"].items() if k != "seed"}, sort_keys=True)

    wanted = {settings(r) for r in new}
    seeds = {r["settings"]["seed"] for r in new}
    kept = [r for r in old if settings(r) in wanted and r["settings"]["seed"] not in seeds]
    return sorted([*kept, *new], key=lambda r: r["settings"]["seed"])


def merge_into(path: Path, model: str, report: dict[str, Any]) -> None:
    """Keep other models' results in the file; replace this model's (but see merge_quality)."""
    old = json.loads(path.read_text()) if path.exists() else {}
    if "overhead" in report:
        old.setdefault("overhead", {})[model] = report["overhead"]
    if "quality" in report:
        earlier = old.setdefault("quality", {}).get(model, [])
        old["quality"][model] = merge_quality(earlier, report["quality"])
    old["machine"] = report["machine"]
    old.setdefault("when", {})[model] = report["when"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(old, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, smollm2-135m or a folder")
    parser.add_argument("--holders", type=int, default=4)
    parser.add_argument("--texts", type=int, default=64, help="texts per holder (overhead)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="default: AdamW 1e-2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, this process")
    parser.add_argument("--home", default=None)
    parser.add_argument("--quality", action="store_true", help="also federated vs solo")
    parser.add_argument("--no-overhead", action="store_true", help="skip the overhead part")
    parser.add_argument("--seeds", default="0", help="data splits of the quality part")
    parser.add_argument("--quality-texts", type=int, default=24, help="texts per holder")
    parser.add_argument("--quality-held-out", type=int, default=30, help="per holder, pooled")
    parser.add_argument("--quality-rounds", type=int, default=5)
    parser.add_argument("--quality-local-steps", type=int, default=10)
    parser.add_argument("--out", default="bench-out/federation.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    home = Home.resolve(args.home)
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_avg_1min_at_start": os.getloadavg()[0],  # the 2 cores are shared
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench-federation-") as tmp:
        if not args.no_overhead:
            report["overhead"] = overhead(args, home, Path(tmp) / "overhead")
            print_overhead(report["overhead"])
        if args.quality:
            results = quality(args, home, Path(tmp))
            print_quality(results)
            report["quality"] = [{**asdict(r), "margin": r.margin} for r in results]
    out = Path(args.out)
    merge_into(out, args.model, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
