"""Plain records the market's parts pass between them (store, index, checker, handlers).

They carry no SQLAlchemy or gRPC types, so each part can be tested alone; the store maps
them to rows, the handlers to protobuf messages.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


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


@dataclass(frozen=True)
class KeyRecord:
    """A registered Ed25519 key. ``public_key`` is the raw 32 bytes."""

    key_id: str
    public_key: bytes
    role: Role
    name: str
    revoked: bool = False
    created_at: datetime | None = None


@dataclass(frozen=True)
class SpecRecord:
    """One spec of a learnware as stored: the spec file's bytes for one kind."""

    kind: str
    schema_id: str
    dim: int
    spec_bytes: bytes  # a single-spec safetensors file (shared.spec.record format)


@dataclass(frozen=True)
class LearnwareRecord:
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
    specs: tuple[SpecRecord, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class LearnwareFilter:
    """Empty / None fields mean "any"."""

    domain: str | None = None
    task: str | None = None
    base_model_id: str | None = None
    license: str | None = None
    status: Status | None = None
    contributor_key_id: str | None = None
    spec_kind: str | None = None


@dataclass(frozen=True)
class Page:
    items: tuple[LearnwareRecord, ...]
    next_page_token: str  # "" when there is no further page
