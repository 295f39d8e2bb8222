"""A real market server on loopback (TLS, SQLite, blob store) and its keys, for tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from client.market import Connection, MarketClient
from server.app import RunningServer, build_server
from server.pki import ServerDirLayout, init_server_dir
from server.records import Role
from server.settings import CallLimits, Limits, ServerSettings
from shared import signing
from shared.home import Home


@dataclass
class MarketUnderTest:
    running: RunningServer
    layout: ServerDirLayout
    address: str
    keys_dir: Path

    def client(self, name: str = "admin") -> MarketClient:
        key = self.layout.admin_key if name == "admin" else self.keys_dir / f"{name}.key"
        return MarketClient(Connection(self.address, key_path=key, ca=self.layout.ca_cert))

    def new_key(self, name: str, role: Role | None) -> signing.Ed25519PrivateKey:
        """Make a key pair; register it with ``role`` unless role is None."""
        private, public = signing.generate_keypair()
        signing.save_private_key(self.keys_dir / f"{name}.key", private)
        if role is not None:
            self.running.market.register_key(signing.public_key_bytes(public), role, name)
        return private

    def blob_count(self) -> int:
        return len(list(self.running.market.blobs.iter_shas()))

    def learnware_count(self) -> int:
        return self.running.market.store.stats().learnwares


@contextmanager
def market_server(
    tmp: Path,
    home: Home,
    *,
    run_smoke: bool = True,
    calls: CallLimits | None = None,
    web_address: str | None = None,
    limits: Limits | None = None,
    base_models: tuple[str, ...] = ("tiny",),
) -> Iterator[MarketUnderTest]:
    layout = init_server_dir(tmp / "server")
    settings = ServerSettings(
        address="127.0.0.1:0",
        db_url=f"sqlite:///{tmp / 'market.db'}",
        blobs_dir=tmp / "blobs",
        home_dir=home.root,
        tls_dir=layout.dir,
        run_smoke=run_smoke,
        admin_pub=layout.admin_pub,
        grace_s=0,
        calls=calls or CallLimits(),
        web_address=web_address,
        limits=limits or Limits(),
        base_models=base_models,
    )
    running = build_server(settings)
    keys = tmp / "keys"
    keys.mkdir()
    try:
        yield MarketUnderTest(running, layout, f"localhost:{running.port}", keys)
    finally:
        running.stop(0)
