"""The learnware manifest (DESIGN §5): what a learnware is, what it adapts, what it promises.

The manifest is signed (see ``package.signing_payload``), so its JSON form must be one exact
byte string for one manifest: ``Manifest.to_json`` writes canonical JSON (sorted keys, no
spaces, UTF-8, no NaN/Infinity) and ``Manifest.from_json`` is strict (no unknown or missing
keys at any level, no duplicate keys, no wrong types), so nothing unsigned can ride along.

Every record validates itself in ``__post_init__`` and raises ``shared.errors.InvalidInput``
quoting the bad value. Optional epsilons are ``None`` (JSON ``null``) for "no differential
privacy": the DP report must say so honestly rather than omit a part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from shared.canonical import canonical_json
from shared.errors import InvalidInput
from shared.learnware import _check as check
from shared.learnware.layout import FORMAT_VERSION, PAYLOAD_FILES
from shared.models.refs import ModelRef
from shared.privacy import DPReport, compose_epsilon

ADAPTER_PART = "adapter"
SPEC_PART_PREFIX = "spec:"
ACCOUNTANT = "rdp"


def utc_now_iso() -> str:
    """The current time as ``created_at`` wants it: ISO 8601, seconds, UTC offset."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class SpecEntry:
    """One specification in ``spec.safetensors`` (tensor named by ``kind``) and its metadata.

    ``epsilon`` None means released without DP (then ``delta`` must be 0). ``n`` is the
    number of holder texts as the spec published it: RKME's DP count, PAVE's exact n
    (issue 11 moved RKME to add/remove-one DP; DESIGN §4.2 still calls n public).
    ``extra`` carries the kind's own metadata (noise sigma, clip, steps, ...) as a JSON
    object.
    """

    kind: str
    schema_id: str
    dim: int
    epsilon: float | None
    delta: float
    n: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check.slug("spec.kind", self.kind)
        check.text("spec.schema_id", self.schema_id, max_len=128)
        check.integer("spec.dim", self.dim, minimum=1)
        check.integer("spec.n", self.n, minimum=1)
        check.privacy(self, "spec")
        object.__setattr__(self, "extra", check.json_object("spec.extra", self.extra))


@dataclass(frozen=True)
class DpPart:
    """The privacy of one released part: ``"adapter"`` or ``"spec:<kind>"``."""

    what: str
    epsilon: float | None
    delta: float
    mechanism: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check.text("dp.part.what", self.what, max_len=80)
        if self.what != ADAPTER_PART:
            if not self.what.startswith(SPEC_PART_PREFIX):
                raise InvalidInput(
                    f"dp.part.what must be 'adapter' or 'spec:<kind>', got {self.what!r}"
                )
            check.slug("dp.part.what kind", self.what[len(SPEC_PART_PREFIX) :])
        check.text("dp.part.mechanism", self.mechanism, max_len=64)
        check.privacy(self, f"dp part {self.what!r}")
        object.__setattr__(self, "details", check.json_object("dp.part.details", self.details))

    @classmethod
    def of(cls, what: str, report: DPReport) -> DpPart:
        """``report`` (a release's ``DPReport``) as the manifest lists it: the short mechanism
        name, delta 0 without DP, and the accounting beside the report's own details."""
        private = report.epsilon is not None
        return cls(
            what=what,
            epsilon=report.epsilon,
            delta=report.delta if private else 0.0,
            mechanism=report.mechanism_name,
            details={**report.accounting(), **report.details},
        )


@dataclass(frozen=True)
class DpTotal:
    """Everything composed. ``epsilon`` None: some part is not DP, so there is no guarantee."""

    epsilon: float | None
    delta: float
    accountant: str

    def __post_init__(self) -> None:
        check.text("dp.total.accountant", self.accountant, max_len=64)
        check.privacy(self, "dp.total")


@dataclass(frozen=True)
class DpLedger:
    """The manifest's ``dp``: each release's ``DPReport`` as a part, plus their composition.

    Every released part must be listed. ``compose`` is the one way a learnware's ledger is
    made from its releases; this record is only their signed JSON form.
    """

    parts: tuple[DpPart, ...]
    total: DpTotal

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", check.records("dp.parts", self.parts, DpPart))
        if not isinstance(self.total, DpTotal):
            raise InvalidInput(f"dp.total must be a DpTotal, got {self.total!r}")
        whats = [part.what for part in self.parts]
        if len(set(whats)) != len(whats):
            raise InvalidInput(f"dp.parts has duplicate entries: {whats}")
        if self.total.epsilon is not None and any(p.epsilon is None for p in self.parts):
            raise InvalidInput(
                f"dp.total.epsilon is {self.total.epsilon} but a part has no DP; "
                "the total must then be null"
            )

    def part(self, what: str) -> DpPart | None:
        return next((p for p in self.parts if p.what == what), None)

    @classmethod
    def compose(cls, releases: Sequence[tuple[str, DPReport]], delta: float) -> DpLedger:
        """The ledger of ``(what, report)`` releases on the same data, composed in one RDP
        accountant at ``delta``; the total is None (no guarantee) if any part is not DP."""
        total = compose_epsilon([report for _, report in releases], delta)
        return cls(
            parts=tuple(DpPart.of(what, report) for what, report in releases),
            total=DpTotal(
                epsilon=total, delta=delta if total is not None else 0.0, accountant=ACCOUNTANT
            ),
        )


@dataclass(frozen=True)
class Contributor:
    """Who signed: ``key_id`` of the Ed25519 key (shared.signing.key_id) and a display name."""

    key_id: str
    name: str

    def __post_init__(self) -> None:
        check.hex_string("contributor.key_id", self.key_id, length=16)
        check.text("contributor.name", self.name, max_len=128)


@dataclass(frozen=True)
class FileEntry:
    """A payload file's sha256 (64 lowercase hex) and size in bytes."""

    sha256: str
    size: int

    def __post_init__(self) -> None:
        check.sha256("file.sha256", self.sha256)
        check.integer("file.size", self.size, minimum=0)


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``. ``files`` is empty until ``build_package`` hashes the payload.

    ``files`` maps each payload name (``layout.PAYLOAD_FILES``; not ``manifest.json`` or
    ``signature``) to its ``FileEntry``. Mapping fields are normalised to sorted plain dicts;
    treat them as read-only.
    """

    name: str
    domain: str
    task: str
    description: str
    license: str
    base_model: ModelRef  # the public base model the adapter was trained for
    specs: tuple[SpecEntry, ...]
    dp: DpLedger
    contributor: Contributor
    created_at: str
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        version = self.format_version
        if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
            raise InvalidInput(
                f"format_version {self.format_version!r} is not supported (expected 1)"
            )
        check.slug("name", self.name)
        check.slug("domain", self.domain)
        check.slug("task", self.task)
        check.text("description", self.description, max_len=4000, multiline=True, empty=True)
        check.spdx("license", self.license)
        _check_base_model(self.base_model)
        check.instance("dp", self.dp, DpLedger)
        check.instance("contributor", self.contributor, Contributor)
        check.timestamp("created_at", self.created_at)
        object.__setattr__(self, "specs", check.records("specs", self.specs, SpecEntry))
        object.__setattr__(self, "files", _check_files(self.files))
        _check_specs_against_dp(self.specs, self.dp)

    # ------------------------------------------------------------ accessors

    def spec(self, kind: str) -> SpecEntry:
        """The spec entry of ``kind``; ``InvalidInput`` if this learnware has none."""
        for entry in self.specs:
            if entry.kind == kind:
                return entry
        raise InvalidInput(f"learnware {self.name!r} has no spec of kind {kind!r}")

    def with_files(self, files: Mapping[str, FileEntry]) -> Manifest:
        return replace(self, files=dict(files))

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        """Canonical JSON bytes: the exact ``manifest.json`` content and what is signed."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Parse strictly; ``InvalidInput`` names the first problem."""
        return cls.from_dict(check.parse_json(data, "manifest"))

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        raw = _keys(data, cls, "manifest")
        try:
            return cls(
                format_version=raw["format_version"],
                name=raw["name"],
                domain=raw["domain"],
                task=raw["task"],
                description=raw["description"],
                license=raw["license"],
                base_model=_record(raw["base_model"], ModelRef, "manifest.base_model"),
                specs=tuple(
                    _record(item, SpecEntry, f"manifest.specs[{i}]")
                    for i, item in enumerate(_list(raw["specs"], "manifest.specs"))
                ),
                dp=_dp_ledger(raw["dp"]),
                contributor=_record(raw["contributor"], Contributor, "manifest.contributor"),
                created_at=raw["created_at"],
                files={
                    name: _record(entry, FileEntry, f"manifest.files[{name!r}]")
                    for name, entry in _dict(raw["files"], "manifest.files").items()
                },
            )
        except InvalidInput as err:
            raise InvalidInput(f"manifest: {err}") from err


# ---------------------------------------------------------------- cross-field checks


def _check_base_model(ref: ModelRef) -> None:
    """The base model pinned by its weights' sha256 (``ModelRef`` trusts its maker; we don't)."""
    check.instance("base_model", ref, ModelRef)
    check.text("base_model.model_id", ref.model_id, max_len=256)
    check.sha256("base_model.sha256", ref.sha256)


def _check_files(files: object) -> dict[str, FileEntry]:
    if not isinstance(files, Mapping):
        raise InvalidInput(f"files must be a mapping of name -> FileEntry, got {files!r}")
    for name, entry in files.items():
        if name not in PAYLOAD_FILES:
            raise InvalidInput(f"files: {name!r} is not a payload file {sorted(PAYLOAD_FILES)}")
        check.instance(f"files[{name!r}]", entry, FileEntry)
    return dict(sorted(files.items()))


def _check_specs_against_dp(specs: tuple[SpecEntry, ...], dp: DpLedger) -> None:
    """Every released part has a DP entry, and spec and report agree on (epsilon, delta)."""
    if not specs:
        raise InvalidInput("specs must list at least one specification")
    kinds = [spec.kind for spec in specs]
    if len(set(kinds)) != len(kinds):
        raise InvalidInput(f"specs has duplicate kinds: {kinds}")
    expected = {ADAPTER_PART} | {SPEC_PART_PREFIX + kind for kind in kinds}
    listed = {part.what for part in dp.parts}
    if listed != expected:
        raise InvalidInput(f"dp.parts must cover exactly {sorted(expected)}, got {sorted(listed)}")
    for spec in specs:
        part = dp.part(SPEC_PART_PREFIX + spec.kind)
        assert part is not None  # guaranteed by the set equality above
        if (part.epsilon, part.delta) != (spec.epsilon, spec.delta):
            raise InvalidInput(
                f"spec {spec.kind!r} says (epsilon, delta) = ({spec.epsilon}, {spec.delta}) "
                f"but dp part {part.what!r} says ({part.epsilon}, {part.delta})"
            )


# ---------------------------------------------------------------- strict parsing helpers


def _keys(data: object, cls: type, where: str) -> dict[str, Any]:
    """``data`` as a dict with exactly ``cls``'s field names as keys."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {type(data).__name__}")
    expected = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - expected)
    missing = sorted(expected - set(data))
    if unknown:
        raise InvalidInput(f"{where} has unknown keys {unknown}")
    if missing:
        raise InvalidInput(f"{where} lacks keys {missing}")
    return data


def _list(data: object, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidInput(f"{where} must be a JSON array, got {type(data).__name__}")
    return data


def _dict(data: object, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {type(data).__name__}")
    return data


def _record(data: object, cls: type[Any], where: str) -> Any:
    """Build a flat record (no nested records) from a JSON object, prefixing errors."""
    raw = _keys(data, cls, where)
    try:
        return cls(**raw)
    except InvalidInput as err:
        raise InvalidInput(f"{where}: {err}") from err


def _dp_ledger(data: object) -> DpLedger:
    raw = _keys(data, DpLedger, "manifest.dp")
    parts = tuple(
        _record(item, DpPart, f"manifest.dp.parts[{i}]")
        for i, item in enumerate(_list(raw["parts"], "manifest.dp.parts"))
    )
    return DpLedger(parts=parts, total=_record(raw["total"], DpTotal, "manifest.dp.total"))
