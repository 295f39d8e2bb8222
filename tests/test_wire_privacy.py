"""Privacy proof (issue 5, DESIGN §2): raw text never crosses the wire.

Every byte between the clients and the market goes through a recording TCP proxy on
loopback while a contributor submits a learnware made from its raw texts (adapter trained on
them, RKME and PAVE specs of them) and a user searches with both kinds of spec of its raw
texts and fetches the top learnware. No 20-byte window of any raw text (as UTF-8) may appear
in either direction of any connection.

The market runs WITHOUT TLS here, on purpose: through TLS every recorded byte would be
ciphertext and the check would pass whatever the clients sent. Plain HTTP/2 carries gRPC
messages verbatim (no compression is configured), so a text placed in any request or
response field shows up as is: the control test at the end proves the detector sees one.
Header values may be HPACK/Huffman-coded and would escape the check, but the clients only
ever put the fixed, signed auth fields in headers.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path

import pytest
from builders import build_learnware, write_specs
from test_user import train_domain_adapter

from client.market import Connection, MarketClient
from client.specs import SpecMaker
from client.user import fetch_learnware, private_search
from server.app import build_server
from server.records import Role
from server.settings import ServerSettings
from shared import signing
from shared.data import load_domain, split
from shared.errors import LwmError
from shared.learnware import pack_tar
from shared.models import model_ref
from shared.privacy import PrivacyBudget

WINDOW = 20


class RecordingProxy:
    """Forwards 127.0.0.1 connections to ``target_port``, keeping every byte of each
    direction of each connection in its own buffer (windows never span two streams)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.streams: list[bytearray] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for src, dst in ((client, upstream), (upstream, client)):
                buffer = bytearray()
                with self._lock:
                    self.streams.append(buffer)
                threading.Thread(target=_pipe, args=(src, dst, buffer), daemon=True).start()

    def take(self) -> list[bytes]:
        """The bytes recorded so far, and start afresh."""
        with self._lock:
            taken = [bytes(s) for s in self.streams]
            for stream in self.streams:
                stream.clear()
        return taken

    def close(self) -> None:
        self._closed = True
        self._listener.close()


def _pipe(src: socket.socket, dst: socket.socket, buffer: bytearray) -> None:
    try:
        while data := src.recv(65536):
            buffer += data
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def leaked_snippets(recorded: list[bytes], texts: list[str]) -> list[str]:
    """Every ``WINDOW``-byte piece of ``texts`` (UTF-8) that appears in ``recorded``.

    The texts' windows go in a set (small); each recorded stream is slid over once.
    """
    windows: set[str] = set()
    for text in texts:
        raw = text.encode("utf-8").decode("latin-1")
        windows.update(raw[i : i + WINDOW] for i in range(len(raw) - WINDOW + 1))
    found = set()
    for stream in recorded:
        seen = stream.decode("latin-1")
        found.update(
            seen[i : i + WINDOW]
            for i in range(len(seen) - WINDOW + 1)
            if seen[i : i + WINDOW] in windows
        )
    return sorted(found)


@contextmanager
def insecure_market(tmp: Path, home) -> Iterator[tuple[object, Path]]:
    settings = ServerSettings(
        address="127.0.0.1:0",
        db_url=f"sqlite:///{tmp / 'market.db'}",
        blobs_dir=tmp / "blobs",
        home_dir=home.root,
        tls_dir=None,  # plain text on loopback: see the module docstring
        run_smoke=False,
        grace_s=0,
    )
    running = build_server(settings)
    keys = tmp / "keys"
    keys.mkdir()
    try:
        yield running, keys
    finally:
        running.stop(0)


def _key(running, keys: Path, name: str, role: Role) -> Path:
    private, public = signing.generate_keypair()
    signing.save_private_key(keys / f"{name}.key", private)
    running.market.register_key(signing.public_key_bytes(public), role, name)
    return keys / f"{name}.key"


def _short_mechanism(spec):
    """The manifest allows 64 characters per mechanism name; PAVE's full one is longer, so
    keep its short name, as ``client.contribute`` does."""
    privacy = replace(spec.privacy, mechanism=spec.privacy.mechanism.split(" (")[0])
    return replace(spec, privacy=privacy)


@pytest.fixture(scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_no_raw_text_crosses_the_wire(tmp_path, lwm_home, one_thread):
    contributor_texts, user_texts = split(load_domain("medicine"), 80, 40, seed=7)
    with insecure_market(tmp_path, lwm_home) as (running, keys):
        proxy = RecordingProxy(running.port)
        address = f"127.0.0.1:{proxy.port}"
        carol = Connection(address, _key(running, keys, "carol", Role.CONTRIBUTOR), insecure=True)
        uma = Connection(address, _key(running, keys, "uma", Role.USER), insecure=True)
        try:
            # Contributor: adapter and both specs from the raw texts, then submit.
            with MarketClient(carol) as client:
                maker = SpecMaker(client.schema().schema, lwm_home)
                specs = [
                    _short_mechanism(maker.make(contributor_texts, kind, PrivacyBudget(4.0)))
                    for kind in ("rkme", "pave")
                ]
                package = build_learnware(
                    tmp_path / "lw",
                    adapter=train_domain_adapter(
                        lwm_home, tmp_path / "adapter", contributor_texts, steps=10
                    ),
                    spec_file=write_specs(tmp_path / "spec.safetensors", specs),
                    base=model_ref("tiny", lwm_home),
                    private_key=signing.load_private_key(carol.key_path),
                    name="icd-notes-from-the-clinic",
                )
                learnware_id = client.submit(package).id
            # User: search with both kinds, fetch the best match.
            with MarketClient(uma) as client:
                for kind in ("rkme", "pave"):
                    found = private_search(user_texts, client, kind=kind, maker=maker)
                    assert found.matches[0].id == learnware_id
                fetch_learnware(client, learnware_id, tmp_path / "fetched", home=lwm_home)
            recorded = proxy.take()
            # The recording is not vacuous: the whole package went through it, readable.
            assert sum(map(len, recorded)) > 2 * len(pack_tar(package))  # submit + fetch
            assert any(b"icd-notes-from-the-clinic" in stream for stream in recorded)
            assert leaked_snippets(recorded, contributor_texts + user_texts) == []

            # Control: one raw text sent in a request field through the same proxy is caught.
            with MarketClient(uma) as client, pytest.raises(LwmError):
                client.get(user_texts[0][:60])
            assert leaked_snippets(proxy.take(), user_texts)
        finally:
            proxy.close()


def test_the_detector_finds_windows_anywhere_and_only_real_ones():
    text = "Acute myocardial infarction of the anterior wall, initial episode"
    assert leaked_snippets([b"xx" + text[10:31].encode() + b"yy"], [text])
    assert not leaked_snippets([text[:19].encode(), text[19:38].encode()], [text])  # 2 streams
    assert not leaked_snippets([b"nothing to see here at all, really"], [text])
    assert leaked_snippets([("é" * 3 + text[:20]).encode()], ["é" * 3 + text[:20]])
