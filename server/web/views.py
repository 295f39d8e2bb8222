"""What the web page shows of a learnware: its record and signed manifest, made plain.

The templates get these frozen records, never a database row, so a page shows exactly what
the ``Market`` handed over. The privacy budget comes from the signed manifest's ledger
(``shared.learnware.DpLedger``): each release's (epsilon, delta) and the total its
contributor composed in the RDP accountant, the figure a data-protection officer reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.records import KeyRecord, LearnwareRecord
from shared.learnware import Manifest, SpecEntry


@dataclass(frozen=True)
class Budget:
    """An (epsilon, delta) guarantee; ``epsilon`` None: no differential privacy."""

    epsilon: float | None
    delta: float

    @property
    def text(self) -> str:
        if self.epsilon is None:
            return "no DP guarantee"
        return f"ε = {self.epsilon:.3g}, δ = {self.delta:.0e}"


@dataclass(frozen=True)
class Release:
    """One released part (``adapter`` or ``spec:<kind>``) and what it cost."""

    what: str
    mechanism: str
    budget: Budget


@dataclass(frozen=True)
class LearnwareView:
    """A learnware as the catalogue and its own page show it: the market's record (name,
    domain, task, licence, base model, status and reason, size, ...) and what its signed
    manifest and the key registry add."""

    record: LearnwareRecord
    specs: tuple[SpecEntry, ...]
    releases: tuple[Release, ...]
    total: Budget
    accountant: str
    contributor_name: str
    contributor_revoked: bool
    history: tuple[LearnwareRecord, ...] = ()  # every version of its name, newest first

    @property
    def spec_kinds(self) -> tuple[str, ...]:
        return tuple(spec.kind for spec in self.specs)


def learnware_view(
    record: LearnwareRecord,
    contributor: KeyRecord | None,
    history: tuple[LearnwareRecord, ...] = (),
) -> LearnwareView:
    """``record`` with its manifest read (``InvalidInput`` if it does not parse: the market
    stores only checked manifests), its contributor as the key registry names it (the
    name in the record, kept from the upload, when the key is gone) and, on its own page,
    the versions of its name (``Market.history``)."""
    manifest = Manifest.from_json(record.manifest_json)
    ledger = manifest.dp
    return LearnwareView(
        record=record,
        specs=manifest.specs,
        releases=tuple(
            Release(part.what, part.mechanism, Budget(part.epsilon, part.delta))
            for part in ledger.parts
        ),
        total=Budget(ledger.total.epsilon, ledger.total.delta),
        accountant=ledger.total.accountant,
        contributor_name=contributor.name if contributor else record.contributor_name,
        contributor_revoked=contributor is None or contributor.revoked,
        history=history,
    )


def human_size(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``: sizes as a person reads them."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
