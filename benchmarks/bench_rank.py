"""Ranking latency: exact and approximate index at M = 1k .. 1M synthetic RKME specs,
recall of approximate against exact, and a learnware-package-style brute-force baseline.

Synthetic specs look like real RKME specs: M holders spread over 2,000 "domains" (centres
in feature space), each spec its domain's mean plus holder variation plus DP noise of a
known scale (so the bias correction is exercised). Queries are fresh noisy specs of random
domains. Prints a table and writes JSON to bench-out/rank.json.

    .venv/bin/python benchmarks/bench_rank.py [--sizes 1000,10000,100000,1000000]
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

from server.index import IndexConfig, SpecIndex
from shared.spec.ranking import IndexPoint

DIM = 512
DOMAINS = 2000


def synthetic(
    rng: np.random.Generator, m: int, centres: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    picks = rng.integers(0, len(centres), m)
    noise_std = rng.uniform(0.002, 0.01, m).astype(np.float32)
    vectors = centres[picks] + 0.01 * rng.standard_normal((m, DIM), dtype=np.float32)
    vectors += noise_std[:, None] * rng.standard_normal((m, DIM), dtype=np.float32)
    return vectors.astype(np.float32), (-DIM * noise_std**2).astype(np.float32)


def timed(fn, repeats: int) -> tuple[float, list]:  # type: ignore[no-untyped-def, type-arg]
    out = []
    started = time.perf_counter()
    for i in range(repeats):
        out.append(fn(i))
    return (time.perf_counter() - started) / repeats * 1000.0, out


def learnware_style_baseline(query_z, cands_z, gamma=0.1) -> np.ndarray:  # type: ignore[no-untyped-def]
    """How the ``learnware`` package ranks RKME specs: per candidate, three Gaussian kernel
    matrices over K=100 reduced points (query-query, cand-cand, query-cand), in a loop."""

    def kernel(x, y):  # type: ignore[no-untyped-def]
        d = (x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2 * x @ y.T
        return np.exp(-gamma * np.maximum(d, 0))

    beta = np.full(query_z.shape[0], 1.0 / query_z.shape[0])
    out = np.empty(len(cands_z))
    for i, z in enumerate(cands_z):
        b = np.full(z.shape[0], 1.0 / z.shape[0])
        out[i] = (
            beta @ kernel(query_z, query_z) @ beta
            + b @ kernel(z, z) @ b
            - 2 * beta @ kernel(query_z, z) @ b
        )
    return out


def measure(m: int, rng: np.random.Generator, centres: np.ndarray, n_queries: int) -> dict:  # type: ignore[type-arg]
    """Exact latency at M = m; from 100k on also the approximate index and its recall."""
    vectors, offsets = synthetic(rng, m, centres)
    qv, qo = synthetic(rng, n_queries, centres)
    queries = [IndexPoint(qv[i], float(qo[i])) for i in range(n_queries)]
    keys = [str(i) for i in range(m)]
    exact = SpecIndex("rkme", "bench", DIM, IndexConfig(approx_min_rows=10**9))
    exact.add_points(keys, vectors, offsets)
    exact_ms, exact_hits = timed(lambda i: exact.search_point(queries[i], 10), n_queries)
    row: dict = {"M": m, "exact_ms": exact_ms}  # type: ignore[type-arg]
    if m < 100_000:
        return row
    started = time.perf_counter()
    approx = SpecIndex("rkme", "bench", DIM, IndexConfig(approx_min_rows=1, projection_dim=None))
    approx.add_points(keys, vectors, offsets)
    row["approx_build_s"] = time.perf_counter() - started
    approx_ms, approx_hits = timed(lambda i: approx.search_point(queries[i], 10), n_queries)
    pairs = list(zip(approx_hits, exact_hits, strict=True))
    row["approx_ms"] = approx_ms
    row["recall_at_1"] = float(np.mean([a[0].key == e[0].key for a, e in pairs]))
    row["recall_at_10"] = float(
        np.mean([len({h.key for h in a} & {h.key for h in e}) / 10 for a, e in pairs])
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--baseline-m", type=int, default=10000)
    parser.add_argument("--out", default="bench-out/rank.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((DOMAINS, DIM), dtype=np.float32) * 0.05
    header = ("M", "exact ms", "approx ms", "build s", "recall@1", "recall@10")
    print("".join(f"{h:>11}" for h in header))
    results = []
    for m in [int(s) for s in args.sizes.split(",")]:
        row = measure(m, rng, centres, args.queries)
        results.append(row)
        cells = [row.get(k, float("nan")) for k in ("exact_ms", "approx_ms", "approx_build_s")]
        cells += [row.get(k, float("nan")) for k in ("recall_at_1", "recall_at_10")]
        print(f"{m:>11}" + "".join(f"{c:>11.3f}" for c in cells), flush=True)
    # Baseline: learnware-package style brute force at baseline_m candidates (384-d points).
    m = args.baseline_m
    reduced = rng.standard_normal((m, 100, 384), dtype=np.float32) * 0.05
    query_z = rng.standard_normal((100, 384), dtype=np.float32) * 0.05
    started = time.perf_counter()
    learnware_style_baseline(query_z, reduced)
    baseline_ms = (time.perf_counter() - started) * 1000.0
    ours = next((r["exact_ms"] for r in results if r["M"] == m), float("nan"))
    print(
        f"baseline (learnware-style, K=100, M={m}): {baseline_ms:.0f} ms per query; "
        f"exact index {ours:.2f} ms -> speed-up x{baseline_ms / ours:.0f}"
    )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "results": results,
        "baseline": {"M": m, "ms_per_query": baseline_ms, "speedup_vs_exact": baseline_ms / ours},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
