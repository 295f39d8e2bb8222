"""Plain records the market's parts pass between them (store, index, checker, handlers).

They carry no SQLAlchemy or gRPC types, so each part can be tested alone; the store maps
them to rows, the handlers to protobuf messages.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from shared.errors import SpecError
from shared.spec.record import Specification, specs_from_bytes


class Status(enum.StrEnum):
    """Learnware life cycle: PENDING -> USABLE | REJECTED; USABLE -> WITHDRAWN."""

    PENDING = "PENDING"
    USABLE = "USABLE"
    REJECTED = "REJECTED"
    WITHDRAWN = "WITHDRAWN"


class Role(enum.StrEnum):
    CONTRIBUTOR = "CONTRIBUTOR"
    USER = "USER"
    ADMIN = "ADMIN"


class ChangeKind(enum.StrEnum):
    """What happened to a learnware, as the change feed (``server.changes``) tells replicas:
    it entered the search index (ACCEPTED: became USABLE) or left it (WITHDRAWN, or REVOKED:
    its contributor's key was revoked)."""

    ACCEPTED = "ACCEPTED"
    WITHDRAWN = "WITHDRAWN"
    REVOKED = "REVOKED"


@dataclass(frozen=True)
class KeyRecord:
    """A registered Ed25519 key. ``public_key`` is the raw 32 bytes."""

    key_id: str
    public_key: bytes
    role: Role
    name: str
    revoked: bool = False
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    revoke_reason: str = ""


@dataclass(frozen=True)
class SpecRecord:
    """One spec of a learnware as stored, by kind.

    ``spec_bytes`` is the package's spec file as the contributor sent it (the
    ``shared.spec.record`` format, never re-encoded): it may also hold the learnware's specs
    of other kinds, so readers take the one of ``kind`` (``spec``).
    """

    kind: str
    schema_id: str
    dim: int
    spec_bytes: bytes

    def spec(self) -> Specification:
        """The spec of ``kind`` in ``spec_bytes``, parsed (SpecError if it is not there)."""
        for spec in specs_from_bytes(self.spec_bytes):
            if spec.kind == self.kind:
                return spec
        raise SpecError(f"the stored spec file holds no {self.kind} spec")


@dataclass(frozen=True)
class LearnwareRecord:
    """A learnware as the market keeps it: the manifest's searchable fields, who signed it,
    where it is in its life cycle, and its package's identity (the blob's sha256).

    ``version``: a name belongs to its contributor's key, and each stored submission of the
    same (key, name) is the next version, 1-based; the store numbers it (``add_learnware``),
    the signed manifest is not changed. ``downloads``: Fetch calls that started at offset 0
    (a resumed download is not counted again; a started one that broke is)."""

    id: str
    name: str
    domain: str
    task: str
    description: str
    license: str
    base_model_id: str
    base_model_sha256: str
    contributor_key_id: str
    contributor_name: str
    status: Status
    reason: str
    package_sha256: str
    package_size: int
    manifest_json: bytes
    signature: bytes
    created_at: datetime
    updated_at: datetime
    version: int = 1
    downloads: int = 0
    specs: tuple[SpecRecord, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class LearnwareFilter:
    """Empty / None fields mean "any". ``all_versions`` False keeps, of each (contributor,
    name), only the newest version among the rows the rest of the filter (and the caller's
    visibility) lets through: in Search, the newest USABLE one."""

    domain: str | None = None
    task: str | None = None
    base_model_id: str | None = None
    license: str | None = None
    status: Status | None = None
    contributor_key_id: str | None = None
    spec_kind: str | None = None
    all_versions: bool = False


@dataclass(frozen=True)
class Visibility:
    """Which learnwares a caller may see (``server.market.visibility`` is the one rule).

    ``own_key_id``: the caller's own learnwares, at any status; ``others``: the statuses at
    which everyone else's are visible (None: every status, for an admin)."""

    own_key_id: str | None
    others: frozenset[Status] | None

    def allows(self, record: LearnwareRecord) -> bool:
        if self.own_key_id is not None and record.contributor_key_id == self.own_key_id:
            return True
        return self.others is None or record.status in self.others


@dataclass(frozen=True)
class Page:
    items: tuple[LearnwareRecord, ...]
    next_page_token: str  # "" when there is no further page


@dataclass(frozen=True)
class StoreStats:
    """What the database counts. ``by_status`` has every status (zeros included),
    ``keys_by_role`` every role (active keys only); ``package_bytes`` sums stored packages."""

    learnwares: int
    by_status: Mapping[str, int]
    by_domain: Mapping[str, int]
    specs_by_kind: Mapping[str, int]
    keys_by_role: Mapping[str, int]
    keys_revoked: int
    package_bytes: int
    events: int


@dataclass(frozen=True)
class IndexLag:
    """How far this replica's search index is behind the database: the last change of the
    feed it applied, the newest one committed, and how old (seconds, by the clock of the
    replica that wrote it) the oldest change it has not applied yet is (0 when caught up)."""

    applied: int = 0
    newest: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class MarketStats:
    """``lwm server stats``: the database's counts plus this server's blobs, index and uptime."""

    store: StoreStats
    blob_count: int
    blob_bytes: int
    indexed: Mapping[str, int]  # specs in the search index, by kind
    started_at: datetime
    uptime_s: float
    index_lag: IndexLag = field(default_factory=IndexLag)
