"""The contributor keys a user trusts (DESIGN §6: the user pins the keys it trusts, never
just the key the market announces).

A market answers a fetch with the contributor's public key; a fake market, or a proxy in
front of the real one, can answer with any key that signed any package. So the user keeps
a trust store (``trust.json`` in the lwm home, or the file ``--trust`` names) of pins:

- **your pins** (``lwm trust add PUB --name NAME``): keys you checked yourself, valid at
  every market and for local folders;
- **first-use pins**: the first time a learnware signed by a key id is fetched from a market,
  that key and the name the market's registry gives it are pinned for that market. Later
  fetches from the same market refuse another public key for that key id, and another key
  under a pinned name (a look-alike registry entry or a swapped key); a contributor that
  really rotated its key is accepted once you pin the new key yourself.

Revocation policy: a learnware signed by a revoked contributor key is refused. A revoked
key may have been stolen, and nothing dates a signature, so its old signatures prove
nothing either. The market drops such learnwares from search and refuses to serve them
(``Fetch`` answers FAILED_PRECONDITION, naming the revoked key). A user may also refuse keys
of their own (``revoked_keys``, ``lwm fetch --revoked-keys FILE``, e.g. published by an admin
from ``lwm admin list-keys --all``): checked before anything is downloaded and again on the
signed manifest, so it holds even against a market that was never told.
That check (``refuse_revoked``) comes before any pin is consulted.

With ``require_pinned`` (``lwm fetch --require-pinned``) a key with no pin at all is refused
before anything is downloaded. A market is identified by the sha256 of the TLS certificate
it presents (``MarketClient.market_id``, ``shared.market_identity``: a proxy or a fake
market cannot present the real one's), by its address when it is reached without TLS.

The signer is always shown as the registry's name (data the market sent, escaped when not
plain ASCII: a Cyrillic 'о' in a hospital's name shows as ``\\u043e``) plus its key id, never
as the name a manifest gives itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared import signing
from shared.errors import IntegrityError, InvalidInput, NotFound, UntrustedKey
from shared.files import FileLock, write_atomically
from shared.home import Home

TRUST_FILE = "trust.json"
FORMAT = 1


@dataclass(frozen=True)
class Pin:
    """A trusted key: ``market`` None for your own pins, else the market it was first used at."""

    key_id: str
    public_key: str  # raw 32 bytes, hex
    name: str
    market: str | None
    added_at: str

    @property
    def how(self) -> str:
        return "pinned by you" if self.market is None else "pinned on first use at this market"


@dataclass(frozen=True)
class Signer:
    """Who signed a learnware, as the user should see it; ``new_pin`` is set on first use
    and recorded (``TrustStore.remember``) only once every other check has passed."""

    key_id: str
    name: str
    how: str
    new_pin: Pin | None = None

    def describe(self) -> str:
        return f"{shown_name(self.name)} (key {self.key_id}, {self.how})"


def shown_name(name: str) -> str:
    """A name as a human should read it: anything but printable ASCII is escaped."""
    return name if name.isascii() and name.isprintable() else ascii(name)


@dataclass(frozen=True)
class TrustStore:
    """The user's pins in one JSON file, read on every call (commands are short-lived)."""

    path: Path
    require_pinned: bool = False

    @classmethod
    def at(
        cls, home: Home, path: str | Path | None = None, *, require_pinned: bool = False
    ) -> TrustStore:
        """``path`` wins, else ``trust.json`` in the lwm home."""
        chosen = Path(path).expanduser() if path is not None else home.root / TRUST_FILE
        return cls(chosen, require_pinned)

    # ------------------------------------------------------------------ the file
    def pins(self) -> tuple[Pin, ...]:
        if not self.path.exists():
            return ()
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if raw.get("format") != FORMAT:
                raise InvalidInput(f"format {raw.get('format')!r} is not {FORMAT}")
            return tuple(Pin(**entry) for entry in raw["pins"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise InvalidInput(f"trust store {self.path} is unreadable: {err}") from err

    def _edit(self, change: Callable[[tuple[Pin, ...]], tuple[Pin, ...]]) -> int:
        """Read, ``change`` and write the pins under a lock beside the file, so two ``lwm``
        commands pinning at once (a fetch's first use, a ``trust add``) lose neither.
        Returns how many pins the change removed (net)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path.with_name(self.path.name + ".lock")):
            before = self.pins()
            pins = change(before)
            body: dict[str, Any] = {"format": FORMAT, "pins": [asdict(p) for p in pins]}
            data = json.dumps(body, indent=2, sort_keys=True).encode("utf-8") + b"\n"
            write_atomically(self.path, data, mode=0o600)
        return len(before) - len(pins)

    # ------------------------------------------------------------------ lwm trust
    def add(self, public_key: str | Path | bytes, name: str) -> Pin:
        """Pin a key yourself (a PEM file or text, or raw bytes); replaces your older pin."""
        raw = signing.public_key_bytes(signing.load_public_key(public_key))
        pin = Pin(signing.key_id(raw), raw.hex(), name, None, _now())
        self._edit(
            lambda pins: (
                *(p for p in pins if not (p.market is None and p.key_id == pin.key_id)),
                pin,
            )
        )
        return pin

    def remove(self, key_id: str) -> int:
        """Forget every pin (yours and first-use) of ``key_id``; ``NotFound`` if none."""

        def drop(pins: tuple[Pin, ...]) -> tuple[Pin, ...]:
            kept = tuple(p for p in pins if p.key_id != key_id)
            if len(kept) == len(pins):
                raise NotFound(f"key {key_id} is not pinned in {self.path}")
            return kept

        return self._edit(drop)

    # ------------------------------------------------------------------ checks
    def check(self, market: str, key_id: str, name: str, public_key: bytes | None) -> Signer:
        """May this market's key sign what the user runs? ``UntrustedKey`` says why not.

        Called before the download (``public_key`` None: only what the listing shows) and
        again with the key the market sent once it hashed to ``key_id``.
        """
        pins = [p for p in self.pins() if p.market in (None, market)]
        sent = None if public_key is None else public_key.hex()
        for pin in pins:
            if pin.key_id == key_id and sent is not None and pin.public_key != sent:
                raise UntrustedKey(
                    f"the market sends another public key for key {key_id} than the one "
                    f"{pin.how} ({shown_name(pin.name)})"
                )
        own = next((p for p in pins if p.key_id == key_id and p.market is None), None)
        if own is not None:
            return Signer(key_id, own.name, own.how)
        seen = next((p for p in pins if p.key_id == key_id), None)
        if seen is not None and seen.name == name:
            return Signer(key_id, name, seen.how)
        return self._first_use(market, key_id, name, public_key, pins)

    def _first_use(
        self, market: str, key_id: str, name: str, public_key: bytes | None, pins: list[Pin]
    ) -> Signer:
        if self.require_pinned:
            raise UntrustedKey(
                f"key {key_id} ({shown_name(name)} at the market) is not pinned and pins are "
                "required: check it, then `lwm trust add PUB --name NAME`"
            )
        for pin in pins:
            if pin.market is not None and (pin.name == name or pin.key_id == key_id):
                raise UntrustedKey(
                    f"the market names key {key_id} {shown_name(name)}, but key {pin.key_id} "
                    f"was pinned as {shown_name(pin.name)} on first use here; if the "
                    "contributor changed keys, pin the new one: `lwm trust add PUB --name NAME`"
                )
        new = None
        if public_key is not None:
            new = Pin(key_id, public_key.hex(), name, market, _now())
        return Signer(key_id, name, "first use: pinned now", new)

    def remember(self, signer: Signer) -> None:
        """Record a first-use pin, after the package it signed passed every check."""
        if signer.new_pin is not None:
            new_pin = signer.new_pin
            self._edit(lambda pins: (*pins, new_pin))

    def key_for_folder(self, key_id: str) -> signing.Ed25519PublicKey:
        """The pinned key a local folder's signature must verify with (any pin of it)."""
        pin = next((p for p in self.pins() if p.key_id == key_id), None)
        if pin is None:
            raise UntrustedKey(
                f"the folder is signed by key {key_id}, which is not in your trust store "
                f"{self.path}: fetch it from a market or `lwm trust add PUB --name NAME`"
            )
        return signing.load_public_key(bytes.fromhex(pin.public_key))


def refuse_revoked(key_id: str, revoked_keys: Collection[str]) -> None:
    """``IntegrityError`` when ``key_id`` is on the user's list of revoked keys."""
    if key_id in revoked_keys:
        raise IntegrityError(f"contributor key {key_id} is on your revoked-keys list")


def read_revoked_keys(path: str | Path) -> frozenset[str]:
    """Key ids, one per line (blank lines and ``#`` comments ignored; first word counts)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise InvalidInput(f"cannot read revoked-keys file {path}: {err.strerror}") from err
    words = (line.split("#", 1)[0].split() for line in lines)
    return frozenset(w[0] for w in words if w)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
