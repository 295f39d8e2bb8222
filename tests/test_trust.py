"""The user trusts only pinned keys and bounded downloads (issue 12, items 4 and 10).

Against a real loopback market: a hospital's learnware, a look-alike of its name (a
Cyrillic 'а') and an impostor registered under the hospital's exact name with another key
(what a fake market or a proxy announces). Downloads are bounded by the announced size, and
a local folder meets the market's own package checks before anything loads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import (
    build_learnware,
    edit_adapter_config,
    edit_adapter_weights,
    random_rkme_spec,
    rebuild_learnware,
    rkme_schema,
    train_lora_adapter,
    write_specs,
)
from market_fixtures import market_server

from client.market import MarketClient
from client.run import load_learnware
from client.trust import TrustStore
from client.user import fetch_learnware
from server.records import Role
from shared import signing
from shared.errors import IntegrityError, InvalidInput, UntrustedKey
from shared.learnware.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from shared.models import model_ref
from shared.proto import market_pb2 as pb

HOSPITAL = "St. Mary Hospital"
LOOK_ALIKE = "St. M\u0430ry Hospital"  # Cyrillic 'а' (U+0430)


def _contributor(market, file: str, name: str) -> signing.Ed25519PrivateKey:
    """A contributor key saved as ``file.key`` and registered under registry ``name``."""
    private, public = signing.generate_keypair()
    signing.save_private_key(market.keys_dir / f"{file}.key", private)
    market.running.market.register_key(signing.public_key_bytes(public), Role.CONTRIBUTOR, name)
    return private


@pytest.fixture(scope="module")
def world(tmp_path_factory, lwm_home):
    tmp = tmp_path_factory.mktemp("trust")
    adapter = train_lora_adapter(lwm_home, tmp / "adapter")
    spec_file = write_specs(tmp / "spec.safetensors", [random_rkme_spec(rkme_schema(lwm_home))])
    base = model_ref("tiny", lwm_home)
    with market_server(tmp, lwm_home, run_smoke=False) as market:
        market.new_key("uma", Role.USER)
        keys = {
            "hospital": _contributor(market, "hospital", HOSPITAL),
            "lookalike": _contributor(market, "lookalike", LOOK_ALIKE),
            "impostor": _contributor(market, "impostor", HOSPITAL),
        }
        ids, folders = {}, {}
        for who, key in keys.items():
            folders[who] = build_learnware(  # every manifest claims to be the hospital
                tmp / who,
                adapter=adapter,
                spec_file=spec_file,
                base=base,
                private_key=key,
                name=f"{who}-notes",
                contributor=_claimed(key),
            )
            reply = market.client(who).submit(folders[who])
            assert reply.status == pb.LEARNWARE_STATUS_USABLE, reply.reason
            ids[who] = reply.id
        with market.client("uma") as uma:
            yield {"market": market, "keys": keys, "ids": ids, "uma": uma, "folders": folders}


def _claimed(key: signing.Ed25519PrivateKey):  # type: ignore[no-untyped-def]
    from shared.learnware import Contributor

    return Contributor(key_id=signing.key_id(key.public_key()), name=HOSPITAL)


def _public(world, who: str) -> bytes:
    return signing.public_key_bytes(world["keys"][who].public_key())


def _key_id(world, who: str) -> str:
    return signing.key_id(world["keys"][who].public_key())


def _nothing_left(out: Path) -> None:
    assert not out.exists(), f"{out} was left behind"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, leftovers


# ---------------------------------------------------------------- item 10: bounded downloads


class _Overrun:
    """The market's real stream, then ``extra`` chunks of 1 MiB past the announced end."""

    def __init__(self, stream, extra: int) -> None:  # type: ignore[no-untyped-def]
        self.stream, self.extra, self.pulled, self.cancelled = stream, extra, 0, False

    def __iter__(self):  # type: ignore[no-untyped-def]
        offset = 0
        for message in self.stream:
            if message.WhichOneof("msg") == "chunk":
                offset = message.chunk.offset + len(message.chunk.data)
            yield message
        for _ in range(self.extra):
            self.pulled += 1
            yield pb.FetchChunk(chunk=pb.Chunk(offset=offset, data=bytes(1 << 20)))
            offset += 1 << 20

    def cancel(self) -> None:
        self.cancelled = True
        self.stream.cancel()


class _OverrunStub:
    """A market stub whose Fetch answers send more bytes than their header announces."""

    def __init__(self, stub, extra: int) -> None:  # type: ignore[no-untyped-def]
        self.stub, self.extra, self.streams = stub, extra, []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.stub, name)

    def Fetch(self, request, timeout=None):  # type: ignore[no-untyped-def]
        stream = _Overrun(self.stub.Fetch(request, timeout=timeout), self.extra)
        self.streams.append(stream)
        return stream


def test_fetch_stops_at_the_announced_size(world, lwm_home, tmp_path):
    client = MarketClient(world["uma"].conn)
    stub = _OverrunStub(client.stub, extra=8)
    client.stub = stub  # type: ignore[assignment]
    out = tmp_path / "out"
    trust = TrustStore(tmp_path / "trust.json")
    with client, pytest.raises(IntegrityError, match="more than the .* bytes it announced"):
        fetch_learnware(client, world["ids"]["hospital"], out, home=lwm_home, trust=trust)
    (stream,) = stub.streams
    assert stream.pulled == 1 and stream.cancelled  # stopped at the first byte too many
    _nothing_left(out)
    assert trust.pins() == ()  # a refused download pins nothing


# ---------------------------------------------------------------- item 10: local folders


def test_a_local_folder_meets_the_markets_package_checks(world, lwm_home, tmp_path):
    trust = TrustStore(tmp_path / "trust.json")
    hospital = world["folders"]["hospital"]
    with pytest.raises(UntrustedKey, match=f"{_key_id(world, 'hospital')}, which is not in"):
        load_learnware(hospital, home=lwm_home, trust=trust)
    trust.add(_public(world, "hospital"), "hospital")
    key = world["keys"]["hospital"]
    # Signed by a trusted key, but with a per-module rank pattern the market refuses.
    config = edit_adapter_config(
        hospital / ADAPTER_CONFIG, tmp_path / "config.json", rank_pattern={"q_proj": 4}
    )
    refused = rebuild_learnware(hospital, tmp_path / "pattern", key, config=config)
    with pytest.raises(InvalidInput, match="rank_pattern"):
        load_learnware(refused, home=lwm_home, trust=trust)
    # ... or with a full weight tensor that is not LoRA (checked before peft loads it).
    import torch

    weights = edit_adapter_weights(
        hospital / ADAPTER_WEIGHTS,
        tmp_path / "weights.safetensors",
        lambda t: {**t, "base_model.model.lm_head.weight": torch.zeros(4, 4)},
    )
    foreign = rebuild_learnware(hospital, tmp_path / "foreign", key, weights=weights)
    with pytest.raises(InvalidInput, match="is not a LoRA tensor"):
        load_learnware(foreign, home=lwm_home, trust=trust)
    # ... or signed by another key than the manifest names.
    (forged := tmp_path / "forged").mkdir()
    for entry in hospital.iterdir():
        (forged / entry.name).write_bytes(entry.read_bytes())
    (forged / "signature").write_bytes((world["folders"]["impostor"] / "signature").read_bytes())
    with pytest.raises(IntegrityError, match="signature"):
        load_learnware(forged, home=lwm_home, trust=trust)
    assert load_learnware(hospital, home=lwm_home, trust=trust).manifest.name == "hospital-notes"


# ---------------------------------------------------------------- item 4: key pinning


def test_first_use_pins_the_key_under_the_registry_name(world, lwm_home, tmp_path):
    trust = TrustStore(tmp_path / "trust.json")
    learnware_id = world["ids"]["hospital"]
    first = fetch_learnware(world["uma"], learnware_id, tmp_path / "a", home=lwm_home, trust=trust)
    assert (first.signer.name, first.signer.key_id) == (HOSPITAL, _key_id(world, "hospital"))
    assert first.signer.how == "first use: pinned now"
    (pin,) = trust.pins()
    assert pin.market == world["uma"].market_id()
    assert pin.market.startswith("tls-cert-sha256:")
    assert bytes.fromhex(pin.public_key) == _public(world, "hospital")
    again = fetch_learnware(world["uma"], learnware_id, tmp_path / "b", home=lwm_home, trust=trust)
    assert again.signer.how == "pinned on first use at this market" and len(trust.pins()) == 1


def test_another_key_under_a_pinned_name_is_refused(world, lwm_home, tmp_path):
    """A market (or a proxy) announcing an impostor's key under the hospital's name."""
    trust = TrustStore(tmp_path / "trust.json")
    hospital = world["ids"]["hospital"]
    fetch_learnware(world["uma"], hospital, tmp_path / "a", home=lwm_home, trust=trust)
    out = tmp_path / "b"
    with pytest.raises(UntrustedKey, match="was pinned as St. Mary Hospital on first use"):
        fetch_learnware(world["uma"], world["ids"]["impostor"], out, home=lwm_home, trust=trust)
    _nothing_left(out)
    # The user checked the new key and pins it: now it is trusted.
    trust.add(_public(world, "impostor"), "St. Mary Hospital (new key)")
    impostor = world["ids"]["impostor"]
    fetched = fetch_learnware(world["uma"], impostor, out, home=lwm_home, trust=trust)
    assert fetched.signer.how == "pinned by you"


def test_require_pinned_refuses_an_unpinned_key_before_downloading(world, lwm_home, tmp_path):
    trust = TrustStore(tmp_path / "trust.json", require_pinned=True)
    out = tmp_path / "out"
    with pytest.raises(UntrustedKey, match="is not pinned") as refused:
        fetch_learnware(world["uma"], world["ids"]["hospital"], out, home=lwm_home, trust=trust)
    assert "nothing was downloaded" in str(refused.value)
    _nothing_left(out)
    trust.add(_public(world, "hospital"), HOSPITAL)
    hospital = world["ids"]["hospital"]
    fetched = fetch_learnware(world["uma"], hospital, out, home=lwm_home, trust=trust)
    assert fetched.signer.how == "pinned by you" and len(trust.pins()) == 1


def test_a_pinned_key_id_with_another_public_key_is_refused(world, tmp_path):
    """What a forged header would need (64-bit key ids): the pin's key wins."""
    trust = TrustStore(tmp_path / "trust.json")
    trust.add(_public(world, "hospital"), HOSPITAL)
    with pytest.raises(UntrustedKey, match="another public key"):
        trust.check("m", _key_id(world, "hospital"), HOSPITAL, _public(world, "impostor"))


# ---------------------------------------------------------------- the CLI


def lwm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LWM_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _market_args(world) -> list[str]:
    market = world["market"]
    key = str(market.keys_dir / "uma.key")
    return ["--server", market.address, "--key", key, "--ca", str(market.layout.ca_cert)]


def test_cli_shows_the_registry_name_and_refuses_untrusted_keys(world, lwm_home, tmp_path):
    trust = str(tmp_path / "trust.json")
    out = tmp_path / "lookalike"
    args = ["fetch", world["ids"]["lookalike"], "--out", str(out), "--trust", trust]
    shown = lwm(lwm_home.root, *args, *_market_args(world))
    assert shown.returncode == 0, shown.stderr
    # The registry's name, escaped, with the key id; the manifest's claim only as a claim.
    assert "St. M\\u0430ry Hospital" in shown.stdout
    assert _key_id(world, "lookalike") in shown.stdout
    assert "its manifest says St. Mary Hospital" in shown.stdout
    args = ["fetch", world["ids"]["hospital"], "--out", str(tmp_path / "h"), "--trust", trust]
    strict = lwm(lwm_home.root, *args, "--require-pinned", *_market_args(world))
    lines = strict.stderr.strip().splitlines()
    assert strict.returncode == 15 and len(lines) == 1 and "is not pinned" in lines[0], lines
    folder = str(world["folders"]["hospital"])
    local = lwm(lwm_home.root, "generate", folder, "--prompt", "x", "--trust", trust)
    assert local.returncode == 15 and "not in your trust store" in local.stderr


def test_cli_trust_add_list_remove(world, lwm_home, tmp_path):
    trust = str(tmp_path / "trust.json")
    pub = tmp_path / "hospital.pub"
    signing.save_public_key(pub, world["keys"]["hospital"].public_key())
    added = lwm(lwm_home.root, "trust", "add", str(pub), "--name", HOSPITAL, "--trust", trust)
    assert added.returncode == 0 and _key_id(world, "hospital") in added.stdout, added.stderr
    listed = json.loads(lwm(lwm_home.root, "trust", "list", "--json", "--trust", trust).stdout)
    assert [(p["key_id"], p["name"], p["market"]) for p in listed] == [
        (_key_id(world, "hospital"), HOSPITAL, None)
    ]
    removed = lwm(lwm_home.root, "trust", "remove", _key_id(world, "hospital"), "--trust", trust)
    assert removed.returncode == 0 and TrustStore(Path(trust)).pins() == ()
    again = lwm(lwm_home.root, "trust", "remove", _key_id(world, "hospital"), "--trust", trust)
    assert again.returncode == 7 and "not pinned" in again.stderr


def test_pins_written_at_once_by_several_processes_are_all_kept(tmp_path):
    """Each ``lwm`` command reads, changes and rewrites the trust file: without a lock,
    two pinning at once lose the pins the other wrote meanwhile."""
    script = (
        "import sys; from pathlib import Path; from client.trust import TrustStore; "
        "from shared import signing; store = TrustStore(Path(sys.argv[1])); "
        "pins = [store.add(signing.public_key_bytes(signing.generate_keypair()[1]), 'n') "
        "for _ in range(30)]; print(' '.join(p.key_id for p in pins))"
    )
    store = tmp_path / "trust.json"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(store)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    added = {kid for p in procs for kid in p.communicate(timeout=120)[0].split()}
    assert [p.returncode for p in procs] == [0] * len(procs) and len(added) == 6 * 30
    assert {pin.key_id for pin in TrustStore(store).pins()} == added
