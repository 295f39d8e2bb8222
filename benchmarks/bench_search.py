"""Time from `lwm search` start to ranked result for 1,000 user texts, for both spec kinds.

A real market (TLS, SQLite, smoke run off) runs in this process on loopback and holds one
learnware per demo domain, each with an RKME and a PAVE spec (epsilon 4) of
``--holder-texts`` real texts. The user's ``--texts`` held-out texts of ``--user-domain``
are then searched with the real CLI in a fresh process
(``python -m client.cli search DATA --kind K --json``), cold: the embedding cache is
emptied first, so RKME embeds every text. Reported per kind:

- ``process_s``: wall time of the whole command (interpreter, imports, everything);
- ``spec_s``: the command's local part (reading the data, loading the encoder or spec
  model, embedding / DP-SGD training, the DP release);
- ``network_s``: its market part (connect, TLS, GetSchema, Search and the market's ranking);
- whether the top-1 match is the user's own domain.

    .venv/bin/python benchmarks/bench_search.py [--texts 1000] [--threads 1]
        [--kinds rkme,pave] [--holder-texts 150] [--out bench-out/search.json]

Threads: on a shared 2-core machine torch's spinning intra-op threads were up to 100x
slower under contention, so the default is one thread (``OMP_NUM_THREADS``); say which.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from builders import build_learnware, train_lora_adapter, write_specs  # noqa: E402
from market_fixtures import market_server  # noqa: E402

from client.identification import DEMO_DOMAINS  # noqa: E402
from client.market import Connection, MarketClient  # noqa: E402
from client.specs import SpecMaker  # noqa: E402
from server.app import limit_blas_threads  # noqa: E402
from server.records import Role  # noqa: E402
from shared import signing  # noqa: E402
from shared.data import load_domain, split  # noqa: E402
from shared.home import Home  # noqa: E402
from shared.models import model_ref  # noqa: E402
from shared.privacy import PrivacyBudget  # noqa: E402
from shared.spec.record import Specification  # noqa: E402


def short_mechanism(spec: Specification) -> Specification:
    """Manifests allow 64 characters per DP mechanism name; keep the short name."""
    privacy = replace(spec.privacy, mechanism=spec.privacy.mechanism.split(" (")[0])
    return replace(spec, privacy=privacy)


def fill_market(
    args: argparse.Namespace, conn: Connection, home: Home, tmp: Path
) -> dict[str, list[str]]:
    """One learnware per domain with both specs; returns each domain's held-out texts."""
    adapter = train_lora_adapter(home, tmp / "adapter")
    key = signing.load_private_key(conn.key_path)  # type: ignore[arg-type]
    held_out: dict[str, list[str]] = {}
    with MarketClient(conn) as client:
        maker = SpecMaker(client.schema().schema, home)
        for domain in args.domains.split(","):
            user_n = args.texts if domain == args.user_domain else 0
            holder, held_out[domain] = split(load_domain(domain), args.holder_texts, user_n, 3)
            specs = [
                short_mechanism(maker.make(holder, kind, PrivacyBudget(4.0)))
                for kind in ("rkme", "pave")
            ]
            slug = domain.replace("/", "-")
            folder = tmp / slug
            folder.mkdir()
            package = build_learnware(
                folder / "lw",
                adapter=adapter,
                spec_file=write_specs(folder / "spec.safetensors", specs),
                base=model_ref("tiny", home),
                private_key=key,
                name=f"{slug}-lora",
                domain=slug,
            )
            reply = client.submit(package)
            print(f"  {domain}: learnware {reply.id} ({len(holder)} holder texts)", flush=True)
    return held_out


def timed_search(
    args: argparse.Namespace, kind: str, data: Path, address: str, key: Path, ca: Path, home: Home
) -> dict[str, Any]:
    shutil.rmtree(home.root / "cache" / "embeddings", ignore_errors=True)
    env = {**os.environ, "LWM_HOME": str(home.root), "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "client.cli", "search", str(data), "--kind", kind]
    command += ["--server", address, "--key", str(key), "--ca", str(ca), "--json"]
    command += ["--budget-epsilon", "inf"]  # public demo texts, searched again at every repeat
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    process_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"lwm search failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    top = out["results"][0]["domain"] if out["results"] else None
    return {
        "kind": kind,
        "texts": out["n_texts"],
        "epsilon": out["epsilon"],
        "process_s": process_s,
        "spec_s": out["timing"]["spec_s"],
        "network_s": out["timing"]["network_s"],
        "command_total_s": out["timing"]["total_s"],
        "top1": top,
        "top1_right": top == args.user_domain.replace("/", "-"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--kinds", default="rkme,pave")
    parser.add_argument("--domains", default=",".join(DEMO_DOMAINS))
    parser.add_argument("--user-domain", default="medicine")
    parser.add_argument("--holder-texts", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench-out/search.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lwm-bench-search-") as scratch:
        tmp = Path(scratch)
        home = Home(tmp / "home")  # fresh: nothing of the user's texts is cached
        print("starting the market and filling it …", flush=True)
        limit_blas_threads()  # as `lwm server start` does
        with market_server(tmp, home, run_smoke=False) as market:
            market.new_key("contributor", Role.CONTRIBUTOR)
            market.new_key("user", Role.USER)
            contributor = market.keys_dir / "contributor.key"
            user = market.keys_dir / "user.key"
            address, ca = market.address, market.layout.ca_cert
            held_out = fill_market(args, Connection(address, contributor, ca), home, tmp)
            data = tmp / "user.jsonl"
            texts = held_out[args.user_domain]
            data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
            rows = []
            for kind in args.kinds.split(","):
                row = timed_search(args, kind, data, address, user, ca, home)
                rows.append(row)
                print(
                    f"{kind}: {row['texts']} texts  process {row['process_s']:.1f} s  "
                    f"spec {row['spec_s']:.1f} s  network/search {row['network_s']:.3f} s  "
                    f"top-1 {row['top1']} ({'right' if row['top1_right'] else 'WRONG'})",
                    flush=True,
                )
    payload = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "threads": args.threads,
        "learnwares": len(args.domains.split(",")),
        "holder_texts": args.holder_texts,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
