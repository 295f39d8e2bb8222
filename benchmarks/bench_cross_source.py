"""Cross-source identification: holders' texts from one source, users' from another.

For every domain of ``shared.data.cross``: a holder spec of ``--holder-texts`` texts of the
holder source and ``--users`` user specs of texts drawn from the user source; top-1/top-3
count a user right when its own domain's holder ranks first/in the first three. Both sides
use the same epsilon. PAVE trains a LoRA per spec (tens of seconds on 2 cores), so it runs
on its own smaller grid (``--pave-*``); rank fusion is measured on the users both kinds
share (same texts, same noise seeds). Distances are saved (bench-out/cross_source.npz), so
``--analyse`` redoes the tables, fusion and confidence calibration without any model.

    .venv/bin/python benchmarks/bench_cross_source.py [--users 20] [--pave-model tiny]
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

from client.cross_source import Cell, CrossRunner, cross_splits, top_k_accuracy
from shared.data.cross import CROSS_DOMAINS
from shared.spec.confidence import CALIBRATION, fit_calibration, margins, reliability
from shared.spec.fusion import FUSIONS, fuse


def parse_list(text: str, cast: type = float) -> list:  # type: ignore[type-arg]
    return [None if e.strip() in ("none", "inf") else cast(e) for e in text.split(",")]


def key(kind: str, epsilon: float | None, n: int) -> str:
    return f"{kind}|{epsilon}|{n}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epsilons", default="none,8,4,1")
    parser.add_argument("--sizes", default="30,100,1000")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--pave-epsilons", default="4")
    parser.add_argument("--pave-sizes", default="30,100")
    parser.add_argument("--pave-users", type=int, default=2)
    parser.add_argument("--pave-model", default="tiny", help="tiny or smollm2-135m")
    parser.add_argument("--holder-texts", type=int, default=500)
    parser.add_argument("--pool", type=int, default=1000, help="user texts drawn per domain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out/cross_source.json")
    parser.add_argument("--analyse", action="store_true", help="only redo the analysis")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.analyse:
        measure(args, out)
    analyse(out)


def measure(args: argparse.Namespace, out: Path) -> None:
    from tqdm.auto import tqdm

    from client.specs import SpecMaker
    from shared.home import Home
    from shared.spec.defaults import default_schema

    home = Home.resolve()
    schema = default_schema(home, pave_model=args.pave_model)
    domains = [d.name for d in CROSS_DOMAINS]
    splits = cross_splits(domains, args.holder_texts, args.pool, args.seed)
    grids = [
        ("rkme", parse_list(args.epsilons), parse_list(args.sizes, int), args.users),
        ("pave", parse_list(args.pave_epsilons), parse_list(args.pave_sizes, int), args.pave_users),
    ]
    cells: dict[str, np.ndarray] = {}
    meta: dict[str, float] = {}
    for kind, epsilons, sizes, users in grids:
        if users < 1 or not sizes:
            continue
        total = len(epsilons) * len(sizes) * len(domains) * (1 + users)
        with tqdm(total=total, desc=kind, unit="spec") as bar:
            runner = CrossRunner(SpecMaker(schema, home), splits, users, args.seed, bar)
            for epsilon in epsilons:
                for n in sizes:
                    started = time.perf_counter()
                    cell = runner.cell(kind, epsilon, n)
                    cells[key(kind, epsilon, n)] = cell.distances
                    meta[key(kind, epsilon, n)] = time.perf_counter() - started
                    bar.write(f"{kind} eps={epsilon} n={n}: top-1 {cell.top_k(1):.0%}")
                    np.savez(out.with_suffix(".npz"), **cells)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other work",
        "args": vars(args),
        "pools": {s.domain: {"holder": len(s.holder), "users": len(s.pool)} for s in splits},
        "seconds_per_cell": meta,
        "domains": domains,
    }
    out.with_suffix(".meta.json").write_text(json.dumps(report, indent=2))


def load_cells(out: Path) -> list[Cell]:
    with np.load(out.with_suffix(".npz")) as data:
        cells = []
        for name in data.files:
            kind, epsilon, n = name.split("|")
            eps = None if epsilon == "None" else float(epsilon)
            cells.append(Cell(kind, eps, int(n), data[name]))
    return cells


def analyse(out: Path) -> None:
    cells = load_cells(out)
    runs = [(c.kind, c.epsilon, c.n_texts, c.distances) for c in cells]
    rows = [row(*run) for run in runs]
    by_key = {(c.kind, c.epsilon, c.n_texts): c for c in cells}
    for c in cells:
        if c.kind != "pave" or ("rkme", c.epsilon, c.n_texts) not in by_key:
            continue
        users = c.distances.shape[0]
        pair = (by_key[("rkme", c.epsilon, c.n_texts)].distances[:users], c.distances)
        rows.append(row("rkme", c.epsilon, c.n_texts, pair[0], note="shared users"))
        for method in FUSIONS:
            runs.append((method, c.epsilon, c.n_texts, fuse(pair, method)))
            rows.append(row(*runs[-1]))
    calibration = calibrate(runs)
    report = {"results": rows, "calibration": calibration}
    out.write_text(json.dumps(report, indent=2))
    for r in rows:
        eps = "none" if r["epsilon"] is None else f"{r['epsilon']:g}"
        print(
            f"{r['method']:8} eps={eps:4} n={r['n_texts']:4} users={r['users']:2} "
            f"top-1 {r['top1']:.0%} top-3 {r['top3']:.0%} {r.get('note', '')}"
        )
    print(json.dumps(calibration, indent=2))
    plot(rows, out.with_suffix(".png"))


def row(method: str, epsilon: float | None, n: int, dist: np.ndarray, note: str = "") -> dict:  # type: ignore[type-arg]
    result = {
        "method": method,
        "epsilon": epsilon,
        "n_texts": n,
        "users": int(dist.shape[0]),
        "top1": top_k_accuracy(dist, 1),
        "top3": top_k_accuracy(dist, 3),
    }
    return {**result, "note": note} if note else result


def calibrate(runs: list[tuple[str, float | None, int, np.ndarray]]) -> dict:  # type: ignore[type-arg]
    """Fit the confidence map per method on even users; its reliability on odd users, and
    that of the map in use (``CALIBRATION``) on all users."""
    out: dict[str, object] = {}
    for method in sorted({run[0] for run in runs}):
        mine = [run[3] for run in runs if run[0] == method]
        fit_m, fit_ok = margins_of([d[0::2] for d in mine])
        test_m, test_ok = margins_of([d[1::2] for d in mine])
        all_m, all_ok = margins_of(mine)
        params = fit_calibration(fit_m, fit_ok)
        out[method] = {
            "fitted_on_even_users": params,
            "held_out_odd_users": reliability(test_m, test_ok, params),
            "in_use": CALIBRATION.get(method),
            "in_use_all_users": reliability(all_m, all_ok, CALIBRATION[method]),
        }
    return out


def margins_of(dists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Standardised first-second margins and whether the first was right, all rows."""
    flat = np.concatenate([d.reshape(-1, d.shape[-1]) for d in dists if d.size])
    own = np.concatenate([np.tile(np.arange(d.shape[1]), d.shape[0]) for d in dists if d.size])
    return margins(flat), flat.argmin(axis=1) == own


def plot(rows: list[dict], path: Path) -> None:  # type: ignore[type-arg]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n_texts"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 3.6), sharey=True)
    for ax, n in zip(np.atleast_1d(axes), sizes, strict=True):
        for method in sorted({r["method"] for r in rows}):
            mine = [r for r in rows if r["method"] == method and r["n_texts"] == n]
            mine = [r for r in mine if not r.get("note")]
            mine.sort(key=lambda r: -(r["epsilon"] or 1e9))
            labels = ["no DP" if r["epsilon"] is None else f"{r['epsilon']:g}" for r in mine]
            ax.plot(labels, [r["top1"] for r in mine], marker="o", label=method)
        ax.set_title(f"{n} user texts")
        ax.set_xlabel("epsilon (holder and user)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("top-1, users from another source")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
