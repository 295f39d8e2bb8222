"""A million learnwares through the service (issue 17, item 3): Search from 32 clients on 1
and then 2 replicas on one PostgreSQL, replica start-up and memory.

1. Loads ``--learnwares`` USABLE learnwares into a database of their own on the PostgreSQL
   at ``--pg`` (created here, dropped at the end), through the project's schema (``Store``
   migrates it) and PostgreSQL ``COPY``: each has an RKME and a PAVE spec of the market's
   real schemas (around one of ``--domains`` centres, so domains differ), a real signed
   package's manifest and signature, one of 100 registered contributor keys, and its
   ACCEPTED row in the change feed, as an accepted upload leaves them. One difference: a
   spec row holds the spec file of its own kind only (an upload's holds both kinds), which
   halves the database and changes nothing the market reads.
2. Starts ``lwm server start`` (no smoke run, TLS) on it with a shared blob folder: first
   cold, with no index snapshot (it builds the indexes and writes one), then again (it
   loads the snapshot): start-up is process start to the ready line, which comes after
   health says SERVING with the whole index in memory.
3. Drives Search (top 10, both kinds in turn, no filter) from ``--clients`` clients, each a
   thread with its own TLS channel and signing key use, in ``--procs`` client processes,
   against 1 replica and then 2 (client i talks to replica i mod 2, as a round-robin load
   balancer would): p50/p99, searches per second, and each replica's RSS.

    .venv/bin/python benchmarks/bench_million.py [--learnwares 1000000] [--clients 32]
        [--searches 100] [--pg URL] [--pg-admin URL] [--keep-db]

Writes bench-out/million.json. Run ``.ci/postgres.sh`` first; the database at 1M takes
about 6 GB while it exists.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import _free_port, start_server, timed_searches  # noqa: E402
from builders import build_learnware, random_rkme_spec, train_lora_adapter, write_specs  # noqa: E402

from client.market import Connection, MarketClient  # noqa: E402
from server.pki import init_server_dir  # noqa: E402
from server.records import KeyRecord, Role  # noqa: E402
from server.store import Store  # noqa: E402
from shared import signing  # noqa: E402
from shared.home import Home  # noqa: E402
from shared.models import model_ref  # noqa: E402
from shared.privacy import DPReport  # noqa: E402
from shared.spec.defaults import default_schema  # noqa: E402
from shared.spec.record import Specification, specs_to_bytes  # noqa: E402

DB_NAME = "lwm_million"
KEYS = 100
_COLUMNS = (
    "id, name, domain, task, description, license, base_model_id, base_model_sha256, "
    "contributor_key_id, contributor_name, status, reason, package_sha256, package_size, "
    "manifest_json, signature, created_at, updated_at, version, downloads"
)


def pave_report() -> DPReport:
    return DPReport("DP-SGD", 4.0, 1e-5, 1.1, sample_rate=0.05, steps=5)


def centres(dim: int, domains: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(domains, dim)).astype(np.float32)


class SpecTemplate:
    """The spec file of one kind with another vector: the bytes before the vector are the
    same for every learnware of the kind (safetensors: header, then the tensor data)."""

    def __init__(self, spec: Specification) -> None:
        data = specs_to_bytes([spec])
        self.prefix = data[: len(data) - spec.dim * 4]
        self.kind, self.schema_id, self.dim = spec.kind, spec.schema_id, spec.dim

    def file(self, vector: np.ndarray) -> bytes:
        return self.prefix + vector.astype("<f4").tobytes()


def make_templates(home: Home) -> tuple[SpecTemplate, SpecTemplate, list[Specification]]:
    schema = default_schema(home, pave_model="tiny", kinds=("rkme", "pave"), default_kind="rkme")
    rkme = random_rkme_spec(schema.for_kind("rkme"), seed=1)  # type: ignore[arg-type]
    pave = Specification(
        "pave", schema.for_kind("pave").schema_id, np.ones(512), 200, pave_report()
    )
    return SpecTemplate(rkme), SpecTemplate(pave), [rkme, pave]


def load_database(args: argparse.Namespace, url: str, home: Home, tmp: Path) -> dict[str, Any]:
    """The learnwares, keys and feed of step 1; returns the time it took and sizes."""
    import psycopg

    started = time.perf_counter()
    rkme, pave, specs = make_templates(home)
    private, _ = signing.generate_keypair()
    package = build_learnware(
        tmp / "one",
        adapter=train_lora_adapter(home, tmp / "adapter"),
        spec_file=write_specs(tmp / "spec.safetensors", specs),
        base=model_ref("tiny", home),
        private_key=private,
    )
    manifest, signature = (
        (package / "manifest.json").read_bytes(),
        (package / "signature").read_bytes(),
    )
    base = model_ref("tiny", home)
    keys = [signing.generate_keypair()[1] for _ in range(KEYS)]
    now = datetime.now(UTC)
    with Store.open(url) as store:  # the project's schema, migrated as a server would
        for i, public in enumerate(keys):
            raw = signing.public_key_bytes(public)
            store.register_key(
                KeyRecord(signing.key_id(raw), raw, Role.CONTRIBUTOR, f"c{i}", created_at=now)
            )
    key_ids = [signing.key_id(signing.public_key_bytes(k)) for k in keys]
    domains = [f"domain-{d:02d}" for d in range(args.domains)]
    rc, pc = centres(rkme.dim, args.domains, 1), centres(pave.dim, args.domains, 2)
    rng = np.random.default_rng(0)
    libpq = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq) as conn, conn.cursor() as cur:
        for first in range(0, args.learnwares, 100_000):
            n = min(100_000, args.learnwares - first)
            d = rng.integers(0, args.domains, size=n)
            rv = rc[d] * 0.05 + rng.normal(scale=0.02, size=(n, rkme.dim)).astype(np.float32)
            pv = pc[d] + rng.normal(scale=1.0, size=(n, pave.dim)).astype(np.float32)
            ids = [f"{first + i:032x}" for i in range(n)]
            with cur.copy(f"COPY learnwares ({_COLUMNS}) FROM STDIN") as copy:
                for i, lid in enumerate(ids):
                    at = now - timedelta(seconds=args.learnwares - first - i)
                    k = (first + i) % KEYS
                    copy.write_row((
                        lid, f"adapter-{first + i}", domains[d[i]], "text", "synthetic", "MIT",
                        base.model_id, base.sha256, key_ids[k], f"c{k}", "USABLE", "",
                        f"{first + i:064x}", 1_000_000, manifest, signature, at, at, 1, 0,
                    ))  # fmt: skip
            with cur.copy(
                "COPY specs (learnware_id, kind, schema_id, dim, spec_bytes) FROM STDIN"
            ) as copy:
                for i, lid in enumerate(ids):
                    copy.write_row((lid, "pave", pave.schema_id, pave.dim, pave.file(pv[i])))
                    copy.write_row((lid, "rkme", rkme.schema_id, rkme.dim, rkme.file(rv[i])))
            with cur.copy("COPY changes (at, learnware_id, kind) FROM STDIN") as copy:
                for lid in ids:
                    copy.write_row((now, lid, "ACCEPTED"))
            conn.commit()
            print(
                f"  loaded {first + n} learnwares ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        cur.execute("ANALYZE")
        cur.execute("SELECT pg_database_size(current_database())")
        size = cur.fetchone()[0]  # type: ignore[index]
    seconds = time.perf_counter() - started
    print(
        f"loaded {args.learnwares} learnwares in {seconds:.0f} s ({size / 1e9:.1f} GB)", flush=True
    )
    return {"load_s": seconds, "db_bytes": size}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def start_replica(
    layout_dir: Path, url: str, blobs: Path
) -> tuple[subprocess.Popen[str], int, float]:
    port = _free_port()
    started = time.perf_counter()
    proc = start_server(layout_dir, url, port, extra=("--blobs", str(blobs)))
    return proc, port, time.perf_counter() - started


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(60)


def _client_process(job: tuple[Any, ...]) -> tuple[list[float], float]:
    """One client process: ``threads`` clients, each its own channel to its replica."""
    addresses, key, ca, first, threads, searches, domains = job
    conn = [Connection(a, key_path=Path(key), ca=Path(ca)) for a in addresses]
    clients = [MarketClient(conn[(first + i) % len(conn)]) for i in range(threads)]
    schema = clients[0].schema()
    rng = np.random.default_rng(first)
    rc, pc = centres(512, domains, 1), centres(512, domains, 2)
    rkme_ref = schema.schema.for_kind("rkme").schema_id
    pave_ref = schema.schema.for_kind("pave").schema_id
    report = DPReport("gaussian", 4.0, 1e-5, 1.0, noise_std=0.001)
    queries = []
    for _ in range(16):
        d = int(rng.integers(domains))
        vec = rc[d] * 0.05 + rng.normal(scale=0.02, size=512)
        queries.append(Specification("rkme", rkme_ref, vec, 200, report))
        queries.append(
            Specification("pave", pave_ref, pc[d] + rng.normal(size=512), 200, pave_report())
        )
    return timed_searches(clients, queries, first, searches)


def drive(args: argparse.Namespace, addresses: list[str], key: Path, ca: Path) -> dict[str, Any]:
    per = max(1, args.clients // args.procs)
    jobs = [
        (addresses, str(key), str(ca), w * per, per, args.searches, args.domains)
        for w in range(args.procs)
    ]
    with multiprocessing.get_context("spawn").Pool(args.procs) as pool:
        parts = pool.map(_client_process, jobs)
    ms = np.array([x for p in parts for x in p[0]]) * 1000
    wall = max(p[1] for p in parts)
    return {
        "replicas": len(addresses),
        "clients": per * args.procs,
        "searches": int(ms.size),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "searches_per_s": ms.size / wall,
    }


def run_replicas(args: argparse.Namespace, url: str, tmp: Path) -> dict[str, Any]:
    layout = init_server_dir(tmp / "srv")
    blobs = tmp / "blobs"
    out: dict[str, Any] = {}
    cold, _, out["cold_start_s"] = start_replica(layout.dir, url, blobs)
    print(
        f"cold start (no snapshot: builds the index, writes one): {out['cold_start_s']:.1f} s",
        flush=True,
    )
    stop(cold)
    a, port_a, out["start_s"] = start_replica(layout.dir, url, blobs)
    out["rss_bytes"] = [rss_bytes(a.pid)]
    print(
        f"start from the snapshot: {out['start_s']:.1f} s, "
        f"RSS {out['rss_bytes'][0] / 2**30:.1f} GiB",
        flush=True,
    )
    address_a = f"localhost:{port_a}"
    admin = MarketClient(Connection(address_a, key_path=layout.admin_key, ca=layout.ca_cert))
    private, public = signing.generate_keypair()
    signing.save_private_key(tmp / "u.key", private)
    admin.register_key(signing.public_key_bytes(public), "user", "u")
    rows = [drive(args, [address_a], tmp / "u.key", layout.ca_cert)]
    report_row(rows[-1])
    b, port_b, out["second_start_s"] = start_replica(layout.dir, url, blobs)
    try:
        rows.append(drive(args, [address_a, f"localhost:{port_b}"], tmp / "u.key", layout.ca_cert))
        report_row(rows[-1])
        out["rss_bytes"] = [rss_bytes(a.pid), rss_bytes(b.pid)]
    finally:
        stop(b)
        stop(a)
    out["search"] = rows
    snapshot = sorted((blobs / "index").glob("*.npz"))
    out["snapshot_bytes"] = snapshot[-1].stat().st_size if snapshot else 0
    return out


def report_row(row: dict[str, Any]) -> None:
    print(
        f"{row['replicas']} replica(s), {row['clients']} clients: p50 {row['p50_ms']:.1f} ms, "
        f"p99 {row['p99_ms']:.1f} ms, {row['searches_per_s']:.0f} searches/s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--learnwares", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--procs", type=int, default=8, help="client processes")
    parser.add_argument("--searches", type=int, default=100, help="per client")
    parser.add_argument("--domains", type=int, default=20)
    parser.add_argument(
        "--pg", default="postgresql://lwm_test@127.0.0.1:54329/lwm_test", help="its user is used"
    )
    parser.add_argument(
        "--pg-admin",
        default="postgresql://postgres@127.0.0.1:54329/postgres",
        help="a role that may create databases (.ci/postgres.sh trusts postgres on loopback)",
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    parser.add_argument("--out", default="bench-out/million.json")
    args = parser.parse_args()
    import psycopg

    home = Home.resolve()
    url = (
        args.pg.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + DB_NAME
    )
    owner = psycopg.conninfo.conninfo_to_dict(args.pg)["user"]
    with psycopg.connect(args.pg_admin, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB_NAME} OWNER {owner}")
    try:
        with tempfile.TemporaryDirectory(prefix="lwm-million-") as scratch:
            report = {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "learnwares": args.learnwares,
                "database": load_database(args, url, home, Path(scratch)),
                **run_replicas(args, url, Path(scratch)),
            }
    finally:
        if not args.keep_db:
            with psycopg.connect(args.pg_admin, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
