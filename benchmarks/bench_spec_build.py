"""Spec build time for n = 1,000 and 10,000 real texts: embedding and spec separately.

RKME: MiniLM embedding of the texts, then the DP mean embedding (the spec itself).
PAVE: tokenising, then the DP-SGD recipe of the schema on the spec model (tiny here; SmolLM2
with --pave-model smollm2-135m). Texts are real demo snippets (all domains mixed). Also
prints the spec file sizes. Writes bench-out/spec_build.json.

    .venv/bin/python benchmarks/bench_spec_build.py [--sizes 1000,10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from client.identification import DEMO_DOMAINS
from shared.data import load_domain
from shared.home import Home
from shared.privacy import PrivacyBudget
from shared.spec.defaults import default_schema


def texts_for(n: int) -> list[str]:
    pool: list[str] = []
    for domain in DEMO_DOMAINS:
        pool.extend(load_domain(domain)[: n // len(DEMO_DOMAINS) + 1])
    rng = np.random.default_rng(0)
    return [pool[i] for i in rng.permutation(len(pool))[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--pave-model", default="tiny")
    parser.add_argument("--out", default="bench-out/spec_build.json")
    args = parser.parse_args()
    home = Home.resolve()
    schema = default_schema(home, pave_model=args.pave_model)
    from shared.models import load_causal_lm, load_encoder
    from shared.spec.pave import run_pave
    from shared.spec.rkme import make_rkme_spec

    encoder = load_encoder(home)
    model = load_causal_lm(args.pave_model, home)
    budget = PrivacyBudget(4.0)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        texts = texts_for(n)
        started = time.perf_counter()
        embeddings = encoder.encode(texts)  # not the cache: measure the real work
        embed_s = time.perf_counter() - started
        started = time.perf_counter()
        rkme = make_rkme_spec(embeddings, schema.rkme, budget)  # type: ignore[arg-type]
        rkme_s = time.perf_counter() - started
        started = time.perf_counter()
        pave = run_pave(texts, model, schema.pave, budget).spec  # type: ignore[arg-type]
        pave_s = time.perf_counter() - started
        row = {
            "n": n,
            "rkme_embed_s": embed_s,
            "rkme_spec_s": rkme_s,
            "rkme_bytes": len(rkme.to_bytes()),
            "pave_s": pave_s,
            "pave_bytes": len(pave.to_bytes()),
            "texts_per_s_embedding": n / embed_s,
        }
        rows.append(row)
        print(
            f"n={n:>6}: RKME embed {embed_s:7.1f} s ({n / embed_s:5.0f} texts/s), "
            f"spec {rkme_s * 1000:7.1f} ms, {row['rkme_bytes']} B | "
            f"PAVE ({args.pave_model}) {pave_s:6.1f} s, {row['pave_bytes']} B",
            flush=True,
        )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "pave_schema": schema.pave.params() if schema.pave else None,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
