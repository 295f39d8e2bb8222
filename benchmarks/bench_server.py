"""Market server figures, against baselines measured in the same run:

1. upload and download of a ~50 MB adapter through Submit/Fetch (TLS, hashing, fsync,
   the one-pass tar and static checks; smoke run off) against raw gRPC streaming of the
   same bytes over the same TLS transport and chunk size (a bare byte-stream service on a
   plain gRPC server with the market's certificate), side by side, best of ``--rounds``
   (raw and market alternate, so both meet the same load). Two market figures each way:
   *wire*, the client's own messages prepared before the clock starts, as the raw bytes
   are (the ratio is what the market's own work costs), and *end to end*, what
   ``lwm submit`` / ``lwm fetch`` take (the client also packs the tar before sending, and
   writes and hashes the download);
2. Search latency p50/p95/p99 at M = 10,000 USABLE learnwares with 16 concurrent clients,
   each with its own channel, and sustained searches per second.

    .venv/bin/python benchmarks/bench_server.py [--mb 50] [--learnwares 10000]

Real packages are built with tests/builders.py (the same builders the tests use).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from builders import (  # noqa: E402
    build_learnware,
    random_rkme_spec,
    rkme_schema,
    train_lora_adapter,
    write_specs,
)
from market_fixtures import MarketUnderTest, market_server  # noqa: E402

from client.market import Connection, MarketClient, upload_requests  # noqa: E402
from server.app import limit_blas_threads  # noqa: E402
from server.pki import init_server_dir, open_server_dir  # noqa: E402
from server.records import KeyRecord, LearnwareRecord, Role, SpecRecord, Status  # noqa: E402
from server.settings import Limits  # noqa: E402
from server.store import Store  # noqa: E402
from shared import signing, transport  # noqa: E402
from shared.home import Home  # noqa: E402
from shared.learnware import pack_tar  # noqa: E402
from shared.models import model_ref  # noqa: E402
from shared.proto import market_pb2 as pb  # noqa: E402
from shared.spec.record import specs_to_bytes  # noqa: E402

RAW_SERVICE = "bench.Raw"


def raw_handlers(chunk: int) -> grpc.GenericRpcHandler:
    """A bare byte-stream service: upload hashes the bytes, download streams a buffer in
    ``chunk``-byte messages."""
    payload: dict[str, bytes] = {}

    def upload(requests, context):  # type: ignore[no-untyped-def]
        digest = hashlib.sha256()
        for piece in requests:
            digest.update(piece)
        return digest.hexdigest().encode()

    def download(request, context):  # type: ignore[no-untyped-def]
        data = payload["data"]
        for i in range(0, len(data), chunk):
            yield data[i : i + chunk]

    handler = grpc.method_handlers_generic_handler(
        RAW_SERVICE,
        {
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "Download": grpc.unary_stream_rpc_method_handler(download),
        },
    )
    handler.payload = payload  # type: ignore[attr-defined]
    return handler


def big_packages(
    home: Home, tmp: Path, mb: int, key: signing.Ed25519PrivateKey, count: int
) -> list[Path]:
    """``count`` learnwares of one ~``mb`` MB adapter, told apart by name (a market refuses
    the same bytes twice)."""
    modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # tiny: 4 layers x 7 modules; LoRA A+B of rank r holds about (in + out) * r floats each
    rank = max(8, int(mb * 1024 * 1024 / (4 * 28 * (64 + 160))))
    adapter = train_lora_adapter(home, tmp / "big-adapter", target_modules=modules, r=rank, steps=0)
    spec = write_specs(tmp / "spec.safetensors", [random_rkme_spec(rkme_schema(home), seed=1)])
    base = model_ref("tiny", home)
    return [
        build_learnware(
            tmp / f"big-{i}", adapter=adapter, spec_file=spec, base=base, private_key=key,
            name=f"big-{i}",
        )  # fmt: skip
        for i in range(count)
    ]


def transfer(args: argparse.Namespace, home: Home, tmp: Path) -> dict:  # type: ignore[type-arg]
    limits = Limits(max_chunk_bytes=args.chunk_kib * 1024) if args.chunk_kib else Limits()
    with market_server(tmp / "transfer", home, run_smoke=False, limits=limits) as market:
        return _transfer(args, home, tmp, market, limits.max_chunk_bytes)


def _transfer(  # type: ignore[type-arg]
    args: argparse.Namespace, home: Home, tmp: Path, market: MarketUnderTest, chunk: int
) -> dict:
    raw = raw_handlers(chunk)
    raw_server = grpc.server(ThreadPoolExecutor(4), options=transport.message_size_options())
    raw_server.add_generic_rpc_handlers((raw,))
    tls = transport.server_credentials(open_server_dir(market.layout.dir), False)
    raw_port = transport.add_port(raw_server, "127.0.0.1:0", tls)
    raw_server.start()
    try:
        return _measure_transfer(args, home, tmp, market, raw, raw_port, chunk)
    finally:
        raw_server.stop(0)


def _best(seconds: list[float]) -> float:
    return min(seconds)


def _timed(work: Callable[[], object], cpu: dict[str, float], name: str) -> float:
    """Wall seconds of ``work``; its CPU seconds (every thread of this process: client and
    servers alike) go to ``cpu[name]``, a figure the load of other processes barely moves."""
    started, cpu_started = time.perf_counter(), time.process_time()
    work()
    cpu[name] = time.process_time() - cpu_started
    return time.perf_counter() - started


def _measure_transfer(  # type: ignore[type-arg]
    args: argparse.Namespace,
    home: Home,
    tmp: Path,
    market: MarketUnderTest,
    raw: grpc.GenericRpcHandler,
    raw_port: int,
    chunk: int,
) -> dict:
    running, layout = market.running, market.layout
    private, public = signing.generate_keypair()
    signing.save_private_key(tmp / "c.key", private)
    running.market.register_key(signing.public_key_bytes(public), Role.CONTRIBUTOR, "c")
    packages = big_packages(home, tmp, args.mb, private, 2 * args.rounds)
    data = pack_tar(packages[0])
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    raw.payload["data"] = data  # type: ignore[attr-defined]
    client = MarketClient(Connection(market.address, key_path=tmp / "c.key", ca=layout.ca_cert))
    channel = transport.channel(f"localhost:{raw_port}", ca=layout.ca_cert)
    raw_up = channel.stream_unary(f"/{RAW_SERVICE}/Upload")
    raw_down = channel.unary_stream(f"/{RAW_SERVICE}/Download")
    times: dict[str, list[float]] = {}
    cpu: dict[str, float] = {}  # of the last round
    for i in range(args.rounds):
        wire, whole = packages[2 * i], packages[2 * i + 1]
        raw_round = {
            "raw_upload": lambda: raw_up(iter(pieces), timeout=600),
            "raw_download": lambda: sum(len(c) for c in raw_down(b"", timeout=600)),
        }
        out = tmp / f"fetched-{i}.tar"
        round_times = _market_round(client, wire, whole, chunk, out, raw_round, cpu)
        for name, seconds in round_times.items():
            times.setdefault(name, []).append(seconds)
    best = {name: _best(seconds) for name, seconds in times.items()}
    mb = len(data) / 1e6
    rows = {f"{name}_s": seconds for name, seconds in best.items()}
    rows.update(
        package_mb=mb,
        chunk_bytes=chunk,
        rounds=args.rounds,
        upload_ratio=best["raw_upload"] / best["market_upload"],
        download_ratio=best["raw_download"] / best["market_download"],
        submit_ratio=best["raw_upload"] / best["market_submit"],
        fetch_ratio=best["raw_download"] / best["market_fetch"],
        cpu_s=cpu,
    )
    rate = {name: mb / seconds for name, seconds in best.items()}
    print(
        f"{mb:.1f} MB package, {chunk // 1024} KiB chunks, best of {args.rounds}:\n"
        f"  upload   raw gRPC {rate['raw_upload']:5.0f} MB/s | market Submit "
        f"{rate['market_upload']:5.0f} MB/s  ratio {rows['upload_ratio']:.2f} | end to end "
        f"(client packs the tar) {rate['market_submit']:5.0f} MB/s  ratio "
        f"{rows['submit_ratio']:.2f}\n"
        f"  download raw gRPC {rate['raw_download']:5.0f} MB/s | market Fetch "
        f"{rate['market_download']:5.0f} MB/s  ratio {rows['download_ratio']:.2f} | end to end "
        f"(client writes and hashes) {rate['market_fetch']:5.0f} MB/s  ratio "
        f"{rows['fetch_ratio']:.2f}\n"
        f"  CPU seconds of the last round (this process: client and both servers): "
        + ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items()),
        flush=True,
    )
    return rows


def _market_round(
    client: MarketClient,
    wire: Path,
    whole: Path,
    chunk: int,
    out: Path,
    raw: dict[str, Callable[[], object]],
    cpu: dict[str, float],
) -> dict[str, float]:
    """One round, raw and market alternating: wall seconds per transfer (CPU in ``cpu``)."""
    with tempfile.TemporaryFile() as scratch:  # the client's messages, made beforehand
        messages = list(upload_requests(wire, scratch, chunk))
    replies: list[pb.SubmitResponse] = []
    work = {
        **raw,
        "market_upload": lambda: replies.append(client.stub.Submit(iter(messages), timeout=600)),
        "market_submit": lambda: replies.append(client.submit(whole)),
        "market_download": lambda: _fetch_wire(client, replies[0].id),
        "market_fetch": lambda: client.fetch(replies[1].id, out),
    }
    order = ("raw_upload", "market_upload", "market_submit")
    order += ("raw_download", "market_download", "market_fetch")
    times = {name: _timed(work[name], cpu, name) for name in order}
    assert [r.status for r in replies] == [2, 2], replies  # USABLE
    return times


def _fetch_wire(client: MarketClient, learnware_id: str) -> int:
    """A Fetch read as the raw download is read: every message taken, nothing kept."""
    stream = client.stub.Fetch(pb.FetchRequest(id=learnware_id), timeout=600)
    return sum(len(m.chunk.data) for m in stream)


def seed_learnwares(db: str, home: Home, tmp: Path, count: int) -> None:
    """``count`` USABLE learnwares with RKME specs around 50 centres, written straight into
    the store at ``db`` (one real package's manifest each; the market never opens the
    packages to search): a big market without a day of uploads."""
    tmp.mkdir(parents=True, exist_ok=True)
    private, public = signing.generate_keypair()
    package = build_learnware(
        tmp / "one",
        adapter=train_lora_adapter(home, tmp / "ad"),
        spec_file=write_specs(tmp / "s1.safetensors", [random_rkme_spec(rkme_schema(home))]),
        base=model_ref("tiny", home),
        private_key=private,
    )
    manifest = (package / "manifest.json").read_bytes()
    schema = rkme_schema(home)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, schema.input_dim))
    with Store.open(db) as store:
        now = datetime.now(UTC)
        raw_key = signing.public_key_bytes(public)  # registered: the market serves only
        store.register_key(  # learnwares whose contributor key is registered and not revoked
            KeyRecord(signing.key_id(raw_key), raw_key, Role.CONTRIBUTOR, "seed", created_at=now)
        )
        base = LearnwareRecord(
            id="",
            name="synthetic-0",
            domain="demo",
            task="text",
            description="",
            license="MIT",
            base_model_id=model_ref("tiny", home).model_id,
            base_model_sha256=model_ref("tiny", home).sha256,
            contributor_key_id=signing.key_id(public),
            contributor_name="c",
            status=Status.USABLE,
            reason="",
            package_sha256="",
            package_size=1,
            manifest_json=manifest,
            signature=b"\0" * 64,
            created_at=now,
            updated_at=now,
        )
        for i in range(count):
            x = centres[i % 50] + 0.5 * rng.normal(size=(32, schema.input_dim))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            from shared.privacy import PrivacyBudget
            from shared.spec.rkme import make_rkme_spec

            spec = make_rkme_spec(x.astype(np.float32), schema, PrivacyBudget(4.0), rng)
            store.add_learnware(
                replace(
                    base,
                    id=uuid.uuid4().hex,
                    name=f"synthetic-{i}",  # distinct learnwares, not versions of one
                    package_sha256=hashlib.sha256(str(i).encode()).hexdigest(),
                    specs=(SpecRecord("rkme", spec.schema_id, spec.dim, specs_to_bytes([spec])),),
                )
            )


def search_load(args: argparse.Namespace, home: Home, tmp: Path) -> dict:  # type: ignore[type-arg]
    layout = init_server_dir(tmp / "srv2")
    db = f"sqlite:///{tmp / 's.db'}"
    started = time.perf_counter()
    seed(db, home, tmp / "seed", args.learnwares, args.server_tree)
    print(
        f"inserted {args.learnwares} learnwares in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    port = _free_port()
    proc = start_server(layout.dir, db, port, args.server_tree)
    address = f"localhost:{port}"
    admin = MarketClient(Connection(address, key_path=layout.admin_key, ca=layout.ca_cert))
    upriv, upub = signing.generate_keypair()
    signing.save_private_key(tmp / "u.key", upriv)
    admin.register_key(signing.public_key_bytes(upub), "user", "u")
    # Clients in 4 processes x (clients/4) threads: one process's GIL would throttle them.
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    per = max(1, args.clients // 4)
    jobs = [
        (address, str(tmp / "u.key"), str(layout.ca_cert), w * per, per, args.searches)
        for w in range(4)
    ]
    with spawn.Pool(4) as pool:
        parts = pool.map(_client_process, jobs)
    wall = max(p[1] for p in parts)
    latencies = [x for p in parts for x in p[0]]
    proc.terminate()
    proc.wait(30)
    ms = np.array(latencies) * 1000
    rows = {
        "learnwares": args.learnwares,
        "clients": args.clients,
        "searches": len(latencies),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "searches_per_s": len(latencies) / wall,
        "server": "separate process (lwm server start), TLS; 4 client processes",
    }
    print(
        f"Search at M={args.learnwares}, {args.clients} clients: p50 {rows['p50_ms']:.1f} ms, "
        f"p95 {rows['p95_ms']:.1f} ms, p99 {rows['p99_ms']:.1f} ms, "
        f"{rows['searches_per_s']:.0f} searches/s sustained",
        flush=True,
    )
    return rows


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(server_dir: Path, db: str, port: int, tree: Path | None = None, extra=()):  # type: ignore[no-untyped-def]
    """``lwm server start`` in its own process (smoke run off), from ``tree`` when given
    (another checkout, e.g. the commit before a change: the same clients against both),
    with ``extra`` options."""
    import subprocess

    env = dict(os.environ)
    if tree is not None:  # that checkout's code first on the path, the same interpreter
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH")) if p)
    command = [
        sys.executable, "-m", "client.cli", "server", "start",
        "--dir", str(server_dir), "--db", db, "--address", f"127.0.0.1:{port}",
        "--no-smoke", "--log-level", "ERROR", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
    line = proc.stdout.readline() if proc.stdout else ""
    if '"ready"' not in line:
        raise RuntimeError(f"server did not start: {line}")
    return proc


def seed(db: str, home: Home, tmp: Path, count: int, tree: Path | None = None) -> None:
    """``seed_learnwares`` with the serving tree's own store code (its schema version)."""
    if tree is None:
        seed_learnwares(db, home, tmp, count)
        return
    import subprocess

    here = Path(__file__).resolve().parent
    code = (
        "import sys; from pathlib import Path; "
        f"sys.path[:0] = [{str(tree)!r}, {str(tree / 'tests')!r}, {str(here)!r}]; "
        "import builders, market_fixtures, bench_server; from shared.home import Home; "
        f"bench_server.seed_learnwares({db!r}, Home.resolve({str(home.root)!r}), "
        f"Path({str(tmp)!r}), {count})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tree)


def _client_process(job: tuple) -> tuple[list[float], float]:  # type: ignore[type-arg]
    """One client process: ``threads`` threads, each with its own channel; returns the
    latencies and the wall time of the measured part."""
    address, key, ca, first, threads, searches = job
    schema = rkme_schema(Home.resolve())
    queries = [random_rkme_spec(schema, seed=s) for s in range(16)]
    conn = Connection(address, key_path=Path(key), ca=Path(ca))
    return timed_searches([MarketClient(conn) for _ in range(threads)], queries, first, searches)


def timed_searches(
    clients: list[MarketClient], queries: list, first: int, searches: int  # type: ignore[type-arg]
) -> tuple[list[float], float]:
    """``searches`` top-10 Searches from each client, all in their own threads at once,
    after one to warm each channel: the latencies and the wall time of the measured part."""
    for c in clients:
        c.search(queries[0])  # warm the channel
    out: list[float] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        mine = []
        for j in range(searches):
            t0 = time.perf_counter()
            clients[i].search(queries[(first + i + j) % len(queries)], top_k=10)
            mine.append(time.perf_counter() - t0)
        with lock:
            out.extend(mine)

    started = time.perf_counter()
    workers = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="transfers, best of")
    parser.add_argument("--chunk-kib", type=int, default=0, help="default: the market's")
    parser.add_argument("--skip-search", action="store_true", help="only the transfers")
    parser.add_argument("--learnwares", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--searches", type=int, default=100, help="per client")
    parser.add_argument("--server-tree", type=Path, default=None, help="serve from this checkout")
    parser.add_argument("--skip-transfer", action="store_true", help="only the Search load")
    parser.add_argument("--out", default="bench-out/server.json")
    args = parser.parse_args()
    limit_blas_threads()  # as `lwm server start` does: the searches below run in parallel
    home = Home.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "transfer": None if args.skip_transfer else transfer(args, home, Path(tmp)),
            "search": None if args.skip_search else search_load(args, home, Path(tmp)),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
