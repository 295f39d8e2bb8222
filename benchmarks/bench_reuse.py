"""The local check before reuse: ``lwm reuse``'s cost with K = 3 on 100 user texts.

    .venv/bin/python benchmarks/bench_reuse.py [--model tiny|smollm2-135m] [--top-k 3]
        [--user-texts 100] [--holdout 100] [--steps 15] [--threads 2] [--merge]
        [--models-from HOME]

A real market on loopback (TLS, SQLite) holds one learnware per demo domain: a LoRA of
``--model`` (``client.finetune``'s defaults, ``--steps`` steps) on 150 holder texts and an
RKME spec (epsilon 4) of them. A user with ``--user-texts`` held-out texts of
``--user-domain`` runs ``client.reuse.reuse`` (what ``lwm reuse`` runs): the DP search, the
verified fetch of the top K, loading them with the base model once, and scoring the base
model and each match (and with ``--merge``, their merge) on ``--holdout`` of the texts.
Printed: the time of each part and the check's table; written to bench-out/reuse.json.
The aim (issue 16): at most 2 minutes on 2 cores for K = 3 on 100 texts. Building the
learnwares is set-up, timed apart. The home is fresh (no ledger, pin or embedding of the
user's texts); ``--models-from HOME`` links HOME's converted base models into it, so
SmolLM2 is not converted again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from builders import build_learnware, write_specs  # noqa: E402
from market_fixtures import market_server  # noqa: E402

from client.finetune import FinetuneConfig, finetune_lora  # noqa: E402
from client.identification import DEMO_DOMAINS  # noqa: E402
from client.market import Connection  # noqa: E402
from client.reuse import reuse  # noqa: E402
from client.specs import SpecMaker  # noqa: E402
from server.app import limit_blas_threads  # noqa: E402
from server.records import Role  # noqa: E402
from shared.data import load_domain, split  # noqa: E402
from shared.home import Home  # noqa: E402
from shared.models import load_causal_lm, model_ref  # noqa: E402
from shared.privacy import PrivacyBudget  # noqa: E402

HOLDER_TEXTS = 150


def fill(args: argparse.Namespace, market: Any, home: Home, tmp: Path) -> list[str]:
    """One learnware per domain; returns the user's held-out texts."""
    private = market.new_key("contributor", Role.CONTRIBUTOR)
    client = market.client("contributor")
    maker = SpecMaker(client.schema().schema, home)
    base = load_causal_lm(args.model, home)
    recipe = FinetuneConfig(steps=args.steps, seed=0)
    user: list[str] = []
    for domain in args.domains.split(","):
        need = args.user_texts if domain == args.user_domain else 0
        holder, held_out = split(load_domain(domain), HOLDER_TEXTS, need, seed=1)
        user = held_out if domain == args.user_domain else user
        slug = domain.replace("/", "-")
        folder = tmp / slug
        started = time.perf_counter()
        finetune_lora(holder, base, recipe, folder / "adapter")
        spec = maker.make(holder, "rkme", PrivacyBudget(4.0), noise_seed=1)
        package = build_learnware(
            folder / "lw",
            adapter=folder / "adapter",
            spec_file=write_specs(folder / "spec.safetensors", [spec]),
            base=model_ref(args.model, home),
            private_key=private,
            name=f"{slug}-lora",
            domain=slug,
        )
        client.submit(package)
        print(f"  {slug}: built in {time.perf_counter() - started:.1f} s", flush=True)
    return user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--domains", default=",".join(DEMO_DOMAINS))
    parser.add_argument("--user-domain", default="finance")
    parser.add_argument("--user-texts", type=int, default=100)
    parser.add_argument("--holdout", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--merge", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models-from", default=None)
    parser.add_argument("--out", default="bench-out/reuse.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lwm-bench-reuse-") as scratch:
        tmp = Path(scratch)
        home = Home(tmp / "home")
        if args.models_from:
            home.root.mkdir(parents=True, exist_ok=True)
            (home.root / "models").symlink_to(Home.resolve(args.models_from).models.absolute())
        limit_blas_threads()
        with market_server(tmp, home, run_smoke=False, base_models=(args.model,)) as market:
            print(f"filling the market ({args.model}, {args.steps} steps each) …", flush=True)
            started = time.perf_counter()
            texts = fill(args, market, home, tmp)
            setup = time.perf_counter() - started
            market.new_key("user", Role.USER)
            data = tmp / "user.jsonl"
            data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
            conn = Connection(market.address, market.keys_dir / "user.key", market.layout.ca_cert)
            print(f"reuse: K={args.top_k} on {len(texts)} texts …", flush=True)
            started = time.perf_counter()
            done = reuse(
                data, conn, top_k=args.top_k, holdout=args.holdout, merge=args.merge, home=home
            )
            total = time.perf_counter() - started
    rows = [
        {"candidate": c.shown, "perplexity": c.evaluation.perplexity, "chosen": c is done.chosen}
        for c in done.candidates
    ]
    for row in rows:
        mark = "→" if row["chosen"] else " "
        print(f"  {mark} {row['candidate']:<48} perplexity {row['perplexity']:.2f}")
    timing = {
        "total_s": total,
        "search_s": done.search.total_seconds,
        "fetch_s": done.fetch_seconds,
        "check_s": done.check_seconds,
    }
    print(
        f"total {total:.1f} s: search {timing['search_s']:.1f} s (spec "
        f"{done.search.spec_seconds:.1f} s), fetch {timing['fetch_s']:.1f} s, load + check "
        f"{timing['check_s']:.1f} s; set-up (learnwares) {setup:.0f} s",
        flush=True,
    )
    payload = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "threads": args.threads,
        "model": args.model,
        "top_k": args.top_k,
        "user_texts": len(texts),
        "holdout": done.n_checked,
        "merge": args.merge,
        "timing": timing,
        "candidates": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
