"""The user's privacy ledger: what every release of a dataset has spent, and a budget that
refuses the release that would spend too much (issue 12, item 11).

Every DP search of the same data spends epsilon again: ten searches at epsilon 4 are not
epsilon 4. So each dataset gets a ledger in the lwm home (``privacy/<fingerprint>.json``)
that lists every release made from it, and the total is composed by the project's one
accountant (``shared.privacy.compose_epsilon``: the releases' RDP histories, noise multiplier,
sample rate and steps, added up in opacus' RDP accountant and converted at the ledger's one
delta). RDP composition is valid here because every release this project makes is a
Gaussian mechanism (RKME: one release, sample rate 1) or a run of subsampled Gaussian steps
(PAVE's DP-SGD), and records its noise parameters. Two RKME searches at epsilon 4 compose
to about 5.9, not 8.

**Which data.** A ledger is keyed by a fingerprint of the data, never its text or path: the
sha256 over the sorted sha256 of each canonical text (the texts the spec is made from). It
is order-independent on purpose: a spec does not depend on the order of its records, so the
same records shuffled, or exported from JSONL to CSV, are the same people and must not get
a fresh budget. A dataset with one text added or removed is other data with its own ledger:
overlapping datasets are not linked (a known limit). The file holds the fingerprint, the
number of texts and each release's DP report; no text.

**The budget.** Each ledger has a total (``DEFAULT_BUDGET_EPSILON`` at the ledger's delta
when it is made; ``--budget-epsilon`` or ``lwm privacy budget`` change it; ``inf`` lifts it).
A release that would take the composed total above it raises ``BudgetExceeded`` before the
spec is computed or sent, and nothing is recorded. A release without DP (``--no-dp``) has no
epsilon bound, so it is refused whenever a budget is set; with the budget lifted it is
recorded and the ledger's total is infinite from then on.

**Two searches at once.** The check and the record are one critical section: a lock file
beside the ledger (``fcntl.flock``) is held from the check until the release is recorded,
and the ledger is rewritten atomically. A release is recorded once its spec exists, before
it is sent: a search whose connection then fails still counts (it may have left).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.errors import BudgetExceeded, InvalidInput, NotFound
from shared.files import FileLock, write_atomically
from shared.home import Home
from shared.privacy import DEFAULT_DELTA, DPReport, PrivacyBudget, compose_epsilon
from shared.spec.schema import SpecSchema

LEDGER_DIR = "privacy"
FORMAT = 1
DEFAULT_BUDGET_EPSILON = 10.0
_DOMAIN = b"lwm privacy ledger v1\n"


def fingerprint(texts: Sequence[str]) -> str:
    """The dataset's id: sha256 over its texts' sorted sha256 digests (order-independent,
    duplicates kept), under a domain tag. Raises ``InvalidInput`` for no texts."""
    if not texts:
        raise InvalidInput("no texts to fingerprint")
    digests = sorted(hashlib.sha256(t.encode("utf-8")).digest() for t in texts)
    return hashlib.sha256(_DOMAIN + b"".join(digests)).hexdigest()


@dataclass(frozen=True)
class Release:
    """One thing released from the data: ``what`` ("search"), the spec ``kind``, where it went
    (``to``: the market's address) and its DP report (what the accountant composes)."""

    at: str
    what: str
    kind: str
    to: str
    report: DPReport

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "report": self.report.to_dict()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Release:
        report = DPReport.from_dict(raw["report"])
        return cls(str(raw["at"]), str(raw["what"]), str(raw["kind"]), str(raw["to"]), report)


@dataclass(frozen=True)
class Ledger:
    """One dataset's releases and budget. ``budget_epsilon`` None: no limit (lifted)."""

    fingerprint: str
    n_texts: int
    delta: float
    budget_epsilon: float | None
    releases: tuple[Release, ...] = ()

    @property
    def spent(self) -> float:
        """The composed epsilon at ``delta`` of every release (inf once one had no DP)."""
        return self.spent_with(())

    def spent_with(self, more: Sequence[DPReport]) -> float:
        total = compose_epsilon([r.report for r in self.releases] + list(more), self.delta)
        return math.inf if total is None else total

    @property
    def remaining(self) -> float:
        return math.inf if self.budget_epsilon is None else self.budget_epsilon - self.spent

    def describe(self) -> str:
        """One line: data prefix, releases, epsilon spent of the budget at delta."""
        budget = "no budget" if self.budget_epsilon is None else f"of {self.budget_epsilon:g}"
        left = "" if self.budget_epsilon is None else f", {max(self.remaining, 0.0):.3g} left"
        return (
            f"data {self.fingerprint[:12]}: {len(self.releases)} release(s), epsilon "
            f"{self.spent:.3g} spent {budget} at delta {self.delta:g}{left}"
        )

    def summary(self) -> dict[str, Any]:
        """For ``--json``: the figures, never a text (there is none to give)."""
        return {
            "fingerprint": self.fingerprint,
            "n_texts": self.n_texts,
            "releases": len(self.releases),
            "epsilon_spent": _json_number(self.spent),
            "delta": self.delta,
            "budget_epsilon": self.budget_epsilon,
            "epsilon_remaining": _json_number(self.remaining),
        }

    def precheck(self, budget: PrivacyBudget) -> None:
        """What can be refused before the market is contacted: a release without DP under a
        budget, or any release once the budget is spent (each DP release adds epsilon > 0)."""
        if self.budget_epsilon is None:
            return
        if not budget.is_private:
            self.admit(DPReport("none", None, budget.delta, 0.0))
        if self.spent >= self.budget_epsilon:
            raise BudgetExceeded(f"the privacy budget is spent: {self.describe()}")

    def admit(self, *planned: DPReport) -> None:
        """``BudgetExceeded`` unless the ledger's total with all of ``planned`` (the
        releases one call will make, admitted together so that none is spent when the
        last would not fit) stays in budget."""
        if self.budget_epsilon is None:
            return
        if any(p.epsilon is None for p in planned):
            raise BudgetExceeded(
                f"a spec without DP has no epsilon bound; {self.describe()}: lift the budget "
                "with --budget-epsilon inf to release it anyway"
            )
        after = self.spent_with(list(planned))
        if after > self.budget_epsilon:
            what = " + ".join(f"{p.epsilon:g}" for p in planned)
            noun = "this release" if len(planned) == 1 else f"these {len(planned)} releases"
            raise BudgetExceeded(
                f"{noun} (epsilon {what}) would bring the total to epsilon "
                f"{after:.3g} > budget {self.budget_epsilon:g}; {self.describe()}; nothing "
                "was computed or sent"
            )

    def to_json(self) -> bytes:
        body = {"format": FORMAT, **asdict(self)}
        body["releases"] = [r.to_dict() for r in self.releases]
        return json.dumps(body, indent=2, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Ledger:
        if raw.get("format") != FORMAT:
            raise InvalidInput(f"format {raw.get('format')!r} is not {FORMAT}")
        budget = raw["budget_epsilon"]
        return cls(
            fingerprint=str(raw["fingerprint"]),
            n_texts=int(raw["n_texts"]),
            delta=float(raw["delta"]),
            budget_epsilon=None if budget is None else float(budget),
            releases=tuple(Release.from_dict(r) for r in raw["releases"]),
        )


def planned_report(schema: SpecSchema, n: int, budget: PrivacyBudget) -> DPReport:
    """The noise a release of ``schema``'s kind on ``n`` texts under ``budget`` will have,
    computed before it is made, by the calibrations the release itself uses (RKME's
    ``noise_std``; PAVE's Poisson rate and DP-SGD noise), so the budget is checked first."""
    from shared.dpsgd import poisson_sample_rate
    from shared.privacy import dpsgd_noise_multiplier
    from shared.spec import pave, rkme
    from shared.spec.schema import PaveSchema

    if not budget.is_private:
        return DPReport("none", None, budget.delta, 0.0)
    if isinstance(schema, PaveSchema):
        rate = poisson_sample_rate(n, schema.batch_size)
        sigma = dpsgd_noise_multiplier(budget, sample_rate=rate, steps=schema.steps)
        return DPReport(pave.MECHANISM, budget.epsilon, budget.delta, sigma, rate, schema.steps)
    sigma, std = rkme.noise_std(n, budget)
    return DPReport(rkme.MECHANISM, budget.epsilon, budget.delta, sigma, noise_std=std)


@dataclass(frozen=True)
class PrivacyLedgers:
    """Every dataset's ledger, one JSON file each in ``folder`` (``HOME/privacy``)."""

    folder: Path

    @classmethod
    def at(cls, home: Home) -> PrivacyLedgers:
        return cls(home.root / LEDGER_DIR)

    def all(self) -> tuple[Ledger, ...]:
        """Every ledger, most spent first."""
        if not self.folder.is_dir():
            return ()
        found = [self._read(p) for p in sorted(self.folder.glob("*.json"))]
        return tuple(sorted(found, key=lambda ledger: -ledger.spent))

    def get(self, texts: Sequence[str]) -> Ledger | None:
        """The ledger of ``texts`` (None if nothing was released from them yet)."""
        path = self._path(fingerprint(texts))
        return self._read(path) if path.exists() else None

    @contextmanager
    def session(
        self,
        texts: Sequence[str],
        *,
        delta: float = DEFAULT_DELTA,
        budget_epsilon: float | None = None,
    ) -> Iterator[LedgerSession]:
        """Hold ``texts``' ledger for one check-and-record (exclusive: a second session on
        the same data waits). A new ledger composes at ``delta``. ``budget_epsilon`` sets the
        ledger's budget first (``math.inf``: no limit); None keeps the one it has."""
        key = fingerprint(texts)
        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(self.folder / f"{key}.lock"):
            path = self._path(key)
            ledger = (
                self._read(path)
                if path.exists()
                else Ledger(key, len(texts), delta, DEFAULT_BUDGET_EPSILON)
            )
            if budget_epsilon is not None:
                ledger = replace(ledger, budget_epsilon=_budget(budget_epsilon))
                write_atomically(path, ledger.to_json(), mode=0o600)
            yield LedgerSession(path, ledger)

    def set_budget(self, texts: Sequence[str], budget_epsilon: float) -> Ledger:
        """Set the budget of ``texts``' ledger (``math.inf``: no limit); made if new."""
        with self.session(texts, budget_epsilon=budget_epsilon) as held:
            return held.ledger

    def reset(self, texts: Sequence[str]) -> Ledger:
        """Forget every release of ``texts`` (the budget is kept); ``NotFound`` if none."""
        with self.session(texts) as held:
            if not held.path.exists():
                key = held.ledger.fingerprint[:12]
                raise NotFound(f"nothing was recorded for this data (fingerprint {key})")
            write_atomically(held.path, replace(held.ledger, releases=()).to_json(), mode=0o600)
            return held.ledger

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def _read(self, path: Path) -> Ledger:
        try:
            return Ledger.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise InvalidInput(f"privacy ledger {path} is unreadable: {err}") from err


@dataclass
class LedgerSession:
    """A ledger while its lock is held: ``admit`` a planned release, then ``record`` it."""

    path: Path
    ledger: Ledger

    def admit(self, *planned: DPReport) -> None:
        self.ledger.admit(*planned)

    def record(self, what: str, kind: str, to: str, report: DPReport) -> Ledger:
        """Check the release as made (``BudgetExceeded`` if it costs more than planned), then
        append it and rewrite the ledger atomically."""
        self.ledger.admit(report)
        release = Release(_now(), what, kind, to, report)
        self.ledger = replace(self.ledger, releases=(*self.ledger.releases, release))
        write_atomically(self.path, self.ledger.to_json(), mode=0o600)
        return self.ledger


def _budget(epsilon: float) -> float | None:
    if math.isinf(epsilon) and epsilon > 0:
        return None
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise InvalidInput(f"a budget epsilon must be > 0 (or inf), got {epsilon!r}")
    return float(epsilon)


def _json_number(value: float) -> float | None:
    return None if math.isinf(value) else value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
