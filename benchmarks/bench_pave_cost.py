"""A user's PAVE cost for n texts: frozen lower layers once, then DP-SGD on the top layers,
against the naive run of the whole model at every step, on the same texts in the same run.

Prints the time split (lower-layer pass, DP-SGD steps) and the cosine between the two
vectors (the same spec up to float rounding: full batches, one noise seed). Texts are real
demo snippets of all 8 domains mixed; epsilon 4. Recipe fields can be overridden to choose
one by measurement (``shared.spec.defaults.PAVE_RECIPES``). Writes bench-out/pave_cost.json.

    .venv/bin/python benchmarks/bench_pave_cost.py --pave-model smollm2-135m [--n 1000]
        [--set max_tokens=16 --set top_layers=2 ...] [--no-naive]
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

import numpy as np
from bench_identification import parse_sets
from bench_spec_build import texts_for

from shared.home import Home
from shared.privacy import PrivacyBudget
from shared.spec.defaults import pave_schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pave-model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--epsilon", type=float, default=4.0)
    parser.add_argument("--set", action="append", default=[], help="recipe key=value")
    parser.add_argument("--no-naive", action="store_true", help="skip the whole-model run")
    parser.add_argument("--out", default="bench-out/pave_cost.json")
    args = parser.parse_args()
    home = Home.resolve()
    from shared.models import load_causal_lm
    from shared.spec.pave import run_pave

    schema = pave_schema(home, args.pave_model, **parse_sets(args.set))
    model = load_causal_lm(args.pave_model, home)
    texts = texts_for(args.n)
    budget = PrivacyBudget(args.epsilon)
    run_pave(texts[:4], model, schema, budget, noise_seed=0)  # warm-up: noise calibration
    rows: dict[str, Any] = {}
    vectors = {}
    for way, freeze in (("frozen lower layers", True), ("naive", False)):
        if not freeze and args.no_naive:
            continue
        started, cpu = time.perf_counter(), time.process_time()
        run = run_pave(texts, model, schema, budget, noise_seed=1, freeze_lower=freeze)
        total, cpu = time.perf_counter() - started, time.process_time() - cpu
        vectors[way] = run.raw_vector
        norms = np.percentile(run.per_sample_grad_norms, [10, 50, 90]).tolist()
        rows[way] = {"total_s": total, "cpu_s": cpu, "grad_norm_p10_50_90": norms}
        rows[way].update({f"{k}_s": v for k, v in run.seconds.items()})
        print(
            f"{way:>19}: {total:6.1f} s (lower layers {run.seconds['lower']:5.1f} s, "
            f"DP-SGD steps {run.seconds['steps']:5.1f} s; {cpu:6.1f} CPU-s) for {args.n} "
            f"texts, load {os.getloadavg()[0]:.1f}; per-sample gradient norms p10/50/90 "
            f"{norms[0]:.3g}/{norms[1]:.3g}/{norms[2]:.3g} (clip {schema.clip_norm})",
            flush=True,
        )
    if len(vectors) == 2:
        a, b = vectors.values()
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        rows["cosine_frozen_vs_naive"] = cosine
        speedup = rows["naive"]["total_s"] / rows["frozen lower layers"]["total_s"]
        print(f"cosine(frozen, naive) = {cosine:.6f}; speed-up {speedup:.1f}x", flush=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg(),
        "args": vars(args),
        "pave_schema": schema.params(),
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
