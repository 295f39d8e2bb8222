"""Load and abuse: honest users search, a contributor submits and a prober checks health
while the attacks of issue 12 are replayed against the same market; honest latency and
errors with and without the abuse, in the same run.

Phases, each ``--seconds`` long with the same honest load:
  1. honest only;
  2. honest + ``--stalled`` calls that never send (the issue's yardstick);
  3. honest + every attack below.
The attacks start a couple of seconds before the honest load of their phase.

Honest (one process): ``--searchers`` threads, each on its own channel, sending
``--search-rate`` searches a second between them on a fixed schedule (an open load that
leaves the cores room: a closed loop would measure queueing on 2 cores, not the stalls),
each with a 5 s deadline; a contributor submitting a fresh package every 2 s; a health
check every 100 ms with a 1 s deadline.
Abuse (another process): ``--stalled`` calls without a key that open and never send their
first message (reopened as soon as the market cuts them), 4 authenticated uploads that send
their header and 1 KB and go silent, 2 downloads whose reader stops after the header, one
captured Search signature replayed in a loop and signatures made for another market.

The market runs as ``lwm server start`` in its own process (TLS, SQLite, smoke run off) over
``--learnwares`` synthetic learnwares. ``--server-tree PATH`` starts it from another checkout
(e.g. a worktree of an older commit) with the same clients: the before/after comparison.

    .venv/bin/python benchmarks/bench_abuse.py [--seconds 20] [--server-tree PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import _free_port, seed, start_server  # noqa: E402
from builders import (  # noqa: E402
    build_learnware,
    random_rkme_spec,
    rkme_schema,
    train_lora_adapter,
    write_specs,
)

from client.market import Connection, MarketClient, query_spec, upload_requests  # noqa: E402
from server.pki import init_server_dir  # noqa: E402
from shared import signing, transport  # noqa: E402
from shared.home import Home  # noqa: E402
from shared.models import model_ref  # noqa: E402
from shared.proto import market_pb2 as pb  # noqa: E402

MARKET = "/learnware.market.v1.Market/"
SEARCH_DEADLINE_S = 5.0
HEALTH_EVERY_S, HEALTH_DEADLINE_S = 0.1, 1.0
SUBMIT_EVERY_S = 2.0
PHASES = ("honest only", "honest + stalled calls", "honest + every attack")
READER_PAUSE_S = 35.0  # a slow reader reads nothing this long (the market's idle limit: 30 s)


@dataclass(frozen=True)
class Job:
    """What a worker process needs: the market, the keys and what to do for how long."""

    address: str
    ca: str
    keys: dict[str, str]  # name -> private key file
    seconds: float
    searchers: int = 8
    search_rate: float = 50.0  # honest searches a second, all searchers together
    stalled: int = 64
    packages: tuple[str, ...] = ()  # honest contributor's packages, one per submit
    silent_packages: tuple[str, ...] = ()  # the attacker's packages, one per silent upload
    big_id: str = ""  # a learnware for the slow readers
    stalls_only: bool = False  # the abuse is only the stalled calls


@dataclass
class Honest:
    search_s: list[float] = field(default_factory=list)
    search_errors: Counter[str] = field(default_factory=Counter)
    submit_s: list[float] = field(default_factory=list)
    submit_errors: Counter[str] = field(default_factory=Counter)
    health_s: list[float] = field(default_factory=list)
    health_errors: Counter[str] = field(default_factory=Counter)


def _code(err: grpc.RpcError) -> str:
    return err.code().name  # type: ignore[no-any-return]


def _timed(call: Callable[[], object], ok: list[float], errors: Counter[str]) -> None:
    started = time.perf_counter()
    try:
        call()
    except grpc.RpcError as err:
        errors[_code(err)] += 1
        return
    ok.append(time.perf_counter() - started)


def _until(seconds: float) -> Iterator[None]:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        yield


def honest(job: Job) -> dict[str, object]:
    """The honest load of one phase (runs in its own process)."""
    out = Honest()
    schema = rkme_schema(Home.resolve())
    queries = [query_spec(random_rkme_spec(schema, seed=s)) for s in range(16)]
    user = signing.load_private_key(job.keys["uma"])

    def search(i: int) -> None:
        channel = transport.channel(job.address, ca=job.ca, signing_key=user)
        stub = channel.unary_unary(
            MARKET + "Search",
            request_serializer=pb.SearchRequest.SerializeToString,
            response_deserializer=pb.SearchResponse.FromString,
        )
        period = job.searchers / job.search_rate  # each searcher's share of the rate
        next_at = time.monotonic() + period * i / job.searchers  # staggered starts
        for j, _ in enumerate(_until(job.seconds)):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            request = pb.SearchRequest(spec=queries[(i + j) % len(queries)], top_k=10)
            call = functools.partial(stub, request, timeout=SEARCH_DEADLINE_S)
            _timed(call, out.search_s, out.search_errors)

    def submit() -> None:
        carl = MarketClient(
            Connection(job.address, key_path=Path(job.keys["carl"]), ca=Path(job.ca))
        )
        packages = iter(job.packages)
        for _ in _until(job.seconds):
            started = time.monotonic()
            try:
                package = Path(next(packages))
            except StopIteration:
                return
            try:
                reply = carl.submit(package)
                out.submit_s.append(time.monotonic() - started)
                if reply.status != pb.LEARNWARE_STATUS_USABLE:
                    out.submit_errors[f"status {reply.status}"] += 1
            except Exception as err:  # an LwmError from the client: count it by name
                out.submit_errors[type(err).__name__] += 1
            time.sleep(max(0.0, SUBMIT_EVERY_S - (time.monotonic() - started)))

    def health() -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(transport.channel(job.address, ca=job.ca))
        request = health_pb2.HealthCheckRequest(service="")
        for _ in _until(job.seconds):
            _timed(
                lambda: stub.Check(request, timeout=HEALTH_DEADLINE_S),
                out.health_s,
                out.health_errors,
            )
            time.sleep(HEALTH_EVERY_S)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(job.searchers)]
    threads += [threading.Thread(target=submit), threading.Thread(target=health)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        name: dict(value) if isinstance(value, Counter) else value
        for name, value in vars(out).items()
    }


class _Phase:
    """The abuse phase's clock, and request iterators that go silent until it is over."""

    def __init__(self) -> None:
        self.over = threading.Event()
        self.ends = float("inf")

    def start(self, seconds: float) -> None:
        self.ends = time.monotonic() + seconds

    def running(self) -> bool:
        return time.monotonic() < self.ends

    def left(self) -> float:
        return max(0.0, self.ends - time.monotonic())

    def silent_after(self, first: list[object]) -> Iterator[object]:
        yield from first
        self.over.wait()


def abuse(job: Job) -> dict[str, dict[str, int]]:
    """The attacks, each repeated until ``job.seconds`` are over; how each call ended."""
    phase = _Phase()
    outcomes: dict[str, Counter[str]] = {}
    lock = threading.Lock()

    def record(attack: str, code: str) -> None:
        with lock:
            outcomes.setdefault(attack, Counter())[code] += 1

    def repeat(attack: str, once: Callable[[], str]) -> Callable[[], None]:
        def loop() -> None:
            while phase.running():
                record(attack, once())

        return loop

    stranger = transport.channel(job.address, ca=job.ca)
    mallory = signing.load_private_key(job.keys["mallory"])
    mallory_channel = transport.channel(job.address, ca=job.ca, signing_key=mallory)
    silent_first = []  # per package: its header and 1 KB (distinct packages: uploads of
    for package in job.silent_packages:  # the same bytes would queue behind each other)
        with tempfile.TemporaryFile() as tar:
            silent_first.append(list(upload_requests(Path(package), tar, 1024))[:2])

    def ended(call: grpc.Future) -> str:
        """How the market ended ``call``, or that it was still open when the phase ended."""
        try:
            error = call.exception(timeout=phase.left())
        except grpc.FutureTimeoutError:
            call.cancel()
            return "still open at the end"
        return "OK" if error is None else _code(error)  # type: ignore[union-attr]

    def stalled_call(method: str) -> Callable[[], str]:
        return lambda: ended(
            stranger.stream_unary(MARKET + method).future(phase.silent_after([]), timeout=3600)
        )

    def silent_upload(first: list[object]) -> Callable[[], str]:
        send = mallory_channel.stream_unary(MARKET + "Submit", request_serializer=_serialize)
        return lambda: ended(send.future(phase.silent_after(first), timeout=3600))  # type: ignore[arg-type]

    def slow_reader() -> str:
        reader = transport.channel(
            job.address,
            ca=job.ca,
            signing_key=signing.load_private_key(job.keys["eve"]),
            options=(("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)),
        )
        fetch = reader.unary_stream(MARKET + "Fetch", request_serializer=_serialize)
        stream = fetch(pb.FetchRequest(id=job.big_id), timeout=3600)
        try:
            next(stream)  # the header; then read nothing for a while
            if phase.over.wait(timeout=min(phase.left(), READER_PAUSE_S)) or not phase.left():
                stream.cancel()
                return "still open at the end"
            for _ in stream:  # what the market sent before it ended the call, then its status
                pass
        except grpc.RpcError as err:
            return _code(err)
        finally:
            reader.close()
        return "OK (read it all after the pause)"

    replay_request = pb.SearchRequest(
        spec=query_spec(random_rkme_spec(rkme_schema(Home.resolve()), seed=1))
    )
    search = stranger.unary_unary(MARKET + "Search", request_serializer=_serialize)
    captured = MarketClient(
        Connection(job.address, key_path=Path(job.keys["eve"]), ca=Path(job.ca))
    ).market_id()
    body = signing.request_body(replay_request)
    replayed = signing.auth_metadata(
        signing.load_private_key(job.keys["eve"]), MARKET + "Search", body, captured
    )
    search(replay_request, metadata=replayed, timeout=5)  # its one honest use

    def replay() -> str:
        try:
            search(replay_request, metadata=replayed, timeout=5)
        except grpc.RpcError as err:
            return _code(err)
        return "OK"

    def other_market() -> str:
        key = signing.load_private_key(job.keys["eve"])
        forged = signing.auth_metadata(key, MARKET + "Search", body, "sha256:" + "0" * 64)
        try:
            search(replay_request, metadata=forged, timeout=5)
        except grpc.RpcError as err:
            return _code(err)
        return "OK"

    attacks = [
        repeat("stalled call, no key", stalled_call("Search" if i % 2 else "Submit"))
        for i in range(job.stalled)
    ]
    if job.stalls_only:
        silent_first, job_slow_readers = [], 0
    else:
        job_slow_readers = 2
    attacks += [repeat("silent upload", silent_upload(first)) for first in silent_first]
    attacks += [repeat("slow reader", slow_reader) for _ in range(job_slow_readers)]
    if not job.stalls_only:
        attacks += [
            repeat("replayed signature", replay),
            repeat("signature for another market", other_market),
        ]
    threads = [threading.Thread(target=attack, daemon=True) for attack in attacks]
    phase.start(job.seconds)
    for thread in threads:
        thread.start()
    time.sleep(job.seconds)
    phase.over.set()
    for thread in threads:
        thread.join(timeout=5)
    stranger.close()
    mallory_channel.close()
    return {attack: dict(codes) for attack, codes in outcomes.items()}


def _serialize(message: object) -> bytes:
    return message.SerializeToString()  # type: ignore[attr-defined,no-any-return]


# ---------------------------------------------------------------- the run


def _packages(home: Home, tmp: Path, count: int, key: signing.Ed25519PrivateKey) -> list[Path]:
    adapter = train_lora_adapter(home, tmp / "adapter", steps=0)
    out = []
    for i in range(count):
        spec = write_specs(
            tmp / f"s{i}.safetensors", [random_rkme_spec(rkme_schema(home), seed=100 + i)]
        )
        out.append(
            build_learnware(
                tmp / f"p{i}", adapter=adapter, spec_file=spec, base=model_ref("tiny", home),
                private_key=key, name=f"honest-{i}",
            )
        )  # fmt: skip
    return out


def _big_package(home: Home, tmp: Path, key: signing.Ed25519PrivateKey) -> Path:
    adapter = train_lora_adapter(home, tmp / "big-adapter", steps=0, r=1024)  # ~26 MB
    spec = write_specs(tmp / "big.safetensors", [random_rkme_spec(rkme_schema(home), seed=7)])
    return build_learnware(
        tmp / "big", adapter=adapter, spec_file=spec, base=model_ref("tiny", home), private_key=key
    )


def _summary(rows: dict[str, object]) -> dict[str, object]:
    def pct(values: list[float], q: float) -> float | None:
        return float(np.percentile(np.array(values) * 1000, q)) if values else None

    s, h = rows["search_s"], rows["health_s"]
    return {
        "searches_ok": len(s),  # type: ignore[arg-type]
        "search_p50_ms": pct(s, 50),  # type: ignore[arg-type]
        "search_p99_ms": pct(s, 99),  # type: ignore[arg-type]
        "search_errors": rows["search_errors"],
        "submits_ok": len(rows["submit_s"]),  # type: ignore[arg-type]
        "submit_errors": rows["submit_errors"],
        "health_ok": len(h),  # type: ignore[arg-type]
        "health_max_ms": max(h) * 1000 if h else None,  # type: ignore[arg-type]
        "health_errors": rows["health_errors"],
    }


def run(args: argparse.Namespace, home: Home, tmp: Path) -> dict[str, object]:
    layout = init_server_dir(tmp / "server")
    db = f"sqlite:///{tmp / 'market.db'}"
    seed(db, home, tmp / "seed", args.learnwares, args.server_tree)
    port = _free_port()
    proc = start_server(layout.dir, db, port, args.server_tree)
    address = f"localhost:{port}"
    try:
        return _phases(args, home, tmp, layout, address)
    finally:
        proc.terminate()  # type: ignore[attr-defined]
        proc.wait(60)  # type: ignore[attr-defined]


def _phases(
    args: argparse.Namespace, home: Home, tmp: Path, layout, address: str
) -> dict[str, object]:  # type: ignore[no-untyped-def]
    admin = MarketClient(Connection(address, key_path=layout.admin_key, ca=layout.ca_cert))
    keys, private = {}, {}
    for name, role in (
        ("uma", "user"),
        ("eve", "user"),
        ("carl", "contributor"),
        ("mallory", "contributor"),
    ):
        private[name], public = signing.generate_keypair()
        keys[name] = str(tmp / f"{name}.key")
        signing.save_private_key(keys[name], private[name])
        admin.register_key(signing.public_key_bytes(public), role, name)
    per_phase = int(args.seconds / SUBMIT_EVERY_S) + 1 if args.submits else 0
    packages = _packages(home, tmp / "honest", len(PHASES) * per_phase, private["carl"])
    carl = MarketClient(Connection(address, key_path=Path(keys["carl"]), ca=layout.ca_cert))
    big_id = carl.submit(_big_package(home, tmp, private["carl"])).id
    silent = _packages(home, tmp / "mallory", 4, private["mallory"])
    base = Job(
        address,
        str(layout.ca_cert),
        keys,
        args.seconds,
        args.searchers,
        args.search_rate,
        args.stalled,
    )
    spawn = multiprocessing.get_context("spawn")
    report: dict[str, object] = {}
    honest_jobs = [
        replace_job(base, packages=tuple(map(str, packages[i * per_phase : (i + 1) * per_phase])))
        for i in range(len(PHASES))
    ]
    with spawn.Pool(2) as pool:
        report[PHASES[0]] = pool.apply(honest, (honest_jobs[0],))
        for name, stalls_only, job in (
            (PHASES[1], True, honest_jobs[1]),
            (PHASES[2], False, honest_jobs[2]),
        ):
            attack = replace_job(
                base,
                seconds=args.seconds + 4,
                silent_packages=tuple(map(str, silent)),
                big_id=big_id,
                stalls_only=stalls_only,
            )
            attacks = pool.apply_async(abuse, (attack,))
            time.sleep(2)  # the attacks are in place before the honest load starts
            report[name] = pool.apply(honest, (job,))
            report[name]["attacks"] = attacks.get(timeout=args.seconds + 120)  # type: ignore[index]
    return report


def replace_job(job: Job, **changes: object) -> Job:
    from dataclasses import replace

    return replace(job, **changes)  # type: ignore[arg-type]


def _print(report: dict[str, object], label: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"honest load with and without abuse ({label})")
    for column in (
        "phase",
        "searches",
        "p50 ms",
        "p99 ms",
        "search errors",
        "submits",
        "submit errors",
        "health max ms",
        "health errors",
    ):
        table.add_column(column)
    for phase in PHASES:
        s = report[phase]["summary"]  # type: ignore[index]
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        table.add_row(
            phase, str(s["searches_ok"]), fmt(s["search_p50_ms"]), fmt(s["search_p99_ms"]),
            _counts(s["search_errors"]), str(s["submits_ok"]), _counts(s["submit_errors"]),
            fmt(s["health_max_ms"]), _counts(s["health_errors"]),
        )  # fmt: skip
    attacks = Table(title="how the attacks ended (calls by status)")
    for column in ("phase", "attack", "ended with"):
        attacks.add_column(column)
    for phase in PHASES[1:]:
        for attack, codes in report[phase]["attacks"].items():  # type: ignore[index]
            attacks.add_row(phase, attack, _counts(codes))
    console = Console(width=150)
    console.print(table)
    console.print(attacks)


def _counts(codes: dict[str, int]) -> str:
    return ", ".join(f"{c} {n}" for c, n in sorted(codes.items())) or "0"


def _plot(report: dict[str, object], path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for phase in PHASES:
        values = np.sort(np.array(report[phase]["search_s"]) * 1000)  # type: ignore[index]
        if len(values):
            ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=phase)
    ax.set_xscale("log")
    ax.set_xlabel("honest Search latency (ms)")
    ax.set_ylabel("fraction of searches")
    ax.set_title(f"Search latency, {label}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--learnwares", type=int, default=2000)
    parser.add_argument("--searchers", type=int, default=8)
    parser.add_argument(
        "--no-submits", dest="submits", action="store_false", help="no honest uploads"
    )
    parser.add_argument("--search-rate", type=float, default=50.0, help="searches/s in all")
    parser.add_argument("--stalled", type=int, default=64)
    parser.add_argument("--server-tree", type=Path, default=None, help="serve from this checkout")
    parser.add_argument("--out", default="bench-out/abuse.json")
    args = parser.parse_args()
    label = f"server from {args.server_tree}" if args.server_tree else "this tree"
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args, Home.resolve(), Path(tmp))
    for phase in PHASES:
        report[phase]["summary"] = _summary(report[phase])  # type: ignore[index]
    _print(report, label)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report.update(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
        server=label,
        seconds_per_phase=args.seconds,
        learnwares=args.learnwares,
    )
    out.write_text(json.dumps(report, indent=1, default=list))
    _plot(report, out.with_suffix(".png"), label)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
