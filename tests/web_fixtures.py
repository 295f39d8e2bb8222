"""A market with real learnwares under a composed DP ledger, for the web page's tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builders import build_learnware, random_rkme_spec, rkme_schema, write_specs
from market_fixtures import MarketUnderTest

from server.records import Role
from shared import signing
from shared.home import Home
from shared.learnware import DpLedger, Manifest
from shared.market_identity import server_market_id
from shared.models import model_ref
from shared.privacy import DPReport
from shared.web_token import WebToken, mint_web_token

#: What the adapter's (pretend) DP-SGD training cost: composed with the spec's release.
ADAPTER_DP = DPReport(
    mechanism="dp-sgd (tests/web_fixtures.py)",
    epsilon=3.0,
    delta=1e-5,
    noise_multiplier=1.1,
    sample_rate=0.05,
    steps=60,
)
#: Learnwares the catalogue shows: (name, domain, task, licence).
CATALOGUE = (
    ("cardiology-notes", "medicine", "text-generation", "Apache-2.0"),
    ("loan-memos", "finance", "summarization", "MIT"),
    ("contract-clauses", "law", "text-generation", "CC-BY-4.0"),
)


@dataclass(frozen=True)
class Published:
    learnware_id: str
    manifest: Manifest


def publish_catalogue(
    market: MarketUnderTest, home: Home, tmp: Path, adapter: Path
) -> dict[str, Published]:
    """Submit ``CATALOGUE`` through the market's gRPC API as contributor ``st-marys``, each
    with an RKME spec and a ledger composing it with ``ADAPTER_DP``; by name."""
    private = market.new_key("st-marys", None)
    market.running.market.register_key(
        signing.public_key_bytes(private.public_key()), Role.CONTRIBUTOR, "St Mary's Hospital"
    )
    published = {}
    for seed, (name, domain, task, licence) in enumerate(CATALOGUE):
        spec = random_rkme_spec(rkme_schema(home), seed=seed)
        ledger = DpLedger.compose([("spec:rkme", spec.privacy), ("adapter", ADAPTER_DP)], 1e-5)
        package = build_learnware(
            tmp / name,
            adapter=adapter,
            spec_file=write_specs(tmp / f"{name}.safetensors", [spec]),
            base=model_ref("tiny", home),
            private_key=private,
            name=name,
            domain=domain,
            task=task,
            license=licence,
            dp=ledger,
        )
        with market.client("st-marys") as client:
            reply = client.submit(package)
        manifest = Manifest.from_json((package / "manifest.json").read_bytes())
        published[name] = Published(reply.id, manifest)
    return published


def admin_token(market: MarketUnderTest, now: float, ttl_s: int = 600) -> WebToken:
    """A login token of the market's admin key, for this market."""
    admin = signing.load_private_key(market.layout.admin_key)
    return mint_web_token(admin, server_market_id(market.layout), ttl_s, now)

