"""The web page's catalogue at M = 10,000 USABLE learnwares: time per page, walked through
every page with the Market's page tokens (target: p99 < 200 ms).

A real market (``build_server`` with ``web_address``: TLS, SQLite, the page served by uvicorn
on the server's loop) over a store seeded as ``bench_server.seed_learnwares`` does; one
client with a kept-alive HTTPS connection asks for each page in turn, following the "next
page" link, then does the same with a domain filter. The time is the client's, on loopback:
an upper bound of the server's time for each page (50 learnwares, each manifest parsed and
its contributor looked up).

    .venv/bin/python benchmarks/bench_web.py [--learnwares 10000] [--max-pages 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import seed_learnwares  # noqa: E402

from server.app import build_server  # noqa: E402
from server.pki import init_server_dir  # noqa: E402
from server.settings import ServerSettings  # noqa: E402
from shared.home import Home  # noqa: E402

NEXT_PAGE = re.compile(r'id="next-page" href="([^"]+)"')


def walk(client: httpx.Client, first: str, max_pages: int) -> list[float]:
    """Seconds per page, from ``first`` along the next-page links (all when max_pages is 0)."""
    seconds: list[float] = []
    url: str | None = first
    while url is not None and (max_pages == 0 or len(seconds) < max_pages):
        started = time.perf_counter()
        reply = client.get(url)
        seconds.append(time.perf_counter() - started)
        reply.raise_for_status()
        found = NEXT_PAGE.search(reply.text)
        url = found.group(1).replace("&amp;", "&") if found else None
    return seconds


def summary(name: str, seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    row = {
        "pages": len(seconds),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }
    print(
        f"{name}: {row['pages']} pages, p50 {row['p50_ms']:.1f} ms, "
        f"p99 {row['p99_ms']:.1f} ms, max {row['max_ms']:.1f} ms",
        flush=True,
    )
    return row


def run(args: argparse.Namespace, home: Home, tmp: Path) -> dict:  # type: ignore[type-arg]
    db = f"sqlite:///{tmp / 'web.db'}"
    started = time.perf_counter()
    seed_learnwares(db, home, tmp / "seed", args.learnwares)
    print(f"inserted {args.learnwares} learnwares in {time.perf_counter() - started:.0f} s")
    layout = init_server_dir(tmp / "server")
    settings = ServerSettings(
        address="127.0.0.1:0",
        db_url=db,
        blobs_dir=tmp / "blobs",
        home_dir=home.root,
        tls_dir=layout.dir,
        run_smoke=False,
        admin_pub=layout.admin_pub,
        grace_s=0,
        web_address="127.0.0.1:0",
    )
    running = build_server(settings)
    try:
        assert running.web is not None
        base = running.web.url.replace("127.0.0.1", "localhost")  # the certificate's name
        with httpx.Client(base_url=base, verify=str(layout.ca_cert), timeout=60) as client:
            client.get("/").raise_for_status()  # connect once: TLS handshake, first imports
            rows = {
                "all": summary("catalogue", walk(client, "/", args.max_pages)),
                "domain": summary("by domain", walk(client, "/?domain=demo", args.max_pages)),
            }
    finally:
        running.stop(0)
    return {"learnwares": args.learnwares, "page_size": 50, **rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--learnwares", type=int, default=10_000)
    parser.add_argument("--max-pages", type=int, default=0, help="0: every page")
    parser.add_argument("--out", default="bench-out/web.json")
    args = parser.parse_args()
    home = Home.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "catalogue": run(args, home, Path(tmp)),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
