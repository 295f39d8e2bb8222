"""The one road out of a contributor's machine: manifest, signature, package, submission.

A learnware is made alone (``client.contribute``), by a Flower federation
(``client.federation.server_app.federate``) or by the simulation, which calls both; all of
them end in ``publish``: the only code that writes a manifest, signs, packs and (given a
market client) submits. What it needs is what training produced (an adapter folder and its
``DPReport``, the DP specs) and what the contributor says about it (``LearnwareCard``).

Privacy: the adapter and every spec are releases on the same data; the manifest lists each
``DPReport`` and their composition in one RDP accountant (``DpLedger.compose``). The total
is None (no guarantee) when the adapter is trained without DP.

Identity: the package's ``adapter_config.json`` names its base model by the manifest's
``base_model.model_id`` (e.g. ``smollm2-135m-instruct-q4_1``), whatever the adapter folder
said (often a path on the contributor's machine, which resolves nowhere else and leaks the
path): ``lwm`` resolves that id to its local folder, and ``lwm fetch --peft-dir`` writes a
folder plain peft loads.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared import signing
from shared.errors import InvalidInput, SchemaMismatch
from shared.learnware import Contributor, DpLedger, Manifest, Package, SpecEntry
from shared.learnware import _check as check  # the manifest's own rules, checked up front
from shared.learnware.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from shared.learnware.manifest import utc_now_iso
from shared.privacy import DEFAULT_DELTA, DPReport, PrivacyBudget
from shared.spec.schema import KINDS

if TYPE_CHECKING:
    from client.market import MarketClient
    from shared.models import ModelRef
    from shared.spec.record import Specification


@dataclass(frozen=True)
class LearnwareCard:
    """What the market lists about a learnware (the manifest's own fields), checked before
    any training. ``contributor`` is the display name beside the signing key's id."""

    name: str
    domain: str
    task: str
    description: str
    license: str
    contributor: str = "contributor"

    def __post_init__(self) -> None:
        for name in ("name", "domain", "task"):
            check.slug(name, getattr(self, name))
        check.text("description", self.description, max_len=4000, multiline=True, empty=True)
        check.spdx("license", self.license)
        check.text("contributor", self.contributor, max_len=128)


@dataclass(frozen=True)
class SpecSettings:
    """The spec kinds a package carries (one DP spec of the same data each, so each is a
    release the accountant composes) and the DP epsilon of each (always private)."""

    kinds: tuple[str, ...] = ("rkme",)
    epsilon: float = 4.0

    def __post_init__(self) -> None:
        if isinstance(self.kinds, str | list):
            kinds = [self.kinds] if isinstance(self.kinds, str) else self.kinds
            object.__setattr__(self, "kinds", tuple(kinds))
        if not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise InvalidInput(f"spec kinds must name distinct kinds, got {self.kinds!r}")
        for kind in self.kinds:
            if kind not in KINDS:
                raise SchemaMismatch(f"unknown spec kind {kind!r}; use {', '.join(KINDS)}")
        self.budget(DEFAULT_DELTA)  # PrivacyError for epsilon <= 0

    def budget(self, delta: float) -> PrivacyBudget:
        return PrivacyBudget(self.epsilon, delta)

    def check_fits(self, n: int, delta: float) -> None:
        """Refuse specs that ``n`` texts cannot carry, before any model loads: delta must be
        below 1/n, and an RKME release needs enough texts for its DP count (the market
        refuses a count too noisy to bound its distances' noise correction)."""
        from shared.errors import DataError
        from shared.spec.claims import rkme_texts_needed

        budget = self.budget(delta)
        budget.require_texts(n)
        needed = rkme_texts_needed(budget) if "rkme" in self.kinds else 1
        if n < needed:
            raise DataError(
                f"an RKME spec at epsilon={self.epsilon} needs at least {needed} texts (its "
                f"DP noise would outweigh its distances), got {n}: add texts or raise the "
                "spec epsilon"
            )


@dataclass(frozen=True)
class Verdict:
    """The market's answer to a submission: ``status`` is USABLE, REJECTED or PENDING."""

    learnware_id: str
    status: str
    reason: str
    manifest: Manifest

    @property
    def usable(self) -> bool:
        return self.status == "USABLE"


@dataclass(frozen=True)
class Published:
    """The signed package as built, and the market's verdict when it was submitted."""

    package: Package
    verdict: Verdict | None


def publish(
    card: LearnwareCard,
    base: ModelRef,
    adapter: Path,
    adapter_report: DPReport,
    specs: Sequence[Specification],
    key: signing.Ed25519PrivateKey,
    out: Path,
    *,
    delta: float,
    client: MarketClient | None = None,
) -> Published:
    """Write the manifest, sign and pack the learnware at ``out`` (a new folder), and submit
    it through ``client`` when one is given.

    ``adapter`` is a peft ``save_pretrained`` folder, ``adapter_report`` what its training
    cost, ``specs`` one DP spec per kind; all releases compose at ``delta``. Raises what
    ``build_package`` raises (``AlreadyExists`` for an existing ``out``: nothing is left
    behind) and, for a refused submission, the market's error.
    """
    from shared.learnware import build_package
    from shared.spec.record import save_specs

    manifest = build_manifest(card, base, adapter_report, specs, key, delta)
    with tempfile.TemporaryDirectory(prefix="lwm-publish-") as tmp:
        spec_file = save_specs(Path(tmp) / "spec.safetensors", list(specs))
        named = _naming_base(adapter, base, Path(tmp))
        package = build_package(out, named, spec_file, manifest, key)
    if client is None:
        return Published(package, None)
    return Published(package, submit_package(client, package.folder))


def _naming_base(adapter: Path, base: ModelRef, tmp: Path) -> Path | tuple[Path, Path]:
    """The adapter's (weights, config) with the config's ``base_model_name_or_path`` set to
    ``base.model_id`` (module docstring); a folder lacking either file goes to
    ``build_package`` as it is, which says what is wrong with it."""
    config_file, weights = adapter / ADAPTER_CONFIG, adapter / ADAPTER_WEIGHTS
    if not (config_file.is_file() and weights.is_file()):
        return adapter
    config = check.loads_untrusted(config_file.read_bytes(), ADAPTER_CONFIG)
    if not isinstance(config, dict):
        return adapter
    named = tmp / ADAPTER_CONFIG
    named.write_text(json.dumps({**config, "base_model_name_or_path": base.model_id}, indent=2))
    return weights, named


def submit_package(client: MarketClient, folder: Path) -> Verdict:
    """Submit a signed package folder (built by ``publish``, e.g. ``lwm contribute --out``
    or ``lwm package build``): checked here first (``verify_package``: files, hashes,
    manifest), so a broken folder is refused before any byte is sent; the signature is the
    market's to check against the key it registered. Returns the market's verdict."""
    from client.market import status_name
    from shared.learnware import verify_package

    manifest = verify_package(folder, None).manifest
    reply = client.submit(folder)
    return Verdict(reply.id, status_name(reply.status), reply.reason, manifest)


def build_manifest(
    card: LearnwareCard,
    base: ModelRef,
    adapter: DPReport,
    specs: Sequence[Specification],
    key: signing.Ed25519PrivateKey,
    delta: float,
) -> Manifest:
    """The manifest of one adapter and its specs (one per kind), every release on the same
    data composed in one accountant at ``delta``."""
    return Manifest(
        name=card.name,
        domain=card.domain,
        task=card.task,
        description=card.description,
        license=card.license,
        base_model=base,
        specs=tuple(_spec_entry(s) for s in specs),
        dp=DpLedger.compose(
            [("adapter", adapter), *((f"spec:{s.kind}", s.privacy) for s in specs)], delta
        ),
        contributor=Contributor(key_id=signing.key_id(key.public_key()), name=card.contributor),
        created_at=utc_now_iso(),
    )


def _spec_entry(spec: Specification) -> SpecEntry:
    epsilon = spec.privacy.epsilon
    return SpecEntry(
        kind=spec.kind,
        schema_id=spec.schema_id,
        dim=spec.dim,
        epsilon=epsilon,
        delta=spec.privacy.delta if epsilon is not None else 0.0,
        n=spec.n,
        extra=spec.privacy.accounting(),
    )
